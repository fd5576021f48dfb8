"""GRUN: the gated LoReFT module, its training, saving and application to other bases."""

import copy

import pandas as pd
import pytest
import torch

from unlearn_utils import grun
from unlearn_utils.evaluate import accuracy, answer_scores
from unlearn_utils.grun import GatedLoReFT, GatedModel, GRUN, attach, loreft_edit, train_grun


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


@pytest.mark.parametrize("setting, value", [
    ("lr", float("inf")), ("lr", float("nan")), ("retain_weight", float("nan")), ("gate_weight", float("inf")),
    ("beta", 0.0), ("batch_size", 0), ("batch_size", -1), ("batch_size", 8.0), ("steps", True),
    ("layers", "12"), ("layers", 3)])
def test_impossible_settings_are_refused_before_training(tiny, monkeypatch, setting, value):
    """lr=inf trained a NaN module; batch_size=0 failed deep in padding; layers="12" meant layers 1 and 2. Each is
    a ValueError naming the setting, before any module is built, trained or looked up in the cache."""
    world, model, tok = tiny
    forget, retain = world.facts("forget05", "trained"), world.facts("retain", "trained")

    def started(*a, **k):
        raise AssertionError("work started before the settings were checked")

    monkeypatch.setattr(grun, "check_splits", started)
    monkeypatch.setattr(grun, "cached", started)
    match = rf"{setting}.* must be .*got .*(e\.g\.|Use|None)"
    with pytest.raises(ValueError, match=match):
        train_grun(model, tok, forget, retain, progress=False, **{setting: value})
    with pytest.raises(ValueError, match=match):
        grun.cached_train_grun(model, tok, forget, retain, model_key="any", progress=False, **{setting: value})
    with pytest.raises(ValueError, match=match):
        grun.GRUNConfig(**{setting: value})


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
    assert log.attrs["trainable_parameters"] == module.n_parameters() < 0.05 * sum(
        p.numel() for p in model.parameters())


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
    assert (folder / "grun.safetensors").stat().st_size < 4 * gm.grun[0].n_parameters() + 4096
    loaded = grun.load_grun(folder, base=copy.deepcopy(model))
    a = answer_scores(gm, tok, list(facts["prompt"]), list(facts["answer"]))
    b = answer_scores(loaded, tok, list(facts["prompt"]), list(facts["answer"]))
    assert a.equals(b)
    with open(folder / "grun.safetensors", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01")
    from unlearn_utils.cache import CorruptCacheError

    with pytest.raises(CorruptCacheError):
        grun.load_grun_modules(folder)
    with pytest.raises(CorruptCacheError):
        grun.load_grun(folder, base=model)
    with pytest.raises(ValueError, match="pass base="):
        grun.load_grun(folder, base=None)
    with pytest.raises(FileNotFoundError, match="no GRUN module"):
        grun.load_grun_modules(tmp_path)


def test_module_applies_to_a_quantized_base(tiny, trained):
    from unlearn_utils.quantize import load_bnb, quantize_model

    world, model, tok = tiny
    gm, _, _ = trained
    forget = list(world.facts("forget05", "trained")["prompt"])[:16]
    for base in (quantize_model(copy.deepcopy(model), bits=4, group_size=16),
                 load_bnb(model, bits=4, quant_type="nf4")):
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


# ----------------------------------------------------------------------------------------------
# Notebook 04's tables: sequential forget sets, GRUN vs vanilla, the gate, quantization, saving
# ----------------------------------------------------------------------------------------------
def _rows(**columns):
    import datasets

    return datasets.Dataset.from_dict(columns)


def test_forget_sets_by_person_keeps_each_person_in_one_set():
    facts = _rows(prompt=[f"q{i}" for i in range(6)], answer=["x"] * 6, person=["d", "a", "b", "a", "c", "d"])
    sets = grun.forget_sets_by_person(facts, 3)  # sorted people a, b, c, d dealt out: [a, d], [b], [c]
    assert [sorted(set(s["person"])) for s in sets] == [["a", "d"], ["b"], ["c"]]
    assert [s["prompt"] for s in sets] == [["q0", "q1", "q3", "q5"], ["q2"], ["q4"]]
    given = grun.forget_sets_by_person(facts, 2, people=["c", "b", "a", "d"])  # the given order: [c, a], [b, d]
    assert [sorted(set(s["person"])) for s in given] == [["a", "c"], ["b", "d"]]
    assert len(grun.forget_sets_by_person(facts, 10)) == 4  # never more sets than people
    partial = _rows(prompt=["p0", "p1", "p2"], answer=["x"] * 3, person=["a", None, "a"])
    assert [s["prompt"] for s in grun.forget_sets_by_person(partial, 2)] == [["p0", "p2"], ["p1"]]  # rows alone
    unnamed = _rows(prompt=["p0", "p1", "p2"], answer=["x"] * 3)
    sets = grun.forget_sets_by_person(unnamed, 3)
    assert [s["prompt"] for s in sets] == [["p0"], ["p1"], ["p2"]] and sets[2]["person"] == ["2"]


def test_with_original_stage_adds_the_original_as_stage_0(tiny):
    world, model, tok = tiny
    facts = world.facts("forget10", "trained")
    sets = [facts.select(range(4)), facts.select(range(4, 10))]
    retain = world.facts("retain", "trained").select(range(12))
    table = pd.DataFrame({"stage": [2, 1], "seconds": [1.5, 2.5], "forget set 1": [0.0, 0.1],
                          "forget set 2": [0.2, 0.3], "retain": [0.9, 0.8]}).set_index("stage")
    out = grun.with_original_stage(table, model, tok, sets, {"retain": retain})
    assert list(out.index) == [0, 1, 2] and list(table.index) == [2, 1], "sorted copy; the input is untouched"
    assert out.loc[0, "forget set 1"] == accuracy(model, tok, sets[0])
    assert out.loc[0, "forget set 2"] == accuracy(model, tok, sets[1])
    assert out.loc[0, "retain"] == accuracy(model, tok, retain) and out.loc[0, "seconds"] == 0.0
    assert out.loc[2, "retain"] == 0.9


def test_parameter_counts_and_training_seconds(tiny):
    _, model, _ = tiny
    assert grun.parameter_count(torch.nn.Linear(3, 2)) == 8  # 3 x 2 weights + 2 biases
    log = pd.DataFrame({"step": [0]})
    log.attrs.update(seconds=10.0, eval_seconds=2.5, trainable_parameters=123)
    vanilla = torch.nn.Linear(3, 2)
    assert grun.trainable_parameters(vanilla, log) == 8, "vanilla unlearning trains every weight"
    assert grun.trainable_parameters(attach(model, GRUN.for_model(model)), log) == 123
    assert grun.training_seconds(log) == 7.5
    del log.attrs["eval_seconds"]  # a GRUN log: its seconds leave evaluation out already
    assert grun.training_seconds(log) == 10.0


def _trajectory(forget, retain, step=(0, 5, 10, 15), seconds=4.0, topics=None):
    log = pd.DataFrame({"step": list(step), "loss": [1.0] * len(step), "forget_accuracy": forget,
                        "retain_accuracy": retain, **({"topic_accuracy": topics} if topics is not None else {})})
    log.attrs.update(seconds=seconds, eval_seconds=1.0)
    return log


def test_equal_forget_table_reads_each_run_at_the_forget_level(tiny):
    from unlearn_utils.evaluate import EvalData, perplexity

    world, model, tok = tiny
    data = EvalData(forget=world.facts("forget05", "trained").select(range(8)),
                    retain=world.facts("retain", "trained").select(range(8)))
    runs = {"vanilla x": (model, _trajectory([0.9, 0.3, 0.04, 0.0], [0.9, 0.8, 0.7, 0.6], seconds=7.27)),
            "never gets there": (model, _trajectory([0.9, 0.5, 0.4, 0.3], [0.9, 0.8, 0.75, 0.7]))}
    table = grun.equal_forget_table(runs, tok, data, 0.05, original=model)
    assert list(table.index) == ["vanilla x", "never gets there", "original"]
    row = table.loc["vanilla x"]
    assert (row["step reached"], row["forget"], row["retain"]) == (10, 0.04, 0.7)  # the first step <= 0.05
    assert row["train seconds"] == 6.3 and row["trainable params"] == grun.parameter_count(model)  # 7.27 - 1.0
    assert table.loc["never gets there", "step reached"] == 15  # the last checkpoint
    assert row["final forget"] == accuracy(model, tok, data.forget) == table.loc["original", "forget"]
    assert pd.isna(row["topics"]) and pd.isna(row["final topics"]) and pd.isna(row["perplexity"])  # not in data
    assert table.loc["original", "trainable params"] == 0 and pd.isna(table.loc["original", "step reached"])
    texts = list(world.general_eval)[:4]
    with_text = grun.equal_forget_table(runs, tok, EvalData(forget=data.forget, retain=data.retain, utility=texts),
                                        0.05, original=model)
    assert with_text.loc["original", "perplexity"] == perplexity(model, tok, texts)


def test_gate_prompt_sets_and_test_prompts_follow_the_data():
    from unlearn_utils.evaluate import EvalData

    f, r = _rows(prompt=["f1", "f2"], answer=["a", "b"]), _rows(prompt=["r1"], answer=["c"])
    fp, rp = _rows(prompt=["F1"], answer=["a"]), _rows(prompt=["R1", "R2"], answer=["c", "d"])
    full = EvalData(forget=f, retain=r, forget_para=fp, retain_para=rp, holdout=r, topics=r)
    assert list(grun.gate_prompt_sets(full)) == ["forget (trained)", "forget (paraphrased)", "retain (paraphrased)",
                                                 "never-seen people", "topic questions"]
    assert grun.gate_test_prompts(full) == (["F1"], ["R1", "R2"], True)
    file = EvalData(forget=f, retain=r)  # a question file: trained prompts stand in
    assert list(grun.gate_prompt_sets(file)) == ["forget (trained)", "retain (trained)"]
    assert grun.gate_test_prompts(file) == (["f1", "f2"], ["r1"], False)
    assert grun.gate_test_prompts(EvalData(forget=f, retain=r, forget_para=fp)) == (["F1"], ["r1"], False)


def test_gate_means_and_coverage_table(tiny, trained):
    world, model, tok = tiny
    gm, _, _ = trained
    forget, retain = _attribute_split(world)
    means = grun.gate_means(gm, tok, {"forget": forget, "missing": None, "retain": retain})
    assert list(means) == ["forget", "retain"]
    assert means["forget"] == float(grun.gate_values(gm, tok, list(forget["prompt"]))["gate"].mean())
    topics = world.topics_dataset()
    wider, unseen = grun.retain_with_half_the_topics(retain, topics)
    names = sorted(set(topics["topic"]))
    assert set(unseen["topic"]) == set(names[1::2]) and wider.column_names == ["prompt", "answer"]
    seen_rows = [(p, a) for p, a, t in zip(topics["prompt"], topics["answer"], topics["topic"]) if t in names[::2]]
    assert list(zip(wider["prompt"], wider["answer"])) == list(zip(retain["prompt"], retain["answer"])) + seen_rows
    from unlearn_utils.evaluate import EvalData

    data = EvalData(forget=forget.select(range(8)), retain=retain.select(range(8)))
    table = grun.coverage_table({"gated": gm, "original": model}, tok, data, unseen)
    assert list(table.columns) == ["forget", "retain", "unseen topics", "gate on unseen topics"]
    assert table.loc["gated", "gate on unseen topics"] == grun.gate_means(gm, tok, {"u": unseen})["u"]
    assert pd.isna(table.loc["original", "gate on unseen topics"])
    assert table.loc["original", "unseen topics"] == accuracy(model, tok, unseen)
    assert table.loc["gated", "forget"] == accuracy(gm, tok, data.forget)


def test_rtn_4bit_is_the_quantized_base_with_the_module_kept(knowing):
    """quantized_4bit's RTN (audit.quantized at group size 64) gives the very weights and logits that
    quantize.quantize_model(base, 4) (its default group size 64) gives, for a plain and for a gated model."""
    from unlearn_utils.quantize import quantize_model

    _, model, _ = knowing
    gm = attach(model, GRUN.for_model(model))
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    assert grun.quantized_4bit(gm, "full precision") is gm
    by_hand = gm.on(quantize_model(gm.base, 4))
    q = grun.quantized_4bit(gm, "RTN 4-bit")
    assert isinstance(q, GatedModel) and q.grun[0] is gm.grun[0], "the module is kept"
    for a, b in zip(q.base.state_dict().values(), by_hand.base.state_dict().values()):
        assert torch.equal(a, b)
    with torch.no_grad():
        assert torch.equal(q(input_ids=ids).logits, by_hand(input_ids=ids).logits)
        assert torch.equal(grun.quantized_4bit(model, "RTN 4-bit")(input_ids=ids).logits,
                           quantize_model(model, 4)(input_ids=ids).logits)
        assert not torch.equal(q(input_ids=ids).logits, gm(input_ids=ids).logits)
    with pytest.raises(ValueError, match="Unknown quantization"):
        grun.quantized_4bit(model, "GPTQ")


def test_quantization_robustness_rows_and_gains(knowing, monkeypatch, capsys):
    from unlearn_utils.evaluate import EvalData

    world, model, tok = knowing
    data = EvalData(forget=world.facts("forget10", "trained").select(range(6)),
                    retain=world.facts("retain", "trained").select(range(6)))
    real = grun.quantized_4bit

    def no_bnb(m, how, device=None):
        if how == "bnb nf4":
            raise RuntimeError("no bitsandbytes here")
        return real(m, how, device)

    monkeypatch.setattr(grun, "quantized_4bit", no_bnb)
    robust = grun.quantization_robustness({"m": model}, tok, data)
    assert "bnb nf4 unavailable here (RuntimeError: no bitsandbytes here)" in capsys.readouterr().out
    assert list(robust["quantization"]) == ["full precision", "RTN 4-bit"]
    assert robust.loc[0, "forget"] == accuracy(model, tok, data.forget)
    assert robust.loc[1, "retain"] == accuracy(real(model, "RTN 4-bit"), tok, data.retain)
    assert robust["forget, paraphrased"].isna().all()  # the data has no paraphrases

    forget = pd.DataFrame({"full precision": [0.1, 0.0, 0.5], "RTN 4-bit": [0.4, 0.05, 0.5]},
                          index=["GRUN a", "GRUN b", "vanilla c"])
    assert grun.quantization_gains(forget, "GRUN") == pytest.approx({"GRUN a": 0.3, "GRUN b": 0.05})
    assert grun.quantization_gains(forget, "vanilla") == {"vanilla c": 0.0}
    assert grun.quantization_gains(forget[["full precision"]]) == {"GRUN a": 0.0, "GRUN b": 0.0, "vanilla c": 0.0}


def test_reload_roundtrip(tiny, trained):
    world, model, tok = tiny
    gm, _, _ = trained
    questions = world.facts("forget05", "trained")
    size_kb, same = grun.reload_roundtrip(gm, model, tok, questions)
    assert same is True and 4 * gm.grun[0].n_parameters() / 1024 < size_kb < 4 * gm.grun[0].n_parameters() / 1024 + 8
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.lm_head.weight.mul_(-1)
    assert grun.reload_roundtrip(gm, other, tok, questions)[1] is False, "onto another base: other scores"


def test_representation_shifts_and_last_layer_ratio(tiny):
    world, model, tok = tiny
    sets = {"a": world.facts("forget05", "trained").select(range(4)), "none": None,
            "b": world.facts("retain", "trained").select(range(4))}
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.model.layers[-1].mlp.down_proj.weight.mul_(-1)
    shift = grun.representation_shifts(model, other, tok, sets)
    assert list(shift.columns) == ["a", "b"] and len(shift) == model.config.num_hidden_layers
    assert shift["b"].equals(grun.representation_shift(model, other, tok, list(sets["b"]["prompt"])))
    table = pd.DataFrame({"forget prompts": [0.0, 0.3], "retain prompts": [0.0, 0.1]})
    assert grun.last_layer_ratio(table) == pytest.approx(3.0)
    assert grun.last_layer_ratio(table.assign(**{"retain prompts": [0.0, 0.0]})) == pytest.approx(0.3 / 1e-12)


# ----------------------------------------------------------------------------------------------
# Notebook 04 on a real model: schedules, categories, the checkpoint's own grid, what is left out
# ----------------------------------------------------------------------------------------------
def _session(world_model=True, smoke=False, data=None, **more):
    from types import SimpleNamespace

    return SimpleNamespace(on_world_model=world_model, smoke=smoke, smoke_steps=10 if world_model else 2, data=data,
                           on_world=data is None, **more)


def test_schedule_keeps_the_world_and_fits_a_real_model():
    world = grun.schedule(_session())
    assert (world["steps"], world["eval_every"], world["batch_size"], world["vanilla_steps"]) == (600, 50, 16, None)
    assert world["sequential_steps"] == 600, "the world's sequential stages train as long as the main run"
    assert grun.GRUNConfig().batch_size == world["batch_size"], "the world's batch is GRUN's default (same cache key)"
    smoke = grun.schedule(_session(smoke=True), steps=999)
    assert (smoke["steps"], smoke["eval_every"], smoke["vanilla_steps"]) == (20, 5, 10), "smoke ignores settings"
    real = grun.schedule(_session(world_model=False))
    assert (real["batch_size"], real["vanilla_steps"]) == (8, None) and real["steps"] < 100
    assert real["sequential_steps"] <= real["steps"] and real["steps"] % real["eval_every"] == 0
    assert grun.schedule(_session(world_model=False, smoke=True))["vanilla_steps"] == 2
    given = grun.schedule(_session(world_model=False), steps=30, eval_every=10, batch_size=4)
    assert (given["steps"], given["eval_every"], given["batch_size"]) == (30, 10, 4)


def test_forget_sets_by_category_keeps_each_category_whole_and_balances_sizes():
    cats = ["chem"] * 8 + ["measures"] * 4 + ["capitals"] * 3 + ["cities"] * 3 + ["languages"] * 3 + ["animals"] * 2 \
        + ["landmarks", "us"]
    facts = _rows(prompt=[f"q{i}" for i in range(len(cats))], answer=["x"] * len(cats), category=cats)
    sets = grun.forget_sets_by_category(facts, 3)
    assert [len(s) for s in sets] == [9, 8, 8]
    groups = [set(s["category"]) for s in sets]
    assert groups == [{"chem", "us"}, {"measures", "languages", "landmarks"}, {"capitals", "cities", "animals"}]
    assert sorted(p for s in sets for p in s["prompt"]) == sorted(facts["prompt"]), "every row once"
    assert len(grun.forget_sets_by_category(facts, 20)) == 8, "never more sets than categories"


def test_sequential_sets_use_categories_of_the_real_facts():
    from unlearn_utils.evaluate import EvalData

    forget = _rows(prompt=["a", "b", "c", "d"], answer=["x"] * 4, category=["k", "k", "m", "n"])
    retain = _rows(prompt=["r"], answer=["y"])
    s = _session(world_model=False, data={"forget": forget}, forget_set=forget, retain_set=retain,
                 eval_data=EvalData(forget=forget, retain=retain))
    sets, seq_retain, eval_sets = grun.sequential_sets(s, 2)
    assert [sorted(x["prompt"]) for x in sets] == [["a", "b"], ["c", "d"]]
    assert seq_retain is retain and list(eval_sets) == ["retain"]
    one = _rows(prompt=["a", "b"], answer=["x"] * 2, category=["k", "k"])  # a single category: row by row
    s.forget_set = one
    assert [x["prompt"] for x in grun.sequential_sets(s, 3)[0]] == [["a"], ["b"]]


def test_the_checkpoints_own_grid():
    from types import SimpleNamespace

    from unlearn_utils.quantize import quantize_model

    smol = SimpleNamespace(kit_name="smollm2-135m")
    assert grun.checkpoint_grid(smol) == "Q4_1"
    assert grun.quantizations_for(smol) == ("full precision", "GGUF Q4_1")
    assert grun.checkpoint_grid(SimpleNamespace()) is None and grun.checkpoint_grid(torch.nn.Linear(2, 2)) is None
    assert grun.quantizations_for(torch.nn.Linear(2, 2)) == grun.QUANTIZATIONS

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2)).eval()
    on_grid = grun.quantized_4bit(model, "GGUF Q4_1")
    again = grun.quantized_4bit(on_grid, "GGUF Q4_1")
    lin = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(on_grid.state_dict()[lin], model.state_dict()[lin])
    assert torch.equal(again.state_dict()[lin], on_grid.state_dict()[lin]), "weights on the grid stay there"
    rtn = quantize_model(model, 4, group_size=32, symmetric=False)  # the same grid, up to fp16 d and m
    assert (rtn.state_dict()[lin] - on_grid.state_dict()[lin]).abs().max() < 1e-2
    gm = attach(on_grid, GRUN.for_model(on_grid))
    q = grun.quantized_4bit(gm, "GGUF Q4_1")
    assert isinstance(q, GatedModel) and q.grun[0] is gm.grun[0] and q.base is not on_grid
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():  # a base already on its grid: quantizing it again changes nothing, so neither does GRUN
        assert torch.equal(q(input_ids=ids).logits, gm(input_ids=ids).logits)
    forget = pd.DataFrame({"full precision": [0.0, 0.1], "GGUF Q4_1": [0.0, 0.7], "RTN 4-bit": [0.5, 0.5]},
                          index=["GRUN a", "vanilla b"])
    assert grun.quantization_gains(forget, "vanilla", "GGUF Q4_1") == pytest.approx({"vanilla b": 0.6})
    assert grun.quantization_gains(forget, "GRUN") == {"GRUN a": 0.5}, "the world's RTN 4-bit by default"


def test_seconds_per_step_and_what_a_real_model_records():
    from unlearn_utils.evaluate import EvalData

    log = pd.DataFrame({"step": [0, 10, 20]})
    log.attrs.update(seconds=50.0, eval_seconds=10.0)
    glog = pd.DataFrame({"step": [0, 40]})
    glog.attrs.update(seconds=60.0)
    runs = {"vanilla": (None, log), "GRUN": (None, glog)}
    assert grun.seconds_per_step(runs) == {"vanilla": 2.0, "GRUN": 1.5}
    f = _rows(prompt=["f"], answer=["a"])
    assert grun.results_off_the_world(_session(), runs, 3, True) == {}, "the world's results stay as they were"
    real = _session(world_model=False, data={}, eval_data=EvalData(forget=f, retain=f))
    out = grun.results_off_the_world(real, runs, 1, False)
    assert out["seconds_per_step"] == {"vanilla": 2.0, "GRUN": 1.5}
    assert set(out["not_measured"]) == {"grun_keeps_topics", "gate_separates", "sequential_holds"}
    with_topics = _session(world_model=False, data={}, eval_data=EvalData(forget=f, retain=f, topics=f))
    assert "not_measured" not in grun.results_off_the_world(with_topics, runs, 3, True)


def test_unknown_facts_sample_and_gate_prompt_sets():
    from unlearn_utils.evaluate import EvalData

    unknown = _rows(prompt=[f"u{i}" for i in range(10)], answer=["x"] * 10)
    assert grun.unknown_facts(_session()) is None
    sample = grun.unknown_facts(_session(world_model=False, data={"unknown": unknown}), limit=4)
    assert len(sample) == 4 and sample["prompt"] == sorted(sample["prompt"], key=lambda p: int(p[1:]))
    assert sample["prompt"] == grun.unknown_facts(_session(data={"unknown": unknown}), limit=4)["prompt"]
    assert len(grun.unknown_facts(_session(data={"unknown": unknown}), limit=20)) == 10
    f = _rows(prompt=["f"], answer=["a"])
    sets = grun.gate_prompt_sets(EvalData(forget=f, retain=f, forget_para=f, retain_para=f), sample)
    assert list(sets) == ["forget (trained)", "forget (paraphrased)", "retain (paraphrased)", "unknown facts"]


def test_grun_models_on_one_base_share_its_gguf_copy(tiny, monkeypatch):
    from unlearn_utils.evaluate import EvalData

    world, model, tok = tiny
    data = EvalData(forget=world.facts("forget05", "trained").select(range(4)),
                    retain=world.facts("retain", "trained").select(range(4)))
    a, b = attach(model, GRUN.for_model(model, seed=1)), attach(model, GRUN.for_model(model, seed=2))
    calls, real = [], grun.quantized_4bit

    def counted(m, how, device=None):
        calls.append((type(m).__name__, how))
        return real(m, how, device)

    monkeypatch.setattr(grun, "quantized_4bit", counted)
    robust = grun.quantization_robustness({"GRUN a": a, "GRUN b": b, "plain": model}, tok, data,
                                          quantizations=("full precision", "GGUF Q4_1"))
    assert [c for c in calls if c[1] == "GGUF Q4_1"] == [("LlamaForCausalLM", "GGUF Q4_1")] * 2, \
        "one GGUF copy for both GRUN models, one for the plain model"
    row = robust[(robust["model"] == "GRUN b") & (robust["quantization"] == "GGUF Q4_1")].iloc[0]
    assert row["forget"] == accuracy(real(b, "GGUF Q4_1"), tok, data.forget)


def test_save_grun_refuses_non_finite_weights(trained, tmp_path):
    module = trained[0].grun[0]
    param = next(iter(module.parameters()))
    kept = param.detach().clone()
    with torch.no_grad():
        param.view(-1)[0] = float("inf")
    try:
        with pytest.raises(ValueError, match="holds NaN or infinite.*lower learning rate"):
            grun.save_grun(module, tmp_path / "broken")
    finally:
        with torch.no_grad():
            param.copy_(kept)
    assert list(tmp_path.iterdir()) == [], "nothing is written"
