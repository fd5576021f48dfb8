"""Run the notebooks headless (papermill) and collect their executed copies and figures under ``reports/``.

``python -m unlearn_utils.reproduce`` is what ``make reproduce`` calls; ``--smoke`` runs every notebook
in its fast mode (what the tests do); ``--rebuild`` ignores the model cache. At the end it writes
``summary.md`` / ``summary.html`` (the claims table, see :mod:`unlearn_utils.report`). Each notebook writes its
figures to ``REPORT_DIR/figures`` and its headline numbers to ``REPORT_DIR/results/<notebook>.json``.

``--model smollm2-135m`` (``make reproduce MODEL=smollm2-135m``) runs every notebook on that real model instead
(``MODEL``, ``DATA="real"``, ``RETAIN_MODEL=None``) into its own folder, ``reports/smollm2-135m/``, with the same
layout; the world's ``reports/summary.md`` then shows both runs' verdicts side by side. The world run (the default)
writes ``reports/`` itself.

With ``--jobs 2`` (the default on a machine with 2 or more cores) two notebooks run side by side, each kernel with
half the cores: two one-thread processes train faster than one two-thread process, while evaluation already uses
both threads well, so the run's wall time shrinks (measured times: benchmarks/RESULTS.md). The numbers are the same:
CPU results here do not depend on the thread count, and the summary is identical either way. Models shared between
notebooks are trained once: the cache locks an entry while it is built (:func:`unlearn_utils.cache.cache_lock`);
whichever notebook asks first trains it, the other waits and loads it.

A notebook run is itself cached (kind ``"notebook_runs"``): when the notebook, its parameters, the kit's source, the
data files, the model's file and the installed packages are all the same as in an earlier successful run, its
executed copy, figures and results are copied back instead of executing it again (the same outputs, by
determinism); ``--rerun`` (or ``--rebuild``) executes every notebook anyway.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"


def notebooks() -> list[Path]:
    """The kit's notebooks in teaching order (00, 01, ...)."""
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


# Notebook 06 loads notebook 04's GRUN module without its training trajectory: started first, it would train the
# module without one, and notebook 04 would train it again to record it. Notebook 02 only loads notebook 01's models:
# it runs after 01 rather than wait beside it. (Notebook 01's models need no other rule: Session.unlearned records
# notebook 01's trajectory whichever notebook trains them.) The others start as soon as a slot is free.
AFTER = {"02": ("01",), "06": ("04",)}
# Side by side, notebook 02 (short: it trains nothing) is started last: it fills the gap at the end of the run
# instead of taking a slot while the long notebooks (01, 04, 05) still wait for one.
LAST = ("02",)


def default_jobs() -> int:
    """Notebooks run at once by default: 2 where there are at least 2 cores, else 1."""
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def run_in_order(names: list[str], start: Callable[[str], object], jobs: int,
                 after: dict[str, tuple[str, ...]] = AFTER) -> Iterator[tuple[str, object]]:
    """Start ``start(name)`` (which returns a future) for each name in order, at most ``jobs`` at a time, a name only
    once the names it comes ``after`` (by two-digit prefix; absent ones are ignored) have finished; a name whose
    prerequisites are still running lets the next ready one go first. Yields ``(name, future)`` as each finishes."""
    prefix = {n: n[:2] for n in names}
    pending, running, finished = list(names), {}, set()
    while pending or running:
        for name in list(pending):
            if len(running) >= max(1, jobs):
                break
            needs = [d for d in after.get(prefix[name], ()) if d in prefix.values()]
            if all(d in finished for d in needs):
                running[start(name)] = name
                pending.remove(name)
        if not running:
            raise RuntimeError(f"Notebooks {pending} wait for each other (check AFTER for a cycle).")
        done, _ = wait(list(running), return_when=FIRST_COMPLETED)
        for future in done:
            name = running.pop(future)
            finished.add(prefix[name])
            yield name, future


def _limit_threads(threads: int) -> None:
    """In a worker process, before torch loads: use ``threads`` cores (the notebook kernels inherit this)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "UNLEARN_KIT_THREADS"):
        os.environ[var] = str(threads)
    if "torch" in sys.modules:  # already loaded: tell it too
        sys.modules["torch"].set_num_threads(threads)


def _execute(path: str, out_path: str, parameters: dict, timeout: int,
             reuse: bool = False) -> tuple[float, str | None, float | None]:
    """Worker: run one notebook (or, with ``reuse``, copy back an identical cached run); returns (seconds, None,
    seconds of the run that was reused or None) or (seconds, error text, None) instead of raising, since a
    notebook's error does not always survive the trip back to the parent process."""
    start = time.time()
    try:
        if reuse:
            earlier = execute_cached(path, out_path, parameters, timeout)  # before the clock is read
            return time.time() - start, None, earlier
        run_notebook(path, out_path, parameters, timeout)
    except Exception as e:
        text = str(e).strip()
        return time.time() - start, f"{type(e).__name__}: {text.splitlines()[-1] if text else ''}", None
    return time.time() - start, None, None


# Bump when what a notebook run's outputs depend on changes in a way the key below does not see.
RUN_CACHE_VERSION = 1
# The packages whose versions shape a notebook's numbers.
RUN_PACKAGES = ("torch", "transformers", "peft", "nnsight", "datasets", "bitsandbytes", "gguf", "numpy", "papermill")


def _tree_sha(folder: Path, pattern: str) -> str:
    """One SHA-256 over the names and contents of the files under ``folder`` matching ``pattern``."""
    import hashlib

    from .cache import sha256

    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob(pattern) if p.is_file() and "__pycache__" not in p.parts):
        h.update(f"{f.relative_to(folder)}:{sha256(f)};".encode())
    return h.hexdigest()


def run_key(path: str | os.PathLike, parameters: dict) -> dict:
    """Everything a notebook run's outputs depend on: the notebook's cells, the parameters (the report folder
    included: the executed copy shows it), the kit's source and data files, the real model's file, the installed
    packages' versions, Python's, and whether a GPU is used."""
    import hashlib
    import platform
    from importlib import metadata

    cells = [[c["cell_type"], "".join(c["source"])] for c in json.loads(Path(path).read_text())["cells"]]
    versions = {}
    for name in RUN_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    key = {"version": RUN_CACHE_VERSION, "notebook": Path(path).name,
           "cells": hashlib.sha256(json.dumps(cells).encode()).hexdigest(),
           "parameters": parameters, "kit": _tree_sha(ROOT / "unlearn_utils", "*.py"),
           "data": _tree_sha(ROOT / "data", "*"), "packages": versions, "python": platform.python_version(),
           "device": os.environ.get("UNLEARN_KIT_DEVICE"), "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES")}
    model = parameters.get("MODEL")
    if model and model != "world":
        from .models import REAL_MODELS

        key["model_file"] = REAL_MODELS[model].gguf_sha256 if model in REAL_MODELS else str(model)
    return key


def execute_cached(path: str | os.PathLike, out_path: str | os.PathLike, parameters: dict,
                   timeout: int = 1800) -> float | None:
    """Run a notebook as :func:`run_notebook` does, unless an identical run (:func:`run_key`) succeeded before: then
    copy back its executed copy, its figures (``REPORT_DIR/figures/<notebook>_*.png``) and its results. Returns
    None when the notebook was executed now, else the seconds the reused run took. A failed run is not cached."""
    from .cache import cached, write_files

    path, out_path = Path(path), Path(out_path)
    report = Path(parameters["REPORT_DIR"]) if parameters.get("REPORT_DIR") else None
    stem, reused = path.stem, [None]

    def build() -> dict[str, bytes]:
        start = time.time()
        seconds = run_notebook(path, out_path, parameters, timeout)
        files = {"executed.ipynb": out_path.read_bytes(), "seconds.json": json.dumps(seconds).encode()}
        if report is not None:
            result = report / "results" / f"{stem}.json"
            if result.is_file():
                files["results.json"] = result.read_bytes()
            for fig in sorted((report / "figures").glob(f"{stem}_*.png")):
                if fig.stat().st_mtime >= start - 1:  # written by this run, not left by an earlier one
                    files[f"figure-{fig.name}"] = fig.read_bytes()
        return files

    def load(folder: Path) -> dict[str, bytes]:
        files = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "manifest.json"}
        reused[0] = float(json.loads(files["seconds.json"]))
        targets = {"executed.ipynb": out_path}
        if report is not None:
            targets["results.json"] = report / "results" / f"{stem}.json"
            targets.update({n: report / "figures" / n[len("figure-"):] for n in files if n.startswith("figure-")})
        for name, target in targets.items():
            if name in files:
                _write_atomically(target, files[name])
        return files

    cached("notebook_runs", run_key(path, parameters), build, lambda files, folder: write_files(folder, files), load)
    return reused[0]


def _build_world_model(smoke: bool, exclude_split: str | None) -> float:
    """Worker: build (or find) the world model or its retain model the notebooks start from."""
    from .models import SMOKE_CONFIG, WorldModelConfig, build_world_model

    start = time.time()
    build_world_model(WorldModelConfig(**SMOKE_CONFIG) if smoke else WorldModelConfig(), progress=False,
                      exclude_split=exclude_split)
    return time.time() - start


def _prepare_real_model(name: str) -> float:
    """Fetch (unless an intact copy is here) and convert the real model once, before the notebooks all load it."""
    from .models import fetch_model, real_model_folder

    start = time.time()
    fetch_model(name, quiet=True)
    real_model_folder(name)
    return time.time() - start


def model_parameters(model: str) -> dict:
    """The notebook parameters that select ``model``: none for the world (the notebooks' defaults), else the real
    model on the real-knowledge questions, without a retain model (none exists for it). Unknown names: ValueError."""
    if model == "world":
        return {}
    from .models import REAL_MODELS

    if model not in REAL_MODELS:
        raise ValueError(f"Unknown model {model!r}: reproduce runs 'world' (the default) or a real model the kit "
                         f"ships: {', '.join(sorted(REAL_MODELS))}.")
    return {"MODEL": model, "DATA": "real", "RETAIN_MODEL": None}


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
    _write_atomically(Path(report_dir) / "results" / f"{name}.json",
                      json.dumps(results, indent=2, default=float).encode())


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a hidden sibling of ``path``, then rename it into place (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_bytes(data)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Execute every notebook headless and write reports/.")
    ap.add_argument("--smoke", action="store_true", help="fast mode (tiny world)")
    ap.add_argument("--out", default=str(ROOT / "reports"),
                    help="report folder (default: reports/); a --model run writes into OUT/<model>/")
    ap.add_argument("--model", default="world",
                    help="world (default) or a real model (smollm2-135m): every notebook runs on it with DATA=real "
                         "and no retain model, into OUT/<model>/")
    ap.add_argument("--only", nargs="*", help="run only notebooks whose name starts with these prefixes")
    ap.add_argument("--timeout", type=int, default=1800, help="per-cell time limit in seconds")
    ap.add_argument("--rebuild", action="store_true",
                    help="do not reuse cached world / unlearned models: build them again in a fresh cache folder")
    ap.add_argument("--rerun", action="store_true",
                    help="execute every notebook even where an identical earlier run is cached (models stay cached)")
    ap.add_argument("--jobs", type=int, default=default_jobs(),
                    help="notebooks run at once, each with cores/jobs threads (default: 2 with 2+ cores, else 1)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per notebook (default: cores/jobs with --jobs 2+; with --jobs 1, "
                         "$UNLEARN_KIT_THREADS or the cores other processes leave free)")
    args = ap.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads must be at least 1, got {args.threads}")
    try:  # before any folder is made or model fetched
        model_params = model_parameters(args.model)
    except ValueError as e:
        ap.error(str(e))
    base = Path(args.out).resolve()
    out = base if args.model == "world" else base / args.model
    (out / "figures").mkdir(parents=True, exist_ok=True)
    if args.rebuild:  # the notebooks' kernels inherit the environment
        os.environ["UNLEARN_KIT_CACHE"] = str(out / f"cache-{time.strftime('%Y%m%d-%H%M%S')}")
        print(f"Rebuilding every model in {os.environ['UNLEARN_KIT_CACHE']}", flush=True)
    nbs = [p for p in notebooks() if not args.only or any(p.name.startswith(o) for o in args.only)]
    if not nbs:
        print("No notebooks matched.", file=sys.stderr)
        return 1
    from .report import write_summary

    if args.model != "world":
        try:
            print(f"{args.model}: {_prepare_real_model(args.model):.0f} s (fetched or found, converted once)",
                  flush=True)
        except Exception as e:
            print(f"Cannot prepare {args.model} ({type(e).__name__}: {e}); no notebook was run.", file=sys.stderr)
            return 1
    jobs = max(1, min(args.jobs, len(nbs)))
    threads = args.threads or max(1, (os.cpu_count() or 1) // jobs)
    if jobs == 1 and args.threads:  # the kernels inherit it (unlearn_utils.models.choose_threads reads it)
        os.environ["UNLEARN_KIT_THREADS"] = str(args.threads)
    index = {nb.name: i for i, nb in enumerate(nbs, 1)}
    times, failed, reused, t0 = {}, [], [], time.time()
    params = {"SMOKE": args.smoke, "REPORT_DIR": str(out), **model_params}
    reuse = not (args.rerun or args.rebuild)

    def report(name: str, secs: float, error: str | None, earlier: float | None) -> None:
        i = index[name]
        if error is not None:  # keep going: the other notebooks' reports are still worth writing
            failed.append(name)
            print(f"[{i}/{len(nbs)}] {name} FAILED ({error}); its executed copy in {out} shows where", flush=True)
        elif earlier is not None:  # its time is the run it reuses: what the notebook costs
            times[Path(name).stem] = round(earlier, 1)
            reused.append(Path(name).stem)
            print(f"[{i}/{len(nbs)}] {name} reused an identical earlier run ({earlier:.0f} s then, {secs:.1f} s "
                  "now; --rerun executes it again)", flush=True)
        else:
            times[Path(name).stem] = round(secs, 1)
            print(f"[{i}/{len(nbs)}] {name} done in {secs:.0f} s", flush=True)

    if jobs == 1:
        for nb in nbs:
            print(f"[{index[nb.name]}/{len(nbs)}] {nb.name} ...", flush=True)
            report(nb.name, *_execute(str(nb), str(out / nb.name), params, args.timeout, reuse))
    else:
        import multiprocessing

        print(f"Running {jobs} notebooks at a time, {threads} thread(s) each", flush=True)
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_limit_threads,
                                 initargs=(threads,)) as pool:
            if args.model == "world":  # a real model was prepared above and has no retain model
                # the original and the retain world model, side by side, before the notebooks all ask for them
                builds = [pool.submit(_build_world_model, args.smoke, split) for split in (None, "forget05")]
                print("world models: " + ", ".join(f"{f.result():.0f} s" for f in builds) + " (built or found)",
                      flush=True)
            paths = {nb.name: nb for nb in nbs}

            def start(name: str):
                print(f"[{index[name]}/{len(nbs)}] {name} ...", flush=True)
                return pool.submit(_execute, str(paths[name]), str(out / name), params, args.timeout, reuse)

            order = sorted(paths, key=lambda n: n[:2] in LAST)  # stable: teaching order otherwise
            for name, future in run_in_order(order, start, jobs):
                report(name, *future.result())
    times = {nb.stem: times[nb.stem] for nb in nbs if nb.stem in times}  # teaching order
    (out / "timings.json").write_text(json.dumps(times, indent=2))
    run = {"wall_seconds": round(time.time() - t0, 1), "jobs": jobs,
           "threads_per_notebook": threads if jobs > 1 else None}
    if reused:
        run["reused"] = [nb.stem for nb in nbs if nb.stem in reused]
    if model_params:  # the summary names the model (a world run's run.json stays as it was)
        run.update(model=args.model, data=model_params["DATA"])
    (out / "run.json").write_text(json.dumps(run, indent=2))
    summary = write_summary(out)
    print(f"Reports written to {out} in {time.time() - t0:.0f} s; claims table in {summary}")
    if out != base and (base / "results").is_dir():  # the world's summary gains this run's column
        print(f"World and {args.model} side by side in {write_summary(base)}")
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
