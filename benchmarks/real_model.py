"""Benchmark: SmolLM2-135M, the kit's real model, on a CPU: loading, memory, known facts, step and evaluation time.

Prints, in one run: the load time (from the converted safetensors copy, and reading the GGUF file itself), peak
memory, the facts the model knows per category of the real-knowledge set, seconds per unlearning step (full
fine-tuning and LoRA, grad_diff at the preset batch) next to a bare PyTorch step on the same batches and model
(forward + backward + AdamW, as a researcher would write it: the ratio says what the kit's loop adds), seconds per
evaluation pass, and the preset's forget / retain accuracy for grad_diff and npo_gd.
Run: ``python benchmarks/real_model.py`` (``--threads 1`` on a busy machine; say which you used).
"""

import argparse
import copy
import resource
import time

import torch


def peak_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def bare_steps(model, batches, steps: int, lr: float, lora: bool) -> float:
    """Seconds per step of a plain loop: the grad_diff loss (minus forget NLL + retain NLL) on the full logits."""
    model = copy.deepcopy(model)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98))

    def step(i):
        f, r = batches[i % len(batches)]
        loss = -model(**f).loss + model(**r).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    step(0)  # warm-up, as the kit's first step is timed with the rest below
    start = time.perf_counter()
    for i in range(1, steps + 1):
        step(i)
    return (time.perf_counter() - start) / steps


def kit_steps(model, tok, forget, retain, steps: int, lora: bool, batch_size: int) -> float:
    """Seconds per step of ``unlearn()`` (grad_diff), the first step excluded (a one-step run is subtracted)."""
    from unlearn_utils.unlearning import unlearn

    times = {}
    for n in (1, steps + 1):
        start = time.perf_counter()
        unlearn(model, tok, forget, retain, "grad_diff", steps=n, lora=lora, batch_size=batch_size, progress=False)
        times[n] = time.perf_counter() - start
    return (times[steps + 1] - times[1]) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: choose_threads)")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per loop")
    ap.add_argument("--skip-presets", action="store_true", help="do not train the presets (the slow part)")
    ap.add_argument("--thread-counts", nargs="*", type=int, default=[1, 2],
                    help="also time a bare step at each of these thread counts (the load average is printed)")
    args = ap.parse_args()

    from unlearn_utils import evaluate as ev
    from unlearn_utils.benchmark_data import real_splits
    from unlearn_utils.models import choose_threads, load_gguf, load_model, model_file, preset
    from unlearn_utils.training import pad_batch
    from unlearn_utils.unlearning import unlearn
    from unlearn_utils.data import encode_examples

    threads = choose_threads(args.threads)
    print(f"torch {torch.__version__}, {threads} thread(s)")
    start = time.perf_counter()
    model, tok = load_model("smollm2-135m")
    print(f"load (converted safetensors copy, checksums verified): {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    load_gguf(model_file("smollm2-135m"))
    print(f"read the GGUF file itself (dequantize; done once, by make setup): {time.perf_counter() - start:.1f} s")
    print(f"peak memory so far: {peak_mb()} MB")

    start = time.perf_counter()
    data = real_splits(model, tok)
    print(f"known facts ({time.perf_counter() - start:.1f} s, cached after the first run):")
    table = data["known_by_category"]
    print(table.to_string())
    print(f"total: {table['known'].sum()} of {table['total'].sum()} known; forget {len(data['forget'])}, "
          f"retain {len(data['retain'])}")

    settings = preset(model, "grad_diff")
    bs = settings["batch_size"]
    f_rows, r_rows = data["forget"].to_list(), data["retain"].to_list()
    batches = []
    for i in range(args.steps + 1):
        pair = []
        for rows in (f_rows, r_rows):
            chunk = [rows[(i * bs + j) % len(rows)] for j in range(bs)]
            seqs, masks = encode_examples(tok, chunk)
            pair.append(pad_batch(seqs, tok.pad_token_id, masks))
        batches.append(tuple(pair))
    print(f"\nunlearning step, grad_diff, batch {bs} forget + {bs} retain examples:")
    for lora in (False, True):
        kit = kit_steps(model, tok, data["forget"], data["retain"], args.steps, lora, bs)
        bare = bare_steps(model, batches, args.steps, settings["lr"], lora)
        print(f"  {'LoRA' if lora else 'full'}: kit {kit:.2f} s/step, bare PyTorch {bare:.2f} s/step, "
              f"ratio {kit / bare:.2f}x")
    print(f"peak memory so far: {peak_mb()} MB")
    if args.thread_counts:
        import os

        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        per = {}
        for n in args.thread_counts:
            torch.set_num_threads(n)
            per[n] = bare_steps(model, batches, max(2, args.steps // 2), settings["lr"], lora=False)
        torch.set_num_threads(threads)
        base = per[args.thread_counts[0]]
        print(f"bare step by thread count (1-minute load average {load:.1f} before): "
              + ", ".join(f"{n} thread(s) {t:.2f} s ({base / t:.2f}x of {args.thread_counts[0]})"
                          for n, t in per.items()))

    eval_fn = ev.trajectory_metrics(tok, ev.eval_data_from(data))
    eval_fn(model)  # tokenizes once
    start = time.perf_counter()
    scores = eval_fn(model)
    sizes = sum(len(data[k]) for k in ("forget", "forget_para", "retain"))
    print(f"\nevaluation pass (forget, forget paraphrases, retain: {sizes} questions): "
          f"{time.perf_counter() - start:.1f} s -> {scores}")

    if not args.skip_presets:
        print("\npreset runs (full fine-tuning):")
        for method in ("grad_diff", "npo_gd"):
            start = time.perf_counter()
            out, _ = unlearn(model, tok, data["forget"], data["retain"], method, progress=False)
            secs = time.perf_counter() - start
            cfg = out.unlearn_config
            print(f"  {method}: lr {cfg.lr:g}, {cfg.steps} steps, batch {cfg.batch_size}, retain weight "
                  f"{cfg.retain_weight:g}: forget {ev.accuracy(out, tok, data['forget']):.3f}, retain "
                  f"{ev.accuracy(out, tok, data['retain']):.3f}, forget paraphrases "
                  f"{ev.accuracy(out, tok, data['forget_para']):.3f} ({secs:.0f} s)")
            del out
    print(f"peak memory: {peak_mb()} MB")


if __name__ == "__main__":
    main()
