"""Benchmark: batched nnsight patching against one trace per patch, and the full sweep on the default world.

Prints, in one run: the looped and batched times of the same sweep and their ratio (target: batched at least
5 times faster), and the full sweep's time (all layers x 3 component choices x all forget questions; target:
at most 20 s on 2 cores). Run: ``python benchmarks/patching.py``.
"""

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--method", default="grad_diff")
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    from unlearn_utils import patching as P
    from unlearn_utils.session import start

    S = start(args.smoke)
    unlearned, _ = S.unlearned(args.method, progress=False, **({"steps": 10} if args.smoke else {}))
    questions = S.world.facts(S.split, "trained")
    prompts = [p for p, q in zip(questions["prompt"], questions["is_question"]) if q]
    tf = P.teacher_forced_inputs(S.model, S.tokenizer, prompts)
    print(f"{len(prompts)} forget questions, {S.model.config.num_hidden_layers} layers, 3 components")
    P.patch_sweep(S.model, unlearned, S.tokenizer, tf, layers=[0], components=["mlp"])  # warm-up
    times = {}
    for batched in (False, True):
        t0 = time.perf_counter()
        df = P.patch_sweep(S.model, unlearned, S.tokenizer, tf, batched=batched)
        times[batched] = time.perf_counter() - t0
    print(f"looped sweep (one trace per patch): {times[False]:.2f} s")
    print(f"batched sweep (8 patches per trace): {times[True]:.2f} s")
    print(f"speed-up batched / looped: {times[False] / times[True]:.1f}x (target >= 5x)")
    t0 = time.perf_counter()
    tf = P.teacher_forced_inputs(S.model, S.tokenizer, prompts)
    df = P.patch_sweep(S.model, unlearned, S.tokenizer, tf)
    print(f"full sweep incl. teacher-forced inputs: {time.perf_counter() - t0:.2f} s for {len(df)} patches "
          f"(target <= 20 s)")


if __name__ == "__main__":
    main()
