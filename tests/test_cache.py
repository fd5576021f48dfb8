"""The one checked cache: atomic writes, checksums, locks, and ``cached`` (load, or build and save)."""

import json
import warnings

import pytest

from unlearn_utils.cache import (CorruptCacheError, cache_entry, cache_lock, cached, publish_folder, save_checked,
                                 sha256, staging_folder, verify_folder, write_files)


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_KIT_CACHE", str(tmp_path))
    return tmp_path


def _counter():
    calls = []

    def build():
        calls.append(1)
        return {"n": len(calls)}

    def save(value, folder):
        write_files(folder, {"value.json": json.dumps(value).encode()})

    def load(folder):
        return json.loads((folder / "value.json").read_text())

    return calls, build, save, load


def test_cached_builds_once_then_loads(cache_root):
    calls, build, save, load = _counter()
    assert cached("things", {"a": 1}, build, save, load) == {"n": 1}
    assert cached("things", {"a": 1}, build, save, load) == {"n": 1} and len(calls) == 1  # loaded, not built
    assert cached("things", {"a": 2}, build, save, load) == {"n": 2}  # another key: another entry
    assert cache_entry("things", {"a": 1}).parent == cache_root / "things"
    assert cached("things", None, build, save, load) == {"n": 3}  # no key: nothing cached
    assert len(list((cache_root / "things").iterdir())) == 2 + 2  # two entries and their lock files


def test_cached_sets_a_damaged_entry_aside_and_builds_again(cache_root):
    calls, build, save, load = _counter()
    cached("things", "entry", build, save, load)
    folder = cache_root / "things" / "entry"
    (folder / "value.json").write_text('{"n": 99}')  # edited: fails its checksum
    with pytest.raises(CorruptCacheError, match="checksum"):
        verify_folder(folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cached("things", "entry", build, save, load) == {"n": 2}
    assert any("unusable" in str(w.message) for w in caught)
    assert (cache_root / "things" / "entry.corrupt" / "value.json").exists(), "kept for inspection, not deleted"
    verify_folder(folder)


def test_cached_rebuilds_when_the_entry_lacks_what_is_asked(cache_root):
    calls, build, save, load = _counter()
    cached("things", "e", build, save, load)
    assert cached("things", "e", build, save, load, usable=lambda f: (f / "other.csv").exists()) == {"n": 2}
    assert cached("things", "e", build, save, load, rebuild=True) == {"n": 3}
    assert cached("things", "e", build, save, load) == {"n": 3}  # the rebuilt entry replaced the old one


def test_a_failed_build_leaves_no_entry(cache_root):
    def build():
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        cached("things", "e", build, lambda v, f: None, lambda f: None)
    assert not (cache_root / "things" / "e").exists()


def test_manifest_lists_every_file_and_a_missing_one_is_caught(tmp_path):
    tmp = staging_folder(tmp_path / "entry")
    (tmp / "a.txt").write_text("a")
    (tmp / "b.txt").write_text("b")
    folder = publish_folder(tmp, tmp_path / "entry")
    assert set(json.loads((folder / "manifest.json").read_text())) == {"a.txt", "b.txt"}
    (folder / "b.txt").unlink()
    with pytest.raises(CorruptCacheError, match="missing"):
        verify_folder(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(CorruptCacheError, match="no manifest"):
        verify_folder(folder)


def test_atomic_save_leaves_no_partial_folder(tmp_path, tiny, monkeypatch):
    _, model, tok = tiny
    target = tmp_path / "saved"

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(tok), "save_pretrained", boom)
    with pytest.raises(RuntimeError):
        save_checked(model, tok, target)
    assert not target.exists()


def test_cache_lock_lets_one_builder_in_at_a_time(tmp_path):
    """Two builders of one entry: the second waits for the first, then finds the entry built."""
    import threading
    import time

    folder, built, inside = tmp_path / "kind" / "entry", [], []

    def build(who):
        with cache_lock(folder):
            inside.append(who)
            assert len(inside) == 1, "two builders held the lock at once"
            if not folder.exists():
                time.sleep(0.2)
                folder.mkdir()
                built.append(who)
            inside.remove(who)

    threads = [threading.Thread(target=build, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and folder.exists()



# ---- only damage sets an entry aside ---------------------------------------------------------------------------
def test_an_error_that_is_not_damage_leaves_the_entry_alone(cache_root):
    """Out of memory (or any bug) while loading is raised as it is: the healthy entry stays, nothing is rebuilt."""
    calls, build, save, load = _counter()
    cached("things", "e", build, save, load)

    def load_oom(folder):
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        cached("things", "e", build, save, load_oom)
    assert len(calls) == 1 and not (cache_root / "things" / "e.corrupt").exists()
    assert cached("things", "e", build, save, load) == {"n": 1}


def test_a_file_the_manifest_does_not_list_is_damage(cache_root):
    """A manifest that lost an entry cannot vouch for that file: flipped bytes in it are caught, not loaded."""
    calls, build, save, load = _counter()
    cached("things", "e", build, save, load)
    folder = cache_root / "things" / "e"
    (folder / "manifest.json").write_text("{}")
    (folder / "value.json").write_text('{"n": 77}')
    with pytest.raises(CorruptCacheError, match="does not list"):
        verify_folder(folder)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert cached("things", "e", build, save, load) == {"n": 2}  # set aside and built again, not {"n": 77}
    assert (cache_root / "things" / "e.corrupt").exists()


def test_a_file_that_cannot_be_parsed_is_damage(cache_root):
    """A manifest rewritten over a damaged file passes the checksums; the parse error still means corruption."""
    calls, build, save, load = _counter()
    cached("things", "e", build, save, load)
    folder = cache_root / "things" / "e"
    (folder / "value.json").write_text('{"n": ')
    (folder / "manifest.json").write_text(json.dumps({"value.json": sha256(folder / "value.json")}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cached("things", "e", build, save, load) == {"n": 2}
    assert any("unusable" in str(w.message) for w in caught)


@pytest.mark.parametrize("manifest", ['{"value.json": 3}', "[1, 2]", "not json"])
def test_a_manifest_that_is_not_one_is_damage(tmp_path, manifest):
    folder = write_files(tmp_path / "e", {"value.json": b"{}"})
    (folder / "manifest.json").write_text(manifest)
    with pytest.raises(CorruptCacheError):
        verify_folder(folder)


def test_a_read_only_cache_is_read(cache_root, monkeypatch):
    """Valid entries of a cache the user cannot write (a shared, read-only copy) load; a missing one is computed
    and returned with a warning, not saved. (Simulated: the tests may run as root, who can write anywhere.)"""
    import unlearn_utils.cache as cache_mod

    calls, build, save, load = _counter()
    cached("things", "e", build, save, load)

    def refuse(folder):
        raise PermissionError(13, "Read-only file system", str(folder))

    monkeypatch.setattr(cache_mod, "_open_lock", refuse)
    monkeypatch.setattr(cache_mod, "_writable", lambda folder: False)
    assert cached("things", "e", build, save, load) == {"n": 1} and len(calls) == 1
    with pytest.warns(UserWarning, match="read-only"):
        assert cached("things", "other", build, save, load) == {"n": 2}
    assert not (cache_root / "things" / "other").exists()


def test_a_cache_path_that_is_a_file_is_refused(tmp_path, monkeypatch):
    from unlearn_utils.cache import cache_dir

    (tmp_path / "file").write_text("")
    monkeypatch.setenv("UNLEARN_KIT_CACHE", str(tmp_path / "file"))
    with pytest.raises(NotADirectoryError, match="UNLEARN_KIT_CACHE at a folder"):
        cache_dir()


def test_cached_runs_reads_each_entrys_steps(tmp_path):
    """From the saved settings of an unlearned model, else the largest step of its logs (a GRUN module's)."""
    import json

    from unlearn_utils.cache import cached_runs

    (tmp_path / "unlearned" / "a").mkdir(parents=True)
    (tmp_path / "unlearned" / "a" / "settings.json").write_text(json.dumps({"unlearn_config": {"steps": 200}}))
    (tmp_path / "unlearned" / ".staging-b").mkdir()  # a half-written entry is not a run
    (tmp_path / "grun" / "c").mkdir(parents=True)
    (tmp_path / "grun" / "c" / "log.csv").write_text("step,loss\n1,0.5\n20,0.1\n")
    assert cached_runs(tmp_path) == {"unlearned": {"a": 200}, "grun": {"c": 20}}
    assert cached_runs(tmp_path / "empty") == {}


def test_the_several_processes_path_loads_builds_and_sets_damage_aside(tmp_path, monkeypatch):
    """cached() as the main process of a multi-process run takes it (collectives simulated by one process): a healthy
    entry is loaded, a missing one built and written, a damaged one set aside and built again."""
    from unlearn_utils import distributed
    from unlearn_utils.cache import write_files

    monkeypatch.setenv("UNLEARN_KIT_CACHE", str(tmp_path))
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "is_main", lambda: True)
    for name in ("broadcast", "gather_list"):
        monkeypatch.setattr(distributed, name, lambda value: value)
    monkeypatch.setattr(distributed, "barrier", lambda: None)
    built = []

    def build():
        built.append(1)
        return b"value"

    def run():
        return cached("tables", {"k": 1}, build, lambda v, folder: write_files(folder, {"v.bin": v}),
                      lambda folder: (folder / "v.bin").read_bytes())

    assert run() == b"value" and len(built) == 1
    assert run() == b"value" and len(built) == 1  # loaded
    entry = cache_entry("tables", {"k": 1})
    (entry / "v.bin").write_bytes(b"tampered")
    with pytest.warns(UserWarning, match="unusable"):
        assert run() == b"value"
    assert len(built) == 2 and (entry.parent / f"{entry.name}.corrupt").is_dir()
    assert (entry / "v.bin").read_bytes() == b"value"
