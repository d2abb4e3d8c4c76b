"""Helpers for the real-browser tests: a JupyterLab server handle, notebooks, runs, screenshots.

Imported by test modules (``from browser_helpers import ...``) and by ``conftest.py``; a plain
module rather than conftest so that its name does not clash with ``tests/conftest.py``.

Writing a test for a new panel::

    from browser_helpers import panel_output, run_notebook_in_lab, screenshot, write_notebook
    from playwright.sync_api import expect

    @pytest.mark.browser
    def test_eval_panel(lab, page):
        nb = write_notebook(lab, "eval_panel", [SETUP_CODE, "s.evaluate(...)"])
        run_notebook_in_lab(page, nb)                       # Run All Cells, waits until done
        panel = panel_output(page, ".widget-tab")          # the output holding the panel
        expect(panel.locator(".js-plotly-plot")).to_be_visible()
        screenshot(page, "eval_panel", panel)              # test-artifacts/screenshots/
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import time
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
CHROMIUM = os.environ.get("WORKBENCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",  # CI runs as root in a container
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    # With the page's request filter: no host name resolves except loopback.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
]
# Bounds in seconds. On two slow cores the kernel needs ~10 s to import torch + transformers.
SERVER_START_TIMEOUT = 60
PAGE_LOAD_TIMEOUT = 60
RUN_TIMEOUT = 120
WIDGET_TIMEOUT = 30
KERNEL_START_TIMEOUT = 120
RUN_ALL_CLICK_TIMEOUT = 10
# Dialogs JupyterLab itself opens while a notebook's kernel starts (see answer_kernel_dialogs).
KERNEL_START_DIALOGS = ("Kernel Restarting", "Error Starting Kernel", "Select Kernel")
KERNEL = "python3"  # the kernel spec of the notebooks written here

# The visible notebook (JupyterLab hides inactive panels with lm-mod-hidden).
NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden)"


@dataclass
class Lab:
    """A running ``jupyter lab``: loopback port, token, root folder (for notebooks), log.

    ``home`` holds its isolated settings and state; kernel specs written under ``kernels``
    are offered by the server (its ``JUPYTER_PATH`` starts there).
    """

    port: int
    token: str
    root: Path
    home: Path
    log: Path
    process: subprocess.Popen = field(repr=False)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def kernels(self) -> Path:
        return self.home / "data" / "kernels"

    def url(self, path: str) -> str:
        """``path`` on the server with the token, e.g. ``lab.url("lab/tree/x.ipynb")``."""
        sep = "&" if "?" in path else "?"
        return f"{self.base}/{path.lstrip('/')}{sep}token={self.token}"

    def api(self, path: str, method: str = "GET", timeout: float = 5) -> Any:
        """Call the server's REST API; the decoded JSON, or ``None`` for an empty body."""
        request = urllib.request.Request(
            f"{self.base}/api/{path.lstrip('/')}",
            method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's log (kernel tracebacks land here too)."""
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:]
        return ""


def stop_process_tree(process: subprocess.Popen, timeout: float = 15) -> None:
    """Stop ``process``'s group, then any of its descendants left (kernels start new sessions)."""
    import psutil

    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        children = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)
    _, alive = psutil.wait_procs(children, timeout=5)
    for child in alive:  # only processes this server started, by pid
        with contextlib.suppress(psutil.Error):
            child.kill()


def write_notebook(lab: Lab, name: str, cells: list[str]) -> Path:
    """Write code ``cells`` as ``<lab.root>/<name>.ipynb`` (python3 kernel); returns its path.

    The kernel's working directory is ``lab.root``, and the repository is on its
    ``PYTHONPATH``, so ``import workbench`` works without installing it.
    """
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": KERNEL,
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    path = lab.root / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


_ALL_CELLS_DONE = f"""
() => {{
  const panel = document.querySelector('{NOTEBOOK}');
  if (!panel) return false;
  const prompts = [...panel.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')];
  if (prompts.some(p => p.textContent.includes('[*]'))) return false;
  const stderr = [...panel.querySelectorAll(
    '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')];
  if (stderr.some(e => /Traceback|^\\s*\\w*(Error|Exception)\\b/m.test(e.textContent))) {{
    return true;  // a cell failed: the cells after it stay unrun
  }}
  return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
}}
"""

_STARTED = f"""
() => [...document.querySelectorAll('{NOTEBOOK} .jp-CodeCell .jp-InputArea-prompt')]
  .some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))
"""

_CELL_ERRORS = f"""
() => [...document.querySelectorAll(
    '{NOTEBOOK} .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
  .map(e => e.textContent)
  .filter(t => /Traceback|^\\s*\\w*(Error|Exception)\\b/m.test(t))
"""


def _idle_kernel(page):
    return page.locator(f'{NOTEBOOK} .jp-Notebook-ExecutionIndicator[data-status="idle"]')


def run_notebook_in_lab(
    page, notebook_path: Path | str, timeout: float = RUN_TIMEOUT, allow_errors: bool = False
) -> None:
    """Open ``notebook_path`` (under the lab root) in JupyterLab, run all cells, wait until done.

    ``open_notebook_in_lab``, then ``start_run_all``, then ``wait_for_all_cells``. ``page``
    comes from the ``page`` fixture (it knows its server as ``page.lab``).

    Raises:
        AssertionError: A cell raised (its traceback text is in the message), unless
            ``allow_errors``; or JupyterLab showed a dialog no user would expect.
        playwright.sync_api.TimeoutError: Not done within ``timeout`` seconds.
    """
    open_notebook_in_lab(page, notebook_path)
    start_run_all(page)
    wait_for_all_cells(page, timeout, allow_errors)


def open_notebook_in_lab(page, notebook_path: Path | str, kernel: bool = True) -> str:
    """Open ``notebook_path`` alone in a fresh workspace; its path relative to the lab root.

    With ``kernel``, returns once the notebook's kernel is idle (``wait_for_kernel``).
    """
    lab: Lab = page.lab
    relative = Path(notebook_path).resolve().relative_to(lab.root.resolve()).as_posix()
    # A fresh, reset workspace: only this notebook is open (lab remembers open tabs per
    # workspace on the server, across browser contexts).
    workspace = f"wb-{secrets.token_hex(4)}"
    page.goto(
        lab.url(f"lab/workspaces/{workspace}/tree/{quote(relative)}?reset"),
        timeout=PAGE_LOAD_TIMEOUT * 1000,
    )
    page.locator(f"{NOTEBOOK} .jp-Cell").first.wait_for(
        state="visible", timeout=PAGE_LOAD_TIMEOUT * 1000
    )
    if kernel:
        wait_for_kernel(page, relative)
    return relative


def wait_for_kernel(page, relative: str, timeout: float = KERNEL_START_TIMEOUT) -> None:
    """Wait until the kernel of notebook ``relative`` is idle, in the server and in the page.

    The page's execution indicator says "idle" before any kernel exists, so the server's
    session list is the proof. JupyterLab's own kernel-start dialogs are answered on the way
    (``answer_kernel_dialogs``).
    """
    lab: Lab = page.lab
    deadline = time.monotonic() + timeout
    while True:
        answer_kernel_dialogs(page)
        state = _server_kernel_state(lab, relative)
        if state == "idle" and _idle_kernel(page).count() == 1 and not _open_dialogs(page):
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the kernel of {relative} is not idle after {timeout:.0f} s (server says "
                f"{state!r}); server log:\n{lab.log_tail()}"
            )
        page.wait_for_timeout(250)


def _server_kernel_state(lab: Lab, relative: str) -> str | None:
    with contextlib.suppress(OSError, ValueError):
        for session in lab.api("sessions"):
            if session.get("path") == relative and session.get("kernel"):
                return session["kernel"].get("execution_state")
    return None


def answer_kernel_dialogs(page) -> list[str]:
    """Answer JupyterLab's kernel-start dialogs as a user would; the titles answered.

    A kernel that dies while it starts (for instance when another process takes the port it
    was given) brings "Kernel Restarting"; a session that cannot be created brings "Error
    Starting Kernel" and then "Select Kernel". A user clicks OK, or picks the notebook's
    Python kernel, and carries on: so do the tests (their notebooks use ``KERNEL``), with a
    warning that keeps the dialog's text in the test log. Any other dialog fails the test
    with its text.
    """
    answered = []
    drawing_until = time.monotonic() + 10
    while len(answered) < 5:
        dialogs = _open_dialogs(page)
        if not dialogs:
            break
        title, body = dialogs[0]
        if not title and time.monotonic() < drawing_until:
            # JupyterLab draws a string title with React, after the body is in the page.
            page.wait_for_timeout(100)
            continue
        if title not in KERNEL_START_DIALOGS:
            raise AssertionError(f"JupyterLab shows a dialog {title!r}: {body[:2000]}")
        warnings.warn(
            f"JupyterLab showed {title!r} ({body[:500]}); answered it as a user would",
            stacklevel=2,
        )
        dialog = page.locator(".jp-Dialog").first
        if title == "Select Kernel":
            dialog.locator("select").select_option(
                value=json.dumps({"name": KERNEL}, separators=(",", ":"))  # JSON.stringify
            )
        dialog.locator(".jp-Dialog-button.jp-mod-accept").click(timeout=WIDGET_TIMEOUT * 1000)
        with contextlib.suppress(Exception):  # the next dialog may reuse the element
            dialog.wait_for(state="detached", timeout=5000)
        answered.append(title)
    return answered


def _open_dialogs(page) -> list[tuple[str, str]]:
    """(title, body text) of each dialog open in the page."""
    return [
        (title.strip(), " ".join(body.split()))
        for title, body in page.evaluate(
            """() => [...document.querySelectorAll('.jp-Dialog')].map(d => [
              d.querySelector('.jp-Dialog-header')?.textContent || '',
              d.querySelector('.jp-Dialog-body')?.textContent || ''])"""
        )
    ]


def start_run_all(page, attempts: int = 3) -> None:
    """Run All Cells in the open notebook; returns once a cell has started.

    Answers kernel-start dialogs first (``answer_kernel_dialogs``). A lost click or shortcut
    (focus elsewhere) would wait forever, so each try that starts no cell within 15 s is
    followed by another, through the Run menu.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    for attempt in range(attempts):
        answer_kernel_dialogs(page)
        with contextlib.suppress(PlaywrightTimeoutError):
            _run_all_cells(page, use_menu=attempt > 0)
            page.wait_for_function(_STARTED, timeout=15_000, polling=250)
            return
    raise AssertionError(
        f"Run All Cells did not start any cell ({attempts} tries); dialogs open: "
        f"{_open_dialogs(page)}"
    )


def wait_for_all_cells(page, timeout: float = RUN_TIMEOUT, allow_errors: bool = False) -> None:
    """Wait until every code cell shows an execution count and the kernel is idle again.

    Raises:
        AssertionError: A cell raised (its traceback text is in the message), unless
            ``allow_errors``.
    """
    from playwright.sync_api import expect

    page.wait_for_function(_ALL_CELLS_DONE, timeout=timeout * 1000, polling=250)
    expect(_idle_kernel(page)).to_have_count(1, timeout=timeout * 1000)
    failures = page.evaluate(_CELL_ERRORS)
    if failures and not allow_errors:
        raise AssertionError("a notebook cell raised:\n" + "\n---\n".join(failures))


def _run_all_cells(page, use_menu: bool = False) -> None:
    """Run All Cells through the command palette (Ctrl+Shift+C), else through the Run menu."""
    page.locator(f"{NOTEBOOK} .jp-Cell").first.click(timeout=RUN_ALL_CLICK_TIMEOUT * 1000)
    page.keyboard.press("Escape")  # command mode: keys go to the app, not the cell editor
    label = re.compile(r"^\s*Run All Cells\s*$")
    try:
        if use_menu:
            raise LookupError("use the menu")
        page.keyboard.press("Control+Shift+C")
        palette = page.locator(".lm-CommandPalette-input")
        palette.wait_for(state="visible", timeout=5000)
        palette.fill("Run All Cells")
        page.locator(".lm-CommandPalette-item:not(.lm-mod-disabled)").filter(
            has=page.locator(".lm-CommandPalette-itemLabel").filter(has_text=label)
        ).first.click(timeout=5000)
    except Exception:
        page.keyboard.press("Escape")
        page.locator(".lm-MenuBar-itemLabel").filter(has_text=re.compile(r"^Run$")).click(
            timeout=RUN_ALL_CLICK_TIMEOUT * 1000
        )
        page.locator(".lm-Menu-itemLabel").filter(has_text=label).first.click(
            timeout=RUN_ALL_CLICK_TIMEOUT * 1000
        )


def panel_output(page, selector: str):
    """The visible notebook output that contains ``selector`` (a part of the panel).

    Examples: ``panel_output(page, ".widget-tab")``; once widgets add a class,
    ``panel_output(page, ".wb-data-inspector")``.
    """
    output = page.locator(f"{NOTEBOOK} .jp-OutputArea-output").filter(has=page.locator(selector))
    output.first.wait_for(state="visible", timeout=WIDGET_TIMEOUT * 1000)
    return output.first


def titles(page) -> list[str]:
    """Every distinct ``document.title`` the page has had (recorded from before page load)."""
    return list(dict.fromkeys(page.evaluate("(window.__titles || []).concat([document.title])")))


RECORD_TITLES = """
window.__titles = [];
(() => {
  const record = () => {
    const t = document.title, seen = window.__titles;
    if (seen[seen.length - 1] !== t) seen.push(t);
  };
  const start = () => {
    record();
    new MutationObserver(record).observe(document.documentElement,
      {subtree: true, childList: true, characterData: true});
  };
  if (document.documentElement) start();
  else document.addEventListener('DOMContentLoaded', start);
})();
"""


def screenshot(page, name: str, locator=None) -> Path:
    """Save ``locator`` (else the whole page) as ``test-artifacts/screenshots/<name>.png``."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    if locator is None:
        page.screenshot(path=str(path), full_page=True, animations="disabled")
    else:
        locator.scroll_into_view_if_needed()
        locator.screenshot(path=str(path), animations="disabled")
    return path


def shutdown_kernels(lab: Lab, notebook_path: Path | str) -> None:
    """Shut down the kernels of ``notebook_path``'s sessions (e.g. one still training).

    Test cleanup calls this so a background thread in the kernel cannot outlive the test and
    slow the tests after it; errors are ignored (the kernel may already be gone).
    """
    relative = Path(notebook_path).resolve().relative_to(lab.root.resolve()).as_posix()
    with contextlib.suppress(OSError, ValueError):
        for session in lab.api("sessions"):
            if session.get("path") == relative and session.get("kernel"):
                lab.api(f"kernels/{session['kernel']['id']}", method="DELETE", timeout=15)
