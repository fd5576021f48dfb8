"""Quantization: round-to-nearest in plain torch, and bitsandbytes loading.

Round-to-nearest (RTN) here is *quantize-dequantize*: each weight is replaced by the nearest point of
its group's grid, stored back in the model's own dtype. The model then runs anywhere (CPU or GPU) and
behaves exactly as an integer model with that grid would. bitsandbytes (LLM.int8, 4-bit fp4/nf4) is
the library real users quantize with; :func:`load_bnb` loads any model through it (CPU or CUDA).
"""

from __future__ import annotations

import copy
import tempfile

import numpy as np
import pandas as pd

import torch

SUPPORTED_BITS = (2, 3, 4, 5, 6, 7, 8)


def check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"Unsupported bit width {bits}: round-to-nearest supports {SUPPORTED_BITS}.")


def _grouped(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """View a [out, in] weight as [out, n_groups, group] (a group = consecutive input weights of one row)."""
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D weight matrix, got shape {tuple(w.shape)}.")
    g = w.shape[1] if group_size is None else group_size
    if g <= 0 or w.shape[1] % g:
        raise ValueError(f"group size {group_size} does not divide the input dimension {w.shape[1]}; "
                         "choose a divisor such as "
                         f"{[d for d in (32, 64, 128) if w.shape[1] % d == 0] or [w.shape[1]]}.")
    return w.reshape(w.shape[0], w.shape[1] // g, g)


def _grid(w: torch.Tensor, bits: int, group_size: int | None, symmetric: bool):
    """Grouped view of ``w``, the grid step of each group and the grid's origin (0 for symmetric, the minimum else)."""
    check_bits(bits)
    wg = _grouped(w.float(), group_size)
    if symmetric:
        step = (wg.abs().amax(-1, keepdim=True) / (2 ** (bits - 1) - 1)).clamp_min(1e-12)
        return wg, step, torch.zeros_like(step)
    lo = wg.amin(-1, keepdim=True)
    return wg, ((wg.amax(-1, keepdim=True) - lo) / (2 ** bits - 1)).clamp_min(1e-12), lo


def _codes(wg: torch.Tensor, step: torch.Tensor, origin: torch.Tensor, bits: int, symmetric: bool) -> torch.Tensor:
    """The integer grid index of each grouped weight (what a quantized checkpoint stores)."""
    lo, hi = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)
    return torch.round((wg - origin) / step).clamp(lo, hi)


def quantization_step(w: torch.Tensor, bits: int, group_size: int | None = 64, symmetric: bool = True) -> torch.Tensor:
    """The grid spacing of each weight's group, same shape as ``w`` (the "step" a change must beat to survive)."""
    wg, step, _ = _grid(w, bits, group_size, symmetric)
    return step.expand_as(wg).reshape(w.shape)


def quantize_tensor(w: torch.Tensor, bits: int, group_size: int | None = 64, symmetric: bool = True) -> torch.Tensor:
    """Round-to-nearest quantize-dequantize of a [out, in] weight, per group of ``group_size`` inputs.

    group_size=None quantizes per output channel (one grid per row). Symmetric (absmax) grids are
    centred on zero with 2^(bits-1)-1 levels each side; asymmetric (min-max) grids use all 2^bits levels.
    Every weight moves by at most half a step.
    """
    wg, step, origin = _grid(w, bits, group_size, symmetric)
    q = _codes(wg, step, origin, bits, symmetric) * step + origin
    return q.reshape(w.shape).to(w.dtype)


def quantizable_linears(model, include_lm_head: bool = False) -> dict[str, torch.nn.Module]:
    """The Linear layers RTN touches: every decoder Linear (embeddings and, by default, the unembedding stay full
    precision)."""
    from .arch import get_adapter

    adapter = get_adapter(model)
    out = {}
    for name, mod in model.named_modules():
        is_linear = isinstance(mod, torch.nn.Linear) or type(mod).__name__ == "Conv1D"
        if not is_linear:
            continue
        if name.endswith(adapter.unembed.split(".")[-1]) and not include_lm_head:
            continue
        out[name] = mod
    return out


@torch.no_grad()
def quantize_model(model, bits: int, group_size: int | None = 64, symmetric: bool = True,
                   include_lm_head: bool = False, inplace: bool = False):
    """A copy of ``model`` whose decoder Linear weights are RTN quantize-dequantized (see :func:`quantize_tensor`).

    Layers whose input dimension the group size does not divide raise a clear error.
    """
    check_bits(bits)
    target = model if inplace else copy.deepcopy(model)
    for name, mod in quantizable_linears(target, include_lm_head).items():
        w = mod.weight.data
        conv1d = type(mod).__name__ == "Conv1D"  # GPT-2 stores [in, out]
        wq = quantize_tensor(w.T if conv1d else w, bits, group_size, symmetric)
        mod.weight.data.copy_(wq.T if conv1d else wq)
    return target


def load_bnb(model, bits: int = 4, quant_type: str = "nf4", device=None, compute_dtype=torch.float32):
    """Reload ``model`` through bitsandbytes: 8 = LLM.int8, 4 = 4-bit ``nf4`` or ``fp4``. Works on CPU and CUDA.

    The model is written to a temporary folder (safetensors) and loaded back with a ``BitsAndBytesConfig``,
    which is exactly how a user quantizes a checkpoint.
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from .models import get_device

    if bits not in (4, 8):
        raise ValueError(f"Unsupported bit width {bits} for bitsandbytes: use 8 (LLM.int8) or 4 (nf4/fp4).")
    if bits == 4 and quant_type not in ("nf4", "fp4"):
        raise ValueError(f"Unknown 4-bit type {quant_type!r}: use 'nf4' or 'fp4'.")
    if bits == 8:
        qc = BitsAndBytesConfig(load_in_8bit=True)
    else:
        qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type, bnb_4bit_compute_dtype=compute_dtype)
    dev = get_device(device)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        q = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=qc, device_map=str(dev))
    q.eval()
    return q


# ----------------------------------------------------------------------------------------------
# Does quantization bring forgotten facts back? Accuracy of each model under each quantization
# ----------------------------------------------------------------------------------------------
def quantized_versions(model, group_size: int | None = 64, bits=(8, 4, 3), device=None):
    """Yield ``(name, model)``: the model in full precision, RTN at each of ``bits`` (per ``group_size``), then
    bitsandbytes 4-bit nf4. Where bitsandbytes cannot run here (no build for this device), a note is printed and
    the nf4 version is skipped, so every table still has the other versions."""
    yield "full precision", model
    for b in bits:
        yield f"RTN {b}-bit", quantize_model(model, b, group_size)
    try:
        yield "bnb nf4", load_bnb(model, 4, "nf4", device=device)
    except Exception as e:  # bitsandbytes build without support for this device
        print(f"bitsandbytes 4-bit unavailable here ({type(e).__name__}: {e})")


def accuracy_under_quantization(models: dict, tokenizer, forget, retain, group_size: int | None = 64,
                                device=None) -> pd.DataFrame:
    """Forget and retain accuracy of every model of ``models`` ({name: model}) under every quantization of
    :func:`quantized_versions`: one row per (model, quantization), columns model, quantization, forget, retain.
    Whether an unlearned model's forget accuracy rises toward the original's when quantized is the attack."""
    from .evaluate import accuracy

    rows = []
    for name, model in models.items():
        for q, qm in quantized_versions(model, group_size, device=device):
            rows.append({"model": name, "quantization": q, "forget": accuracy(qm, tokenizer, forget),
                         "retain": accuracy(qm, tokenizer, retain)})
    return pd.DataFrame(rows)


def by_quantization(accuracies: pd.DataFrame, values: str = "forget") -> pd.DataFrame:
    """The long table of :func:`accuracy_under_quantization` as models (rows, in their order there) by
    quantizations (columns), holding ``values`` ("forget" or "retain")."""
    table = accuracies.pivot(index="model", columns="quantization", values=values)
    return table.loc[list(pd.unique(accuracies["model"]))]


def forget_gain(table: pd.DataFrame, models=None, bits: int = 4) -> dict:
    """{model: forget accuracy at RTN ``bits`` - forget accuracy in full precision}, for ``models`` (default: every
    row of ``table``, a models-by-quantization table with "full precision" and "RTN {bits}-bit" columns). A
    positive gain is knowledge quantization brought back."""
    column = f"RTN {bits}-bit"
    return {m: table.loc[m, column] - table.loc[m, "full precision"]
            for m in (table.index if models is None else models)}


# ----------------------------------------------------------------------------------------------
# Why quantization can bring knowledge back: unlearning changes measured in quantization steps
# ----------------------------------------------------------------------------------------------
def _weight_pairs(original, unlearned, include_lm_head: bool = False):
    """(module name, original weight, unlearned weight) as [out, in] float matrices, for every quantized Linear."""
    other = dict(unlearned.named_modules())
    for name, mod in quantizable_linears(original, include_lm_head).items():
        if name not in other or other[name].weight.shape != mod.weight.shape:
            raise ValueError(f"Module {name} differs between the two models: they must share an architecture.")
        w0, w1 = mod.weight.detach().float(), other[name].weight.detach().float()
        yield (name, w0.T, w1.T) if type(mod).__name__ == "Conv1D" else (name, w0, w1)


def _sample(x: torch.Tensor, n: int) -> torch.Tensor:
    return x[torch.randperm(x.numel(), generator=torch.Generator().manual_seed(0))[:n]]


@torch.no_grad()
def change_in_steps(original, unlearned, bits: int = 4, group_size: int | None = 64, symmetric: bool = True,
                    include_lm_head: bool = False) -> pd.DataFrame:
    """Per quantized Linear: how far unlearning moved the weights, in units of the original's quantization step.

    Columns: module, median / p90 / p99 of |w_unlearned - w_original| / step, the share of weights whose
    quantized value differs between the two models (``changed_after_quant``), and the share that moved at all.
    ``changed_after_quant`` compares integer codes (each model on its own grid): a weight whose code is unchanged
    holds, after quantization, what the original held up to the grid's rescaling.
    """
    rows = []
    for name, w0, w1 in _weight_pairs(original, unlearned, include_lm_head):
        g0, step, o0 = _grid(w0, bits, group_size, symmetric)
        g1, step1, o1 = _grid(w1, bits, group_size, symmetric)
        ratio = ((g1 - g0).abs() / step).flatten()
        changed = _codes(g1, step1, o1, bits, symmetric) != _codes(g0, step, o0, bits, symmetric)
        q = torch.quantile(_sample(ratio, 100_000), torch.tensor([0.5, 0.9, 0.99]))
        rows.append({"module": name, "n_weights": ratio.numel(), "median": float(q[0]), "p90": float(q[1]),
                     "p99": float(q[2]), "moved": float((w1 != w0).float().mean()),
                     "changed_after_quant": float(changed.float().mean())})
    return pd.DataFrame(rows)


@torch.no_grad()
def steps_histogram(original, unlearned, bits: int = 4, group_size: int | None = 64, sample: int = 200_000):
    """A sample of |w_unlearned - w_original| / step over all quantized weights (for a histogram)."""
    ratios = [((w1 - w0).abs() / quantization_step(w0, bits, group_size)).flatten()
              for _, w0, w1 in _weight_pairs(original, unlearned)]
    return _sample(torch.cat(ratios), sample).numpy()


def mechanism_table(original, models: dict, methods, forget_table: pd.DataFrame, bits: int = 4,
                    group_size: int | None = 64) -> pd.DataFrame:
    """Per method: how far unlearning moved the weights in units of the original's ``bits``-bit step, next to its
    forget accuracy in full precision and at ``bits`` bits (from ``forget_table``, see :func:`by_quantization`).

    Columns: "median |dw|/step" (the modules' medians weighted by their number of weights), "p99 |dw|/step" (the
    largest module p99), "codes changed ({bits}-bit)" (the weighted share of weights whose integer code differs
    from the original's), "forget, full precision", "forget, {bits}-bit". The paper's mechanism: small changes
    keep most codes, so the quantized unlearned model lands near the quantized original.
    """
    rows = []
    for m in methods:
        ch = change_in_steps(original, models[m], bits, group_size)
        w = ch.n_weights / ch.n_weights.sum()
        rows.append({"method": m, "median |dw|/step": float((ch["median"] * w).sum()),
                     "p99 |dw|/step": float(ch.p99.max()),
                     f"codes changed ({bits}-bit)": float((ch.changed_after_quant * w).sum()),
                     "forget, full precision": forget_table.loc[m, "full precision"],
                     f"forget, {bits}-bit": forget_table.loc[m, f"RTN {bits}-bit"]})
    return pd.DataFrame(rows).set_index("method")


def cumulative_steps(original, models: dict, methods, bits: int = 4, group_size: int | None = 64,
                     every: int = 200) -> dict:
    """{method: (sorted |dw| / step, cumulative share of weights)}: the cumulative distribution of how far
    unlearning moved the weights in quantization steps, every ``every``-th sorted value of a sample (for
    ``plotting.curves``). Where a curve reaches 1 before 0.5 step, rounding keeps most weights' codes."""
    out = {}
    for m in methods:
        ratios = np.sort(steps_histogram(original, models[m], bits, group_size))[::every]
        out[m] = (ratios, np.linspace(0, 1, len(ratios)))
    return out


def small_lr_regime(original, models: dict, tokenizer, forget, group_size: int | None = 64, device=None,
                    bits: int = 4) -> pd.DataFrame:
    """Per model (unlearned with a small learning rate): the median over modules of the median |dw| / step at
    ``bits`` bits ("median |dw|/step"), then its forget accuracy under each quantization of
    :func:`quantized_versions` (a column each). The paper's recovery appears in this regime."""
    from .evaluate import accuracy

    rows = []
    for name, model in models.items():
        ch = change_in_steps(original, model, bits, group_size)
        r = {"model": name, "median |dw|/step": float(ch["median"].median())}
        for q, qm in quantized_versions(model, group_size, device=device):
            r[q] = accuracy(qm, tokenizer, forget)
        rows.append(r)
    return pd.DataFrame(rows).set_index("model")


# ----------------------------------------------------------------------------------------------
# SURE (Zhang et al.): update only the modules most salient for the forget set, with a large learning rate
# ----------------------------------------------------------------------------------------------
def salient_modules(model, tokenizer, forget, fraction: float = 0.1, batch_size: int = 32) -> pd.DataFrame:
    """Rank the quantizable Linear modules by the norm of the forget-set NLL gradient on their weights.

    Returns the table (module, grad_norm, selected) with the top ``fraction`` of modules selected. SURE then
    unlearns with only those modules trainable and a larger learning rate, so the changes it makes are large
    enough to survive rounding.
    """
    from .training import pad_batch
    from .data import encode_examples, pad_id, rows_of

    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
    rows = rows_of(forget)
    if not rows:
        raise ValueError("The forget set is empty.")
    seqs, masks = encode_examples(tokenizer, rows)
    pad = pad_id(tokenizer)
    mods = quantizable_linears(model)
    dev = next(model.parameters()).device
    model.zero_grad(set_to_none=True)
    for i in range(0, len(seqs), batch_size):
        b = pad_batch(seqs[i:i + batch_size], pad, masks[i:i + batch_size])
        out = model(input_ids=b["input_ids"].to(dev), attention_mask=b["attention_mask"].to(dev),
                    labels=b["labels"].to(dev))
        (out.loss * len(seqs[i:i + batch_size]) / len(seqs)).backward()
    table = pd.DataFrame([{"module": n, "grad_norm": float(m.weight.grad.norm()) if m.weight.grad is not None else 0.0}
                          for n, m in mods.items()])
    model.zero_grad(set_to_none=True)
    n = max(1, round(fraction * len(table)))
    table = table.sort_values("grad_norm", ascending=False).reset_index(drop=True)
    table["selected"] = table.index < n
    return table


def sure_table(models: dict, tokenizer, forget, retain, group_size: int | None = 64, device=None) -> pd.DataFrame:
    """Per model (e.g. a method with and without SURE): "forget, {quantization}" for each quantization of
    :func:`quantized_versions`, then "retain, full precision". SURE works if its forget accuracy stays low under
    quantization while retain accuracy holds."""
    from .evaluate import accuracy

    rows = []
    for name, model in models.items():
        r = {"model": name}
        for q, qm in quantized_versions(model, group_size, device=device):
            r[f"forget, {q}"] = accuracy(qm, tokenizer, forget)
        r["retain, full precision"] = accuracy(model, tokenizer, retain)
        rows.append(r)
    return pd.DataFrame(rows).set_index("model")
