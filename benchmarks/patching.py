"""Benchmark: the resumed patching sweep against the full rerun, on the world model and on SmolLM2-135M.

The full rerun (``patch_sweep(..., resume=False)``) runs the whole unlearned model under nnsight for every patch; the
resumed sweep (the default) runs it once and each patch only from its lowest layer up. Prints, in one run: the torch
thread count, both times of the same sweep on each model, their ratio (target on SmolLM2, 30 layers, window 1, mlp
and attn, 8 forget questions: at least 1.8x) and the largest KRS difference between the two (they must agree), and
the world model's full sweep time (all layers x 3 components x all forget questions; target: at most 20 s on
2 cores). Run: ``python benchmarks/patching.py`` (``--threads 2`` by default).
"""

import argparse
import time

import torch


def timed_pair(P, original, unlearned, tok, tf, **settings) -> tuple[float, float, float]:
    """(full rerun seconds, resumed seconds, largest |KRS difference|) of one sweep, one warm-up patch first."""
    P.patch_sweep(original, unlearned, tok, tf, layers=[0], components=["mlp"])  # warm-up
    times, sweeps = {}, {}
    for resume in (False, True):
        t0 = time.perf_counter()
        sweeps[resume] = P.patch_sweep(original, unlearned, tok, tf, resume=resume, **settings)
        times[resume] = time.perf_counter() - t0
    diff = float((sweeps[True]["krs"] - sweeps[False]["krs"]).abs().max())
    return times[False], times[True], diff


def report(name: str, full: float, resumed: float, diff: float, target: str = "") -> None:
    print(f"{name}: full rerun {full:.2f} s, resumed {resumed:.2f} s, ratio full / resumed {full / resumed:.2f}x"
          f"{target}; largest |KRS difference| {diff:.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--method", default="grad_diff")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    from unlearn_utils import benchmark_data as bd
    from unlearn_utils import patching as P
    from unlearn_utils.models import load_model
    from unlearn_utils.session import start
    from unlearn_utils.unlearning import unlearn

    # the world model (load_model("world"), cached) and the session's cached unlearned copy
    S = start(args.smoke)
    unlearned, _ = S.unlearned(args.method, progress=False, **({"steps": 10} if args.smoke else {}))
    questions = S.world.facts(S.split, "trained")
    prompts = [p for p, q in zip(questions["prompt"], questions["is_question"]) if q]
    tf = P.teacher_forced_inputs(S.model, S.tokenizer, prompts)
    n = S.model.config.num_hidden_layers
    print(f"world model: {len(prompts)} forget questions, {n} layers, window 1, components mlp, attn, both")
    report("world model", *timed_pair(P, S.model, unlearned, S.tokenizer, tf))
    t0 = time.perf_counter()
    tf = P.teacher_forced_inputs(S.model, S.tokenizer, prompts)
    df = P.patch_sweep(S.model, unlearned, S.tokenizer, tf)
    print(f"world model, full sweep incl. teacher-forced inputs: {time.perf_counter() - t0:.2f} s for {len(df)} "
          "patches (target <= 20 s)")

    # SmolLM2-135M: 8 forget questions of the real-knowledge set; the unlearned copy: 2 LoRA grad_diff steps
    model, tok = load_model("smollm2-135m")
    splits = bd.real_splits(model, tok)
    k = 2 if args.smoke else 8
    rows, retain = ([{"prompt": p, "answer": a} for p, a in zip(splits[s]["prompt"][:k], splits[s]["answer"][:k])]
                    for s in ("forget", "retain"))
    out, _ = unlearn(model, tok, rows, retain, "grad_diff", lora=True, steps=2, batch_size=k, lr=1e-3,
                     retain_weight=1.0, progress=False)
    smol_unlearned = out.merge_and_unload().eval()
    tf = P.teacher_forced_inputs(model, tok, [r["prompt"] for r in rows], gold=[r["answer"] for r in rows])
    layers = [28, 29] if args.smoke else None
    print(f"SmolLM2-135M: {len(rows)} forget questions, {model.config.num_hidden_layers} layers, window 1, "
          f"components mlp, attn")
    report("SmolLM2-135M", *timed_pair(P, model, smol_unlearned, tok, tf, components=["mlp", "attn"], window=1,
                                       layers=layers), target=" (target >= 1.8x)")


if __name__ == "__main__":
    main()
