"""The search behind SmolLM2-135M's unlearning preset (``unlearn_utils.models.PRESETS["smollm2-135m"]``).

On the real-knowledge set (``DATA="real"``: a fixed 10 % of the facts the model knows to forget, the rest to keep),
full fine-tuning at batch 8, constant learning rate: each run evaluates forget / retain accuracy (and the forget
set's held-out phrasings) every few steps. With a constant learning rate and no warm-up, the first k steps of a run
are exactly a run of k steps, so one run per (method, lr, retain weight) gives every step count. A setting passes
when forget accuracy <= 0.10 with retain accuracy >= 0.90; the table lists, for each, the first checkpoint that
passes (or the best trade-off when none does). Run: ``python benchmarks/real_model_presets.py``.
"""

import argparse
import itertools
import json
import time

import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--methods", nargs="*", default=["grad_diff", "npo_gd"])
    ap.add_argument("--lrs", nargs="*", type=float, default=[1e-5, 2e-5, 4e-5])
    ap.add_argument("--retain-weights", nargs="*", type=float, default=[1.0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="write every trajectory as JSON here")
    args = ap.parse_args()

    from unlearn_utils import evaluate as ev
    from unlearn_utils.benchmark_data import real_splits
    from unlearn_utils.models import choose_threads, load_model
    from unlearn_utils.unlearning import unlearn

    threads = choose_threads(args.threads)
    model, tok = load_model("smollm2-135m")
    data = real_splits(model, tok)
    # forget and retain accuracy only during the search (the held-out phrasings are scored by real_model.py)
    traj = ev.trajectory_metrics(tok, ev.EvalData(forget=data["forget"], retain=data["retain"]))
    print(f"{threads} thread(s); forget {len(data['forget'])} facts, retain {len(data['retain'])}", flush=True)
    rows, logs = [], {}
    for method, lr, rw in itertools.product(args.methods, args.lrs, args.retain_weights):
        start = time.time()
        _, log = unlearn(model, tok, data["forget"], data["retain"], method, lr=lr, steps=args.steps,
                         batch_size=args.batch_size, retain_weight=rw, eval_fn=traj, eval_every=args.every,
                         progress=False)
        seconds = time.time() - start
        evals = log.dropna(subset=["forget_accuracy"])
        logs[f"{method} lr={lr:g} rw={rw:g}"] = evals.to_dict(orient="records")
        ok = evals[(evals.forget_accuracy <= 0.10) & (evals.retain_accuracy >= 0.90)]
        pick = ok.iloc[0] if len(ok) else evals.assign(gap=evals.retain_accuracy - evals.forget_accuracy) \
            .sort_values("gap").iloc[-1]
        rows.append({"method": method, "lr": lr, "retain_weight": rw, "passes": bool(len(ok)),
                     "step": int(pick["step"]), "forget": pick["forget_accuracy"], "retain": pick["retain_accuracy"],
                     "run_seconds": round(seconds, 1)})
        print(pd.DataFrame([rows[-1]]).to_string(index=False, header=len(rows) == 1), flush=True)
        print("   trajectory (step: forget / retain):",
              ", ".join(f"{int(r.step)}: {r.forget_accuracy:.2f}/{r.retain_accuracy:.2f}" for r in evals.itertuples()),
              flush=True)
    print(pd.DataFrame(rows).to_string(index=False))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": rows, "trajectories": logs}, f, indent=1, default=float)


if __name__ == "__main__":
    main()
