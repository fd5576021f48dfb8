"""Needle (Hong et al., arXiv 2406.11614): unlearn a concept by ablating its concept vector(s) themselves.

Noise on each chosen value vector (a column of an MLP down projection), then optionally gradient ascent on the
topic's text in which only those columns change. It lives with the other unlearning methods; locating the vectors
and measuring what Needle did are in :mod:`unlearn_utils.concepts`.
"""

from __future__ import annotations

import copy

import pandas as pd
import torch

from ..concepts import add_noise, check_column, down_proj_column
from ..training import epoch_batches, set_seed, train_loop
from .losses import ga_loss
from .methods import encode_examples


def _as_vectors(vectors) -> list[tuple[int, int]]:
    if isinstance(vectors, tuple) and len(vectors) == 2 and not isinstance(vectors[0], (tuple, list)):
        vectors = [vectors]
    out = [(int(layer), int(c)) for layer, c in vectors]
    if not out:
        raise ValueError("No vectors given: pass (layer, column) or a list of them.")
    return out


def needle(model, tokenizer, vectors, scale: float = 10.0, forget_texts: list[str] | None = None,
           steps: int = 0, lr: float = 0.05, seed: int = 0, relative: bool = True, inplace: bool = False,
           progress: bool = True):
    """Ablate concept vectors ("Needle"): add Gaussian noise to each, then optionally run gradient ascent on
    ``forget_texts`` in which **only those columns** change. ``vectors`` is (layer, column) or a list of them.
    Returns ``(model, log)``; the input model is copied unless ``inplace=True``.
    """
    vectors = _as_vectors(vectors)
    for layer, column in vectors:
        check_column(model, layer, column)
    if steps < 0:
        raise ValueError(f"steps must be zero or positive, got {steps}.")
    if steps and not forget_texts:
        raise ValueError("Needle training needs forget_texts (the topic's text) when steps > 0.")
    set_seed(seed)
    model = model if inplace else copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    weights: dict[int, torch.Tensor] = {}
    masks: dict[int, torch.Tensor] = {}
    for layer, column in vectors:
        w, idx = down_proj_column(model, layer, column)
        add_noise(w, idx, scale, g, relative)
        weights[layer] = w
        masks.setdefault(layer, torch.zeros_like(w))[idx] = 1.0
    log = pd.DataFrame()
    if steps:
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        hooks = []
        for layer, w in weights.items():
            w.requires_grad_(True)
            hooks.append(w.register_hook(lambda grad, m=masks[layer]: grad * m))
        seqs, label_masks = encode_examples(tokenizer, [{"text": t} for t in forget_texts])
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        get = epoch_batches(seqs, min(16, len(seqs)), pad, seed, label_masks)
        dev = next(iter(weights.values())).device

        def ga(m, b):
            return ga_loss(m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"])

        try:
            log = pd.DataFrame(train_loop(model, lambda step: {k: v.to(dev) for k, v in get(step).items()}, steps, lr,
                                          loss_fn=ga, schedule="constant", params=list(weights.values()), clip=0.0,
                                          desc="Needle", progress=progress))
        finally:
            for h in hooks:
                h.remove()
            for n, p in model.named_parameters():
                p.requires_grad_(flags[n])
    model.eval()
    return model, log
