import dataclasses
import json
import os
import warnings

import pytest
import torch

from unlearn_utils import evaluate as ev
from unlearn_utils.cache import CorruptCacheError, cache_dir, save_checked, verify_folder
from unlearn_utils.models import build_tokenizer, build_world_model, load_model


def test_tokenizer_roundtrip(tiny):
    world, _, tok = tiny
    text = world.training_texts()[0]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.convert_ids_to_tokens(ids) == text.split()  # word-level: one token per word
    # every answer of every fact (holdout people included) is one known token or more
    for r in world.fact_rows()[:300]:
        assert tok.unk_token_id not in tok(r["answer"], add_special_tokens=False)["input_ids"]


def test_cached_model_is_reused_and_identical(tiny, tiny_config):
    _, model, _ = tiny
    again, _ = build_world_model(tiny_config, progress=False)
    for (n, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n
    folder = cache_dir() / "world_models" / tiny_config.key()
    verify_folder(folder)
    assert (folder / "model.safetensors").exists()


def test_same_seed_same_model_and_metrics(tmp_path, tiny_config, monkeypatch):
    """Two builds from scratch (separate caches) give the same weights and the same report card."""
    cfg = dataclasses.replace(tiny_config, steps=20)
    cards = []
    for i in range(2):
        monkeypatch.setenv("UNLEARN_KIT_CACHE", str(tmp_path / f"c{i}"))
        m, tok = build_world_model(cfg, progress=False)
        cards.append(ev.report_card(m, tok, cfg.world(), "forget05", mia=True))
    assert cards[0]["value"].tolist() == cards[1]["value"].tolist()
    other = dataclasses.replace(cfg, seed=1)
    m2, tok = build_world_model(other, progress=False)
    assert ev.report_card(m2, tok, cfg.world(), "forget05")["value"].tolist() != cards[0]["value"].tolist()


def test_corrupted_cache_is_detected_and_rebuilt(tmp_path, tiny_config, monkeypatch):
    monkeypatch.setenv("UNLEARN_KIT_CACHE", str(tmp_path))
    cfg = dataclasses.replace(tiny_config, steps=5)
    m, _ = build_world_model(cfg, progress=False)
    folder = tmp_path / "world_models" / cfg.key()
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncate
    with pytest.raises(CorruptCacheError, match="checksum"):
        verify_folder(folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m2, _ = build_world_model(cfg, progress=False)
    assert any("unusable" in str(w.message) for w in caught)
    verify_folder(folder)
    corrupt = [p for p in (tmp_path / "world_models").iterdir() if p.name.endswith(".corrupt")]
    assert corrupt, "the corrupted entry is moved aside, not deleted"
    for a, b in zip(m.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)


def test_load_model_from_folder_and_errors(tmp_path, tiny):
    _, model, tok = tiny
    folder = save_checked(model, tok, tmp_path / "m")
    m2, tok2 = load_model(str(folder))
    x = torch.tensor([[1, 5, 6, 7]])
    assert torch.allclose(model(x).logits, m2(x).logits)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(str(tmp_path / "empty"))
    with pytest.raises(OSError, match="not found in the local"):
        load_model("no-such-org/no-such-model-xyz")
    # a corrupted saved model is refused, not silently used
    w = folder / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(CorruptCacheError):
        load_model(str(folder))


def test_build_tokenizer_is_deterministic(tiny):
    world, _, tok = tiny
    assert build_tokenizer(world).get_vocab() == tok.get_vocab()


def test_presets_per_model():
    from unlearn_utils.models import PRESETS, REAL_MODEL_RULE, preset

    assert preset("world") == {} and preset(None) == {} and preset("world-retain") == {}
    assert preset("smollm2-135m", "grad_diff") == {**PRESETS["smollm2-135m"]["*"],
                                                   **PRESETS["smollm2-135m"].get("grad_diff", {})}
    assert preset("smollm2-135m")["batch_size"] == 8
    assert preset("some-org/some-model") == REAL_MODEL_RULE      # any other real model: the rule
    assert preset(torch.nn.Linear(2, 2)) == {}                    # a model the kit did not load: the methods' defaults


def test_unlearn_takes_the_models_preset_where_no_setting_is_given(tiny):
    import copy

    from unlearn_utils.models import preset
    from unlearn_utils.unlearning import DEFAULTS, unlearn

    world, model, tok = tiny
    forget, retain = world.facts("forget05", "trained"), world.facts("retain", "trained").select(range(40))
    out, _ = unlearn(model, tok, forget, retain, "grad_diff", steps=1, progress=False)
    assert out.unlearn_config.lr == DEFAULTS["grad_diff"]["lr"] and out.unlearn_config.batch_size == 32  # the world
    real = copy.deepcopy(model)
    real.kit_name = "smollm2-135m"  # as load_model("smollm2-135m") marks its model
    out, _ = unlearn(real, tok, forget, retain, "grad_diff", steps=1, progress=False)
    assert out.unlearn_config.lr == preset("smollm2-135m", "grad_diff")["lr"]
    assert out.unlearn_config.batch_size == preset("smollm2-135m")["batch_size"]
    out, _ = unlearn(real, tok, forget, retain, "grad_diff", steps=1, lr=1e-4, batch_size=4, progress=False)
    assert (out.unlearn_config.lr, out.unlearn_config.batch_size) == (1e-4, 4)    # what the caller sets wins
    out, _ = unlearn(real, tok, forget, retain, "grad_diff", steps=1, lora=True, progress=False)
    assert out.unlearn_config.lr == pytest.approx(10 * preset("smollm2-135m", "grad_diff")["lr"])  # LoRA: 10x
    with pytest.raises(ValueError, match="batch size"):
        unlearn(model, tok, forget, retain, "grad_diff", steps=1, batch_size=0)


def test_choose_threads(monkeypatch):
    from unlearn_utils.models import choose_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("UNLEARN_KIT_THREADS", "1")
        assert choose_threads() == 1 and torch.get_num_threads() == 1
        assert choose_threads(2) == 2                       # an explicit count wins over the variable
        monkeypatch.delenv("UNLEARN_KIT_THREADS")
        n = choose_threads()
        assert 1 <= n <= (os.cpu_count() or 1)
        with pytest.raises(ValueError, match="positive integer"):
            choose_threads(0)
    finally:
        torch.set_num_threads(before)


# ---- a bad argument never touches a healthy cache entry ---------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [(dict(dtype="float8"), "Unknown dtype"),
                                             (dict(device="gpu"), "Unknown device"),
                                             (dict(dtype=torch.int8), "not a floating-point")])
def test_a_bad_argument_leaves_the_cached_world_model_alone(tmp_path, tiny_config, monkeypatch, kwargs, message):
    import unlearn_utils.models as models

    monkeypatch.setenv("UNLEARN_KIT_CACHE", str(tmp_path))
    cfg = dataclasses.replace(tiny_config, steps=5)
    build_world_model(cfg, progress=False)
    folder = tmp_path / "world_models" / cfg.key()
    before = (folder / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(models, "train_world_model", lambda *a, **k: pytest.fail("retrained a valid model"))
    with pytest.raises(ValueError, match=message):
        load_model("world", config=cfg, **kwargs)
    with pytest.raises(ValueError, match=message):
        build_world_model(cfg, progress=False, **kwargs)
    assert (folder / "model.safetensors").stat().st_mtime_ns == before
    assert not list((tmp_path / "world_models").glob("*.corrupt"))
    verify_folder(folder)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_says_so(tiny, tiny_config):
    with pytest.raises(ValueError, match="asks for a CUDA GPU, but torch sees none"):
        load_model("world", device="cuda", config=tiny_config)


def test_a_folder_without_safetensors_weights_says_what_it_holds(tmp_path, tiny):
    _, model, tok = tiny
    folder = tmp_path / "m"
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="config.json but no weights") as err:
        load_model(str(folder))
    assert "huggingface-cli" not in str(err.value)
    (folder / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(ValueError, match="pickled weights .*pytorch_model.bin.*safetensors only"):
        load_model(str(folder))


@pytest.mark.parametrize("forge", ["empty manifest", "manifest rewritten"])
def test_truncated_weights_under_a_forged_manifest_are_rebuilt_not_loaded(tmp_path, tiny_config, monkeypatch, forge):
    """An entry whose manifest no longer vouches for its weights (emptied, or rewritten over truncated weights)
    is damaged: set aside and built again, never loaded and never a crash on every run."""
    from unlearn_utils.cache import sha256

    monkeypatch.setenv("UNLEARN_KIT_CACHE", str(tmp_path))
    cfg = dataclasses.replace(tiny_config, steps=5)
    m, _ = build_world_model(cfg, progress=False)
    folder = tmp_path / "world_models" / cfg.key()
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    manifest = json.loads((folder / "manifest.json").read_text())
    forged = {} if forge == "empty manifest" else {**manifest, "model.safetensors": sha256(weights)}
    (folder / "manifest.json").write_text(json.dumps(forged))
    with pytest.warns(UserWarning, match="unusable"):
        m2, _ = build_world_model(cfg, progress=False)
    for a, b in zip(m.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    verify_folder(folder)


def test_a_folder_keeps_the_tokenizer_saved_in_it(tmp_path, tiny):
    """A qwen2 model saved with another tokenizer (here the world's word-level one) loads with that tokenizer,
    not the family's default class (which encoded every world text to nothing)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    world, _, tok = tiny
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    _, loaded = load_model(str(tmp_path / "m"))
    text = world.fact_rows()[0]["prompt"]
    assert loaded(text)["input_ids"] == tok(text)["input_ids"] and len(tok(text)["input_ids"]) > 1
