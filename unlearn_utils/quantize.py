"""Quantization: round-to-nearest in plain torch, GGUF block formats (through ``gguf``), and bitsandbytes.

Round-to-nearest (RTN) here is *quantize-dequantize*: each weight is replaced by the nearest point of
its group's grid, stored back in the model's own dtype. The model then runs anywhere (CPU or GPU) and
behaves exactly as an integer model with that grid would. The symmetric grid's step is the quantization paper's
(Zhang et al., arXiv 2410.16454: Q(w) = step * Round(w / step), step = max|w| / 2^(N-1) for N bits);
``step="absmax"`` is the other common symmetric grid, max|w| / (2^(N-1) - 1), a step 8/7 = 1.14x coarser at 4 bits
(:func:`quantization_step`). GGUF block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: what llama.cpp users deploy) are
quantize-dequantized the same way with the ``gguf`` package's own numpy code.
bitsandbytes (LLM.int8, 4-bit fp4/nf4) is the library transformers users quantize with; :func:`load_bnb` loads
any model through it (CPU or CUDA).

A :class:`Scheme` names one of these ("Q4_1", "bnb nf4", ``Scheme.rtn(4, 64)``) so that a table can loop over
schemes; :func:`quantize_as` applies one. The grid effect: a checkpoint released in a quantized format sits
exactly on that format's grid (:func:`native_grid`), so that grid moves none of its weights while every other
grid moves most of them (:func:`grid_table`, :func:`grid_effect`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import tempfile
from dataclasses import dataclass

import numpy as np
import pandas as pd

import torch

SUPPORTED_BITS = (2, 3, 4, 5, 6, 7, 8)
RTN_STEPS = ("paper", "absmax")
"""The symmetric RTN grids. ``"paper"`` (the default): the quantization paper's step = max|w| / 2^(N-1), with the
codes of an N-bit signed integer, -2^(N-1) ... 2^(N-1) - 1 (2^N points; the paper's Round(w / step) would give the
weight at +max|w| the code 2^(N-1), which N bits cannot hold, so the group's largest positive weights take the top
code and move by up to one step; every other weight by at most half a step). ``"absmax"``: step =
max|w| / (2^(N-1) - 1), codes -(2^(N-1) - 1) ... 2^(N-1) - 1 (2^N - 1 points, every weight within half a step; the
kit's earlier grid, and notebook 05's exercise)."""


def check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"Unsupported bit width {bits}: round-to-nearest supports {SUPPORTED_BITS}.")


def check_step(step: str) -> str:
    if step not in RTN_STEPS:
        raise ValueError(f"Unknown RTN step {step!r}: choose one of {RTN_STEPS} ('paper': max|w| / 2^(bits-1), "
                         "'absmax': max|w| / (2^(bits-1) - 1)).")
    return step


def _grouped(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """View a [out, in] weight as [out, n_groups, group] (a group = consecutive input weights of one row)."""
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D weight matrix, got shape {tuple(w.shape)}.")
    g = w.shape[1] if group_size is None else group_size
    if not isinstance(g, int) or isinstance(g, bool) or g <= 0 or w.shape[1] % g:
        raise ValueError(f"group size {group_size!r} does not divide the input dimension {w.shape[1]}; "
                         f"choose one of its divisors {_divisors(w.shape[1])} or None (one grid per row).")
    return w.reshape(w.shape[0], w.shape[1] // g, g)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _grid(w: torch.Tensor, bits: int, group_size: int | None, symmetric: bool, step: str = "paper"):
    """Grouped view of ``w``, the grid step of each group and the grid's origin (0 for symmetric, the minimum else).

    A constant group (all its weights equal: all zero for a symmetric grid) has step 0: its grid is one point, the
    group's value, which stores it exactly."""
    check_bits(bits)
    check_step(step)
    wg = _grouped(w.float(), group_size)
    if symmetric:
        levels = 2 ** (bits - 1) if step == "paper" else 2 ** (bits - 1) - 1
        size = wg.abs().amax(-1, keepdim=True) / levels
        return wg, size, torch.zeros_like(size)
    lo = wg.amin(-1, keepdim=True)
    return wg, (wg.amax(-1, keepdim=True) - lo) / (2 ** bits - 1), lo


def _code_range(bits: int, symmetric: bool, step: str = "paper") -> tuple[int, int]:
    if not symmetric:
        return 0, 2 ** bits - 1
    if step == "paper":
        return -2 ** (bits - 1), 2 ** (bits - 1) - 1
    return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1


def _codes(wg: torch.Tensor, step: torch.Tensor, origin: torch.Tensor, bits: int, symmetric: bool,
           step_kind: str = "paper") -> torch.Tensor:
    """The integer grid index of each grouped weight (what a quantized checkpoint stores); 0 in a constant group."""
    lo, hi = _code_range(bits, symmetric, step_kind)
    safe = torch.where(step > 0, step, torch.ones_like(step))  # a constant group: wg - origin is 0, its code 0
    return torch.round((wg - origin) / safe).clamp(lo, hi)


def quantization_step(w: torch.Tensor, bits: int, group_size: int | None = 64, symmetric: bool = True,
                      step: str = "paper") -> torch.Tensor:
    """The grid spacing of each weight's group, same shape as ``w`` (the "step" a change must beat to survive).

    Symmetric, ``step="paper"`` (default): max|w| / 2^(bits-1) per group, the quantization paper's step;
    ``step="absmax"``: max|w| / (2^(bits-1) - 1). Asymmetric: (max w - min w) / (2^bits - 1). 0 in a constant group
    (a one-point grid; :func:`change_in_steps` does not measure changes against it)."""
    wg, size, _ = _grid(w, bits, group_size, symmetric, step)
    return size.expand_as(wg).reshape(w.shape)


def quantize_tensor(w: torch.Tensor, bits: int, group_size: int | None = 64, symmetric: bool = True,
                    step: str = "paper") -> torch.Tensor:
    """Round-to-nearest quantize-dequantize of a [out, in] weight, per group of ``group_size`` inputs.

    group_size=None quantizes per output channel (one grid per row). Symmetric grids are centred on zero: by
    default the quantization paper's, step * Round(w / step) with step = max|w| / 2^(bits-1) and the codes of a
    bits-bit signed integer, -2^(bits-1) ... 2^(bits-1) - 1 (:data:`RTN_STEPS`); with ``step="absmax"``, step =
    max|w| / (2^(bits-1) - 1) and 2^(bits-1) - 1 levels each side. Asymmetric (min-max) grids use all 2^bits levels
    from the group's minimum. A constant group is kept exactly.

    The grid is computed in float32, where every weight moves by at most half a step (on the paper's grid, all but
    the group's largest positive weights, above (2^(bits-1) - 1/2) steps, which the top code clips by up to one
    step). The result is stored in ``w``'s dtype: in bfloat16 or float16 each grid point is itself rounded to that
    dtype (bfloat16 keeps 8 significant bits, float16 11), which can move a weight a little more,
    |q - w| <= step / 2 + |q| * 2^-8 in bfloat16 (2^-11 in float16), the rounding a 16-bit kernel that dequantizes
    step * code makes too.
    """
    wg, size, origin = _grid(w, bits, group_size, symmetric, step)
    q = _codes(wg, size, origin, bits, symmetric, step) * size + origin
    return q.reshape(w.shape).to(w.dtype)


def quantizable_linears(model, include_lm_head: bool = False) -> dict[str, torch.nn.Module]:
    """The Linear layers RTN touches, by their names in the transformers model: every decoder Linear (embeddings and,
    by default, the unembedding stay full precision). Of a LoRA (peft) model, each adapted Linear is one layer (its
    LoRA layer, whose weight is the merged W + delta W: :func:`unlearn_utils.arch.effective_weight`), under the plain
    model's name; the LoRA matrices are not layers of their own."""
    from .arch import base_layer, get_adapter, is_lora_layer, resolve, unwrap

    adapter = get_adapter(model)
    inner = unwrap(model)
    unembed = base_layer(resolve(inner, adapter.unembed))
    out, inside_lora = {}, []
    for name, mod in inner.named_modules():
        if any(name.startswith(prefix) for prefix in inside_lora):
            continue  # a LoRA layer's base layer and A / B matrices: part of that layer
        if is_lora_layer(mod):
            inside_lora.append(name + ".")
        base = base_layer(mod)
        if not (isinstance(base, torch.nn.Linear) or type(base).__name__ == "Conv1D"):
            continue
        if base is unembed and not include_lm_head:
            continue
        out[name] = mod
    return out


def _is_conv1d(mod) -> bool:
    from .arch import base_layer

    return type(base_layer(mod)).__name__ == "Conv1D"  # GPT-2 stores its weights [in, out]


def _row_major(mod) -> torch.Tensor:
    """A quantizable module's weight as an [out, in] matrix (groups and blocks run along its rows): a view of the
    weight, or for a LoRA layer a new tensor holding its merged weight (read it; quantization acts on a merged copy)."""
    from .arch import effective_weight

    w = effective_weight(mod).detach()
    return w.T if _is_conv1d(mod) else w


def _row_shape(mod) -> tuple[int, int]:
    """The [out, in] shape of :func:`_row_major` without merging a LoRA layer's update to find it."""
    from .arch import base_layer

    shape = tuple(base_layer(mod).weight.shape)
    return shape[::-1] if _is_conv1d(mod) else shape


def _quantization_target(model, include_lm_head: bool, inplace: bool):
    """The plain model quantization writes into: a merged copy of a LoRA model (in place: the model's adapters merged
    into its weights), a copy of any other (in place: the model itself); with ``include_lm_head``, an unembedding
    tied to the input embeddings gets its own copy of the weight first, so the embeddings stay full precision."""
    from .arch import get_adapter, merge_in_place, merged_copy, resolve

    target = merge_in_place(model) if inplace else merged_copy(model)
    if include_lm_head:
        unembed = resolve(target, get_adapter(target).unembed)
        embed = target.get_input_embeddings() if hasattr(target, "get_input_embeddings") else None
        if embed is not None and unembed.weight.data_ptr() == embed.weight.data_ptr():
            unembed.weight = torch.nn.Parameter(unembed.weight.detach().clone(),
                                                requires_grad=unembed.weight.requires_grad)
            for cfg in {id(c): c for c in (target.config, target.config.get_text_config())}.values():
                cfg.tie_word_embeddings = False  # saved and reloaded, the two stay two matrices
    return target


# ----------------------------------------------------------------------------------------------
# Group sizes a model allows: a group (or a GGUF block) must divide every quantized layer's input width
# ----------------------------------------------------------------------------------------------
def input_widths(model, include_lm_head: bool = False) -> list[int]:
    """The distinct input widths of the quantized Linears (sorted): what a group size or block size must divide."""
    return sorted({_row_shape(mod)[1] for mod in quantizable_linears(model, include_lm_head).values()})


def valid_group_sizes(model, include_lm_head: bool = False) -> list[int]:
    """Every group size RTN accepts on ``model``: the common divisors of its input widths (None, one grid per row,
    is always valid too)."""
    return _divisors(math.gcd(*input_widths(model, include_lm_head)))


def default_group_size(model, preferred: int = 64, include_lm_head: bool = False) -> int | None:
    """The largest valid group size not above ``preferred`` (SmolLM2, widths 576 and 1536: 64; the tiny world
    model, 32 and 64: 32), or None (one grid per row) where that would leave groups of fewer than 16 weights,
    which store nearly a scale per weight."""
    fits = [g for g in valid_group_sizes(model, include_lm_head) if g <= preferred]
    return fits[-1] if fits and fits[-1] >= min(16, preferred) else None


def resolve_group_size(model, group_size: int | str | None = "auto", include_lm_head: bool = False) -> int | None:
    """``group_size`` checked against ``model``: "auto" gives :func:`default_group_size`, None stays per channel, and
    a size that does not divide every input width is refused with the widths and the valid choices."""
    if group_size == "auto":
        return default_group_size(model, include_lm_head=include_lm_head)
    if group_size is None:
        return None
    widths = input_widths(model, include_lm_head)
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size <= 0 or any(
            w % group_size for w in widths):
        raise ValueError(f"group size {group_size!r} does not divide every quantized layer's input width "
                         f"{widths}; choose one of {valid_group_sizes(model, include_lm_head)}, None (one grid per "
                         "row) or 'auto'.")
    return group_size


@torch.no_grad()
def quantize_model(model, bits: int, group_size: int | str | None = "auto", symmetric: bool = True,
                   include_lm_head: bool = False, inplace: bool = False, step: str = "paper"):
    """A copy of ``model`` whose decoder Linear weights are RTN quantize-dequantized (see :func:`quantize_tensor`).

    ``group_size="auto"`` picks :func:`default_group_size` (64 wherever 64 divides every width); a size that does
    not divide every input width is refused before any work. The input embeddings always stay full precision, and
    the unembedding too unless ``include_lm_head``; a model whose unembedding is tied to its input embeddings is
    then *untied* in the copy (the unembedding gets its own quantized weight, ``tie_word_embeddings`` becomes
    False). A LoRA (peft) model is quantized as its merged weights (what deploying it means): the result is a plain
    model, and ``inplace=True`` merges the adapters into the model's own weights first (use the returned model).
    ``step``: the symmetric grid's step, as in :func:`quantize_tensor` (default the quantization paper's).
    """
    check_bits(bits)
    check_step(step)
    group_size = resolve_group_size(model, group_size, include_lm_head)
    target = _quantization_target(model, include_lm_head, inplace)
    for mod in quantizable_linears(target, include_lm_head).values():
        w = _row_major(mod)
        w.copy_(quantize_tensor(w, bits, group_size, symmetric, step))
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
    from transformers.utils import logging as hf_logging

    dev = get_device(device)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # reading back our own temporary copy: no "Loading weights" bar per call
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            q = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=qc, device_map=str(dev))
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    q.eval()
    return q


# ----------------------------------------------------------------------------------------------
# GGUF block formats, as llama.cpp users deploy them: quantize-dequantize through the gguf package's own numpy code
# ----------------------------------------------------------------------------------------------
GGUF_FORMATS = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
"""The GGUF block formats ``gguf`` can quantize in numpy. Each block is 32 consecutive weights of a row, stored as
integer codes and an fp16 scale d: ``w = d * q`` (Q4_0, Q5_0, Q8_0, codes centred on zero) or ``w = d * q + m``
with an fp16 minimum m (Q4_1, Q5_1)."""
GGUF_BLOCK = 32
_GGUF_WITH_MIN = ("Q4_1", "Q5_1")


def check_gguf_format(fmt: str) -> str:
    """``fmt`` as a GGUF format name of :data:`GGUF_FORMATS` (case-insensitive), or a clear error."""
    name = fmt.upper() if isinstance(fmt, str) else fmt
    if name not in GGUF_FORMATS:
        hint = " (gguf only dequantizes K-quants and IQ formats in numpy)" if isinstance(name, str) and (
            "_K" in name or name.startswith("IQ")) else ""
        raise ValueError(f"Unsupported GGUF format {fmt!r}{hint}: choose one of {GGUF_FORMATS}.")
    return name


def check_gguf_widths(model, fmt: str, include_lm_head: bool = False) -> str:
    """Refuse, before any work, a model one of whose quantized input widths is not a whole number of blocks."""
    fmt = check_gguf_format(fmt)
    widths = input_widths(model, include_lm_head)
    bad = [w for w in widths if w % GGUF_BLOCK]
    if bad:
        raise ValueError(f"{fmt} quantizes blocks of {GGUF_BLOCK} weights along each row, but the input widths {bad} "
                         f"(of {widths}) are not multiples of {GGUF_BLOCK}; use RTN with a group size of "
                         f"{valid_group_sizes(model, include_lm_head)} or None.")
    return fmt


def _gguf_roundtrip(w: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(dequantized weight as float32 on the CPU, integer codes) of an [out, in] weight in a GGUF format."""
    from gguf import GGMLQuantizationType, quants

    qtype = GGMLQuantizationType[check_gguf_format(fmt)]
    if w.ndim != 2 or w.shape[1] % GGUF_BLOCK:
        raise ValueError(f"{fmt} needs a 2-D weight whose rows are whole blocks of {GGUF_BLOCK}, got shape "
                         f"{tuple(w.shape)}.")
    raw = quants.quantize(np.ascontiguousarray(w.detach().float().cpu().numpy()), qtype)
    dq = quants.dequantize(raw, qtype)
    # the block's fp16 scale d is its first 2 bytes, the minimum m the next 2 (Q4_1, Q5_1): codes = (w - m) / d
    blocks = raw.reshape(w.shape[0], w.shape[1] // GGUF_BLOCK, -1)
    d = blocks[..., 0:2].copy().view(np.float16).astype(np.float32)
    m = blocks[..., 2:4].copy().view(np.float16).astype(np.float32) if fmt.upper() in _GGUF_WITH_MIN else 0
    grouped = dq.reshape(w.shape[0], -1, GGUF_BLOCK)
    with np.errstate(divide="ignore", invalid="ignore"):
        codes = np.where(d == 0, 0, np.rint((grouped - m) / d)).astype(np.int16)
    return torch.from_numpy(dq), torch.from_numpy(codes.reshape(w.shape))


def quantize_tensor_gguf(w: torch.Tensor, fmt: str) -> torch.Tensor:
    """GGUF quantize-dequantize of an [out, in] weight (blocks of 32 along each row), in ``w``'s dtype and device."""
    return _gguf_roundtrip(w, fmt)[0].to(device=w.device, dtype=w.dtype)


@torch.no_grad()
def quantize_model_gguf(model, fmt: str, include_lm_head: bool = False, inplace: bool = False):
    """A copy of ``model`` whose decoder Linear weights (those of :func:`quantizable_linears`) are quantize-dequantized
    in the GGUF block format ``fmt`` ("Q4_1", ...): a float model that computes what llama.cpp would with that file.
    A bad format name or a width that is not a whole number of blocks is refused before any work. Embeddings, tied
    unembeddings and LoRA models as in :func:`quantize_model`."""
    fmt = check_gguf_widths(model, fmt, include_lm_head)
    target = _quantization_target(model, include_lm_head, inplace)
    for mod in quantizable_linears(target, include_lm_head).values():
        w = _row_major(mod)
        w.copy_(quantize_tensor_gguf(w, fmt))
    return target


# ----------------------------------------------------------------------------------------------
# One name for a quantization scheme: RTN (bits, group, symmetric), a GGUF format, or bitsandbytes
# ----------------------------------------------------------------------------------------------
BNB_TYPES = ("nf4", "fp4", "int8")
_RTN_NAME = re.compile(r"RTN (\d+)-bit(?: g(\d+)| (per channel))?( asym| absmax)?")


@dataclass(frozen=True)
class Scheme:
    """One way to quantize a model, for tables that loop over schemes. Build one with :meth:`rtn`, :meth:`gguf` or
    :meth:`bnb`, or name it (see :func:`as_scheme`): "Q4_1", "nf4", "RTN 4-bit g64 asym". ``name`` is the label
    tables use, the tool first: "GGUF Q4_1", "bnb nf4", "RTN 4-bit g64 asym", "RTN 4-bit g64 absmax" (the symmetric
    grid with step max|w| / (2^(bits-1) - 1) instead of the paper's max|w| / 2^(bits-1))."""

    kind: str                                  # "rtn", "gguf" or "bnb"
    bits: int
    format: str | None = None                  # GGUF format ("Q4_1") or bitsandbytes type ("nf4", "fp4", "int8")
    group_size: int | str | None = "auto"      # RTN only: a divisor of the widths, None (per row) or "auto"
    symmetric: bool = True                     # RTN only
    step: str = "paper"                        # RTN symmetric only: "paper" or "absmax" (see RTN_STEPS)

    @classmethod
    def rtn(cls, bits: int, group_size: int | str | None = "auto", symmetric: bool = True,
            step: str = "paper") -> "Scheme":
        check_bits(bits)
        check_step(step)
        if group_size != "auto" and group_size is not None and (
                not isinstance(group_size, int) or isinstance(group_size, bool) or group_size <= 0):
            raise ValueError(f"group size must be a positive integer, None or 'auto', got {group_size!r}.")
        return cls("rtn", bits, None, group_size, symmetric, step if symmetric else "paper")

    @classmethod
    def gguf(cls, fmt: str) -> "Scheme":
        fmt = check_gguf_format(fmt)
        return cls("gguf", int(fmt[1]), fmt)

    @classmethod
    def bnb(cls, kind: str = "nf4") -> "Scheme":
        if kind not in BNB_TYPES:
            raise ValueError(f"Unknown bitsandbytes type {kind!r}: choose one of {BNB_TYPES}.")
        return cls("bnb", 8 if kind == "int8" else 4, kind)

    @property
    def name(self) -> str:
        if self.kind == "gguf":
            return f"GGUF {self.format}"
        if self.kind == "bnb":
            return f"bnb {self.format}"
        group = {"auto": "", None: " per channel"}.get(self.group_size, f" g{self.group_size}")
        grid = " asym" if not self.symmetric else " absmax" if self.step == "absmax" else ""
        return f"RTN {self.bits}-bit{group}{grid}"

    def __str__(self) -> str:
        return self.name


def as_scheme(spec) -> Scheme:
    """A :class:`Scheme` from itself or its name: a GGUF format ("Q4_1" or "GGUF Q4_1"), a bitsandbytes type ("nf4"
    or "bnb nf4", "fp4", "int8"), or an RTN name ("RTN 4-bit" with the model's default group, "RTN 4-bit g64",
    "RTN 8-bit per channel", "RTN 4-bit g32 asym", "RTN 4-bit g64 absmax")."""
    if isinstance(spec, Scheme):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"A quantization scheme is a Scheme or its name, got {spec!r}.")
    text = spec.strip()
    text = text[5:] if text.startswith("GGUF ") else text
    if re.fullmatch(r"I?Q\d\w*", text.upper()):  # a GGUF name: one we support, or a clear error saying which
        return Scheme.gguf(text)
    kind = text[4:] if text.startswith("bnb ") else text
    if kind in BNB_TYPES:
        return Scheme.bnb(kind)
    match = _RTN_NAME.fullmatch(text)
    if match:
        bits, group, per_channel, grid = match.groups()
        return Scheme.rtn(int(bits), None if per_channel else int(group) if group else "auto", grid != " asym",
                          "absmax" if grid == " absmax" else "paper")
    raise ValueError(f"Unknown quantization scheme {spec!r}: name a GGUF format {GGUF_FORMATS}, a bitsandbytes type "
                     f"{BNB_TYPES} (or 'bnb nf4'), or RTN as 'RTN 4-bit', 'RTN 4-bit g64', 'RTN 4-bit per channel', "
                     "'RTN 4-bit g64 asym', 'RTN 4-bit g64 absmax'; or build one with Scheme.rtn / Scheme.gguf / "
                     "Scheme.bnb.")


def check_scheme(model, spec, include_lm_head: bool = False) -> Scheme:
    """``spec`` as a :class:`Scheme` that fits ``model`` (an RTN "auto" group resolved to the model's default); a bad
    name, group size or width is refused here, before any work."""
    s = as_scheme(spec)
    if s.kind == "rtn":
        return dataclasses.replace(s, group_size=resolve_group_size(model, s.group_size, include_lm_head))
    if s.kind == "gguf":
        check_gguf_widths(model, s.format, include_lm_head)
    return s


def quantize_as(model, spec, device=None, include_lm_head: bool = False):
    """A quantized copy of ``model`` under one scheme: RTN and GGUF give a float model (quantize-dequantize),
    bitsandbytes a model loaded through it (:func:`load_bnb`, on ``device``)."""
    s = check_scheme(model, spec, include_lm_head)
    if s.kind == "rtn":
        return quantize_model(model, s.bits, s.group_size, s.symmetric, include_lm_head, step=s.step)
    if s.kind == "gguf":
        return quantize_model_gguf(model, s.format, include_lm_head)
    if include_lm_head:
        raise ValueError("bitsandbytes keeps the unembedding in full precision; include_lm_head applies to RTN and "
                         "GGUF only.")
    return load_bnb(model, s.bits, "nf4" if s.format == "int8" else s.format, device=device)


def _quantized_weight(w: torch.Tensor, s: Scheme) -> tuple[torch.Tensor, torch.Tensor]:
    """(quantize-dequantized float32 weight, integer codes) of an [out, in] weight under a checked scheme."""
    if s.kind == "rtn":
        wg, step, origin = _grid(w, s.bits, s.group_size, s.symmetric, s.step)
        codes = _codes(wg, step, origin, s.bits, s.symmetric, s.step)
        return (codes * step + origin).reshape(w.shape), codes.reshape(w.shape)
    if s.kind == "gguf":
        return _gguf_roundtrip(w, s.format)
    import bitsandbytes.functional as F

    x = w.detach().float().contiguous()
    if s.format == "int8":  # LLM.int8 (Int8Params): the fp16 weight, one absmax scale per row, codes -127..127
        codes, scale, _ = F.int8_vectorwise_quant(x.half())
        return codes.float() * scale.float()[:, None] / 127, codes
    packed, state = F.quantize_4bit(x, blocksize=64, quant_type=s.format)  # Linear4bit's default blocks of 64
    codes = torch.stack([packed >> 4, packed & 15], -1).reshape(-1)  # two codes per byte (packed order)
    return F.dequantize_4bit(packed, state).reshape(w.shape), codes


# ----------------------------------------------------------------------------------------------
# The grid effect: a checkpoint sits on its own format's grid, which moves none of its weights
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def weights_moved(model, spec, include_lm_head: bool = False) -> float:
    """Share of the quantized weights (those of :func:`quantizable_linears`) whose value a scheme changes: 0 on the
    grid the checkpoint already sits on (SmolLM2's Q4_1), most of them on any other grid."""
    s = check_scheme(model, spec, include_lm_head)
    moved = total = 0
    for mod in quantizable_linears(model, include_lm_head).values():
        w = _row_major(mod).float().cpu()
        moved += int((_quantized_weight(w, s)[0] != w).sum())
        total += w.numel()
    return moved / total


@torch.no_grad()
def native_grid(model, candidates=GGUF_FORMATS, include_lm_head: bool = False) -> str | None:
    """The first candidate scheme that moves none of ``model``'s quantized weights (the grid its float weights sit
    on exactly), or None: a GGUF format by its format name ("Q4_1" for SmolLM2, converted from its Q4_1 file),
    another scheme by its name. Candidates that do not
    fit the model's widths are skipped; a candidate is dropped at its first moved weight, so only the native grid
    costs a full pass. Grids can nest (a Q4_0 model sits on Q5_0's grid too): list the coarsest first, as
    :data:`GGUF_FORMATS` does."""
    schemes = [as_scheme(c) for c in candidates]
    linears = list(quantizable_linears(model, include_lm_head).values())
    for s in schemes:
        try:
            s = check_scheme(model, s, include_lm_head)
        except ValueError:
            continue
        if all(torch.equal(_quantized_weight(w, s)[0], w) for w in
               (_row_major(mod).float().cpu() for mod in linears)):
            return s.format if s.kind == "gguf" else s.name
    return None


def grid_schemes(model, group_size: int | str | None = "auto", native: str | None | bool = True) -> list[Scheme]:
    """The schemes of the grid-effect lesson, in order: the checkpoint's own grid (``native=True`` detects it with
    :func:`native_grid`; a name gives it; None or False: none), another 4-bit GGUF grid (Q4_0, or Q4_1 where Q4_0
    is native), RTN 4-bit symmetric per ``group_size``, bitsandbytes nf4, Q8_0 and RTN 8-bit. GGUF formats that do
    not fit the model's widths are left out."""
    if native is True:
        native = native_grid(model)
    other = "Q4_1" if native == "Q4_0" else "Q4_0"
    fits = all(w % GGUF_BLOCK == 0 for w in input_widths(model))
    names = ([native] if native else []) + ([other] if fits else []) + [Scheme.rtn(4, group_size), "nf4"] + (
        ["Q8_0"] if fits else []) + [Scheme.rtn(8, group_size)]
    out = []
    for n in names:
        s = as_scheme(n)
        if s.name not in [o.name for o in out]:
            out.append(s)
    return out


@torch.no_grad()
def grid_table(original, unlearned=None, schemes=None, include_lm_head: bool = False) -> pd.DataFrame:
    """Per scheme (rows, by name): the share of the original's quantized weights it moves ("moved on original": 0 on
    the checkpoint's own grid), and with ``unlearned``, the share of weights whose integer code differs between the
    two models each quantized in that scheme ("codes changed") and whose quantized value differs ("values
    changed": a code or its block's scale changed). Few changed codes on a grid that moves nothing is why that
    grid can hand the original's knowledge back. Default schemes: :func:`grid_schemes` of the original."""
    schemes = grid_schemes(original) if schemes is None else schemes
    schemes = [check_scheme(original, s, include_lm_head) for s in schemes]
    pairs = (list(_weight_pairs(original, unlearned, include_lm_head)) if unlearned is not None else
             [(n, _row_major(m).float(), None) for n, m in quantizable_linears(original, include_lm_head).items()])
    rows = []
    for s in schemes:
        total = moved = codes = values = 0
        for _, w0, w1 in pairs:
            w0 = w0.cpu()
            q0, c0 = _quantized_weight(w0, s)
            total += w0.numel()
            moved += int((q0 != w0).sum())
            if w1 is not None:
                q1, c1 = _quantized_weight(w1.cpu(), s)
                codes += int((c1 != c0).sum())
                values += int((q1 != q0).sum())
        row = {"quantization": s.name, "moved on original": moved / total}
        if unlearned is not None:
            row.update({"codes changed": codes / total, "values changed": values / total})
        rows.append(row)
    return pd.DataFrame(rows).set_index("quantization")


def grid_effect(original, unlearned, tokenizer, forget, retain, schemes=None, device=None,
                names=("original", "unlearned")) -> pd.DataFrame:
    """The grid effect in one table, a row per quantization ("full precision", then each scheme, default
    :func:`grid_schemes`): forget and retain accuracy of the original and the unlearned model
    (:func:`accuracy_under_quantization`), next to :func:`grid_table`'s shares. Columns "forget, {name}",
    "retain, {name}" for both ``names``, "moved on original", "codes changed", "values changed"."""
    schemes = grid_schemes(original) if schemes is None else schemes
    schemes = [check_scheme(original, s) for s in schemes]
    for s in schemes:
        check_scheme(unlearned, s)
    long = accuracy_under_quantization(dict(zip(names, (original, unlearned))), tokenizer, forget, retain,
                                       device=device, schemes=schemes)
    wide = pd.concat({f"{v}, {n}": by_quantization(long, v).loc[n] for v in ("forget", "retain") for n in names},
                     axis=1)
    # full precision has no shares, and a scheme bitsandbytes could not load here no accuracies (NaN)
    wide = wide.reindex(["full precision", *(s.name for s in schemes)])
    return wide.join(grid_table(original, unlearned, schemes))


# ----------------------------------------------------------------------------------------------
# Does quantization bring forgotten facts back? Accuracy of each model under each quantization
# ----------------------------------------------------------------------------------------------
def quantized_versions(model, group_size: int | str | None = "auto", bits=(8, 4, 3), device=None, schemes=None):
    """Yield ``(name, model)``: the model in full precision, then RTN at each of ``bits`` (per ``group_size``) and
    bitsandbytes 4-bit nf4, or, given ``schemes`` (:class:`Scheme` objects or names), each scheme under its name.
    Where bitsandbytes cannot run here (no build for this device), a note is printed and that version is skipped,
    so every table still has the other versions. Bad schemes or group sizes are refused before any work."""
    if schemes is None:
        group_size = resolve_group_size(model, group_size)
        for b in bits:
            check_bits(b)
        schemes = [*(Scheme("rtn", b, None, group_size, True) for b in bits), Scheme.bnb("nf4")]
        names = [*(f"RTN {b}-bit" for b in bits), "bnb nf4"]
    else:
        schemes = [check_scheme(model, s) for s in schemes]
        names = [s.name for s in schemes]
    yield "full precision", model
    for name, s in zip(names, schemes):
        if s.kind != "bnb":
            yield name, quantize_as(model, s)
            continue
        try:
            q = load_bnb(model, s.bits, s.format, device=device)
        except Exception as e:  # bitsandbytes build without support for this device
            print(f"bitsandbytes {'8-bit' if s.bits == 8 else '4-bit'} unavailable here ({type(e).__name__}: {e})")
            continue
        yield name, q


def _check_versions(models, group_size, schemes) -> None:
    """Refuse a group size or scheme that does not fit one of ``models`` before any of them is evaluated."""
    for model in models:
        if schemes is None:
            resolve_group_size(model, group_size)
        else:
            for s in schemes:
                check_scheme(model, s)


def accuracy_under_quantization(models: dict, tokenizer, forget, retain, group_size: int | str | None = "auto",
                                device=None, schemes=None) -> pd.DataFrame:
    """Forget and retain accuracy of every model of ``models`` ({name: model}) under every quantization of
    :func:`quantized_versions` (the default RTN bits per ``group_size`` and nf4, or the given ``schemes``): one row
    per (model, quantization), columns model, quantization, forget, retain. Whether an unlearned model's forget
    accuracy rises toward the original's when quantized is the attack."""
    from .evaluate import accuracy

    _check_versions(models.values(), group_size, schemes)
    rows = []
    for name, model in models.items():
        for q, qm in quantized_versions(model, group_size, device=device, schemes=schemes):
            rows.append({"model": name, "quantization": q, "forget": accuracy(qm, tokenizer, forget),
                         "retain": accuracy(qm, tokenizer, retain)})
    return pd.DataFrame(rows)


def by_quantization(accuracies: pd.DataFrame, values: str = "forget") -> pd.DataFrame:
    """The long table of :func:`accuracy_under_quantization` as models (rows) by quantizations (columns), both in
    their order there, holding ``values`` ("forget" or "retain")."""
    table = accuracies.pivot(index="model", columns="quantization", values=values)
    return table.loc[list(pd.unique(accuracies["model"])), list(pd.unique(accuracies["quantization"]))]


def forget_gain(table: pd.DataFrame, models=None, bits: int = 4) -> dict:
    """{model: forget accuracy at RTN ``bits`` - forget accuracy in full precision}, for ``models`` (default: every
    row of ``table``, a models-by-quantization table with "full precision" and "RTN {bits}-bit" columns). A
    positive gain is knowledge quantization brought back."""
    column = rtn_column(table, bits)
    return {m: table.loc[m, column] - table.loc[m, "full precision"]
            for m in (table.index if models is None else models)}


def rtn_column(table: pd.DataFrame, bits: int) -> str:
    """The column of ``table`` holding RTN at ``bits`` bits: "RTN 4-bit" (the model's default group), else the first
    column named "RTN 4-bit ..." (a given group, e.g. "RTN 4-bit g64")."""
    name = f"RTN {bits}-bit"
    if name in table.columns:
        return name
    found = [c for c in table.columns if str(c).startswith(name + " ")]
    if not found:
        raise KeyError(f"No {name} column in the table (it has {list(table.columns)}).")
    return found[0]


# ----------------------------------------------------------------------------------------------
# Why quantization can bring knowledge back: unlearning changes measured in quantization steps
# ----------------------------------------------------------------------------------------------
def _weight_pairs(original, unlearned, include_lm_head: bool = False):
    """(module name, original weight, unlearned weight) as [out, in] float matrices, for every quantized Linear."""
    other = quantizable_linears(unlearned, include_lm_head)  # a LoRA model's layers by the plain names, merged weights
    for name, mod in quantizable_linears(original, include_lm_head).items():
        if name not in other or _row_shape(other[name]) != _row_shape(mod):
            raise ValueError(f"Module {name} differs between the two models: they must share an architecture.")
        yield name, _row_major(mod).float(), _row_major(other[name]).float()


def _sample(x: torch.Tensor, n: int) -> torch.Tensor:
    return x[torch.randperm(x.numel(), generator=torch.Generator().manual_seed(0))[:n]]


def _in_steps(change: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """|change| / step where the step is positive; NaN in a constant group (step 0), where there is no step to
    measure a change against (dividing by a stand-in for 0 reported changes of about 10^9 steps there)."""
    return torch.where(step > 0, change.abs() / torch.where(step > 0, step, torch.ones_like(step)),
                       torch.full_like(change, float("nan")))


@torch.no_grad()
def change_in_steps(original, unlearned, bits: int = 4, group_size: int | str | None = "auto", symmetric: bool = True,
                    include_lm_head: bool = False, step: str = "paper") -> pd.DataFrame:
    """Per quantized Linear: how far unlearning moved the weights, in units of the original's quantization step
    (:func:`quantization_step`; ``step`` picks the symmetric grid, by default the quantization paper's).

    Columns: module, median / p90 / p99 of |w_unlearned - w_original| / step, the share of weights whose
    quantized value differs between the two models (``changed_after_quant``), the share that moved at all, and the
    share in constant groups of the original (``constant_groups``: a one-point grid, step 0, so no ratio; the
    quantiles leave them out, NaN when every group is constant). ``changed_after_quant`` compares integer codes
    (each model on its own grid): a weight whose code is unchanged holds, after quantization, what the original held
    up to the grid's rescaling. For GGUF and bitsandbytes grids see :func:`grid_table`.
    """
    check_bits(bits)
    check_step(step)
    group_size = resolve_group_size(original, group_size, include_lm_head)
    rows = []
    for name, w0, w1 in _weight_pairs(original, unlearned, include_lm_head):
        g0, step0, o0 = _grid(w0, bits, group_size, symmetric, step)
        g1, step1, o1 = _grid(w1, bits, group_size, symmetric, step)
        ratio = _in_steps(g1 - g0, step0.expand_as(g0)).flatten()
        changed = _codes(g1, step1, o1, bits, symmetric, step) != _codes(g0, step0, o0, bits, symmetric, step)
        measured = ratio[~ratio.isnan()]
        q = (torch.quantile(_sample(measured, 100_000), torch.tensor([0.5, 0.9, 0.99])) if measured.numel()
             else torch.full((3,), float("nan")))
        rows.append({"module": name, "n_weights": ratio.numel(), "median": float(q[0]), "p90": float(q[1]),
                     "p99": float(q[2]), "moved": float((w1 != w0).float().mean()),
                     "changed_after_quant": float(changed.float().mean()),
                     "constant_groups": 1 - measured.numel() / ratio.numel()})
    return pd.DataFrame(rows)


@torch.no_grad()
def steps_histogram(original, unlearned, bits: int = 4, group_size: int | str | None = "auto", sample: int = 200_000,
                    step: str = "paper"):
    """A sample of |w_unlearned - w_original| / step over all quantized weights (for a histogram); weights in
    constant groups (step 0) are left out."""
    check_bits(bits)
    group_size = resolve_group_size(original, group_size)
    ratios = torch.cat([_in_steps(w1 - w0, quantization_step(w0, bits, group_size, step=step)).flatten()
                        for _, w0, w1 in _weight_pairs(original, unlearned)])
    return _sample(ratios[~ratios.isnan()], sample).numpy()


def mechanism_table(original, models: dict, methods, forget_table: pd.DataFrame, bits: int = 4,
                    group_size: int | str | None = "auto") -> pd.DataFrame:
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
                     f"forget, {bits}-bit": forget_table.loc[m, rtn_column(forget_table, bits)]})
    return pd.DataFrame(rows).set_index("method")


def cumulative_steps(original, models: dict, methods, bits: int = 4, group_size: int | str | None = "auto",
                     every: int = 200) -> dict:
    """{method: (sorted |dw| / step, cumulative share of weights)}: the cumulative distribution of how far
    unlearning moved the weights in quantization steps, every ``every``-th sorted value of a sample (for
    ``plotting.curves``). Where a curve reaches 1 before 0.5 step, rounding keeps most weights' codes."""
    out = {}
    for m in methods:
        ratios = np.sort(steps_histogram(original, models[m], bits, group_size))[::every]
        out[m] = (ratios, np.linspace(0, 1, len(ratios)))
    return out


def small_lr_regime(original, models: dict, tokenizer, forget, group_size: int | str | None = "auto", device=None,
                    bits: int = 4) -> pd.DataFrame:
    """Per model (unlearned with a small learning rate): the median over modules of the median |dw| / step at
    ``bits`` bits ("median |dw|/step"), then its forget accuracy under each quantization of
    :func:`quantized_versions` (a column each). The paper's recovery appears in this regime."""
    from .evaluate import accuracy

    _check_versions([original, *models.values()], group_size, None)
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


def sure_table(models: dict, tokenizer, forget, retain, group_size: int | str | None = "auto",
               device=None) -> pd.DataFrame:
    """Per model (e.g. a method with and without SURE): "forget, {quantization}" for each quantization of
    :func:`quantized_versions`, then "retain, full precision". SURE works if its forget accuracy stays low under
    quantization while retain accuracy holds."""
    from .evaluate import accuracy

    _check_versions(models.values(), group_size, None)
    rows = []
    for name, model in models.items():
        r = {"model": name}
        for q, qm in quantized_versions(model, group_size, device=device):
            r[f"forget, {q}"] = accuracy(qm, tokenizer, forget)
        r["retain, full precision"] = accuracy(model, tokenizer, retain)
        rows.append(r)
    return pd.DataFrame(rows).set_index("model")


def own_grid_version(model) -> dict:
    """``{"GGUF Q4_1 (own grid)": quantized copy}`` when the model's weights sit on a GGUF grid (a checkpoint converted
    from a GGUF file, like SmolLM2), else ``{}``: the quantization that moves none of the original's weights."""
    grid = native_grid(model)
    return {} if grid is None else {f"{as_scheme(grid).name} (own grid)": quantize_as(model, grid)}


def own_grid_gain(table: pd.DataFrame, original, models=None) -> dict:
    """{model: forget accuracy on the original's own GGUF grid - forget accuracy in full precision} from a
    models-by-quantization table holding that grid's column (:func:`grid_schemes` puts it first), or ``{}`` when the
    original sits on no grid. A gain there is unlearning's sub-step changes rounded away, not the paper's mechanism."""
    grid = native_grid(original)
    if grid is None:
        return {}
    column = as_scheme(grid).name
    rows = table.index if models is None else models
    return {m: table.loc[m, column] - table.loc[m, "full precision"] for m in rows}
