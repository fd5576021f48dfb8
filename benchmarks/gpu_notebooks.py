"""Benchmark: notebooks 01, 02 and 05 in smoke mode on a real-size Llama with random weights, on a CUDA GPU.

It answers two questions a user with a GPU asks before pointing the kit at a real model: does the real-model path
(``MODEL`` = a local folder, ``DEVICE = "cuda"``, ``DTYPE = "bfloat16"``, a question file as ``DATA``) run from
top to bottom, and how long and how much GPU memory does each notebook take? It also loads the model through
bitsandbytes on the GPU (LLM.int8 and 4-bit nf4) and answers questions with it.

Nothing can be downloaded here, so the weights are random and every accuracy is meaningless. The architecture is
Llama-3.2-1B's (16 layers, width 2048, MLP 8192, 32 query and 8 key/value heads; ``--size 8b``: Llama-3.1-8B's)
with the smoke world's word-level vocabulary instead of 128k tokens, so the 1B model has 0.97 B parameters (the
real one's 0.26 B embedding parameters are left out). The questions are the smoke world's forget05 and a sample of
its retain facts, written as a ``qa:`` JSON-lines file, so no world model is trained.

GPU memory is read two ways: the notebook's own peak of memory held by tensors
(``torch.cuda.max_memory_allocated``, saved by ``Session.finish``), and the device's peak as ``nvidia-smi`` shows it
(polled every 50 ms; it adds the CUDA context and PyTorch's cached blocks), minus what was in use before.

Run on a GPU machine: ``python benchmarks/gpu_notebooks.py --out reports/gpu``. ``--size tiny --device cpu`` tries
the plumbing on a CPU in a few minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {  # Llama shapes: (layers, width, MLP width, query heads, key/value heads)
    "tiny": (4, 64, 256, 4, 2),
    "1b": (16, 2048, 8192, 32, 8),    # Llama-3.2-1B
    "8b": (32, 4096, 14336, 32, 8),   # Llama-3.1-8B
}
NOTEBOOKS = ("01", "02", "05")


def write_random_llama(folder: Path, size: str, dtype, device: str, world) -> int:
    """Save a Llama with random weights and the world's tokenizer as a Hugging Face folder; returns its size."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from unlearn_utils.models import build_tokenizer

    layers, width, mlp, heads, kv = SIZES[size]
    tok = build_tokenizer(world)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=mlp, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=2048,
                         rope_theta=500000.0, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    del model
    return n


def write_questions(path: Path, world) -> None:
    """The smoke world's forget05 facts and every 8th retain fact, as ``qa:`` JSON lines (as the tests do)."""
    rows = [{"split": "forget", **{k: r[k] for k in ("prompt", "answer", "person")}}
            for r in world.facts("forget05", "trained")]
    retain = world.facts("retain", "trained", "forget05")
    rows += [{"split": "retain", **{k: r[k] for k in ("prompt", "answer", "person")}}
             for r in retain.select(range(0, len(retain), 8))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


class GpuMemoryPeak:
    """Peak device memory in use (as nvidia-smi reports it) while the block runs, minus the amount before it."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak, self.base, self._stop = interval, 0, 0, threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle, self._nvml = pynvml.nvmlDeviceGetHandleByIndex(0), pynvml
        except Exception:  # no NVIDIA driver (a CPU machine): nothing to read
            self._nvml = None

    def _used(self) -> int:
        return self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._used())
            time.sleep(self.interval)

    def __enter__(self):
        if self._nvml is not None:
            self.base = self.peak = self._used()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._nvml is not None:
            self._stop.set()
            self._thread.join()

    @property
    def gib(self) -> float | None:
        return None if self._nvml is None else round((self.peak - self.base) / 2**30, 2)


def run_notebooks(model_dir: Path, questions: Path, out: Path, work: Path, device: str, dtype: str, only,
                  save) -> list[dict]:
    """Run each notebook in smoke mode on the model; ``save(rows)`` is called after each one."""
    from unlearn_utils.reproduce import notebooks, run_notebook

    rows = []
    for path in notebooks():
        if path.stem[:2] not in only:
            continue
        report = work / "report"
        params = {"SMOKE": True, "MODEL": str(model_dir), "DEVICE": device, "DTYPE": dtype,
                  "DATA": f"qa:{questions}", "RETAIN_MODEL": None, "REPORT_DIR": str(report)}
        print(f"[{path.stem}] running ...", flush=True)
        error = None
        with GpuMemoryPeak() as mem:
            start = time.time()
            try:
                run_notebook(path, out / "executed" / path.name, params, timeout=600, cwd=path.parent)
            except Exception as e:  # keep going: the other notebooks' figures are still worth having
                # papermill's error carries the failing cell's exception as ename / evalue
                error = f"{getattr(e, 'ename', type(e).__name__)}: {getattr(e, 'evalue', str(e)).strip()}"[:400]
            seconds = time.time() - start
        result_file = report / "results" / f"{path.stem}.json"
        results = json.loads(result_file.read_text()) if result_file.exists() and error is None else {}
        row = {"notebook": path.stem, "seconds": round(seconds, 1), "error": error,
               "peak_tensor_gib": results.get("peak_gpu_memory_gib"), "peak_device_gib": mem.gib}
        if path.stem.startswith("05") and "quantization_forget" in results:
            columns = next(iter(results["quantization_forget"].values()), {})
            row["bnb_nf4_ran"] = "bnb nf4" in columns
        rows.append(row)
        save(rows)
        print(f"[{path.stem}] {json.dumps(row)}", flush=True)
    return rows


def bitsandbytes_check(model_dir: Path, questions: Path, device: str, dtype: str) -> list[dict]:
    """Load the model in 16 bits, LLM.int8 and 4-bit nf4, and answer the forget questions with each."""
    import torch

    from unlearn_utils import evaluate as ev, quantize as Q
    from unlearn_utils.benchmark_data import load_data
    from unlearn_utils.models import get_dtype, load_model

    forget = load_data(f"qa:{questions}")["forget"]
    model, tok = load_model(str(model_dir), device=device, dtype=dtype)
    rows = []
    for name, load in (("bf16" if dtype == "bfloat16" else dtype, lambda: model),
                       ("bnb LLM.int8", lambda: Q.load_bnb(model, 8, device=device)),
                       ("bnb 4-bit nf4", lambda: Q.load_bnb(model, 4, "nf4", device=device,
                                                            compute_dtype=get_dtype(dtype)))):
        start = time.time()
        try:
            m = load()
            loaded = time.time() - start
            ev.accuracy(m, tok, forget.select(range(min(8, len(forget)))))  # warm-up: first CUDA calls are slow
            start = time.time()
            acc = ev.accuracy(m, tok, forget)
            rows.append({"weights": name, "footprint_gib": round(m.get_memory_footprint() / 2**30, 2),
                         "load_s": round(loaded, 1), "answer_s": round(time.time() - start, 2),
                         "questions": len(forget), "accuracy (random weights)": round(acc, 3)})
        except Exception as e:
            rows.append({"weights": name, "error": f"{type(e).__name__}: {e}"[:400]})
        print(json.dumps(rows[-1]), flush=True)
        if name.startswith("bnb"):
            del m
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="1b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--out", default=str(ROOT / "reports" / "gpu"),
                    help="where gpu_notebooks.json and the executed notebooks go")
    ap.add_argument("--work", default=None, help="where the model, the questions and the notebooks' report folder "
                                                 "go (default: OUT/work; the 1B model takes 2 GB)")
    ap.add_argument("--only", nargs="*", default=list(NOTEBOOKS), help="notebook prefixes (default: 01 02 05)")
    ap.add_argument("--no-bnb", action="store_true", help="skip the bitsandbytes loading check")
    args = ap.parse_args(argv)

    import torch

    from unlearn_utils.models import SMOKE_CONFIG, WorldModelConfig, get_dtype

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("No CUDA GPU here: run with --size tiny --device cpu to try the plumbing.", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    work = Path(args.work).resolve() if args.work else out / "work"
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    world = WorldModelConfig(**SMOKE_CONFIG).world()
    model_dir, questions = work / f"llama-{args.size}-random", work / "questions.jsonl"
    start = time.time()
    n_params = write_random_llama(model_dir, args.size, get_dtype(args.dtype), args.device, world)
    write_questions(questions, world)
    print(f"random Llama ({args.size}): {n_params / 1e9:.3f} B parameters, written in {time.time() - start:.0f} s",
          flush=True)
    import transformers

    summary = {"size": args.size, "parameters": n_params, "device": args.device, "dtype": args.dtype,
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
               "torch": torch.__version__, "transformers": transformers.__version__, "notebooks": []}

    def save(rows=None):
        if rows is not None:
            summary["notebooks"] = rows
        (out / "gpu_notebooks.json").write_text(json.dumps(summary, indent=2))

    run_notebooks(model_dir, questions, out, work, args.device, args.dtype, set(args.only), save)
    if not args.no_bnb:
        summary["bitsandbytes"] = bitsandbytes_check(model_dir, questions, args.device, args.dtype)
        save()
    print(json.dumps(summary, indent=2))
    return 1 if any(r["error"] for r in summary["notebooks"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
