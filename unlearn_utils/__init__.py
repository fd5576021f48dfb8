"""unlearn-kit helpers: the synthetic world, its model, unlearning methods and the probes that test them.

Data flows one way: world -> model -> unlearn -> probe -> report. The modules:

* ``world``: the synthetic world (people, attributes, phrasings, topics, splits).
* ``benchmark_data``: local TOFU, multiple-choice and question files, the real-knowledge set -> question sets.
* ``data``: tokenizer conventions (how prompts and texts become token ids for any model).
* ``models``: load_model, the world model, real models (fetch, GGUF), presets, device / dtype / threads.
* ``arch``: the architecture adapter (layers, MLP, attention, norm, unembedding per model family).
* ``cache``: the one checked cache (atomic writes, checksums, locks).
* ``training``: the training loop shared by pre-training, unlearning and relearning.
* ``distributed``: the same loop on several processes through accelerate (same numbers, one cache).
* ``unlearning``: ``losses`` (one function per loss), ``methods`` (``unlearn()``), ``needle`` (Needle ablation).
* ``evaluate``: the report card (accuracies, truth ratio, perplexity, MIA, forget quality).
* ``patching``: activation patching, parameter restoration, the knowledge recovery score.
* ``concepts``: concept vectors (vocabulary projection, locating, validating, topic probes).
* ``concept_files``: the ConceptVectors file format.
* ``grun``: GRUN, the gated LoReFT module on a frozen model.
* ``quantize``: round-to-nearest quantization and bitsandbytes loading.
* ``relearn``: relearning attacks (RTT) and recovery rates.
* ``audit``: every probe on one unlearned model, one verdict each.
* ``lab``: the what-if lab's widgets and callbacks.
* ``session``: what every notebook does first (``start()``: parameters, seed, world, models).
* ``plotting``: the figure kinds the notebooks share.
* ``checks``: exercise checks.
* ``editions``, ``autograde``: student / solution editions and the grader.
* ``reproduce``, ``report``: run the notebooks headless into reports/ and write the claims table.
* ``cli``: the ``unlearn-kit`` command.
"""

import os as _os

# Deterministic, quiet CPU defaults (tokenizers' own threads fight torch's on 2 cores).
_os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under a multi-process launcher only the main process draws progress bars (tqdm reads this when it is imported).
if _os.environ.get("RANK", "0") != "0" and _os.environ.get("WORLD_SIZE", "1") != "1":
    _os.environ.setdefault("TQDM_DISABLE", "1")



class _KnownHarmless:
    """A logging filter that drops bitsandbytes' messages the kit knows to be harmless on a CPU (and only those):
    LLM.int8 casting float32 inputs to float16 (how its CPU matmul works, printed at every forward: 504 lines in
    notebook 00), and its failed fetch of an optional faster 4-bit kernel from a model hub (the kit never reaches a
    hub; bitsandbytes falls back to its own code). Every other message of those loggers still shows."""

    PREFIXES = {"bitsandbytes.autograd._functions": "MatMul8bitLt: inputs will be cast",
                "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward"}

    def __init__(self, prefix: str):
        self.prefix = prefix

    def filter(self, record) -> bool:
        return not str(record.msg).startswith(self.prefix)


def _quiet_known_harmless_logs() -> None:
    import logging
    import warnings

    for name, prefix in _KnownHarmless.PREFIXES.items():
        logging.getLogger(name).addFilter(_KnownHarmless(prefix))
    # peft reads transformers' renamed `is_gradient_checkpointing` when it wraps a model in LoRA (peft's code, not
    # the user's: nothing to change on their side)
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


_quiet_known_harmless_logs()

__version__ = "0.1.0"
