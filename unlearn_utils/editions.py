"""Student and solution editions of the notebooks, generated from one source each.

The convention in a source notebook (``notebooks/NN_*.ipynb``):

* a code cell tagged ``exercise`` holds the learner's function with its reference body between the lines
  ``# BEGIN SOLUTION`` and ``# END SOLUTION``, followed by the check that runs in the same cell;
* markdown cells tagged ``hint`` stay in both editions; cells tagged ``solution`` (the solution dropdowns)
  appear only in the solution edition.

The **student edition** replaces each marked region by ``raise NotImplementedError(...)`` at the same indentation
and drops ``solution`` cells; the **solution edition** keeps everything and only removes the marker lines.
``python -m unlearn_utils.editions`` (or ``make editions``) writes both under ``editions/``.

A slip in the convention would hand students the answers, so every cell is checked first (:func:`source_problems`):
markers outside an ``exercise`` code cell, an ``exercise`` cell without a marked region, a marker that is not
spelled exactly, a solution dropdown without its tag are refused, naming the notebook and the cell (its index,
counted from 0 as in ``nb.cells``, and its first line). Each student edition is read back once written
(:func:`student_leaks`) and is not published if any marker or solution line survived.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import sys
from pathlib import Path

import nbformat

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
STUB = 'raise NotImplementedError("Exercise: write this function, then run the cell to check it.")'
_CHECK_CALL = re.compile(r"checks\.(check_\w+)\(")
# What an author may have meant as a marker in code ("### BEGIN SOLUTION", "# end of solution", "# Solution begin").
_MARKER_LIKE = re.compile(r"(?:^|\s)#+\s*((begin|end)\s*(of\s+(the\s+)?)?[:_-]?\s*solutions?\b"
                          r"|solutions?\s*[:_-]?\s*(begin|end)\b)", re.IGNORECASE)
_DROPDOWN = re.compile(r"<summary>\s*solution", re.IGNORECASE)
_TAG_NAMES = ("exercise", "solution")


def _tags(cell) -> list[str]:
    tags = cell.get("metadata", {}).get("tags", [])
    return list(tags) if isinstance(tags, (list, tuple)) else []


def strip_solution(source: str) -> str:
    """Replace every BEGIN/END SOLUTION region by a NotImplementedError stub at the region's indentation."""
    out, inside = [], False
    for line in source.splitlines():
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError("nested '# BEGIN SOLUTION' markers")
            inside = True
            out.append(line[: len(line) - len(line.lstrip())] + STUB)
        elif stripped == END:
            if not inside:
                raise ValueError("'# END SOLUTION' without a matching '# BEGIN SOLUTION'")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError("'# BEGIN SOLUTION' without a matching '# END SOLUTION'")
    return "\n".join(out)


def drop_markers(source: str) -> str:
    """The solution edition's code: the source without the marker lines."""
    return "\n".join(line for line in source.splitlines() if line.strip() not in (BEGIN, END))


def solution_regions(source: str) -> list[str]:
    """The code lines inside BEGIN/END SOLUTION regions (what must not reach students)."""
    lines, inside = [], False
    for line in source.splitlines():
        if line.strip() == BEGIN:
            inside = True
        elif line.strip() == END:
            inside = False
        elif inside and line.strip():
            lines.append(line.strip())
    return lines


def _first_line(source: str) -> str:
    line = next((s.strip() for s in source.splitlines() if s.strip()), "")
    return line if len(line) <= 60 else line[:57] + "..."


def _cell_name(name: str, i: int, cell) -> str:
    return f"{name}, cell {i} ({cell.cell_type}, {_first_line(cell.source)!r})"


def _is_marker(line: str, cell_type: str) -> bool:
    """A marker line, or in code a comment that looks like one (markdown headings may say "begin" and "solution")."""
    return line.strip() in (BEGIN, END) or (cell_type == "code" and bool(_MARKER_LIKE.search(line)))


def _outside_regions(source: str) -> set[str]:
    out, inside = set(), False
    for line in source.splitlines():
        if line.strip() == BEGIN:
            inside = True
        elif line.strip() == END:
            inside = False
        elif not inside:
            out.add(line.strip())
    return out


def _marker_problems(source: str) -> list[str]:
    """What is wrong with the BEGIN/END SOLUTION regions of an exercise cell, by line (counted from 1)."""
    problems, begun = [], None
    for n, line in enumerate(source.splitlines(), 1):
        stripped = line.strip()
        if stripped == BEGIN:
            if begun:
                problems.append(f"line {n} opens a region inside the one opened on line {begun}; close it first "
                                f"with {END!r}")
            begun = n
        elif stripped == END:
            if not begun:
                problems.append(f"line {n} has {END!r} without a {BEGIN!r} before it")
            begun = None
        elif _MARKER_LIKE.search(line):
            problems.append(f"line {n} {stripped!r} looks like a solution marker but is not one; write exactly "
                            f"{BEGIN!r} or {END!r} on its own line")
    if begun:
        problems.append(f"line {begun} opens a solution region that is never closed; add {END!r} after the "
                        "reference body")
    if not problems and BEGIN not in (s.strip() for s in source.splitlines()):
        problems.append(f"it is tagged 'exercise' but marks no solution, so students would get it whole; put the "
                        f"reference body between {BEGIN!r} and {END!r}, or remove the tag")
    return problems


def source_problems(nb, name: str = "the notebook") -> list[str]:
    """Every cell where the markers and the tags disagree, each naming the notebook, the cell and the fix.

    Only ``exercise`` code cells are stripped and only ``solution`` cells dropped, so anything else that holds a
    solution would reach students as it is."""
    problems = []
    for i, cell in enumerate(nb.cells):
        where = _cell_name(name, i, cell)
        raw = cell.get("metadata", {}).get("tags", [])
        if not isinstance(raw, (list, tuple)):
            problems.append(f"{where}: its tags are {raw!r}, not a list, so no tag is read; write them as a list, "
                            f"e.g. [{raw!r}]")
        tags = _tags(cell)
        for t in tags:
            near = str(t).strip().lower().rstrip("s")
            if near in _TAG_NAMES and t != near:
                problems.append(f"{where}: tag {t!r} is not the tag {near!r} that editions read; rename it")
        exercise, solution = "exercise" in tags, "solution" in tags
        markers = [n for n, line in enumerate(cell.source.splitlines(), 1) if _is_marker(line, cell.cell_type)]
        if exercise and solution:
            problems.append(f"{where}: it is tagged both 'exercise' and 'solution'; an exercise cell stays in the "
                            "student edition (stripped), a solution cell is dropped from it: keep one tag")
        elif exercise and cell.cell_type != "code":
            problems.append(f"{where}: only code cells are stripped, so this {cell.cell_type} cell tagged "
                            "'exercise' would reach students whole; tag it 'solution' (dropped from the student "
                            "edition) or 'hint'")
        elif exercise:
            problems += [f"{where}: {p}" for p in _marker_problems(cell.source)]
        elif markers and not solution:
            problems.append(f"{where}: it has solution markers (line {', '.join(map(str, markers))}) but is not "
                            "tagged 'exercise', so the solution would reach students; tag it 'exercise' or remove "
                            "the markers")
        elif markers:
            problems.append(f"{where}: it has solution markers (line {', '.join(map(str, markers))}) but is a "
                            "'solution' cell, where they would stay in the solution edition; remove them")
        if not exercise and not solution and _DROPDOWN.search(cell.source):
            problems.append(f"{where}: it looks like a solution dropdown (<summary>Solution) but is not tagged "
                            "'solution', so students would see it; tag it 'solution'")
    return problems


def check_source(nb, name: str = "the notebook") -> None:
    """Refuse a source notebook whose tags and markers disagree (:func:`source_problems`), listing every cell."""
    problems = source_problems(nb, name)
    if problems:
        raise ValueError(f"{name} would give students solutions, so no edition is made:\n  " + "\n  ".join(problems))


def student_leaks(source, student, name: str = "the notebook") -> list[str]:
    """What of the source's solutions a student edition still holds: marker lines, ``solution`` cells, and lines
    that only the solution regions have (lines also written outside a region, e.g. ``return out``, are public)."""
    public, secret = set(), set()
    for cell in source.cells:
        if cell.cell_type != "code" or "solution" in _tags(cell):
            continue
        if "exercise" in _tags(cell):
            secret |= set(solution_regions(cell.source))
        public |= _outside_regions(cell.source)
    secret -= public
    hidden = {c.source for c in source.cells if "solution" in _tags(c)}
    leaks = []
    for i, cell in enumerate(student.cells):
        where = _cell_name(name, i, cell)
        if "solution" in _tags(cell) or (cell.source in hidden and cell.source.strip()):
            leaks.append(f"{where} is a solution cell")
        for n, line in enumerate(cell.source.splitlines(), 1):
            if _is_marker(line, cell.cell_type):
                leaks.append(f"{where}, line {n} is a solution marker: {line.strip()!r}")
            elif line.strip() in secret:
                leaks.append(f"{where}, line {n} is a solution line: {line.strip()!r}")
    return leaks


def exercises_of(nb) -> list[str]:
    """Names of the checks that the notebook's exercise cells call, in order (the autograder's columns)."""
    names = []
    for cell in nb.cells:
        if cell.cell_type == "code" and "exercise" in _tags(cell):
            names += [n[len("check_"):] for n in _CHECK_CALL.findall(cell.source)]
    return names


def make_edition(nb, kind: str, name: str = "the notebook"):
    """A copy of the notebook as the ``student`` or ``solution`` edition; refuses a source whose tags and markers
    disagree (:func:`check_source`) and a student edition that would still hold a solution line."""
    if kind not in ("student", "solution"):
        raise ValueError(f"Unknown edition {kind!r}: use 'student' or 'solution'.")
    check_source(nb, name)
    source, nb = nb, copy.deepcopy(nb)
    cells = []
    for cell in nb.cells:
        tags = _tags(cell)
        if kind == "student" and "solution" in tags:
            continue
        if cell.cell_type == "code":
            if "exercise" in tags:
                cell.source = strip_solution(cell.source) if kind == "student" else drop_markers(cell.source)
            cell.outputs, cell.execution_count = [], None
        cells.append(cell)
    nb.cells = cells
    nb.metadata["unlearn_kit_edition"] = kind
    if kind == "student":
        _refuse_leaks(source, nb, name)
    return nb


def _refuse_leaks(source, student, name: str, written: Path | None = None) -> None:
    leaks = student_leaks(source, student, f"student edition of {name}")
    if leaks:
        where = f"The student edition {written}" if written else f"The student edition of {name}"
        raise ValueError(f"{where} would hold solutions, so it is not published (cells are counted in the "
                         "student edition):\n  " + "\n  ".join(leaks))


def write_editions(source_dir: str | Path = None, out_dir: str | Path = "editions") -> dict[str, list[Path]]:
    """Write ``out_dir/student/*.ipynb`` and ``out_dir/solution/*.ipynb`` for every source notebook.

    Every source is checked before anything is written; each edition is written to a temporary file, and a student
    edition is read back and checked (:func:`student_leaks`) before it takes its name. A refused student edition is
    not left behind, nor is an older one of the same notebook."""
    from .reproduce import notebooks

    sources = sorted(Path(source_dir).glob("[0-9][0-9]_*.ipynb")) if source_dir else notebooks()
    if not sources:
        raise FileNotFoundError(f"No notebooks (NN_name.ipynb) found in {source_dir}.")
    books = {src: nbformat.read(src, as_version=4) for src in sources}
    problems = [p for src, nb in books.items() for p in source_problems(nb, src.name)]
    if problems:
        raise ValueError("These cells would give students solutions, so no edition is written:\n  "
                         + "\n  ".join(problems))
    written: dict[str, list[Path]] = {"student": [], "solution": []}
    for src, nb in books.items():
        for kind in written:
            folder = Path(out_dir) / kind
            folder.mkdir(parents=True, exist_ok=True)
            path, tmp = folder / src.name, folder / f".{src.name}.tmp"
            try:
                nbformat.write(make_edition(nb, kind, src.name), tmp)
                if kind == "student":
                    _refuse_leaks(nb, nbformat.read(tmp, as_version=4), src.name, written=path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                if kind == "student":
                    path.unlink(missing_ok=True)
                raise
            os.replace(tmp, path)
            written[kind].append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write student and solution editions of the notebooks.")
    ap.add_argument("--source", default=None, help="folder of source notebooks (default: the kit's notebooks/)")
    ap.add_argument("--out", default="editions", help="output folder (default: editions/)")
    args = ap.parse_args(argv)
    try:
        written = write_editions(args.source, args.out)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for kind, paths in written.items():
        print(f"{kind}: {len(paths)} notebooks in {Path(args.out) / kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
