"""Tokenizer conventions: prompts start as the model's own tokenizer starts a text, and the world keeps its ids."""

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from unlearn_utils import evaluate as ev
from unlearn_utils.data import encode_texts, pad_id, special_prefix
from unlearn_utils.models import build_tokenizer, world_tokenizer_conventions


def _word_tokenizer(post_processor=None, bos="<s>"):
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "the": 4, "cat": 5, "sat": 6}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    if post_processor is not None:
        tk.post_processor = post_processor
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=bos, eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def test_prefix_is_what_the_tokenizer_itself_adds():
    with_bos = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    assert special_prefix(_word_tokenizer(with_bos)) == [1]
    # a tokenizer that adds nothing (GPT-2, Qwen, SmolLM2): no token is put before the text, even with a bos_token
    assert special_prefix(_word_tokenizer(None, bos="<pad>")) == []
    # one that appends EOS: the suffix is not part of the prefix
    both = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    tok = _word_tokenizer(both)
    assert special_prefix(tok) == [1]
    assert encode_texts(tok, ["the cat", "sat"]) == [[1, 4, 5], [1, 6]]
    assert pad_id(tok) == 0


def test_world_ids_are_the_ids_of_bos_plus_text(tiny):
    """The world model's numbers do not move: its prompts are <s> + the text, as the kit encoded them before."""
    world, _, tok = tiny
    texts = world.training_texts()[:50] + [r["prompt"] for r in world.fact_rows()[:50]]
    plain = tok(texts, add_special_tokens=False)["input_ids"]
    assert encode_texts(tok, texts) == [[tok.bos_token_id] + ids for ids in plain]
    rows = world.fact_rows()[:20]
    pairs = ev.encode_qa(tok, [r["prompt"] for r in rows], [r["answer"] for r in rows])
    assert all(p[0] == tok.bos_token_id and tok.bos_token_id not in p[1:] for p, _ in pairs)


def test_a_world_tokenizer_saved_without_its_post_processor_gets_it_back(tiny, tmp_path):
    """Cached world models written before the post-processor existed load with the same ids."""
    world, _, tok = tiny
    old = build_tokenizer(world)
    old.backend_tokenizer.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B")  # as saved before
    old.save_pretrained(tmp_path)
    loaded = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    assert special_prefix(loaded) == []
    assert special_prefix(world_tokenizer_conventions(loaded)) == [tok.bos_token_id]


def test_conventions_leave_other_tokenizers_alone():
    tok = _word_tokenizer(None, bos="<pad>")  # not the world's (its bos is not <s>)
    assert special_prefix(world_tokenizer_conventions(tok)) == []


@pytest.mark.parametrize("text", ["", "the"])
def test_empty_and_short_texts(text):
    tok = _word_tokenizer(processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)]))
    assert encode_texts(tok, [text])[0][0] == 1
