"""One small training loop shared by pre-training the world model, unlearning and relearning.

The loop is plain PyTorch (AdamW, warm-up, cosine or constant schedule, gradient clipping) so a learner
can read it in one screen. A ``loss_fn(model, batch) -> scalar`` decides what is optimised. Under
``accelerate launch`` the same loop runs on several processes, each on its rows of the global batch
(:mod:`unlearn_utils.distributed`).
:func:`logits_at` computes the output layer only at the positions a loss or a score reads (those just before the
labelled tokens).
"""

from __future__ import annotations

import math
import numbers
import random
import time
from typing import Callable, Iterable

import torch
from tqdm.auto import tqdm

from . import distributed


# Part of the cache keys of the models unlearning and GRUN train (and the trajectories stored with them): raised
# whenever a change to the training or scoring code changes their numbers, so a cache filled by older code is not
# mistaken for this code's results.
# 2: the losses compute the output layer only before labelled tokens (answer_positions), not at every position.
TRAINING_VERSION = 2


class NonFiniteLossError(RuntimeError):
    """Training reached a loss (or weights) that is NaN or infinite: the run diverged, and its weights are not usable.

    Raised by :func:`train_loop` at the first such step, so that nothing is returned, cached or saved.
    ``step``, ``loss`` and ``lr`` say where it happened."""

    def __init__(self, message: str, step: int, loss: float, lr: float):
        super().__init__(message)
        self.step, self.loss, self.lr = step, loss, lr


def check_number(name: str, value, *, minimum: float | None = None, strict: bool = False, fix: str = "") -> float:
    """``value`` if it is a finite real number (at least ``minimum``, above it if ``strict``); else a ValueError
    naming the setting, what it got and ``fix``. NaN or infinity would train a model of NaN weights (and cache it)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        bound = "" if minimum is None else f" {'above' if strict else 'at least'} {minimum:g}"
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}.{' ' + fix if fix else ''}")
    return value


def check_count(name: str, value, *, minimum: int | None = 1, fix: str = "") -> int:
    """``value`` as an int if it is a whole number (not a bool, float or string) of at least ``minimum`` (None: any);
    else a ValueError naming the setting, what it got and ``fix``."""
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and (minimum is None or value >= minimum)):
        what = {None: "an integer", 1: "a positive integer"}.get(minimum, f"an integer of at least {minimum}")
        raise ValueError(f"{name} must be {what}, got {value!r}.{' ' + fix if fix else ''}")
    return int(value)


def set_seed(seed: int) -> None:
    """Seed Python and torch so that the same seed gives the same numbers on CPU."""
    random.seed(seed)
    torch.manual_seed(seed)


def tokenize_texts(tokenizer, texts: list[str], max_length: int | None = None) -> list[list[int]]:
    """Token ids of each text as the tokenizer starts a text (:func:`data.special_prefix`), then EOS."""
    from .data import encode_texts

    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    out = [ids + eos for ids in encode_texts(tokenizer, texts)]
    if max_length:
        out = [ids[:max_length] for ids in out]
    return out


def pad_batch(seqs: list[list[int]], pad_id: int, label_mask: list[list[int]] | None = None) -> dict:
    """Right-pad token id lists into input_ids, attention_mask and labels (-100 on padding / masked tokens)."""
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), n), dtype=torch.long)
    labels = torch.full((len(seqs), n), -100, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        att[i, : len(s)] = 1
        if label_mask is None:
            labels[i, : len(s)] = torch.tensor(s)
        else:
            m = torch.tensor(label_mask[i], dtype=torch.bool)
            labels[i, : len(s)] = torch.where(m, torch.tensor(s), torch.tensor(-100))
    return {"input_ids": ids, "attention_mask": att, "labels": labels}


def answer_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a loss reads the logits: per row, the positions whose next token is labelled, and those labels.

    The losses read only the labelled tokens (the answer), which are a few of a row's tokens; computing the output
    layer (hidden size x vocabulary) at the other positions is wasted work. Returns ``(positions, labels)``, both
    [B, K + 1] with K the most labelled tokens in a row, laid out as a short sequence whose first label is -100, so
    that the losses, which shift by one, read ``logits[:, j]`` (taken at ``positions[:, j]``) as predicting
    ``labels[:, j + 1]``. Shorter rows are filled with position 0 and label -100.
    """
    target = labels[:, 1:] != -100  # position t predicts token t + 1
    counts = target.sum(1)
    width = int(counts.max()) + 1 if len(counts) else 1
    positions = torch.zeros(labels.shape[0], width, dtype=torch.long, device=labels.device)
    compact = torch.full((labels.shape[0], width), -100, dtype=labels.dtype, device=labels.device)
    rows, cols = target.nonzero(as_tuple=True)  # row by row, left to right
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(rows), device=labels.device) - starts[rows]
    positions[rows, slot] = cols
    compact[rows, slot + 1] = labels[rows, cols + 1]
    return positions, compact


def output_head(model):
    """The output embedding (hidden state -> vocabulary logits) of a transformers, peft or GRUN-gated model."""
    for m in (model, getattr(model, "base", None)):  # a GatedModel keeps the transformers model in .base
        get = getattr(m, "get_output_embeddings", None)
        head = get() if callable(get) else None
        if head is not None:
            return head
    return None


def logits_at(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor,
              **kwargs) -> torch.Tensor:
    """The model's logits at ``positions`` only ([B, K] indices into each row): [B, K, vocab].

    The output layer runs on those positions alone (a hook gathers its input), so the model's own logit
    post-processing still applies; where no output embedding is found, the full logits are computed and gathered.
    """
    head = output_head(model)
    used = []

    def gather(_module, args):
        h = args[0]
        if used or h.dim() != 3 or h.shape[:2] != input_ids.shape:  # not the per-position hidden states: leave it
            return None
        used.append(True)
        idx = positions.to(h.device)[..., None].expand(-1, -1, h.shape[-1])
        return (h.gather(1, idx), *args[1:])

    handle = head.register_forward_pre_hook(gather) if head is not None else None
    try:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits
    finally:
        if handle is not None:
            handle.remove()
    if used:
        if logits.shape[:2] != positions.shape:
            raise RuntimeError(f"{type(model).__name__} reshaped the output layer's result to {tuple(logits.shape)}; "
                               "logits_at cannot read it. Compute the full logits for this model instead.")
        return logits
    idx = positions.to(logits.device)[..., None].expand(-1, -1, logits.shape[-1])
    return logits.gather(1, idx)


def loss_batch(batch: dict, device) -> dict:
    """A padded batch on ``device``, with the ``positions`` and ``answer_labels`` the losses read
    (:func:`answer_positions`)."""
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["positions"], batch["answer_labels"] = answer_positions(batch["labels"])
    return batch


def answer_logits(model, batch: dict, **kwargs) -> torch.Tensor:
    """The logits where the losses read them (before each labelled token), to go with ``batch["answer_labels"]``
    of a :func:`loss_batch`."""
    return logits_at(model, batch["input_ids"], batch["attention_mask"], batch["positions"], **kwargs)


def lm_loss(model, batch: dict) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled tokens (the ordinary language-modelling loss); under several
    processes, divided by the global batch's count of labelled tokens (transformers' ``num_items_in_batch``)."""
    if distributed.active():
        n = distributed.count((batch["labels"][:, 1:] != -100).sum())
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                     num_items_in_batch=n).loss
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


def lr_at(step: int, total: int, lr: float, warmup: int, schedule: str) -> float:
    """Learning rate at a step: linear warm-up, then cosine decay to 10% or constant."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    progress = (step - warmup) / max(1, total - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_loop(
    model,
    batches: Callable[[int], dict],
    steps: int,
    lr: float,
    loss_fn: Callable = lm_loss,
    warmup: int = 0,
    schedule: str = "cosine",
    weight_decay: float = 0.0,
    clip: float = 1.0,
    params: Iterable[torch.nn.Parameter] | None = None,
    callback: Callable[[int, dict], None] | None = None,
    callback_every: int = 0,
    desc: str = "training",
    progress: bool = True,
) -> list[dict]:
    """Run ``steps`` optimiser steps; ``batches(step)`` returns the batch of that step.

    Returns a log: one dict per step with ``step``, ``loss`` and ``lr``. ``callback(step, log_row)`` runs
    every ``callback_every`` steps (and after the last), e.g. to evaluate during training.
    Every setting is checked first (a finite, positive ``lr``, ...). A NaN or infinite loss (or, after the last
    step, a NaN or infinite trained weight) stops the run with a :class:`NonFiniteLossError`: a diverged run's
    weights are garbage, so none are returned for a cache or a notebook to keep.
    """
    steps = check_count("steps", steps, fix="Pass the number of optimiser steps, e.g. steps=200.")
    check_number("lr (the learning rate)", lr, minimum=0, strict=True, fix="Use a small positive value, e.g. 3e-4.")
    warmup = check_count("warmup", warmup, minimum=0, fix="Pass a number of steps (0 for none).")
    check_number("weight_decay", weight_decay, minimum=0, fix="Use 0 (none) or a small value such as 0.01.")
    check_number("clip", clip or 0.0, minimum=0, fix="Use a gradient-norm bound such as 1.0, or 0 for none.")
    check_count("callback_every", callback_every, minimum=0, fix="Pass a number of steps (0: never).")
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}.")
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    model.train()
    log = []
    # one process: plain PyTorch; several (accelerate launch): the engine reduces the gradients (distributed.py)
    with distributed.engine(model, loss_fn, opt, params) as (step_loss, backward, clip_norm, opt):
        bar = tqdm(range(steps), desc=desc, disable=not progress or not distributed.is_main(), leave=False)
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = lr_at(step, steps, lr, warmup, schedule)
            batch = batches(step)
            loss = step_loss(batch)
            value = distributed.average(float(loss.detach()))  # the global batch's loss
            if not math.isfinite(value):  # before the step: NaN gradients would turn every weight into NaN
                raise _diverged(f"the loss is {value}", step + 1, steps, value, opt.param_groups[0]["lr"], lr, desc)
            opt.zero_grad(set_to_none=True)
            backward(loss)
            if clip:
                clip_norm(params, clip)
            opt.step()
            row = {"step": step + 1, "loss": value, "lr": opt.param_groups[0]["lr"]}
            log.append(row)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{row['loss']:.3f}")
            if callback is not None and callback_every and ((step + 1) % callback_every == 0 or step + 1 == steps):
                model.eval()
                callback(step + 1, row)
                model.train()
    model.eval()
    # a finite loss with a non-finite gradient (an overflow) shows only in the weights; the next step's loss would
    # catch it, the last step's is caught here
    bad = next((i for i, p in enumerate(params) if not bool(torch.isfinite(p.detach()).all())), None)
    if bad is not None:
        raise _diverged(f"trained weight tensor {bad} holds NaN or infinite values after it (a non-finite gradient; "
                        f"the loss was {log[-1]['loss']:g})", steps, steps, log[-1]["loss"], log[-1]["lr"], lr, desc)
    return log


def _diverged(what: str, step: int, steps: int, loss: float, lr_now: float, lr: float, desc: str) -> NonFiniteLossError:
    """The error :func:`train_loop` raises when a run diverges: where, the learning rate, and what to do."""
    peak = "" if lr_now == lr else f" (its peak: lr={lr:g})"
    return NonFiniteLossError(
        f"{desc} diverged at step {step} of {steps}: {what}, at learning rate {lr_now:g}{peak}. Nothing is returned "
        f"or cached. Lower the learning rate (e.g. lr={lr / 10:g}) and train again.", step=step, loss=loss, lr=lr_now)


def epoch_batches(seqs: list[list[int]], batch_size: int, pad_id: int, seed: int,
                  label_masks: list[list[int]] | None = None) -> Callable[[int], dict]:
    """A ``batches(step)`` function that walks shuffled epochs over ``seqs`` deterministically."""
    if not seqs:
        raise ValueError("no training sequences: the data set is empty.")
    batch_size = check_count("batch_size", batch_size, fix="Pass how many sequences each step trains on, e.g. 16.")
    distributed.check_batch(batch_size)
    order: list[int] = []
    rng = random.Random(seed)
    state = {"pos": 0}

    def get(step: int) -> dict:
        nonlocal order
        idx = []
        while len(idx) < batch_size:
            if state["pos"] >= len(order):
                order = list(range(len(seqs)))
                rng.shuffle(order)
                state["pos"] = 0
            take = order[state["pos"]: state["pos"] + batch_size - len(idx)]
            state["pos"] += len(take)
            idx += take
        # this process's rows of the global batch (all of it in one process)
        return distributed.rows(pad_batch([seqs[i] for i in idx], pad_id,
                                          [label_masks[i] for i in idx] if label_masks else None))

    return get


class TimedEval:
    """Wraps an ``eval_fn`` and adds up the seconds it takes, so training time can be reported without evaluation."""

    def __init__(self, eval_fn):
        self.eval_fn, self.seconds = eval_fn, 0.0

    def __call__(self, model):
        start = time.perf_counter()
        try:
            return self.eval_fn(model)
        finally:
            self.seconds += time.perf_counter() - start
