"""Activation patching and parameter restoration (Hong et al., arXiv 2410.06606), on nnsight.

The question: after unlearning, is the knowledge gone, or does the model only stop *retrieving* it?

1. Take the **original** model's own answers to the forget questions and feed prompt + answer to every model
   (teacher forcing), so all models are scored on the same tokens.
2. **Activation patching**: run the unlearned model, but overwrite some of its activations with the original's
   (the MLP *coefficients*, i.e. the input of the down projection; the attention output; or both) in one layer or a
   window of layers. If the original's logits come back, that site carries what unlearning changed.
3. **Parameter restoration**: instead copy the original's *weights* (the down projection's value vectors, by default)
   into the unlearned model for a window of layers.
4. Score both with the **knowledge recovery score** on the answer positions:
   KRS = 1 - MSE(original logits, patched logits) / MSE(original logits, unlearned logits)
   (1 = fully restored, 0 = no effect), and with the recovered accuracy: the share of questions whose answer's own
   tokens (" Dublin", not the ".\n\n" the original wrote after it) come back under greedy decoding.

A patch or a restoration at layer l leaves every layer below l as it was, so the sweeps run the unlearned model once
and each patch only from its lowest layer up (the "resumed sweep"; ``resume=False`` reruns the whole model).

High KRS for coefficient patching but low KRS for value-vector restoration is the paper's reading:
"retrieval changed, knowledge kept".

Every logit compared is the model's own output logit, after whatever it does past the unembedding (Gemma 2's soft
cap, Granite's and Cohere's logit scaling: :meth:`unlearn_utils.arch.Adapter.postprocess_logits`). Any model the
adapter reads works here, a LoRA model straight from ``unlearn(..., lora=True)`` included (patched and restored
as the model inside the peft wrapper, LoRA layers and their merged weights: :mod:`unlearn_utils.arch`).
"""

from __future__ import annotations

import contextlib
import re
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .arch import base_layer, effective_bias, effective_weight, get_adapter, resolve, set_effective_weight, unwrap
from .data import encode_texts, pad_id

COMPONENTS = ("mlp", "attn", "both")
# "block" (a decoder layer's whole output, the residual stream) is available for sanity checks and exploration.
ALL_COMPONENTS = COMPONENTS + ("block",)


@dataclass
class TeacherForced:
    """Prompt + the original's answer, padded on the right; ``answer_mask`` marks the positions that predict answer
    tokens, ``core_mask`` those that predict the answer's own tokens (" Dublin" of " Dublin.\n\n"): what must come
    back for the answer to count as recovered. None (a hand-built one) means every answer position."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    answer_mask: torch.Tensor
    prompts: list[str]
    answers: list[str]
    core_mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def scored_mask(self) -> torch.Tensor:
        """The positions :func:`answer_match` checks: ``core_mask``, or every answer position when there is none."""
        return self.answer_mask if self.core_mask is None else self.core_mask


@torch.no_grad()
def teacher_forced_inputs(original, tokenizer, prompts: list[str], max_new_tokens: int = 4,
                          gold: list[str] | None = None) -> TeacherForced:
    """Greedy answers of the original model to ``prompts`` (up to ``max_new_tokens``, stopping at EOS), as inputs.

    gold: the questions' reference answers, if known. The answer's own tokens (``core_mask``) are those of the gold
    answer where the original's answer contains it, else the original's answer up to its first punctuation mark or
    line break (" Dublin" of " Dublin.\n\n", " Nepali" of " Nepali, which").
    """
    if not prompts:
        raise ValueError("The question list is empty: pass at least one forget question.")
    if gold is not None and len(gold) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(gold)} gold answers.")
    device = next(original.parameters()).device
    seqs = encode_texts(tokenizer, prompts)
    starts = [len(s) for s in seqs]
    done = [False] * len(seqs)
    pad = pad_id(tokenizer)
    for _ in range(max_new_tokens):
        ids, att = _pad(seqs, pad)
        logits = original(input_ids=ids.to(device), attention_mask=att.to(device)).logits
        for i, s in enumerate(seqs):
            if done[i]:
                continue
            nxt = int(logits[i, len(s) - 1].argmax())
            if nxt == tokenizer.eos_token_id and len(s) > starts[i]:
                done[i] = True
                continue
            s.append(nxt)
            done[i] = nxt == tokenizer.eos_token_id
        if all(done):
            break
    ids, att = _pad(seqs, pad)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for i, (s, p) in enumerate(zip(seqs, starts)):
        mask[i, p - 1: len(s) - 1] = True  # logits at t predict token t+1: these predict the answer
    answers = [tokenizer.decode(s[p:]) for s, p in zip(seqs, starts)]
    core = torch.zeros_like(mask)
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    for i, (s, p) in enumerate(zip(seqs, starts)):
        own = _own_tokens(tokenizer, s[p:], None if gold is None else gold[i], special)
        for j in own:
            core[i, p - 1 + j] = True
    return TeacherForced(ids, att, mask, list(prompts), answers, core)


_ANSWER_END = re.compile(r"[.,;:!?](?=\s|$)|\n")


def _own_tokens(tokenizer, answer_ids: list[int], gold: str | None, special: set) -> list[int]:
    """Indices of the tokens of ``answer_ids`` that spell the answer itself: those overlapping the gold answer's
    characters (where the decoded answer contains it), else the text before the first punctuation mark or line
    break; special tokens (EOS) never count. Every token when nothing is left (an answer of only "\n")."""
    text = tokenizer.decode(answer_ids)
    span = None
    if gold is not None and gold.strip():
        at = text.lower().find(gold.strip().lower())
        if at >= 0:
            span = (at, at + len(gold.strip()))
    if span is None:
        first = re.search(r"\S", text)
        if first is not None:
            end = _ANSWER_END.search(text, first.start() + 1)
            span = (first.start(), len(text) if end is None else end.start())
    own = []
    if span is not None:
        for j, t in enumerate(answer_ids):
            lo, hi = len(tokenizer.decode(answer_ids[:j])), len(tokenizer.decode(answer_ids[: j + 1]))
            if t not in special and lo < span[1] and hi > span[0]:
                own.append(j)
    return own or list(range(len(answer_ids)))


def _pad(seqs, pad):
    from .training import pad_batch

    batch = pad_batch(seqs, pad)
    return batch["input_ids"], batch["attention_mask"]


# ----------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------
def logit_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row: mean over the masked positions and the whole vocabulary of (a - b)^2."""
    return _mean_square(a.float() - b.float(), mask)


def _mean_square(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row: mean of x^2 over the masked positions and the last dimension."""
    m = mask.to(x.dtype)[..., None]
    return ((x.float() ** 2) * m).sum((1, 2)) / (m.sum((1, 2)) * x.shape[-1]).clamp_min(1)


def knowledge_recovery_score(original_logits, patched_logits, unlearned_logits, mask) -> torch.Tensor:
    """KRS per row = 1 - MSE(original, patched) / MSE(original, unlearned) over the answer positions.

    1 = the patch restores the original's logits, 0 = no effect, < 0 = further away. NaN where the unlearned
    model did not change the logits (nothing to recover): where they differ from the original's by less than
    ``NO_CHANGE`` of the logits' size (root mean square), the float rounding of two ways to compute the same model.
    """
    base = logit_mse(original_logits, unlearned_logits, mask)
    patched = logit_mse(original_logits, patched_logits, mask)
    size = _mean_square(original_logits, mask)
    krs = 1 - patched / base
    return torch.where(base > NO_CHANGE ** 2 * size, krs, torch.full_like(krs, float("nan")))


# Relative size of a logit difference below which a model counts as unchanged (float32 rounding is ~1e-7).
NO_CHANGE = 1e-5


def answer_match(logits: torch.Tensor, tf: TeacherForced) -> torch.Tensor:
    """Per row: does greedy decoding give the original's answer back, i.e. is the arg-max at every position that
    predicts one of the answer's own tokens (``tf.core_mask``) that token? Trailing punctuation and line breaks the
    original happened to generate ("." and "\n\n" of " Dublin.\n\n") are not part of the answer and not checked."""
    targets = torch.roll(tf.input_ids, -1, dims=1).to(logits.device)
    return _matches(logits, targets, tf.scored_mask.to(logits.device))


def _matches(logits, targets, mask):
    """Per row: arg-max == target at every masked position."""
    return ((logits.argmax(-1) == targets) | ~mask).all(1)


@torch.no_grad()
def answer_agreement(model, tf: TeacherForced) -> float:
    """The share of the questions on which ``model`` (e.g. an unlearned one), fed the same prompt + answer, still
    gives the original's answer (greedy, every answer token): how much unlearning changed before any patching."""
    dev = next(model.parameters()).device
    logits = model(input_ids=tf.input_ids.to(dev), attention_mask=tf.attention_mask.to(dev)).logits
    return float(answer_match(logits, tf).float().mean())


# ----------------------------------------------------------------------------------------------
# Checks and helpers
# ----------------------------------------------------------------------------------------------
def check_compatible(a, b) -> None:
    """Refuse to patch between models of different architecture, depth, width or vocabulary."""
    ca, cb = unwrap(a).config, unwrap(b).config
    for attr, label in (("model_type", "architecture"), ("num_hidden_layers", "number of layers"),
                        ("hidden_size", "hidden size"), ("vocab_size", "vocabulary size")):
        va, vb = getattr(ca, attr, None), getattr(cb, attr, None)
        if va != vb:
            raise ValueError(f"The two models differ in {label} ({va} vs {vb}); patching needs the same "
                             "architecture and vocabulary (an unlearned copy of the original).")


def windows(n_layers: int, window: int) -> list[list[int]]:
    """Sliding windows of ``window`` layers centred on each layer (clipped at the edges), as in the paper."""
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}.")
    if window > n_layers:
        raise ValueError(f"window {window} is larger than the model ({n_layers} layers).")
    lo = (window - 1) // 2
    return [[k for k in range(c - lo, c - lo + window) if 0 <= k < n_layers] for c in range(n_layers)]


def _check_layers(layers, n):
    for layer in layers:
        if not isinstance(layer, int) or not 0 <= layer < n:
            raise IndexError(f"layer {layer} is out of range: the model has {n} layers (0..{n - 1}).")


def _wrap(model, tokenizer):
    """nnsight's wrapper of the transformers model (inside a peft wrapper, :func:`unlearn_utils.arch.unwrap`, so
    the adapter's paths resolve on it): TransformersModel (batches several invokes) when a tokenizer is given, else
    NNsight."""
    model = unwrap(model)
    if tokenizer is None:
        from nnsight import NNsight

        return NNsight(model)
    from nnsight.modeling.transformers import TransformersModel

    return TransformersModel(model, tokenizer=tokenizer)


def _sites(component: str) -> tuple[bool, bool, bool]:
    if component not in ALL_COMPONENTS:
        raise ValueError(f"Unknown component {component!r}: choose one of {ALL_COMPONENTS}.")
    return component in ("attn", "both"), component in ("mlp", "both"), component == "block"


@torch.no_grad()
def cache_activations(model, tokenizer, tf: TeacherForced) -> dict:
    """The model's attention outputs and MLP coefficients at every layer, plus its output logits (one nnsight
    trace)."""
    adapter = get_adapter(model)
    n = adapter.n_layers(model)
    nn_model = _wrap(model, tokenizer)
    dev = next(model.parameters()).device
    cache: dict = {"attn": [], "mlp": [], "block": []}
    with nn_model.trace(input_ids=tf.input_ids.to(dev), attention_mask=tf.attention_mask.to(dev)):
        for layer in range(n):  # forward order: attention, then MLP, then the block's output
            cache["attn"].append(_attn_site(adapter, nn_model, layer).output.save())
            cache["mlp"].append(_mlp_site(adapter, nn_model, layer).input.save())
            cache["block"].append(_block_output(_layer_envoy(adapter, nn_model, layer).output).save())
        cache["logits"] = _logits_site(nn_model).save()
    return cache


def _layer_envoy(adapter, nn_model, layer):
    return resolve(nn_model, adapter.layers)[layer]


def _attn_site(adapter, nn_model, layer):
    return resolve(_layer_envoy(adapter, nn_model, layer), adapter.attn_out)


def _mlp_site(adapter, nn_model, layer):
    return resolve(_layer_envoy(adapter, nn_model, layer), adapter.mlp_down)


def _logits_site(nn_model):
    """The model's own output logits (after any soft cap or logit scaling), not the unembedding's output."""
    return nn_model.output.logits


def _block_output(out):
    """A decoder layer's hidden states (transformers 5 returns a tensor; older versions and some families a tuple)."""
    return out[0] if isinstance(out, tuple) else out


def _apply_patch(adapter, nn_model, layers, component, cache, pos_mask):
    """Inside an invoke: overwrite the chosen sites with cached activations (all positions, or ``pos_mask`` only)."""
    do_attn, do_mlp, do_block = _sites(component)
    for layer in sorted(layers):
        if do_block:
            site = _layer_envoy(adapter, nn_model, layer)
            src = cache["block"][layer]
            cur = site.output
            if isinstance(cur, tuple):
                new = src if pos_mask is None else torch.where(pos_mask, src, cur[0])
                site.output = (new,) + tuple(cur[1:])
            else:
                site.output = src if pos_mask is None else torch.where(pos_mask, src, cur)
            continue
        if do_attn:
            site = _attn_site(adapter, nn_model, layer)
            src = cache["attn"][layer]
            site.output = src if pos_mask is None else torch.where(pos_mask, src, site.output)
        if do_mlp:
            site = _mlp_site(adapter, nn_model, layer)
            src = cache["mlp"][layer]
            site.input = src if pos_mask is None else torch.where(pos_mask, src, site.input)


POSITIONS = ("all", "answer", "own")


def _position_mask(tf: TeacherForced, positions: str, dev):
    """Where a patch overwrites: None (every position, "all"), the positions that predict the answer ("answer"), or
    those that predict the answer's own tokens ("own", ``tf.scored_mask``), as a ``[rows, seq, 1]`` mask."""
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}.")
    if positions == "all":
        return None
    return (tf.answer_mask if positions == "answer" else tf.scored_mask).to(dev)[..., None]


def _names(value, what: str, example: str) -> tuple:
    """``value`` as a tuple of names; one string is refused (it would be read letter by letter)."""
    if isinstance(value, str):
        raise ValueError(f"{what}={value!r} is one string; give a list, e.g. {what}=[{value!r}] or {example}.")
    return tuple(value)


@torch.no_grad()
def patch_sweep(original, unlearned, tokenizer, tf: TeacherForced, components=COMPONENTS, window: int = 1,
                layers: list[int] | None = None, positions: str = "all", direction: str = "original_to_unlearned",
                batched: bool = True, invokes_per_trace: int = 8, resume: bool = True) -> pd.DataFrame:
    """Patch activations from one model into the other, per layer window and component; one row per patch.

    components: any of "mlp" (MLP coefficients = input of the down projection), "attn" (attention output), "both".
    window: layers per patch (centred sliding windows); layers: which window centres (default all).
    positions: "all", "answer" (only the positions that predict the answer) or "own" (those that predict the
    answer's own tokens, ``tf.scored_mask``).
    direction: "original_to_unlearned" (the paper's; KRS = recovery of the original) or "unlearned_to_original"
    (the score then measures how far the unlearned activations move the original toward the unlearned logits).
    resume: a patch leaves the layers below it unchanged, so run the patched model once, keep every decoder layer's
    input, and run each patch only from its lowest layer up (:func:`resumed_logits`: plain PyTorch hooks on the
    decoder layers, not nnsight), about twice as fast on a deep model, the same numbers; False reruns the whole
    model under nnsight for every patch (:func:`run_patches`). A model that cannot be restarted at a layer (one whose
    output the adapter cannot recompute from its last layer, see :func:`_resumes`) is rerun in full, with a warning.
    batched: (full rerun) many patches per nnsight trace (one invoke each); False runs one trace per patch.
    invokes_per_trace: patches run together, as invokes of one trace or as one stacked batch when resumed.
    Returns columns: layer, layers, component, krs (mean over questions), krs_std, recovered_accuracy (the share of
    questions whose answer's own tokens all come back under greedy decoding, :func:`answer_match`).
    """
    check_compatible(original, unlearned)
    if len(tf) == 0:
        raise ValueError("The question list is empty.")
    _position_mask(tf, positions, "cpu")
    if direction not in ("original_to_unlearned", "unlearned_to_original"):
        raise ValueError(f"Unknown direction {direction!r}.")
    if not isinstance(invokes_per_trace, int) or invokes_per_trace < 1:
        raise ValueError(f"invokes_per_trace must be a positive integer, got {invokes_per_trace!r}.")
    source, target = (original, unlearned) if direction == "original_to_unlearned" else (unlearned, original)
    adapter = get_adapter(target)
    n = adapter.n_layers(target)
    wins = windows(n, window)
    centres = list(range(n)) if layers is None else list(layers)
    _check_layers(centres, n)
    components = _names(components, "components", "('mlp', 'attn')")
    for c in components:
        _sites(c)
    cache = cache_activations(source, tokenizer, tf)
    dev = next(target.parameters()).device
    jobs = [(c, comp) for c in centres for comp in components]
    patches = [(wins[c], comp) for c, comp in jobs]
    scored = _Scorer(tf, cache["logits"], dev)
    inputs = capture_layer_inputs(target, tf) if resume else None
    if resume and not _resumes(target, inputs):
        _fallback_warning(target, "patch_sweep")
        inputs = None
    if inputs is not None:
        pos_mask = _position_mask(tf, positions, dev)
        scored.base = inputs.logits
        results = []
        for start in _progress(range(0, len(patches), invokes_per_trace), "patches", len(patches) > invokes_per_trace):
            chunk = patches[start: start + invokes_per_trace]
            results += [scored(logits, compact=True) for logits in resumed_logits(target, inputs, chunk, cache,
                                                                                    pos_mask)]
    else:
        target_logits = target(input_ids=tf.input_ids.to(dev), attention_mask=tf.attention_mask.to(dev)).logits
        scored.base = scored.compact(target_logits)
        results = [scored(logits) for logits in run_patches(target, tokenizer, tf, cache, patches, positions, batched,
                                                            invokes_per_trace)]
    rows = []
    for (centre, comp), (krs, match) in zip(jobs, results):
        rows.append({"layer": centre, "layers": wins[centre], "component": comp,
                     "krs": float(krs.nanmean()),
                     "krs_std": float(krs[~krs.isnan()].std()) if (~krs.isnan()).sum() > 1 else 0.0,
                     "recovered_accuracy": float(match.float().mean())})
    return pd.DataFrame(rows)


class _Scorer:
    """KRS and answer match per question of patched logits, on the answer positions only (compact ``[rows, A,
    vocab]`` tensors, so a sweep keeps no full logits): ``scorer(logits) -> (krs, match)``."""

    def __init__(self, tf: TeacherForced, original_logits: torch.Tensor, dev):
        self.positions, self.valid = _answer_positions(tf.answer_mask.to(dev))
        targets = torch.roll(tf.input_ids, -1, dims=1).to(dev)
        self.targets = _compact(targets, self.positions)
        self.own = _compact(tf.scored_mask.to(dev), self.positions) & self.valid
        self.original = self.compact(original_logits)
        self.base = None  # the unpatched target's compact logits

    def compact(self, logits):
        return _compact(logits, self.positions)

    def __call__(self, logits, compact: bool = False):
        logits = logits if compact else self.compact(logits)
        krs = knowledge_recovery_score(self.original, logits, self.base, self.valid)
        return krs, _matches(logits, self.targets, self.own)


def _progress(iterable, desc: str, show: bool):
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, disable=not show, leave=False)


@torch.no_grad()
def run_patches(target, tokenizer, tf: TeacherForced, cache: dict, patches: list[tuple[list[int], str]],
                positions: str = "all", batched: bool = True, invokes_per_trace: int = 8) -> list[torch.Tensor]:
    """Logits of ``target`` under each patch (layers, component) with activations from ``cache``.

    Batched: up to ``invokes_per_trace`` patches share one nnsight trace, one invoke each. The cached tensors come
    from another model's trace, so no invoke reads another's values and no barrier is needed.
    """
    adapter = get_adapter(target)
    _check_layers(sorted({k for layers, _ in patches for k in layers}), adapter.n_layers(target))
    dev = next(target.parameters()).device
    ids, att = tf.input_ids.to(dev), tf.attention_mask.to(dev)
    pos_mask = _position_mask(tf, positions, dev)
    nn_model = _wrap(target, tokenizer)
    out: list[torch.Tensor] = []
    if batched:
        for start in range(0, len(patches), invokes_per_trace):
            chunk = patches[start: start + invokes_per_trace]
            saved = []
            with nn_model.trace() as tracer:
                for layers, comp in chunk:
                    with tracer.invoke(input_ids=ids, attention_mask=att):
                        _apply_patch(adapter, nn_model, layers, comp, cache, pos_mask)
                        saved.append(_logits_site(nn_model).save())
            for logits in saved:
                assert logits.ndim == 3 and logits.shape[0] == len(tf), "one invoke's logits per patch"
            out += saved
    else:
        for layers, comp in patches:
            with nn_model.trace(input_ids=ids, attention_mask=att):
                _apply_patch(adapter, nn_model, layers, comp, cache, pos_mask)
                logits = _logits_site(nn_model).save()
            out.append(logits)
    return out


# ----------------------------------------------------------------------------------------------
# The resumed sweep: run the lower layers once, then only the layers from the patch up
# ----------------------------------------------------------------------------------------------
@dataclass
class LayerInputs:
    """One run of a model, kept so that later runs can start at any decoder layer: each layer's input hidden states
    and the other arguments the model passed it (causal mask, position embeddings, position ids, ...), plus the
    run's logits at the answer positions (compact: ``[rows, answer positions, vocab]``)."""

    hidden: list[torch.Tensor]
    args: list[tuple]
    kwargs: list[dict]
    positions: torch.Tensor   # [rows, A]: the sequence positions that predict answer tokens (0 where padding)
    valid: torch.Tensor       # [rows, A]: which of them are real
    logits: torch.Tensor      # [rows, A, vocab]
    length: int               # the run's sequence length (the last token, which predicts nothing scored, dropped)

    @property
    def n_rows(self) -> int:
        return self.positions.shape[0]


def _answer_positions(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The masked positions of each row, left-aligned and padded with 0: ``(positions [rows, A], valid [rows, A])``."""
    width = max(int(mask.sum(1).max()), 1)
    pos = torch.zeros(mask.shape[0], width, dtype=torch.long, device=mask.device)
    valid = torch.zeros(mask.shape[0], width, dtype=torch.bool, device=mask.device)
    for i, row in enumerate(mask):
        at = row.nonzero().flatten()
        pos[i, : len(at)], valid[i, : len(at)] = at, True
    return pos, valid


def _compact(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``x[i, positions[i]]`` for every row: [rows, T, ...] -> [rows, A, ...]."""
    return x[torch.arange(x.shape[0], device=x.device)[:, None], positions]


def resumable(model) -> bool:
    """Whether the adapter knows how the model turns its last decoder layer's output into logits (final norm,
    unembedding and the post-processing after it: Gemma 2's soft cap, Granite's and Cohere's scaling), so that a run
    can restart at a layer: every supported family. The sweeps still check it on the model at hand
    (:func:`_resumes`) and rerun in full where it does not hold (e.g. a hook that changes the model's output)."""
    get_adapter(model)  # a clear error for an unsupported family
    return True


@torch.no_grad()
def capture_layer_inputs(model, tf: TeacherForced) -> LayerInputs:
    """Run ``model`` once on the teacher-forced inputs and keep what every decoder layer received (forward pre-hooks
    on the layers, plain PyTorch), so :func:`resumed_logits` can restart the run at any layer."""
    adapter = get_adapter(model)
    layers = adapter.layer_list(model)
    dev = next(model.parameters()).device
    positions, valid = _answer_positions(tf.answer_mask.to(dev))
    length = int(positions.max()) + 1  # causal: later positions do not change the answer positions' logits
    hidden, args, kwargs = [None] * len(layers), [None] * len(layers), [None] * len(layers)

    def keep(k):
        def hook(module, a, kw):
            kw = dict(kw)
            h = a[0] if a else kw.pop("hidden_states")
            hidden[k], args[k], kwargs[k] = h.detach().clone(), tuple(a[1:]), kw
        return hook

    handles = [layer.register_forward_pre_hook(keep(k), with_kwargs=True) for k, layer in enumerate(layers)]
    try:
        logits = model(input_ids=tf.input_ids[:, :length].to(dev), attention_mask=tf.attention_mask[:, :length].to(dev),
                       use_cache=False).logits
    finally:
        for h in handles:
            h.remove()
    return LayerInputs(hidden, args, kwargs, positions, valid, _compact(logits, positions), length)


def _repeat(x, times: int, rows: int):
    """Stack ``times`` copies along the batch of every tensor in ``x`` whose first dimension is the batch."""
    if isinstance(x, torch.Tensor):
        return x.repeat(times, *([1] * (x.ndim - 1))) if x.ndim >= 2 and x.shape[0] == rows and times > 1 else x
    if isinstance(x, tuple):
        return tuple(_repeat(v, times, rows) for v in x)
    if isinstance(x, list):
        return [_repeat(v, times, rows) for v in x]
    if isinstance(x, dict):
        return {k: _repeat(v, times, rows) for k, v in x.items()}
    return x


def _overwrite_rows(cur, jobs, rows, pos_mask):
    """``cur`` with the rows of each patch (``(index, source)`` in ``jobs``) replaced by the source activations."""
    new = cur.clone()
    for p, src in jobs:
        block = slice(p * rows, (p + 1) * rows)
        new[block] = src if pos_mask is None else torch.where(pos_mask, src, cur[block])
    return new


@torch.no_grad()
def resumed_logits(model, inputs: LayerInputs, patches: list[tuple[list[int], str | None]], cache: dict | None = None,
                   pos_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Logits at the answer positions (``[patches, rows, A, vocab]``) of ``model`` under each patch, restarting from
    :func:`capture_layer_inputs` at the patch's lowest layer instead of rerunning the whole model.

    A patch is (layers, component) with activations from ``cache`` (:func:`cache_activations`); component None
    patches nothing (a plain run from that layer, e.g. after restoring weights). All patches run in one stacked
    batch that grows as the layers reach each patch's start. This calls the decoder layers directly and overwrites
    the sites with PyTorch hooks (not nnsight): that skipping of the unchanged lower layers is what makes it fast.
    """
    adapter = get_adapter(model)
    layers = adapter.layer_list(model)
    rows, length = inputs.n_rows, inputs.length
    order = sorted(range(len(patches)), key=lambda p: min(patches[p][0]))
    patches = [patches[p] for p in order]  # sorted by start: the patches running at a layer are a prefix
    starts = [min(layers_) for layers_, _ in patches]
    src = {} if cache is None else {k: [t[:, :length] for t in cache[k]] for k in ("attn", "mlp", "block")}
    pos_mask = None if pos_mask is None else pos_mask[:, :length]
    handles, block_jobs = [], {}
    try:
        for k in range(starts[0], len(layers)):
            jobs = {site: [(p, src[site][k]) for p, (ls, comp) in enumerate(patches)
                           if comp is not None and k in ls and site in _site_names(comp)]
                    for site in ("attn", "mlp", "block")}
            if jobs["mlp"]:
                handles.append(resolve(layers[k], adapter.mlp_down).register_forward_pre_hook(
                    lambda m, a, jobs=jobs["mlp"]: (_overwrite_rows(a[0], jobs, rows, pos_mask),) + tuple(a[1:])))
            if jobs["attn"]:
                handles.append(resolve(layers[k], adapter.attn_out).register_forward_hook(
                    lambda m, a, out, jobs=jobs["attn"]: _overwrite_rows(out, jobs, rows, pos_mask)))
            block_jobs[k] = jobs["block"]
        h = None
        for k in range(starts[0], len(layers)):
            joining = sum(s == k for s in starts)
            if joining:
                new = inputs.hidden[k].repeat(joining, 1, 1)
                h = new if h is None else torch.cat([h, new])
            times = h.shape[0] // rows
            out = layers[k](h, *_repeat(inputs.args[k], times, rows), **_repeat(inputs.kwargs[k], times, rows))
            h = _block_output(out)
            if block_jobs[k]:
                h = _overwrite_rows(h, block_jobs[k], rows, pos_mask)
    finally:
        for handle in handles:
            handle.remove()
    h = _compact(h, inputs.positions.repeat(len(patches), 1))
    logits = adapter.logits_from_hidden(model, h)  # final norm, unembedding, the model's own post-processing
    logits = logits.view(len(patches), rows, *logits.shape[1:])
    back = torch.empty_like(logits)
    back[torch.tensor(order, device=logits.device)] = logits  # the caller's order
    return back


def _site_names(component: str) -> tuple[str, ...]:
    do_attn, do_mlp, do_block = _sites(component)
    return tuple(name for name, on in (("attn", do_attn), ("mlp", do_mlp), ("block", do_block)) if on)


def _resumes(model, inputs: LayerInputs) -> bool:
    """Whether restarting at the last layer with nothing patched gives the run's own logits (it does unless the model
    does more than its layers, the final norm, the unembedding and the adapter's post-processing); one layer's
    cost."""
    again = resumed_logits(model, inputs, [([len(inputs.hidden) - 1], None)])[0]
    scale = float(inputs.logits.abs().max()) + 1.0
    tol = 1e-4 if inputs.logits.dtype in (torch.float32, torch.float64) else 3e-2  # bf16 / fp16 rounding
    return bool(((again.float() - inputs.logits.float()).abs().max() <= tol * scale).item())


def _fallback_warning(model, what: str) -> None:
    warnings.warn(f"{what}: this {unwrap(model).config.model_type} model cannot be restarted at a layer (its logits "
                  "are more than its last layer through the final norm, the unembedding and its family's "
                  "post-processing); running the whole model for every patch instead (same numbers, slower).",
                  stacklevel=3)


@torch.no_grad()
def restoration_sweep(original, unlearned, tokenizer, tf: TeacherForced, parts=("down",), window: int = 1,
                      layers: list[int] | None = None, resume: bool = True) -> pd.DataFrame:
    """Copy the original's weights (``parts`` of "down", "up", "attn") into the unlearned model per window, score,
    restore.

    The unlearned model is left exactly as it was. resume: restoring a window's weights leaves the layers below it
    unchanged, so run the unlearned model once and each restored model only from the window's lowest layer up
    (:func:`resumed_logits`, calling the decoder layers directly); False reruns the whole model per window (same
    numbers). One row per (window, parts) with krs and recovered_accuracy. On an unmerged LoRA model a module's
    weight is its merged one (W + delta W): restoring it puts the original's weight into the base layer and zeroes the
    LoRA update of that module for the window.
    """
    check_compatible(original, unlearned)
    if len(tf) == 0:
        raise ValueError("The question list is empty.")
    adapter = get_adapter(unlearned)
    get_adapter(original)
    n = adapter.n_layers(unlearned)
    wins = windows(n, window)
    centres = list(range(n)) if layers is None else list(layers)
    _check_layers(centres, n)
    parts = _names(parts, "parts", "('down', 'up')")
    for part in parts:
        adapter.part_modules(unlearned, 0, part)  # an unknown part fails here, before any run
    dev = next(unlearned.parameters()).device
    ids, att = tf.input_ids.to(dev), tf.attention_mask.to(dev)
    scored = _Scorer(tf, original(input_ids=ids, attention_mask=att).logits, dev)
    inputs = capture_layer_inputs(unlearned, tf) if resume else None
    if resume and not _resumes(unlearned, inputs):
        _fallback_warning(unlearned, "restoration_sweep")
        inputs = None
    scored.base = inputs.logits if inputs is not None else scored.compact(unlearned(input_ids=ids,
                                                                                    attention_mask=att).logits)
    rows = []
    for centre in _progress(centres, "restorations", len(centres) > 1):
        pairs = [(src, dst) for k in wins[centre] for part in parts
                 for src, dst in zip(adapter.part_modules(original, k, part), adapter.part_modules(unlearned, k, part))]
        with _restored(pairs):
            if inputs is not None:
                krs, match = scored(resumed_logits(unlearned, inputs, [(wins[centre], None)])[0], compact=True)
            else:
                krs, match = scored(unlearned(input_ids=ids, attention_mask=att).logits)
        rows.append({"layer": centre, "layers": wins[centre], "component": "+".join(parts),
                     "krs": float(krs.nanmean()), "recovered_accuracy": float(match.float().mean())})
    return pd.DataFrame(rows)


@contextlib.contextmanager
def _restored(pairs):
    """Within the block, each ``(source, target)`` module pair's target computes with the source's weight and bias
    (their effective ones: a LoRA layer's merged weight; a LoRA target gets the weight in its base layer and its
    update zeroed); every parameter of the targets is put back on exit, even after an error."""
    saved = [(p, p.detach().clone()) for _, dst in pairs for p in dst.parameters()]
    try:
        with torch.no_grad():
            for src, dst in pairs:
                w, b, shape = effective_weight(src), effective_bias(src), tuple(base_layer(dst).weight.shape)
                if tuple(w.shape) != shape:
                    raise ValueError(f"A {type(dst).__name__} of shape {shape} cannot take the original's weight of "
                                     f"shape {tuple(w.shape)}: the models differ.")
                set_effective_weight(dst, w, b)
        yield
    finally:
        with torch.no_grad():
            for p, value in saved:
                p.copy_(value)


def patch_and_restore(original, unlearned: dict, tokenizer, tf: TeacherForced, window: int = 1,
                      parts=("down",)) -> tuple[dict, dict]:
    """Both interventions on each unlearned model of ``{name: model}``: ``(patch sweeps, restorations)``, each a
    ``{name: table}`` of :func:`patch_sweep` (every component) and :func:`restoration_sweep` (``parts``), with
    ``window`` layers per patch. Run one model at a time: patching, then restoration."""
    sweeps, restores = {}, {}
    for name, model in unlearned.items():
        sweeps[name] = patch_sweep(original, model, tokenizer, tf, window=window)
        restores[name] = restoration_sweep(original, model, tokenizer, tf, parts=parts, window=window)
    return sweeps, restores


def krs_table(sweep: pd.DataFrame, restoration: pd.DataFrame, label: str = "restore value vectors") -> pd.DataFrame:
    """KRS per layer (columns) and component (rows) of a :func:`patch_sweep`, with the :func:`restoration_sweep`'s
    KRS as one more row named ``label``: the layer x component heatmap of patching next to restoration."""
    table = sweep.pivot(index="component", columns="layer", values="krs")
    table.loc[label] = restoration.set_index("layer")["krs"]
    return table


def krs_curves(sweeps: dict, restores: dict, components=("mlp", "attn"),
               restore_label: str = "restore down_proj") -> dict:
    """``{"<name>: patch <component>" / "<name>: <restore_label>": (layers, KRS)}`` for each model's sweep and
    restoration (``{name: table}`` as :func:`patch_and_restore` returns them): the curves of KRS by layer."""
    series, components = {}, _names(components, "components", "('mlp', 'attn')")
    for name, sweep in sweeps.items():
        for comp in components:
            d = sweep[sweep.component == comp]
            series[f"{name}: patch {comp}"] = (d.layer.tolist(), d.krs.tolist())
        series[f"{name}: {restore_label}"] = (restores[name].layer.tolist(), restores[name].krs.tolist())
    return series


def intervention_table(sweeps: dict, restores: dict, components=COMPONENTS,
                       restore_label: str = "restore down_proj") -> pd.DataFrame:
    """Every intervention of every model in one long table: columns method, intervention ("patch <component>" or
    ``restore_label``), layer (the window's centre), krs, recovered_accuracy; per model, the patches component by
    component, then the restoration, each by layer."""
    rows, components = [], _names(components, "components", "('mlp', 'attn')")
    for name, sweep in sweeps.items():
        for comp in components:
            d = sweep[sweep.component == comp].set_index("layer")
            rows += [{"method": name, "intervention": f"patch {comp}", "layer": layer, "krs": d.krs[layer],
                      "recovered_accuracy": d.recovered_accuracy[layer]} for layer in d.index]
        d = restores[name].set_index("layer")
        rows += [{"method": name, "intervention": restore_label, "layer": layer, "krs": d.krs[layer],
                  "recovered_accuracy": d.recovered_accuracy[layer]} for layer in d.index]
    return pd.DataFrame(rows)


def method_summary(table: pd.DataFrame, last_layer: int | None = None) -> pd.DataFrame:
    """Per method (rows, in the table's order) of an :func:`intervention_table`: the best site (the intervention and
    layer of the largest KRS), its KRS and recovered accuracy, the KRS of patching the MLP coefficients and of
    restoring the down projection at ``last_layer`` (default: the table's last layer), and the largest KRS of each:
    the numbers behind Hong et al.'s claim (:func:`unlearn_utils.report.patching_restores` reads one row)."""
    last = int(table.layer.max()) if last_layer is None else last_layer
    summary = []
    for m in table.method.unique():
        w = table[table.method == m]
        best = w.loc[w.krs.idxmax()]
        mlp = w[w.intervention == "patch mlp"].set_index("layer")
        restore = w[w.intervention == "restore down_proj"].set_index("layer")
        summary.append({"method": m, "best site": f"{best.intervention} @ layer {best.layer}", "best KRS": best.krs,
                        "best recovered acc": best.recovered_accuracy,
                        "patch mlp, last layer": mlp.krs[last], "restore down_proj, last layer": restore.krs[last],
                        "max patch mlp": mlp.krs.max(), "max restore down_proj": restore.krs.max()})
    return pd.DataFrame(summary).set_index("method")


def side_effects(original, unlearned, tokenizer, data) -> pd.DataFrame:
    """How unlearning changed things it was not asked to change: retain accuracy (by attribute when the questions
    name one), paraphrased retain questions, topics and utility text, as far as ``data`` has them.

    ``data`` is an :class:`unlearn_utils.evaluate.EvalData` (the world's, or one built from a data file, where the
    sets a file lacks are None and left out). One row per measure: original, unlearned, change.
    """
    from . import evaluate as ev

    rows = []
    if "attribute" in data.retain.column_names:
        by_o = ev.accuracy_by(original, tokenizer, data.retain, "attribute")
        by_u = ev.accuracy_by(unlearned, tokenizer, data.retain, "attribute")
        for attr in by_o.index:
            rows.append({"measure": f"retain accuracy: {attr}", "original": by_o[attr], "unlearned": by_u[attr]})
    else:
        rows.append({"measure": "retain accuracy", "original": ev.accuracy(original, tokenizer, data.retain),
                     "unlearned": ev.accuracy(unlearned, tokenizer, data.retain)})
    for label, questions in (("retain paraphrase accuracy", data.retain_para), ("topic accuracy", data.topics)):
        if questions is not None:
            rows.append({"measure": label, "original": ev.accuracy(original, tokenizer, questions),
                         "unlearned": ev.accuracy(unlearned, tokenizer, questions)})
    if data.utility:
        rows.append({"measure": "utility perplexity", "original": ev.perplexity(original, tokenizer, data.utility),
                     "unlearned": ev.perplexity(unlearned, tokenizer, data.utility)})
    df = pd.DataFrame(rows)
    df["change"] = df["unlearned"] - df["original"]
    return df


# ----------------------------------------------------------------------------------------------
# The unlearning depth score: two-stage patching of whole layers into the original
# ----------------------------------------------------------------------------------------------
@dataclass
class LayerDrops:
    """How much patching another model's hidden states into the original lowers its answers: ``full[i]``, the
    original's mean log-probability of question i's own answer tokens (teacher forced); ``drops[i, l]``, ``full[i]``
    minus the same score when layer l's output is overwritten, at the positions that predict those tokens, by the
    other model's (same inputs)."""

    full: torch.Tensor   # [questions]
    drops: torch.Tensor  # [questions, layers]


@dataclass
class DepthScore:
    """The unlearning depth score of one model (arXiv 2605.24614): ``score`` (mean over the questions where it is
    defined; 0 = the knowledge is intact inside the model, 1 = erased to the retain model's level), ``per_question``
    (NaN where no layer encodes the answer), ``layers`` (per layer: the mean drop the retain model and the unlearned
    model cause, and the share of questions for which the layer encodes the answer), ``threshold``."""

    score: float
    per_question: torch.Tensor
    layers: pd.DataFrame
    threshold: float
    basis_mismatch: float = float("nan")  # see :func:`depth_score`'s ``control``; NaN when not measured

    @property
    def comparable(self) -> bool | None:
        """Whether the retain model's layers speak the original's language (``basis_mismatch`` below
        :data:`BASIS_MISMATCH_AT`); None when not measured."""
        return None if np.isnan(self.basis_mismatch) else bool(self.basis_mismatch < BASIS_MISMATCH_AT)

    @property
    def n_defined(self) -> int:
        """Questions with at least one knowledge-encoding layer (the score's denominator)."""
        return int((~self.per_question.isnan()).sum())


def _own_logprob(logits: torch.Tensor, targets: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """Mean log-probability of the target tokens at the ``own`` positions, per row (compact tensors)."""
    logp = torch.log_softmax(logits.float(), -1).gather(-1, targets[..., None]).squeeze(-1)
    return (logp * own).sum(-1) / own.sum(-1).clamp(min=1)


@torch.no_grad()
def answer_logprob(model, tf: TeacherForced) -> torch.Tensor:
    """Each question's mean log-probability of its answer's own tokens (``tf.scored_mask``) under ``model``, teacher
    forced: the score both stages of the depth score compare."""
    dev = next(model.parameters()).device
    positions, valid = _answer_positions(tf.answer_mask.to(dev))
    targets = _compact(torch.roll(tf.input_ids, -1, dims=1).to(dev), positions)
    own = (_compact(tf.scored_mask.to(dev), positions) & valid).float()
    logits = model(input_ids=tf.input_ids.to(dev), attention_mask=tf.attention_mask.to(dev)).logits
    return _own_logprob(_compact(logits, positions), targets, own).cpu()


@torch.no_grad()
def layer_drops(original, source, tokenizer, tf: TeacherForced, invokes_per_trace: int = 8,
                resume: bool = True) -> LayerDrops:
    """Patch ``source``'s output of each decoder layer, one layer at a time, into ``original`` at the positions that
    predict each answer's own tokens (``tf.scored_mask``), and measure how far the original's mean log-probability of
    those tokens drops (:class:`LayerDrops`). One stage of :func:`depth_score`: with the retain model as ``source``
    it finds the layers that carry the forget facts; with the unlearned model, how much of them is gone there."""
    check_compatible(original, source)
    if len(tf) == 0:
        raise ValueError("The question list is empty.")
    if not isinstance(invokes_per_trace, int) or invokes_per_trace < 1:
        raise ValueError(f"invokes_per_trace must be a positive integer, got {invokes_per_trace!r}.")
    n = get_adapter(original).n_layers(original)
    cache = cache_activations(source, tokenizer, tf)
    dev = next(original.parameters()).device
    positions, valid = _answer_positions(tf.answer_mask.to(dev))
    targets = _compact(torch.roll(tf.input_ids, -1, dims=1).to(dev), positions)
    own = (_compact(tf.scored_mask.to(dev), positions) & valid).float()
    pos_mask = tf.scored_mask.to(dev)[..., None]
    patches = [([k], "block") for k in range(n)]
    inputs = capture_layer_inputs(original, tf) if resume else None
    if resume and not _resumes(original, inputs):
        _fallback_warning(original, "layer_drops")
        inputs = None
    if inputs is not None:
        full = _own_logprob(inputs.logits, targets, own)
        scores = []
        for start in _progress(range(0, n, invokes_per_trace), "layers", n > invokes_per_trace):
            scores += [_own_logprob(lg, targets, own) for lg in resumed_logits(
                original, inputs, patches[start: start + invokes_per_trace], cache, pos_mask)]
    else:
        logits = original(input_ids=tf.input_ids.to(dev), attention_mask=tf.attention_mask.to(dev)).logits
        full = _own_logprob(_compact(logits, positions), targets, own)
        scores = [_own_logprob(_compact(lg, positions), targets, own)
                  for lg in run_patches(original, tokenizer, tf, cache, patches, "own", True, invokes_per_trace)]
    return LayerDrops(full=full.cpu(), drops=(full[:, None] - torch.stack(scores, 1)).cpu())


def depth_from_drops(knowledge: LayerDrops, unlearned: LayerDrops, threshold: float = 0.05) -> DepthScore:
    """The depth score from its two stages. Per question, the knowledge-encoding layers are those where the retain
    model's hidden states lower the original's answer by more than ``threshold`` (d1 > tau, in nats); there

        depth = sum_l d1_l * clip(d2_l / d1_l, 0, 1) / sum_l d1_l

    (d2: the unlearned model's drop at the same layer): the d1-weighted share of the retain model's effect that the
    unlearned model's hidden states reproduce. Undefined (NaN) where no layer passes ``threshold``."""
    if not isinstance(threshold, (int, float)) or not threshold >= 0:
        raise ValueError(f"threshold must be a non-negative number of nats, got {threshold!r}.")
    d1, d2 = knowledge.drops.double(), unlearned.drops.double()
    if d1.shape != d2.shape:
        raise ValueError(f"The two stages were measured on different questions or layers ({tuple(d1.shape)} vs "
                         f"{tuple(d2.shape)}): measure both on the same teacher-forced inputs.")
    encodes = d1 > threshold
    weight = torch.where(encodes, d1, torch.zeros_like(d1))
    ratio = torch.where(encodes, (d2 / d1.where(encodes, torch.ones_like(d1))).clamp(0, 1), torch.zeros_like(d1))
    total = weight.sum(1)
    per_q = torch.where(total > 0, (weight * ratio).sum(1) / total.where(total > 0, torch.ones_like(total)),
                        torch.full_like(total, float("nan")))
    layers = pd.DataFrame({"layer": range(d1.shape[1]), "retain_drop": d1.mean(0).numpy(),
                           "unlearned_drop": d2.mean(0).numpy(), "encodes_share": encodes.double().mean(0).numpy()})
    defined = ~per_q.isnan()
    score = float(per_q[defined].mean()) if defined.any() else float("nan")
    return DepthScore(score=score, per_question=per_q.float(), layers=layers, threshold=float(threshold))


BASIS_MISMATCH_AT = 0.5


def basis_mismatch(knowledge: LayerDrops, control: LayerDrops) -> float:
    """Mean drop the retain model's hidden states cause on questions both models know (``control``) over the mean
    drop on the forget questions (``knowledge``), every layer counted: about 0 when the retain model's layers differ
    from the original's only in the forget facts (two fine-tunes of one base, as TOFU's), about 1 when they differ
    everywhere (a model trained apart from scratch): then stage 1 finds the mismatch, not the facts."""
    forget = float(knowledge.drops.clamp(min=0).mean())
    return float(control.drops.clamp(min=0).mean()) / forget if forget > 0 else float("nan")


def depth_score(original, unlearned, tokenizer, tf: TeacherForced, retain_model=None,
                knowledge: LayerDrops | None = None, threshold: float = 0.05,
                control: TeacherForced | LayerDrops | None = None) -> DepthScore:
    """The unlearning depth score (arXiv 2605.24614): how much of the forget facts' knowledge is gone from inside
    ``unlearned``, 0 = intact, 1 = erased to the level of a model that never learned them.

    Stage 1 (:func:`layer_drops` of the ``retain_model`` into the original, or ``knowledge`` measured before, e.g.
    once for several unlearned models) finds, per question, the layers whose hidden states carry the answer;
    stage 2 patches the unlearned model's hidden states into the original at the same layers and positions
    (:func:`depth_from_drops`). Unlike KRS, which patches the original *into the unlearned model* and asks where the
    change sits, this patches the unlearned model *into the original* and asks whether its layers still hold what
    the retain model's do not: it needs a retain model, and reads representations, not outputs.

    The score assumes the retain model's hidden states sit in the original's basis, differing only where the forget
    facts are. ``control`` (teacher-forced questions both models answer, e.g. retain questions, or their
    :func:`layer_drops` of the retain model) checks it: ``basis_mismatch`` (:func:`basis_mismatch`) and
    ``comparable`` say whether the score can be read."""
    if knowledge is None and retain_model is None:
        raise ValueError("The depth score needs a retain model (one trained without the forget set) to find the "
                         "layers that carry the forget facts: pass retain_model=..., or knowledge=layer_drops("
                         "original, retain_model, tokenizer, tf) measured before.")
    if isinstance(control, TeacherForced) and retain_model is None:
        raise ValueError("control questions need the retain model itself: pass retain_model=..., or "
                         "control=layer_drops(original, retain_model, tokenizer, control_tf).")
    check_compatible(original, unlearned)
    if knowledge is None:
        knowledge = layer_drops(original, retain_model, tokenizer, tf)
    if knowledge.drops.shape[0] != len(tf):
        raise ValueError(f"knowledge was measured on {knowledge.drops.shape[0]} questions, tf has {len(tf)}: measure "
                         "both stages on the same teacher-forced inputs.")
    depth = depth_from_drops(knowledge, layer_drops(original, unlearned, tokenizer, tf), threshold)
    if control is not None:
        if isinstance(control, TeacherForced):
            control = layer_drops(original, retain_model, tokenizer, control)
        depth.basis_mismatch = basis_mismatch(knowledge, control)
    return depth


def depth_scores(original, unlearned: dict, tokenizer, tf: TeacherForced, retain_model,
                 control: TeacherForced | None = None, threshold: float = 0.05) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`depth_score` of each model of ``{name: unlearned model}``, stage 1 (and the ``control`` questions')
    measured once: ``(summary, layers)``. ``summary``, one row per model: depth score, questions with an encoding
    layer, basis mismatch, readable, and a sentence saying how to read it. ``layers``, one row per layer: the retain
    model's mean drop on the forget questions (and on the control questions), and each model's. Without a retain
    model the summary says so and ``layers`` is empty."""
    if retain_model is None:  # said in the table, so that a notebook on a data file without one runs through
        why = ("not measured: the depth score needs a retain model (one trained without the forget set), e.g. "
               "TOFU's retain90 checkpoint")
        return (pd.DataFrame({name: {"depth score": float("nan"), "questions with an encoding layer": 0,
                                     "basis mismatch": float("nan"), "readable": None, "reading": why}
                              for name in unlearned}).T, pd.DataFrame().rename_axis("layer"))
    knowledge = layer_drops(original, retain_model, tokenizer, tf)
    checked = None if control is None else layer_drops(original, retain_model, tokenizer, control)
    rows, layers = {}, {"forget questions: retain model": knowledge.drops.mean(0).numpy()}
    if checked is not None:
        layers["control questions: retain model"] = checked.drops.mean(0).numpy()
    for name, model in unlearned.items():
        d = depth_score(original, model, tokenizer, tf, knowledge=knowledge, threshold=threshold, control=checked)
        layers[f"forget questions: {name}"] = d.layers.unlearned_drop.to_numpy()
        if d.comparable is False:
            reading = (f"not readable as a share erased: the retain model's layers differ from the original's "
                       f"everywhere (mismatch {d.basis_mismatch:.2f}), so stage 1 finds that mismatch, not the facts")
        else:
            reading = (f"the unlearned model's layers lost {d.score:.0%} of what the retain model's lack"
                       + ("" if d.comparable else " (basis not checked: give control questions)"))
        rows[name] = {"depth score": d.score, "questions with an encoding layer": d.n_defined,
                      "basis mismatch": d.basis_mismatch, "readable": d.comparable, "reading": reading}
    return pd.DataFrame(rows).T, pd.DataFrame(layers).rename_axis("layer")
