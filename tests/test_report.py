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
    rows = {r["paper"] + r["claim"][:10]: r for r in report.claims_table(res)}
    assert "not run" in [r["holds"] for r in rows.values()]
    assert rows["Hong et al. 2410.06606Patching t"]["measured"] == "notebook not run"
    assert rows["ConceptVectors 2406.11614Fine-tunin"]["measured"].startswith("smoke run")
    deeb = rows["Deeb & Roger 2410.08827Fine-tunin"]  # a missing number without a reason: unknown, and which one
    assert deeb["holds"] == "unknown" and "KeyError: 'rtt'" in deeb["measured"]


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


def _write_run(folder, results, timings, run):
    (folder / "results").mkdir(parents=True)
    for nb, r in results.items():
        (folder / "results" / f"{nb}.json").write_text(json.dumps(r))
    (folder / "timings.json").write_text(json.dumps(timings))
    (folder / "run.json").write_text(json.dumps(run))


def _row(md, paper_and_claim):
    """The cells of the summary table's row whose paper and claim start so."""
    paper, claim = paper_and_claim
    line = next(x for x in md.splitlines() if x.startswith(f"| {paper} | {claim}"))
    return [c.strip() for c in line.strip("|").split(" | ")]


ZHANG = ("Zhang et al. 2410.16454", "4-bit")
DEEB = ("Deeb & Roger 2410.08827", "Fine-tuning")
RTT_REASON = "no retain model on the real model, so no floor"


def _two_runs(tmp_path, real_quant_gain=0.3):
    world = tmp_path / "reports"
    _write_run(world, _results(), {"00_world_and_model": 60.0, "04_grun": 300.0},
               {"wall_seconds": 400.0, "jobs": 2, "threads_per_notebook": 1})
    real = _results(quant_gain=real_quant_gain)
    real["05_recovery_attacks"]["not_measured"] = report.not_measured(rtt_recovers=RTT_REASON)
    _write_run(world / "smollm2-135m", real, {"00_world_and_model": 20.0, "05_recovery_attacks": 90.0},
               {"wall_seconds": 150.0, "jobs": 1, "threads_per_notebook": None, "model": "smollm2-135m",
                "data": "real"})
    return world, real


def test_two_runs_two_columns_each_by_the_same_rule(tmp_path):
    world, real = _two_runs(tmp_path)
    md = report.write_summary(world).read_text()
    assert ("| paper | claim | World: measured | World: holds? | SmolLM2-135M: measured | SmolLM2-135M: holds? | "
            "rule | notebook |") in md
    # each column is what the rules make of that run's own numbers
    for w, r in zip(report.claims_table(_results()), report.claims_table(real)):
        cells = _row(md, (w["paper"], w["claim"][:20]))
        assert cells[3] == w["holds"] and cells[5] == r["holds"]
    zhang = _row(md, ZHANG)
    assert zhang[3] == "no" and zhang[5] == "yes" and "grad_diff +0.000" in zhang[2] and "grad_diff +0.300" in zhang[4]
    disagree = [x for x in md.splitlines() if "World and SmolLM2-135M disagree" in x]
    assert len(disagree) == 1 and disagree[0].startswith(f"- {ZHANG[0]}")
    assert "on World it does not hold (forget accuracy gained at 4 bits: grad_diff +0.000" in disagree[0]
    assert "on SmolLM2-135M it holds (forget accuracy gained at 4 bits: grad_diff +0.300" in disagree[0]
    deeb = _row(md, DEEB)  # measured on the world, not on the real model: no disagreement, the reason shown
    assert deeb[3] == "yes" and deeb[4] == RTT_REASON and deeb[5] == "not measured"
    assert "| notebook | World (s) | SmolLM2-135M (s) |" in md and "| 05_recovery_attacks |  | 90 |" in md
    assert "| **sum** | **360** | **110** |" in md and "the SmolLM2-135M run 150 s (one notebook at a time)" in md
    assert "<th>SmolLM2-135M: holds?</th>" in (world / "summary.html").read_text()


def test_two_runs_that_agree_say_so(tmp_path):
    world, _ = _two_runs(tmp_path, real_quant_gain=0.0)
    md = report.write_summary(world).read_text()
    assert " disagree:" not in md and "World and SmolLM2-135M agree on every claim both of them measured." in md


def test_one_run_keeps_the_one_column_summary(tmp_path):
    world, real = _two_runs(tmp_path)
    alone = report.write_summary(world, others=False).read_text()
    runs = report.summary_markdown(_results(), json.loads((world / "timings.json").read_text()),
                                   json.loads((world / "run.json").read_text()))
    assert alone == runs and "| paper | claim | what this run measured | holds? | rule | notebook |" in alone
    assert "World:" not in alone and "disagree" not in alone and "on the default world" in alone
    assert alone.startswith("# unlearn-kit: reproduction summary\n") and "The whole run took 400 s" in alone
    # the real run's own folder: one column, its model named
    own = report.write_summary(world / "smollm2-135m").read_text()
    assert own.startswith("# unlearn-kit: reproduction summary (SmolLM2-135M)\n")
    assert "measured on SmolLM2-135M (`smollm2-135m` with DATA='real')" in own and "World" not in own
    assert _row(own, ZHANG)[3] == "yes" and _row(own, DEEB)[2:4] == [RTT_REASON, "not measured"]


def test_not_measured_names_real_rules():
    assert report.not_measured(rtt_recovers="why") == {"rtt_recovers": "why"}
    with pytest.raises(KeyError, match="rtt_recover"):
        report.not_measured(rtt_recover="a typo")
    assert all(c.rules and set(c.rules) <= set(report.RULES) for c in report.CLAIMS)
    res = _results()  # a reason for either of a claim's rules makes it not measured
    res["04_grun"]["not_measured"] = {"grun_keeps_topics": "the real-knowledge set has no topic questions"}
    grun = [r for r in report.claims_table(res) if r["paper"].startswith("GRUN")]
    assert [r["holds"] for r in grun] == ["not measured", "no"]
    assert grun[0]["measured"] == "the real-knowledge set has no topic questions"


def test_thresholds_count_exact_ties_as_reached():
    """3 of 10 forget facts after 4-bit against 2 of 10 before is exactly 10 points, though 0.3 - 0.2 is
    0.09999999999999998 in floating point; every rule reads its threshold with the same tolerance."""
    gain = 0.3 - 0.2
    assert gain < 0.1 and 3 - 2 == 0.1 * 10
    assert report.quantization_back({"grad_diff": gain}) and report.vanilla_quantization_back({"vanilla": gain})
    assert not report.grun_quantization_robust({"grun": gain})
    assert not report.quantization_back({"grad_diff": 0.1 - 1e-6})
    assert report.rtt_recovers((0.7 - 0.2) / (1.2 - 0.2)) and not report.rtt_recovers(0.5 - 1e-6)
    assert report.topic_forgotten([0.4 - 0.3], 1.0)   # 0.10000000000000003 in floating point: "at most 10 %"
    assert report.reaches(0.95 - 1e-12, 0.95) and report.at_most(0.1 + 1e-12, 0.1)
    assert not report.reaches(0.95 - 1e-6, 0.95) and not report.at_most(0.1 + 1e-6, 0.1)
