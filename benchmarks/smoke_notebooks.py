"""How long each notebook takes in smoke mode on an empty cache, and what its smoke run trained.

Smoke mode exists so that CI (and a student checking their set-up) can run every cell in seconds; a cell that
trains a full-sized run there is a bug. This script runs each chosen notebook in smoke mode (its solution
edition) with a fresh, empty cache, prints its wall time and the largest number of training steps of every run
it cached, and the ratio to a reference time given on the command line (e.g. the time before a change).

    python benchmarks/smoke_notebooks.py 06 --threads 1 --reference 109
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", default=["06"], help="notebook number prefixes (default: 06)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in the kernel (default: the kit's)")
    ap.add_argument("--reference", type=float, default=None, help="a reference time in seconds to compare with")
    args = ap.parse_args()
    if args.threads:
        os.environ["UNLEARN_KIT_THREADS"] = str(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import nbformat

    from unlearn_utils.cache import cached_runs
    from unlearn_utils.editions import make_edition
    from unlearn_utils.reproduce import notebooks, run_notebook

    for path in notebooks():
        if not any(path.stem.startswith(p) for p in args.notebooks):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            os.environ["UNLEARN_KIT_CACHE"] = str(tmp / "cache")
            solution = tmp / "solution" / path.name
            solution.parent.mkdir()
            nbformat.write(make_edition(nbformat.read(path, as_version=4), "solution"), solution)
            start = time.time()
            run_notebook(solution, tmp / "out.ipynb", {"SMOKE": True, "REPORT_DIR": str(tmp / "report")},
                         timeout=1800, cwd=path.parent)
            seconds = time.time() - start
            runs = cached_runs(tmp / "cache")
        line = f"{path.stem}: {seconds:.1f} s in smoke mode on an empty cache"
        if args.reference:
            line += f" ({seconds / args.reference:.2f}x the reference {args.reference:.0f} s)"
        print(line, f"(threads: {os.environ.get('UNLEARN_KIT_THREADS', 'default')})")
        for kind, steps in sorted(runs.items()):
            print(f"  cached {kind}: {len(steps)} runs, steps {sorted(steps.values())}")


if __name__ == "__main__":
    main()
