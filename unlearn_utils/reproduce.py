"""Run the notebooks headless (papermill) and collect their executed copies and figures under ``reports/``.

``python -m unlearn_utils.reproduce`` is what ``make reproduce`` calls; ``--smoke`` runs every notebook
in its fast mode (what the tests do); ``--rebuild`` ignores the model cache. At the end it writes
``summary.md`` / ``summary.html`` (the claims table, see :mod:`unlearn_utils.report`). Each notebook writes its figures to ``REPORT_DIR/figures`` and its
headline numbers to ``REPORT_DIR/results/<notebook>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"


def notebooks() -> list[Path]:
    """The kit's notebooks in teaching order (00, 01, ...)."""
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def run_notebook(path: str | os.PathLike, out_path: str | os.PathLike, parameters: dict | None = None,
                 timeout: int = 1800, cwd: str | os.PathLike | None = None) -> float:
    """Execute one notebook with papermill, injecting ``parameters``; returns the wall time in seconds."""
    import papermill as pm

    path, out_path = Path(path), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    pm.execute_notebook(str(path), str(out_path), parameters=parameters or {}, kernel_name="python3",
                        cwd=str(cwd or path.parent), execution_timeout=timeout, progress_bar=False,
                        log_output=False)
    return time.time() - start


def write_results(name: str, results: dict, report_dir: str | os.PathLike | None) -> None:
    """Called by notebooks: save their headline numbers as JSON (atomically) for the summary."""
    if not report_dir:
        return
    folder = Path(report_dir) / "results"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.json.tmp"
    tmp.write_text(json.dumps(results, indent=2, default=float))
    os.replace(tmp, folder / f"{name}.json")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Execute every notebook headless and write reports/.")
    ap.add_argument("--smoke", action="store_true", help="fast mode (tiny world)")
    ap.add_argument("--out", default=str(ROOT / "reports"), help="report folder (default: reports/)")
    ap.add_argument("--only", nargs="*", help="run only notebooks whose name starts with these prefixes")
    ap.add_argument("--timeout", type=int, default=1800, help="per-cell time limit in seconds")
    ap.add_argument("--rebuild", action="store_true",
                    help="do not reuse cached world / unlearned models: build them again in a fresh cache folder")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    (out / "figures").mkdir(parents=True, exist_ok=True)
    if args.rebuild:  # the notebooks' kernels inherit the environment
        os.environ["UNLEARN_KIT_CACHE"] = str(out / f"cache-{time.strftime('%Y%m%d-%H%M%S')}")
        print(f"Rebuilding every model in {os.environ['UNLEARN_KIT_CACHE']}", flush=True)
    nbs = [p for p in notebooks() if not args.only or any(p.name.startswith(o) for o in args.only)]
    if not nbs:
        print("No notebooks matched.", file=sys.stderr)
        return 1
    from .report import write_summary

    times, failed = {}, []
    for i, nb in enumerate(nbs, 1):
        print(f"[{i}/{len(nbs)}] {nb.name} ...", flush=True)
        try:
            secs = run_notebook(nb, out / nb.name, {"SMOKE": args.smoke, "REPORT_DIR": str(out)}, args.timeout)
        except Exception as e:  # keep going: the other notebooks' reports are still worth writing
            failed.append(nb.name)
            print(f"[{i}/{len(nbs)}] {nb.name} FAILED ({type(e).__name__}); its executed copy in {out} shows where",
                  flush=True)
            continue
        times[nb.stem] = round(secs, 1)
        print(f"[{i}/{len(nbs)}] {nb.name} done in {secs:.0f} s", flush=True)
    (out / "timings.json").write_text(json.dumps(times, indent=2))
    summary = write_summary(out)
    print(f"Reports written to {out}; claims table in {summary}")
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
