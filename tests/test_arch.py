"""The adapter on tiny random-weight models of every supported family (built from configs, nothing downloaded)."""

import pytest
import torch
import transformers as tf

from unlearn_utils.arch import ADAPTERS, UnsupportedArchitectureError, get_adapter

V, D, F, L = 96, 32, 48, 3
_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)


def family_config(family, vocab=V, hidden=D, inner=F, layers=L):
    """A tiny random-weight config of a supported family (4 heads, 2 key-value heads, head size hidden / 4).

    The soft cap and the logit scales are set where they change the logits of so small a model (Gemma 2 and 3
    cap at 0.5, their logits being about that size; Granite divides by 4, Cohere multiplies by 4), so a check that
    skips them fails."""
    heads = dict(num_attention_heads=4, num_key_value_heads=2, **_IDS)
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=inner, num_hidden_layers=layers)
    llama_like = {
        "llama": (tf.LlamaConfig, {}), "mistral": (tf.MistralConfig, {}), "qwen2": (tf.Qwen2Config, {}),
        "qwen3": (tf.Qwen3Config, dict(head_dim=hidden // 4)), "gemma": (tf.GemmaConfig, dict(head_dim=hidden // 4)),
        "gemma2": (tf.Gemma2Config, dict(head_dim=hidden // 4, final_logit_softcapping=0.5)),
        "gemma3_text": (tf.Gemma3TextConfig, dict(head_dim=hidden // 4, final_logit_softcapping=0.5)),
        "olmo": (tf.OlmoConfig, {}), "olmo2": (tf.Olmo2Config, dict(num_key_value_heads=4)),
        "olmo3": (tf.Olmo3Config, {}), "smollm3": (tf.SmolLM3Config, {}), "stablelm": (tf.StableLmConfig, {}),
        "granite": (tf.GraniteConfig, dict(logits_scaling=4.0)), "cohere": (tf.CohereConfig, dict(logit_scale=4.0)),
        "cohere2": (tf.Cohere2Config, dict(logit_scale=4.0)), "phi3": (tf.Phi3Config, {}),
    }
    if family in llama_like:
        cls, extra = llama_like[family]
        return cls(**common, **{**heads, **extra})
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=vocab, n_embd=hidden, n_inner=inner, n_layer=layers, n_head=4, n_positions=64,
                             **_IDS)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(**common, num_attention_heads=4, **_IDS)
    raise KeyError(family)


# every family the adapter supports (the README's list is this list)
SUPPORTED = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2", "olmo3",
             "smollm3", "stablelm", "granite", "cohere", "cohere2", "phi3", "gpt2", "gpt_neox"]
FAMILIES = {family: (lambda family=family: family_config(family)) for family in SUPPORTED}


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
    h3 = a.layer(model, L - 1).register_forward_hook(lambda m, i, out: seen.__setitem__(
        "last", out[0] if isinstance(out, tuple) else out))
    logits = model(torch.randint(0, V, (2, 5))).logits
    h1.remove(), h2.remove(), h3.remove()
    assert seen["coef"].shape == (2, 5, F), "the coefficients are the d_mlp-wide input of the down projection"
    assert seen["attn"].shape == (2, 5, D)
    # value vectors really are what the down projection adds: W @ coef equals the module output (minus bias)
    coef = seen["coef"][0, 0]
    out = a.down_proj(model, L - 1)(coef[None])[0]
    bias = getattr(a.down_proj(model, L - 1), "bias", None)
    expect = a.value_vectors(model, L - 1) @ coef + (bias if bias is not None else 0)
    assert torch.allclose(out, expect, atol=1e-5)
    assert a.layer_param_names(model, 0, "down")
    # the last layer's output through the final norm, the unembedding and the family's post-processing (soft cap,
    # logit scaling) is the model's own output logit
    assert torch.allclose(a.logits_from_hidden(model, seen["last"]), logits, atol=1e-5)


def test_every_adapter_is_tested():
    assert sorted(SUPPORTED) == sorted(ADAPTERS)


def test_post_processing_is_the_models_own():
    """Without its post-processing the adapter's logits would be wrong on these families (so the check above can
    fail): Gemma 2's soft cap, Granite's division, Cohere's multiplication."""
    raw = torch.randn(3, V) * 2
    for family in ("gemma2", "gemma3_text", "granite", "cohere", "cohere2"):
        model = tiny_model(family)
        assert (get_adapter(model).postprocess_logits(model, raw) - raw).abs().max() > 0.1, family
    llama = tiny_model("llama")
    assert torch.equal(get_adapter(llama).postprocess_logits(llama, raw), raw)


def test_layer_out_of_range():
    model = tiny_model("llama")
    with pytest.raises(IndexError, match="out of range"):
        get_adapter(model).layer(model, L)


def test_unsupported_architecture_names_the_missing_part():
    cfg = tf.BloomConfig(vocab_size=V, hidden_size=D, n_layer=2, n_head=4)
    model = tf.AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(UnsupportedArchitectureError, match="not supported") as e:
        get_adapter(model)
    msg = str(e.value)
    assert "'bloom'" in msg and "found decoder layers at 'transformer.h'" in msg
    assert "not found: MLP down projection in each layer at 'mlp.c_proj'" in msg
    # a known family whose layers lack a part: the path looked for
    model = tiny_model("llama")
    del model.model.layers[0].mlp.down_proj
    with pytest.raises(UnsupportedArchitectureError, match=r"no MLP down projection at 'mlp.down_proj'"):
        get_adapter(model)
    model = tiny_model("gpt2")
    del model.transformer.ln_f
    with pytest.raises(UnsupportedArchitectureError, match=r"no final norm at 'transformer.ln_f' \(no 'ln_f'"):
        get_adapter(model)


_MOE = {
    "mixtral": lambda: tf.MixtralConfig(vocab_size=V, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, num_local_experts=4, **_IDS),
    "qwen2_moe": lambda: tf.Qwen2MoeConfig(vocab_size=V, hidden_size=16, intermediate_size=24, moe_intermediate_size=8,
                                           shared_expert_intermediate_size=24, num_hidden_layers=2,
                                           num_attention_heads=2, num_key_value_heads=1, num_experts=4, **_IDS),
    "qwen3_moe": lambda: tf.Qwen3MoeConfig(vocab_size=V, hidden_size=16, intermediate_size=24, moe_intermediate_size=8,
                                           num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                           num_experts=4, **_IDS),
}


@pytest.mark.parametrize("family", list(_MOE))
def test_mixture_of_experts_is_refused_by_name(family):
    model = tf.AutoModelForCausalLM.from_config(_MOE[family]())
    with pytest.raises(UnsupportedArchitectureError, match="mixture-of-experts MLPs are not supported: ") as e:
        get_adapter(model)
    msg = str(e.value)
    assert f"each {family} layer" in msg and "4 experts ('mlp.experts'" in msg and "router ('mlp.gate')" in msg
    assert "no single down projection" in msg and "'mlp.down_proj'" in msg


def test_multimodal_gemma3_points_to_its_text_model():
    cfg = tf.Gemma3Config(text_config=dict(vocab_size=V, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=8),
                          vision_config=dict(hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=28, patch_size=14),
                          mm_tokens_per_image=4)
    with pytest.raises(UnsupportedArchitectureError) as e:
        get_adapter(tf.AutoModelForCausalLM.from_config(cfg))
    msg = str(e.value)
    assert "decoder layers at 'model.layers'" in msg and "'model.language_model.layers'" in msg
    assert "'gemma3_text'" in msg


# ---- a LoRA model (peft), as unlearn(..., lora=True) returns it: read as the model inside ---------------------------
def _lora(model, **settings):
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0, **settings)
    torch.manual_seed(1)
    wrapped = get_peft_model(model, lcfg)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # a trained adapter: B is no longer zero
    return wrapped


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_lora_model_reads_as_its_merged_model(family):
    import copy

    from unlearn_utils.arch import effective_weight, unwrap

    wrapped = _lora(tiny_model(family))
    merged = copy.deepcopy(wrapped).merge_and_unload()
    a = get_adapter(wrapped)
    assert a.family == family and a.n_layers(wrapped) == L
    assert unwrap(wrapped) is wrapped.get_base_model()
    for i in range(L):
        assert torch.allclose(a.value_vectors(wrapped, i), a.value_vectors(merged, i), atol=1e-6)
        assert not torch.allclose(a.value_vectors(wrapped, i), a.down_proj(wrapped, i).base_layer.weight.T
                                  if a.conv1d else a.down_proj(wrapped, i).base_layer.weight)
    assert torch.allclose(effective_weight(a.attn_proj(wrapped, 0)), effective_weight(a.attn_proj(merged, 0)))
    names = a.layer_param_names(wrapped, 1, "down")
    params = dict(wrapped.named_parameters())
    assert names and all(n in params for n in names) and any("lora_B" in n for n in names)
    assert all(n.startswith("base_model.model.") for n in names)
    # the hooked down projection's input is the merged model's coefficients; its output the merged model's
    ids = torch.randint(0, V, (2, 5))
    seen = []
    for m in (wrapped, merged):
        h = a.down_proj(m, 1).register_forward_pre_hook(lambda mod, inp: seen.append(inp[0]))
        m(ids)
        h.remove()
    assert torch.allclose(seen[0], seen[1], atol=1e-5)


def test_other_peft_adapters_are_refused():
    with pytest.raises(UnsupportedArchitectureError, match="DoRA adapter .*merge_and_unload"):
        get_adapter(_lora(tiny_model("llama"), use_dora=True))
