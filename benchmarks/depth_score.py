"""Benchmark: does the unlearning depth score rank the methods by what is really gone? On the default world.

For every method of notebook 01 (the cached models, trained on first use) this prints, side by side:

* the depth score (arXiv 2605.24614; :func:`unlearn_utils.patching.depth_score`): 0 = the forget facts are intact
  inside the model, 1 = erased to the retain model's level;
* the two ground truths the world gives: the **output gap to the retain model** (the share of the drop from the
  original's to the retain model's log-probability of the forget answers that the unlearned model makes, teacher
  forced, clipped to [0, 1]: what the retain model says is gone from the answers) and **RTT** (fine-tune on T, test
  V: the recovery above the retain model's floor, so 1 - recovery is what RTT says is really gone);
* forget and retain accuracy.

It does so for two (original, retain model) pairs: the world's own (both trained from scratch, apart), and an aligned
pair (the retain model, and the retain model fine-tuned on every fact as the original, whose unlearned copies are
trained here), because the depth score assumes the retain model's layers sit in the original's basis; the basis
mismatch (:func:`unlearn_utils.patching.basis_mismatch`) says how far each pair is from that. Then the Spearman rank
correlation of the depth score with each ground truth over the methods. Run: ``python benchmarks/depth_score.py``
(about 25 minutes on 2 cores with the world's unlearned models cached, most of it training the aligned pair's; one
torch thread by default, ``--threads``); ``--markdown`` prints the tables for ``benchmarks/RESULTS.md``.
"""

import argparse
import time


def spearman(a, b) -> float:
    """Spearman's rank correlation (average ranks for ties), written out so the script needs no scipy."""
    import pandas as pd

    ra, rb = pd.Series(a).rank(), pd.Series(b).rank()
    return float(ra.corr(rb))


def output_gap(full, retain_score, unlearned_score, tau: float) -> float:
    """Mean over the questions where the retain model's answer log-probability is more than ``tau`` below the
    original's of clip((full - unlearned) / (full - retain), 0, 1): the output-level counterpart of the depth
    score."""
    gap = full - retain_score
    keep = gap > tau
    share = ((full - unlearned_score)[keep] / gap[keep]).clamp(0, 1)
    return float(share.mean()) if keep.any() else float("nan")


def aligned_original(base, tok, world, steps: int, lr: float, seed: int = 0):
    """The retain model fine-tuned on every training text (the forget people's included): an original that shares
    the retain model's basis, as TOFU's full and retain90 checkpoints share their base model's."""
    import copy

    from unlearn_utils.training import epoch_batches, set_seed, tokenize_texts, train_loop

    set_seed(seed)
    model = copy.deepcopy(base)
    seqs = tokenize_texts(tok, world.training_texts())
    train_loop(model, epoch_batches(seqs, 32, tok.pad_token_id, seed=seed), steps, lr, warmup=20,
               desc="fine-tuning the retain model on every fact")
    return model.eval()


def measure(original, retain_model, unlearned: dict, tok, world, split, T, V, args) -> tuple:
    """The table of one (original, retain model) pair: each unlearned model's depth score next to the ground
    truths, plus the basis mismatch and the RTT floor and ceiling."""
    import pandas as pd

    from unlearn_utils import evaluate as ev
    from unlearn_utils import patching as P
    from unlearn_utils import relearn

    forget_q = [r["prompt"] for r in world.facts(split, "trained") if r["is_question"]]
    retain_q = [r["prompt"] for r in world.facts("retain", "trained", split) if r["is_question"]]
    tf = P.teacher_forced_inputs(original, tok, forget_q[:128])
    control = P.teacher_forced_inputs(original, tok, retain_q[:128])
    knowledge = P.layer_drops(original, retain_model, tok, tf)
    mismatch = P.basis_mismatch(knowledge, P.layer_drops(original, retain_model, tok, control))
    full, retain_out = knowledge.full, P.answer_logprob(retain_model, tf)
    data = ev.eval_data(world, split)
    rows = []
    for m, model in unlearned.items():
        depth = P.depth_from_drops(knowledge, P.layer_drops(original, model, tok, tf), args.threshold)
        rows.append({"method": m, "depth score": depth.score, "questions": depth.n_defined,
                     "output gap to retain": output_gap(full, retain_out, P.answer_logprob(model, tf),
                                                        args.threshold),
                     "forget acc": ev.accuracy(model, tok, data.forget),
                     "retain acc": ev.accuracy(model, tok, data.retain)})
    models = {"original": original, "retain model": retain_model, **unlearned}
    curves, floor, ceiling = relearn.rtt_with_floor(models, tok, T, V, epochs=args.rtt_epochs, lr=args.rtt_lr,
                                                    seed=0, progress=True)
    rates = relearn.recovery_table(curves, list(unlearned), floor, ceiling)
    table = pd.DataFrame(rows).set_index("method")
    table["RTT V after"] = rates["V after"]
    table["gone per RTT"] = 1 - rates["recovery above floor"]
    layers = ", ".join(f"L{k} {float((knowledge.drops[:, k] > args.threshold).float().mean()):.2f}"
                       for k in range(knowledge.drops.shape[1]))
    info = (f"{len(tf)} forget questions, {len(control)} retain questions; basis mismatch {mismatch:.3f}; share of "
            f"forget questions each layer carries (d1 > {args.threshold}): {layers}; RTT floor {floor:.3f}, "
            f"ceiling {ceiling:.3f}; original: forget {ev.accuracy(original, tok, data.forget):.3f}, retain "
            f"{ev.accuracy(original, tok, data.retain):.3f}")
    return table, info


def show(title, table, info, markdown: bool) -> None:
    print(f"\n## {title}\n{info}")
    from unlearn_utils.report import markdown_table

    print(markdown_table(table.reset_index()) if markdown else table.round(3).to_string())
    for truth in ("output gap to retain", "gone per RTT"):
        ok = table[["depth score", truth]].dropna()
        print(f"Spearman(depth score, {truth}) over {len(ok)} methods: {spearman(ok['depth score'], ok[truth]):.3f}")


def main() -> None:
    import torch

    from unlearn_utils.unlearning import METHODS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    ap.add_argument("--split", default="forget05")
    ap.add_argument("--threshold", type=float, default=0.05, help="the depth score's tau, in nats")
    ap.add_argument("--rtt-epochs", type=int, default=4)
    ap.add_argument("--rtt-lr", type=float, default=3e-4, help="notebook 05's RTT learning rate on the world")
    ap.add_argument("--aligned-steps", type=int, default=600, help="fine-tuning steps of the aligned original")
    ap.add_argument("--aligned-lr", type=float, default=1e-3)
    ap.add_argument("--pairs", nargs="*", default=["default", "aligned"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="the smoke world model and short runs (a plumbing check)")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from unlearn_utils.session import start
    from unlearn_utils.unlearning import unlearn

    S = start(args.smoke, split=args.split, notebook=None)
    original, tok, world = S.model, S.tokenizer, S.world
    settings = {"steps": S.smoke_steps} if args.smoke else {}
    if args.smoke:
        args.rtt_epochs, args.aligned_steps = 1, 20
    T, V = S.tv_split()
    t0 = time.time()
    if "default" in args.pairs:
        unlearned = {m: S.unlearned(m, **settings)[0] for m in args.methods}
        table, info = measure(original, S.retain_model, unlearned, tok, world, args.split, T, V, args)
        show("The world's pair: original and retain model each trained from scratch", table, info, args.markdown)
    if "aligned" in args.pairs:
        aligned = aligned_original(S.retain_model, tok, world, args.aligned_steps, args.aligned_lr)
        forget, retain = S.forget_set, S.retain_set
        unlearned = {m: unlearn(aligned, tok, forget, retain, m, progress=False, **settings)[0]
                     for m in args.methods}
        table, info = measure(aligned, S.retain_model, unlearned, tok, world, args.split, T, V, args)
        show("An aligned pair: the retain model, and it fine-tuned on every fact as the original", table, info,
             args.markdown)
    print(f"\n{time.time() - t0:.0f} s, {args.threads} torch thread(s)")


if __name__ == "__main__":
    main()
