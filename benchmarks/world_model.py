"""Benchmark: build the default world model from scratch and report what it knows.

Prints, in one run: build time and peak memory of the world model (and of the retain model),
greedy accuracy on trained and held-out phrasings, and accuracy after 8- and 4-bit quantization
(round-to-nearest in torch, and bitsandbytes). Run: ``python benchmarks/world_model.py``.
"""

import argparse
import json
import os
import resource
import sys
import tempfile
import time

import torch


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--smoke", action="store_true", help="tiny settings (seconds), to check the script runs")
    ap.add_argument("--use-cache", action="store_true", help="reuse cached models instead of building in a temp cache")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    args = ap.parse_args()
    if not args.use_cache:
        os.environ["UNLEARN_KIT_CACHE"] = tempfile.mkdtemp(prefix="unlearn-kit-bench-")
    torch.set_num_threads(min(2, torch.get_num_threads()))

    from unlearn_utils import evaluate as ev
    from unlearn_utils.models import SMOKE_CONFIG, WorldModelConfig, build_world_model
    from unlearn_utils.quantize import load_bnb, quantize_model

    cfg = WorldModelConfig(**SMOKE_CONFIG) if args.smoke else WorldModelConfig()
    world = cfg.world()
    res = {"threads": torch.get_num_threads(), "config": cfg.__dict__}
    t0 = time.time()
    model, tok = build_world_model(cfg, progress=False)
    res["build_seconds"] = round(time.time() - t0, 1)
    res["peak_rss_mb_after_build"] = round(peak_rss_mb())
    res["n_parameters"] = sum(p.numel() for p in model.parameters())
    trained = world.facts("trained", "trained")
    para = world.facts("trained", "paraphrase")
    res["accuracy_trained_phrasings"] = ev.accuracy(model, tok, trained)
    res["accuracy_heldout_phrasings"] = ev.accuracy(model, tok, para)
    res["accuracy_holdout_people"] = ev.accuracy(model, tok, world.facts("holdout", "trained"))
    for bits in (8, 4):
        q = quantize_model(model, bits, group_size=64)
        res[f"accuracy_rtn{bits}_g64"] = ev.accuracy(q, tok, trained)
        q = quantize_model(model, bits, group_size=None)
        res[f"accuracy_rtn{bits}_per_channel"] = ev.accuracy(q, tok, trained)
    res["accuracy_bnb_int8"] = ev.accuracy(load_bnb(model, 8), tok, trained)
    res["accuracy_bnb_nf4"] = ev.accuracy(load_bnb(model, 4, "nf4"), tok, trained)
    res["accuracy_bnb_fp4"] = ev.accuracy(load_bnb(model, 4, "fp4"), tok, trained)
    t0 = time.time()
    retain, _ = build_world_model(cfg, progress=False, exclude_split="forget05")
    res["retain_build_seconds"] = round(time.time() - t0, 1)
    res["retain_accuracy_forget05"] = ev.accuracy(retain, tok, world.facts("forget05", "trained"))
    res["retain_accuracy_retain"] = ev.accuracy(retain, tok, world.facts("retain", "trained"))
    res["peak_rss_mb"] = round(peak_rss_mb())
    for k, v in res.items():
        print(f"{k:32s} {v:.3f}" if isinstance(v, float) else f"{k:32s} {v}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2, default=str)


if __name__ == "__main__":
    sys.exit(main())
