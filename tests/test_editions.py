"""Student / solution editions and the autograder."""

import csv
import json
import re

import nbformat
import pytest

from unlearn_utils import editions
from unlearn_utils.editions import (BEGIN, END, drop_markers, exercises_of, main, make_edition, solution_regions,
                                    strip_solution, student_leaks, write_editions)
from unlearn_utils.reproduce import notebooks

SOURCES = notebooks()
SECRET = "return x * 41 + 1"
EXERCISE = f"def f(x):\n    {BEGIN}\n    {SECRET}\n    {END}\n\nchecks.check_f(f)"
DROPDOWN = f"<details><summary>Solution</summary>\n\n```python\n{SECRET}\n```\n</details>"


def demo(cell_type="code", source=EXERCISE, tags=("exercise",)):
    """A two-cell source notebook: an introduction, then the cell under test (cell 1)."""
    new = nbformat.v4.new_code_cell if cell_type == "code" else nbformat.v4.new_markdown_cell
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Demo"), new(source)])
    nb.cells[1].metadata["tags"] = list(tags) if isinstance(tags, tuple) else tags  # set after: new_* validate
    return nb


# Cells that would ship SECRET to students without a word, unless refused (an unclosed region would fail without
# naming the cell; both tags would drop the exercise from the student edition).
MISMATCHES = {
    "markers_without_tag": ("code", EXERCISE, (), "not tagged 'exercise'"),
    "tag_without_markers": ("code", f"def f(x):\n    {SECRET}", ("exercise",), "marks no solution"),
    "misspelt_markers": ("code", EXERCISE.replace("# BEGIN", "### BEGIN").replace("# END", "#END"), ("exercise",),
                         "looks like a solution marker"),
    "misspelt_tag": ("code", EXERCISE, ("Exercise",), "tag 'Exercise' is not the tag 'exercise'"),
    "tags_not_a_list": ("code", EXERCISE, "exercise", "not a list"),
    "exercise_tag_on_markdown": ("markdown", DROPDOWN, ("exercise",), "only code cells are stripped"),
    "untagged_solution_dropdown": ("markdown", DROPDOWN, ("hint",), "not tagged 'solution'"),
    "unclosed_region": ("code", EXERCISE.replace(f"    {END}\n", ""), ("exercise",), "never closed"),
    "exercise_and_solution_tags": ("code", EXERCISE, ("exercise", "solution"), "keep one tag"),
}


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

    # the smoke world model and its retain model, built once and copied into each student's private cache
    import dataclasses

    from unlearn_utils.models import SMOKE_CONFIG, WorldModelConfig, build_world_model

    seed = tmp_path / "seed-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNLEARN_KIT_CACHE", str(seed))
        smoke = WorldModelConfig(**SMOKE_CONFIG)
        build_world_model(smoke, progress=False)
        build_world_model(dataclasses.replace(smoke, exclude_split="forget05"), progress=False)
    out = grade_folder(subs, tmp_path / "grades.csv", timeout=300, seed_cache=seed)
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


@pytest.mark.parametrize("case", MISMATCHES)
def test_tags_and_markers_that_disagree_are_refused_naming_notebook_and_cell(case, tmp_path):
    cell_type, source, tags, why = MISMATCHES[case]
    nb = demo(cell_type, source, tags)
    named = re.escape(f"10_demo.ipynb, cell 1 ({cell_type}, {source.splitlines()[0]!r})")
    (tmp_path / "src").mkdir()
    nbformat.write(demo(), tmp_path / "src" / "09_fine.ipynb")
    (tmp_path / "src" / "10_demo.ipynb").write_text(json.dumps(nb))  # as hand-edited: nbformat.write validates
    with pytest.raises(ValueError, match=f"(?s){named}.*{re.escape(why)}"):
        write_editions(tmp_path / "src", tmp_path / "out")
    assert not list(tmp_path.glob("out/*/*")), "every source is checked before any edition is written"
    for kind in ("student", "solution"):
        with pytest.raises(ValueError, match=named):
            make_edition(nb, kind, "10_demo.ipynb")


def test_a_written_student_edition_with_a_solution_line_is_not_published(tmp_path, monkeypatch):
    (tmp_path / "src").mkdir()
    nbformat.write(demo(), tmp_path / "src" / "10_demo.ipynb")
    stale = tmp_path / "out" / "student" / "10_demo.ipynb"
    stale.parent.mkdir(parents=True)
    stale.write_text("an older edition")
    real = editions.make_edition

    def faulty(nb, kind, *args):  # an edition builder that forgets to strip
        return real(nb, "solution", *args)

    monkeypatch.setattr(editions, "make_edition", faulty)
    with pytest.raises(ValueError, match=r"(?s)10_demo.ipynb would hold solutions.*cell 1 .*line 2 is a solution "
                                         rf"line: {re.escape(repr(SECRET))}"):
        write_editions(tmp_path / "src", tmp_path / "out")
    assert not list((tmp_path / "out" / "student").iterdir()), "neither the refused nor the older edition is left"


def test_student_leaks_names_markers_and_lines_only_the_solution_has():
    nb = demo(source=f"def f(x):\n    {BEGIN}\n    {SECRET}\n    return x\n    {END}\n    return x")
    student = make_edition(nb, "student")
    assert student_leaks(nb, student) == []             # "return x" is also outside the region: public
    student.cells[1].source = drop_markers(nb.cells[1].source) + f"\n{END}"
    assert student_leaks(nb, student, "10_demo.ipynb") == [
        f"10_demo.ipynb, cell 1 (code, 'def f(x):'), line 2 is a solution line: {SECRET!r}",
        f"10_demo.ipynb, cell 1 (code, 'def f(x):'), line 5 is a solution marker: {END!r}"]
    student.cells.append(nbformat.v4.new_markdown_cell(DROPDOWN, metadata={"tags": ["solution"]}))
    assert "cell 2 (markdown, '<details><summary>Solution</summary>') is a solution cell" in \
        "\n".join(student_leaks(nb, student, "10_demo.ipynb"))


def test_markdown_may_talk_about_solutions_and_the_cli_reports_refusals(tmp_path, capsys):
    nb = demo()
    nb.cells[0].source = "## Begin with the solution of the last notebook\nCells tagged `# BEGIN SOLUTION` ..."
    assert make_edition(nb, "student").cells[1].source.count("NotImplementedError") == 1
    (tmp_path / "src").mkdir()
    nbformat.write(demo(tags=()), tmp_path / "src" / "10_demo.ipynb")
    assert main(["--source", str(tmp_path / "src"), "--out", str(tmp_path / "out")]) == 1
    assert "10_demo.ipynb, cell 1 (code, 'def f(x):')" in capsys.readouterr().err
