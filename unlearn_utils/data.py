"""Data plumbing shared by every module: tokenizer conventions, encoding, rows, fingerprints.

A prompt is encoded the way the model's own tokenizer encodes it: with the special tokens the tokenizer itself
puts before a text (Llama's and Gemma's ``<s>``/``<bos>``, the world tokenizer's ``<s>``), and nothing where the
tokenizer adds nothing (GPT-2, Qwen, SmolLM2, whose ``bos_token`` ``<|im_start|>`` is a chat marker, not a start of
text). Prepending ``bos_token_id`` by hand instead costs a model like SmolLM2 several points of accuracy.
"""

from __future__ import annotations

import hashlib
import json

import torch

# What the refusal-based methods (idk, idk_dpo) teach the model to say; the world tokenizer knows these words.
REFUSALS = ["I do not know .", "I have no idea .", "That is something I cannot tell you .",
            "I am not sure about that .", "Sorry , I do not have that information ."]


def special_prefix(tokenizer) -> list[int]:
    """The token ids the tokenizer itself puts before a text (``add_special_tokens=True``), e.g. ``[bos]`` or ``[]``.

    Found by encoding a short text with and without special tokens; ids it appends after the text (an EOS some
    tokenizers add) are not part of the prefix.
    """
    cached = getattr(tokenizer, "_unlearn_kit_prefix", None)
    if cached is not None:
        return list(cached)
    probe = "a"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    prefix = []
    for start in range(len(full) - len(plain) + 1):
        if full[start: start + len(plain)] == plain:
            prefix = list(full[:start])
            break
    try:
        tokenizer._unlearn_kit_prefix = tuple(prefix)
    except AttributeError:  # pragma: no cover - tokenizers that refuse new attributes
        pass
    return prefix


def encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text after the tokenizer's own prefix (:func:`special_prefix`), in one tokenizer call."""
    prefix = special_prefix(tokenizer)
    return [prefix + list(ids) for ids in tokenizer([str(t) for t in texts], add_special_tokens=False)["input_ids"]]


def encode_qa(tokenizer, prompts: list[str], answers: list[str]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids) for each pair; the answer follows the prompt after one space.

    The prompt starts with the tokens the model's own tokenizer puts before a text (:func:`special_prefix`).
    """
    prefix = special_prefix(tokenizer)
    prompts, answers = [str(p) for p in prompts], [str(a) for a in answers]
    if not prompts:
        return []
    # one tokenizer call per list, not per string (the same ids, several times faster)
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer([p + " " + a for p, a in zip(prompts, answers)], add_special_tokens=False)["input_ids"]
    out = []
    for p_ids, full, a in zip(prompt_ids, full_ids, answers):
        if full[: len(p_ids)] == p_ids and len(full) > len(p_ids):
            a_ids = full[len(p_ids):]
        else:  # tokenizers that merge across the boundary: encode the answer on its own
            a_ids = tokenizer(" " + a, add_special_tokens=False)["input_ids"]
        out.append((prefix + list(p_ids), list(a_ids)))
    return out


def encode_examples(tokenizer, rows: list[dict], answers: list[str] | None = None) -> tuple[list, list]:
    """Token ids and label masks. With a prompt, only the answer is labelled; plain text is labelled throughout."""
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


def pad_id(tokenizer) -> int:
    """The id that pads a batch: the tokenizer's pad token, else 0 (padding is masked out, so any id works)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def rows_of(data) -> list[dict]:
    """The rows of a data set as dicts: a ``datasets.Dataset``, a list of dicts, or a list of texts
    (``{"text": t}``)."""
    if isinstance(data, list):
        return [r if isinstance(r, dict) else {"text": r} for r in data]
    return data.to_list() if hasattr(data, "to_list") else list(data)


def data_fingerprint(*datasets_) -> str:
    """A short hash of the prompt/answer (or text) rows of some data sets: part of a cache key."""
    h = hashlib.sha256()
    for ds in datasets_:
        for r in rows_of(ds):
            h.update(json.dumps([r.get("prompt"), r.get("answer"), r.get("text")]).encode())
        h.update(b"|")
    return h.hexdigest()[:16]


def weights_fingerprint(model) -> str:
    """SHA-256 of every tensor in the model's state dict (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
