"""make reproduce: notebooks run side by side in the order their shared models allow, and give the same report."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from unlearn_utils.reproduce import AFTER, main as reproduce_main, notebooks, run_in_order

NAMES = [p.name for p in notebooks()]


def _schedule(names, jobs, durations, after=AFTER):
    """Run fake notebooks (sleeping ``durations[name]`` s) through run_in_order; returns their (start, end) times."""
    spans, lock, running, peak = {}, threading.Lock(), [0], [0]

    def fake(name):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        start = time.perf_counter()
        time.sleep(durations.get(name[:2], 0.01))
        with lock:
            running[0] -= 1
        return start, time.perf_counter()

    with ThreadPoolExecutor(jobs) as pool:
        for name, future in run_in_order(names, lambda n: pool.submit(fake, n), jobs, after):
            spans[name] = future.result()
    return spans, peak[0]


def test_notebooks_start_after_the_ones_they_need_and_others_go_first():
    after = {"02": ("01",), "06": ("01", "04"), **AFTER}
    spans, peak = _schedule(NAMES, 2, {"01": 0.3, "04": 0.15}, after)
    assert set(spans) == set(NAMES) and peak == 2
    by = {n[:2]: s for n, s in spans.items()}
    for nb, needs in after.items():
        for d in needs:
            assert by[nb][0] >= by[d][1], f"{nb} started before {d} finished"
    assert by["03"][0] < by["01"][1], "a notebook whose prerequisite runs lets the next ready one go first"


def test_notebook_01s_models_are_the_same_whoever_trains_them(tiny_config, monkeypatch):
    """Session.unlearned records notebook 01's trajectory, under notebook 01's name, so that a notebook that runs
    beside notebook 01 can train one of its models and notebook 01 then loads it instead of training it again."""
    import re

    from unlearn_utils import session
    from unlearn_utils.evaluate import trajectory_metrics
    from unlearn_utils.unlearning import methods

    source = "".join("".join(c["source"]) for c in json.loads(notebooks()[1].read_text())["cells"])
    assert int(re.search(r"EVAL_EVERY = (\d+)", source).group(1)) == session.TRAJECTORY_EVERY
    assert int(re.search(r"every = (\d+) if SMOKE", source).group(1)) == session.TRAJECTORY_EVERY_SMOKE
    assert 'log_name=f"topics-every{every}"' in source and "trajectory_metrics(tok, data, topics=True)" in source

    S = session.start(True, **{f.name: getattr(tiny_config, f.name) for f in tiny_config.__dataclass_fields__.values()})
    _, first = S.unlearned("npo", steps=6, seed=0)    # e.g. notebook 05, before notebook 01 got there
    assert first.dropna(subset=["forget_accuracy"]).step.tolist() == [0, 5, 6]
    assert "forget_accuracy" not in S.unlearned("npo", lr=1e-4, steps=6)[1]  # other settings: no trajectory

    def no_training(*a, **k):
        raise AssertionError("notebook 01 must load the model another notebook trained")

    monkeypatch.setattr(methods, "unlearn", no_training)
    every = session.TRAJECTORY_EVERY_SMOKE            # notebook 01's own call, in smoke mode
    _, again = S.unlearned("npo", steps=6, seed=0, eval_fn=trajectory_metrics(S.tokenizer, S.eval_data, topics=True),
                           eval_every=every, log_name=f"topics-every{every}", progress=False)
    assert again.equals(first)


def test_one_job_runs_in_teaching_order_and_cycles_are_refused():
    spans, peak = _schedule(NAMES, 1, {})
    assert peak == 1 and sorted(spans, key=lambda n: spans[n][0]) == NAMES
    with pytest.raises(RuntimeError, match="cycle"):
        _schedule(["00_a", "01_b"], 2, {}, after={"00": ("01",), "01": ("00",)})


@pytest.mark.notebook
def test_two_notebooks_side_by_side_write_their_reports(tmp_path, cache):
    out = tmp_path / "reports"
    assert reproduce_main(["--smoke", "--only", "00", "02", "--jobs", "2", "--out", str(out)]) == 0
    timings = json.loads((out / "timings.json").read_text())
    assert list(timings) == [n[:-6] for n in NAMES if n[:2] in ("00", "02")]
    run = json.loads((out / "run.json").read_text())
    assert run["jobs"] == 2 and run["wall_seconds"] > 0
    assert all(json.loads((out / "results" / f"{nb}.json").read_text())["smoke"] for nb in timings)
    assert "The whole run took" in (out / "summary.md").read_text()


class _Notebooks:
    """A fake run_notebook: records each call's parameters and times, writes a results file, runs nothing."""

    def __init__(self):
        self.calls, self.spans, self.lock = {}, {}, threading.Lock()

    def __call__(self, path, out_path, parameters=None, timeout=1800, cwd=None):
        from pathlib import Path

        from unlearn_utils.reproduce import write_results

        start = time.perf_counter()
        time.sleep({"01": 0.2, "04": 0.1}.get(Path(path).name[:2], 0.01))
        name = Path(path).stem
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).write_text(json.dumps({"cells": [], "parameters": parameters}))  # papermill's executed copy
        write_results(name, {"smoke": parameters["SMOKE"], "model": parameters.get("MODEL", "world")},
                      parameters["REPORT_DIR"])
        (Path(parameters["REPORT_DIR"]) / "figures").mkdir(parents=True, exist_ok=True)
        (Path(parameters["REPORT_DIR"]) / "figures" / f"{name}_plot.png").write_bytes(name.encode())
        with self.lock:
            self.calls[name] = (str(out_path), dict(parameters))
            self.spans[name[:2]] = (start, time.perf_counter())
        return time.perf_counter() - start


def _fake_machinery(monkeypatch, world_builds=None, prepared=None):
    """Notebooks faked; the process pool a thread pool (so the fakes are seen); model preparation recorded."""
    from unlearn_utils import reproduce

    fake = _Notebooks()
    monkeypatch.setattr(reproduce, "run_notebook", fake)
    monkeypatch.setattr(reproduce, "ProcessPoolExecutor",
                        lambda n, mp_context=None, initializer=None, initargs=(): ThreadPoolExecutor(n))

    def build(smoke, split):
        if world_builds is None:
            raise AssertionError("a real-model run must not build the world models")
        world_builds.append(split)
        return 0.0

    def prepare(name):
        if prepared is None:
            raise AssertionError("a world run must not prepare a real model")
        assert not fake.calls, "the real model is prepared before any notebook starts"
        prepared.append(name)
        return 0.0

    monkeypatch.setattr(reproduce, "_build_world_model", build)
    monkeypatch.setattr(reproduce, "_prepare_real_model", prepare)
    return fake


def test_a_real_model_runs_into_its_own_folder_with_its_parameters(tmp_path, monkeypatch):
    prepared = []
    fake = _fake_machinery(monkeypatch, prepared=prepared)
    (tmp_path / "results").mkdir()  # an earlier world run's numbers: its summary gains the real model's column
    (tmp_path / "results" / "05_recovery_attacks.json").write_text(json.dumps({"smoke": False}))
    assert reproduce_main(["--model", "smollm2-135m", "--out", str(tmp_path), "--jobs", "2"]) == 0
    own = tmp_path / "smollm2-135m"
    assert prepared == ["smollm2-135m"] and set(fake.calls) == {n[:-6] for n in NAMES}
    for name, (out_path, params) in fake.calls.items():
        assert out_path == str(own / f"{name}.ipynb")
        assert params == {"SMOKE": False, "REPORT_DIR": str(own), "MODEL": "smollm2-135m", "DATA": "real",
                          "RETAIN_MODEL": None}
    for nb, needs in AFTER.items():  # the same order as on the world
        for d in needs:
            assert fake.spans[nb][0] >= fake.spans[d][1], f"{nb} started before {d} finished"
    timings = json.loads((own / "timings.json").read_text())
    assert list(timings) == [n[:-6] for n in NAMES]
    assert timings["01_finetuning_unlearning"] >= 0.15  # the fake notebook's 0.2 s, timed after it ran
    run = json.loads((own / "run.json").read_text())
    assert run["model"] == "smollm2-135m" and run["data"] == "real" and run["jobs"] == 2
    assert (own / "results" / "04_grun.json").exists() and (own / "figures").is_dir()
    assert not (tmp_path / "timings.json").exists() and not (tmp_path / "results" / "04_grun.json").exists()
    assert (own / "summary.md").read_text().startswith("# unlearn-kit: reproduction summary (SmolLM2-135M)")
    assert "| World: holds? |" in (tmp_path / "summary.md").read_text()


def test_only_and_smoke_work_with_a_real_model(tmp_path, monkeypatch):
    fake = _fake_machinery(monkeypatch, prepared=[])
    assert reproduce_main(["--model", "smollm2-135m", "--smoke", "--only", "05", "--out", str(tmp_path),
                           "--jobs", "1"]) == 0
    assert list(fake.calls) == ["05_recovery_attacks"] and fake.calls["05_recovery_attacks"][1]["SMOKE"] is True
    assert not (tmp_path / "summary.md").exists()  # no world run here: only the real model's own summary
    assert (tmp_path / "smollm2-135m" / "summary.md").exists()


def test_the_world_run_writes_reports_itself_as_before(tmp_path, monkeypatch):
    builds = []
    fake = _fake_machinery(monkeypatch, world_builds=builds)
    assert reproduce_main(["--only", "00", "03", "--out", str(tmp_path), "--jobs", "2"]) == 0
    assert sorted(builds, key=str) == sorted([None, "forget05"], key=str)  # the pre-build step, as before
    assert {p["REPORT_DIR"] for _, p in fake.calls.values()} == {str(tmp_path)}
    assert all(set(p) == {"SMOKE", "REPORT_DIR"} for _, p in fake.calls.values())  # the notebooks' defaults
    assert "model" not in json.loads((tmp_path / "run.json").read_text())
    assert "| paper | claim | what this run measured | holds? |" in (tmp_path / "summary.md").read_text()


def test_an_unknown_model_is_refused_before_any_notebook(tmp_path, monkeypatch, capsys):
    fake = _fake_machinery(monkeypatch)
    with pytest.raises(SystemExit):
        reproduce_main(["--model", "smollm2", "--out", str(tmp_path / "reports")])
    err = capsys.readouterr().err
    assert "Unknown model 'smollm2'" in err and "smollm2-135m" in err
    assert not fake.calls and not (tmp_path / "reports").exists()


def test_an_identical_second_run_copies_the_first_ones_outputs_back(tmp_path, monkeypatch, cache):
    fake = _fake_machinery(monkeypatch, world_builds=[])
    args = ["--only", "00", "03", "--out", str(tmp_path), "--jobs", "1"]
    assert reproduce_main(args) == 0
    first = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*")
             if p.is_file() and p.suffix in (".ipynb", ".png") or p.parent.name == "results"}
    timings = json.loads((tmp_path / "timings.json").read_text())
    for f in first:
        (tmp_path / f).unlink()
    fake.calls.clear()
    assert reproduce_main(args) == 0
    assert not fake.calls, "nothing changed: no notebook runs again"
    assert {f: (tmp_path / f).read_bytes() for f in first} == first  # executed copies, figures, results
    assert json.loads((tmp_path / "timings.json").read_text()) == timings  # what the notebooks cost
    assert json.loads((tmp_path / "run.json").read_text())["reused"] == ["00_world_and_model", "03_concept_vectors"]
    assert "copied from an identical earlier run" in (tmp_path / "summary.md").read_text()

    assert reproduce_main(args + ["--rerun"]) == 0
    assert set(fake.calls) == {"00_world_and_model", "03_concept_vectors"}
    assert "reused" not in json.loads((tmp_path / "run.json").read_text())


def test_a_changed_input_or_a_damaged_entry_runs_the_notebook_again(tmp_path, monkeypatch, cache):
    from unlearn_utils import reproduce
    from unlearn_utils.cache import cache_entry

    fake = _fake_machinery(monkeypatch, world_builds=[])
    args = ["--only", "00", "--out", str(tmp_path), "--jobs", "1"]
    assert reproduce_main(args) == 0
    fake.calls.clear()
    assert reproduce_main(args + ["--smoke"]) == 0 and list(fake.calls) == ["00_world_and_model"]  # a parameter
    fake.calls.clear()
    monkeypatch.setattr(reproduce, "RUN_CACHE_VERSION", reproduce.RUN_CACHE_VERSION + 1)  # e.g. the kit's code
    assert reproduce_main(args) == 0 and list(fake.calls) == ["00_world_and_model"]
    entry = cache_entry("notebook_runs", reproduce.run_key(reproduce.NOTEBOOK_DIR / "00_world_and_model.ipynb",
                                                           {"SMOKE": False, "REPORT_DIR": str(tmp_path)}))
    assert entry.is_dir()
    (entry / "results.json").write_text("{}")  # damaged: its checksum no longer matches
    fake.calls.clear()
    with pytest.warns(UserWarning, match="set aside|unusable|corrupt"):
        assert reproduce_main(args) == 0
    assert list(fake.calls) == ["00_world_and_model"]
    assert json.loads((tmp_path / "results" / "00_world_and_model.json").read_text())["smoke"] is False


def test_a_failed_notebook_is_not_cached(tmp_path, monkeypatch, cache):
    from unlearn_utils import reproduce

    fake = _fake_machinery(monkeypatch, world_builds=[])

    def broken(*a, **k):
        raise RuntimeError("cell 3 failed")

    monkeypatch.setattr(reproduce, "run_notebook", broken)
    assert reproduce_main(["--only", "00", "--out", str(tmp_path), "--jobs", "1"]) == 1
    monkeypatch.setattr(reproduce, "run_notebook", fake)
    assert reproduce_main(["--only", "00", "--out", str(tmp_path), "--jobs", "1"]) == 0
    assert list(fake.calls) == ["00_world_and_model"]


def test_a_run_key_sees_the_cells_the_parameters_and_the_files(tmp_path):
    from unlearn_utils.reproduce import _tree_sha, run_key

    nb = tmp_path / "00_x.ipynb"
    nb.write_text(json.dumps({"cells": [{"cell_type": "code", "source": ["x = 1"], "outputs": []}]}))
    key = run_key(nb, {"SMOKE": True, "REPORT_DIR": "r"})
    nb.write_text(json.dumps({"cells": [{"cell_type": "code", "source": ["x = 1"], "outputs": [{"a": 1}]}]}))
    assert run_key(nb, {"SMOKE": True, "REPORT_DIR": "r"}) == key  # outputs are not inputs
    nb.write_text(json.dumps({"cells": [{"cell_type": "code", "source": ["x = 2"], "outputs": []}]}))
    assert run_key(nb, {"SMOKE": True, "REPORT_DIR": "r"})["cells"] != key["cells"]
    assert run_key(nb, {"SMOKE": False, "REPORT_DIR": "r"})["parameters"] != key["parameters"]
    assert run_key(nb, {"SMOKE": True, "REPORT_DIR": "r", "MODEL": "smollm2-135m"})["model_file"]
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("A = 1")
    before = _tree_sha(tmp_path / "pkg", "*.py")
    (tmp_path / "pkg" / "a.py").write_text("A = 2")
    assert _tree_sha(tmp_path / "pkg", "*.py") != before
    assert set(key["packages"]) >= {"torch", "transformers", "gguf"} and key["kit"] and key["data"]
