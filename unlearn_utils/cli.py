"""Command line: ``unlearn-kit build | report | data`` (see ``unlearn-kit -h``)."""

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
    r = sub.add_parser("report", help="print the report card of a model (world, world-retain or a folder)")
    r.add_argument("model", nargs="?", default="world")
    r.add_argument("--split", default="forget05")
    r.add_argument("--smoke", action="store_true")
    d = sub.add_parser("data", help="write the default world as JSONL")
    d.add_argument("folder", nargs="?", default="data/world")
    args = ap.parse_args(argv)

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


if __name__ == "__main__":
    sys.exit(main())
