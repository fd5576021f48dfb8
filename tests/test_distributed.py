"""Several processes through accelerate (CPU, gloo): the same numbers as one process, one cache, no damage when a
process dies. Each launch starts two Python processes on the machine's cores (about 15 s each on 2 cores)."""

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from unlearn_utils import distributed

HERE = Path(__file__).resolve().parent
ACCELERATE = Path(sys.executable).with_name("accelerate")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(args: list[str], processes: int) -> list[str]:
    """``python ARGS`` plainly, or under ``accelerate launch`` on ``processes`` processes. On a CPU, accelerate 1.x
    starts several processes with its torchrun launcher (``--multi_gpu``; the kit then picks the CPU and gloo), not
    with ``--cpu``, which starts one process unless mpirun is set up (docs/several_processes.md)."""
    if processes == 1:
        return [sys.executable, *args]
    return [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_port()), *args]


def _env(cache: Path) -> dict:
    env = {**os.environ, "UNLEARN_KIT_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "UNLEARN_KIT_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent),
           "PYTHONUNBUFFERED": "1"}
    env.pop("WORLD_SIZE", None)
    return env


def _run(args, processes, cache, timeout=240):
    done = subprocess.run(_command(args, processes), env=_env(cache), capture_output=True, text=True,
                          timeout=timeout, cwd=HERE.parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done


@pytest.fixture(scope="module")
def files(knowing, tmp_path_factory):
    """The knowing world model saved as a folder, and its forget10 facts and some retain facts as a question file."""
    from unlearn_utils.cache import save_checked

    world, model, tok = knowing
    root = tmp_path_factory.mktemp("distributed")
    save_checked(model, tok, root / "model")
    rows = [{"split": "forget", "prompt": r["prompt"], "answer": r["answer"]}
            for r in world.facts("forget10", "trained")]
    rows += [{"split": "retain", "prompt": r["prompt"], "answer": r["answer"]}
             for r in list(world.facts("retain", "trained", "forget10"))[:18]]
    (root / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _outputs(folder: Path):
    from safetensors.torch import load_file

    return json.loads((folder / "results.json").read_text()), load_file(str(folder / "weights.safetensors"))


@pytest.mark.slow
def test_two_processes_give_one_process_numbers_and_share_its_cache(files, knowing, tmp_path):
    script = [str(HERE / "distributed_script.py"), str(files / "model"), str(files / "questions.jsonl")]
    _run([*script, str(tmp_path / "one")], 1, tmp_path / "cache-one")
    _run([*script, str(tmp_path / "two")], 2, tmp_path / "cache-two")
    one, w1 = _outputs(tmp_path / "one")
    two, w2 = _outputs(tmp_path / "two")
    assert (one["processes"], two["processes"]) == (1, 2)
    for run in ("grad_diff", "npo_kl", "rmu", "grun"):
        assert (two[run]["forget"], two[run]["retain"]) == (one[run]["forget"], one[run]["retain"]), run
        assert not one[run]["cached"] and not two[run]["cached"]
        # the loss of the global batch at every step: the same sums, added in another order (measured: equal to
        # 1e-5 on an AVX2 CPU; on an AVX-512 one, 1.9e-4 at one step of grad_diff's ascent, where it grows fastest)
        assert two[run]["loss"] == pytest.approx(one[run]["loss"], rel=1e-3, abs=1e-5), run
    # relearning from the grad_diff model (whose weights differ by float noise, see below) ends where one process
    # does; on the way one question of 48 may flip (measured on an AVX-512 CPU: 0.229 vs 0.250 after epoch 1)
    assert two["relearn"]["forget"][-1] == one["relearn"]["forget"][-1]
    assert max(abs(a - b) for a, b in zip(two["relearn"]["forget"], one["relearn"]["forget"])) <= 1 / 48 + 1e-9
    assert two["relearn_original"]["forget"] == one["relearn_original"]["forget"]
    assert w1.keys() == w2.keys()
    # weights: the difference between the two runs, against how far training moved them. (Adam turns float noise in
    # near-zero gradients into steps of about lr, and a model wrecked by gradient ascent magnifies a difference of
    # its starting point ~1000x in one process too, so relearning is compared from the same original.)
    original = knowing[1].state_dict()
    for run in ("grad_diff", "npo_kl", "rmu", "relearn_original"):
        keys = [k for k in w1 if k.startswith(run + ".")]
        diff = sum(float((w1[k].double() - w2[k].double()).pow(2).sum()) for k in keys) ** 0.5
        moved = sum(float((w1[k].double() - original[k.split(".", 1)[1]].double()).pow(2).sum()) for k in keys) ** 0.5
        assert diff < 1e-3 * moved, (run, diff, moved)  # measured: 1e-5, 8e-7, ... and 8e-5 of the update
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1 if k.startswith("grun.")) < 1e-5  # measured 2e-7

    # a one-process run on the cache the two processes wrote loads every entry: the very same weights
    _run([*script, str(tmp_path / "again")], 1, tmp_path / "cache-two")
    again, w3 = _outputs(tmp_path / "again")
    assert all(again[run]["cached"] for run in ("grad_diff", "npo_kl", "rmu", "grun"))
    assert all(torch.equal(w3[k], w2[k]) for k in w2 if not k.startswith("relearn"))


def _rank_pids(launcher: subprocess.Popen, cache: Path, processes: int, timeout: float = 120) -> dict[int, int]:
    """{rank: pid} of the launcher's worker processes (read from their environment)."""
    found: dict[int, int] = {}
    end = time.time() + timeout
    while len(found) < processes and time.time() < end and launcher.poll() is None:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                raw = (proc / "environ").read_bytes().decode("utf-8", "replace")
            except OSError:  # gone, or not ours to read
                continue
            env = dict(e.split("=", 1) for e in raw.split("\0") if "=" in e)
            if env.get("UNLEARN_KIT_CACHE") == str(cache) and "LOCAL_RANK" in env:
                found[int(env["LOCAL_RANK"])] = int(proc.name)
        time.sleep(0.5)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the worker processes through /proc")
@pytest.mark.parametrize("victim", [1, 0])
def test_killing_one_process_mid_run_leaves_no_damaged_cache_entry(files, tmp_path, victim):
    from unlearn_utils.cache import cached_runs, verify_folder

    cache = tmp_path / "cache"
    args = ["-m", "unlearn_utils.cli", "unlearn", str(files / "model"), "--data", f"qa:{files / 'questions.jsonl'}",
            "--method", "grad_diff", "--steps", "3000", "--batch-size", "6", "--lr", "1e-4", "--out",
            str(tmp_path / "out")]
    launcher = subprocess.Popen(_command(args, 2), env=_env(cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, cwd=HERE.parent, start_new_session=True)
    try:
        pids = _rank_pids(launcher, cache, 2)
        assert len(pids) == 2, f"found the workers {pids}"
        lines, end = [], time.time() + 180
        while time.time() < end:  # training has started once the main process says what it unlearns
            ready, _, _ = select.select([launcher.stdout], [], [], 1.0)
            line = launcher.stdout.readline() if ready else ""
            lines.append(line)
            if line.startswith("unlearning ") or launcher.poll() is not None:
                break
        assert any(x.startswith("unlearning ") for x in lines), "".join(lines)[-3000:]
        time.sleep(4)
        assert launcher.poll() is None, "".join(lines)
        os.kill(pids[victim], signal.SIGKILL)
        rest = launcher.communicate(timeout=120)[0]
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode != 0, rest[-2000:]
    assert not (tmp_path / "out").exists()
    assert cached_runs(cache) == {}  # no entry: none half-written, none of the dead run
    for kind in ("unlearned", "grun"):
        for entry in (cache / kind).glob("*") if (cache / kind).exists() else []:
            if not entry.name.startswith("."):
                verify_folder(entry)

    # the same run in one process then trains, caches and saves as if nothing had happened
    short = [a if a != "3000" else "10" for a in args]
    done = _run(short, 1, cache)
    assert "saved to" in done.stdout
    runs = cached_runs(cache)["unlearned"]
    assert list(runs.values()) == [10]
    verify_folder(next(p for p in (cache / "unlearned").iterdir() if not p.name.startswith(".")))
    shutil.rmtree(cache, ignore_errors=True)


def test_one_process_uses_no_accelerate(monkeypatch):
    """In a plain process the distributed helpers are the identity: no Accelerator is made, means are plain means."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.active() and distributed.is_main() and distributed.num_processes() == 1
    x = torch.tensor([1.0, 2.0, 4.0])
    assert torch.equal(distributed.mean(x), x.mean())
    assert torch.equal(distributed.ratio(x.sum(), torch.tensor(0)), x.sum() / 1)
    batch = {"input_ids": torch.zeros(3, 2)}
    assert distributed.rows(batch) is batch and distributed.shard_list([1, 2]) == [1, 2]
    assert distributed.broadcast("x") == "x" and distributed.average(2.5) == 2.5
    assert distributed._ACCELERATOR is None


def test_rows_split_the_global_batch_in_order(monkeypatch):
    """Process i of P takes a contiguous block of rows, the first n % P one more; all of them, once."""
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "num_processes", lambda: 3)
    batch = {"input_ids": torch.arange(14).reshape(7, 2), "note": "kept"}
    parts = []
    for i in range(3):
        monkeypatch.setattr(distributed, "process_index", lambda i=i: i)
        part, idx = distributed.rows(batch, list(range(10, 17)))
        assert part["note"] == "kept" and idx == [int(r[0]) // 2 + 10 for r in part["input_ids"]]
        parts.append(part["input_ids"])
    assert [len(p) for p in parts] == [3, 2, 2]
    assert torch.equal(torch.cat(parts), batch["input_ids"])


def test_a_batch_smaller_than_the_processes_is_refused_before_training(monkeypatch, knowing):
    from unlearn_utils.unlearning import unlearn

    world, model, tok = knowing
    monkeypatch.setattr(distributed, "num_processes", lambda: 4)
    forget = list(world.facts("forget10", "trained"))[:3]
    with pytest.raises(ValueError, match="cannot be split over 4 processes"):
        unlearn(model, tok, forget, list(world.facts("retain", "trained", "forget10"))[:8], "grad_diff", steps=2,
                batch_size=8)


@pytest.mark.slow
def test_the_commands_run_under_accelerate_launch_with_the_same_audit(files, tmp_path):
    """``unlearn-kit unlearn`` saves a model and its results; ``unlearn-kit audit`` on it writes the same verdicts and
    table on two processes as on one (every probe runs on both; the main process writes)."""
    cache, data = tmp_path / "cache", f"qa:{files / 'questions.jsonl'}"
    _run(["-m", "unlearn_utils.cli", "unlearn", str(files / "model"), "--data", data, "--method", "npo", "--steps",
          "20", "--batch-size", "6", "--lr", "3e-3", "--out", str(tmp_path / "unlearned")], 2, cache)
    results = json.loads((tmp_path / "unlearned" / "results.json").read_text())
    assert results["processes"] == 2 and not results["cached"]
    assert results["original_forget_accuracy"] > results["forget_accuracy"]
    audits = {}
    for n in (2, 1):  # each in a cache of its own: the audit caches its relearning curves
        out = tmp_path / f"audit-{n}"
        _run(["-m", "unlearn_utils.cli", "audit", str(tmp_path / "unlearned"), "--original", str(files / "model"),
              "--data", data, "--out", str(out)], n, tmp_path / f"cache-audit-{n}")
        audits[n] = [(out / name).read_text() for name in ("verdicts.csv", "table.csv")]
    assert audits[1] == audits[2]


def test_sharding_engines_are_refused_before_training(monkeypatch):
    """FSDP / DeepSpeed leave each process a shard of the weights, which the kit's saving cannot read: refused."""
    from types import SimpleNamespace

    from unlearn_utils.training import train_loop

    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "accelerator", lambda: SimpleNamespace(distributed_type="DistributedType.FSDP"))
    model = torch.nn.Linear(2, 1)
    before = model.weight.detach().clone()
    with pytest.raises(ValueError, match="FSDP, which shards the weights.*--multi_gpu"):
        train_loop(model, lambda step: {}, 2, 1e-3, loss_fn=lambda m, b: m(torch.ones(1, 2)).sum())
    assert torch.equal(model.weight, before) and model.weight.requires_grad


def test_the_unlearn_command_refuses_bad_arguments_before_loading_anything(tmp_path, capsys):
    from unlearn_utils.cli import main

    for argv, message in (
            (["unlearn", "world", "--method", "forgetful", "--out", str(tmp_path / "o")], "--method: Unknown"),
            (["unlearn", "world", "--steps", "0", "--out", str(tmp_path / "o")], "--steps: must be a positive"),
            (["unlearn", "world", "--grun", "--lora", "--out", str(tmp_path / "o")], "--lora: a GRUN run"),
            (["unlearn", str(tmp_path / "missing"), "--data", "real", "--out", str(tmp_path / "o")], "MODEL: "),
            (["unlearn", "gpt2-nowhere/x", "--data", "world", "--out", str(tmp_path / "o")],
             "--data world: the world.s questions"),
            (["unlearn", "world", "--split", "forget99", "--out", str(tmp_path / "o")], "--split: unknown")):
        with pytest.raises(SystemExit, match=message):
            main(argv)
    assert not (tmp_path / "o").exists()


def test_global_means_under_several_processes_are_the_whole_batch_means(monkeypatch):
    """Two simulated processes, each with its rows: what each divides by (its count x 2 processes / the total) makes
    the average of their losses the mean over the whole batch, for token means and row means alike."""
    values = torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0])
    shards = [values[:2], values[2:]]
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "num_processes", lambda: 2)
    monkeypatch.setattr(distributed.torch.distributed, "all_reduce", lambda t: t.copy_(t * 0 + 5))  # 2 + 3 rows
    losses = [distributed.mean(s) for s in shards]
    assert float(sum(losses) / 2) == pytest.approx(float(values.mean()))
    tokens = [torch.tensor(2), torch.tensor(3)]
    losses = [distributed.ratio(s.sum(), n) for s, n in zip(shards, tokens)]
    assert float(sum(losses) / 2) == pytest.approx(float(values.sum() / 5))


def test_a_failed_write_on_the_main_process_stops_the_others(monkeypatch):
    """main_first: the main process's error reaches every process (here: the second one, simulated)."""
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    monkeypatch.setattr(distributed, "broadcast", lambda value: "OSError: disk full")
    ran = []
    with pytest.raises(RuntimeError, match="main process failed .OSError: disk full"):
        distributed.main_first(lambda: ran.append(1))
    assert not ran  # only the main process writes
