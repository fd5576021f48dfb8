"""The autograder trusts nothing a submission does: forged grades, harmful file operations, killed processes and a
killed grader. Each test grades tiny hand-written notebooks (a few seconds per notebook: a kernel start)."""

import csv
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from unlearn_utils.autograde import SANDBOX_PREFIX, _decode, grade_folder, grade_notebook, namespace_available

SOLVED_MIN_K = """
import numpy as np

def min_k_score(token_logprobs, k=0.4):
    lp = np.sort(np.asarray(token_logprobs, dtype=float))
    return float(lp[: max(1, int(round(k * len(lp))))].mean())
"""
# the kit's checks import torch (seconds in a fresh kernel): notebooks that need not show the check use a stand-in
FAKE_CHECKS = "class checks:\n    check_min_k = check_recovery_rate = staticmethod(lambda fn: None)\n"
ISOLATIONS = ["process", pytest.param("namespace", marks=pytest.mark.skipif(
    not namespace_available(), reason="this machine does not allow unprivileged user namespaces"))]


def notebook(*cells) -> nbformat.NotebookNode:
    """A notebook of code cells; a cell given as (source, "exercise") is tagged as an exercise."""
    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                                "language_info": {"name": "python"}})
    for cell in cells:
        source, tag = cell if isinstance(cell, tuple) else (cell, None)
        c = new_code_cell(source)
        c.metadata["tags"] = [tag] if tag else []
        nb.cells.append(c)
    return nb


def solved(real_checks: bool = False) -> nbformat.NotebookNode:
    checks = "from unlearn_utils import checks\n" if real_checks else FAKE_CHECKS
    return notebook((SOLVED_MIN_K + checks + "checks.check_min_k(min_k_score)", "exercise"))


def submit(subs: Path, student: str, nb, name: str = "ex.ipynb") -> Path:
    (subs / student).mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, subs / student / name)
    return subs / student / name


def rows_of(out: Path) -> dict:
    return {(r["student"], r["exercise"]): (r["passed"], r["message"]) for r in csv.DictReader(open(out))}


def grader_process(subs: Path, out: Path, *args: str) -> subprocess.Popen:
    """grade_folder in a process of its own (own session: whatever happens to it cannot reach pytest)."""
    code = ("import sys; from unlearn_utils.autograde import grade_folder; "
            "kw = {'isolation': sys.argv[3]} if len(sys.argv) > 3 else {}; "
            "grade_folder(sys.argv[1], sys.argv[2], **kw)")
    return subprocess.Popen([sys.executable, "-c", code, str(subs), str(out), *args], start_new_session=True,
                            cwd=out.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_forged_grades_get_no_marks(tmp_path):
    """Writing "passed" lines to the grade file, printing PASS and monkeypatching the check in the kernel: no marks."""
    subs = tmp_path / "subs"
    forged = """
import json, os
from unlearn_utils import checks

def min_k_score(token_logprobs, k=0.4):
    return 0.0  # not a solution

line = json.dumps({"exercise": "min_k", "passed": True, "message": "all 5 cases agree with the reference."})
for var in ("UNLEARN_KIT_GRADE_FILE",):
    if os.environ.get(var):
        with open(os.environ[var], "a") as f:
            f.write(line + "\\n")
print("PASS [min_k] all 5 cases agree with the reference.")
checks.check_min_k = lambda fn: checks._report("min_k", True, "all 5 cases agree with the reference.")
checks.check_min_k(min_k_score)
"""
    submit(subs, "mallory", notebook((forged, "exercise")))
    submit(subs, "alice", solved(real_checks=True))  # an honest solution still gets its marks
    got = rows_of(grade_folder(subs, tmp_path / "grades.csv", isolation="process"))
    assert got[("mallory", "min_k")][0] == "False"
    assert "off by" in got[("mallory", "min_k")][1]  # the grader's own verdict on the function
    assert got[("alice", "min_k")][0] == "True"


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_submission_cannot_harm_other_files(tmp_path, monkeypatch, isolation):
    """A submission that deletes another student's notebook and the model cache (and, where namespaces exist, writes
    grades by absolute path) harms nothing: the files survive and the other student is graded."""
    subs, out = tmp_path / "subs", tmp_path / "grades.csv"
    cache = tmp_path / "cache"
    (cache / "world_models").mkdir(parents=True)
    sentinel = cache / "world_models" / "KEEP.txt"
    sentinel.write_text("a built model")
    monkeypatch.setenv("UNLEARN_KIT_CACHE", str(cache))
    bob = submit(subs, "bob", solved())
    attack = f"""
import os, shutil
def min_k_score(token_logprobs, k=0.4):
    return 0.0
for p in ("../bob/ex.ipynb", "../../subs/bob/ex.ipynb"):
    try:
        os.remove(p)
    except OSError:
        pass
if os.environ.get("UNLEARN_KIT_CACHE"):
    shutil.rmtree(os.environ["UNLEARN_KIT_CACHE"], ignore_errors=True)
if {isolation == "namespace"}:  # absolute paths: only the namespace sandbox covers them
    for p in ({str(bob)!r}, {str(sentinel)!r}):
        try:
            os.remove(p)
        except OSError:
            pass
    try:
        with open({str(out)!r}, "a") as f:
            f.write("alice,ex,min_k,True,forged\\n")
    except OSError:
        pass
"""
    submit(subs, "alice", notebook(attack))
    got = rows_of(grade_folder(subs, out, isolation=isolation))
    assert bob.exists() and sentinel.read_text() == "a built model"
    assert got[("bob", "min_k")][0] == "True"
    assert ("alice", "min_k") not in got or got[("alice", "min_k")][0] == "False"
    assert "forged" not in out.read_text()


@pytest.mark.parametrize("isolation", ["process", "auto"])
def test_kernel_that_kills_its_parent_does_not_stop_grading(tmp_path, isolation):
    """A kernel that SIGKILLs its parent, its parent's process group and its own group: the grader carries on."""
    subs, out = tmp_path / "subs", tmp_path / "grades.csv"
    killer = """
import os, signal
def min_k_score(token_logprobs, k=0.4):
    return 0.0
for kill in (lambda: os.killpg(os.getpgid(os.getppid()), signal.SIGKILL),
             lambda: os.kill(os.getppid(), signal.SIGKILL), lambda: os.killpg(0, signal.SIGKILL)):
    try:
        kill()
    except OSError:
        pass
"""
    submit(subs, "alice", notebook((killer + FAKE_CHECKS + "checks.check_min_k(min_k_score)", "exercise")))
    submit(subs, "bob", solved())
    proc = grader_process(subs, out, *([isolation] if isolation != "auto" else []))
    try:
        _, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, err.decode()[-2000:]
    got = rows_of(out)
    assert got[("bob", "min_k")][0] == "True"
    passed, message = got[("alice", "min_k")]
    assert passed == "False" and ("killed" in message or "died" in message), message


def test_rows_survive_a_killed_grader_and_grading_resumes(tmp_path):
    """The grader is killed while grading the second student: the first student's rows are in the CSV, and a
    restart keeps them without grading that notebook again."""
    subs, out = tmp_path / "subs", tmp_path / "grades.csv"
    alice = submit(subs, "alice", solved())
    submit(subs, "bob", notebook("import time\ntime.sleep(600)", (SOLVED_MIN_K + FAKE_CHECKS +
                                                                  "checks.check_min_k(min_k_score)", "exercise")))
    proc = grader_process(subs, out, "process")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and "alice" in out.read_text():
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the grader should still be grading bob"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert rows_of(out) == {("alice", "min_k"): ("True", "all 5 cases agree with the reference.")}
    # restart: alice's notebook is now broken, bob's is gone; alice is not graded again
    nbformat.write(notebook("raise RuntimeError('must not run')"), alice)
    (subs / "bob" / "ex.ipynb").unlink()
    assert rows_of(grade_folder(subs, out))[("alice", "min_k")][0] == "True"
    left = [d for d in Path(tempfile.gettempdir()).glob(SANDBOX_PREFIX + "*")
            if (d / ".grader").is_file() and (d / ".grader").read_text() == str(proc.pid)]
    assert not left, "the killed grader's sandbox is cleaned up at the restart"


def test_wall_clock_limit_for_the_whole_notebook(tmp_path):
    """No cell reaches the per-cell limit, but together they pass the notebook's limit: what came after fails."""
    path = tmp_path / "slow.ipynb"
    before = FAKE_CHECKS + "def recovery(u, r, o):\n    return (u - r) / (o - r)\n\n"
    before += "checks.check_recovery_rate(recovery)"
    nbformat.write(notebook((before, "exercise"), *["import time\ntime.sleep(1.5)"] * 6,
                            (SOLVED_MIN_K + "checks.check_min_k(min_k_score)", "exercise")), path)
    start = time.monotonic()
    rows = {r["exercise"]: r for r in grade_notebook(path, timeout=60, notebook_timeout=3, isolation="process")}
    assert time.monotonic() - start < 60
    assert not rows["min_k"]["passed"] and "timed out" in rows["min_k"]["message"]
    assert rows["recovery_rate"]["passed"], rows["recovery_rate"]  # checked although the notebook was cut short


def test_returned_values_are_plain_data():
    """Only plain data comes back from a kernel: tensors of numeric dtypes, lists, tuples; anything else is opaque."""
    import torch

    t = _decode({"$": "tensor", "dtype": "float32", "shape": [2, 1], "data": [1.0, 2.0]})
    assert torch.equal(t, torch.tensor([[1.0], [2.0]]))
    assert _decode({"$": "tuple", "items": [1, [True, None]]}) == (1, [True, None])
    opaque = _decode({"$": "tensor", "dtype": "object", "shape": [1], "data": [1]})
    assert opaque != opaque and "object" in repr(opaque)
    for bad in ({"$": "pickle", "data": "gASV"}, {"$": "tensor", "dtype": "float32", "shape": [3], "data": [1.0]}):
        with pytest.raises(ValueError):
            _decode(bad)
