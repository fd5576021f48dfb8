"""One checked cache for everything the kit builds: world models, unlearned models, GRUN modules, RTT curves.

An entry is a folder under :func:`cache_dir`, named by a hash of every setting that shapes its content
(:func:`cache_entry`). :func:`cached` is the one way to use it: under a lock (two notebooks that need the same
entry build it once), it loads a healthy entry, or builds, saves and returns a new one. Writes go to a hidden
staging folder that is renamed into place with a manifest of SHA-256 sums (:func:`publish_folder`), so a crash
never leaves half an entry; every read is checked against that manifest first (:func:`verify_folder`), and an entry
that fails the check is moved aside (kept for inspection, never used) and built again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


class CorruptCacheError(RuntimeError):
    """A cached file does not match its recorded checksum (truncated or edited), or an entry is incomplete."""


# What reading a damaged entry raises: the entry is then set aside and built again.
DAMAGED = (CorruptCacheError, OSError, ValueError, RuntimeError, KeyError)


def cache_dir() -> Path:
    """Where built results live: ``$UNLEARN_KIT_CACHE`` or ``~/.cache/unlearn-kit``."""
    return Path(os.environ.get("UNLEARN_KIT_CACHE", Path.home() / ".cache" / "unlearn-kit"))


def sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_entry(kind: str, key: dict | str | Path) -> Path:
    """The folder of a result of ``kind`` ("unlearned", "grun", ...): ``key`` is every setting that shapes it (a dict,
    hashed), an identifier already computed (a string, used as the folder name), or the folder itself (a Path, for
    an entry kept outside the cache, e.g. a converted download)."""
    if isinstance(key, Path):
        return key
    if isinstance(key, str):
        return cache_dir() / kind / key
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
    manifest = {p.name: sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if folder.exists():
        old = folder.parent / f".{folder.name}.old-{time.time_ns()}"
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)
    return folder


def write_files(folder: str | os.PathLike, files: dict[str, bytes]) -> Path:
    """Write small files (a table, a log) as one checked entry, atomically."""
    tmp = staging_folder(folder)
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    return publish_folder(tmp, folder)


def verify_folder(folder: str | os.PathLike) -> None:
    """Check every file of a folder written by :func:`publish_folder` against its manifest."""
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
        if sha256(path) != digest:
            raise CorruptCacheError(f"{path} does not match its checksum (truncated or modified).")


def save_checked(model, tokenizer, folder: str | os.PathLike, settings: dict | None = None,
                 files: dict[str, bytes] | None = None) -> Path:
    """Save model (safetensors) + tokenizer + settings atomically, with a manifest of SHA-256 sums.

    files: small companions (e.g. a training log), checksummed with the rest.
    """
    tmp = staging_folder(folder)
    model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    (tmp / "settings.json").write_text(json.dumps(settings or {}, indent=2, sort_keys=True, default=str))
    for name, data in (files or {}).items():
        (tmp / name).write_bytes(data)
    return publish_folder(tmp, folder)


def set_aside(folder: Path, error: Exception) -> None:
    """Move an unusable cache entry out of the way (kept for inspection, never used) and say so."""
    aside = folder.parent / f"{folder.name}.corrupt"
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(folder, aside)
    warnings.warn(f"Cached result {folder} is unusable ({error}); moved aside, computing it again.")


def cached(kind: str, key: dict | str | Path | None, build: Callable[[], T], save: Callable[[T, Path], object],
           load: Callable[[Path], T], *, usable: Callable[[Path], bool] | None = None, rebuild: bool = False) -> T:
    """The result for ``key``: loaded from its cache entry, or ``build()`` now and saved.

    kind / key: where the entry lives (:func:`cache_entry`); key None caches nothing (``build()`` is returned).
    load(folder): read a verified entry (the manifest has been checked; raise on anything else that is wrong).
    save(value, folder): write it, atomically (:func:`save_checked`, :func:`write_files`, or staging + publish);
    it runs under the entry's lock, so it may read what an older entry holds before replacing it.
    usable(folder): whether an existing entry holds what is asked (e.g. a requested trajectory); if not, the
    result is built again and the entry replaced. rebuild: build again whatever the cache holds.
    An entry that fails its checks is set aside (:func:`set_aside`) and built again.
    """
    if key is None:
        return build()
    folder = cache_entry(kind, key)
    with cache_lock(folder):  # one process builds, others wait and then load
        if folder.exists() and not rebuild and (usable is None or usable(folder)):
            try:
                verify_folder(folder)
                return load(folder)
            except DAMAGED as e:
                set_aside(folder, e)
        value = build()
        save(value, folder)
    return value
