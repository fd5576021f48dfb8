"""Models: the world model (built and cached by the kit) and real Hugging Face models, through one API.

* :func:`load_model` takes ``"world"`` (the default world model), ``"world-retain"`` (the model that never
  saw the forget people), a local folder, or a hub id, and returns ``(model, tokenizer)``.
* :func:`build_world_model` trains a small Llama on the synthetic world, or loads it from the cache.
* The cache stores safetensors keyed by a hash of every setting that shapes the model; writes are atomic
  and every file is checked against its SHA-256 on load, so a truncated file is rebuilt, never used.
  An entry is built under a lock (:func:`cache_lock`): two notebooks that need the same model train it once.
* :func:`get_device` / :func:`get_dtype` are the one place that decides where models run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .world import World, make_world

CACHE_VERSION = 1
REFUSALS = ["I do not know .", "I have no idea .", "That is something I cannot tell you .",
            "I am not sure about that .", "Sorry , I do not have that information ."]


# ----------------------------------------------------------------------------------------------
# Device and dtype: decided here and nowhere else
# ----------------------------------------------------------------------------------------------
def get_device(device: str | None = None) -> torch.device:
    """``device`` if given, else CUDA when present, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def get_dtype(dtype: str | torch.dtype | None = None, device: torch.device | None = None) -> torch.dtype:
    """``dtype`` if given (``"float32"``, ``"bfloat16"``, ``"float16"``), else float32 (exact and CPU-friendly)."""
    if dtype in (None, "auto"):
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"Unknown dtype {dtype!r}: use 'float32', 'bfloat16' or 'float16'.") from None


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


def cache_dir() -> Path:
    """Where built models live: ``$UNLEARN_KIT_CACHE`` or ``~/.cache/unlearn-kit``."""
    return Path(os.environ.get("UNLEARN_KIT_CACHE", Path.home() / ".cache" / "unlearn-kit"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checked(model, tokenizer, folder: str | os.PathLike, settings: dict | None = None,
                 files: dict[str, bytes] | None = None) -> Path:
    """Save model (safetensors) + tokenizer + settings atomically, with a manifest of SHA-256 sums.

    Writes into a temporary sibling folder and renames it into place, so a crash never leaves a
    half-written model under the final name.
    """
    tmp = staging_folder(folder)
    model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    (tmp / "settings.json").write_text(json.dumps(settings or {}, indent=2, sort_keys=True, default=str))
    for name, data in (files or {}).items():  # small companions (e.g. a training log), checksummed with the rest
        (tmp / name).write_bytes(data)
    return publish_folder(tmp, folder)


def staging_folder(folder: str | os.PathLike) -> Path:
    """A fresh hidden sibling of ``folder`` to write into before :func:`publish_folder` moves it into place."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    return tmp


def publish_folder(tmp: Path, folder: str | os.PathLike) -> Path:
    """Write a manifest of SHA-256 sums into ``tmp``, then rename it to ``folder`` (replacing an old one)."""
    folder = Path(folder)
    manifest = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if folder.exists():
        old = folder.parent / f".{folder.name}.old-{time.time_ns()}"
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)
    return folder


def cache_entry(kind: str, key: dict) -> Path:
    """The cache folder for a result of ``kind`` ("unlearned", "grun", ...) identified by every setting in ``key``."""
    blob = json.dumps(key, sort_keys=True, default=str)
    return cache_dir() / kind / hashlib.sha256(blob.encode()).hexdigest()[:16]


@contextlib.contextmanager
def cache_lock(folder: str | os.PathLike):
    """Hold an exclusive lock on a cache entry while it is looked up, built and saved.

    Two processes that need the same entry (two notebooks open at once, ``make reproduce`` running two notebooks
    side by side) then build it once: the second waits here and finds it built. The lock is a hidden
    ``.<name>.lock`` file beside the entry. Where ``fcntl`` is missing (Windows) nothing is locked; the atomic
    writes still keep the cache sound, at worst the work is done twice.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(folder.parent / f".{folder.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def weights_fingerprint(model) -> str:
    """SHA-256 of every tensor in the model's state dict (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def set_aside(folder: Path, error: Exception) -> None:
    """Move an unusable cache entry out of the way (kept for inspection, never used) and say so."""
    aside = folder.parent / f"{folder.name}.corrupt"
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(folder, aside)
    warnings.warn(f"Cached result {folder} is unusable ({error}); moved aside, computing it again.")


class CorruptCacheError(RuntimeError):
    """A cached file does not match its recorded checksum (truncated or edited)."""


def verify_folder(folder: str | os.PathLike) -> None:
    """Check every file of a folder written by :func:`save_checked` against its manifest."""
    folder = Path(folder)
    man = folder / "manifest.json"
    if not man.exists():
        raise CorruptCacheError(f"{folder} has no manifest.json: it was not written completely.")
    try:
        manifest = json.loads(man.read_text())
    except json.JSONDecodeError as e:
        raise CorruptCacheError(f"{man} is not valid JSON ({e}).") from None
    for name, digest in manifest.items():
        path = folder / name
        if not path.exists():
            raise CorruptCacheError(f"{path} is missing.")
        if _sha256(path) != digest:
            raise CorruptCacheError(f"{path} does not match its checksum (truncated or modified).")


def _load_checked(folder: Path, device=None, dtype=None):
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    verify_folder(folder)
    dev = get_device(device)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=get_dtype(dtype), use_safetensors=True).to(dev)
    model.eval()
    tok = PreTrainedTokenizerFast.from_pretrained(folder)
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
    folder = cache_dir() / "world_models" / config.key()
    with cache_lock(folder):
        if folder.exists() and not rebuild:
            try:
                return _load_checked(folder, device, dtype)
            except (CorruptCacheError, OSError, ValueError, RuntimeError) as e:
                aside = folder.parent / f"{folder.name}.corrupt-{time.time_ns()}"
                os.replace(folder, aside)
                warnings.warn(f"Cached world model {folder} is unusable ({e}); moved it to {aside} and rebuilding.")
        start = time.time()
        model, tok, log = train_world_model(config, progress=progress)
        settings = {"kind": "world_model", "config": dataclasses.asdict(config), "cache_version": CACHE_VERSION,
                    "build_seconds": round(time.time() - start, 1), "final_loss": log[-1]["loss"],
                    "torch": torch.__version__}
        save_checked(model, tok, folder, settings)
    model = model.to(get_device(device), dtype=get_dtype(dtype))
    return model, tok


def world_model_settings(config: WorldModelConfig | None = None, **overrides) -> dict:
    """The settings.json of a cached world model (build time, final loss), or {} if not built yet."""
    config = dataclasses.replace(config or WorldModelConfig(), **overrides)
    path = cache_dir() / "world_models" / config.key() / "settings.json"
    return json.loads(path.read_text()) if path.exists() else {}


# ----------------------------------------------------------------------------------------------
# Any model by name
# ----------------------------------------------------------------------------------------------
def load_model(name_or_path: str = "world", device=None, dtype=None, trust_remote_code: bool = False,
               split: str = "forget05", config: WorldModelConfig | None = None, **kwargs):
    """Return ``(model, tokenizer)`` for the world model or any Hugging Face causal LM.

    name_or_path: ``"world"``, ``"world-retain"`` (never saw ``split``'s people), a local folder,
    or a hub id (read from the local Hugging Face cache when offline).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .arch import get_adapter

    if name_or_path in ("world", "world-retain"):
        exclude = split if name_or_path == "world-retain" else None
        return build_world_model(config, device=device, dtype=dtype, exclude_split=exclude)
    path = Path(name_or_path).expanduser()
    looks_local = path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local:
        if not path.is_dir():
            raise FileNotFoundError(f"Model folder {path} does not exist. Check the path, or use 'world'.")
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"{path} has no config.json, so it holds no Hugging Face model. Point to the folder that "
                "save_pretrained wrote (config.json + model.safetensors).")
        if (path / "manifest.json").exists():
            verify_folder(path)
    dev = get_device(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path) if looks_local else name_or_path, dtype=get_dtype(dtype), use_safetensors=True,
            trust_remote_code=trust_remote_code, **kwargs)
        tok = AutoTokenizer.from_pretrained(str(path) if looks_local else name_or_path,
                                            trust_remote_code=trust_remote_code)
    except OSError as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise OSError(
            f"Could not load model {name_or_path!r}: it is not a local folder and was not found in the local "
            f"Hugging Face cache{' (HF_HUB_OFFLINE=1)' if offline else ''}. Download it once with "
            f"`huggingface-cli download {name_or_path}` on a machine with internet, pass a local folder, "
            f"or use 'world' for the kit's own model. (Original error: {str(e).splitlines()[0]})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    get_adapter(model)  # fail early and clearly on an unsupported architecture
    if "quantization_config" not in kwargs and not getattr(model, "is_loaded_in_4bit", False) \
            and not getattr(model, "is_loaded_in_8bit", False):
        model = model.to(dev)
    model.eval()
    return model, tok
