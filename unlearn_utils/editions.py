"""Student and solution editions of the notebooks, generated from one source each.

The convention in a source notebook (``notebooks/NN_*.ipynb``):

* a code cell tagged ``exercise`` holds the learner's function with its reference body between the lines
  ``# BEGIN SOLUTION`` and ``# END SOLUTION``, followed by the check that runs in the same cell;
* markdown cells tagged ``hint`` stay in both editions; cells tagged ``solution`` (the solution dropdowns)
  appear only in the solution edition.

The **student edition** replaces each marked region by ``raise NotImplementedError(...)`` at the same indentation
and drops ``solution`` cells; the **solution edition** keeps everything and only removes the marker lines.
``python -m unlearn_utils.editions`` (or ``make editions``) writes both under ``editions/``.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
STUB = 'raise NotImplementedError("Exercise: write this function, then run the cell to check it.")'
_CHECK_CALL = re.compile(r"checks\.(check_\w+)\(")


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


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


def exercises_of(nb) -> list[str]:
    """Names of the checks that the notebook's exercise cells call, in order (the autograder's columns)."""
    names = []
    for cell in nb.cells:
        if cell.cell_type == "code" and "exercise" in _tags(cell):
            names += [n[len("check_"):] for n in _CHECK_CALL.findall(cell.source)]
    return names


def make_edition(nb, kind: str):
    """A copy of the notebook as the ``student`` or ``solution`` edition."""
    if kind not in ("student", "solution"):
        raise ValueError(f"Unknown edition {kind!r}: use 'student' or 'solution'.")
    nb = copy.deepcopy(nb)
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
    return nb


def write_editions(source_dir: str | Path = None, out_dir: str | Path = "editions") -> dict[str, list[Path]]:
    """Write ``out_dir/student/*.ipynb`` and ``out_dir/solution/*.ipynb`` for every source notebook."""
    from .reproduce import notebooks

    sources = sorted(Path(source_dir).glob("[0-9][0-9]_*.ipynb")) if source_dir else notebooks()
    if not sources:
        raise FileNotFoundError(f"No notebooks (NN_name.ipynb) found in {source_dir}.")
    written: dict[str, list[Path]] = {"student": [], "solution": []}
    for src in sources:
        nb = nbformat.read(src, as_version=4)
        for kind in written:
            folder = Path(out_dir) / kind
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / src.name
            nbformat.write(make_edition(nb, kind), path)
            written[kind].append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write student and solution editions of the notebooks.")
    ap.add_argument("--source", default=None, help="folder of source notebooks (default: the kit's notebooks/)")
    ap.add_argument("--out", default="editions", help="output folder (default: editions/)")
    args = ap.parse_args(argv)
    for kind, paths in write_editions(args.source, args.out).items():
        print(f"{kind}: {len(paths)} notebooks in {Path(args.out) / kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
