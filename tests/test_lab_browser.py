"""The what-if lab as a student meets it: notebook 06 (smoke) in JupyterLab, driven in headless Chromium.

JupyterLab is started on 127.0.0.1 with a token; Playwright drives the system Chromium (no browser download). The
test runs every cell, checks that the lab rendered as controls, types a learning rate, changes the method and the
steps, double-clicks Run and checks that exactly one run was made, the bar reached "done", the plot, the verdicts and
the history were redrawn; then it starts a run on a kernel thread of its own (as ipykernel may run callbacks), checks
that the page shows the lab busy and that a click meanwhile is refused; and that the console had no errors.
Screenshots go to ``reports/browser/``.

Without Chromium (``/usr/bin/chromium``, or ``$UNLEARN_KIT_CHROMIUM``) or Playwright the test is skipped, saying how to
run it; ``.ci/run`` installs Chromium so CI always runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "reports" / "browser"
HOW = ("install Chromium (Debian: `apt-get install chromium`, or set UNLEARN_KIT_CHROMIUM to a Chromium binary) "
       "and run `python -m pytest tests/test_lab_browser.py`; `.ci/run` installs it")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"]

# Run a piece of Python in the notebook's kernel (from the page, as JupyterLab's own console would) and return its
# printed output; an exception comes back as "ERROR name: message".
IN_KERNEL = """async (code) => {
  const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  let out = "";
  const future = kernel.requestExecute({code, store_history: false});
  future.onIOPub = (msg) => {
    if (msg.header.msg_type === "stream" && msg.content.name === "stdout") out += msg.content.text;
    if (msg.header.msg_type === "error") out += "ERROR " + msg.content.ename + ": " + msg.content.evalue;
  };
  await future.done;
  return out;
}"""

NOTEBOOK_STATE = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  if (!panel || !panel.content || !panel.sessionContext.session) return null;
  const cells = panel.content.widgets.filter((c) => c.model.type === "code");
  const errors = [];
  for (const c of cells)
    for (const o of c.model.outputs.toJSON()) if (o.output_type === "error") errors.push(o.ename + ": " + o.evalue);
  return {status: panel.sessionContext.session.kernel ? panel.sessionContext.session.kernel.status : "none",
          executed: cells.filter((c) => c.model.executionCount !== null).length, cells: cells.length, errors};
}"""


def chromium() -> str | None:
    path = os.environ.get("UNLEARN_KIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    return path if path and Path(path).exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path, cache):
    """JupyterLab serving a smoke copy of notebook 06 from ``tmp_path``; yields (url, notebook name)."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = load_notebook_node(str(ROOT / "notebooks" / "06_what_if_lab.ipynb"))

    nb = parameterize_notebook(nb, {"SMOKE": True, "REPORT_DIR": str(tmp_path / "report")})
    name = "06_what_if_lab.ipynb"
    nbformat.write(nb, tmp_path / name)
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)  # no news or update notices (they would ask the closed network)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false",
                                                                           "checkForUpdates": False}))
    port, token = free_port(), "unlearn-kit-browser-test"
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
           "UNLEARN_KIT_CACHE": str(cache)}
    env.pop("MPLBACKEND", None)  # the tests' Agg would reach the kernel: a student's kernel draws inline
    log = open(tmp_path / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}", "--LabApp.expose_app_in_browser=True",
         "--LabApp.news_url=", "--LabApp.extension_manager=readonly"]  # no PyPI lookups from the extension manager
        + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),  # CI runs as root
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError("JupyterLab did not start:\n" + (tmp_path / "jupyterlab.log").read_text())
                time.sleep(0.5)
        yield f"{url}/lab/tree/{name}?token={token}", tmp_path
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def wait_for(check, timeout: float, what: str, every: float = 0.5):
    deadline = time.time() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


@pytest.mark.notebook
def test_the_lab_in_jupyterlab_in_a_real_browser(jupyterlab):
    browser_path = chromium()
    if browser_path is None:
        pytest.skip(f"browser test of the lab skipped: no Chromium on this machine; to run it, {HOW}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(f"browser test of the lab skipped: Playwright is not installed (pip install playwright); {HOW}")
    url, folder = jupyterlab
    SHOTS.mkdir(parents=True, exist_ok=True)
    console_errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: console_errors.append(f"page error: {e}"))
        page.goto(url)
        state = lambda: page.evaluate(NOTEBOOK_STATE)  # noqa: E731
        wait_for(lambda: (state() or {}).get("status") == "idle", 180, "the notebook's kernel to start")

        def kernel(code: str) -> str:
            out = page.evaluate(IN_KERNEL, code)
            assert not out.startswith("ERROR"), out
            return out.strip()

        # Run All, as a student would from the Run menu
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        done = wait_for(lambda: (s := state()) and s["status"] == "idle" and s["executed"] == s["cells"] and s,
                        900, "every cell to run", every=2)
        assert not done["errors"], f"cells raised: {done['errors']}"

        lab = page.locator(".lab-widget")
        lab.scroll_into_view_if_needed()
        (SHOTS / "lab_rendered.html").write_text(lab.inner_html())  # what rendered, to read when a check fails
        assert lab.locator("select").count() >= 4, "the dropdowns rendered as controls"
        assert lab.locator("button.lab-run-button").count() == 1
        runs_before = int(kernel("print(len(lab.history))"))
        assert runs_before == 2, "the notebook's own two lab runs are in the history"
        assert lab.locator(".lab-history tbody tr").count() == runs_before
        plot_before = lab.locator(".lab-plot img").last.get_attribute("src")

        # the learning rate holds the value typed (a log slider snapped 3e-4 to 3.16e-4 and wrote it back)
        lr_box = lab.locator(".lab-lr input")
        lr_box.fill("3e-4")
        lr_box.press("Enter")
        lab.locator(".lab-method select").select_option("npo_gd")
        steps_readout = lab.locator(".lab-steps .widget-readout")
        steps_readout.click()
        page.keyboard.press("Control+A")
        page.keyboard.type("12")
        page.keyboard.press("Enter")
        wait_for(lambda: kernel("s = lab.settings(); print(s.method, s.steps, repr(s.lr))") == "npo_gd 12 0.0003",
                 20, "the kernel to see the method, steps and learning rate set in the browser")

        # a double click: one run (this kernel handles the second click after the first click's run: refused)
        lab.locator("button.lab-run-button").first.dblclick()
        wait_for(lambda: int(kernel("print(len(lab.history))")) > runs_before, 300, "the run to finish", every=1)
        wait_for(lambda: lab.locator(".lab-progress").inner_text().strip().startswith("done"), 20,
                 "the progress bar to say done")
        time.sleep(1.0)  # a queued second click, if one was queued, arrives now
        assert int(kernel("print(len(lab.history))")) == runs_before + 1, "exactly one run for a double click"
        assert int(kernel("print(lab.refused_clicks)")) == 1, "the double click's second click was refused"
        assert kernel("print(lab.last['settings'].method, lab.last['settings'].steps)") == "npo_gd 12"
        wait_for(lambda: lab.locator(".lab-history tbody tr").count() == runs_before + 1, 20,
                 "the history table to gain a row")
        assert lab.locator(".lab-plot img").last.get_attribute("src") != plot_before, "the trajectory was redrawn"
        assert "Audit" in lab.locator(".lab-verdicts").inner_text(), "the audit's verdicts were shown"
        page.screenshot(path=str(SHOTS / "lab_after_run.png"))
        lab.screenshot(path=str(SHOTS / "lab_widget.png"))

        # a run on a kernel thread of its own (as ipykernel runs some callbacks): the page shows it busy, and a click
        # that arrives meanwhile is refused instead of starting a second run on the same lab
        kernel("import threading; lab.set(steps=14); worker = threading.Thread(target=lab.run); worker.start()")
        wait_for(lambda: "busy" in lab.locator(".lab-status").inner_text(), 60, "the page to show the lab busy")
        assert lab.locator("button.lab-run-button").first.is_disabled()
        page.screenshot(path=str(SHOTS / "lab_during_run.png"))
        assert kernel("lab.run_button.click(); print(lab.busy, lab.refused_clicks)") == "True 2"
        assert kernel("worker.join(300); print(worker.is_alive(), len(lab.history))") == f"False {runs_before + 2}"
        wait_for(lambda: "idle" in lab.locator(".lab-status").inner_text(), 20, "the lab to say idle")
        assert lab.locator(".lab-progress progress, .lab-progress .progress-bar").count() >= 1
        browser.close()
    assert not console_errors, f"the browser console had errors: {console_errors}"
