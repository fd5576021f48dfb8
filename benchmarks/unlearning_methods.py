"""Benchmark: wall time and peak memory of each unlearning method on the default world (forget05).

Each method runs in its own process (so its peak RSS is its own), with its documented defaults and no evaluation
during training. Also prints forget / retain accuracy at the end. Run: ``python benchmarks/unlearning_methods.py``.
"""

import argparse
import json
import resource
import subprocess
import sys
import time


def run_one(method: str, lora: bool, smoke: bool) -> dict:
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    from unlearn_utils import evaluate as ev
    from unlearn_utils.models import SMOKE_CONFIG, WorldModelConfig, build_world_model
    from unlearn_utils.unlearning import unlearn

    cfg = WorldModelConfig(**SMOKE_CONFIG) if smoke else WorldModelConfig()
    model, tok = build_world_model(cfg, progress=False)
    world = cfg.world()
    forget, retain = world.facts("forget05", "trained"), world.facts("retain", "trained")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.time()
    out, log = unlearn(model, tok, forget, retain, method, lora=lora, progress=False,
                       **({"steps": 10} if smoke else {}))
    secs = time.time() - t0
    data = ev.eval_data(world, "forget05")
    return {"method": method + (" (LoRA)" if lora else ""), "steps": int(log["step"].max()),
            "seconds": round(secs, 1), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "rss_before_mb": round(rss_before),
            "forget_accuracy": round(ev.accuracy(out, tok, data.forget), 3),
            "retain_accuracy": round(ev.accuracy(out, tok, data.retain), 3)}


def main() -> None:
    from unlearn_utils.unlearning import METHODS

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--lora", action="store_true", help="also time the LoRA variant of each method")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.lora, args.smoke)))
        return
    rows = []
    for lora in ([False, True] if args.lora else [False]):
        for m in args.methods:
            cmd = ([sys.executable, __file__, "--one", m] + (["--lora"] if lora else [])
                   + (["--smoke"] if args.smoke else []))
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            row = json.loads(out)
            rows.append(row)
            print(f"{row['method']:18s} {row['steps']:4d} steps {row['seconds']:6.1f} s"
                  f"  peak RSS {row['peak_rss_mb']:5d} MB"
                  f"  forget {row['forget_accuracy']:.3f}  retain {row['retain_accuracy']:.3f}", flush=True)
    print(f"slowest: {max(r['seconds'] for r in rows):.1f} s (target: at most 60 s each on 2 cores)")


if __name__ == "__main__":
    main()
