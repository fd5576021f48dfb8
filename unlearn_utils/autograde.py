"""Grade a folder of submitted student notebooks: run each in a sandbox in smoke mode, then check its functions.

``python -m unlearn_utils.autograde submissions/ --out grades.csv`` grades every ``*.ipynb`` below the folder (the
student is the file's parent folder name, or the file name when the folder is flat) and writes one row per
(student, notebook, exercise) with pass/fail and the check's message, plus a wide table ``<out>_wide.csv``
(students x exercises). A notebook that crashes, runs out of time or kills its own processes becomes failures for
the exercises it did not deliver; the grader itself never stops on a bad submission.

How a submission is graded
--------------------------
1. **A private copy.** The notebook alone is copied into a fresh temporary folder (``work/``, its working
   directory), beside a private ``home/``, a private, empty model cache (``UNLEARN_KIT_CACHE``; ``seed_cache`` is
   *copied* in first when given) and its own temp dir. The submissions tree, the grader's cache and the grade files
   are never its working directory and are named nowhere in its environment.
2. **Its own processes, a clean environment.** A worker process (``--worker``, in a new session and process group)
   starts the notebook's kernel (which Jupyter puts in a session of its own) and runs the cells, with ``SMOKE =
   True`` injected after the ``parameters`` cell, a per-cell limit and a wall-clock limit for the whole notebook.
   The environment holds only ``PATH``, ``HOME``, ``TMPDIR``, the private cache, the downloads folder, thread
   settings and hub-offline switches. Smoke mode builds its tiny world model in the private cache (seconds); the
   downloads folder (real model files, only needed for ``MODEL`` other than the world) is the grader's own, shared
   read-only in namespace mode and as is in process mode (each file is SHA-256-checked when used). The worker dies
   with the grader (parent-death signal); after each notebook the grader kills the worker's process group and every
   process still carrying the run's marker variable. Sandboxes left by a killed grader are removed at the next run.
3. **Namespaces, where Linux allows them** (``isolation="auto"``, the default, or ``"namespace"``): the worker runs
   in new user, mount, PID and network namespaces without capabilities (``unshare`` and ``setpriv``, util-linux).
   There the submissions folder, the grader's cache and the grade CSVs are covered by empty mounts, the downloads
   folder is mounted read-only, only the run's own processes are visible or signalable, and there is no network
   (the kernel talks to the worker over Unix sockets). Elsewhere (``"process"``) steps 1 and 2 still hold.
4. **Only the grader decides what passed.** Nothing the kernel prints, writes or returns as a verdict is read:
   the check cells that ran in the notebook are for the learner only. After the notebook has run, the grader runs
   every exercise's check *in its own process* (``unlearn_utils.checks``, imported by the grader), with a stand-in
   function that forwards each call to the kernel's function of that name: the arguments go in by pickle (grader
   -> kernel), the return value comes back as plain JSON data (numbers, strings, lists, tensors / arrays of numeric
   dtypes, an exception's type name and message), decoded strictly; no object from the kernel is unpickled, and no
   code from it runs in the grader. So a notebook that writes "passed" lines, prints PASS, or monkeypatches the
   checks in its kernel changes nothing: only functions that return the right values on the grader's inputs pass.
5. **Rows are written as soon as they are known.** After each notebook the grader rewrites the CSV atomically
   (temp file, fsync, rename) from the rows it holds in memory; a grader killed mid-way loses nothing already
   graded, and a restart (``resume=True``, the default) keeps those rows and grades only the rest.

What a submission can still do (residual limits, be honest with your students and yourself)
-------------------------------------------------------------------------------------------
* **Call the kit's reference.** The kernel can import ``unlearn_utils`` (it needs it), so a function that calls the
  kit's own reference implementation (e.g. ``unlearn_utils.evaluate.min_k_score(..., count="round")``, the rule
  notebook 00's exercise states) passes. Read suspicious code.
* **Without namespaces** the kernel still runs as the grader's user: with absolute paths (which it can learn from
  ``/proc``) it can read, change or delete any file that user can (other submissions, the grader's cache, the
  downloads), signal any of that user's processes (``kill(-1)``, the grader's pid from ``/proc``), and use the
  network; where the system lets a user trace its own processes (Yama ``ptrace_scope`` 0) it could even take over
  the grader. Rows it appends to the grade CSV are dropped at the grader's next rewrite, unless it also kills the
  grader and the grading is then resumed (resume trusts the CSV it finds).
* **With namespaces** it can still read files the grader's user can read outside the covered folders (your home,
  other courses), and its exception messages reach the grade messages (cut to a few hundred characters). It shares
  the machine's CPU, memory and disk: no memory or disk quota is set, only time limits.
* A process that escapes (double-forks and re-executes without the marker variable) can outlive its notebook in
  process mode; in namespace mode it dies with the namespace.

For real protection against hostile code, run the grader in a throw-away account or container, as with any
autograder; the isolation here keeps honest mistakes and casual cheating from hurting the grades of others.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import csv
import io
import itertools
import json
import math
import os
import pickle
import queue
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nbformat

from .editions import _tags

FIELDS = ["student", "notebook", "exercise", "passed", "message"]
TOKEN_ENV = "UNLEARN_AUTOGRADE_RUN"  # every process of one run carries it: the grader kills them all afterwards
DEFAULT_NOTEBOOK_TIMEOUT = 1800  # seconds for the whole notebook (kernel start-up not counted)
CALL_TIMEOUT = 120  # seconds for one call of a learner's function while checking
CHECK_BUDGET = 600  # seconds for all the calls of one notebook's checks
STARTUP_TIMEOUT = 120  # seconds for the worker and the kernel to start
MAX_RESULT_BYTES = 64 << 20  # a returned value larger than this (as JSON) is refused
MAX_ELEMENTS = 4_000_000  # elements of a returned tensor or array
_CHECK_CALL = re.compile(r"checks\.check_(\w+)\(\s*([A-Za-z_]\w*)?")
_ISOLATIONS = ("auto", "namespace", "process")
SANDBOX_PREFIX = "unlearn-grade-"


# ----------------------------------------------------------------------------------------------
# What a notebook's exercises are
# ----------------------------------------------------------------------------------------------
def _kit_source(notebook_name: str):
    from .reproduce import notebooks

    for src in notebooks():
        if src.name == notebook_name:
            return nbformat.read(src, as_version=4)
    return None


def expected_exercises(notebook_name: str) -> list[str]:
    """The exercises of the kit's source notebook with this file name (empty for unknown notebooks)."""
    from .editions import exercises_of

    nb = _kit_source(notebook_name)
    return exercises_of(nb) if nb is not None else []


def exercise_functions(nb) -> dict[str, str | None]:
    """Exercise -> the name of the function its check is given (``checks.check_min_k(min_k_score)`` -> ``min_k:
    min_k_score``), from the notebook's exercise cells, in order; None where the argument is not a plain name."""
    out: dict[str, str | None] = {}
    for cell in nb.cells:
        if cell.cell_type == "code" and "exercise" in _tags(cell):
            for exercise, fn in _CHECK_CALL.findall(cell.source):
                out.setdefault(exercise, fn or None)
    return out


def _plan(path: Path) -> tuple[dict[str, str | None], str | None]:
    """(exercise -> function name, error): the kit's own list for a kit notebook (a submission cannot change which
    exercises count, nor which function each is), else the submission's exercise cells."""
    source = _kit_source(path.name)
    if source is not None:
        return exercise_functions(source), None
    try:
        return exercise_functions(nbformat.read(path, as_version=4)), None
    except Exception as e:  # noqa: BLE001 - an unreadable file is graded as such
        return {}, f"notebook unreadable: {type(e).__name__}: {e}"[:300]


# ----------------------------------------------------------------------------------------------
# The sandbox (grader side)
# ----------------------------------------------------------------------------------------------
class SubmissionDied(BaseException):
    """The submission's processes died, hung or ran out of time while being checked (a BaseException, so that the
    checks' own ``except Exception`` does not report it as the learner's error)."""


_NS_SCRIPT = r"""
while [ "$1" != "--" ]; do
  case "$1" in
    ro) { mount --bind "$2" "$3" && mount -o remount,bind,ro "$3"; } || exit 98; shift 3 ;;
    hide-dir) mount -t tmpfs -o size=64k,mode=0700 none "$2" || exit 97; shift 2 ;;
    hide-file) mount --bind /dev/null "$2" || exit 97; shift 2 ;;
    *) exit 96 ;;
  esac
done
shift
exec setpriv --bounding-set=-all --inh-caps=-all --no-new-privs -- "$@"
"""
_NS_PREFIX = ["setpriv", "--pdeathsig", "KILL", "--", "unshare", "--user", "--map-root-user", "--mount", "--pid",
              "--fork", "--kill-child", "--mount-proc", "--net", "--", "/bin/sh", "-c", _NS_SCRIPT, "sh"]
_namespace_ok: bool | None = None


def namespace_available() -> bool:
    """Whether this machine lets the grader run a submission in user, mount, PID and network namespaces (probed once:
    a tmpfs mount, a read-only bind and a capability drop must all work)."""
    global _namespace_ok
    if _namespace_ok is None:
        _namespace_ok = False
        if sys.platform.startswith("linux") and shutil.which("unshare") and shutil.which("setpriv"):
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "hide").mkdir()
                (Path(tmp) / "ro").mkdir()
                (Path(tmp) / "hide" / "x").write_text("x")
                cmd = _NS_PREFIX + ["ro", f"{tmp}/ro", f"{tmp}/ro", "hide-dir", f"{tmp}/hide", "--",
                                    "/bin/sh", "-c", f'test ! -e {tmp}/hide/x && ! touch {tmp}/ro/y 2>/dev/null']
                try:
                    done = subprocess.run(cmd, capture_output=True, timeout=30)
                    _namespace_ok = done.returncode == 0
                except (OSError, subprocess.SubprocessError):
                    pass
    return _namespace_ok


def _resolve_isolation(isolation: str) -> str:
    if isolation not in _ISOLATIONS:
        raise ValueError(f"Unknown isolation {isolation!r}: use one of {_ISOLATIONS}.")
    if isolation == "auto":
        return "namespace" if namespace_available() else "process"
    if isolation == "namespace" and not namespace_available():
        raise RuntimeError("isolation='namespace' needs unprivileged user namespaces and util-linux's unshare and "
                           "setpriv; this machine does not allow them (use 'auto' or 'process').")
    return isolation


def _within(a: Path, b: Path) -> bool:
    """a is b or lies inside b."""
    return a == b or b in a.parents


def _sweep(token: str) -> None:
    """SIGKILL every process (but this one) whose environment carries the run's marker (Linux; best effort)."""
    mark = f"{TOKEN_ENV}={token}".encode()
    try:
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if mark in f.read().split(b"\0"):
                    os.kill(pid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def clean_stale_sandboxes() -> int:
    """Remove the sandbox folders that a killed grader left behind (their grader process is gone); how many."""
    removed = 0
    for folder in Path(tempfile.gettempdir()).glob(SANDBOX_PREFIX + "*"):
        try:
            pid = int((folder / ".grader").read_text()[:20])
            os.kill(pid, 0)
            continue  # its grader is alive (or the pid was reused): leave it
        except ProcessLookupError:
            pass
        except (OSError, ValueError):
            continue
        _rmtree(folder)
        removed += 1
    return removed


def _rmtree(path: Path) -> None:
    """Remove a sandbox folder, also where the submission made parts of it unreadable (links are never followed)."""
    def retry(func, p, _exc):
        with contextlib.suppress(OSError):
            if not os.path.islink(p):
                os.chmod(os.path.dirname(p), 0o700)
                os.chmod(p, 0o700)
                func(p)

    if os.path.islink(path):
        os.unlink(path)
    elif path.exists():
        shutil.rmtree(path, onerror=retry)


class _Sandbox:
    """One submission's private folder and processes; talks to its worker over pipes (never trusting it)."""

    def __init__(self, path: Path, parameters: dict, cell_timeout: int, notebook_timeout: float, isolation: str,
                 seed_cache=None, hide=(), call_timeout: float = CALL_TIMEOUT, check_budget: float = CHECK_BUDGET):
        self.root = Path(tempfile.mkdtemp(prefix=SANDBOX_PREFIX)).resolve()
        (self.root / ".grader").write_text(str(os.getpid()))  # for clean_stale_sandboxes after a killed grader
        self.proc, self.log, self.io_fd, self.dead = None, None, None, False
        try:
            self._start(path, parameters, cell_timeout, notebook_timeout, isolation, seed_cache, hide)
        except BaseException:
            self.close()
            raise
        self.call_timeout, self.check_budget, self.check_deadline = call_timeout, check_budget, None
        self.notebook_timeout = notebook_timeout
        self._ids = itertools.count(1)
        self.messages: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _start(self, path, parameters, cell_timeout, notebook_timeout, isolation, seed_cache, hide):
        from .models import downloads_dir

        root = self.root
        work, home, cache, io_dir = (root / n for n in ("work", "home", "cache", "io"))
        for d in (work, home, io_dir, root / "tmp", root / "k", root / "downloads"):
            d.mkdir()
        if seed_cache:
            shutil.copytree(seed_cache, cache)  # a real copy: the submission can only damage its own
        else:
            cache.mkdir()
        shutil.copyfile(path, work / path.name)  # the notebook alone, nothing else of the submissions tree
        self.io = io_dir  # the grader reaches it through this descriptor only (the kernel may move the folder)
        self.io_fd = os.open(io_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        self.token = secrets.token_hex(16)
        downloads = downloads_dir().resolve()
        job = {"notebook": str(work / path.name), "parameters": parameters, "cell_timeout": int(cell_timeout),
               "notebook_timeout": float(notebook_timeout), "ipc": str(root / "k" / "kernel"),
               "kernel_log": str(root / "kernel.log"), "startup_timeout": STARTUP_TIMEOUT}
        (root / "job.json").write_text(json.dumps(job))
        package_parent = Path(__file__).resolve().parent.parent
        env = {"PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
               "HOME": str(home), "TMPDIR": str(root / "tmp"), "UNLEARN_KIT_CACHE": str(cache),
               "UNLEARN_KIT_DOWNLOADS": str(downloads), "PYTHONPATH": str(package_parent), "PYTHONNOUSERSITE": "1",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(home / "hf"),
               "JUPYTER_PLATFORM_DIRS": "1", "LANG": "C.UTF-8", TOKEN_ENV: self.token}
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "UNLEARN_KIT_THREADS",
                    "TOKENIZERS_PARALLELISM", "CUDA_VISIBLE_DEVICES", "MPLBACKEND", "TZ"):
            if var in os.environ:
                env[var] = os.environ[var]
        cmd = [sys.executable, "-m", "unlearn_utils.autograde", "--worker", str(root / "job.json")]
        if isolation == "namespace":
            mounts = []
            if downloads.is_dir():  # read-only, at a path inside the sandbox (the real one may be covered below)
                mounts += ["ro", str(downloads), str(root / "downloads")]
            env["UNLEARN_KIT_DOWNLOADS"] = str(root / "downloads")
            needed = [root, package_parent, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(),
                      Path(sys.executable).resolve().parent]
            for p in hide:
                p = Path(p).resolve()
                if not p.exists():
                    continue
                if not any(_within(n, p) for n in needed):
                    mounts += ["hide-dir" if p.is_dir() else "hide-file", str(p)]
                elif p.is_dir():  # a folder the run needs lies inside: cover its notebooks one by one
                    mounts += [a for f in p.rglob("*.ipynb") if f.is_file() and not _within(f.resolve(), root)
                               for a in ("hide-file", str(f.resolve()))]
            cmd = _NS_PREFIX + mounts + ["--"] + cmd
        self.log = open(root / "worker.log", "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env,
                                     cwd=work, start_new_session=True)

    def _read(self):
        for line in iter(lambda: self.proc.stdout.readline(1 << 20), b""):
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                msg = json.loads(line)
                if isinstance(msg, dict):
                    self.messages.put(msg)
        self.messages.put(None)

    def wait_for(self, key: str, value, timeout: float) -> dict | None:
        """The next message whose ``key`` is ``value``; None when the worker is gone or the time is up."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                msg = self.messages.get(timeout=left)
            except queue.Empty:
                return None
            if msg is None:
                self.messages.put(None)
                return None
            if msg.get(key) == value:
                return msg

    def died(self) -> str:
        code = self.proc.poll()
        return "its grading process was killed" if code is None or code < 0 else f"its grading process exited ({code})"

    def run_notebook(self) -> tuple[str | None, bool]:
        """Wait for the notebook to run; (error message or None, whether its functions can still be called)."""
        msg = self.wait_for("event", "ran", STARTUP_TIMEOUT + self.notebook_timeout + 60)
        if msg is None:
            self.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            if self.proc.returncode in (96, 97, 98):  # _NS_SCRIPT's codes: a mount failed, nothing ran
                return f"the sandbox could not be set up (exit {self.proc.returncode}, see its worker.log)", False
            return f"notebook did not finish: {self.died()} (killed, crashed or ran past its time limit)", False
        err = msg.get("error")
        return (str(err)[:300] if err else None), bool(msg.get("alive"))

    def request(self, op: str, **fields) -> dict:
        """Ask the kernel (through the worker) to run ``op``; the decoded result file, or SubmissionDied."""
        if self.check_deadline is None:
            self.check_deadline = time.monotonic() + self.check_budget
        timeout = min(self.call_timeout, self.check_deadline - time.monotonic())
        if self.dead:
            raise SubmissionDied(f"the submission stopped answering: {self.died()}")
        if timeout <= 0:
            self.kill()
            raise SubmissionDied(f"the checks ran past their time limit ({self.check_budget:.0f} s in all)")
        n = next(self._ids)
        name = f"res-{n}-{secrets.token_hex(4)}.json"
        request = {"id": n, "op": op, "result": str(self.io / name), "timeout": int(max(1, timeout)), **fields}
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except (OSError, ValueError):
            self.kill()
            raise SubmissionDied(f"the submission stopped answering: {self.died()}") from None
        reply = self.wait_for("id", n, timeout + 15)
        if reply is None or reply.get("status") in ("timeout", "dead"):
            why = "a call ran past its time limit" if reply and reply["status"] == "timeout" else self.died()
            self.kill()
            raise SubmissionDied(f"the submission stopped answering while being checked: {why}")
        try:
            return json.loads(self.read_file(name))
        except (OSError, ValueError) as e:
            return {"$": "raise", "type": "RuntimeError", "message": f"no readable answer from the kernel ({e})"}
        finally:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=self.io_fd)

    def write_file(self, data: bytes) -> str:
        """A new file in the exchange folder (never following a link the kernel planted); its path."""
        name = f"args-{secrets.token_hex(8)}.pkl"
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600,
                     dir_fd=self.io_fd)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return name

    def read_file(self, name: str) -> str:
        """A regular file of the exchange folder (no link, FIFO or device; at most MAX_RESULT_BYTES)."""
        import stat

        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0),
                     dir_fd=self.io_fd)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_RESULT_BYTES:
                raise ValueError("not a regular file of an acceptable size")
            return f.read(MAX_RESULT_BYTES + 1).decode()

    def kill(self):
        self.dead = True
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            _sweep(self.token)

    def close(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(OSError, ValueError):
                    self.proc.stdin.write(b'{"op": "quit"}\n')
                    self.proc.stdin.flush()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=5)
            self.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
            for stream in (self.proc.stdin, self.proc.stdout):
                with contextlib.suppress(OSError, ValueError):
                    stream.close()
        if self.log is not None:
            self.log.close()
        if self.io_fd is not None:
            os.close(self.io_fd)
        _rmtree(self.root)


class _Opaque:
    """A returned object the grader does not rebuild: shown by its repr, equal to nothing."""

    def __init__(self, text: str):
        self.text = str(text)[:200]

    def __repr__(self):
        return self.text

    def __eq__(self, other):
        return False

    __hash__ = object.__hash__


_DTYPES = {"float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"}


def _decode(obj, depth: int = 0):
    """Rebuild a returned value from the kernel's JSON, accepting only plain data (raises ValueError otherwise)."""
    if depth > 40:
        raise ValueError("the returned value is nested too deeply")
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, list):
        return [_decode(v, depth + 1) for v in obj]
    if not isinstance(obj, dict):
        raise ValueError("unexpected value")
    kind = obj.get("$")
    if kind == "tuple":
        return tuple(_decode(v, depth + 1) for v in obj["items"])
    if kind == "dict":
        return {_hashable(_decode(k, depth + 1)): _decode(v, depth + 1) for k, v in obj["items"]}
    if kind == "set":
        return {_hashable(_decode(v, depth + 1)) for v in obj["items"]}
    if kind == "repr":
        return _Opaque(obj.get("text", "?"))
    if kind in ("tensor", "ndarray"):
        dtype, shape, data = obj.get("dtype"), obj.get("shape"), obj.get("data")
        if dtype not in _DTYPES or not isinstance(shape, list) or not isinstance(data, list):
            return _Opaque(f"<{kind} of dtype {dtype}>")
        if not all(isinstance(s, int) and 0 <= s for s in shape) or math.prod(shape) != len(data) \
                or len(data) > MAX_ELEMENTS or not all(isinstance(v, (int, float)) for v in data):
            raise ValueError(f"a malformed {kind}")
        if kind == "tensor":
            import torch

            return torch.tensor(data, dtype=getattr(torch, dtype)).reshape(shape)
        import numpy as np

        if dtype == "bfloat16":
            dtype = "float32"
        return np.asarray(data, dtype=np.dtype(dtype)).reshape(shape)
    raise ValueError(f"unexpected value {str(kind)[:40]!r}")


def _hashable(v):
    return tuple(v) if isinstance(v, list) else v


def _exception(name, message) -> Exception:
    """An exception like the one the learner's function raised: the builtin class of that name, else a new class."""
    name, message = str(name)[:60], str(message)[:500]
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        with contextlib.suppress(Exception):
            return cls(message)
    return type(name if name.isidentifier() else "Exception", (Exception,), {})(message)


class RemoteFunction:
    """Stands for the learner's function ``name`` in the kernel: each call runs there, the value comes back as data."""

    def __init__(self, sandbox: _Sandbox, name: str):
        self.sandbox, self.name = sandbox, name

    def __call__(self, *args, **kwargs):
        name = self.sandbox.write_file(pickle.dumps((args, kwargs), protocol=4))
        try:
            out = self.sandbox.request("call", function=self.name, args=str(self.sandbox.io / name))
        finally:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=self.sandbox.io_fd)
        if isinstance(out, dict) and out.get("$") == "raise":
            raise _exception(out.get("type", "Exception"), out.get("message", ""))
        if isinstance(out, dict) and out.get("$") == "missing":
            raise NameError(f"{self.name} is not defined in the notebook any more")
        return _decode(out)


def _verify(exercise: str, fn: RemoteFunction) -> tuple[bool, str]:
    """Run the kit's check of ``exercise`` here, in the grader, on the remote function."""
    from . import checks

    check = getattr(checks, f"check_{exercise}", None)
    if not callable(check):
        return False, f"the kit has no check named check_{exercise}"
    kept = len(checks.RESULTS)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            res = check(fn)
        return bool(res.passed), str(res.message)
    except SubmissionDied as e:
        return False, str(e)
    except Exception as e:  # noqa: BLE001 - e.g. a returned value of the wrong type
        return False, f"the returned value could not be checked: {type(e).__name__}: {e}"[:300]
    finally:
        del checks.RESULTS[kept:]


def grade_notebook(path: Path, timeout: int = 600, parameters: dict | None = None, *,
                   notebook_timeout: float = DEFAULT_NOTEBOOK_TIMEOUT, isolation: str = "auto",
                   seed_cache: str | Path | None = None, hide=(), call_timeout: float = CALL_TIMEOUT,
                   check_budget: float = CHECK_BUDGET) -> list[dict]:
    """Run one submission in a sandbox in smoke mode, then check its functions; one result per exercise.

    ``timeout`` limits each cell, ``notebook_timeout`` the whole notebook (seconds). ``hide``: paths the submission
    must not see (covered in namespace mode). See the module docstring for what the sandbox does.
    """
    path = Path(path)
    functions, error = _plan(path)
    rows = {}
    if error is None:
        box = _Sandbox(path, {"SMOKE": True, **(parameters or {})}, timeout, notebook_timeout,
                       _resolve_isolation(isolation), seed_cache, hide, call_timeout, check_budget)
        try:
            error, alive = box.run_notebook()
            defined: set[str] = set()
            if alive and functions:
                try:
                    names = [f for f in functions.values() if f]
                    got = box.request("defined", names=names)
                    listed = got.get("names") if isinstance(got, dict) else None
                    defined = {n for n in listed if isinstance(n, str) and n in names} if isinstance(listed, list) \
                        else set()
                except SubmissionDied as e:
                    error, alive = error or str(e), False
            for exercise, fn in functions.items():
                if fn is None:
                    rows[exercise] = (False, f"cannot be graded: checks.check_{exercise} is not given a function name")
                elif not alive or fn not in defined:
                    rows[exercise] = (False, error or f"the function {fn} is not defined (cell deleted or not reached)")
                else:
                    rows[exercise] = _verify(exercise, RemoteFunction(box, fn))
                    if box.dead or box.proc.poll() is not None:
                        alive = False
                        error = error or "the submission's processes died while being checked"
        finally:
            box.close()
    out = [{"exercise": e, "passed": p, "message": m} for e, (p, m) in rows.items()]
    if error and not out:
        out.append({"exercise": "(notebook)", "passed": False, "message": error})
    return out


# ----------------------------------------------------------------------------------------------
# The worker (runs inside the sandbox, as its own process)
# ----------------------------------------------------------------------------------------------
KERNEL_HELPER = r'''
def __unlearn_autograde_install():
    import json, os, pickle
    user_ns = globals()

    def enc(x, depth=0):
        if depth > 32:
            return {"$": "repr", "text": "(nested too deeply)"}
        if x is None:
            return None
        if isinstance(x, bool):
            return bool(x)
        if isinstance(x, str):
            return str(x)
        if isinstance(x, int):
            return int(x)
        if isinstance(x, float):
            return float(x)
        top = (type(x).__module__ or "").split(".")[0]
        if top == "numpy":
            import numpy as np
            if isinstance(x, np.ndarray):
                return {"$": "ndarray", "dtype": str(x.dtype), "shape": list(x.shape), "data": x.ravel().tolist()}
            if isinstance(x, np.generic):
                return enc(x.item(), depth + 1)
        if top == "torch":
            import torch
            if isinstance(x, torch.Tensor):
                t = x.detach().cpu()
                return {"$": "tensor", "dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape),
                        "data": t.reshape(-1).tolist()}
        if isinstance(x, tuple):
            return {"$": "tuple", "items": [enc(v, depth + 1) for v in x]}
        if isinstance(x, list):
            return [enc(v, depth + 1) for v in x]
        if isinstance(x, (set, frozenset)):
            return {"$": "set", "items": [enc(v, depth + 1) for v in x]}
        if isinstance(x, dict):
            return {"$": "dict", "items": [[enc(k, depth + 1), enc(v, depth + 1)] for k, v in x.items()]}
        return {"$": "repr", "text": repr(x)[:200]}

    def run(request):
        try:
            if request["op"] == "defined":
                out = {"$": "defined", "names": [n for n in request["names"] if callable(user_ns.get(n))]}
            else:
                fn = user_ns.get(request["function"])
                if not callable(fn):
                    out = {"$": "missing"}
                else:
                    with open(request["args"], "rb") as f:
                        args, kwargs = pickle.load(f)
                    try:
                        out = enc(fn(*args, **kwargs))
                    except Exception as e:
                        out = {"$": "raise", "type": type(e).__name__, "message": str(e)[:500]}
            text = json.dumps(out)
        except Exception as e:
            text = json.dumps({"$": "raise", "type": type(e).__name__,
                               "message": ("the value could not be sent to the grader: " + str(e))[:500]})
        tmp = request["result"] + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, request["result"])

    return run

__unlearn_autograde__ = __unlearn_autograde_install()
del __unlearn_autograde_install
'''


def _die_with_parent():
    """The worker must not outlive the grader: ask Linux for SIGKILL when the parent dies."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getpid() != 1 and os.getppid() == 1:  # the grader is already gone (process mode)
        sys.exit(3)


def inject_parameters(nb, parameters: dict):
    """Papermill's convention: a cell tagged ``injected-parameters`` after the ``parameters`` cell (else first)."""
    cell = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in parameters.items()))
    cell.metadata["tags"] = ["injected-parameters"]
    at = next((i + 1 for i, c in enumerate(nb.cells) if "parameters" in _tags(c)), 0)
    nb.cells.insert(at, cell)
    return nb


def _worker(job_path: str) -> int:
    _die_with_parent()
    job = json.loads(Path(job_path).read_text())
    proto = os.fdopen(os.dup(1), "w", buffering=1)  # the channel to the grader; fd 1 now goes to the log
    os.dup2(2, 1)

    def send(**msg):
        proto.write(json.dumps(msg) + "\n")
        proto.flush()

    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    from traitlets.config import Config

    try:
        nb = inject_parameters(nbformat.read(job["notebook"], as_version=4), job["parameters"])
    except Exception as e:  # noqa: BLE001
        send(event="ran", error=f"notebook unreadable: {type(e).__name__}: {e}", alive=False)
        return 0
    cfg = Config()
    cfg.KernelManager.transport = "ipc"  # Unix sockets in the sandbox: no TCP port, works without a network
    cfg.KernelManager.ip = job["ipc"]
    client = NotebookClient(nb, timeout=job["cell_timeout"], kernel_name="python3", allow_errors=False,
                            startup_timeout=job["startup_timeout"], interrupt_on_timeout=False, config=cfg,
                            resources={"metadata": {"path": str(Path(job["notebook"]).parent)}})
    klog = open(job["kernel_log"], "ab")
    error, alive = None, True
    try:
        with client.setup_kernel(stdout=klog, stderr=klog):
            deadline = time.monotonic() + job["notebook_timeout"]
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                left = deadline - time.monotonic()
                client.timeout = int(max(1, min(job["cell_timeout"], left)))
                try:
                    if left <= 0:
                        raise CellTimeoutError("the notebook ran past its limit")
                    client.execute_cell(cell, index)
                except CellTimeoutError:
                    whole = client.timeout < job["cell_timeout"]
                    error = (f"notebook timed out: it ran past its limit of {job['notebook_timeout']:.0f} s" if whole
                             else f"notebook timed out: a cell ran past {job['cell_timeout']} s")
                    with contextlib.suppress(Exception):
                        client.km.interrupt_kernel()
                    break
                except DeadKernelError:
                    error, alive = "notebook crashed: its kernel died", False
                    break
                except CellExecutionError as e:
                    error = f"notebook crashed: {e.ename}: {e.evalue}"
                    break
            if alive:
                helper = nbformat.v4.new_code_cell(KERNEL_HELPER)
                nb.cells.append(helper)
                client.timeout = 60
                try:
                    client.execute_cell(helper, len(nb.cells) - 1, store_history=False)
                except (CellTimeoutError, DeadKernelError, CellExecutionError) as e:
                    error, alive = error or f"the notebook's kernel did not answer ({type(e).__name__})", False
            send(event="ran", error=error, alive=alive)
            if alive:
                _serve(client, nb, send, CellExecutionError, CellTimeoutError, DeadKernelError)
    except Exception as e:  # noqa: BLE001 - e.g. the kernel never started
        send(event="ran", error=f"the notebook's kernel failed: {type(e).__name__}: {e}"[:300], alive=False)
    return 0


def _serve(client, nb, send, CellExecutionError, CellTimeoutError, DeadKernelError):
    """Answer the grader's requests: each one runs as a cell in the kernel (the helper writes the result file)."""
    cell = nbformat.v4.new_code_cell("")
    nb.cells.append(cell)
    for line in sys.stdin:
        try:
            req = json.loads(line)
            if req.get("op") == "quit":
                return
            call = {k: req[k] for k in ("op", "result", "function", "args", "names") if k in req}
            n, client.timeout = req["id"], int(req.get("timeout", CALL_TIMEOUT))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        cell.source, cell.outputs = f"__unlearn_autograde__({call!r})", []
        try:
            client.execute_cell(cell, len(nb.cells) - 1, store_history=False)
            send(id=n, status="ok")
        except CellTimeoutError:
            send(id=n, status="timeout")
            return
        except DeadKernelError:
            send(id=n, status="dead")
            return
        except CellExecutionError:
            send(id=n, status="error")


# ----------------------------------------------------------------------------------------------
# A folder of submissions
# ----------------------------------------------------------------------------------------------
def student_of(path: Path, root: Path) -> str:
    rel = path.relative_to(root)
    return rel.parts[0] if len(rel.parts) > 1 else path.stem


def _cell(value) -> str:
    """A CSV cell that a spreadsheet will not run as a formula."""
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _write_rows(out: Path, rows: list[dict]) -> None:
    """Replace ``out`` by all the rows, atomically and durably (a kill at any moment leaves the old or new file)."""
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            w.writeheader()
            w.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_rows(out: Path) -> list[dict]:
    """The complete rows of an earlier run's CSV (a damaged or foreign file gives none)."""
    try:
        with open(out, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames != FIELDS:
                return []
            return [{k: r[k] for k in FIELDS} for r in reader if all(isinstance(r.get(k), str) for k in FIELDS)]
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


def grade_folder(folder: str | Path, out: str | Path = "grades.csv", timeout: int = 600, *,
                 notebook_timeout: float = DEFAULT_NOTEBOOK_TIMEOUT, resume: bool = True, isolation: str = "auto",
                 seed_cache: str | Path | None = None, parameters: dict | None = None) -> Path:
    """Grade every notebook below ``folder``; write the long CSV at ``out`` (after every notebook) and a wide one beside
    it (at the end). With ``resume`` an existing ``out`` is kept and its notebooks are not graded again."""
    from tqdm.auto import tqdm

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"Submission folder {root} does not exist.")
    subs = sorted(p for p in root.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    if not subs:
        raise FileNotFoundError(f"No .ipynb files found below {root}.")
    isolation = _resolve_isolation(isolation)
    clean_stale_sandboxes()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = _read_rows(out) if resume and out.exists() else []
    done = {(r["student"], r["notebook"]) for r in rows}
    if done:
        print(f"resuming: {len(done)} notebooks already graded in {out} (resume=False / --fresh grades them again)")
    _write_rows(out, rows)  # exists from now on (and is covered in the sandbox)
    wide_path = out.with_name(out.stem + "_wide.csv")
    from .cache import cache_dir

    hide = [root, cache_dir(), out, wide_path]
    for path in tqdm(subs, desc="grading"):
        student, notebook = _cell(student_of(path, root)), _cell(path.stem)
        if (student, notebook) in done:
            continue
        try:
            graded = grade_notebook(path, timeout, parameters, notebook_timeout=notebook_timeout,
                                    isolation=isolation, seed_cache=seed_cache, hide=hide)
        except Exception as e:  # noqa: BLE001 - the grader's own trouble (disk full, ...): recorded, not fatal
            why = f"grading failed: {type(e).__name__}: {e}"[:300]
            graded = [{"exercise": x, "passed": False, "message": why} for x in expected_exercises(path.name)] \
                or [{"exercise": "(notebook)", "passed": False, "message": why}]
        rows += [{"student": student, "notebook": notebook, "exercise": _cell(r["exercise"]),
                  "passed": bool(r["passed"]), "message": _cell(r["message"])} for r in graded]
        _write_rows(out, rows)  # from memory: also drops anything a submission appended to the file
    import pandas as pd

    df = pd.DataFrame(rows)
    if not df.empty:
        df["passed"] = df["passed"].astype(str) == "True"
        wide = df.assign(col=df["notebook"] + ":" + df["exercise"]).pivot_table(
            index="student", columns="col", values="passed", aggfunc="last").replace({True: "pass", False: "fail"})
        wide.to_csv(wide_path)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:  # internal: the sandboxed side of one submission
        return _worker(argv[1])
    ap = argparse.ArgumentParser(description="Autograde submitted notebooks in a sandbox (smoke mode).")
    ap.add_argument("folder", help="folder of submitted notebooks (one sub-folder per student, or flat)")
    ap.add_argument("--out", default="grades.csv")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per cell before a notebook counts as timed out")
    ap.add_argument("--notebook-timeout", type=float, default=DEFAULT_NOTEBOOK_TIMEOUT,
                    help="seconds for a whole notebook (wall clock, kernel start-up not counted)")
    ap.add_argument("--isolation", choices=_ISOLATIONS, default="auto",
                    help="namespace: Linux user/mount/PID/network namespaces; process: own processes and folder "
                         "only; auto: namespace where this machine allows it")
    ap.add_argument("--seed-cache", default=None,
                    help="a model cache copied into every submission's private cache (saves rebuilding smoke models)")
    ap.add_argument("--fresh", action="store_true", help="grade everything again instead of resuming --out")
    args = ap.parse_args(argv)
    path = grade_folder(args.folder, args.out, args.timeout, notebook_timeout=args.notebook_timeout,
                        resume=not args.fresh, isolation=args.isolation, seed_cache=args.seed_cache)
    print(f"wrote {path} and {path.with_name(path.stem + '_wide.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
