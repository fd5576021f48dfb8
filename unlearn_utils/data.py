"""Tokenizer conventions: how the kit turns prompts and texts into token ids for any model.

A prompt is encoded the way the model's own tokenizer encodes it: with the special tokens the tokenizer itself
puts before a text (Llama's and Gemma's ``<s>``/``<bos>``, the world tokenizer's ``<s>``), and nothing where the
tokenizer adds nothing (GPT-2, Qwen, SmolLM2, whose ``bos_token`` ``<|im_start|>`` is a chat marker, not a start of
text). Prepending ``bos_token_id`` by hand instead costs a model like SmolLM2 several points of accuracy.
"""

from __future__ import annotations


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


def pad_id(tokenizer) -> int:
    """The id that pads a batch: the tokenizer's pad token, else 0 (padding is masked out, so any id works)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
