"""The ``unlearn()`` entry point: fine-tuning unlearning with any method, full or LoRA, evaluated as it trains.

Methods (losses in :mod:`unlearn_utils.unlearning.losses`):

============== =====================================================================================
``ga``          gradient ascent on the forget set
``grad_diff``   GA + NLL on retain data (gradient difference)
``ga_kl``       GA + KL to the original model on retain data
``npo``         negative preference optimisation; ``npo_gd`` / ``npo_kl`` add retain NLL / KL
``simnpo``      reference-free, length-normalised NPO (+ retain NLL, as in its paper's TOFU runs)
``idk``         fine-tune the forget prompts to answer with a refusal ("I do not know .") + retain NLL
``idk_dpo``     DPO preferring the refusal over the true answer + retain NLL
``rmu``         push one layer's forget activations toward a random direction, keep retain ones
============== =====================================================================================
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from ..models import REFUSALS, preset, save_checked
from ..data import encode_texts, special_prefix
from ..training import TRAINING_VERSION, answer_positions, logits_at, pad_batch, set_seed, train_loop
from ..world import check_splits
from . import losses as L

# Documented defaults for the world model (6 layers, width 128), chosen by a small sweep over lr {1e-4, 3e-4, 1e-3}
# and steps {60, 120, 200} (see benchmarks/RESULTS.md); with a real model, lower the learning rate (1e-5 is typical).
DEFAULTS: dict[str, dict] = {
    # no utility constraint: GA over-unlearns within a few dozen steps (the point notebook 01 makes)
    "ga":        dict(lr=3e-4, steps=60),
    "grad_diff": dict(lr=3e-4, steps=200, retain_weight=1.0),
    "ga_kl":     dict(lr=3e-4, steps=200, retain_weight=1.0),
    "npo":       dict(lr=3e-4, steps=200, beta=0.1),
    "npo_gd":    dict(lr=3e-4, steps=200, beta=0.1, retain_weight=1.0),
    "npo_kl":    dict(lr=3e-4, steps=200, beta=0.1, retain_weight=1.0),
    "simnpo":    dict(lr=3e-4, steps=200, beta=2.5, gamma=0.0, retain_weight=1.0),
    "idk":       dict(lr=3e-4, steps=200, retain_weight=1.0),
    "idk_dpo":   dict(lr=3e-4, steps=200, beta=0.1, retain_weight=1.0),
    "rmu":       dict(lr=1e-3, steps=200, layer=None, steering_coeff=4.0, retain_weight=10.0),
}
METHODS = tuple(DEFAULTS)
NEEDS_REFERENCE = {"ga_kl", "npo", "npo_gd", "npo_kl", "idk_dpo", "rmu"}


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
    layer: int | None = None          # RMU: which layer's output is steered (default: the middle layer)
    steering_coeff: float = 4.0       # RMU: |control| = coeff x the mean hidden-state norm on forget data
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
        if method not in DEFAULTS:
            raise ValueError(f"Unknown unlearning method {method!r}. Choose one of: {', '.join(METHODS)}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"Unknown setting(s) {sorted(unknown)} for unlearn(); known: {sorted(known)}.")
        overrides = {k: v for k, v in overrides.items() if v is not None}
        values = {**DEFAULTS[method], **(defaults or {}), **overrides}
        if values.get("lora") and "lr" not in overrides:
            values["lr"] = values["lr"] * 10  # LoRA updates few weights: a larger step is standard
        cfg = cls(method=method, **values)
        if not (isinstance(cfg.lr, (int, float)) and cfg.lr > 0):
            raise ValueError(f"The learning rate must be a positive number, got {cfg.lr!r}.")
        if not (isinstance(cfg.steps, int) and cfg.steps > 0):
            raise ValueError(f"The number of steps must be a positive integer, got {cfg.steps!r}.")
        if not (isinstance(cfg.batch_size, int) and cfg.batch_size > 0):
            raise ValueError(f"The batch size must be a positive integer, got {cfg.batch_size!r}.")
        return cfg


# ----------------------------------------------------------------------------------------------
# Data: prompt/answer rows (labels on the answer) or plain text rows (labels everywhere)
# ----------------------------------------------------------------------------------------------
def _rows(data) -> list[dict]:
    if isinstance(data, list):
        return [r if isinstance(r, dict) else {"text": r} for r in data]
    return data.to_list() if hasattr(data, "to_list") else list(data)


def data_fingerprint(*datasets_) -> str:
    """A short hash of the prompt/answer (or text) rows of some data sets: part of a cache key."""
    import hashlib

    h = hashlib.sha256()
    for ds in datasets_:
        for r in _rows(ds):
            h.update(json.dumps([r.get("prompt"), r.get("answer"), r.get("text")]).encode())
        h.update(b"|")
    return h.hexdigest()[:16]


def encode_examples(tokenizer, rows: list[dict], answers: list[str] | None = None) -> tuple[list, list]:
    """Token ids and label masks. With a prompt, only the answer is labelled; plain text is labelled throughout."""
    from ..evaluate import encode_qa

    seqs, masks = [], []
    asked = [i for i, r in enumerate(rows) if "prompt" in r]  # encoded together, in one tokenizer call
    pairs = dict(zip(asked, encode_qa(tokenizer, [rows[i]["prompt"] for i in asked],
                                      [answers[i] if answers is not None else str(rows[i]["answer"]) for i in asked])))
    for i, r in enumerate(rows):
        if "prompt" in r:
            p, a = pairs[i]
            eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
            seqs.append(p + a + eos)
            masks.append([0] * len(p) + [1] * (len(a) + len(eos)))
        else:
            prefix = len(special_prefix(tokenizer))
            ids = encode_texts(tokenizer, [r["text"]])[0]
            seqs.append(ids)
            masks.append([0] * prefix + [1] * (len(ids) - prefix))
    return seqs, masks


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


def _answer_logits(model, batch, **kw):
    """Logits where the losses read them (before each labelled token), to go with ``batch["answer_labels"]``."""
    return logits_at(model, batch["input_ids"], batch["attention_mask"], batch["positions"], **kw)


def _to(batch, device):
    """The batch on ``device``, with the positions and labels the losses read (:func:`training.answer_positions`)."""
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["positions"], batch["answer_labels"] = answer_positions(batch["labels"])
    return batch


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
    """
    cfg = UnlearnConfig.for_method(method, defaults=preset(model, method), **settings)
    check_splits(forget=forget, retain=retain)
    set_seed(cfg.seed)
    device = next(model.parameters()).device
    model = model if inplace else copy.deepcopy(model)
    model.train()
    forget_rows, retain_rows = _rows(forget), _rows(retain)

    reference = None
    if cfg.method in NEEDS_REFERENCE and not cfg.lora:
        reference = copy.deepcopy(model).eval()
        for p in reference.parameters():
            p.requires_grad_(False)
    if cfg.lora:
        model = _add_lora(model, cfg)

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    f_seqs, f_masks = encode_examples(tokenizer, forget_rows)
    r_seqs, r_masks = encode_examples(tokenizer, retain_rows)
    forget_batches = _Cycler(f_seqs, f_masks, cfg.batch_size, pad, cfg.seed)
    retain_batches = _Cycler(r_seqs, r_masks, cfg.batch_size, pad, cfg.seed + 1)
    refusal_seqs = None
    if cfg.method in ("idk", "idk_dpo"):
        rng = random.Random(cfg.seed)
        refusals = [rng.choice(REFUSALS) for _ in forget_rows]
        if "prompt" not in forget_rows[0]:
            raise ValueError(f"{cfg.method} needs prompt/answer rows (the answer is replaced by a refusal).")
        refusal_seqs = encode_examples(tokenizer, forget_rows, answers=refusals)

    def ref_logits(batch):
        with torch.no_grad():
            if reference is not None:
                return _answer_logits(reference, batch)
            with model.disable_adapter(), _eval_mode(model):  # the reference, like the copied one, has no dropout
                return _answer_logits(model, batch)

    ref_nll = ReferenceNLL(ref_logits)
    rmu = _RMU(model, reference, cfg, f_seqs, f_masks, pad, device) if cfg.method == "rmu" else None

    def batches(step):
        fb, idx = forget_batches.next()
        rb, _ = retain_batches.next()
        out = {"forget": _to(fb, device), "retain": _to(rb, device), "forget_idx": idx}
        if refusal_seqs is not None:
            out["refusal"] = _to(pad_batch([refusal_seqs[0][i] for i in idx], pad,
                                           [refusal_seqs[1][i] for i in idx]), device)
        return out

    def loss_fn(model, b):
        m, f, r = cfg.method, b["forget"], b["retain"]
        if m == "rmu":
            return rmu.loss(model, f, r)
        retain_term = 0.0
        if m in ("grad_diff", "npo_gd", "simnpo", "idk", "idk_dpo"):
            retain_term = cfg.retain_weight * L.mean_nll(_answer_logits(model, r), r["answer_labels"])
        elif m in ("ga_kl", "npo_kl"):
            retain_term = cfg.retain_weight * L.kl_to_reference(_answer_logits(model, r), ref_logits(r),
                                                                r["answer_labels"])
        if m in ("ga", "grad_diff", "ga_kl"):
            forget_term = L.ga_loss(_answer_logits(model, f), f["answer_labels"])
        elif m in ("npo", "npo_gd", "npo_kl"):
            s, _ = L.sequence_nll(_answer_logits(model, f), f["answer_labels"])
            forget_term = L.npo_loss(s, ref_nll(f, b["forget_idx"], "forget"), cfg.beta)
        elif m == "simnpo":
            s, n = L.sequence_nll(_answer_logits(model, f), f["answer_labels"])
            forget_term = L.simnpo_loss(s, n, cfg.beta, cfg.gamma)
        elif m == "idk":
            forget_term = L.mean_nll(_answer_logits(model, b["refusal"]), b["refusal"]["answer_labels"])
        elif m == "idk_dpo":
            c, rej = b["refusal"], f
            s_c, _ = L.sequence_nll(_answer_logits(model, c), c["answer_labels"])
            s_r, _ = L.sequence_nll(_answer_logits(model, rej), rej["answer_labels"])
            forget_term = L.dpo_loss(s_c, s_r, ref_nll(c, b["forget_idx"], "refusal"),
                                     ref_nll(rej, b["forget_idx"], "forget"), cfg.beta)
        else:  # pragma: no cover - guarded by UnlearnConfig
            raise ValueError(m)
        return forget_term + retain_term

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
    params = rmu.params if rmu is not None else None
    if cfg.only_modules:
        names = dict(model.named_parameters())
        chosen = [p for n, p in names.items() if any(n == m or n.startswith(m + ".") for m in cfg.only_modules)]
        if not chosen:
            raise ValueError(f"only_modules {list(cfg.only_modules)} match no parameter of the model; "
                             f"parameter names look like {list(names)[:3]}.")
        params = chosen
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
        # (with LoRA, every adapter weight trains instead)
        self.params = None if cfg.lora else [p for i in layers for p in self.adapter.layer(model, i).mlp.parameters()]
        gen = torch.Generator().manual_seed(cfg.seed)
        u = torch.rand(model.config.hidden_size, generator=gen)
        u = u / u.norm()
        batch = pad_batch(f_seqs[:64], pad, f_masks[:64])
        with torch.no_grad():
            h = self.ref_hidden(model, _to(batch, device))
        mask = batch["attention_mask"].bool().to(device)
        scale = h[mask].norm(dim=-1).mean()
        self.control = cfg.steering_coeff * scale * u.to(scale.device)  # u is drawn on the CPU (same on any device)

    def hidden(self, model, batch):
        """The residual stream after the steered layer. The forward stops there: the loss reads nothing above it,
        so the upper layers and the unembedding are not computed (most of a large model when the layer is low).
        The same tensor as ``output_hidden_states``; a model with dropout draws fewer random numbers than before."""
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
        return L.rmu_loss(hf, f["attention_mask"], self.control, hr, hr_ref, r["attention_mask"],
                          self.cfg.retain_weight)


# ----------------------------------------------------------------------------------------------
# Saving and loading unlearned models
# ----------------------------------------------------------------------------------------------
def save_unlearned(model, tokenizer, folder, extra: dict | None = None, files: dict[str, bytes] | None = None) -> Path:
    """Save an unlearned model (LoRA merged into the weights) as safetensors with its settings."""
    cfg = getattr(model, "unlearn_config", None)
    to_save = model
    if hasattr(model, "merge_and_unload"):
        to_save = copy.deepcopy(model).merge_and_unload()
    settings = {"kind": "unlearned_model", "unlearn_config": dataclasses.asdict(cfg) if cfg else None,
                **(extra or {})}
    return save_checked(to_save, tokenizer, folder, settings, files)


def load_unlearned(folder, device=None, dtype=None):
    """Load a model saved by :func:`save_unlearned`; returns ``(model, tokenizer, settings)``."""
    from ..models import load_model

    model, tok = load_model(str(folder), device=device, dtype=dtype)
    settings = json.loads((Path(folder) / "settings.json").read_text())
    if settings.get("unlearn_config"):
        model.unlearn_config = UnlearnConfig(**settings["unlearn_config"])
    return model, tok, settings


def cached_unlearn(model, tokenizer, world, split: str, method: str, model_key: str | None = None,
                   progress: bool = True, eval_fn: Callable | None = None, eval_every: int = 0,
                   log_name: str | None = None, data: dict | None = None, **settings):
    """Unlearn ``world``'s ``split`` (trained phrasings) from a world model, reusing a cached result when one exists.

    data: ``{"forget": ..., "retain": ...}`` question sets to use instead of the world's split (e.g. from
    :func:`unlearn_utils.benchmark_data.load_data`); their contents are then part of the cache key.

    The cache key is the original's key (a world model's config key, or a fingerprint of another model's weights)
    + split + every unlearning setting + the training-code version (:data:`unlearn_utils.training.TRAINING_VERSION`).
    Without ``model_key`` nothing is cached. Returns the unlearned model with ``unlearn_seconds`` (wall time
    of its training, measured when it was trained), ``unlearn_eval_seconds`` (the part spent evaluating) and, when
    ``eval_fn`` is given, ``unlearn_log`` (the trajectory).

    eval_fn / eval_every / log_name: evaluate during training as :func:`unlearn` does; the trajectory is cached
    next to the model under ``log_name`` (name it after what eval_fn measures and how often). Evaluation does not
    change training, so a model cached without a trajectory is the same model; it is trained again only when the
    requested trajectory is missing.
    """
    import time

    from ..models import CorruptCacheError, _load_checked, cache_entry, cache_lock, set_aside
    from ..training import TimedEval

    cfg = UnlearnConfig.for_method(method, defaults=preset(model, method), **settings)
    if eval_fn is not None and not log_name:
        raise ValueError("Name the trajectory (log_name=...) so that its cached copy can be found again.")
    log_file = f"log-{log_name}.csv" if eval_fn is not None else None

    def finish(out, log, seconds, eval_seconds):
        out.unlearn_config = cfg
        out.unlearn_seconds, out.unlearn_eval_seconds, out.unlearn_log = seconds, eval_seconds, log
        return out

    folder = None
    if model_key is not None:
        conf = {k: v for k, v in dataclasses.asdict(cfg).items() if not (k == "only_modules" and v is None)}
        key = {"model": model_key, "split": split, "config": conf, "trainer": TRAINING_VERSION}
        if data is not None:
            key["data"] = data_fingerprint(data["forget"], data["retain"])
        folder = cache_entry("unlearned", key)
    with cache_lock(folder) if folder is not None else contextlib.nullcontext():  # one process trains, others wait
        if folder is not None and folder.exists() and (log_file is None or (folder / log_file).exists()):
            try:
                out, _ = _load_checked(folder, device=next(model.parameters()).device)
                meta = json.loads((folder / "settings.json").read_text())
                return finish(out, pd.read_csv(folder / log_file) if log_file else None,
                              meta.get("train_seconds", float("nan")), meta.get("eval_seconds", float("nan")))
            except (CorruptCacheError, OSError, ValueError, RuntimeError, KeyError) as e:
                set_aside(folder, e)
        if data is not None:
            forget, retain = data["forget"], data["retain"]
        else:
            forget, retain = world.facts(split, "trained"), world.facts("retain", "trained", split)
        timer = TimedEval(eval_fn) if eval_fn is not None else None
        start = time.time()
        out, log = unlearn(model, tokenizer, forget, retain, method, progress=progress, eval_fn=timer,
                           eval_every=eval_every, **settings)
        seconds, eval_seconds = time.time() - start, (timer.seconds if timer else 0.0)
        if folder is not None:
            # keep the trajectories cached earlier for the same model, add this one
            logs = {p.name: p.read_bytes() for p in folder.glob("log-*.csv")} if folder.exists() else {}
            if log_file:
                logs[log_file] = log.to_csv(index=False).encode()
            save_unlearned(out, tokenizer, folder, {"model_key": model_key, "split": split, "train_seconds": seconds,
                                                    "eval_seconds": eval_seconds,
                                                    "final_loss": float(log["loss"].iloc[-1])}, files=logs)
    if hasattr(out, "merge_and_unload"):
        out = out.merge_and_unload()
    return finish(out, log if log_file else None, seconds, eval_seconds)
