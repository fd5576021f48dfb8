"""GRUN: gated representation unlearning (Ren et al., arXiv 2502.17823), written in plain PyTorch.

Instead of changing the model's weights, GRUN keeps the base model frozen and adds, after a few decoder
layers, a small module that edits the residual stream at one position, the last prompt token:

    h' = h + σ(g(h)) · Rᵀ(W h + b − R h)

* ``Rᵀ(W h + b − R h)`` is a LoReFT edit: R (rank r, orthonormal rows) picks an r-dimensional subspace and the
  edit replaces h's coordinates in it by ``W h + b``. This is the *suppression* part.
* ``σ(g(h))`` is a soft gate (a linear map or a small MLP of the same h): trained towards 1 on forget prompts and
  0 on retain prompts, it decides *whether* to suppress. With the gate at 0 the model is exactly the base model.

Training uses any fine-tuning unlearning objective (gradient difference, NPO, "I don't know" targets) plus a
binary cross-entropy on the gate; only the module's few thousand parameters train. We write the module
ourselves (about 40 lines) rather than use pyreft, which pins transformers 4.45 and would undo our pins.

Main entry points: :func:`train_grun` -> :class:`GatedModel` (a base model with modules attached, usable by
every scoring function of the kit), :func:`save_grun` / :func:`load_grun` (attached to a base) /
:func:`load_grun_modules`, :func:`attach`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .arch import get_adapter
from .cache import cached, publish_folder, refuse_non_finite, staging_folder, verify_folder
from .data import data_fingerprint, encode_examples, encode_texts, pad_id, rows_of
from .training import (TRAINING_VERSION, TimedEval, answer_logits, check_count, check_number, loss_batch, pad_batch,
                       set_seed, train_loop)
from .unlearning import losses as L
from .unlearning import methods as unlearning_methods
from .unlearning.registry import METHODS, get_method
from .world import check_splits

# The unlearning methods whose forget term GRUN can train its module with (it reads only logits).
FORGET_LOSSES = tuple(name for name, m in METHODS.items() if m.grun)
GATES = ("linear", "mlp")


# ----------------------------------------------------------------------------------------------
# The module
# ----------------------------------------------------------------------------------------------
def loreft_edit(h: torch.Tensor, R: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The LoReFT edit Rᵀ(W h + b − R h) for hidden states h [..., d]; R, W are [r, d], b is [r].

    Inside the row space of R, h's coordinates ``R h`` are replaced by ``W h + b``; outside it h is untouched.
    """
    return (h @ W.T + b - h @ R.T) @ R


class GatedLoReFT(nn.Module):
    """One GRUN unit at one layer: ``h + σ(g(h)) · Rᵀ(W h + b − R h)``. Returns (edited h, gate value).

    R is the orthonormalised rows (QR) of a free r x d matrix, so it stays orthonormal through any training and
    saves as r x d numbers.
    """

    def __init__(self, hidden_size: int, rank: int = 4, gate: str = "linear"):
        super().__init__()
        if not (isinstance(rank, int) and 0 < rank <= hidden_size):
            raise ValueError(f"rank must be an integer between 1 and the hidden size ({hidden_size}), got {rank!r}.")
        if gate not in GATES:
            raise ValueError(f"Unknown gate {gate!r}: choose one of {GATES}.")
        # a free [r, d] matrix; R is its rows made orthonormal (orthogonal initialisation, as LoReFT)
        self.rotate = nn.Parameter(nn.init.orthogonal_(torch.empty(rank, hidden_size)))
        self.source = nn.Linear(hidden_size, rank)  # W h + b
        self.gate = (nn.Linear(hidden_size, 1) if gate == "linear" else
                     nn.Sequential(nn.Linear(hidden_size, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU(),
                                   nn.Linear(64, 1)))

    @property
    def R(self) -> torch.Tensor:
        q, r = torch.linalg.qr(self.rotate.T)          # [d, r] with orthonormal columns
        return (q * torch.sign(torch.diagonal(r))).T    # fixed signs: R equals the raw rows when they are orthonormal

    def gate_value(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.gate(h)).squeeze(-1)

    def edit(self, h: torch.Tensor) -> torch.Tensor:
        return loreft_edit(h, self.R, self.source.weight, self.source.bias)

    def forward(self, h: torch.Tensor, force_gate: float | None = None):
        g = self.gate_value(h) if force_gate is None else torch.full(h.shape[:-1], float(force_gate), device=h.device)
        return h + g.unsqueeze(-1) * self.edit(h), g


@dataclass
class GRUNConfig:
    """Settings of one GRUN module and its training (defaults follow the paper's code, scaled to the world model)."""

    layers: tuple[int, ...] | None = None  # default: like the paper's 20, 25, 31 of 32 (5/8, 4/5 and the last layer)
    rank: int = 4
    gate: str = "linear"
    forget_loss: str = "grad_diff"       # grad_diff | npo | idk
    lr: float = 4e-3
    steps: int = 600                     # 40 epochs of forget05 (240 rows) at batch 16, as the paper's 40 epochs
    batch_size: int = 16
    retain_weight: float | None = None   # the paper: 2 with grad_diff, 1 with npo / idk
    gate_weight: float = 10.0
    beta: float = 0.1                    # NPO
    seed: int = 0

    def __post_init__(self):
        """Refuse settings no run can use (NaN, infinity, a zero batch, a string for ``layers``, ...), naming the
        setting and a fix, as soon as the config is made: before any module is built or trained."""
        if self.layers is not None:
            if isinstance(self.layers, (str, bytes)) or not hasattr(self.layers, "__iter__"):
                raise ValueError(f"layers must be a list or tuple of layer indices, got {self.layers!r}: write e.g. "
                                 f"layers=(3,) for one layer, or None for the default ones.")
        check_count("rank", self.rank, fix="e.g. rank=4.")
        if self.forget_loss not in FORGET_LOSSES:
            raise ValueError(f"Unknown forget loss {self.forget_loss!r}: choose one of {FORGET_LOSSES}.")
        if self.gate not in GATES:
            raise ValueError(f"Unknown gate {self.gate!r}: choose one of {GATES}.")
        check_number("lr (the learning rate)", self.lr, minimum=0, strict=True, fix="e.g. lr=4e-3 (GRUN's default).")
        check_count("steps", self.steps, fix="e.g. steps=600 (GRUN's default).")
        check_count("batch_size (the batch size)", self.batch_size, fix="e.g. batch_size=16 (GRUN's default).")
        if self.retain_weight is not None:
            check_number("retain_weight", self.retain_weight, minimum=0,
                         fix="Use e.g. 2.0 (grad_diff) or 1.0, or None for the paper's value.")
        check_number("gate_weight", self.gate_weight, minimum=0, fix="e.g. gate_weight=10.0 (GRUN's default).")
        check_number("beta", self.beta, minimum=0, strict=True, fix="NPO divides by it: use e.g. 0.1.")
        check_count("seed", self.seed, minimum=None, fix="e.g. seed=0.")

    def resolved(self, n_layers: int, hidden_size: int) -> "GRUNConfig":
        """A copy with defaults filled in for a model of ``n_layers`` x ``hidden_size``, checked."""
        layers = self.layers
        if layers is None:
            layers = tuple(sorted({round(f * (n_layers - 1)) for f in (0.625, 0.8, 1.0)}))
        layers = tuple(int(x) for x in layers)
        if not layers:
            raise ValueError("GRUN needs at least one layer to intervene on.")
        bad = [x for x in layers if not 0 <= x < n_layers]
        if bad:
            raise ValueError(f"Layer(s) {bad} out of range: this model has {n_layers} decoder layers "
                             f"(valid indices 0-{n_layers - 1}).")
        if not (isinstance(self.rank, int) and 0 < self.rank <= hidden_size):
            raise ValueError(f"rank must be an integer between 1 and the hidden size ({hidden_size}), "
                             f"got {self.rank!r}.")
        rw = self.retain_weight if self.retain_weight is not None else (2.0 if self.forget_loss == "grad_diff" else 1.0)
        return dataclasses.replace(self, layers=layers, retain_weight=rw)


class GRUN(nn.Module):
    """A set of :class:`GatedLoReFT` units, one per chosen layer, for a model of a given shape."""

    def __init__(self, config: GRUNConfig, hidden_size: int, n_layers: int, model_type: str | None = None):
        super().__init__()
        self.config = config.resolved(n_layers, hidden_size)
        self.hidden_size, self.n_layers, self.model_type = hidden_size, n_layers, model_type
        self.units = nn.ModuleDict({str(layer): GatedLoReFT(hidden_size, self.config.rank, self.config.gate)
                                    for layer in self.config.layers})

    @classmethod
    def for_model(cls, model, config: GRUNConfig | None = None, **settings) -> "GRUN":
        """A fresh module shaped for ``model`` (seeded by ``config.seed``)."""
        config = dataclasses.replace(config or GRUNConfig(), **settings)
        hidden, n_layers, family = _shape(model)
        torch.manual_seed(config.seed)
        return cls(config, hidden, n_layers, family)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def signature(self) -> dict:
        return {"hidden_size": self.hidden_size, "n_layers": self.n_layers, "model_type": self.model_type}


def _shape(model) -> tuple[int, int, str]:
    base = model.base if isinstance(model, GatedModel) else model
    adapter = get_adapter(base)
    cfg = base.config
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None)
    return int(hidden), adapter.n_layers(base), adapter.family


# ----------------------------------------------------------------------------------------------
# A base model with modules attached
# ----------------------------------------------------------------------------------------------
class GatedModel(nn.Module):
    """A frozen base model with GRUN modules applied at the last prompt token after their layers.

    Call it like the base model. The edit position of each row is, in this order: ``prompt_positions`` if given
    (the kit's scoring passes it), the token before the first labelled token if ``labels`` are given (training
    rows), else the last non-padding token (a bare prompt). Several modules (sequential unlearning) add their
    edits at a layer. ``force_gate`` (None, or a number) replaces every gate value: 0 gives the base model
    exactly, 1 the module without its gate. ``last_gates`` holds the gate values of the last call.
    """

    uses_prompt_positions = True

    def __init__(self, base, modules: list[GRUN] | GRUN):
        super().__init__()
        modules = [modules] if isinstance(modules, GRUN) else list(modules)
        if not modules:
            raise ValueError("attach at least one GRUN module.")
        hidden, n_layers, family = _shape(base)
        for m in modules:
            if (m.hidden_size, m.n_layers) != (hidden, n_layers):
                raise ValueError(
                    f"This GRUN module was trained for a model with hidden size {m.hidden_size} and {m.n_layers} "
                    f"layers ({m.model_type}); this model has hidden size {hidden} and {n_layers} layers ({family}). "
                    "Train a module for this model with train_grun().")
        self.base = base
        self.grun = nn.ModuleList(modules)
        self.force_gate: float | None = None
        self.last_gates: dict = {}
        self._muted: set[int] = set()
        self._positions = None
        self._layers = sorted({int(layer) for m in modules for layer in m.units})
        device = next(base.parameters()).device
        self.grun.to(device)

    @property
    def config(self):
        return self.base.config

    def train(self, mode: bool = True):
        """Switch the GRUN modules' mode; the frozen base stays in eval mode (no dropout): only the modules train."""
        super().train(mode)
        self.base.eval()
        return self

    @property
    def device(self):
        return next(self.base.parameters()).device

    def _hook(self, layer: int):
        def hook(_module, _inputs, output):
            if self._positions is None:
                return None
            h = output[0] if isinstance(output, tuple) else output
            rows = torch.arange(h.shape[0], device=h.device)
            pos = self._positions.to(h.device)
            x = h[rows, pos]
            xf = x.float() if x.dtype != torch.float32 else x
            delta = torch.zeros_like(xf)
            for i, m in enumerate(self.grun):
                if i in self._muted or str(layer) not in m.units:
                    continue
                unit = m.units[str(layer)]
                edited, g = unit(xf, self.force_gate)
                delta = delta + (edited - xf)
                self.last_gates[(i, layer)] = g
            h = h.index_put((rows, pos), (xf + delta).to(h.dtype))
            return (h, *output[1:]) if isinstance(output, tuple) else h
        return hook

    @staticmethod
    def edit_positions(input_ids, attention_mask=None, labels=None) -> torch.Tensor:
        """Per row, the position GRUN edits: before the first labelled token, else the last real token."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        last = attention_mask.long().sum(-1) - 1
        if labels is None:
            return last
        labelled = labels != -100
        first = torch.where(labelled.any(-1), labelled.long().argmax(-1) - 1, last)
        return first.clamp_min(0)

    def forward(self, input_ids=None, attention_mask=None, labels=None, prompt_positions=None, **kwargs):
        if prompt_positions is None:
            prompt_positions = self.edit_positions(input_ids, attention_mask, labels)
        self._positions = torch.as_tensor(prompt_positions, dtype=torch.long)
        self.last_gates = {}
        # hooks live only for this call, so the base model stays a plain model (copies of it carry no hooks)
        adapter = get_adapter(self.base)
        handles = [adapter.layer(self.base, layer).register_forward_hook(self._hook(layer)) for layer in self._layers]
        try:
            return self.base(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        finally:
            self._positions = None
            for h in handles:
                h.remove()

    @contextlib.contextmanager
    def muted(self, *indices: int):
        """Within the block, the modules at these indices are not applied."""
        before, self._muted = self._muted, self._muted | set(indices)
        try:
            yield self
        finally:
            self._muted = before

    def gates(self) -> torch.Tensor:
        """Gate values of the last call, [batch, modules x layers]."""
        return torch.stack([self.last_gates[k] for k in sorted(self.last_gates)], dim=-1)

    def on(self, base) -> "GatedModel":
        """The same modules applied to another base (e.g. a quantized copy of this one)."""
        return GatedModel(base, list(self.grun))


def attach(base, modules) -> GatedModel:
    """Apply trained GRUN module(s) to a base model (full precision, quantized or bitsandbytes-loaded)."""
    return GatedModel(base, modules)


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------
def gated_loss(forget_term: torch.Tensor, retain_term: torch.Tensor, forget_gates: torch.Tensor,
               retain_gates: torch.Tensor, gate_weight: float = 10.0) -> torch.Tensor:
    """GRUN's objective: unlearning loss + retain loss + λ_g · BCE(gates; forget → 1, retain → 0).

    forget_term / retain_term are the usual scalars (already weighted); the gates are sigmoid outputs in (0, 1).
    """
    gates = torch.cat([forget_gates.reshape(-1), retain_gates.reshape(-1)])
    targets = torch.cat([torch.ones(forget_gates.numel(), device=gates.device),
                         torch.zeros(retain_gates.numel(), device=gates.device)])
    gates = gates.float().clamp(1e-7, 1 - 1e-7)
    if distributed.active():  # the mean over every process's gates
        bce = distributed.mean(F.binary_cross_entropy(gates, targets, reduction="none"))
    else:
        bce = F.binary_cross_entropy(gates, targets)
    return forget_term + retain_term + gate_weight * bce


def _encode(tokenizer, rows, answers=None):
    if any("prompt" not in r for r in rows):
        raise ValueError("GRUN needs prompt/answer rows: it edits the last prompt token.")
    return encode_examples(tokenizer, rows, answers)


@dataclass
class _GatedRun:
    """What a method's forget term reads (:mod:`unlearn_utils.unlearning.registry`) while GRUN trains."""

    config: GRUNConfig
    logits: object
    reference_nll: object
    model: object = None
    rmu: object = None


def train_grun(model, tokenizer, forget, retain, config: GRUNConfig | None = None, *, modules=(),
               eval_fn=None, eval_every: int = 0, progress: bool = True, **settings):
    """Train one GRUN module on ``forget`` / ``retain`` with the base model frozen; returns (GatedModel, log).

    forget / retain: rows with ``prompt`` and ``answer``. settings: any :class:`GRUNConfig` field.
    modules: earlier GRUN modules (sequential unlearning) that stay applied and frozen while this one trains.
    eval_fn(gated_model) -> dict, run at step 0 and every ``eval_every`` steps (the log then holds a trajectory).
    """
    config = dataclasses.replace(config or GRUNConfig(), **settings)
    check_splits(forget=forget, retain=retain)
    base = model.base if isinstance(model, GatedModel) else model
    set_seed(config.seed)
    module = GRUN.for_model(base, config)
    cfg = module.config
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(False)
    gm = GatedModel(base, [*modules, module])
    flags = {n: p.requires_grad for n, p in base.named_parameters()}
    for p in base.parameters():
        p.requires_grad_(False)
    base.eval()  # dropout off: only the module trains
    device = gm.device
    pad = pad_id(tokenizer)
    spec = get_method(cfg.forget_loss)
    f_rows, r_rows = rows_of(forget), rows_of(retain)
    distributed.check_batch(min(cfg.batch_size, len(f_rows), len(r_rows)),
                            "the batch (batch_size, or the forget or retain set if smaller)")
    f_seqs, f_masks = _encode(tokenizer, f_rows)
    r_seqs, r_masks = _encode(tokenizer, r_rows)
    if spec.answers is not None:  # the method's own answers (refusals, random labels) replace the true ones
        f_seqs, f_masks = _encode(tokenizer, f_rows, spec.answers(f_rows, r_rows, cfg.seed))
    rng = random.Random(cfg.seed)
    n_mod = len(gm.grun) - 1

    def sample(seqs, masks):
        idx = rng.sample(range(len(seqs)), min(cfg.batch_size, len(seqs)))
        # this process's rows of the global batch (all of it in one process)
        padded, idx = distributed.rows(pad_batch([seqs[i] for i in idx], pad, [masks[i] for i in idx]), idx)
        b = loss_batch(padded, device)
        b["edit_positions"] = gm.edit_positions(b["input_ids"], b["attention_mask"], b["labels"])
        return b, idx

    def batches(step):
        (f, f_idx), (r, _) = sample(f_seqs, f_masks), sample(r_seqs, r_masks)
        return {"forget": f, "retain": r, "forget_idx": f_idx}

    def gated_logits(b):
        return answer_logits(gm, b, prompt_positions=b["edit_positions"])

    def reference_logits(f):  # npo's reference: the model without this module (earlier modules stay on)
        with torch.no_grad(), gm.muted(n_mod):
            return gated_logits(f)

    ref_nll = unlearning_methods.ReferenceNLL(reference_logits)

    def new_gates(g: GatedModel):
        return torch.stack([v for (i, _), v in sorted(g.last_gates.items()) if i == n_mod], -1)

    def loss_fn(_model, b):
        f, r = b["forget"], b["retain"]
        f_logits = gated_logits(f)
        f_gates = new_gates(gm)
        r_logits = gated_logits(r)
        r_gates = new_gates(gm)
        retain_term = cfg.retain_weight * L.mean_nll(r_logits, r["answer_labels"])
        # the method's forget term (unlearning.registry) on the logits already computed, the forget rows relabelled
        run = _GatedRun(config=cfg, logits=lambda batch: f_logits if batch is f else gated_logits(batch),
                        reference_nll=ref_nll)
        forget_term = spec.forget_term(run, {**b, "relabelled": f})
        return gated_loss(forget_term, retain_term, f_gates, r_gates, cfg.gate_weight)

    evals = []

    def evaluate(step, row):
        module.eval()
        with torch.no_grad():
            evals.append({"step": step, **eval_fn(gm)})
        module.train()

    try:
        if eval_fn is not None:
            evaluate(0, {})
        t0 = time.perf_counter()
        log = train_loop(gm, batches, cfg.steps, cfg.lr, loss_fn=loss_fn, schedule="constant",
                         params=list(module.parameters()), callback=evaluate if eval_fn is not None else None,
                         callback_every=eval_every if eval_fn is not None else 0,
                         desc=f"GRUN ({cfg.forget_loss})", progress=progress)
        seconds = time.perf_counter() - t0
    finally:
        for n, p in base.named_parameters():
            p.requires_grad_(flags[n])
    gm.eval()
    log = pd.DataFrame(log)
    if evals:
        log = log.merge(pd.DataFrame(evals), on="step", how="outer").sort_values("step").reset_index(drop=True)
    log.attrs["seconds"] = seconds
    log.attrs["trainable_parameters"] = module.n_parameters()
    return gm, log


def cached_train_grun(model, tokenizer, forget, retain, model_key: str | None = None, *, eval_fn=None,
                      eval_every: int = 0, log_name: str | None = None, progress: bool = True, **settings):
    """:func:`train_grun`, reusing a cached module (and trajectory) when the same model, data and settings were
    trained before (the key also holds :data:`unlearn_utils.training.TRAINING_VERSION`). Without ``model_key``
    nothing is cached. Returns ``(GatedModel, log)``; ``log.attrs`` holds
    ``seconds`` (training time without evaluation, measured when it was trained) and ``trainable_parameters``.
    """
    config = dataclasses.replace(GRUNConfig(), **settings)
    if eval_fn is not None and not log_name:
        raise ValueError("Name the trajectory (log_name=...) so that its cached copy can be found again.")
    log_file = f"log-{log_name}.csv" if eval_fn is not None else "log.csv"
    key = None
    if model_key is not None:
        key = {"model": model_key, "config": dataclasses.asdict(config), "data": data_fingerprint(forget, retain),
               "trainer": TRAINING_VERSION}

    def found(folder):  # without eval_fn any cached run of this module will do
        return folder / log_file if eval_fn is not None else next(iter(sorted(folder.glob("log*.csv"))), None)

    def build():
        timer = TimedEval(eval_fn) if eval_fn is not None else None
        t0 = time.perf_counter()
        gm, log = train_grun(model, tokenizer, forget, retain, config, eval_fn=timer, eval_every=eval_every,
                             progress=progress)
        log.attrs["seconds"] = time.perf_counter() - t0 - (timer.seconds if timer else 0.0)
        return gm, log

    def save(result, folder):
        gm, log = result
        files = {p.name: p.read_bytes() for p in folder.glob("log*.csv")} if folder.exists() else {}
        files[log_file] = log.to_csv(index=False).encode()
        files["train.json"] = json.dumps(dict(log.attrs)).encode()
        save_grun(gm, folder, files)

    def load(folder):
        gm = attach(model, _read_modules(folder))
        log = pd.read_csv(found(folder))
        log.attrs.update(json.loads((folder / "train.json").read_text()), cached=True)
        return gm, log

    return cached("grun", key, build, save, load,
                  usable=lambda folder: found(folder) is not None and found(folder).exists())


def sequential_unlearning(model, tokenizer, forget_sets: list, retain, eval_sets: dict | None = None,
                          progress: bool = True, model_key: str | None = None, **settings):
    """Train one module per forget set, one after another; earlier modules stay applied and frozen.

    Returns (GatedModel with every module, table): after each stage, the accuracy on every forget set and on each
    of ``eval_sets`` (name -> prompt/answer rows), and the stage's training time (measured when it was trained).
    model_key: the cache key of ``model`` (a cached world model); the modules and the table are then cached like
    :func:`cached_train_grun`'s and reused when the same model, data and settings come again.
    """
    from .evaluate import accuracy

    if not forget_sets:
        raise ValueError("sequential unlearning needs at least one forget set.")
    key = None
    if model_key is not None:
        names = sorted(eval_sets or {})
        key = {"kind": "sequential", "model": model_key, "config": dataclasses.asdict(
                   dataclasses.replace(GRUNConfig(), **{k: v for k, v in settings.items() if k != "seed"})),
               "seed": settings.get("seed"), "data": data_fingerprint(*forget_sets, retain),
               "eval_sets": names, "eval_data": data_fingerprint(*[(eval_sets or {})[n] for n in names]),
               "trainer": TRAINING_VERSION}

    def build():
        modules, rows, gm = [], [], None
        for k, forget in enumerate(forget_sets, 1):
            gm, log = train_grun(model, tokenizer, forget, retain, modules=modules, progress=progress,
                                 **{"seed": k, **settings})
            modules = list(gm.grun)
            row = {"stage": k, "seconds": round(log.attrs["seconds"], 2)}
            for j, fs in enumerate(forget_sets, 1):
                row[f"forget set {j}"] = accuracy(gm, tokenizer, fs)
            for name, data in (eval_sets or {}).items():
                row[name] = accuracy(gm, tokenizer, data)
            rows.append(row)
        return gm, pd.DataFrame(rows).set_index("stage")

    def load(folder):
        table = pd.read_csv(folder / "table.csv", float_precision="round_trip").set_index("stage")
        return attach(model, _read_modules(folder)), table

    gm, table = cached("grun", key, build, lambda result, folder: save_grun(result[0], folder, {
        "table.csv": result[1].to_csv().encode()}), load,
                       usable=lambda folder: (folder / "table.csv").exists())
    table.attrs["seconds"] = float(table["seconds"].sum())
    return gm, table


def forget_sets_by_person(facts, n_groups: int, people: list | None = None) -> list:
    """``facts`` split into at most ``n_groups`` forget sets for :func:`sequential_unlearning`, each person's rows in
    one set: group i holds ``people[i::n]`` with n = min(n_groups, number of people).

    people: the order to deal them out in (e.g. ``world.forget_people(split)``); default: the rows' ``person``
    names, sorted. Rows that do not all name a person (no ``person`` column, or some None) are one person each.
    """
    if people is None:
        if "person" not in facts.column_names or None in facts["person"]:  # no (or partial) names: rows alone
            facts = facts.remove_columns([c for c in ["person"] if c in facts.column_names])
            facts = facts.add_column("person", [str(i) for i in range(len(facts))])
        people = sorted(set(facts["person"]), key=str)
    n = min(n_groups, len(people))
    groups = [people[i::n] for i in range(n)]
    return [facts.filter(lambda r, g=set(g): r["person"] in g) for g in groups]


def forget_sets_by_category(facts, n_groups: int, column: str = "category") -> list:
    """``facts`` split into at most ``n_groups`` forget sets for :func:`sequential_unlearning`, each category's rows
    (``column``) in one set: the categories, largest first, each join the set that is smallest so far (ties: the
    earlier set), so the sets come out about the same size. On a real model the categories (capitals, chemical
    symbols, ...) play the part the world's people play: one request to forget is one kind of fact."""
    sizes: dict = {}
    for value in facts[column]:
        sizes[value] = sizes.get(value, 0) + 1
    n = min(n_groups, len(sizes))
    groups, totals = [set() for _ in range(n)], [0] * n
    for value in sorted(sizes, key=lambda v: (-sizes[v], str(v))):
        i = totals.index(min(totals))
        groups[i].add(value)
        totals[i] += sizes[value]
    return [facts.filter(lambda r, g=g: r[column] in g) for g in groups]


def sequential_sets(session, n_groups: int) -> tuple[list, object, dict]:
    """``(forget sets, retain set, eval sets)`` for notebook 04's sequential unlearning in ``session``
    (:class:`unlearn_utils.session.Session`).

    On the world: the 10 % forget set's people in ``n_groups`` groups (:func:`forget_sets_by_person`), everyone
    else's facts as the retain set, evaluated on retain and topic questions. On the real-knowledge set: the
    session's forget facts by category (:func:`forget_sets_by_category`; row by row if they are all one category).
    On another data file: its forget questions, whole people together when the rows name them, else row by row.
    """
    from . import evaluate as ev

    if session.on_world:
        world = session.world
        facts, people = world.facts("forget10", "trained"), world.forget_people("forget10")
        seq_data = ev.eval_data(world, "forget10")
        return (forget_sets_by_person(facts, n_groups, people), world.facts("retain", "trained", "forget10"),
                {"retain": seq_data.retain, "topics": seq_data.topics})
    forget = session.forget_set
    by_category = "category" in forget.column_names and len(set(forget["category"])) > 1
    sets = forget_sets_by_category(forget, n_groups) if by_category else forget_sets_by_person(forget, n_groups)
    return sets, session.retain_set, {"retain": session.eval_data.retain}


def with_original_stage(table: pd.DataFrame, original, tokenizer, forget_sets: list,
                        eval_sets: dict | None = None) -> pd.DataFrame:
    """A copy of :func:`sequential_unlearning`'s table with a stage-0 row: the original model's accuracy on every
    forget set and eval set (0 training seconds), so each stage reads against where it started."""
    from .evaluate import accuracy

    table = table.copy()
    table.loc[0] = {**{f"forget set {j + 1}": accuracy(original, tokenizer, fs) for j, fs in enumerate(forget_sets)},
                    **{name: accuracy(original, tokenizer, d) for name, d in (eval_sets or {}).items()},
                    "seconds": 0.0}
    return table.sort_index()


# ----------------------------------------------------------------------------------------------
# GRUN against vanilla unlearning, at equal forget accuracy
# ----------------------------------------------------------------------------------------------
def parameter_count(model) -> int:
    """Number of parameters of a model (a GatedModel: its base and its modules)."""
    return sum(p.numel() for p in model.parameters())


def trainable_parameters(model, log: pd.DataFrame) -> int:
    """Parameters the unlearning trained: a GatedModel's module(s) (``log.attrs["trainable_parameters"]`` of
    :func:`train_grun`), every weight of any other model (vanilla fine-tuning unlearning trains them all)."""
    return log.attrs["trainable_parameters"] if isinstance(model, GatedModel) else parameter_count(model)


def training_seconds(log: pd.DataFrame) -> float:
    """A run's training wall time without its evaluations: ``seconds`` minus ``eval_seconds`` where the log
    counts both (a vanilla run's), else ``seconds`` (GRUN's already leave evaluation out)."""
    return log.attrs["seconds"] - log.attrs.get("eval_seconds", 0.0)


def _accuracy_or_nan(model, tokenizer, questions) -> float:
    """Greedy accuracy; NaN for a question set the data source lacks (a file has no topics or paraphrases)."""
    from .evaluate import accuracy

    return float("nan") if questions is None else accuracy(model, tokenizer, questions)


def equal_forget_table(runs: dict, tokenizer, data, forget_at_most: float, original) -> pd.DataFrame:
    """One row per run (``{name: (model, trajectory log)}``) and one for the original model: the run's numbers at
    its first checkpoint with forget accuracy <= ``forget_at_most`` ("step reached", "forget", "forget,
    paraphrased", "retain", "topics"; :func:`unlearn_utils.evaluate.first_checkpoint_below`), its final accuracies,
    perplexity on ``data.utility`` (NaN without it), trainable parameters and training seconds (rounded to 0.1 s).

    Comparing methods at the same forget level is what makes their retain and topic accuracies comparable."""
    from .evaluate import first_checkpoint_below, perplexity

    rows = {}
    for name, (m, log) in runs.items():
        at = first_checkpoint_below(log, forget_at_most)
        rows[name] = {"step reached": int(at["step"]), "forget": at["forget_accuracy"],
                      "forget, paraphrased": at.get("forget_paraphrase_accuracy"), "retain": at["retain_accuracy"],
                      "topics": at.get("topic_accuracy"), "final forget": _accuracy_or_nan(m, tokenizer, data.forget),
                      "final retain": _accuracy_or_nan(m, tokenizer, data.retain),
                      "final topics": _accuracy_or_nan(m, tokenizer, data.topics),
                      "perplexity": perplexity(m, tokenizer, data.utility) if data.utility else float("nan"),
                      "trainable params": trainable_parameters(m, log),
                      "train seconds": round(training_seconds(log), 1)}
    table = pd.DataFrame(rows).T
    table.loc["original"] = {"forget": _accuracy_or_nan(original, tokenizer, data.forget),
                             "retain": _accuracy_or_nan(original, tokenizer, data.retain),
                             "topics": _accuracy_or_nan(original, tokenizer, data.topics),
                             "perplexity": perplexity(original, tokenizer, data.utility) if data.utility
                             else float("nan"),
                             "trainable params": 0}
    return table


def seconds_per_step(runs: dict) -> dict[str, float]:
    """``{name: training seconds per step}`` of each run (``{name: (model, log)}``), evaluation left out
    (:func:`training_seconds` over the log's last step): GRUN's step against a full fine-tuning step."""
    return {name: training_seconds(log) / max(int(log["step"].max()), 1) for name, (_, log) in runs.items()}


# ----------------------------------------------------------------------------------------------
# What notebook 04 runs on each model
# ----------------------------------------------------------------------------------------------
# GRUN's schedule in notebook 04. The world: 600 steps at batch 16 (40 epochs of forget05, as the paper's 40),
# evaluated every 50 steps. A pretrained model (SmolLM2-135M on 2 cores): a GRUN step at batch 8 costs about half a
# full fine-tuning step (the frozen base needs no weight gradients, and the backward pass stops at the first
# module's layer), but every evaluation of the trajectory scores 300 questions (about 10 s), so the run is kept short:
# 40 steps (13 epochs of the 25 facts), evaluated every 20 steps as notebook 01 evaluates the vanilla runs; the
# sequential stages (8 or 9 facts each) train 20 steps.
SCHEDULES = {
    "world": {"steps": 600, "eval_every": 50, "batch_size": 16, "sequential_steps": None},
    "world smoke": {"steps": 20, "eval_every": 5, "batch_size": 16, "sequential_steps": None},
    "real": {"steps": 40, "eval_every": 20, "batch_size": 8, "sequential_steps": 20},
    "real smoke": {"steps": 2, "eval_every": 2, "batch_size": 8, "sequential_steps": 2},
}


def schedule(session, steps: int | None = None, eval_every: int | None = None,
             batch_size: int | None = None) -> dict:
    """GRUN's settings in notebook 04 for ``session``'s model: ``steps``, ``eval_every``, ``batch_size``,
    ``sequential_steps`` (each sequential stage; None: ``steps``) and ``vanilla_steps`` (the vanilla runs' steps:
    None, their preset, or the session's smoke steps). A value given (not None) is kept, except in smoke mode, which
    always runs the tiny schedule (:data:`SCHEDULES`)."""
    kind = ("world" if session.on_world_model else "real") + (" smoke" if session.smoke else "")
    out = dict(SCHEDULES[kind])
    if not session.smoke:
        given = {"steps": steps, "eval_every": eval_every, "batch_size": batch_size}
        out.update({k: v for k, v in given.items() if v is not None})
    out["sequential_steps"] = out["sequential_steps"] or out["steps"]
    out["vanilla_steps"] = session.smoke_steps if session.smoke else None
    return out


def unknown_facts(session, limit: int = 100, seed: int = 0):
    """A fixed sample of at most ``limit`` facts of the real-knowledge set that the model does *not* know: on a
    real model they take the place of the world's never-seen people (prompts of the same kind, in no training set).
    None when the session's data has none (the world, a data file)."""
    import random

    rows = (session.data or {}).get("unknown")
    if rows is None or len(rows) <= limit:
        return rows
    return rows.select(sorted(random.Random(seed).sample(range(len(rows)), limit)))


def retain_coverage(session, gated, forget_loss: str, **settings) -> pd.DataFrame | None:
    """Notebook 04's retain-coverage experiment: GRUN trained again with every other topic joining the retain set
    (:func:`retain_with_half_the_topics`), and :func:`coverage_table` of both modules and the original on the other
    topics. None, with a printed note, when the session's data has no topic questions (a data file, the real
    model's facts)."""
    data = session.eval_data
    if data.topics is None:
        print("This data source has no topic questions: the retain-coverage experiment runs on the world "
              "(DATA = 'world').")
        return None
    wider_retain, unseen_topics = retain_with_half_the_topics(session.retain_set, data.topics)
    wide, _ = session.train_grun(session.forget_set, wider_retain, forget_loss=forget_loss, **settings)
    return coverage_table({"retain = people only": gated, "retain = people + half the topics": wide,
                           "original": session.model}, session.tokenizer, data, unseen_topics)


def robustness_candidates(session, vanilla: dict, gated: dict) -> dict:
    """The models notebook 04 quantizes: vanilla grad_diff, then on the world model a small-learning-rate grad_diff
    run (lr 3e-5, 600 steps, the paper's regime; 10 steps in smoke mode) and on a pretrained model vanilla npo_gd
    instead (the small-lr run would take about 30 minutes there), then every GRUN model.
    vanilla / gated: ``{method: (model, log)}``."""
    models = {"vanilla grad_diff": vanilla["grad_diff"][0]}
    if session.on_world_model:
        small_lr, _ = session.unlearned("grad_diff", **({"steps": 10} if session.smoke else {"lr": 3e-5,
                                                                                                "steps": 600}))
        models["vanilla grad_diff, lr 3e-5"] = small_lr
    else:
        models["vanilla npo_gd"] = vanilla["npo_gd"][0]
    return {**models, **{f"GRUN {loss}": gm for loss, (gm, _) in gated.items()}}


def results_off_the_world(session, runs: dict, n_stages: int, unseen: bool) -> dict:
    """What notebook 04 records on a pretrained model beyond the world's results (``{}`` on the world model, whose
    results stay as they were): ``seconds_per_step`` of every run (:func:`seconds_per_step`) and ``not_measured``
    (:func:`unlearn_utils.report.not_measured`): the verdicts this data cannot decide, each with its reason."""
    from .report import not_measured

    if session.on_world_model:
        return {}
    reasons = {}
    if session.eval_data.topics is None:
        reasons["grun_keeps_topics"] = (
            "no topic questions on this data: every fact the model knows is in the forget or the retain set, and "
            "the facts it does not know score 0 for every model; the retain side (grun_keeps_retain) is measured")
    if not unseen:
        reasons["gate_separates"] = "the data has no held-out phrasings to test the gate on"
    if n_stages <= 1:
        reasons["sequential_holds"] = "the forget set makes a single group, so there is no earlier set to undo"
    out = {"seconds_per_step": {k: round(v, 3) for k, v in seconds_per_step(runs).items()}}
    return {**out, "not_measured": not_measured(**reasons)} if reasons else out


# ----------------------------------------------------------------------------------------------
# Saving and loading a module alone (kilobytes, not the model)
# ----------------------------------------------------------------------------------------------
def _modules_of(obj) -> list[GRUN]:
    if isinstance(obj, GatedModel):
        return list(obj.grun)
    return [obj] if isinstance(obj, GRUN) else list(obj)


def save_grun(obj, folder: str | os.PathLike, files: dict[str, bytes] | None = None) -> Path:
    """Save GRUN module(s) (a GatedModel, a GRUN or a list) as safetensors + JSON, atomically, with checksums.

    files: small companions (e.g. a training log) written and checksummed with the module."""
    from safetensors.torch import save_file

    modules = _modules_of(obj)
    tensors = {f"{i}.{k}": v.detach().cpu().contiguous() for i, m in enumerate(modules)
               for k, v in m.state_dict().items()}
    refuse_non_finite(tensors, folder)
    tmp = staging_folder(folder)
    save_file(tensors, tmp / "grun.safetensors")
    meta = [{"config": dataclasses.asdict(m.config), **m.signature()} for m in modules]
    (tmp / "grun.json").write_text(json.dumps(meta, indent=2))
    for name, data in (files or {}).items():
        (tmp / name).write_bytes(data)
    return publish_folder(tmp, folder)


def load_grun_modules(folder: str | os.PathLike) -> list[GRUN]:
    """The module(s) saved by :func:`save_grun`, checked against the folder's manifest first."""
    folder = Path(folder)
    if not (folder / "grun.json").exists():
        raise FileNotFoundError(f"{folder} holds no GRUN module (grun.json missing); save one with save_grun().")
    verify_folder(folder)
    return _read_modules(folder)


def load_grun(folder: str | os.PathLike, base) -> GatedModel:
    """The module(s) saved by :func:`save_grun`, checked, attached to ``base`` (a :class:`GatedModel`)."""
    if base is None:
        raise ValueError("load_grun attaches the saved modules to a base model: pass base=the model they were "
                         "trained on (or use load_grun_modules(folder) for the modules alone).")
    return attach(base, load_grun_modules(folder))


def _read_modules(folder: Path) -> list[GRUN]:
    from safetensors.torch import load_file

    tensors = load_file(folder / "grun.safetensors")
    modules = []
    for i, meta in enumerate(json.loads((folder / "grun.json").read_text())):
        cfg = dict(meta["config"])
        cfg["layers"] = tuple(cfg["layers"])
        m = GRUN(GRUNConfig(**cfg), meta["hidden_size"], meta["n_layers"], meta.get("model_type"))
        m.load_state_dict({k[len(f"{i}."):]: v for k, v in tensors.items() if k.startswith(f"{i}.")})
        m.eval()
        modules.append(m)
    return modules


def reload_roundtrip(gated: GatedModel, base, tokenizer, questions) -> tuple[float, bool]:
    """Save ``gated``'s module(s) alone to a temporary folder and load them onto ``base``: returns (the folder's
    size in KB, whether the reloaded model scores ``questions`` (prompt/answer rows) exactly as ``gated`` does)."""
    import tempfile

    from .evaluate import answer_scores

    prompts, answers = list(questions["prompt"]), list(questions["answer"])
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_grun(gated, Path(tmp) / "grun_module")
        size_kb = sum(p.stat().st_size for p in folder.iterdir()) / 1024
        reloaded = load_grun(folder, base=base)
        same = answer_scores(reloaded, tokenizer, prompts, answers).equals(
            answer_scores(gated, tokenizer, prompts, answers))
    return size_kb, bool(same)


# ----------------------------------------------------------------------------------------------
# Reading the gate
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def gate_values(gated: GatedModel, tokenizer, prompts: list[str], batch_size: int = 128) -> pd.DataFrame:
    """Mean gate value per prompt (over modules and layers) at the last prompt token; one row per prompt."""
    if not prompts:
        raise ValueError("No prompts to read gates on: the list is empty.")
    enc = encode_texts(tokenizer, prompts)
    pad = pad_id(tokenizer)
    out = []
    for i in range(0, len(enc), batch_size):
        b = pad_batch(enc[i:i + batch_size], pad)
        gated(input_ids=b["input_ids"].to(gated.device), attention_mask=b["attention_mask"].to(gated.device))
        out.append(gated.gates().float().cpu())
    g = torch.cat(out)
    return pd.DataFrame({"prompt": list(prompts), "gate": g.mean(-1).numpy(), "gate_min": g.min(-1).values.numpy(),
                         "gate_max": g.max(-1).values.numpy()})


def gate_auc(gated: GatedModel, tokenizer, forget_prompts: list[str], retain_prompts: list[str]) -> float:
    """How well the gate separates forget from retain prompts (ROC AUC of the mean gate value; 1 = perfectly)."""
    from .evaluate import auc

    f = gate_values(gated, tokenizer, forget_prompts)["gate"]
    r = gate_values(gated, tokenizer, retain_prompts)["gate"]
    return auc(f, r)


def gate_prompt_sets(data, unknown=None) -> dict:
    """The prompt sets of an :class:`~unlearn_utils.evaluate.EvalData` to read the gate on, those the data has:
    trained and paraphrased forget prompts, paraphrased retain prompts (the trained ones where the data has no
    paraphrases), never-seen people and topic questions; then ``unknown`` (facts the model does not know, a real
    model's never-seen prompts: :func:`unknown_facts`) when given."""
    sets = {"forget (trained)": data.forget, "forget (paraphrased)": data.forget_para,
            "retain (paraphrased)": data.retain_para,
            "retain (trained)": data.retain if data.retain_para is None else None,
            "never-seen people": data.holdout, "topic questions": data.topics, "unknown facts": unknown}
    return {name: d for name, d in sets.items() if d is not None}


def gate_means(gated: GatedModel, tokenizer, prompt_sets: dict) -> dict[str, float]:
    """``{name: mean gate value}`` over each prompt set (rows with a ``prompt`` column); sets that are None are
    left out."""
    return {name: float(gate_values(gated, tokenizer, list(d["prompt"]))["gate"].mean())
            for name, d in prompt_sets.items() if d is not None}


def gate_test_prompts(data) -> tuple[list[str], list[str], bool]:
    """``(forget prompts, retain prompts, unseen)`` to measure the gate's AUC on: the paraphrased phrasings it never
    saw; where the data has no paraphrases of a side, that side's trained prompts stand in. ``unseen``: both sides
    are paraphrases (else the AUC is on trained prompts and says less)."""
    forget = data.forget_para if data.forget_para is not None else data.forget
    retain = data.retain_para if data.retain_para is not None else data.retain
    unseen = data.forget_para is not None and data.retain_para is not None
    return list(forget["prompt"]), list(retain["prompt"]), unseen


def retain_with_half_the_topics(retain, topics) -> tuple:
    """``(wider retain set, unseen topic questions)``: every other topic (by sorted name) joins the retain set
    (prompt and answer columns), the other topics' questions are held out to test whether the gate learned to stay
    shut on a kind of prompt it was shown."""
    import datasets

    topic_names = sorted(set(topics["topic"]))
    seen = set(topic_names[::2])
    topics_seen = topics.filter(lambda r: r["topic"] in seen)
    topics_unseen = topics.filter(lambda r: r["topic"] not in seen)
    wider = datasets.concatenate_datasets([retain.select_columns(["prompt", "answer"]),
                                           topics_seen.select_columns(["prompt", "answer"])])
    return wider, topics_unseen


def coverage_table(models: dict, tokenizer, data, unseen_topics) -> pd.DataFrame:
    """One row per model (``{name: model}``): accuracy on ``data.forget``, ``data.retain`` and ``unseen_topics``,
    and the mean gate value on the unseen topics (NaN for a model without a gate)."""
    from .evaluate import accuracy

    rows = {}
    for name, m in models.items():
        gate = (float(gate_values(m, tokenizer, list(unseen_topics["prompt"]))["gate"].mean())
                if isinstance(m, GatedModel) else float("nan"))
        rows[name] = {"forget": accuracy(m, tokenizer, data.forget), "retain": accuracy(m, tokenizer, data.retain),
                      "unseen topics": accuracy(m, tokenizer, unseen_topics), "gate on unseen topics": gate}
    return pd.DataFrame(rows).T


# ----------------------------------------------------------------------------------------------
# Robustness to 4-bit quantization of the base
# ----------------------------------------------------------------------------------------------
QUANTIZATIONS = ("full precision", "RTN 4-bit", "bnb nf4")
# A model converted from a GGUF file: its float weights sit on that file's grid, so the 4-bit grid that matters is
# the checkpoint's own (a user who quantizes it again gets exactly that grid).
GGUF_QUANTIZATIONS = {"Q4_1": ("full precision", "GGUF Q4_1")}


def checkpoint_grid(model) -> str | None:
    """The GGUF block format the kit converted ``model`` (or a GatedModel's base) from, e.g. ``"Q4_1"`` for
    SmolLM2-135M (:data:`unlearn_utils.models.REAL_MODELS`); None for the world model or any other checkpoint."""
    from .models import REAL_MODELS

    base = model.base if isinstance(model, GatedModel) else model
    spec = REAL_MODELS.get(getattr(base, "kit_name", None) or "")
    if spec is None:
        return None
    fmt = Path(spec.member).stem.rpartition(".")[2]  # "SmolLM2-135M-Instruct.Q4_1.gguf" -> "Q4_1"
    return fmt if fmt in GGUF_QUANTIZATIONS else None


def quantizations_for(model) -> tuple[str, ...]:
    """The quantizations section 6 applies to ``model``: its checkpoint's own 4-bit grid when it came from a GGUF
    file (:func:`checkpoint_grid`), else :data:`QUANTIZATIONS` (RTN 4-bit and bitsandbytes nf4). The second entry is
    the 4-bit quantization the verdicts read (:func:`quantization_gains`)."""
    grid = checkpoint_grid(model)
    return QUANTIZATIONS if grid is None else GGUF_QUANTIZATIONS[grid]


def quantized_4bit(model, how: str, device=None):
    """``model`` as :data:`QUANTIZATIONS` or :data:`GGUF_QUANTIZATIONS` names it: unchanged, RTN 4-bit (group size
    64), reloaded through bitsandbytes nf4, or quantize-dequantized in a GGUF block format ("GGUF Q4_1": blocks of 32
    along each row, w = d * q + m; :func:`unlearn_utils.quantize.quantize_model_gguf`). For a GatedModel the base is
    quantized and the full-precision module kept (as the paper does)."""
    from .audit import quantized
    from .quantize import load_bnb, quantize_model_gguf

    if how == "full precision":
        return model
    if how == "RTN 4-bit":
        return quantized(model, 4, 64)
    if how.startswith("GGUF "):
        fmt = how.removeprefix("GGUF ")
        if isinstance(model, GatedModel):
            return model.on(quantize_model_gguf(model.base, fmt))
        return quantize_model_gguf(model, fmt)
    if how != "bnb nf4":
        raise ValueError(f"Unknown quantization {how!r}: choose one of {QUANTIZATIONS} or 'GGUF <format>'.")
    if isinstance(model, GatedModel):
        return model.on(load_bnb(model.base, 4, "nf4", device=device))
    return load_bnb(model, 4, "nf4", device=device)


def quantization_robustness(models: dict, tokenizer, data, device=None,
                            quantizations: tuple[str, ...] = QUANTIZATIONS) -> pd.DataFrame:
    """One row per model and quantization (default :data:`QUANTIZATIONS`; a GGUF model's:
    :func:`quantizations_for`): forget, paraphrased forget (NaN without paraphrases) and retain accuracy. A
    quantization this machine cannot do (a bitsandbytes build without support for the device) is skipped with a
    printed note."""
    from .evaluate import accuracy

    rows, gguf_bases = [], {}  # GRUN models on one base share its GGUF copy (made once: a real model's take seconds)
    for name, m in models.items():
        for how in quantizations:
            try:
                if isinstance(m, GatedModel) and how.startswith("GGUF "):
                    key = (id(m.base), how)
                    if key not in gguf_bases:
                        gguf_bases[key] = quantized_4bit(m.base, how, device)
                    qm = m.on(gguf_bases[key])
                else:
                    qm = quantized_4bit(m, how, device)
            except Exception as e:  # a bitsandbytes build without support for this device
                print(f"{how} unavailable here ({type(e).__name__}: {e})")
                continue
            rows.append({"model": name, "quantization": how, "forget": accuracy(qm, tokenizer, data.forget),
                         "forget, paraphrased": _accuracy_or_nan(qm, tokenizer, data.forget_para),
                         "retain": accuracy(qm, tokenizer, data.retain)})
    return pd.DataFrame(rows)


def quantization_gains(forget_by_quantization: pd.DataFrame, prefix: str = "",
                       quantized: str = "RTN 4-bit") -> dict[str, float]:
    """``{model: forget accuracy at the 4-bit quantization ``quantized`` minus at full precision}`` for the models
    (rows) whose name starts with ``prefix``; forget_by_quantization: models x quantizations (0 gain where that
    quantization was unavailable)."""
    full = forget_by_quantization["full precision"]
    q4 = forget_by_quantization.get(quantized, full)
    return {n: float(q4[n] - forget_by_quantization.loc[n, "full precision"]) for n in q4.index
            if n.startswith(prefix)}


# ----------------------------------------------------------------------------------------------
# Why GA-style unlearning and suppression share a mechanism
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def representation_shift(original, unlearned, tokenizer, prompts: list[str], batch_size: int = 128) -> pd.Series:
    """Per decoder layer: mean (1 − cosine) between the two models' residual streams at the last prompt token.

    After fine-tuning unlearning this is large on forget prompts and small on retain prompts: the unlearned
    weights *distinguish* forget inputs and *suppress* what follows, the two jobs GRUN gives to its gate and edit.
    """
    if not prompts:
        raise ValueError("No prompts: the list is empty.")
    enc = encode_texts(tokenizer, prompts)
    pad = pad_id(tokenizer)
    total = None
    for i in range(0, len(enc), batch_size):
        b = pad_batch(enc[i:i + batch_size], pad)
        last = b["attention_mask"].sum(-1) - 1
        rows = torch.arange(len(last))
        hs = []
        for m in (original, unlearned):
            dev = next(m.parameters()).device
            out = m(input_ids=b["input_ids"].to(dev), attention_mask=b["attention_mask"].to(dev),
                    output_hidden_states=True)
            hs.append(torch.stack([h[rows.to(h.device), last.to(h.device)].float().cpu()
                                   for h in out.hidden_states[1:]]))
        dist = (1 - F.cosine_similarity(hs[0], hs[1], dim=-1)).sum(-1)  # [layers]
        total = dist if total is None else total + dist
    return pd.Series((total / len(enc)).numpy(), index=pd.RangeIndex(len(total), name="layer"), name="shift")


def representation_shifts(original, unlearned, tokenizer, prompt_sets: dict) -> pd.DataFrame:
    """:func:`representation_shift` for each prompt set (``{name: rows with a prompt column}``; None sets left
    out): layers x sets."""
    return pd.DataFrame({name: representation_shift(original, unlearned, tokenizer, list(d["prompt"]))
                         for name, d in prompt_sets.items() if d is not None})


def last_layer_ratio(shift: pd.DataFrame, moved: str = "forget prompts", reference: str = "retain prompts") -> float:
    """How many times more the ``moved`` prompts' state changed at the last layer than the ``reference``
    prompts' (the denominator floored at 1e-12): large when unlearning singles out the forget inputs."""
    return float(shift[moved].iloc[-1] / max(shift[reference].iloc[-1], 1e-12))
