"""Student / solution editions and the autograder."""

import csv

import nbformat
import pytest

from unlearn_utils.editions import (BEGIN, END, drop_markers, exercises_of, make_edition, solution_regions,
                                    strip_solution, write_editions)
from unlearn_utils.reproduce import notebooks

SOURCES = notebooks()


def test_strip_solution_keeps_indentation_and_check():
    src = f"def f(x):\n    {BEGIN}\n    return x + 1\n    {END}\n\nchecks.check_f(f)"
    out = strip_solution(src)
    assert "return x + 1" not in out and "    raise NotImplementedError" in out and "checks.check_f(f)" in out
    assert drop_markers(src) == "def f(x):\n    return x + 1\n\nchecks.check_f(f)"
    with pytest.raises(ValueError, match="without a matching"):
        strip_solution(f"{BEGIN}\nx = 1")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_student_edition_has_no_solution_left(path):
    nb = nbformat.read(path, as_version=4)
    secret = set()
    for cell in nb.cells:
        if cell.cell_type == "code" and "exercise" in cell.metadata.get("tags", []):
            secret |= {line for line in solution_regions(cell.source) if len(line) > 12}
    assert secret, "every notebook has exercises with marked solutions"
    student = make_edition(nb, "student")
    text = "\n".join(c.source for c in student.cells)
    code = "\n".join(c.source for c in student.cells if c.cell_type == "code")
    leaked = [line for line in secret if line in code]  # (hints may quote a fragment; they are markdown)
    assert not leaked, f"solution code left in the student edition: {leaked}"
    assert BEGIN not in text and END not in text
    assert not any("solution" in c.metadata.get("tags", []) for c in student.cells)
    assert sum("hint" in c.metadata.get("tags", []) for c in student.cells) >= len(exercises_of(nb))
    assert text.count("NotImplementedError") >= len(exercises_of(nb))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_solution_edition_is_the_source_without_markers(path):
    nb = nbformat.read(path, as_version=4)
    sol = make_edition(nb, "solution")
    assert len(sol.cells) == len(nb.cells)
    for a, b in zip(nb.cells, sol.cells):
        assert drop_markers(a.source) == b.source


def test_every_exercise_has_a_check():
    from unlearn_utils import checks

    for path in SOURCES:
        names = exercises_of(nbformat.read(path, as_version=4))
        assert len(names) >= 2, path.name
        for n in names:
            assert callable(getattr(checks, f"check_{n}")), n


def test_write_editions(tmp_path):
    written = write_editions(out_dir=tmp_path)
    assert [p.name for p in written["student"]] == [p.name for p in SOURCES]
    assert all(p.exists() for p in written["solution"])


@pytest.mark.notebook
def test_autograde_solved_half_solved_and_crashing(tmp_path, cache):
    from unlearn_utils.autograde import grade_folder

    nb = nbformat.read(SOURCES[0], as_version=4)  # notebook 00: greedy_match and min_k_score
    subs = tmp_path / "subs"
    for student in ("alice", "bob", "carol"):
        (subs / student).mkdir(parents=True)
    nbformat.write(make_edition(nb, "solution"), subs / "alice" / SOURCES[0].name)
    half = make_edition(nb, "student")  # bob solves exercise 1 only
    for cell, src in zip([c for c in half.cells if "exercise" in c.metadata.get("tags", [])],
                         [c for c in make_edition(nb, "solution").cells if "exercise" in c.metadata.get("tags", [])]):
        if "greedy_match" in src.source:
            cell.source = src.source
    nbformat.write(half, subs / "bob" / SOURCES[0].name)
    crash = make_edition(nb, "solution")  # carol's notebook dies before any exercise
    crash.cells.insert(3, nbformat.v4.new_code_cell("raise RuntimeError('kernel died on purpose')"))
    nbformat.write(crash, subs / "carol" / SOURCES[0].name)

    out = grade_folder(subs, tmp_path / "grades.csv", timeout=300)
    rows = list(csv.DictReader(open(out)))
    got = {(r["student"], r["exercise"]): r["passed"] for r in rows}
    assert got == {
        ("alice", "greedy_match"): "True", ("alice", "min_k"): "True",
        ("bob", "greedy_match"): "True", ("bob", "min_k"): "False",
        ("carol", "greedy_match"): "False", ("carol", "min_k"): "False",
    }
    messages = {(r["student"], r["exercise"]): r["message"] for r in rows}
    assert "not attempted" in messages[("bob", "min_k")]
    assert "crashed" in messages[("carol", "min_k")] and "RuntimeError" in messages[("carol", "min_k")]
    wide = list(csv.DictReader(open(tmp_path / "grades_wide.csv")))
    assert {r["student"] for r in wide} == {"alice", "bob", "carol"}
