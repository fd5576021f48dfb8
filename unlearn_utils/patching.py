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
   (1 = fully restored, 0 = no effect), and with the recovered forget accuracy.

High KRS for coefficient patching but low KRS for value-vector restoration is the paper's reading:
"retrieval changed, knowledge kept".
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from .arch import get_adapter
from .data import encode_texts, pad_id

COMPONENTS = ("mlp", "attn", "both")
# "block" (a decoder layer's whole output, the residual stream) is available for sanity checks and exploration.
ALL_COMPONENTS = COMPONENTS + ("block",)


@dataclass
class TeacherForced:
    """Prompt + the original's answer, padded on the right; ``answer_mask`` marks the positions that predict answer
    tokens."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    answer_mask: torch.Tensor
    prompts: list[str]
    answers: list[str]

    def __len__(self) -> int:
        return self.input_ids.shape[0]


@torch.no_grad()
def teacher_forced_inputs(original, tokenizer, prompts: list[str], max_new_tokens: int = 4) -> TeacherForced:
    """Greedy answers of the original model to ``prompts`` (up to ``max_new_tokens``, stopping at EOS), as inputs."""
    if not prompts:
        raise ValueError("The question list is empty: pass at least one forget question.")
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
    return TeacherForced(ids, att, mask, list(prompts), answers)


def _pad(seqs, pad):
    from .training import pad_batch

    batch = pad_batch(seqs, pad)
    return batch["input_ids"], batch["attention_mask"]


# ----------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------
def logit_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row: mean over the masked positions and the whole vocabulary of (a - b)^2."""
    m = mask.to(a.dtype)[..., None]
    return (((a.float() - b.float()) ** 2) * m).sum((1, 2)) / (m.sum((1, 2)) * a.shape[-1]).clamp_min(1)


def knowledge_recovery_score(original_logits, patched_logits, unlearned_logits, mask) -> torch.Tensor:
    """KRS per row = 1 - MSE(original, patched) / MSE(original, unlearned) over the answer positions.

    1 = the patch restores the original's logits, 0 = no effect, < 0 = further away. NaN where the unlearned
    model did not change the logits at all (nothing to recover).
    """
    base = logit_mse(original_logits, unlearned_logits, mask)
    patched = logit_mse(original_logits, patched_logits, mask)
    krs = 1 - patched / base
    return torch.where(base > 0, krs, torch.full_like(krs, float("nan")))


def answer_match(logits: torch.Tensor, tf: TeacherForced) -> torch.Tensor:
    """Per row: does greedy decoding reproduce the original's answer (every answer position's arg-max)?"""
    targets = torch.roll(tf.input_ids, -1, dims=1).to(logits.device)
    hit = (logits.argmax(-1) == targets) | ~tf.answer_mask.to(logits.device)
    return hit.all(1)


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
    ca, cb = a.config, b.config
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
    """nnsight's wrapper: TransformersModel (batches several invokes) when a tokenizer is given, else NNsight."""
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
    """The model's attention outputs and MLP coefficients at every layer, plus its logits (one nnsight trace)."""
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
        cache["logits"] = _logits_site(adapter, nn_model).output.save()
    return cache


def _layer_envoy(adapter, nn_model, layer):
    from .arch import resolve

    return resolve(nn_model, adapter.layers)[layer]


def _attn_site(adapter, nn_model, layer):
    from .arch import resolve

    return resolve(_layer_envoy(adapter, nn_model, layer), adapter.attn_out)


def _mlp_site(adapter, nn_model, layer):
    from .arch import resolve

    return resolve(_layer_envoy(adapter, nn_model, layer), adapter.mlp_down)


def _logits_site(adapter, nn_model):
    from .arch import resolve

    return resolve(nn_model, adapter.unembed)


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


@torch.no_grad()
def patch_sweep(original, unlearned, tokenizer, tf: TeacherForced, components=COMPONENTS, window: int = 1,
                layers: list[int] | None = None, positions: str = "all", direction: str = "original_to_unlearned",
                batched: bool = True, invokes_per_trace: int = 8) -> pd.DataFrame:
    """Patch activations from one model into the other, per layer window and component; one row per patch.

    components: any of "mlp" (MLP coefficients = input of the down projection), "attn" (attention output), "both".
    window: layers per patch (centred sliding windows); layers: which window centres (default all).
    positions: "all" or "answer" (only the positions that predict the answer).
    direction: "original_to_unlearned" (the paper's; KRS = recovery of the original) or "unlearned_to_original"
    (the score then measures how far the unlearned activations move the original toward the unlearned logits).
    batched: many patches per nnsight trace (one invoke each); False runs one trace per patch (same numbers).
    Returns columns: layer, layers, component, krs (mean over questions), krs_std, recovered_accuracy.
    """
    check_compatible(original, unlearned)
    if len(tf) == 0:
        raise ValueError("The question list is empty.")
    if positions not in ("all", "answer"):
        raise ValueError(f"positions must be 'all' or 'answer', got {positions!r}.")
    if direction not in ("original_to_unlearned", "unlearned_to_original"):
        raise ValueError(f"Unknown direction {direction!r}.")
    source, target = (original, unlearned) if direction == "original_to_unlearned" else (unlearned, original)
    adapter = get_adapter(target)
    n = adapter.n_layers(target)
    wins = windows(n, window)
    centres = list(range(n)) if layers is None else list(layers)
    _check_layers(centres, n)
    for c in components:
        _sites(c)
    cache = cache_activations(source, tokenizer, tf)
    dev = next(target.parameters()).device
    target_logits = target(input_ids=tf.input_ids.to(dev), attention_mask=tf.attention_mask.to(dev)).logits
    jobs = [(c, comp) for c in centres for comp in components]
    patched = run_patches(target, tokenizer, tf, cache, [(wins[c], comp) for c, comp in jobs], positions, batched,
                          invokes_per_trace)
    rows = []
    for (centre, comp), logits in zip(jobs, patched):
        krs = knowledge_recovery_score(cache["logits"], logits, target_logits, tf.answer_mask.to(dev))
        rows.append({"layer": centre, "layers": wins[centre], "component": comp,
                     "krs": float(krs.nanmean()),
                     "krs_std": float(krs[~krs.isnan()].std()) if (~krs.isnan()).sum() > 1 else 0.0,
                     "recovered_accuracy": float(answer_match(logits, tf).float().mean())})
    return pd.DataFrame(rows)


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
    pos_mask = None if positions == "all" else tf.answer_mask.to(dev)[..., None]
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
                        saved.append(_logits_site(adapter, nn_model).output.save())
            for logits in saved:
                assert logits.ndim == 3 and logits.shape[0] == len(tf), "one invoke's logits per patch"
            out += saved
    else:
        for layers, comp in patches:
            with nn_model.trace(input_ids=ids, attention_mask=att):
                _apply_patch(adapter, nn_model, layers, comp, cache, pos_mask)
                logits = _logits_site(adapter, nn_model).output.save()
            out.append(logits)
    return out


@torch.no_grad()
def restoration_sweep(original, unlearned, tokenizer, tf: TeacherForced, parts=("down",), window: int = 1,
                      layers: list[int] | None = None) -> pd.DataFrame:
    """Copy the original's weights (``parts`` of "down", "up", "attn") into the unlearned model per window, score,
    restore.

    The unlearned model is left exactly as it was. One row per (window, parts) with krs and recovered_accuracy.
    """
    check_compatible(original, unlearned)
    if len(tf) == 0:
        raise ValueError("The question list is empty.")
    adapter = get_adapter(unlearned)
    n = adapter.n_layers(unlearned)
    wins = windows(n, window)
    centres = list(range(n)) if layers is None else list(layers)
    _check_layers(centres, n)
    dev = next(unlearned.parameters()).device
    ids, att, mask = tf.input_ids.to(dev), tf.attention_mask.to(dev), tf.answer_mask.to(dev)
    orig_logits = original(input_ids=ids, attention_mask=att).logits
    unl_logits = unlearned(input_ids=ids, attention_mask=att).logits
    orig_params = dict(original.named_parameters())
    unl_params = dict(unlearned.named_parameters())
    rows = []
    for centre in centres:
        names = [name for k in wins[centre] for part in parts for name in adapter.layer_param_names(unlearned, k, part)]
        saved = {name: unl_params[name].detach().clone() for name in names}
        try:
            for name in names:
                unl_params[name].copy_(orig_params[name])
            logits = unlearned(input_ids=ids, attention_mask=att).logits
        finally:
            for name, value in saved.items():
                unl_params[name].copy_(value)
        krs = knowledge_recovery_score(orig_logits, logits, unl_logits, mask)
        rows.append({"layer": centre, "layers": wins[centre], "component": "+".join(parts),
                     "krs": float(krs.nanmean()),
                     "recovered_accuracy": float(answer_match(logits, tf).float().mean())})
    return pd.DataFrame(rows)


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
    series = {}
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
    rows = []
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
