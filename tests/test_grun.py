"""GRUN: the gated LoReFT module, its training, saving and application to other bases."""

import copy

import pandas as pd
import pytest
import torch

from unlearn_utils import grun
from unlearn_utils.evaluate import accuracy, answer_scores
from unlearn_utils.grun import GatedLoReFT, GatedModel, GRUN, GRUNConfig, attach, loreft_edit, train_grun


def _orthonormal_rows(R, atol=1e-5):
    return torch.allclose(R @ R.T, torch.eye(R.shape[0]), atol=atol)


def test_loreft_edit_replaces_coordinates_in_the_subspace():
    torch.manual_seed(0)
    unit = GatedLoReFT(16, rank=3)
    R, W, b = unit.R, unit.source.weight, unit.source.bias
    h = torch.randn(5, 16)
    new = h + loreft_edit(h, R, W, b)
    assert torch.allclose(new @ R.T, h @ W.T + b, atol=1e-5)       # in the subspace: W h + b
    perp = torch.eye(16) - R.T @ R
    assert torch.allclose(new @ perp, h @ perp, atol=1e-5)          # outside it: untouched


def test_bad_rank_and_layer_are_clear_errors(tiny):
    _, model, _ = tiny
    with pytest.raises(ValueError, match="rank must be"):
        GRUN.for_model(model, rank=0)
    with pytest.raises(ValueError, match="rank must be"):
        GRUN.for_model(model, rank=model.config.hidden_size + 1)
    with pytest.raises(ValueError, match="out of range"):
        GRUN.for_model(model, layers=(model.config.num_hidden_layers,))
    with pytest.raises(ValueError, match="Unknown forget loss"):
        GRUN.for_model(model, forget_loss="ascend")


def test_module_for_another_model_size_is_a_clear_error(tiny):
    from transformers import LlamaConfig, LlamaForCausalLM

    _, model, _ = tiny
    module = GRUN.for_model(model)
    other = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
                                         num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(ValueError, match="hidden size .* this model has hidden size 48"):
        attach(other, module)


def test_gate_at_zero_gives_exactly_the_base_model(tiny):
    world, model, tok = tiny
    module = GRUN.for_model(model, layers=(0, 1))
    with torch.no_grad():
        for unit in module.units.values():
            unit.source.bias.add_(3.0)  # a large edit, so any leak would show
    gm = attach(model, module)
    facts = world.facts("forget05", "trained")
    prompts, answers = list(facts["prompt"]), list(facts["answer"])
    base = answer_scores(model, tok, prompts, answers)
    gm.force_gate = 0.0
    assert answer_scores(gm, tok, prompts, answers).equals(base)
    gm.force_gate = None
    with torch.no_grad():
        for unit in module.units.values():
            unit.gate.bias.fill_(-1e4)  # sigmoid underflows to exactly 0
    assert answer_scores(gm, tok, prompts, answers).equals(base)
    with torch.no_grad():
        for unit in module.units.values():
            unit.gate.bias.fill_(1e4)
    assert not answer_scores(gm, tok, prompts, answers)["logprob"].equals(base["logprob"])


def test_edit_is_applied_at_the_last_prompt_token_only(tiny):
    _, model, tok = tiny
    module = GRUN.for_model(model, layers=(model.config.num_hidden_layers - 1,))
    gm = attach(model, module)
    gm.force_gate = 1.0
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    pos = torch.tensor([3])
    with torch.no_grad():
        a = model(input_ids=ids).logits
        b = gm(input_ids=ids, prompt_positions=pos).logits
    changed = (a - b).abs().amax(-1)[0]
    assert torch.all(changed[:3] == 0) and changed[3] > 0  # earlier positions untouched
    labels = torch.tensor([[-100, -100, -100, -100, 8, 9]])
    assert GatedModel.edit_positions(ids, None, labels).tolist() == [3]
    assert GatedModel.edit_positions(ids, torch.tensor([[1, 1, 1, 1, 1, 0]])).tolist() == [4]


def _attribute_split(world):
    """The tiny model barely tells people apart, so its forget set is one attribute of the forget people
    and its retain set the other attributes of the retain people (different templates the gate can see)."""
    f, r = world.facts("forget05", "trained"), world.facts("retain", "trained")
    first = sorted(set(f["attribute"]))[0]
    return f.filter(lambda x: x["attribute"] == first), r.filter(lambda x: x["attribute"] != first)


@pytest.fixture(scope="module")
def trained(tiny):
    world, model, tok = tiny
    forget, retain = _attribute_split(world)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    gm, log = train_grun(model, tok, forget, retain, steps=150, lr=3e-2, progress=False)
    return gm, log, before


def test_training_keeps_R_orthonormal_and_the_base_frozen(tiny, trained):
    _, model, _ = tiny
    gm, log, before = trained
    module = gm.grun[-1]
    init = GRUN.for_model(model)
    moved = False
    for key, unit in module.units.items():
        assert _orthonormal_rows(unit.R)
        moved |= not torch.allclose(unit.R, init.units[key].R)
    assert moved, "R should train"
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert all(p.requires_grad for p in model.parameters())  # flags restored
    assert log.attrs["trainable_parameters"] == module.n_parameters() < 0.05 * sum(p.numel() for p in model.parameters())


def test_training_unlearns_and_the_gate_separates(tiny, trained):
    world, model, tok = tiny
    gm, _, _ = trained
    forget, retain = _attribute_split(world)

    def logprob(m, data):
        return answer_scores(m, tok, list(data["prompt"]), list(data["answer"]))["logprob"].mean()

    # the tiny model knows little, so compare answer log-probabilities rather than accuracy
    assert logprob(gm, forget) < logprob(model, forget) - 1.0
    assert logprob(gm, retain) > logprob(model, retain) - 0.2
    f = grun.gate_values(gm, tok, list(forget["prompt"]))["gate"].mean()
    r = grun.gate_values(gm, tok, list(retain["prompt"]))["gate"].mean()
    assert f > r + 0.15


def test_save_and_load_give_identical_metrics(tiny, trained, tmp_path):
    world, model, tok = tiny
    gm, _, _ = trained
    facts = world.facts("trained", "trained")
    folder = grun.save_grun(gm, tmp_path / "module")
    assert sorted(p.name for p in folder.iterdir()) == ["grun.json", "grun.safetensors", "manifest.json"]
    assert (folder / "grun.safetensors").stat().st_size < 4 * (module_size := gm.grun[0].n_parameters()) + 4096
    loaded = grun.load_grun(folder, base=copy.deepcopy(model))
    a = answer_scores(gm, tok, list(facts["prompt"]), list(facts["answer"]))
    b = answer_scores(loaded, tok, list(facts["prompt"]), list(facts["answer"]))
    assert a.equals(b)
    with open(folder / "grun.safetensors", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01")
    from unlearn_utils.models import CorruptCacheError

    with pytest.raises(CorruptCacheError):
        grun.load_grun(folder)
    with pytest.raises(FileNotFoundError, match="no GRUN module"):
        grun.load_grun(tmp_path)


def test_module_applies_to_a_quantized_base(tiny, trained):
    from unlearn_utils.quantize import load_bnb, quantize_model

    world, model, tok = tiny
    gm, _, _ = trained
    forget = list(world.facts("forget05", "trained")["prompt"])[:16]
    for base in (quantize_model(copy.deepcopy(model), bits=4, group_size=16), load_bnb(model, bits=4, quant_type="nf4")):
        q = attach(base, list(gm.grun))
        ids = torch.tensor([tok(forget[0])["input_ids"]])
        pos = torch.tensor([ids.shape[1] - 1])
        q.force_gate = 0.0
        assert torch.equal(q(input_ids=ids, prompt_positions=pos).logits, base(input_ids=ids).logits)
        q.force_gate = None
        edited = q(input_ids=ids, prompt_positions=pos).logits
        assert not torch.equal(edited, base(input_ids=ids).logits)
        assert q.gates().shape == (1, len(gm.grun[0].units))


def test_sequential_modules_add_up(tiny, trained):
    world, model, tok = tiny
    gm, _, _ = trained
    people = world.forget_people("forget10")
    first = set(world.forget_people("forget05"))
    second = world.facts("forget10", "trained").filter(lambda r: r["person"] not in first)
    retain = world.facts("retain", "trained", "forget10")
    gm2, _ = train_grun(model, tok, second, retain, modules=list(gm.grun), steps=30, lr=1e-2, progress=False)
    assert len(gm2.grun) == 2 and len(people) > len(first)
    assert all(not p.requires_grad for p in gm2.grun[0].parameters())
    assert torch.equal(gm2.grun[0].units["1"].R, gm.grun[0].units["1"].R)  # the first module did not move
    with torch.no_grad():
        gm2(input_ids=torch.tensor([[1, 5, 6]]))
    assert gm2.gates().shape[-1] == sum(len(m.units) for m in gm2.grun)


def test_representation_shift(tiny):
    world, model, tok = tiny
    prompts = list(world.facts("forget05", "trained")["prompt"])[:8]
    same = grun.representation_shift(model, model, tok, prompts)
    assert len(same) == model.config.num_hidden_layers and same.abs().max() < 1e-5
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.model.layers[-1].mlp.down_proj.weight.mul_(-1)
    moved = grun.representation_shift(model, other, tok, prompts)
    assert moved.iloc[-1] > 1e-3 and moved.iloc[0] < 1e-6


def test_hooks_live_only_during_a_call(tiny, trained):
    _, model, _ = tiny
    gm, _, _ = trained
    with torch.no_grad():
        gm(input_ids=torch.tensor([[1, 5, 6]]))
    def ours(layer):  # transformers installs its own output-capturing hooks; only GRUN's must be gone
        return [h for h in layer._forward_hooks.values() if "GatedModel" in getattr(h, "__qualname__", "")]

    assert not any(ours(layer) for layer in model.model.layers)
    assert not any(ours(layer) for layer in copy.deepcopy(model).model.layers)


def test_sequential_unlearning_table(tiny):
    world, model, tok = tiny
    facts = world.facts("forget10", "trained")
    people = world.forget_people("forget10")
    sets = [facts.filter(lambda r, p=p: r["person"] == p) for p in people[:2]]
    gm, table = grun.sequential_unlearning(model, tok, sets, world.facts("retain", "trained", "forget10"),
                                           eval_sets={"retain": world.facts("retain", "trained", "forget10")},
                                           steps=5, progress=False)
    assert len(gm.grun) == 2 and list(table.index) == [1, 2]
    assert {"forget set 1", "forget set 2", "retain", "seconds"} <= set(table.columns)
    with pytest.raises(ValueError, match="at least one forget set"):
        grun.sequential_unlearning(model, tok, [], world.facts("retain", "trained"))


def test_cached_module_is_reused_only_for_the_same_data(tiny, tiny_config, monkeypatch):
    from unlearn_utils.evaluate import eval_data, trajectory_metrics

    world, model, tok = tiny
    forget, retain = world.facts("forget05", "trained"), world.facts("retain", "trained")
    metrics = trajectory_metrics(tok, eval_data(world, "forget05"))
    kw = dict(model_key=tiny_config.key(), steps=6, eval_fn=metrics, eval_every=3, log_name="e3", progress=False)
    first, log = grun.cached_train_grun(model, tok, forget, retain, **kw)
    assert list(log.dropna(subset=["forget_accuracy"]).step) == [0, 3, 6] and log.attrs["seconds"] > 0

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(grun, "train_grun", no_training)
    again, log2 = grun.cached_train_grun(model, tok, forget, retain, **kw)
    assert log2.attrs["seconds"] == pytest.approx(log.attrs["seconds"])
    assert log2.attrs["trainable_parameters"] == first.grun[0].n_parameters()
    prompts = list(forget["prompt"])[:8]
    assert (grun.gate_values(first, tok, prompts)["gate"] == grun.gate_values(again, tok, prompts)["gate"]).all()
    # without a trajectory, any cached run of the same module will do
    grun.cached_train_grun(model, tok, forget, retain, model_key=tiny_config.key(), steps=6, progress=False)
    with pytest.raises(AssertionError, match="trained again"):   # other retain data: another module
        grun.cached_train_grun(model, tok, forget, retain.select(range(50)), model_key=tiny_config.key(), steps=6,
                               progress=False)


def test_sequential_unlearning_is_cached_per_model_data_and_settings(tiny, tiny_config, monkeypatch):
    world, model, tok = tiny
    facts = world.facts("forget10", "trained")
    sets = [facts.filter(lambda r, p=p: r["person"] == p) for p in world.forget_people("forget10")[:2]]
    retain = world.facts("retain", "trained", "forget10")
    kw = dict(eval_sets={"retain": retain}, model_key=tiny_config.key(), steps=4, progress=False)
    gm, table = grun.sequential_unlearning(model, tok, sets, retain, **kw)

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(grun, "train_grun", no_training)
    again, table2 = grun.sequential_unlearning(model, tok, sets, retain, **kw)
    pd.testing.assert_frame_equal(table, table2)
    prompts = list(sets[0]["prompt"])
    assert len(again.grun) == 2
    assert (grun.gate_values(gm, tok, prompts)["gate"] == grun.gate_values(again, tok, prompts)["gate"]).all()
    with pytest.raises(AssertionError, match="trained again"):  # other settings: trained anew
        grun.sequential_unlearning(model, tok, sets, retain, **{**kw, "steps": 5})
    with pytest.raises(AssertionError, match="trained again"):  # other forget sets: trained anew
        grun.sequential_unlearning(model, tok, sets[::-1], retain, **kw)


def test_npo_reusing_reference_values_changes_no_number(tiny, reference_reuse):
    """GRUN with NPO keeps each forget example's reference NLL; recomputing it at every step gives the same module."""
    world, model, tok = tiny
    forget = world.facts("forget10", "trained").select(range(12))
    retain = world.facts("retain", "trained", "forget10").select(range(80))
    kept, fresh, forwards = reference_reuse(lambda: train_grun(model, tok, forget, retain, forget_loss="npo", steps=15,
                                                               batch_size=8, progress=False)[0])
    assert forwards[False] < forwards[True] == 15, "reference values were reused"
    for (name, a), b in zip(kept.grun.state_dict().items(), fresh.grun.state_dict().values()):
        assert torch.equal(a, b), name


def test_training_mode_leaves_the_frozen_base_in_eval_mode(tiny):
    world, model, tok = tiny
    gm = GatedModel(model, GRUN.for_model(model))
    gm.train()
    assert gm.grun.training and not model.training, "only the modules train; the base keeps dropout off"
    gm.eval()
    assert not gm.grun.training and not model.training
