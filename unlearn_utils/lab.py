"""The what-if lab: choose an unlearning run with widgets, watch it train, then audit it.

All logic is here, so it can be tested without a browser: :class:`WhatIfLab` holds the widgets, and its
callbacks (:meth:`WhatIfLab.run`, bound to the Run button) read the widgets into :class:`LabSettings`, unlearn with
:func:`unlearn_utils.unlearning.unlearn` while the forget / retain trajectory is redrawn live, then run the chosen
probes of :func:`unlearn_utils.audit.audit` and show their verdict lines. Every run is kept in ``lab.history``.
Given the world model's cache key, a run with settings already trained (here or in notebook 01) is loaded from the
cache with its trajectory instead of being trained again.

One run at a time: with ipykernel 7 a button's callback runs on a kernel thread of its own, so a click and a cell
calling :meth:`WhatIfLab.run` could train at once. A click while a run is in progress (or the second click of a
double click) is refused with a message; a call from a cell waits for the run in progress, and says so. The lab's
status line says what it is doing, since the kernel's indicator reads "Idle" while a button's run trains.
"""

from __future__ import annotations

import dataclasses
import html
import threading
import time
from dataclasses import dataclass

import pandas as pd

from .audit import PROBES, AuditConfig, audit
from .evaluate import eval_data, eval_data_from, trajectory_metrics

ATTACKS = {
    "quantization": ("quantization",),
    "relearning (RTT)": ("relearning",),
    "quantization + relearning": ("quantization", "relearning"),
    "every probe": tuple(PROBES),
    "none": (),
}

# A click that arrives this soon after a click's run ended is the tail of a double click (a kernel that handles
# callbacks one after another queues it during the run), not a new request.
DOUBLE_CLICK_SECONDS = 0.5


def round_lr(lr: float) -> float:
    """A learning rate as a person writes it (4 significant digits): a value typed in the browser, which reaches the
    kernel through JavaScript's number formatting, gives the same run (and cache entry) as the same value in code."""
    return float(f"{float(lr):.4g}")


@dataclass
class LabSettings:
    """One what-if run: what to forget, how, and which attack to try afterwards."""

    split: str = "forget05"
    method: str = "grad_diff"
    lr: float = 3e-4
    steps: int = 200
    lora: bool = False
    bits: int = 4
    attack: str = "quantization + relearning"
    eval_every: int = 20

    def check(self) -> None:
        from .unlearning import METHODS

        if self.method not in METHODS:
            raise ValueError(f"Unknown method {self.method!r}: choose one of {list(METHODS)}.")
        if not self.lr > 0:
            raise ValueError(f"The learning rate must be positive, got {self.lr}.")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}.")
        if self.bits not in (3, 4, 8):
            raise ValueError(f"bits must be 3, 4 or 8, got {self.bits}.")
        if self.attack not in ATTACKS:
            raise ValueError(f"Unknown attack {self.attack!r}: choose one of {list(ATTACKS)}.")


class WhatIfLab:
    """Widgets + callbacks. ``lab.widget`` is what a notebook displays; ``lab.run()`` is what the button does.

    model / tokenizer / world: the original world model and its world (the lab copies the model for each run).
    retain_model: a callable (split -> model) or None: the floor for the audit's verdicts.
    model_key: the world model's cache key (``S.config.key()``): runs are then cached on disk like notebook 01's,
    and a run whose settings were trained before is loaded (its trajectory drawn at once). None: always train.
    data: forget / retain questions from a file (``S.data``, see :func:`unlearn_utils.benchmark_data.load_data`)
    to use instead of the world's splits; the split control is then disabled.
    """

    def __init__(self, model, tokenizer, world, retain_model=None, max_retain_people: int | None = 40,
                 defaults: LabSettings | None = None, model_key: str | None = None, data: dict | None = None):
        import ipywidgets as w

        from .unlearning import METHODS

        self.model, self.tokenizer, self.world = model, tokenizer, world
        self.retain_model = retain_model
        self.max_retain_people = max_retain_people
        self.model_key = model_key
        self.data = data
        self.history: list[dict] = []
        self.last = None
        d = defaults or LabSettings()
        style = {"description_width": "110px"}
        self.split = w.Dropdown(options=["forget01", "forget05", "forget10"], value=d.split, description="forget split",
                                style=style, disabled=data is not None)
        self.method = w.Dropdown(options=list(METHODS), value=d.method, description="method", style=style)
        # a text box holds exactly the value typed (3e-4 stays 3e-4; a log slider snaps it to its grid)
        self.lr = w.BoundedFloatText(value=d.lr, min=1e-7, max=1e-1, step=None, description="learning rate",
                                     style=style, layout=w.Layout(width="260px"))
        self.steps = w.IntSlider(value=d.steps, min=1, max=800, step=1, description="steps", style=style)
        self.lora = w.ToggleButtons(options=[("full weights", False), ("LoRA", True)], value=d.lora,
                                    description="train", style=style)
        self.bits = w.Dropdown(options=[8, 4, 3], value=d.bits, description="quantize to", style=style)
        self.attack = w.Dropdown(options=list(ATTACKS), value=d.attack, description="then try", style=style)
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.progress = w.IntProgress(value=0, min=0, max=d.steps, description="idle", style=style)
        self.status = w.HTML("idle")
        self.plot = w.Output()
        self.verdicts = w.HTML()
        self.table = w.HTML()
        self.eval_every = d.eval_every
        self.refused_clicks = 0
        self._lock = threading.Lock()
        self._click_ended = float("-inf")
        self._owner: int | None = None  # the thread whose run holds the lab
        self.run_button.on_click(self._on_click)
        controls = w.VBox([self.split, self.method, self.lr, self.steps, self.lora, self.bits, self.attack,
                           w.HBox([self.run_button, self.progress]), self.status])
        self.widget = w.VBox([w.HBox([controls, self.plot]), self.verdicts, self.table])
        for name in ("widget", "method", "lr", "steps", "run_button", "progress", "status", "plot", "verdicts",
                     "table"):
            getattr(self, name).add_class(f"lab-{name.replace('_', '-')}")  # stable names for the browser test

    # ---- reading the widgets ------------------------------------------------------------------------
    def settings(self) -> LabSettings:
        """The widgets' current values as :class:`LabSettings` (checked)."""
        s = LabSettings(split=self.split.value, method=self.method.value, lr=round_lr(self.lr.value),
                        steps=int(self.steps.value), lora=bool(self.lora.value), bits=int(self.bits.value),
                        attack=self.attack.value, eval_every=self.eval_every)
        s.check()
        return s

    def set(self, **values) -> None:
        """Set widgets by name (``lab.set(method="npo_gd", steps=100)``), as a learner would by hand."""
        for name, value in values.items():
            widget = getattr(self, name, None)
            if widget is None or not hasattr(widget, "value"):
                raise KeyError(f"The lab has no control {name!r}.")
            widget.value = value

    # ---- the callbacks -----------------------------------------------------------------------------
    def _draw(self, log: list[dict], steps: int) -> None:
        import matplotlib.pyplot as plt
        from IPython.display import display

        from .plotting import curves

        df = pd.DataFrame(log)
        fig = curves({"forget accuracy": (df.step, df.forget_accuracy),
                      "retain accuracy": (df.step, df.retain_accuracy)},
                     title="while unlearning", xlabel="step", ylabel="accuracy", ylim=(-0.03, 1.03))
        fig.axes[0].set_xlim(-steps * 0.02, steps * 1.02)
        with self.plot:
            self.plot.clear_output(wait=True)
            display(fig)
        plt.close(fig)

    @property
    def busy(self) -> bool:
        """True while a run trains or audits."""
        return self._lock.locked()

    def _on_click(self, _button) -> None:
        """The Run button: one run at a time. A click during a run, or the second click of a double click, is refused
        and counted (``refused_clicks``); a failure is shown in the verdict panel (a callback's traceback would go
        to JupyterLab's hidden log console)."""
        if not self._lock.acquire(blocking=False):
            self._refuse("a run is in progress")
            return
        try:
            if time.monotonic() - self._click_ended < DOUBLE_CLICK_SECONDS:
                self._refuse("it came with the click before (a double click)")
                return
            try:
                self._run(self._checked(None))
            except Exception:  # noqa: BLE001 - shown in the verdict panel by _checked / _run
                pass
        finally:
            self._click_ended = time.monotonic()
            self._lock.release()

    def _refuse(self, why: str) -> None:
        self.refused_clicks += 1
        self.status.value = (f"<span style='color:#b00'>Click ignored: {why}; one run at a time "
                             f"({self.refused_clicks} ignored so far).</span>")

    def _checked(self, settings: LabSettings | None) -> LabSettings:
        try:
            s = settings or self.settings()
            s.check()
        except Exception as e:
            self.verdicts.value = f"<b style='color:#b00'>Cannot run: {html.escape(str(e))}</b>"
            raise
        return s

    def run(self, settings: LabSettings | None = None) -> dict:
        """Unlearn with the chosen settings (trajectory drawn live), audit the result, show and return the run.

        A failure (bad settings, a crash in training) is shown in the verdict panel and raised; earlier runs in
        ``history`` are kept. While another run is in progress (a button's, on its own thread), this call waits for it.
        """
        s = self._checked(settings)
        if not self._lock.acquire(blocking=False):
            if self._owner == threading.get_ident():  # called from inside a run (a callback): waiting would hang
                raise RuntimeError("A run of this lab is in progress on this thread: call lab.run() after it ends.")
            self.status.value = "waiting for the run in progress to finish"
            self._lock.acquire()
        try:
            return self._run(s)
        finally:
            self._lock.release()

    def _run(self, s: LabSettings) -> dict:
        self._owner = threading.get_ident()
        try:
            return self._run_owned(s)
        finally:
            self._owner = None

    def _run_owned(self, s: LabSettings) -> dict:
        self.run_button.disabled = True
        self.run_button.description = "Running"
        self.status.value = f"<b>busy</b>: unlearning with {s.method}, {s.steps} steps"
        self.progress.max, self.progress.value, self.progress.description = s.steps, 0, "unlearning"
        self.verdicts.value = ""
        if self.data is None:
            data = eval_data(self.world, s.split, max_retain_people=self.max_retain_people)
        else:
            data = eval_data_from(self.data)
        metrics = trajectory_metrics(self.tokenizer, data, topics=True)  # notebook 01's trajectory
        every = min(s.eval_every, s.steps)
        log: list[dict] = []

        def eval_fn(m):
            step = min(len(log) * every, s.steps)  # evaluated every eval_every steps and after the last
            row = {"step": step, **metrics(m)}
            log.append(row)
            self.progress.value = min(row["step"], s.steps)
            self._draw(log, s.steps)
            return row

        start = time.time()
        try:
            from .unlearning import cached_unlearn

            retain_note = "" if self.max_retain_people == 40 else f"-retain{self.max_retain_people}"
            unlearned, trajectory = cached_unlearn(
                self.model, self.tokenizer, self.world, s.split, s.method, model_key=self.model_key, eval_fn=eval_fn,
                eval_every=every, log_name=f"topics{retain_note}-every{every}", lr=s.lr, steps=s.steps, lora=s.lora,
                data=self.data, progress=False)  # the lab's own bar: a tqdm bar from a callback lands in a hidden log
            cached = trajectory.attrs["cached"]
            if cached:  # loaded: nothing was evaluated live, draw the cached trajectory
                log = trajectory.dropna(subset=["forget_accuracy"]).drop(columns=["loss", "lr"], errors="ignore")
                log = log.to_dict(orient="records")
                self._draw(log, s.steps)
            unlearned.eval()
            train_seconds = trajectory.attrs["seconds"] if cached else time.time() - start
            self.progress.value, self.progress.description = s.steps, "auditing"
            report = None
            probes = ATTACKS[s.attack]
            if probes:
                self.status.value = f"<b>busy</b>: auditing ({', '.join(probes)})"
                retain_model = self.retain_model(s.split) if callable(self.retain_model) else self.retain_model
                report = audit(self.model, unlearned, self.tokenizer, self.world if self.data is None else self.data,
                               split=s.split,
                               retain_model=retain_model, config=AuditConfig(probes=probes, bits=(s.bits,)),
                               progress=False)  # the status line says what runs; no bar in a hidden log
        except Exception as e:
            self.verdicts.value = f"<b style='color:#b00'>The run failed: {type(e).__name__}: {html.escape(str(e))}</b>"
            self.progress.description = "failed"
            self.status.value = "idle (the last run failed)"
            raise
        finally:
            self.run_button.disabled = False
            self.run_button.description = "Run"
        final = log[-1] if log else {}
        record = {**dataclasses.asdict(s), "forget_accuracy": final.get("forget_accuracy"),
                  "retain_accuracy": final.get("retain_accuracy"), "train_seconds": round(train_seconds, 1),
                  "cached": cached}
        if report is not None:
            for r in report.verdicts.itertuples():
                record[f"{r.probe} {r.setting}: back"] = r.share_back
        self.history.append(record)
        self.last = {"settings": s, "model": unlearned, "trajectory": pd.DataFrame(log), "audit": report,
                     "record": record}
        self.progress.description = "done"
        self._show(report)
        how = "loaded from the cache" if cached else f"trained in {train_seconds:.0f} s"
        self.status.value = f"idle: run {len(self.history)} done ({how})"
        return self.last

    def run_each(self, **settings) -> list[dict]:
        """Several runs, as a learner would make them by hand: for each run, :meth:`set` the widgets, then
        :meth:`run` (what the button does). A list (or tuple) setting gives one value per run, taken in step with the
        other lists as ``zip`` does (the shortest list decides the number of runs); a single value applies to every
        run. ``lab.run_each(method=["grad_diff", "npo_gd"], lora=[False, True], steps=100)`` makes two runs. Returns
        each run's :attr:`last`."""
        per_run = {name: value for name, value in settings.items() if isinstance(value, (list, tuple))}
        n_runs = min(len(values) for values in per_run.values()) if per_run else 1
        runs = []
        for i in range(n_runs):
            self.set(**{name: per_run[name][i] if name in per_run else value for name, value in settings.items()})
            runs.append(self.run())
        return runs

    def _show(self, report) -> None:
        lines = [f"<li>{html.escape(line)}</li>" for line in (report.lines() if report is not None else [])]
        self.verdicts.value = ("<b>Audit</b><ul>" + "".join(lines) + "</ul>") if lines else "<i>no attack chosen</i>"
        self.table.value = history_html(self.history_table())

    def history_table(self) -> pd.DataFrame:
        """Every run of this session, one row each: settings, final forget / retain accuracy, what came back."""
        return pd.DataFrame(self.history)


def history_html(table: pd.DataFrame) -> str:
    """The history as a page shows it: short headers that wrap, numbers for people (shares in %, the learning rate
    as 3e-04), and a box that scrolls sideways instead of overflowing the page."""
    if table.empty:
        return ""
    view = table.drop(columns=["eval_every"], errors="ignore").rename(
        columns=lambda c: c.replace("_accuracy", " acc").replace(": back", " back").replace("_", " "))
    formats = {}
    for col in view.columns:
        if col == "lr":
            formats[col] = "{:.0e}".format
        elif col.endswith(" back") or col.endswith(" acc"):
            formats[col] = lambda v: "n/a" if pd.isna(v) else f"{v:.0%}"
    body = view.to_html(index=True, formatters=formats, na_rep="n/a", border=0, classes="lab-history")
    style = ("<style>.lab-history{border-collapse:collapse;font-size:12px}"
             ".lab-history th{white-space:normal;max-width:7em;vertical-align:bottom;text-align:right;padding:2px 6px}"
             ".lab-history td{text-align:right;white-space:nowrap;padding:2px 6px}</style>")
    return f"{style}<div style='overflow-x:auto;max-width:100%'>{body}</div>"
