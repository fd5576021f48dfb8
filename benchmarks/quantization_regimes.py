"""Search for the regime in which quantization brings forgotten facts back (Zhang et al., arXiv 2410.16454).

Unlearns the default world's forget05 people with small learning rates (the paper's utility-constrained setting)
and, every ``--every`` steps, quantizes the model with round-to-nearest at 4, 3 and 2 bits, group-wise (64) and per
output channel, measuring forget and retain accuracy. Checkpoints early in training are the "close to the decision
boundary" end; 2 bits is where the original itself loses part of its knowledge (as the paper's 7B models do at 4
bits). Prints one line per checkpoint and, at the end, the largest gain of forget accuracy any quantizer gave.
Run: ``python benchmarks/quantization_regimes.py`` (about 6 minutes on 2 cores).

Two more knobs of the paper's regime:
- ``--width 256`` builds (once, cached) a wider world model (MLP 4x the width, world-model learning rate
  ``--world-lr``) and scans it the same way: does a wider model, whose weights each move less, come back?
- ``--only down_proj@4,5`` restricts the change to some weights (here the down projections of layers 4 and 5, where
  Hong et al. find the knowledge is retrieved): fewer weights carry the whole change.
``--runs grad_diff:3e-5:400,npo_kl:1e-5:800`` picks the unlearning runs (method:lr:steps).
"""

import argparse
import json
import time

import torch

QUANTIZERS = [(4, 64), (4, None), (3, 64), (3, None), (2, 64), (2, None)]
RUNS = [("grad_diff", 1e-5, 800), ("npo_kl", 1e-5, 800), ("grad_diff", 3e-5, 400)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--every", type=int, default=80)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--width", type=int, default=None, help="hidden size of the world model (default: 128)")
    ap.add_argument("--world-lr", type=float, default=None, help="learning rate of the wider world model's training")
    ap.add_argument("--only", default=None,
                    help="train only these weights: NAME@LAYERS, e.g. down_proj@4,5 or mlp@3,4,5")
    ap.add_argument("--runs", default=None, help="method:lr:steps,... (default: the three runs in RUNS)")
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    from unlearn_utils import evaluate as ev
    from unlearn_utils.session import start
    from unlearn_utils.quantize import quantize_model
    from unlearn_utils.unlearning import unlearn

    overrides = {}
    if args.width:
        overrides = dict(hidden_size=args.width, intermediate_size=4 * args.width)
        if args.world_lr:
            overrides["lr"] = args.world_lr
    S = start(args.smoke, **overrides)
    world, model, tok = S.world, S.model, S.tokenizer
    n_params = sum(p.numel() for p in model.parameters())
    print(f"world model: width {model.config.hidden_size}, {n_params:,} parameters", flush=True)
    only = None
    if args.only:
        name, layers = args.only.split("@")
        only = tuple(n.rsplit(".", 1)[0] if n.endswith((".weight", ".bias")) else n
                     for n, _ in model.named_parameters()
                     if any(f"layers.{i}." in n for i in layers.split(",")) and f".{name}." in n + ".")
        only = tuple(dict.fromkeys(only))
        print("training only:", ", ".join(only), flush=True)
    runs = RUNS
    if args.runs:
        runs = [(m, float(lr), int(n)) for m, lr, n in (r.split(":") for r in args.runs.split(","))]
    data = ev.eval_data(world, S.split)
    retain = data.retain.select(range(0, len(data.retain), 4))  # a quarter of the retain questions, for speed

    def measure(m) -> dict:
        out = {"full precision": (ev.accuracy(m, tok, data.forget), ev.accuracy(m, tok, retain))}
        for bits, group in QUANTIZERS:
            q = quantize_model(m, bits, group)
            out[f"{bits}-bit {'g' + str(group) if group else 'per-channel'}"] = (
                ev.accuracy(q, tok, data.forget), ev.accuracy(q, tok, retain))
        return out

    original = measure(model)
    print("original (forget, retain):", json.dumps({k: [round(a, 3), round(b, 3)] for k, (a, b) in original.items()}))
    best = {"gain": float("-inf"), "where": "no checkpoint forgot anything"}
    for method, lr, steps in runs:
        start_t = time.time()
        n_checkpoint = [0]

        def track(m, method=method, lr=lr):
            r = measure(m)
            fp = r["full precision"][0]
            gains = {k: a - fp for k, (a, _) in r.items() if k != "full precision"}
            print(f"{method} lr {lr:g} checkpoint {n_checkpoint[0]}: forget {fp:.3f} retain "
                  f"{r['full precision'][1]:.3f}; quantized forget - full precision: "
                  + ", ".join(f"{k} {g:+.3f}" for k, g in gains.items()), flush=True)
            n_checkpoint[0] += 1
            top = max(gains, key=gains.get)
            if fp < 0.9 and gains[top] > best["gain"]:  # only checkpoints that had forgotten something
                best.update(gain=gains[top], where=f"{method} lr {lr:g} at forget {fp:.3f}, {top}")
            return {"forget_accuracy": fp}

        unlearn(model, tok, world.facts(S.split, "trained"), world.facts("retain", "trained", S.split), method,
                lr=lr, steps=10 if args.smoke else steps, only_modules=only, eval_fn=track,
                eval_every=5 if args.smoke else args.every, progress=False)
        print(f"{method} lr {lr:g}: {time.time() - start_t:.0f} s", flush=True)
    print(f"largest forget-accuracy gain from quantizing a model that had forgotten something: {best['gain']:+.3f}"
          f" ({best['where']})")


if __name__ == "__main__":
    main()
