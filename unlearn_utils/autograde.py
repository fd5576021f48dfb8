"""Grade a folder of submitted student notebooks: run each in smoke mode, collect every exercise check.

``python -m unlearn_utils.autograde submissions/ --out grades.csv`` executes every ``*.ipynb`` below the folder
(the student is the file's parent folder name, or the file name when the folder is flat) with a time limit, and
writes one row per (student, notebook, exercise) with pass/fail and the check's message, plus a wide table
``<out>_wide.csv`` (students x exercises). A notebook that crashes or runs out of time becomes a row of failures
for each of its exercises; the runner itself never stops on a bad submission.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from pathlib import Path

import nbformat

from .checks import GRADE_FILE_ENV
from .editions import exercises_of
from .reproduce import notebooks

FIELDS = ["student", "notebook", "exercise", "passed", "message"]


def expected_exercises(notebook_name: str) -> list[str]:
    """The exercises of the kit's source notebook with this file name (empty for unknown notebooks)."""
    for src in notebooks():
        if src.name == notebook_name:
            return exercises_of(nbformat.read(src, as_version=4))
    return []


def grade_notebook(path: Path, timeout: int = 600, parameters: dict | None = None) -> list[dict]:
    """Execute one submission in smoke mode; one result per exercise (the kit's list, plus any other check run)."""
    import papermill as pm

    expected = expected_exercises(path.name)
    try:
        expected = expected or exercises_of(nbformat.read(path, as_version=4))
    except Exception:  # noqa: BLE001 - an unreadable file is graded as a crash below
        pass
    with tempfile.TemporaryDirectory() as tmp:
        grade_file = Path(tmp) / "grades.jsonl"
        old = os.environ.get(GRADE_FILE_ENV)
        os.environ[GRADE_FILE_ENV] = str(grade_file)
        error = None
        try:
            pm.execute_notebook(str(path), str(Path(tmp) / "executed.ipynb"),
                                parameters={"SMOKE": True, **(parameters or {})}, kernel_name="python3",
                                cwd=str(path.parent), execution_timeout=timeout, progress_bar=False)
        except Exception as e:  # noqa: BLE001 - crashes and time-outs become failures
            kind = "timed out" if "timeout" in type(e).__name__.lower() or "timed out" in str(e).lower() else "crashed"
            first = str(e).strip().splitlines()
            error = f"notebook {kind}: {type(e).__name__}: {first[-1] if first else ''}"[:300]
        finally:
            if old is None:
                os.environ.pop(GRADE_FILE_ENV, None)
            else:
                os.environ[GRADE_FILE_ENV] = old
        ran = [json.loads(line) for line in grade_file.read_text().splitlines()] if grade_file.exists() else []
    latest = {}
    for r in ran:  # the last run of a check counts (a learner may rerun a cell)
        latest[r["exercise"]] = r
    rows = []
    for name in list(dict.fromkeys(expected + list(latest))):
        if name in latest:  # a check that ran before a crash still counts
            r = latest[name]
            rows.append({"exercise": name, "passed": bool(r["passed"]), "message": r["message"]})
        else:
            rows.append({"exercise": name, "passed": False,
                         "message": error or "the check never ran (cell deleted or not reached)"})
    if error and not rows:
        rows.append({"exercise": "(notebook)", "passed": False, "message": error})
    return rows


def student_of(path: Path, root: Path) -> str:
    rel = path.relative_to(root)
    return rel.parts[0] if len(rel.parts) > 1 else path.stem


def grade_folder(folder: str | Path, out: str | Path = "grades.csv", timeout: int = 600) -> Path:
    """Grade every notebook below ``folder``; write the long CSV at ``out`` and a wide one beside it."""
    from tqdm.auto import tqdm

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"Submission folder {root} does not exist.")
    subs = sorted(p for p in root.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    if not subs:
        raise FileNotFoundError(f"No .ipynb files found below {root}.")
    rows = []
    for path in tqdm(subs, desc="grading"):
        for r in grade_notebook(path, timeout):
            rows.append({"student": student_of(path, root), "notebook": path.stem, **r})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    import pandas as pd

    df = pd.DataFrame(rows)
    wide = df.assign(col=df["notebook"] + ":" + df["exercise"]).pivot_table(
        index="student", columns="col", values="passed", aggfunc="last").replace({True: "pass", False: "fail"})
    wide.to_csv(out.with_name(out.stem + "_wide.csv"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Autograde submitted notebooks (smoke mode, time limit per cell).")
    ap.add_argument("folder", help="folder of submitted notebooks (one sub-folder per student, or flat)")
    ap.add_argument("--out", default="grades.csv")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per cell before a notebook counts as timed out")
    args = ap.parse_args(argv)
    path = grade_folder(args.folder, args.out, args.timeout)
    print(f"wrote {path} and {path.with_name(path.stem + '_wide.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
