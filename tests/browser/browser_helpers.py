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
import urllib.request
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

# The visible notebook (JupyterLab hides inactive panels with lm-mod-hidden).
NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden)"


@dataclass
class Lab:
    """A running ``jupyter lab``: loopback port, token, root folder (for notebooks), log."""

    port: int
    token: str
    root: Path
    log: Path
    process: subprocess.Popen = field(repr=False)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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
        "name": "python3",
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

    Waits for the kernel to be idle, runs "Run All Cells" from the command palette (the Run
    menu as a fallback), then waits until every code cell shows an execution count (no
    ``[*]``, no blank prompt) and the kernel is idle again. ``page`` comes from the ``page``
    fixture (it knows its server as ``page.lab``).

    Raises:
        AssertionError: A cell raised (its traceback text is in the message), unless
            ``allow_errors``.
        playwright.sync_api.TimeoutError: Not done within ``timeout`` seconds.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
    from playwright.sync_api import expect

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
    expect(_idle_kernel(page)).to_have_count(1, timeout=PAGE_LOAD_TIMEOUT * 1000)
    for attempt in range(3):  # a lost click/shortcut (focus elsewhere) would wait forever
        _run_all_cells(page, use_menu=attempt > 0)
        with contextlib.suppress(PlaywrightTimeoutError):
            page.wait_for_function(_STARTED, timeout=15_000, polling=250)
            break
    else:
        raise AssertionError("Run All Cells did not start any cell (3 tries)")
    page.wait_for_function(_ALL_CELLS_DONE, timeout=timeout * 1000, polling=250)
    expect(_idle_kernel(page)).to_have_count(1, timeout=timeout * 1000)
    failures = page.evaluate(_CELL_ERRORS)
    if failures and not allow_errors:
        raise AssertionError("a notebook cell raised:\n" + "\n---\n".join(failures))


def _run_all_cells(page, use_menu: bool = False) -> None:
    """Run All Cells through the command palette (Ctrl+Shift+C), else through the Run menu."""
    page.locator(f"{NOTEBOOK} .jp-Cell").first.click()
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
        page.locator(".lm-MenuBar-itemLabel").filter(has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-itemLabel").filter(has_text=label).first.click()


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
