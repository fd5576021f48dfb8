"""The adapter on tiny random-weight models of every supported family (built from configs, nothing downloaded)."""

import pytest
import torch
import transformers as tf

from unlearn_utils.arch import UnsupportedArchitectureError, get_adapter

V, D, F, L = 96, 32, 48, 3
FAMILIES = {
    "llama": lambda: tf.LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=F, num_hidden_layers=L,
                                    num_attention_heads=4, num_key_value_heads=2),
    "mistral": lambda: tf.MistralConfig(vocab_size=V, hidden_size=D, intermediate_size=F, num_hidden_layers=L,
                                        num_attention_heads=4, num_key_value_heads=2),
    "qwen2": lambda: tf.Qwen2Config(vocab_size=V, hidden_size=D, intermediate_size=F, num_hidden_layers=L,
                                    num_attention_heads=4, num_key_value_heads=2),
    "gemma": lambda: tf.GemmaConfig(vocab_size=V, hidden_size=D, intermediate_size=F, num_hidden_layers=L,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=8),
    "olmo2": lambda: tf.Olmo2Config(vocab_size=V, hidden_size=D, intermediate_size=F, num_hidden_layers=L,
                                    num_attention_heads=4, num_key_value_heads=4),
    "gpt2": lambda: tf.GPT2Config(vocab_size=V, n_embd=D, n_inner=F, n_layer=L, n_head=4, n_positions=64),
    "gpt_neox": lambda: tf.GPTNeoXConfig(vocab_size=V, hidden_size=D, intermediate_size=F, num_hidden_layers=L,
                                         num_attention_heads=4),
}


def tiny_model(family):
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(FAMILIES[family]()).eval()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_adapter_parts(family):
    model = tiny_model(family)
    a = get_adapter(model)
    assert a.n_layers(model) == L
    assert a.value_vectors(model, 1).shape == (D, F)
    assert a.unembedding(model).shape == (V, D)
    assert a.norm(model) is not None
    seen = {}
    h1 = a.down_proj(model, L - 1).register_forward_pre_hook(lambda m, inp: seen.__setitem__("coef", inp[0]))
    h2 = a.attn_proj(model, 0).register_forward_hook(lambda m, i, out: seen.__setitem__("attn", out))
    model(torch.randint(0, V, (2, 5)))
    h1.remove(), h2.remove()
    assert seen["coef"].shape == (2, 5, F), "the coefficients are the d_mlp-wide input of the down projection"
    assert seen["attn"].shape == (2, 5, D)
    # value vectors really are what the down projection adds: W @ coef equals the module output (minus bias)
    coef = seen["coef"][0, 0]
    out = a.down_proj(model, L - 1)(coef[None])[0]
    bias = getattr(a.down_proj(model, L - 1), "bias", None)
    expect = a.value_vectors(model, L - 1) @ coef + (bias if bias is not None else 0)
    assert torch.allclose(out, expect, atol=1e-5)
    assert a.layer_param_names(model, 0, "down")


def test_layer_out_of_range():
    model = tiny_model("llama")
    with pytest.raises(IndexError, match="out of range"):
        get_adapter(model).layer(model, L)


def test_unsupported_architecture():
    cfg = tf.BloomConfig(vocab_size=V, hidden_size=D, n_layer=2, n_head=4)
    model = tf.AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(UnsupportedArchitectureError, match="not supported"):
        get_adapter(model)
