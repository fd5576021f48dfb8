"""Several processes through Hugging Face ``accelerate``: the same training loop, numbers that do not depend on how
many processes ran it.

In a plain process nothing here does anything (and ``accelerate`` is not even imported): every function returns
what one process would use. Under ``accelerate launch`` (or ``torchrun``) with two or more processes:

* every process draws the same global batch (same seed stream) and trains on its own rows of it (:func:`rows`);
* the engine (DDP; FSDP and DeepSpeed, which shard the weights, are refused) averages the gradients;
* the losses divide by the *global* count of their tokens or rows (:func:`mean`, :func:`ratio`), so the averaged
  gradient is the one a single process computes on the whole batch (up to the order of additions);
* evaluation splits its questions across processes and gathers the results in order (:func:`shard_list`,
  :func:`gather_list`);
* only the main process writes caches and reports (:func:`is_main`; :func:`unlearn_utils.cache.cached`).
"""

from __future__ import annotations

import atexit
import contextlib
import os

import torch

_ACCELERATOR = None


def launched() -> bool:
    """Whether this process was started by a multi-process launcher (``WORLD_SIZE`` above 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def accelerator():
    """The process's one ``accelerate.Accelerator`` (created on first use), on the CPU when there is no GPU (where
    accelerate runs DDP over gloo, whatever its config asks)."""
    global _ACCELERATOR
    if _ACCELERATOR is None:
        from accelerate import Accelerator

        _ACCELERATOR = Accelerator(cpu=not torch.cuda.is_available())
        atexit.register(_close_process_group)
    return _ACCELERATOR


def _close_process_group() -> None:
    """At exit: destroy the process group, so that its communication threads end before the interpreter does (a
    group left to the interpreter's teardown can abort the process after its work is done)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        with contextlib.suppress(Exception):
            torch.distributed.destroy_process_group()


def check_engine() -> None:
    """Refuse an accelerate set-up whose weights the kit cannot read back whole: FSDP and DeepSpeed shard them, and
    the kit's saving and evaluation read the plain model (gathering the shards is not built, and no GPU run has
    checked it). DDP on several GPUs or CPU processes is what the kit supports and tests."""
    if not active():
        return
    kind = str(accelerator().distributed_type).rsplit(".", 1)[-1]
    if kind in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
        raise ValueError(f"accelerate is set up for {kind}, which shards the weights; the kit's training loop supports "
                         "data-parallel DDP only (its saving and evaluation read the whole model). Launch with "
                         "`accelerate launch --multi_gpu --num_processes N ...` or a config with distributed_type "
                         "MULTI_GPU (docs/several_processes.md).")


def active() -> bool:
    """Whether this run is spread over two or more processes."""
    return launched() and accelerator().num_processes > 1


def num_processes() -> int:
    return accelerator().num_processes if active() else 1


def process_index() -> int:
    return accelerator().process_index if active() else 0


def is_main() -> bool:
    """Whether this process writes files (caches, reports, saved models): the only one, or the first of several."""
    return process_index() == 0


def check_batch(batch_size: int, what: str = "batch_size") -> None:
    """Refuse a global batch that leaves a process without rows, before any training starts."""
    n = num_processes()
    if batch_size < n:
        raise ValueError(f"{what} {batch_size} cannot be split over {n} processes: each process needs at least one "
                         f"row of every batch. Use a batch of at least {n}, or fewer processes.")


def _bounds(n: int) -> tuple[int, int]:
    """This process's contiguous slice of ``n`` rows (the first ``n % P`` processes take one more)."""
    p, i = num_processes(), process_index()
    size, extra = divmod(n, p)
    start = i * size + min(i, extra)
    return start, start + size + (1 if i < extra else 0)


def rows(batch: dict, idx: list | None = None):
    """This process's rows of a padded global batch (every tensor sliced along its first dimension, the padding kept
    as the whole batch has it); with ``idx`` (the batch's example indices), returns ``(batch, idx)`` sliced alike."""
    if not active():
        return batch if idx is None else (batch, idx)
    n = next(v for v in batch.values() if torch.is_tensor(v)).shape[0]
    check_batch(n)
    a, b = _bounds(n)
    part = {k: v[a:b] if torch.is_tensor(v) and v.dim() and v.shape[0] == n else v for k, v in batch.items()}
    return part if idx is None else (part, list(idx)[a:b])


def count(value: torch.Tensor) -> torch.Tensor:
    """What a loss divides by so that the engine's average over processes gives the global mean: the count itself
    in one process; the count over all processes divided by their number under several."""
    if not active():
        return value
    total = value.detach().to(torch.float64).reshape(1).clone()
    torch.distributed.all_reduce(total)
    return (total / num_processes()).to(value.dtype if value.is_floating_point() else torch.float32).reshape(
        value.shape)


def ratio(total: torch.Tensor, n: torch.Tensor, minimum: float = 1) -> torch.Tensor:
    """``total / n`` with ``n`` at least ``minimum``: a mean over the batch's tokens; under several processes ``n``
    is the global count (:func:`count`)."""
    if not active():
        return total / n.clamp_min(minimum)
    return total / count(n).clamp_min(minimum / num_processes())


def mean(values: torch.Tensor) -> torch.Tensor:
    """``values.mean()``: a mean over the batch's rows; under several processes, over the global batch's rows."""
    if not active():
        return values.mean()
    return values.sum() / count(torch.tensor(float(values.numel()), device=values.device))


def average(value: float) -> float:
    """A number averaged over the processes (a loss each computed on its rows); unchanged in one process."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=accelerator().device)  # NCCL reduces GPU tensors only
    torch.distributed.all_reduce(t)
    return float(t[0]) / num_processes()


def shard_list(items: list) -> list:
    """This process's contiguous part of a list (evaluation questions); the whole list in one process."""
    if not active():
        return items
    a, b = _bounds(len(items))
    return items[a:b]


def gather_list(part: list) -> list:
    """The parts of every process joined in process order (the inverse of :func:`shard_list`)."""
    if not active():
        return part
    parts = [None] * num_processes()
    torch.distributed.all_gather_object(parts, part)
    return [x for p in parts for x in p]


def broadcast(value):
    """The main process's ``value``, on every process (a decision only the main process may take)."""
    if not active():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        torch.distributed.barrier()


def main_first(action) -> None:
    """Run ``action()`` on the main process only (a write), then tell every process whether it worked: if it raised,
    the other processes raise too instead of waiting for the main one at the next collective."""
    error = None
    if is_main():
        try:
            action()
        except BaseException as e:  # re-raised below, once the others know
            error = e
    failed = broadcast(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    if failed is not None:
        raise RuntimeError(f"the main process failed ({failed}); this process stops with it.")


class _Loss(torch.nn.Module):
    """The model and its loss as one module, so that the engine sees one forward per step (a method's loss may run
    the model several times: forget, retain, its own reference) and the loss function reads the plain model."""

    def __init__(self, model, loss_fn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch):
        return self.loss_fn(self.model, batch)


@contextlib.contextmanager
def engine(model, loss_fn, optimizer, params):
    """``(step_loss, backward, clip, optimizer)`` for :func:`unlearn_utils.training.train_loop`: plain PyTorch in one
    process; the model and optimizer prepared by accelerate under several (gradients reduced by its engine).

    Under several processes only ``params`` (those the optimizer steps) require gradients while the run lasts, so
    the engine reduces those alone and every one of them is in each step's graph."""
    if not active():
        yield (lambda batch: loss_fn(model, batch)), (lambda loss: loss.backward()), \
            torch.nn.utils.clip_grad_norm_, optimizer
        return
    check_engine()
    trained = {id(p) for p in params}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in trained]
    for p in frozen:
        p.requires_grad_(False)
    acc = accelerator()
    try:
        wrapped, opt = acc.prepare(_Loss(model, loss_fn), optimizer)
        yield wrapped, acc.backward, acc.clip_grad_norm_, opt
    finally:
        acc.free_memory()  # drop accelerate's references to this run's model and optimizer
        for p in frozen:
            p.requires_grad_(True)
