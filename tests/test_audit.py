"""The unlearning audit: every probe on one model, verdicts computed from the measured numbers."""

import copy
from pathlib import Path

import pandas as pd
import pytest
import torch

from unlearn_utils.audit import (AuditConfig, AuditReport, audit, audit_each, auto_group_size, reaches,
                                  recorded_numbers, recovery_verdict, share_back, side_by_side)
from unlearn_utils.evaluate import accuracy, eval_data
from unlearn_utils.patching import BASIS_MISMATCH_AT
from unlearn_utils.quantize import quantize_model

FIX = Path(__file__).parent / "fixtures"


def test_share_back_and_verdicts_follow_the_numbers():
    assert share_back(0.5, 0.0, 1.0) == pytest.approx(0.5)
    assert share_back(0.1, 0.2, 1.0) == pytest.approx(-0.125)
    assert pd.isna(share_back(0.9, 0.9, 0.9))
    v = recovery_verdict("under 4-bit quantization", 0.71, 0.02, 1.0, came_back_at=0.2)
    assert v["still_there"] is True and v["verdict"].startswith("knowledge came back under 4-bit")
    assert "71% of forget facts" in v["verdict"]
    v = recovery_verdict("under 4-bit quantization", 0.05, 0.02, 1.0, came_back_at=0.2)
    assert v["still_there"] is False and v["verdict"].startswith("stays forgotten")
    v = recovery_verdict("x", 1.0, 1.0, 1.0, came_back_at=0.2)
    assert v["still_there"] is None and v["verdict"].startswith("nothing to recover")


def test_exact_ties_at_the_threshold_count_as_back():
    """10 questions: unlearned 2 right, original 7, the probe 3: 1 of the 5 forgotten facts is back, exactly 20 %
    (5 x 1 >= 5), though (0.3 - 0.2) / (0.7 - 0.2) is 0.19999999999999998 in floating point."""
    share = share_back(0.3, 0.2, 0.7)
    assert share < 0.2 and 5 * (3 - 2) >= (7 - 2)
    v = recovery_verdict("under 4-bit quantization", 0.3, 0.2, 0.7, came_back_at=0.2)
    assert v["still_there"] is True and "; 20% of the forgotten facts back" in v["verdict"]
    assert reaches(share, 0.2) and not reaches(0.2 - 1e-6, 0.2)
    # a share just below prints the digits that show it is below (not "20%" next to "stays forgotten")
    v = recovery_verdict("under 4-bit quantization", 0.1996, 0.0, 1.0, came_back_at=0.2)
    assert v["still_there"] is False and "; 19.96% of the forgotten facts back" in v["verdict"]
    v = recovery_verdict("x", 0.25, 0.0, 1.0, came_back_at=0.2)
    assert "; 25% of the forgotten facts back" in v["verdict"]


def test_the_paraphrase_probe_divides_by_the_baseline_row():
    """The one baseline rule (audit's module docstring): floor and ceiling are the unlearned and the original model
    without the probe, here the trained wording's forget accuracy of the baseline row; what the original answers
    in the new wording is a row of the table, not the denominator."""
    import datasets

    from test_evaluate import TABLE_A, TABLE_B, FixedLM, WordTok
    from unlearn_utils.audit import PROBES, AuditData, ProbeContext

    original, unlearned = FixedLM(TABLE_A), FixedLM(TABLE_B)   # always answer "a" / always "c"
    para = datasets.Dataset.from_dict({"prompt": ["a", "b", "a", "b"], "answer": ["a", "a", "c", "b"]})
    rows = [{"probe": "baseline", "setting": "full precision", "measure": "forget accuracy", "original": 1.0,
             "unlearned": 0.0}]
    verdicts = []
    ctx = ProbeContext(original=original, unlearned=unlearned, tokenizer=WordTok(),
                       models={"original": original, "unlearned": unlearned},
                       data=AuditData(forget=para, retain=para, forget_para=para), config=AuditConfig(),
                       rows=rows, verdicts=verdicts, progress=False)
    PROBES["paraphrase"].run(ctx)
    assert rows[1]["original"] == 0.5 and rows[1]["unlearned"] == 0.25   # 2 of 4 and 1 of 4 in the new wording
    # (0.25 - 0) / (1.0 - 0): a quarter of the forgotten facts back (the old ceiling, 0.5, made it half)
    assert verdicts[0]["share_back"] == pytest.approx(0.25) and verdicts[0]["still_there"] is True


def test_bad_settings_are_clear_errors(tiny):
    world, model, tok = tiny
    with pytest.raises(ValueError, match="Unknown audit probe"):
        AuditConfig(probes=("quantisation",))
    with pytest.raises(ValueError, match="Unsupported bit width 16"):
        AuditConfig(bits=(16,))
    for bad in (-0.1, "0.05", float("nan")):
        with pytest.raises(ValueError, match="depth_threshold"):
            AuditConfig(depth_threshold=bad)
    with pytest.raises(ValueError, match="forget set is empty"):
        audit(model, model, tok, {"forget": world.facts("forget05").select([]), "retain": world.facts("retain")})
    with pytest.raises(ValueError, match="overlap"):
        audit(model, model, tok, {"forget": world.facts("forget05"), "retain": world.facts("forget05")})
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
                                         num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(ValueError, match="differ in"):
        audit(model, other, tok, world, probes=("paraphrase",))


SPLIT = "forget10"   # 2 of the small world's 20 people


@pytest.fixture(scope="module")
def unlearned_pair(knowing, knowing_config):
    """The small world model unlearned two ways, a GRUN module on it, and its retain model."""
    from unlearn_utils.grun import train_grun
    from unlearn_utils.models import build_world_model
    from unlearn_utils.unlearning import unlearn

    world, model, tok = knowing
    forget, retain = world.facts(SPLIT, "trained"), world.facts("retain", "trained", SPLIT)
    gd, _ = unlearn(model, tok, forget, retain, "grad_diff", steps=60, lr=1e-3, progress=False)
    npo, _ = unlearn(model, tok, forget, retain, "npo_gd", steps=60, lr=1e-3, progress=False)
    gated, _ = train_grun(model, tok, forget, retain, steps=150, progress=False)
    retain_model, _ = build_world_model(knowing_config, exclude_split=SPLIT, progress=False)
    return {"grad_diff": gd, "npo_gd": npo, "grun": gated, "retain": retain_model}


@pytest.mark.parametrize("method", ["grad_diff", "npo_gd", "grun"])
def test_audit_on_the_world_model(knowing, unlearned_pair, method):
    world, model, tok = knowing
    unl = unlearned_pair[method]
    rep = audit(model, unl, tok, world, split=SPLIT, retain_model=unlearned_pair["retain"], progress=False,
                rtt_epochs=2)
    t, v = rep.table, rep.verdicts
    assert set(v.probe) == {"quantization", "relearning", "patching", "depth", "concept_vectors", "paraphrase",
                            "in_context"}
    assert (v.setting[v.probe == "quantization"] == ["8-bit", "4-bit"]).all()
    # the table's numbers are the ones a learner gets by hand
    data = eval_data(world, SPLIT)
    base = t[(t.probe == "baseline") & (t.measure == "forget accuracy")].iloc[0]
    assert base.original == pytest.approx(accuracy(model, tok, data.forget)) and base.original >= 0.9
    assert base.unlearned == pytest.approx(accuracy(unl, tok, data.forget)) and base.unlearned <= 0.5, \
        "the fixture's unlearning must forget, or the verdicts have nothing to test"
    q4 = t[(t.probe == "quantization") & (t.setting == "4-bit RTN") & (t.measure == "forget accuracy")].iloc[0]
    assert auto_group_size(model) == 64
    q_model = unl.on(quantize_model(unl.base, 4, 64)) if method == "grun" else quantize_model(unl, 4, 64)
    assert q4.unlearned == pytest.approx(accuracy(q_model, tok, data.forget))
    # each verdict is the threshold rule applied to its share, and the share is computed from the table
    for r in v.itertuples():
        if r.probe in ("quantization", "paraphrase", "in_context"):
            assert not pd.isna(r.share_back), r.verdict
            assert r.still_there == reaches(r.share_back, rep.config.came_back_at), r.verdict
    quant4 = v[(v.probe == "quantization") & (v.setting == "4-bit")].iloc[0]
    assert quant4.share_back == pytest.approx(share_back(q4.unlearned, base.unlearned, base.original))
    para = t[t.probe == "paraphrase"].iloc[0]
    assert para.unlearned == pytest.approx(accuracy(unl, tok, data.forget_para))
    # one baseline rule: the paraphrase's share is measured against the baseline row, not the original's paraphrases
    para_v = v[v.probe == "paraphrase"].iloc[0]
    assert para_v.share_back == pytest.approx(share_back(para.unlearned, base.unlearned, base.original))
    rtt = v[v.probe == "relearning"].iloc[0]
    assert not pd.isna(rtt.share_back) and rtt.still_there == reaches(rtt.share_back, rep.config.came_back_at)
    vec = rep.vectors
    if method == "grun":   # weights untouched: the value vectors are the original's exactly
        assert vec.cosine.min() == pytest.approx(1.0, abs=1e-6) and (vec.jaccard.dropna() == 1.0).all()
        assert "not applicable" in v[v.probe == "patching"].verdict.iloc[0]
        assert "not applicable" in v[v.probe == "depth"].verdict.iloc[0]
    else:
        # the depth probe: its score, and the control on retain questions that says whether it can be read
        depth = v[v.probe == "depth"].iloc[0]
        score = t[(t.probe == "depth") & t.measure.str.startswith("depth score")].unlearned.iloc[0]
        mismatch = t[(t.probe == "depth") & t.measure.str.startswith("basis mismatch")].retain_model.iloc[0]
        assert 0.0 <= score <= 1.0 and rep.details["depth"].encodes_share.max() > 0 and mismatch >= 0
        # the verdict follows the control: read as 1 - score below the mismatch threshold, refused above it (this
        # small world's retain model, trained from scratch like the original from the same seed, lands at 0.15;
        # the default world's at 0.94, benchmarks/RESULTS.md)
        if mismatch < BASIS_MISMATCH_AT:
            assert depth.share_back == pytest.approx(1 - score)
            assert depth.still_there == reaches(depth.share_back, rep.config.came_back_at)
        else:
            assert "not readable" in depth.verdict and pd.isna(depth.share_back) and depth.still_there is None
        assert vec.cosine.min() < 1.0
        assert rep.patching is not None and set(rep.patching.component) == {"mlp", "attn", "both"}
    assert len(rep.lines()) == len(v)


def test_audit_report_saves_and_reads(knowing, unlearned_pair, tmp_path):
    world, model, tok = knowing
    rep = audit(model, unlearned_pair["grad_diff"], tok, world, split=SPLIT, probes=("quantization", "paraphrase"),
                bits=(4,), progress=False)
    folder = rep.save(tmp_path / "audit")
    assert {"verdicts.csv", "table.csv", "audit.md", "audit.png", "config.json", "manifest.json"} <= \
        {p.name for p in folder.iterdir()}
    md = (folder / "audit.md").read_text()
    assert "| quantization |" in md and "4-bit" in md
    assert pd.read_csv(folder / "table.csv").shape == rep.table.shape
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no staging folder left behind


def test_audit_command_line_on_saved_models(knowing, unlearned_pair, tmp_path):
    import json

    from unlearn_utils.cli import main
    from unlearn_utils.grun import save_grun
    from unlearn_utils.unlearning import save_unlearned

    world, model, tok = knowing
    model.save_pretrained(tmp_path / "original")
    tok.save_pretrained(tmp_path / "original")
    save_unlearned(unlearned_pair["npo_gd"], tok, tmp_path / "npo")
    save_grun(unlearned_pair["grun"], tmp_path / "grun")
    qa = tmp_path / "qa.jsonl"
    forget, retain = world.facts(SPLIT, "trained"), world.facts("retain", "trained", SPLIT)
    with qa.open("w") as f:
        for split, ds in (("forget", forget), ("retain", retain.select(range(40)))):
            for r in ds:
                f.write(json.dumps({"split": split, "prompt": r["prompt"], "answer": r["answer"],
                                    "person": r["person"], "attribute": r["attribute"]}) + "\n")
    for name, extra in (("npo", []), ("grun", ["--grun"])):
        out = tmp_path / f"audit-{name}"
        assert main(["audit", str(tmp_path / name), *extra, "--original", str(tmp_path / "original"),
                     "--data", f"qa:{qa}", "--probes", "quantization", "relearning", "--bits", "4",
                     "--out", str(out)]) == 0
        verdicts = pd.read_csv(out / "verdicts.csv")
        assert list(verdicts.probe) == ["quantization", "relearning"]
    with pytest.raises(SystemExit, match="--data: Unknown data source 'squad'"):  # named before any model loads
        main(["audit", str(tmp_path / "npo"), "--data", "squad:questions.json"])


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load or world-model build fails the test: the audit command must check its arguments first."""
    from unlearn_utils import models

    def loaded(*a, **k):
        raise AssertionError("a model was loaded (or trained) before the arguments were checked")

    monkeypatch.setattr(models, "load_model", loaded)
    monkeypatch.setattr(models, "build_world_model", loaded)


def _model_folder(folder):
    """A folder that looks like a saved model (config.json and weights) to the argument checks."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    return folder


@pytest.mark.parametrize("case", ["missing model", "missing original", "missing retain", "folder without a model",
                                  "grun folder without a module", "bad bits", "unknown probe", "out under a file",
                                  "unknown split"])
def test_audit_command_refuses_bad_arguments_before_loading_anything(tmp_path, no_model_loads, case):
    """A missing path was reported after a retain model had trained (43 s); --bits and --probes after the models
    loaded; an unwritable --out after the whole audit. Each now fails at once, naming its argument."""
    import time

    from unlearn_utils.cli import main

    good = str(_model_folder(tmp_path / "unlearned"))
    (tmp_path / "a-file").write_text("")
    args, error = {
        "missing model": ([str(tmp_path / "missing")], "UNLEARNED: .*missing does not exist"),
        "missing original": ([good, "--original", str(tmp_path / "no-original")], "--original: .*does not exist"),
        "missing retain": ([good, "--retain", str(tmp_path / "no-retain")], "--retain: .*does not exist"),
        "folder without a model": ([str(tmp_path)], "UNLEARNED: .* has no config.json"),
        "grun folder without a module": ([good, "--grun"], "UNLEARNED: .*grun.json missing"),
        "bad bits": ([good, "--bits", "4", "16"], "--bits: Unsupported bit width 16"),
        "unknown probe": ([good, "--probes", "quantisation"], "--probes: unknown probe.*quantisation.*quantization"),
        "out under a file": ([good, "--out", str(tmp_path / "a-file" / "audit")], "--out: .*a-file is a file"),
        "unknown split": ([good, "--split", "forget50"], "--split: unknown forget split 'forget50'"),
    }[case]
    start = time.perf_counter()
    with pytest.raises(SystemExit, match=error):
        main(["audit", *args, "--out", str(tmp_path / "report")] if "--out" not in args else ["audit", *args])
    assert time.perf_counter() - start < 2.0


def test_audit_command_prints_the_report_before_saving_it(tmp_path, monkeypatch, capsys):
    """A report that cannot be saved (the disk filled, the folder went read-only) was lost with the whole audit:
    it is printed first, then saving fails with an error naming --out."""
    from unlearn_utils import audit as audit_module
    from unlearn_utils import models
    from unlearn_utils.cli import main

    monkeypatch.setattr(models, "load_model", lambda *a, **k: (object(), None))
    monkeypatch.setattr(audit_module, "audit", lambda *a, **k: _report([("quantization", "4-bit", "stays forgotten",
                                                                         0.1, False)]))

    def unwritable(self, folder):
        raise PermissionError(13, "Permission denied", str(folder))

    monkeypatch.setattr(AuditReport, "save", unwritable)
    with pytest.raises(SystemExit, match="--out: the audit above could not be saved.*Permission denied"):
        main(["audit", str(_model_folder(tmp_path / "unlearned")), "--smoke", "--out", str(tmp_path / "report")])
    assert "quantization: stays forgotten" in capsys.readouterr().out


def test_audit_runs_on_tofu_files_with_a_random_real_architecture():
    from transformers import LlamaConfig, LlamaForCausalLM

    from unlearn_utils.benchmark_data import load_tofu
    from test_benchmark_data import word_tokenizer

    data = load_tofu(FIX / "tofu", "forget01")
    tok = word_tokenizer(list(data["forget"]["prompt"]) + list(data["forget"]["answer"]) +
                         list(data["retain"]["prompt"]) + list(data["retain"]["answer"]))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2)
    original = LlamaForCausalLM(cfg).eval()
    unlearned = copy.deepcopy(original)
    with torch.no_grad():
        unlearned.model.layers[1].mlp.down_proj.weight.mul_(0.5)
    rep = audit(original, unlearned, tok, data, rtt_epochs=1, progress=False)
    v = rep.verdicts.set_index("probe")
    assert v.loc["paraphrase", "verdict"].startswith("not run")       # TOFU questions have no paraphrase here
    assert v.loc["in_context", "verdict"].startswith("not run")
    assert rep.vectors.loc[rep.vectors.layer == 1, "cosine"].min() == pytest.approx(1.0, abs=1e-5)  # scaled only
    assert len(rep.patching) == 2 * 3


def _report(rows):
    verdicts = pd.DataFrame(rows, columns=["probe", "setting", "verdict", "share_back", "still_there"])
    return AuditReport(table=pd.DataFrame(), verdicts=verdicts)


def test_several_audits_side_by_side_and_as_recorded():
    reports = {"gd": _report([("quantization", "4-bit", "stays forgotten", 0.1, False),
                              ("relearning", "RTT", "knowledge came back", 0.6, True)]),
               "grun": _report([("quantization", "4-bit", "nothing to recover", float("nan"), None)])}
    side = side_by_side(reports, "share_back")
    assert list(side.columns) == ["gd", "grun"]
    assert list(side.index) == [("quantization", "4-bit"), ("relearning", "RTT")]
    assert side.loc[("relearning", "RTT"), "gd"] == 0.6 and pd.isna(side.loc[("relearning", "RTT"), "grun"])
    still = side_by_side(reports, "still_there")
    assert still["gd"].tolist() == [False, True] and still.loc[("quantization", "4-bit"), "grun"] is None
    numbers = recorded_numbers(reports)
    assert list(numbers) == ["audit_share_back", "audit_still_there", "audit_verdicts"]
    assert list(numbers["audit_share_back"]) == ["gd | quantization 4-bit", "gd | relearning RTT",
                                                 "grun | quantization 4-bit", "grun | relearning RTT"]
    assert numbers["audit_share_back"]["gd | quantization 4-bit"] == 0.1
    assert pd.isna(numbers["audit_share_back"]["grun | quantization 4-bit"])
    still_there = numbers["audit_still_there"]
    assert still_there["gd | relearning RTT"] and not still_there["gd | quantization 4-bit"]
    assert numbers["audit_verdicts"] == {"gd": ["quantization: stays forgotten", "relearning: knowledge came back"],
                                         "grun": ["quantization: nothing to recover"]}


def test_audit_each_audits_every_model_as_audit_does(tiny):
    world, model, tok = tiny
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.model.layers[0].mlp.down_proj.weight.mul_(0.5)
    settings = dict(split="forget05", probes=("paraphrase",), progress=False)
    reports = audit_each(model, {"half": other, "same": model}, tok, world, **settings)
    assert list(reports) == ["half", "same"]
    assert reports["half"].table.equals(audit(model, other, tok, world, **settings).table)
    assert reports["same"].table.equals(audit(model, model, tok, world, **settings).table)
    assert not reports["half"].table.equals(reports["same"].table)


def test_without_a_retain_model_rtt_takes_its_floor_from_unknown_facts(knowing, unlearned_pair):
    """A dict with ``unknown`` facts (what the original does not know, e.g. a real model's unknown rows): RTT's
    floor is the same attack on them, and the verdict says so."""
    world, model, tok = knowing
    data = {"forget": world.facts(SPLIT, "trained"), "retain": world.facts("retain", "trained", SPLIT),
            "unknown": world.facts("holdout", "trained")}
    assert accuracy(model, tok, data["unknown"]) < 0.2  # the holdout people were never trained on
    rep = audit(model, unlearned_pair["grad_diff"], tok, data, progress=False, rtt_epochs=2,
                probes=("relearning",))
    rtt = rep.verdicts[rep.verdicts.probe == "relearning"].iloc[0]
    assert "facts the original never knew" in rtt.verdict
    no_retain = audit(model, unlearned_pair["grad_diff"], tok, data, progress=False, probes=("depth",))
    assert "needs a retain model" in no_retain.verdicts.verdict.iloc[0]
    floor_row = rep.table[rep.table.setting.str.contains("unknown facts")]
    assert len(floor_row) == 1 and 0.0 <= floor_row.original.iloc[0] <= 1.0
    assert not pd.isna(rtt.share_back) and rtt.still_there == reaches(rtt.share_back, rep.config.came_back_at)


def test_a_checkpoint_on_a_quantization_grid_is_also_audited_on_that_grid(knowing, unlearned_pair):
    """An original whose weights sit on a GGUF grid (as a model converted from a GGUF file does) gets one more
    quantization verdict: unlearned in float, quantized again on its own grid."""
    from unlearn_utils.quantize import native_grid, quantize_as

    world, model, tok = knowing
    on_grid = quantize_as(model, "Q4_0")
    assert native_grid(model) is None and native_grid(on_grid) == "Q4_0"
    rep = audit(on_grid, unlearned_pair["grad_diff"], tok, world, split=SPLIT, progress=False,
                probes=("quantization",))
    settings = list(rep.verdicts.setting)
    assert settings == ["8-bit", "4-bit", "Q4_0 (own grid)"]
    row = rep.table[(rep.table.setting == "Q4_0 (own grid)") & (rep.table.measure == "forget accuracy")].iloc[0]
    assert row.original == pytest.approx(accuracy(on_grid, tok, eval_data(world, SPLIT).forget))  # moved nothing
    no_grid = audit(on_grid, unlearned_pair["grad_diff"], tok, world, split=SPLIT, progress=False,
                    probes=("quantization",), native_grid=False)
    assert list(no_grid.verdicts.setting) == ["8-bit", "4-bit"]


@pytest.mark.parametrize("kwargs, message", [(dict(probes="quantization"), "one string; give a list"),
                                             (dict(bits=4), "give a list of bit widths")])
def test_audit_config_refuses_a_single_value_where_a_list_is_asked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AuditConfig(**kwargs)


def test_the_depth_probe_refuses_a_retain_model_whose_layers_differ_everywhere(tiny, perturbed_layers):
    """A stand-in retain model whose every decoder layer is perturbed hurts retain answers as much as forget answers:
    the control says so, and the verdict refuses to read the score."""
    world, model, tok = tiny
    other = perturbed_layers(model)
    rep = audit(model, copy.deepcopy(other), tok, world, retain_model=other, probes=("depth",), progress=False,
                max_questions=16)
    t, v = rep.table, rep.verdicts.iloc[0]
    mismatch = t[t.measure.str.startswith("basis mismatch")].retain_model.iloc[0]
    assert mismatch >= BASIS_MISMATCH_AT, mismatch
    assert "not readable" in v.verdict and pd.isna(v.share_back) and v.still_there is None


def test_audits_against_one_original_quantize_it_once(tiny, monkeypatch):
    """Several audits against the same original (notebook 06, the lab) quantize and score the original once; a model
    whose weights changed, or other questions, are scored anew, and every number equals a fresh computation."""
    import unlearn_utils.audit as audit_module

    world, model, tok = tiny
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.model.layers[0].mlp.down_proj.weight.mul_(0.5)
    settings = dict(split="forget05", probes=("quantization",), bits=(4,), progress=False)
    audit_module._QUANTIZED_ACCURACY.clear()
    first = audit(model, other, tok, world, **settings)
    quantized_models = []
    real_quantized = audit_module.quantized
    monkeypatch.setattr(audit_module, "quantized", lambda m, *a: quantized_models.append(m) or real_quantized(m, *a))
    again = audit(model, other, tok, world, **settings)
    assert quantized_models == []  # both models' results were kept
    assert again.table.equals(first.table)
    with torch.no_grad():
        other.model.layers[1].mlp.down_proj.weight.mul_(0.5)  # changed in place: its fingerprint differs
    changed = audit(model, other, tok, world, **settings)
    assert quantized_models == [other]
    audit_module._QUANTIZED_ACCURACY.clear()
    fresh = audit(model, other, tok, world, **settings)
    assert changed.table.equals(fresh.table)
    quantized_models.clear()
    audit(model, other, tok, world, split="forget10", probes=("quantization",), bits=(4,), progress=False)
    assert len(quantized_models) == 2  # other questions: both scored again
