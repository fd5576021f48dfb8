"""Benchmark: bfloat16 against float32 for SmolLM2-135M on this CPU, in speed and in the numbers' meaning.

Prints, in one run: seconds per training step (grad_diff at the preset batch: float32, float32 weights under bf16
autocast, bf16 weights), seconds per evaluation pass over the real-knowledge set (float32, autocast, bf16 weights),
and what bf16 changes in the answers: the share of the 764 questions whose greedy correctness differs from float32's,
and the number of facts the model "knows". bf16 is worth using only where the answers stay the same.
Run: ``python benchmarks/bf16.py`` (``--threads 1`` on a busy machine; say which you used).
"""

import argparse
import contextlib
import copy
import time

import torch


def timed(fn, repeat: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: choose_threads)")
    ap.add_argument("--steps", type=int, default=4, help="timed training steps per setting")
    args = ap.parse_args()

    from unlearn_utils.benchmark_data import load_real_questions, real_splits
    from unlearn_utils.data import encode_examples
    from unlearn_utils.evaluate import answer_scores
    from unlearn_utils.models import choose_threads, load_model, preset
    from unlearn_utils.training import pad_batch

    threads = choose_threads(args.threads)
    print(f"torch {torch.__version__}, {threads} thread(s); CPU bf16 support: "
          f"{torch.backends.cpu.get_cpu_capability()}")
    model, tok = load_model("smollm2-135m")
    data = real_splits(model, tok)
    bs = preset(model, "grad_diff")["batch_size"]
    f_rows, r_rows = data["forget"].to_list()[:bs], data["retain"].to_list()[:bs]
    batches = []
    for rows in (f_rows, r_rows):
        seqs, masks = encode_examples(tok, rows)
        batches.append(pad_batch(seqs, tok.pad_token_id, masks))

    def train_step(m, opt, autocast: bool):
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with ctx:
            loss = -m(**batches[0]).loss + m(**batches[1]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    print(f"\ntraining step, grad_diff, batch {bs} forget + {bs} retain:")
    step = {}
    for name, dtype, autocast in (("float32", torch.float32, False), ("float32 + bf16 autocast", torch.float32, True),
                                  ("bf16 weights", torch.bfloat16, False)):
        m = copy.deepcopy(model).to(dtype).train()
        opt = torch.optim.AdamW(m.parameters(), lr=6e-5)
        step[name] = timed(lambda m=m, opt=opt, a=autocast: train_step(m, opt, a), args.steps)
        print(f"  {name}: {step[name]:.2f} s/step ({step['float32'] / step[name]:.2f}x of float32)")

    questions = load_real_questions()
    prompts, answers = list(questions["prompt"]), list(questions["answer"])
    print(f"\nevaluation: greedy correctness of all {len(prompts)} real-knowledge questions:")
    correct, secs = {}, {}
    for name, dtype, autocast in (("float32", torch.float32, False), ("float32 + bf16 autocast", torch.float32, True),
                                  ("bf16 weights", torch.bfloat16, False)):
        m = copy.deepcopy(model).to(dtype).eval()
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()

        def run(m=m, ctx=ctx, name=name):
            with ctx, torch.no_grad():
                correct[name] = answer_scores(m, tok, prompts, answers, 64)["correct"].to_numpy()

        secs[name] = timed(run, 1)
        changed = (correct[name] != correct["float32"]).mean()
        print(f"  {name}: {secs[name]:.1f} s ({secs['float32'] / secs[name]:.2f}x of float32); knows "
              f"{int(correct[name].sum())} facts; correctness differs from float32 on {changed:.1%} of questions")


if __name__ == "__main__":
    main()
