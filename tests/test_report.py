"""The claims table is computed from the notebooks' numbers by each claim's rule."""

import json

import pytest

from unlearn_utils import report
from unlearn_utils.reproduce import main as reproduce_main


def _results(quant_gain=0.0, rtt_recovery=0.9, patch=0.7, restore=0.1):
    return {
        "02_patching_and_restoration": {"smoke": False, "summary": {
            "grad_diff": {"max patch mlp": patch, "max restore down_proj": restore, "best site": "patch both @ layer 4",
                          "best recovered acc": 0.5}}},
        "03_concept_vectors": {"smoke": False, "topic": "railways", "causal_ratio": 7.9, "table": {
            "original": {"cosine": 1.0, "target topic acc": 1.0, "unrelated topics acc": 0.96},  # not a method
            "grad_diff": {"cosine": 0.998, "target topic acc": 0.0, "unrelated topics acc": 0.1},
            "needle (noise)": {"cosine": 0.1, "target topic acc": 0.0, "unrelated topics acc": 0.8}},
            "verdicts": {"Needle forgets as much as the best fine-tuning method and keeps unrelated topics "
                         "better": True,
                         "fine-tuning still forgets the topic (accuracy <= 10%)": True}},
        "05_recovery_attacks": {"smoke": False, "quant_gain_4bit": {"grad_diff": quant_gain, "npo_gd": 0.0},
                                "quant_gain_small_lr": {"grad_diff, lr 3e-05": 0.004}, "rtt_floor": 0.1,
                                "rtt_ceiling": 1.0, "rtt": {"idk": {"recovery above floor": rtt_recovery},
                                                            "grad_diff": {"recovery above floor": -0.05}}},
        "04_grun": {"smoke": False, "retain_at_equal_forget": {"GRUN": 0.78, "vanilla": 0.74},
                    "topics_at_equal_forget": {"GRUN": 0.51, "vanilla": 0.94},
                    "quantization_gain": {"vanilla grad_diff": 0.0, "GRUN grad_diff": 0.0},
                    "verdicts": {"GRUN grad_diff keeps more retain accuracy than vanilla grad_diff at equal "
                                 "forget accuracy": True}},
    }


def _holds(rows, paper):
    return [r["holds"] for r in rows if r["paper"].startswith(paper)]


def test_verdicts_follow_the_numbers():
    rows = report.claims_table(_results())
    assert len(rows) == len(report.CLAIMS)
    assert _holds(rows, "Hong") == ["yes"] and _holds(rows, "Zhang") == ["no"] and _holds(rows, "Deeb") == ["yes"]
    assert _holds(rows, "ConceptVectors") == ["yes", "yes"] and _holds(rows, "GRUN") == ["no", "no"]
    flipped = report.claims_table(_results(quant_gain=0.3, rtt_recovery=0.2, patch=0.3))
    assert (_holds(flipped, "Zhang") == ["yes"] and _holds(flipped, "Deeb") == ["no"]
            and _holds(flipped, "Hong") == ["no"])
    assert "+0.300" in next(r["measured"] for r in flipped if r["paper"].startswith("Zhang"))


def test_missing_smoke_and_broken_results_are_said_so():
    res = _results()
    del res["02_patching_and_restoration"]
    res["03_concept_vectors"]["smoke"] = True
    del res["05_recovery_attacks"]["rtt"]
    rows = {r["paper"] + r["claim"][:10]: r["holds"] for r in report.claims_table(res)}
    assert "not run" in rows.values() and "not measured" in rows.values() and "unknown" in rows.values()


def test_write_summary(tmp_path):
    (tmp_path / "results").mkdir()
    for nb, r in _results().items():
        (tmp_path / "results" / f"{nb}.json").write_text(json.dumps(r))
    (tmp_path / "timings.json").write_text(json.dumps({"00_world_and_model": 60.0, "04_grun": 300.0}))
    md = report.write_summary(tmp_path).read_text()
    # "**360**" is the sum of the notebooks' times
    assert "| paper | claim | what this run measured | holds? |" in md and "**360**" in md
    html = (tmp_path / "summary.html").read_text()
    assert "<table>" in html and "Deeb &amp; Roger" in html


def test_reproduce_with_no_matching_notebook(tmp_path, capsys):
    assert reproduce_main(["--only", "99_nothing", "--out", str(tmp_path)]) == 1
    with pytest.raises(SystemExit):
        reproduce_main(["--no-such-option"])


def test_a_topic_the_original_never_knew_is_not_measured():
    res = _results()
    res["03_concept_vectors"]["table"]["original"]["target topic acc"] = 0.1
    res["03_concept_vectors"]["verdicts"] = {k: None for k in res["03_concept_vectors"]["verdicts"]}
    assert _holds(report.claims_table(res), "ConceptVectors") == ["not measured (see the notebook)"] * 2
