"""One checked cache for everything the kit builds: world models, unlearned models, GRUN modules, RTT curves.

An entry is a folder under :func:`cache_dir`, named by a hash of every setting that shapes its content
(:func:`cache_entry`). :func:`cached` is the one way to use it: under a lock (two notebooks that need the same
entry build it once), it loads a healthy entry, or builds, saves and returns a new one. Writes go to a hidden
staging folder that is renamed into place with a manifest of SHA-256 sums (:func:`publish_folder`), so a crash
never leaves half an entry; every read is checked against that manifest first (:func:`verify_folder`), and an entry
that fails the check is moved aside (kept for inspection, never used) and built again.

Only damage sets an entry aside: a file missing, unlisted, unreadable or not matching its checksum
(:class:`CorruptCacheError`). Anything else that goes wrong while loading (a bad ``dtype``, no memory, a bug) is
raised as it is and leaves the entry where it was. docs/promises.md lists what the cache promises.
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

from . import distributed

T = TypeVar("T")


class CorruptCacheError(RuntimeError):
    """A cached file does not match its recorded checksum (truncated or edited), or an entry is incomplete."""


def _unreadable_content() -> tuple[type[BaseException], ...]:
    """What reading a file whose bytes are wrong raises (after the checksums passed, only a manifest written
    over damaged files gets here): these mean corruption; every other error is the caller's or the machine's."""
    kinds: list[type[BaseException]] = [json.JSONDecodeError, UnicodeDecodeError, EOFError]
    try:
        from safetensors import SafetensorError
        kinds.append(SafetensorError)
    except ImportError:  # pragma: no cover
        pass
    try:
        import pandas.errors as pe
        kinds += [pe.ParserError, pe.EmptyDataError]
    except ImportError:  # pragma: no cover
        pass
    return tuple(kinds)


def cache_dir() -> Path:
    """Where built results live: ``$UNLEARN_KIT_CACHE`` or ``~/.cache/unlearn-kit``."""
    root = Path(os.environ.get("UNLEARN_KIT_CACHE", Path.home() / ".cache" / "unlearn-kit")).expanduser()
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"The cache folder {root} (UNLEARN_KIT_CACHE) is a file, not a folder: point "
                                 "UNLEARN_KIT_CACHE at a folder (it is created if missing), or unset it.")
    return root


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
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    try:
        handle = _open_lock(folder)
    except PermissionError:  # a read-only cache: readers need no lock, nothing is written there
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _open_lock(folder: Path):
    folder.parent.mkdir(parents=True, exist_ok=True)
    return open(folder.parent / f".{folder.name}.lock", "a")


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
    """Check a folder written by :func:`publish_folder`: every file in it is listed in its manifest, every listed
    file is there, and each matches its SHA-256. Any failure, reading included, raises :class:`CorruptCacheError`."""
    folder = Path(folder)
    man = folder / "manifest.json"
    if not man.is_file():
        raise CorruptCacheError(f"{folder} has no manifest.json: it was not written completely.")
    try:
        manifest = json.loads(man.read_text())
        present = {p.name for p in folder.iterdir() if p.name != "manifest.json"}
    except (OSError, ValueError) as e:
        raise CorruptCacheError(f"{man} cannot be read ({type(e).__name__}: {e}).") from None
    if not isinstance(manifest, dict) or not all(isinstance(v, str) for v in manifest.values()):
        raise CorruptCacheError(f"{man} is not a manifest (a mapping of file names to SHA-256 sums).")
    unlisted = sorted(present - set(manifest))
    if unlisted:
        raise CorruptCacheError(f"{folder} holds files its manifest does not list ({', '.join(unlisted[:3])}): "
                                "they cannot be checked.")
    for name, digest in manifest.items():
        path = folder / name
        if "/" in name or name in ("", ".", "..") or not path.is_file():
            raise CorruptCacheError(f"{path} is missing.")
        try:
            actual = sha256(path)
        except OSError as e:
            raise CorruptCacheError(f"{path} cannot be read ({e}).") from None
        if actual != digest:
            raise CorruptCacheError(f"{path} does not match its checksum (truncated or modified).")


def refuse_non_finite(tensors, folder: str | os.PathLike) -> None:
    """Refuse to save weights holding NaN or infinity (``tensors``: name -> tensor), naming the first such tensor:
    a diverged run's numbers mean nothing, and a cached one would be reused as a result."""
    import torch

    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"Not saving {folder}: {name} holds NaN or infinite values, so the training that made "
                             "it diverged. Train again with a lower learning rate.")


def save_checked(model, tokenizer, folder: str | os.PathLike, settings: dict | None = None,
                 files: dict[str, bytes] | None = None) -> Path:
    """Save model (safetensors) + tokenizer + settings atomically, with a manifest of SHA-256 sums.

    files: small companions (e.g. a training log), checksummed with the rest. Non-finite weights are refused.
    """
    refuse_non_finite(model.state_dict(), folder)
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
    An entry that fails its checks, or whose files ``load`` cannot parse, is set aside (:func:`set_aside`) and built
    again; any other error from ``load`` is raised and the entry stays as it is. A read-only cache is read; a result
    built there is returned with a warning that it could not be saved.
    """
    if key is None:
        return build()
    folder = cache_entry(kind, key)
    if distributed.active():
        return _cached_by_several(folder, build, save, load, usable, rebuild)
    with cache_lock(folder):  # one process builds, others wait and then load
        if folder.exists() and not rebuild and (usable is None or usable(folder)):
            try:
                verify_folder(folder)
                return _load_entry(load, folder)
            except CorruptCacheError as e:
                if _writable(folder.parent):
                    set_aside(folder, e)
                else:
                    warnings.warn(f"Cached result {folder} is unusable ({e}); the cache is read-only, so it stays "
                                  "there and the result is computed again.")
        value = build()
        if not _writable(folder.parent):
            warnings.warn(f"The cache folder {folder.parent} is read-only: the result was computed but not saved.")
            return value
        save(value, folder)
    return value


def _cached_by_several(folder: Path, build, save, load, usable, rebuild: bool):
    """:func:`cached` in a run spread over several processes (:mod:`unlearn_utils.distributed`): they build
    together, so they cannot take turns at the lock. The main process holds it, checks the entry, and alone writes;
    every process loads the entry or builds, as they all decide together (an entry one of them cannot load is set
    aside by the main process and built again by all)."""
    lock = cache_lock(folder) if distributed.is_main() else contextlib.nullcontext()
    with lock:
        found = None

        def check():
            nonlocal found
            found = bool(folder.exists() and not rebuild and (usable is None or usable(folder)))
            if found:
                try:
                    verify_folder(folder)
                except CorruptCacheError as e:
                    found = e

        distributed.main_first(check)
        found = distributed.broadcast(found if found is None or isinstance(found, bool) else str(found))
        value, damage = None, found if isinstance(found, str) else None
        if found is True:
            try:
                value = _load_entry(load, folder)
            except CorruptCacheError as e:
                damage = str(e)
            damages = distributed.gather_list([damage])
            damage = next((d for d in damages if d), None)
            if damage is None:
                distributed.barrier()  # every process has read the entry before the main one lets others at it
                return value
        if damage is not None:
            distributed.main_first(lambda: set_aside(folder, CorruptCacheError(damage)) if folder.exists()
                                   and _writable(folder.parent) else None)
        value = build()

        def write():
            if _writable(folder.parent):
                save(value, folder)
            else:
                warnings.warn(f"The cache folder {folder.parent} is read-only: the result was computed but not saved.")

        distributed.main_first(write)  # the entry is complete before any process goes on (and may read it)
    return value


def _writable(folder: Path) -> bool:
    """Whether results can be saved under ``folder`` (created if missing)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def _load_entry(load: Callable[[Path], T], folder: Path) -> T:
    """``load(folder)``, with errors that mean an entry's files are damaged (unparseable, or missing although
    its manifest was fine) raised as :class:`CorruptCacheError`."""
    try:
        return load(folder)
    except CorruptCacheError:
        raise
    except FileNotFoundError as e:
        if e.filename and Path(e.filename).resolve().is_relative_to(folder.resolve()):
            raise CorruptCacheError(f"{e.filename} is missing from the entry.") from None
        raise
    except _unreadable_content() as e:
        raise CorruptCacheError(f"a file of {folder} cannot be parsed ({type(e).__name__}: {e}).") from None


def cached_runs(root: str | os.PathLike | None = None, kinds: tuple[str, ...] = ("unlearned", "grun")) -> dict:
    """The training steps of every run cached under ``root`` (default: :func:`cache_dir`): ``{kind: {entry: steps}}``
    for the kinds "unlearned" and "grun", read from each entry's saved settings, else the largest ``step`` of its
    logs. What a smoke session trained can so be checked after it ran."""
    import pandas as pd

    root = Path(root) if root is not None else cache_dir()
    runs: dict[str, dict[str, int]] = {}
    for kind in kinds:
        for entry in sorted((root / kind).glob("[!.]*")) if (root / kind).is_dir() else []:
            settings = json.loads((entry / "settings.json").read_text()) if (entry / "settings.json").exists() else {}
            steps = (settings.get("unlearn_config") or {}).get("steps")
            if steps is None:
                logs = [pd.read_csv(p) for p in sorted(entry.glob("log*.csv"))]
                steps = max((int(log["step"].max()) for log in logs if "step" in log and len(log)), default=None)
            if steps is not None:
                runs.setdefault(kind, {})[entry.name] = int(steps)
    return runs
