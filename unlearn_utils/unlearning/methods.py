"""The ``unlearn()`` entry point: fine-tuning unlearning with any registered method, full or LoRA, evaluated as
it trains. The methods (``ga``, ``grad_diff``, ``npo``, ``idk``, ``rmu``, ...) are the entries of
:mod:`unlearn_utils.unlearning.registry`; their losses are in :mod:`unlearn_utils.unlearning.losses`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from .. import distributed
from ..arch import is_peft, merged_copy
from ..cache import cached, save_checked
from ..data import data_fingerprint, encode_examples, pad_id, rows_of
from ..models import load_checked, preset
from ..training import (TRAINING_VERSION, TimedEval, answer_logits, check_count, check_number, loss_batch,
                        pad_batch, set_seed, train_loop)
from ..world import check_splits
from . import losses as L
from .registry import METHODS as REGISTRY
from .registry import get_method

# Every method's default settings, and the methods' names, as the registry holds them.
DEFAULTS: dict[str, dict] = {name: dict(m.defaults) for name, m in REGISTRY.items()}
METHODS = tuple(REGISTRY)


RMU_TOKENS = ("all", "answer")


@dataclass
class UnlearnConfig:
    """Settings of one unlearning run (saved next to the model). Unset values take the method's defaults."""

    method: str = "grad_diff"
    lr: float | None = None
    steps: int | None = None
    batch_size: int = 32
    retain_weight: float = 1.0
    beta: float = 0.1
    gamma: float = 0.0
    simnpo_margin: str = "code"       # SimNPO: β·(S/|y| - γ) as its authors' code and open-unlearning ("code"), or
                                      # the paper's equation β·S/|y| - γ ("paper"); the same loss at γ = 0
    layer: int | None = None          # RMU: which layer's output is steered (default: the middle layer)
    steering_coeff: float = 4.0       # RMU: |control| = coeff x the mean hidden-state norm on forget data
    rmu_tokens: str = "all"           # RMU: steer every prompt and answer token ("all", the kit's default) or, as
                                      # open-unlearning, the answer tokens, averaged per sequence ("answer")
    lora: bool = False
    lora_rank: int = 8
    lora_alpha: int = 16
    weight_decay: float = 0.0
    only_modules: tuple[str, ...] | None = None  # train only these modules' parameters (e.g. SURE's selection)
    seed: int = 0
    extra: dict = field(default_factory=dict)

    @classmethod
    def for_method(cls, method: str, defaults: dict | None = None, **overrides) -> "UnlearnConfig":
        """The method's settings: its :data:`DEFAULTS`, then ``defaults`` (the model's preset,
        :func:`unlearn_utils.models.preset`), then the ``overrides`` that are not None."""
        spec = get_method(method)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"Unknown setting(s) {sorted(unknown)} for unlearn(); known: {sorted(known)}.")
        overrides = {k: v for k, v in overrides.items() if v is not None}
        values = {**spec.defaults, **(defaults or {}), **overrides}
        if values.get("lora") and "lr" not in overrides:
            values["lr"] = values["lr"] * 10  # LoRA updates few weights: a larger step is standard
        return cls(method=method, **values).check()

    def check(self) -> "UnlearnConfig":
        """Refuse settings no run can use (NaN, infinity, a zero batch, ...), naming the setting and a fix, before
        any model is copied or trained. Returns the config (whole numbers as ints, ``only_modules`` a tuple)."""
        default = get_method(self.method).defaults
        check_number("lr (the learning rate)", self.lr, minimum=0, strict=True,
                     fix=f"Use a small positive value, e.g. {default.get('lr', 3e-4):g} ({self.method}'s default).")
        self.steps = check_count("steps (the number of steps)", self.steps,
                                 fix=f"e.g. steps={default.get('steps', 200)} ({self.method}'s default).")
        self.batch_size = check_count("batch_size (the batch size)", self.batch_size, fix="e.g. batch_size=32.")
        check_number("retain_weight", self.retain_weight, minimum=0,
                     fix=f"Use e.g. {default.get('retain_weight', 1.0):g} (0 turns the retain term off).")
        check_number("beta", self.beta, minimum=0, strict=True,
                     fix="NPO, SimNPO and DPO divide by it: use e.g. 0.1 (SimNPO: 2.5).")
        check_number("gamma", self.gamma, fix="SimNPO's margin: use e.g. 0.0.")
        if self.simnpo_margin not in L.SIMNPO_MARGINS:
            raise ValueError(f"simnpo_margin must be one of {L.SIMNPO_MARGINS} ('code': β·(S/|y| - γ), as SimNPO's "
                             f"code and open-unlearning; 'paper': β·S/|y| - γ), got {self.simnpo_margin!r}.")
        if self.rmu_tokens not in RMU_TOKENS:
            raise ValueError(f"rmu_tokens must be one of {RMU_TOKENS} ('all': every prompt and answer token; "
                             f"'answer': the answer tokens, as open-unlearning), got {self.rmu_tokens!r}.")
        check_number("steering_coeff", self.steering_coeff, fix="RMU's steering coefficient: use e.g. 4.0.")
        check_number("weight_decay", self.weight_decay, minimum=0, fix="Use 0 (none) or a small value such as 0.01.")
        self.lora_rank = check_count("lora_rank", self.lora_rank, fix="e.g. lora_rank=8.")
        check_number("lora_alpha", self.lora_alpha, minimum=0, strict=True, fix="e.g. lora_alpha=16.")
        if self.layer is not None:
            self.layer = check_count("layer", self.layer, minimum=None,
                                     fix="RMU's steered layer: a layer index, or None for the middle layer.")
        self.seed = check_count("seed", self.seed, minimum=None, fix="e.g. seed=0.")
        if self.only_modules is not None:
            if isinstance(self.only_modules, str):
                raise ValueError(f"only_modules must be a list or tuple of module names, got the string "
                                 f"{self.only_modules!r} (it would be read letter by letter): write "
                                 f"only_modules=({self.only_modules!r},).")
            self.only_modules = tuple(self.only_modules)
            bad = [m for m in self.only_modules if not isinstance(m, str)]
            if bad or not self.only_modules:
                raise ValueError(f"only_modules must be a non-empty list of module names (strings such as "
                                 f"'model.layers.3.mlp'), got {self.only_modules!r}; None trains every parameter.")
        return self


@dataclass
class _Run:
    """What a method's forget term reads during one run (:mod:`unlearn_utils.unlearning.registry`)."""

    config: "UnlearnConfig"
    model: object
    logits: Callable
    reference_nll: "ReferenceNLL"
    rmu: object = None


class _Cycler:
    """Deterministic shuffled batches that cycle over a list of examples."""

    def __init__(self, seqs, masks, batch_size, pad_id, seed):
        self.seqs, self.masks, self.bs, self.pad = seqs, masks, batch_size, pad_id
        self.rng = random.Random(seed)
        self.order, self.pos = [], 0

    def next(self, extra: list[list] | None = None) -> tuple[dict, list[int]]:
        idx = []
        while len(idx) < min(self.bs, len(self.seqs)):
            if self.pos >= len(self.order):
                self.order = list(range(len(self.seqs)))
                self.rng.shuffle(self.order)
                self.pos = 0
            idx.append(self.order[self.pos])
            self.pos += 1
        batch = pad_batch([self.seqs[i] for i in idx], self.pad, [self.masks[i] for i in idx])
        return batch, idx


class ReferenceNLL:
    """S_ref(x) of each forget (or refusal) example under the frozen reference, kept after its first batch.

    NPO and DPO compare every step's S_θ(x) with S_ref(x). The reference is frozen and runs without dropout, so
    once an example has been through it its value is reused instead of running the reference on the whole batch
    again: after the first epoch over the forget set, most steps skip the reference forward. A value is reused only
    in a batch of the same shape, padding and answer width: on a CPU a row's numbers can differ in the last bit with
    how far its batch is padded, and this way a CPU run gives exactly the numbers of running the reference every
    step (on a GPU they may differ in the last bit).

    One instance serves one training run. ``reference_logits(batch)`` returns the reference's logits for a batch at
    ``batch["positions"]``, which ``batch["answer_labels"]`` labels (:func:`unlearn_utils.training.answer_positions`).
    A call ``(batch, idx, kind)`` takes the batch, the indices of its rows in the run's fixed list of encoded
    examples, and ``kind``, a name for that list (the forget answers and the refusals are two lists of the same
    examples); it returns S_ref of each row.
    """

    def __init__(self, reference_logits: Callable[[dict], torch.Tensor]):
        self.reference_logits, self.values = reference_logits, {}

    def __call__(self, batch: dict, idx: list[int], kind: str = "forget") -> torch.Tensor:
        # unpadded batches take other kernels; the output layer runs on [batch x answer width] rows
        shape = (*batch["input_ids"].shape, bool(batch["attention_mask"].all()), batch["positions"].shape[1])
        keys = [(kind, i, shape) for i in idx]
        if any(k not in self.values for k in keys):
            s_ref, _ = L.sequence_nll(self.reference_logits(batch), batch["answer_labels"])
            for k, v in zip(keys, s_ref):
                self.values.setdefault(k, v)
        return torch.stack([self.values[k] for k in keys])


@contextlib.contextmanager
def _eval_mode(model):
    """Within the block the model is in eval mode (no dropout); afterwards in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _forward(model, batch, **kw):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kw)


# ----------------------------------------------------------------------------------------------
# The entry point
# ----------------------------------------------------------------------------------------------
def unlearn(model, tokenizer, forget, retain, method: str = "grad_diff", *, eval_fn: Callable | None = None,
            eval_every: int = 0, keep_best: Callable[[dict], float] | None = None, inplace: bool = False,
            progress: bool = True, **settings):
    """Unlearn ``forget`` from ``model`` while keeping ``retain``; returns ``(unlearned_model, log)``.

    forget / retain: datasets or lists of rows with ``prompt`` and ``answer`` (only the answer is trained on),
    or with ``text``. settings: any :class:`UnlearnConfig` field (``lr``, ``steps``, ``lora=True``, ...).
    eval_fn(model) -> dict of numbers, run at step 0 and every ``eval_every`` steps; the log then holds the
    trajectory. keep_best(row) -> score: at the end, restore the evaluated checkpoint with the highest score.
    The input model is copied unless ``inplace=True``. Settings not given come from the model's preset
    (:func:`unlearn_utils.models.preset`: none for the world model, small steps for a pretrained one).
    ``log.attrs`` holds ``seconds`` (training wall time, with evaluation) and ``config`` (every setting used).
    """
    cfg = UnlearnConfig.for_method(method, defaults=preset(model, method), **settings)
    spec = get_method(cfg.method)
    check_splits(forget=forget, retain=retain)
    forget_rows, retain_rows = rows_of(forget), rows_of(retain)
    distributed.check_batch(min(cfg.batch_size, len(forget_rows), len(retain_rows)),
                            "the batch (batch_size, or the forget or retain set if smaller)")
    set_seed(cfg.seed)
    device = next(model.parameters()).device
    model = model if inplace else copy.deepcopy(model)
    model.train()

    reference = None
    if spec.needs_reference and not cfg.lora:
        reference = copy.deepcopy(model).eval()
        for p in reference.parameters():
            p.requires_grad_(False)
    if cfg.lora:
        model = _add_lora(model, cfg)

    pad = pad_id(tokenizer)
    f_seqs, f_masks = encode_examples(tokenizer, forget_rows)
    r_seqs, r_masks = encode_examples(tokenizer, retain_rows)
    forget_batches = _Cycler(f_seqs, f_masks, cfg.batch_size, pad, cfg.seed)
    retain_batches = _Cycler(r_seqs, r_masks, cfg.batch_size, pad, cfg.seed + 1)
    relabelled = None
    if spec.answers is not None:
        if "prompt" not in forget_rows[0]:
            raise ValueError(f"{cfg.method} needs prompt/answer rows (it gives the forget prompts new answers).")
        relabelled = encode_examples(tokenizer, forget_rows,
                                     answers=spec.answers(forget_rows, retain_rows, cfg.seed))

    def ref_logits(batch):
        with torch.no_grad():
            if reference is not None:
                return answer_logits(reference, batch)
            with model.disable_adapter(), _eval_mode(model):  # the reference, like the copied one, has no dropout
                return answer_logits(model, batch)

    run = _Run(config=cfg, model=model, logits=lambda batch: answer_logits(model, batch),
               reference_nll=ReferenceNLL(ref_logits),
               rmu=_RMU(model, reference, cfg, f_seqs, f_masks, pad, device) if cfg.method == "rmu" else None)

    def batches(step):
        fb, idx = forget_batches.next()
        rb, _ = retain_batches.next()
        # every process draws the global batch and trains on its rows (all of them in one process)
        if relabelled is not None:
            out = {"relabelled": loss_batch(distributed.rows(pad_batch([relabelled[0][i] for i in idx], pad,
                                                                       [relabelled[1][i] for i in idx])), device)}
        else:
            out = {}
        fb, idx = distributed.rows(fb, idx)
        return {"forget": loss_batch(fb, device), "retain": loss_batch(distributed.rows(rb), device),
                "forget_idx": idx, **out}

    def loss_fn(model, b):
        r = b["retain"]
        retain_term = 0.0
        if spec.retain == "nll":
            retain_term = cfg.retain_weight * L.mean_nll(answer_logits(model, r), r["answer_labels"])
        elif spec.retain == "kl":
            retain_term = cfg.retain_weight * L.kl_to_reference(answer_logits(model, r), ref_logits(r),
                                                                r["answer_labels"])
        forget_term = spec.forget_term(run, b)
        return forget_term + retain_term if spec.retain else forget_term

    evals: list[dict] = []
    best = {"score": None, "state": None}

    def evaluate(step, row):
        model.eval()
        with torch.no_grad():
            numbers = dict(eval_fn(model))
        model.train()
        entry = {"step": step, **numbers}
        evals.append(entry)
        if keep_best is not None:
            score = keep_best(entry)
            if best["score"] is None or score > best["score"]:
                best["score"], best["state"] = score, {k: v.detach().clone() for k, v in model.state_dict().items()}

    if eval_fn is not None:
        evaluate(0, {})
    params = run.rmu.params if run.rmu is not None else None
    if cfg.only_modules:
        names = dict(model.named_parameters())
        chosen = [p for n, p in names.items() if any(n == m or n.startswith(m + ".") for m in cfg.only_modules)]
        if not chosen:
            raise ValueError(f"only_modules {list(cfg.only_modules)} match no parameter of the model; "
                             f"parameter names look like {list(names)[:3]}.")
        params = chosen
    start = time.time()
    train_log = train_loop(model, batches, cfg.steps, cfg.lr, loss_fn=loss_fn, schedule="constant",
                           weight_decay=cfg.weight_decay, params=params,
                           callback=evaluate if eval_fn is not None else None,
                           callback_every=eval_every if eval_fn is not None else 0,
                           desc=f"unlearning ({cfg.method}{', LoRA' if cfg.lora else ''})", progress=progress)
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    log = pd.DataFrame(train_log)
    if evals:
        log = log.merge(pd.DataFrame(evals), on="step", how="outer").sort_values("step").reset_index(drop=True)
    log.attrs.update(seconds=time.time() - start, config=dataclasses.asdict(cfg))
    model.unlearn_config = cfg
    return model, log


def _add_lora(model, cfg: UnlearnConfig):
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules="all-linear", lora_dropout=0.0,
                      init_lora_weights=True)
    torch.manual_seed(cfg.seed)
    return get_peft_model(model, lcfg)


class _StopForward(Exception):
    """Raised by RMU's hook once the steered layer has run."""


class _RMU:
    """State of an RMU run: the steered layer, the control vector and the parameters it may update."""

    def __init__(self, model, reference, cfg, f_seqs, f_masks, pad, device):
        from ..arch import get_adapter

        self.adapter = get_adapter(model)
        n = self.adapter.n_layers(model)
        self.layer = n // 2 if cfg.layer is None else cfg.layer
        if not -n <= self.layer < n:
            raise IndexError(f"RMU layer {self.layer} is out of range: the model has {n} layers (0..{n - 1}).")
        self.layer %= n
        self.cfg, self.reference = cfg, reference
        # Like the WMDP code: update the MLPs of the steered layer and the two before it.
        layers = range(max(0, self.layer - 2), self.layer + 1)
        # (with LoRA, the adapters of the steered layer and those below it: the loss reads nothing above)
        self.params = ([p for i in range(self.layer + 1) for p in self.adapter.layer(model, i).parameters()
                        if p.requires_grad] if cfg.lora
                       else [p for i in layers for p in self.adapter.layer(model, i).mlp.parameters()])
        gen = torch.Generator().manual_seed(cfg.seed)
        u = torch.rand(model.config.hidden_size, generator=gen)
        u = u / u.norm()
        batch = pad_batch(f_seqs[:64], pad, f_masks[:64])
        with torch.no_grad():
            h = self.ref_hidden(model, loss_batch(batch, device))
        mask = batch["attention_mask"].bool().to(device)
        scale = h[mask].norm(dim=-1).mean()
        self.control = cfg.steering_coeff * scale * u.to(scale.device)  # u is drawn on the CPU (same on any device)

    def hidden(self, model, batch):
        """The residual stream after the steered layer. The forward stops there: the loss reads nothing above it,
        so the upper layers and the unembedding are not computed (most of a large model when the layer is low).
        The same tensor as ``output_hidden_states`` (a model with dropout draws no random numbers above the layer)."""
        if self.layer == self.adapter.n_layers(model) - 1:  # transformers returns the last one after the final norm
            return _forward(model, batch, output_hidden_states=True).hidden_states[-1]
        captured = {}

        def stop(_module, _inputs, output):
            captured["h"] = output[0] if isinstance(output, tuple) else output
            raise _StopForward

        handle = self.adapter.layer(model, self.layer).register_forward_hook(stop)
        try:
            _forward(model, batch)
        except _StopForward:
            pass
        finally:
            handle.remove()
        return captured["h"]

    def ref_hidden(self, model, batch):
        with torch.no_grad():
            if self.reference is not None:
                return self.hidden(self.reference, batch)
            with model.disable_adapter(), _eval_mode(model):
                return self.hidden(model, batch)

    def loss(self, model, f, r):
        hf = self.hidden(model, f)
        hr = self.hidden(model, r)
        hr_ref = self.ref_hidden(model, r)
        if self.cfg.rmu_tokens == "answer":  # open-unlearning: the answer tokens, each sequence's mean
            return L.rmu_loss(hf, f["labels"] != -100, self.control, hr, hr_ref, r["labels"] != -100,
                              self.cfg.retain_weight, average="sequences")
        return L.rmu_loss(hf, f["attention_mask"], self.control, hr, hr_ref, r["attention_mask"],
                          self.cfg.retain_weight)


# ----------------------------------------------------------------------------------------------
# Saving and loading unlearned models
# ----------------------------------------------------------------------------------------------
def save_unlearned(model, tokenizer, folder, extra: dict | None = None, files: dict[str, bytes] | None = None) -> Path:
    """Save an unlearned model (LoRA merged into the weights) as safetensors with its settings.

    A model whose weights hold NaN or infinity (a diverged run) is refused: saved, it would be loaded and scored
    later as if it were a result."""
    cfg = getattr(model, "unlearn_config", None)
    to_save = merged_copy(model) if is_peft(model) else model
    settings = {"kind": "unlearned_model", "unlearn_config": dataclasses.asdict(cfg) if cfg else None,
                **(extra or {})}
    return save_checked(to_save, tokenizer, folder, settings, files)


def _read_unlearned(folder: Path, device=None, dtype=None, log_file: str | None = None, verify: bool = True):
    model, _ = load_checked(folder, device=device, dtype=dtype, verify=verify)
    settings = json.loads((folder / "settings.json").read_text())
    if settings.get("unlearn_config"):
        conf = dict(settings["unlearn_config"])
        if conf.get("only_modules") is not None:
            conf["only_modules"] = tuple(conf["only_modules"])
        model.unlearn_config = UnlearnConfig(**conf)
    # the log asked for; else the training log, or a trajectory (which holds the loss per step too)
    found = [folder / log_file] if log_file else sorted(folder.glob("log.csv")) + sorted(folder.glob("log-*.csv"))
    log = pd.read_csv(found[0]) if found else pd.DataFrame()
    log.attrs.update(seconds=settings.get("train_seconds", float("nan")),
                     eval_seconds=settings.get("eval_seconds", float("nan")), config=settings.get("unlearn_config"),
                     saved=settings)
    return model, log


def load_unlearned(folder, device=None, dtype=None):
    """Load a model saved by :func:`save_unlearned` (checked first); returns ``(model, log)``.

    ``model.unlearn_config`` holds its settings; ``log`` is the saved training log (empty if none was saved), and
    ``log.attrs["saved"]`` everything saved beside the model. The tokenizer is saved in the folder too:
    :func:`unlearn_utils.models.load_model` on the folder returns both.
    """
    return _read_unlearned(Path(folder), device=device, dtype=dtype)


def cache_settings(cfg: UnlearnConfig) -> dict:
    """The settings of a run as its cache key holds them: every field, except those added after results were
    cached while they are at a value that trains exactly as before (so those results stay valid): ``only_modules``
    None, ``rmu_tokens`` "all", and ``simnpo_margin`` whenever γ is 0 (both margins are then the same loss)."""
    conf = dataclasses.asdict(cfg)
    for name, same in (("only_modules", conf["only_modules"] is None), ("rmu_tokens", conf["rmu_tokens"] == "all"),
                       ("simnpo_margin", conf["gamma"] == 0)):
        if same:
            del conf[name]
    return conf


def cached_unlearn(model, tokenizer, world, split: str, method: str, model_key: str | None = None,
                   progress: bool = True, eval_fn: Callable | None = None, eval_every: int = 0,
                   log_name: str | None = None, data: dict | None = None, **settings):
    """Unlearn ``world``'s ``split`` (trained phrasings) from a world model, reusing a cached result when one exists.

    Returns ``(model, log)`` like :func:`unlearn`. ``log`` is the trajectory when ``eval_fn`` is given, else the
    training log (loss per step); ``log.attrs`` holds ``seconds`` (wall time of the training, measured when it was
    trained), ``eval_seconds`` (the part spent evaluating) and ``cached`` (whether it was loaded).

    data: ``{"forget": ..., "retain": ...}`` question sets to use instead of the world's split (e.g. from
    :func:`unlearn_utils.benchmark_data.load_data`); their contents are then part of the cache key.
    The cache key is the original's key (a world model's config key, or a fingerprint of another model's weights)
    + split + every unlearning setting + the training-code version (:data:`unlearn_utils.training.TRAINING_VERSION`).
    Without ``model_key`` nothing is cached.

    eval_fn / eval_every / log_name: evaluate during training as :func:`unlearn` does; the trajectory is cached
    next to the model under ``log_name`` (name it after what eval_fn measures and how often). Evaluation does not
    change training, so a model cached without a trajectory is the same model; it is trained again only when the
    requested trajectory is missing.
    """
    cfg = UnlearnConfig.for_method(method, defaults=preset(model, method), **settings)
    if eval_fn is not None and not log_name:
        raise ValueError("Name the trajectory (log_name=...) so that its cached copy can be found again.")
    log_file = f"log-{log_name}.csv" if eval_fn is not None else None
    key = None
    if model_key is not None:
        key = {"model": model_key, "split": split, "config": cache_settings(cfg), "trainer": TRAINING_VERSION}
        if data is not None:
            key["data"] = data_fingerprint(data["forget"], data["retain"])

    def build():
        if data is not None:
            forget, retain = data["forget"], data["retain"]
        else:
            forget, retain = world.facts(split, "trained"), world.facts("retain", "trained", split)
        timer = TimedEval(eval_fn) if eval_fn is not None else None
        start = time.time()
        out, log = unlearn(model, tokenizer, forget, retain, method, progress=progress, eval_fn=timer,
                           eval_every=eval_every, **settings)
        log.attrs.update(seconds=time.time() - start, eval_seconds=timer.seconds if timer else 0.0, cached=False)
        return out, log

    def save(result, folder):
        out, log = result
        # keep the trajectories cached earlier for the same model, add this one
        logs = {p.name: p.read_bytes() for p in folder.glob("log*.csv")} if folder.exists() else {}
        logs[log_file or "log.csv"] = log.to_csv(index=False).encode()
        save_unlearned(out, tokenizer, folder, {"model_key": model_key, "split": split,
                                                "train_seconds": log.attrs["seconds"],
                                                "eval_seconds": log.attrs["eval_seconds"],
                                                "final_loss": float(log["loss"].iloc[-1])}, files=logs)

    def load(folder):
        out, log = _read_unlearned(folder, device=next(model.parameters()).device, log_file=log_file, verify=False)
        log.attrs["cached"] = True
        return out, log

    out, log = cached("unlearned", key, build, save, load,
                      usable=lambda folder: log_file is None or (folder / log_file).exists())
    if hasattr(out, "merge_and_unload"):
        out = out.merge_and_unload()
    out.unlearn_config = cfg
    return out, log
