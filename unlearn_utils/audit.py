"""The unlearning audit: every probe the kit has, run on one unlearned model, in one report.

Each probe asks the same question in its own way: *is the forgotten knowledge still in the model?*

=================== ===================================================================================
``quantization``    round-to-nearest quantize-dequantize at 8 and 4 bits (Zhang et al., arXiv 2410.16454)
``relearning``      RTT: fine-tune on half of the forget facts (T), test the other half (V) (arXiv 2410.08827)
``patching``        the original's MLP coefficients / attention outputs patched in, per layer window (KRS)
``depth``           the unlearned model's layers patched into the original, where the retain model's change it
                    (the unlearning depth score, arXiv 2605.24614; needs a retain model)
``concept_vectors`` how far the MLP value vectors moved (cosine; top-k vocabulary tokens kept)
``paraphrase``      the forget questions in a wording never trained on
``in_context``      the forget questions after two of the same person's other facts
=================== ===================================================================================

The probes are the entries of :data:`PROBES` (one :class:`Probe` each, one runner signature ``run(ctx)``): adding
one is a :func:`register_probe` call with its function. Every verdict is computed from the table. The audit also
runs on GRUN models (:class:`unlearn_utils.grun.GatedModel`): quantization hits the base and the module rides on
top; the weight probes report that the weights are the original's.

**One baseline rule.** Every accuracy probe reports the share of the forgotten facts it brings back::

    share back = (U_probe - B) / (O - B)

* ``U_probe``: the unlearned model's accuracy under the probe (quantized, attacked, patched, asked another way);
* ``O``, the ceiling: the **original without the probe**, on the same questions as ``U_probe`` where the probe keeps
  the questions (quantization: the full-precision forget accuracy; RTT: V before the attack; patching: 1, the
  original's own answers), on the trained wording where the probe rewrites them (paraphrase, in-context: the
  baseline row's full-precision forget accuracy). What the probe does to the original is in the table, never in
  the share;
* ``B``, the floor: the **unlearned model without the probe**, taken the same way as ``O``; except for a probe
  that teaches (relearning), where ``B`` is what the same attack gives a model that never knew the facts (the
  retain model after the same fine-tuning, or the same attack on facts the original does not know) when there is
  one (Deeb & Roger's recovery above the floor).

The depth probe measures no accuracy: its column holds 1 - depth score, the share of the knowledge still inside the
layers that carry it (0 = erased as in the retain model), judged by the same ``came_back_at``.

**Thresholds, with a tolerance.** Accuracies are ratios of counts, so an exact tie computed in floating point can
land a hair below its threshold: with 10 questions, unlearned 0.2, original 0.7 and a probe at 0.3, 1 of the 5
forgotten facts is back, exactly 20 %, but (0.3 - 0.2) / (0.7 - 0.2) is 0.19999999999999998. A probe "brings
knowledge back" when its share reaches ``came_back_at`` within :data:`TOLERANCE` (1e-9, far below the 1 / n^2 that
separates two different shares of n <= 10,000 questions); the value-vector probe's "barely moved" reads
``vectors_kept_at`` the same way (:func:`reaches`). A verdict prints its share rounded so that the printed number
agrees with the verdict (19.96 % back that stays forgotten prints 19.96 %, not 20 %).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import datasets
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .evaluate import accuracy
from .report import TOLERANCE, reaches  # noqa: F401 (the audit's threshold rule, shared with the summary's rules)


def percent(value: float, threshold: float | None = None, tolerance: float = TOLERANCE) -> str:
    """``value`` as a percentage, rounded to whole points unless that would put it on the other side of
    ``threshold`` than :func:`reaches` does (then with more decimals: 19.96 %, not 20 %)."""
    for digits in (0, 1, 2, 3):
        text = f"{value:.{digits}%}"
        if threshold is None or reaches(float(text.rstrip("%")) / 100, threshold, tolerance) == reaches(
                value, threshold, tolerance):
            return text
    return f"{value:.4%}"


@dataclass
class AuditConfig:
    """The audit's knobs. Defaults fit the world model; the paper settings are noted where they differ."""

    probes: tuple = field(default_factory=lambda: tuple(PROBES))  # every registered probe, in order
    bits: tuple = (8, 4)              # RTN bit widths (the paper: 8 and 4)
    group_size: int | str | None = "auto"  # RTN group size: "auto" = 64, or the largest of 32/16 that divides every
                                            # layer's input size (else one grid per channel); None = per channel
    native_grid: bool = True          # also quantize on the grid the original's weights already sit on (GGUF), if any
    rtt_epochs: int = 4
    rtt_lr: float = 3e-4              # the world model's RTT setting (notebook 05); ~1e-5 for a 7B model
    patch_window: int = 3             # layers per patch (the paper: 5 of 32)
    max_questions: int | None = 120   # forget questions used by the patching and depth probes (speed)
    depth_threshold: float = 0.05     # nats the retain model's hidden states must lower an answer for its layer to
                                      # count as carrying it (the depth score's tau, as its authors)
    k: int = 20                       # top-k vocabulary tokens for the value-vector probe
    n_vectors: int = 20               # the most-changed value vectors whose top-k tokens are compared
    came_back_at: float = 0.2         # share of the forgotten facts a probe must bring back to count as recovery
    vectors_kept_at: float = 0.5      # mean top-k Jaccard at which the most-changed vectors still "say the same"
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.probes, str):
            raise ValueError(f"probes={self.probes!r} is one string; give a list of probe names, e.g. "
                             f"probes=[{self.probes!r}] (choose from {tuple(PROBES)}).")
        if isinstance(self.bits, (int, str)):
            raise ValueError(f"bits={self.bits!r}: give a list of bit widths, e.g. bits=[{self.bits!r}] or (8, 4).")
        self.probes, self.bits = tuple(self.probes), tuple(self.bits)
        unknown = [p for p in self.probes if p not in PROBES]
        if unknown:
            raise ValueError(f"Unknown audit probe(s) {unknown}: choose from {tuple(PROBES)}.")
        from .quantize import check_bits

        for b in self.bits:
            check_bits(b)
        if not (isinstance(self.depth_threshold, (int, float)) and self.depth_threshold >= 0):
            raise ValueError(f"depth_threshold must be a non-negative number of nats, got {self.depth_threshold!r}.")
        if not 0 < self.came_back_at <= 1:
            raise ValueError(f"came_back_at must be in (0, 1], got {self.came_back_at}.")


@dataclass
class AuditData:
    """What the audit needs: forget / retain questions (prompt, answer), and optionally paraphrases, RTT's
    T and V, and in-context variants of the forget questions."""

    forget: object
    retain: object
    forget_para: object | None = None
    t_facts: object | None = None
    v_facts: object | None = None
    in_context: object | None = None
    unknown: object | None = None  # facts the original does not know: RTT's floor when there is no retain model


@dataclass
class AuditReport:
    """The audit's result. ``table``: every measured number (probe, setting, measure, and the value for the
    original, the unlearned and the retain model). ``verdicts``: one computed line per probe. ``patching`` and
    ``vectors``: the per-layer details behind two of them."""

    table: pd.DataFrame
    verdicts: pd.DataFrame
    patching: pd.DataFrame | None = None
    vectors: pd.DataFrame | None = None
    seconds: dict = field(default_factory=dict)
    config: AuditConfig = field(default_factory=AuditConfig)
    details: dict = field(default_factory=dict)  # each probe's details by probe name

    def lines(self) -> list[str]:
        """The verdict lines, one per probe."""
        return [f"{r.probe}: {r.verdict}" for r in self.verdicts.itertuples()]

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def figure(self):
        from .plotting import audit_figure

        return audit_figure(self)

    def to_markdown(self) -> str:
        """The verdicts, then the table, as Markdown."""
        out = ["# Unlearning audit", "", "| probe | verdict | share back | knowledge still there? |",
               "|---|---|---|---|"]
        for r in self.verdicts.itertuples():
            share = "" if pd.isna(r.share_back) else f"{r.share_back:.0%}"
            still = {True: "yes", False: "no"}.get(r.still_there, "n/a")
            out.append(f"| {r.probe} | {r.verdict} | {share} | {still} |")
        from .report import markdown_table

        out += ["", "## Measurements", "", markdown_table(self.table), "",
                "Probe times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items())]
        return "\n".join(out) + "\n"

    def save(self, folder) -> Path:
        """Write verdicts.csv, table.csv, audit.md, audit.png and config.json into ``folder`` (atomically)."""
        import matplotlib.pyplot as plt

        from .cache import publish_folder, staging_folder

        tmp = staging_folder(folder)
        self.verdicts.to_csv(tmp / "verdicts.csv", index=False)
        self.table.to_csv(tmp / "table.csv", index=False)
        if self.patching is not None:
            self.patching.to_csv(tmp / "patching.csv", index=False)
        (tmp / "audit.md").write_text(self.to_markdown())
        (tmp / "config.json").write_text(json.dumps(dataclasses.asdict(self.config), indent=2))
        fig = self.figure()
        fig.savefig(tmp / "audit.png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        return publish_folder(tmp, folder)


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
def in_context_rows(world, split: str = "forget05", n_context: int = 2, seed: int = 0) -> list[dict]:
    """Each trained-phrasing forget question preceded by ``n_context`` of the same person's other facts, stated.

    A model that only suppresses the person's answers may answer again once the person is "in context".
    """
    rng = random.Random(seed)
    people = set(world.forget_people(split))
    rows = [r for r in world.fact_rows() if r["person"] in people and r["trained_phrasing"]]
    statements: dict = {}
    for r in rows:
        if not r["is_question"]:
            statements.setdefault((r["person"], r["attribute"]), r["prompt"] + " " + r["answer"] + " .")
    out = []
    for r in rows:
        others = sorted({s for (p, a), s in statements.items() if p == r["person"] and a != r["attribute"]})
        context = rng.sample(others, min(n_context, len(others)))
        out.append({**r, "prompt": " ".join(context + [r["prompt"]])})
    return out


def split_tv(rows, seed: int = 0):
    """Split question rows into T and V for RTT when the data has no T/V column, so that T and V share no fact.

    Rows with ``person`` and ``attribute`` (one fact per attribute): each person's attributes alternate between T
    and V. Rows with ``person`` only (e.g. TOFU authors, whose facts depend on each other): whole people alternate.
    Otherwise alternate rows.
    """
    rows = [dict(r) for r in rows]
    rng = random.Random(seed)
    has_person = bool(rows) and "person" in rows[0]
    if has_person and "attribute" in rows[0]:
        t, v = [], []
        for person in dict.fromkeys(r["person"] for r in rows):
            attrs = sorted({r["attribute"] for r in rows if r["person"] == person})
            rng.shuffle(attrs)
            t_attrs = set(attrs[0::2])
            for r in rows:
                if r["person"] == person:
                    (t if r["attribute"] in t_attrs else v).append(r)
    else:
        groups = list(dict.fromkeys(r["person"] for r in rows)) if has_person else list(range(len(rows)))
        rng.shuffle(groups)
        t_groups = set(groups[0::2])
        t = [r for i, r in enumerate(rows) if (r["person"] if has_person else i) in t_groups]
        v = [r for i, r in enumerate(rows) if (r["person"] if has_person else i) not in t_groups]
    return datasets.Dataset.from_list(t) if t else None, datasets.Dataset.from_list(v) if v else None


def audit_data(data, split: str = "forget05", seed: int = 0) -> AuditData:
    """Turn a :class:`World`, an :class:`AuditData` or a dict with ``forget`` / ``retain`` (e.g. from
    :func:`unlearn_utils.benchmark_data.load_tofu`) into what the audit needs."""
    from .world import World, check_splits

    if isinstance(data, AuditData):
        out = data
    elif isinstance(data, World):
        from .evaluate import eval_data

        ev = eval_data(data, split, seed=seed)
        t, v = data.tv_split(split, "trained")
        out = AuditData(forget=ev.forget, retain=ev.retain, forget_para=ev.forget_para, t_facts=t, v_facts=v,
                        in_context=datasets.Dataset.from_list(in_context_rows(data, split, seed=seed)))
    elif isinstance(data, dict):
        missing = [k for k in ("forget", "retain") if k not in data]
        if missing:
            raise KeyError(f"The audit data has no {missing}: pass a World, or a dict with 'forget' and 'retain' "
                           "question sets (prompt, answer).")
        t, v = data.get("t_facts"), data.get("v_facts")
        if t is None and v is None:
            t, v = split_tv(data["forget"], seed)
        out = AuditData(forget=data["forget"], retain=data["retain"], forget_para=data.get("forget_para"),
                        t_facts=t, v_facts=v, in_context=data.get("in_context"), unknown=data.get("unknown"))
    else:
        raise TypeError(f"Cannot audit on {type(data).__name__}: pass a World, an AuditData, or a dict with "
                        "'forget' and 'retain'.")
    for name in ("forget", "retain"):
        ds = getattr(out, name)
        if ds is None or len(ds) == 0:
            raise ValueError(f"The {name} set is empty: the audit needs questions to ask.")
        if "prompt" not in ds.column_names or "answer" not in ds.column_names:
            raise ValueError(f"The {name} set needs 'prompt' and 'answer' columns; it has {ds.column_names}.")
    check_splits(forget=out.forget, retain=out.retain)
    return out


# ----------------------------------------------------------------------------------------------
# Verdicts (pure functions of the numbers, so they can be tested on their own)
# ----------------------------------------------------------------------------------------------
def share_back(probed: float, unlearned: float, original: float) -> float:
    """(probed - unlearned) / (original - unlearned): the share of what unlearning removed that a probe brings
    back (1 = all, 0 = none, negative = the probe removes even more). NaN when nothing was removed."""
    gap = original - unlearned
    if gap <= 1e-9:
        return float("nan")
    return (probed - unlearned) / gap


def recovery_verdict(label: str, probed: float, unlearned: float, original: float, came_back_at: float,
                     floor: float | None = None) -> dict:
    """A verdict row for an accuracy probe: did ``probed`` bring back at least ``came_back_at`` of the gap?"""
    share = share_back(probed, unlearned, original)
    ref = f"(unlearned {unlearned:.0%}, original {original:.0%}" + (f", retain model {floor:.0%}" if floor is not None
                                                                     else "") + ")"
    if np.isnan(share):
        return {"verdict": f"nothing to recover: the unlearned model already answers {unlearned:.0%} of forget facts, "
                           f"as many as the original ({original:.0%}) {label}",
                "share_back": float("nan"), "still_there": None}
    back = reaches(share, came_back_at)
    head = "knowledge came back" if back else "stays forgotten"
    return {"verdict": f"{head} {label}: {probed:.0%} of forget facts answered {ref}; "
                       f"{percent(max(share, 0), came_back_at)} of the forgotten facts back",
            "share_back": share, "still_there": bool(back)}


# ----------------------------------------------------------------------------------------------
# Probes
# ----------------------------------------------------------------------------------------------
def _is_gated(model) -> bool:
    from .grun import GatedModel

    return isinstance(model, GatedModel)


def auto_group_size(model, preferred: int = 64) -> int | None:
    """The group size the audit uses by default: :func:`unlearn_utils.quantize.default_group_size` of the model (of a
    GRUN model's base): ``preferred`` (64) where it divides every quantized layer's input width."""
    from .quantize import default_group_size

    return default_group_size(model.base if _is_gated(model) else model, preferred)


def quantized(model, bits: int, group_size: int | str | None = "auto"):
    """An RTN quantize-dequantized copy of a model; for a GRUN model the base is quantized, the module kept."""
    from .quantize import quantize_model

    if group_size == "auto":
        group_size = auto_group_size(model)
    if _is_gated(model):
        return model.on(quantize_model(model.base, bits, group_size))
    return quantize_model(model, bits, group_size)


@dataclass
class ProbeContext:
    """What every probe reads (the models, the data, the settings) and where it writes: ``rows`` of the measurement
    table and ``verdicts`` (one dict per verdict line: probe, setting, verdict, share_back, still_there)."""

    original: object
    unlearned: object
    tokenizer: object
    models: dict                       # "original", "unlearned" and, when given, "retain_model"
    data: AuditData
    config: AuditConfig
    rows: list
    verdicts: list
    progress: bool = True


@dataclass(frozen=True)
class Probe:
    """One probe: ``run(ctx)`` measures, appends to ``ctx.rows`` and ``ctx.verdicts``, and returns its per-layer or
    per-vector details (a DataFrame, kept in the report under its name) or None."""

    name: str
    summary: str
    run: Callable[[ProbeContext], pd.DataFrame | None]


PROBES: dict[str, Probe] = {}


def register_probe(probe: Probe) -> Probe:
    """Add a probe to the audit (its name must be new); :class:`AuditConfig` then runs it by default."""
    if probe.name in PROBES:
        raise ValueError(f"An audit probe named {probe.name!r} is already registered.")
    PROBES[probe.name] = probe
    return probe


# (forget, retain) accuracy of a model under a quantization, by weights, quantization and questions: audits of several
# models against one original (notebook 06, the lab) quantize and score the original (and the retain model) once.
_QUANTIZED_ACCURACY: OrderedDict[str, tuple[float, float]] = OrderedDict()


def _quantized_accuracy(model, setting: str, quantize: Callable, tokenizer, data) -> tuple[float, float]:
    """``(forget, retain)`` accuracy of ``quantize(model)``, computed once per weights, setting and question sets (a
    GRUN model, whose module the fingerprint would miss, is always computed)."""
    def compute():
        q = quantize(model)
        found = (accuracy(q, tokenizer, data.forget), accuracy(q, tokenizer, data.retain))
        del q
        return found

    if _is_gated(model):
        return compute()
    from .data import rows_of, weights_fingerprint

    questions = json.dumps([rows_of(data.forget), rows_of(data.retain)], sort_keys=True, default=str)
    key = hashlib.sha256("|".join([weights_fingerprint(model), next(model.parameters()).device.type, setting,
                                   getattr(tokenizer, "name_or_path", ""), questions]).encode()).hexdigest()
    if key not in _QUANTIZED_ACCURACY:
        _QUANTIZED_ACCURACY[key] = compute()
        while len(_QUANTIZED_ACCURACY) > 64:
            _QUANTIZED_ACCURACY.popitem(last=False)
    return _QUANTIZED_ACCURACY[key]


def _probe_quantization(ctx: ProbeContext):
    models, tok, data, cfg, rows, verdicts = ctx.models, ctx.tokenizer, ctx.data, ctx.config, ctx.rows, ctx.verdicts
    group = auto_group_size(models["unlearned"]) if cfg.group_size == "auto" else cfg.group_size
    label = "per channel" if group is None else f"group size {group}"
    for bits in cfg.bits:
        accs = {name: _quantized_accuracy(m, f"rtn {bits} {group}", lambda x, b=bits: quantized(x, b, group), tok, data)
                for name, m in models.items()}
        for i, measure in enumerate(("forget accuracy", "retain accuracy")):
            rows.append({"probe": "quantization", "setting": f"{bits}-bit RTN", "measure": measure,
                         **{n: a[i] for n, a in accs.items()}})
        v = recovery_verdict(f"under {bits}-bit quantization ({label})", accs["unlearned"][0], rows[0]["unlearned"],
                             rows[0]["original"], cfg.came_back_at, accs.get("retain_model", (None,))[0])
        verdicts.append({"probe": "quantization", "setting": f"{bits}-bit", **v})
    grid = _native_grid(ctx.original) if cfg.native_grid else None
    if grid is not None:  # a checkpoint released quantized (GGUF): unlearned in float, then quantized again
        from .quantize import quantize_as

        accs = {name: _quantized_accuracy(m, f"grid {grid}", lambda x: x.on(quantize_as(x.base, grid)) if _is_gated(x)
                                          else quantize_as(x, grid), tok, data)
                for name, m in models.items()}
        for i, measure in enumerate(("forget accuracy", "retain accuracy")):
            rows.append({"probe": "quantization", "setting": f"{grid} (own grid)", "measure": measure,
                         **{n: a[i] for n, a in accs.items()}})
        v = recovery_verdict(f"under {grid}, the grid the original's weights sit on", accs["unlearned"][0],
                             rows[0]["unlearned"], rows[0]["original"], cfg.came_back_at,
                             accs.get("retain_model", (None,))[0])
        verdicts.append({"probe": "quantization", "setting": f"{grid} (own grid)", **v})


def _native_grid(model) -> str | None:
    """The GGUF format the model's float weights sit on exactly (a checkpoint converted from a GGUF file), or None."""
    from .quantize import native_grid

    return native_grid(model.base if _is_gated(model) else model)


def _probe_relearning(ctx: ProbeContext):
    from .relearn import count_facts, recovery_above_floor, rtt

    models, tok, data, cfg, rows, verdicts = ctx.models, ctx.tokenizer, ctx.data, ctx.config, ctx.rows, ctx.verdicts
    progress = ctx.progress
    if data.t_facts is None or data.v_facts is None or len(data.t_facts) == 0 or len(data.v_facts) == 0:
        verdicts.append({"probe": "relearning", "setting": "RTT", "verdict": "not run: no T/V split of the forget "
                         "facts (pass t_facts and v_facts, or a forget set with at least two questions)",
                         "share_back": float("nan"), "still_there": None})
        return
    log = rtt(models, tok, data.t_facts, data.v_facts, epochs=cfg.rtt_epochs, lr=cfg.rtt_lr, seed=cfg.seed,
              progress=progress)
    last = log[log.epoch == log.epoch.max()].set_index("model")
    first = log[log.epoch == 0].set_index("model")
    rows.append({"probe": "relearning", "setting": "before attack", "measure": "V accuracy",
                 **{n: float(first.loc[n, "V"]) for n in models}})
    rows.append({"probe": "relearning", "setting": f"RTT {cfg.rtt_epochs} epochs on T", "measure": "V accuracy",
                 **{n: float(last.loc[n, "V"]) for n in models}})
    u_before, o_before = float(first.loc["unlearned", "V"]), float(first.loc["original", "V"])
    attacked = float(last.loc["unlearned", "V"])
    floor, floor_from = None, "retain model after the same attack"
    if "retain_model" in models:
        floor = float(last.loc["retain_model", "V"])
    elif data.unknown is not None and count_facts(data.unknown) >= 2:
        from .relearn import unknown_facts_floor

        n_unknown = count_facts(data.unknown)
        n_t = min(count_facts(data.t_facts), n_unknown // 2)
        n_v = min(count_facts(data.v_facts), n_unknown - n_t)
        floor_log = unknown_facts_floor(models["original"], tok, data.unknown, data.forget, n_t, n_v,
                                        epochs=cfg.rtt_epochs, lr=cfg.rtt_lr, seed=cfg.seed, progress=progress)
        floor = float(floor_log[floor_log.epoch == floor_log.epoch.max()]["V"].iloc[0])
        floor_from = "the same attack on facts the original never knew"
        rows.append({"probe": "relearning", "setting": f"RTT {cfg.rtt_epochs} epochs on unknown facts (floor)",
                     "measure": "V accuracy", "original": floor})
    if floor is not None:
        try:
            share = recovery_above_floor(attacked, floor, o_before)
        except ValueError:
            share = float("nan")
        if np.isnan(share):
            given = "the retain model given the same attack" if "retain_model" in models else \
                f"the floor ({floor_from})"
            verdict = f"undetermined: {given} answers {floor:.0%} of V, as many as the original ({o_before:.0%})"
            still = None
        else:
            still = reaches(share, cfg.came_back_at)
            verdict = (f"{'knowledge came back' if still else 'stays forgotten'} after fine-tuning on T: "
                       f"{attacked:.0%} of V answered (before {u_before:.0%}; {floor_from} "
                       f"{floor:.0%}; original {o_before:.0%}); {percent(max(share, 0), cfg.came_back_at)} of the gap "
                       "above the floor")
        verdicts.append({"probe": "relearning", "setting": "RTT", "verdict": verdict, "share_back": share,
                         "still_there": still})
    else:
        v = recovery_verdict("after fine-tuning on T (no retain model given, so no floor: part of it may be "
                             "learning from scratch)", attacked, u_before, o_before, cfg.came_back_at)
        verdicts.append({"probe": "relearning", "setting": "RTT", **v})


def _probe_prompts(rows, cfg: AuditConfig) -> list[str]:
    """The prompts of ``rows`` the patching and depth probes use: all, or a fixed sample of ``cfg.max_questions``."""
    prompts = list(rows["prompt"])
    if cfg.max_questions and len(prompts) > cfg.max_questions:
        prompts = sorted(random.Random(cfg.seed).sample(prompts, cfg.max_questions))
    return prompts


def _probe_patching(ctx: ProbeContext):
    from .patching import patch_sweep, teacher_forced_inputs

    original, unlearned, tok, data, cfg = ctx.original, ctx.unlearned, ctx.tokenizer, ctx.data, ctx.config
    rows, verdicts = ctx.rows, ctx.verdicts
    if _is_gated(unlearned):
        verdicts.append({"probe": "patching", "setting": "MLP / attention", "verdict": (
            "not applicable: a GRUN model keeps the original's weights and edits the residual stream with its module; "
            "removing the module (the counterpart of restoring parameters) gives the original back exactly"),
            "share_back": float("nan"), "still_there": None})
        return None
    tf = teacher_forced_inputs(original, tok, _probe_prompts(data.forget, cfg))
    window = min(cfg.patch_window, unlearned.config.num_hidden_layers)
    sweep = patch_sweep(original, unlearned, tok, tf, window=window)
    with torch.no_grad():
        from .patching import answer_match

        dev = next(unlearned.parameters()).device
        base = float(answer_match(unlearned(input_ids=tf.input_ids.to(dev),
                                            attention_mask=tf.attention_mask.to(dev)).logits, tf).float().mean())
    for comp, g in sweep.groupby("component", sort=False):
        best = g.loc[g.krs.idxmax()]
        rows.append({"probe": "patching", "setting": f"{comp}, best window {best.layers}", "measure": "KRS",
                     "original": 1.0, "unlearned": float(best.krs)})
        rows.append({"probe": "patching", "setting": f"{comp}, best window {best.layers}",
                     "measure": "answers of the original recovered", "original": 1.0,
                     "unlearned": float(best.recovered_accuracy)})
    mlp = sweep[sweep.component == "mlp"]
    best = mlp.loc[mlp.krs.idxmax()]
    share = share_back(float(best.recovered_accuracy), base, 1.0)
    still = None if np.isnan(share) else reaches(share, cfg.came_back_at)
    where = "the last layers" if best.layer >= unlearned.config.num_hidden_layers / 2 else "the first layers"
    verdicts.append({"probe": "patching", "setting": "MLP coefficients", "verdict": (
        f"patching the original's MLP coefficients restores up to KRS {best.krs:.2f} (layers {best.layers}, "
        f"{where}); the original's answers come back for {best.recovered_accuracy:.0%} of questions (unpatched "
        f"{base:.0%}). Patching uses the original's activations, so it locates the change; it is not an attack"),
        "share_back": share, "still_there": still})
    return sweep


def _probe_depth(ctx: ProbeContext):
    from .patching import depth_score, teacher_forced_inputs

    cfg, verdicts = ctx.config, ctx.verdicts
    setting = f"hidden states, tau {cfg.depth_threshold:g} nats"
    if _is_gated(ctx.unlearned):
        verdicts.append({"probe": "depth", "setting": setting, "verdict": (
            "not applicable: a GRUN model is the original's weights plus a module on the residual stream; its depth "
            "is that of the module, which removing it undoes exactly"), "share_back": float("nan"),
            "still_there": None})
        return None
    if "retain_model" not in ctx.models:
        verdicts.append({"probe": "depth", "setting": setting, "verdict": (
            "not run: the depth score needs a retain model (one trained without the forget set) to find the layers "
            "that carry the forget facts; pass retain_model=... (the world has one; for a benchmark, e.g. TOFU's "
            "retain90 checkpoint)"), "share_back": float("nan"), "still_there": None})
        return None
    tf = teacher_forced_inputs(ctx.original, ctx.tokenizer, _probe_prompts(ctx.data.forget, cfg))
    control = teacher_forced_inputs(ctx.original, ctx.tokenizer, _probe_prompts(ctx.data.retain, cfg))
    depth = depth_score(ctx.original, ctx.unlearned, ctx.tokenizer, tf, retain_model=ctx.models["retain_model"],
                        threshold=cfg.depth_threshold, control=control)
    ctx.rows.append({"probe": "depth", "setting": f"{setting}, {depth.n_defined} of {len(tf)} questions with an "
                                                  "encoding layer",
                     "measure": "depth score (0 intact, 1 erased)", "unlearned": depth.score})
    ctx.rows.append({"probe": "depth", "setting": f"{setting}, {len(control)} retain questions",
                     "measure": "basis mismatch (retain-question drop / forget-question drop)",
                     "retain_model": depth.basis_mismatch})
    if depth.n_defined == 0:
        verdicts.append({"probe": "depth", "setting": setting, "verdict": (
            f"undefined: on no question does the retain model's hidden states lower the original's answer by more "
            f"than {cfg.depth_threshold:g} nats at any layer, so no layer is known to carry the forget facts"),
            "share_back": float("nan"), "still_there": None})
        return depth.layers
    if not depth.comparable:
        verdicts.append({"probe": "depth", "setting": setting, "verdict": (
            f"not readable as a share erased: the retain model's hidden states lower the answers of retain "
            f"questions, which both models know, {depth.basis_mismatch:.0%} as much as the forget answers, so its "
            f"layers differ from the original's everywhere (a model trained apart, not a fine-tune of the same "
            f"base); stage 1 then marks layers for that mismatch, not for the forget facts, and the score "
            f"{depth.score:.2f} is off its 0-1 scale (it may still order methods: benchmarks/RESULTS.md)"),
            "share_back": float("nan"), "still_there": None})
        return depth.layers
    inside = 1 - depth.score
    still = reaches(inside, cfg.came_back_at)
    top = depth.layers.sort_values("retain_drop", ascending=False).layer.head(3).tolist()
    verdicts.append({"probe": "depth", "setting": setting, "verdict": (
        f"{'knowledge still inside' if still else 'erased inside'}: depth score {depth.score:.2f} (0 intact, 1 as "
        f"the retain model); at the layers that carry the answers (most: {sorted(top)}) the unlearned model's hidden "
        f"states reproduce {depth.score:.0%} of the retain model's effect, so {percent(inside, cfg.came_back_at)} of "
        f"the knowledge is still there ({depth.n_defined} of {len(tf)} questions)"),
        "share_back": inside, "still_there": bool(still)})
    return depth.layers


@torch.no_grad()
def value_vector_change(original, unlearned, tokenizer, k: int = 20, n_vectors: int = 20) -> pd.DataFrame:
    """Per MLP value vector (layer, column): cosine to the original's; for the ``n_vectors`` that moved most,
    the Jaccard of their top-k vocabulary tokens. One row per vector."""
    from .arch import get_adapter
    from .concepts import jaccard, top_tokens, value_vector

    base = unlearned.base if _is_gated(unlearned) else unlearned
    ad = get_adapter(original)
    rows = []
    for layer in range(ad.n_layers(original)):
        v0 = ad.value_vectors(original, layer).float().T   # [d_mlp, d_model]: one row per value vector
        v1 = ad.value_vectors(base, layer).float().T.to(v0.device)
        cos = torch.nn.functional.cosine_similarity(v0, v1, dim=-1).clamp(max=1.0)
        for col, c in enumerate(cos.tolist()):
            rows.append({"layer": layer, "column": col, "cosine": c})
    df = pd.DataFrame(rows)
    df["jaccard"] = np.nan
    for i in df.nsmallest(n_vectors, "cosine").index:
        layer, col = int(df.loc[i, "layer"]), int(df.loc[i, "column"])
        t0 = top_tokens(original, tokenizer, value_vector(original, layer, col), k)
        t1 = top_tokens(base, tokenizer, value_vector(base, layer, col), k)
        df.loc[i, "jaccard"] = jaccard(t0, t1)
    return df


def _probe_vectors(ctx: ProbeContext):
    cfg, rows, verdicts = ctx.config, ctx.rows, ctx.verdicts
    df = value_vector_change(ctx.original, ctx.unlearned, ctx.tokenizer, cfg.k, cfg.n_vectors)
    med, low = float(df.cosine.median()), float(df.cosine.min())
    kept = float(df.jaccard.mean())
    rows.append({"probe": "concept_vectors", "setting": "all value vectors", "measure": "median cosine to original",
                 "original": 1.0, "unlearned": med})
    rows.append({"probe": "concept_vectors", "setting": f"{cfg.n_vectors} most-changed vectors",
                 "measure": f"top-{cfg.k} token Jaccard", "original": 1.0, "unlearned": kept})
    still = reaches(kept, cfg.vectors_kept_at)
    verdicts.append({"probe": "concept_vectors", "setting": "value vectors", "verdict": (
        f"value vectors {'barely moved' if still else 'changed what they say'}: median cosine to the original "
        f"{med:.3f} (lowest {low:.3f}); the {cfg.n_vectors} most-changed keep {percent(kept, cfg.vectors_kept_at)} of "
        f"their top-{cfg.k} vocabulary tokens"), "share_back": float("nan"), "still_there": bool(still)})
    return df


def _probe_variant(ctx: ProbeContext, name: str, label: str, ds):
    models, tok, cfg, rows, verdicts = ctx.models, ctx.tokenizer, ctx.config, ctx.rows, ctx.verdicts
    if ds is None or len(ds) == 0:
        verdicts.append({"probe": name, "setting": label, "verdict": f"not run: the data has no questions with {label}",
                         "share_back": float("nan"), "still_there": None})
        return
    accs = {n: accuracy(m, tok, ds) for n, m in models.items()}
    rows.append({"probe": name, "setting": label, "measure": "forget accuracy", **accs})
    # the module's baseline rule: floor and ceiling are the unlearned and the original model without the probe (the
    # trained wording, the baseline row); the original's accuracy on the rewritten questions is in the table only
    v = recovery_verdict(f"with {label}", accs["unlearned"], rows[0]["unlearned"], rows[0]["original"],
                         cfg.came_back_at, accs.get("retain_model"))
    verdicts.append({"probe": name, "setting": label, **v})


register_probe(Probe("quantization", "round-to-nearest quantize-dequantize at the configured bit widths",
                     _probe_quantization))
register_probe(Probe("relearning", "RTT: fine-tune on half of the forget facts (T), test the other half (V)",
                     _probe_relearning))
register_probe(Probe("patching", "the original's MLP coefficients / attention outputs patched in, per layer window",
                     _probe_patching))
register_probe(Probe("depth", "the unlearned model's hidden states patched into the original where the retain "
                     "model's change its answers (the unlearning depth score)", _probe_depth))
register_probe(Probe("concept_vectors", "how far the MLP value vectors moved (cosine; top-k vocabulary tokens kept)",
                     _probe_vectors))
register_probe(Probe("paraphrase", "the forget questions in a wording never trained on",
                     lambda ctx: _probe_variant(ctx, "paraphrase", "paraphrased wording", ctx.data.forget_para)))
register_probe(Probe("in_context", "the forget questions after two of the same person's other facts",
                     lambda ctx: _probe_variant(ctx, "in_context", "the person's other facts in context",
                                                ctx.data.in_context)))


def audit(original, unlearned, tokenizer, data, split: str = "forget05", retain_model=None,
          config: AuditConfig | None = None, progress: bool = True, **settings) -> AuditReport:
    """Run every probe of ``config.probes`` on ``unlearned`` and return an :class:`AuditReport`.

    original: the model before unlearning (the ceiling and the source of patched activations).
    unlearned: a fine-tuned model, or a GRUN :class:`~unlearn_utils.grun.GatedModel`.
    data: a World (with ``split``), an :class:`AuditData` or a dict with ``forget`` / ``retain`` question sets.
    retain_model: a model never trained on the forget set (the floor); optional but recommended.
    settings: any :class:`AuditConfig` field, e.g. ``bits=(4,)`` or ``probes=("quantization",)``.
    """
    cfg = dataclasses.replace(config or AuditConfig(), **settings)
    d = audit_data(data, split, cfg.seed)
    from .patching import check_compatible

    base = unlearned.base if _is_gated(unlearned) else unlearned
    check_compatible(original, base)
    models = {"original": original, "unlearned": unlearned}
    if retain_model is not None:
        check_compatible(original, retain_model)
        models["retain_model"] = retain_model
    rows = [{"probe": "baseline", "setting": "full precision", "measure": "forget accuracy",
             **{n: accuracy(m, tokenizer, d.forget) for n, m in models.items()}},
            {"probe": "baseline", "setting": "full precision", "measure": "retain accuracy",
             **{n: accuracy(m, tokenizer, d.retain) for n, m in models.items()}}]
    verdicts, seconds, details = [], {}, {}
    ctx = ProbeContext(original=original, unlearned=unlearned, tokenizer=tokenizer, models=models, data=d,
                       config=cfg, rows=rows, verdicts=verdicts, progress=progress)
    bar = tqdm(cfg.probes, desc="audit", disable=not progress)
    for probe in bar:
        bar.set_postfix_str(probe)
        start = time.time()
        found = PROBES[probe].run(ctx)
        if found is not None:
            details[probe] = found
        seconds[probe] = time.time() - start
    table = pd.DataFrame(rows)
    for col in ("original", "unlearned", "retain_model"):
        if col not in table:
            table[col] = np.nan
    table = table[["probe", "setting", "measure", "original", "unlearned", "retain_model"]]
    verdicts = pd.DataFrame(verdicts, columns=["probe", "setting", "verdict", "share_back", "still_there"])
    return AuditReport(table=table, verdicts=verdicts, patching=details.get("patching"),
                       vectors=details.get("concept_vectors"), seconds=seconds, config=cfg, details=details)


# ----------------------------------------------------------------------------------------------
# Several audits side by side
# ----------------------------------------------------------------------------------------------
def audit_each(original, models: dict, tokenizer, data, **options) -> dict[str, AuditReport]:
    """:func:`audit` of each model of ``{name: unlearned model}`` on the same data, one after the other:
    ``{name: AuditReport}``. ``options``: :func:`audit`'s keywords (split, retain_model, config, AuditConfig fields)."""
    return {name: audit(original, model, tokenizer, data, **options) for name, model in models.items()}


def side_by_side(reports: dict, column: str = "share_back") -> pd.DataFrame:
    """One verdict column of several audits (``share_back``: the share of the forgotten facts that came back, or
    ``still_there``) side by side: one row per (probe, setting), one column per ``{name: AuditReport}`` entry, NaN
    where a model's audit has no such probe."""
    return pd.DataFrame({name: r.verdicts.set_index(["probe", "setting"])[column] for name, r in reports.items()})


def recorded_numbers(reports: dict) -> dict:
    """What a notebook records of several audits: ``audit_share_back`` and ``audit_still_there`` keyed
    ``"<name> | <probe> <setting>"`` (model by model, as :func:`side_by_side` orders them), and
    ``audit_verdicts`` (each model's verdict lines)."""
    side, still = side_by_side(reports, "share_back"), side_by_side(reports, "still_there")
    return {"audit_share_back": {f"{name} | {p} {s}": v for name in side for (p, s), v in side[name].items()},
            "audit_still_there": {f"{name} | {p} {s}": v for name in still for (p, s), v in still[name].items()},
            "audit_verdicts": {name: r.lines() for name, r in reports.items()}}
