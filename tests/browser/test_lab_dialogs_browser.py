"""The browser harness answers JupyterLab's own kernel-start dialogs as a user would.

JupyterLab opens a modal dialog when a notebook's kernel dies ("Kernel Restarting") or cannot
be started ("Error Starting Kernel", then "Select Kernel"); its layer swallows every click
until someone answers. Under load this happened in CI before any cell ran. Here a real kernel
is killed, and a notebook asks for a kernel spec whose program does not exist; each time the
harness must answer, warn (the dialog's text stays in the test log), wait for a live kernel
and run the notebook in it. Kernels are shut down afterwards.
"""

from __future__ import annotations

import json
import re

import nbformat
import psutil
import pytest
from browser_helpers import (
    NOTEBOOK,
    WIDGET_TIMEOUT,
    open_notebook_in_lab,
    shutdown_kernels,
    start_run_all,
    wait_for_all_cells,
    wait_for_kernel,
    write_notebook,
)

pytestmark = pytest.mark.browser


def _kernel_process(lab, relative: str) -> psutil.Process:
    """The process of the kernel the server runs for notebook ``relative``."""
    (kernel_id,) = [
        s["kernel"]["id"] for s in lab.api("sessions") if s["path"] == relative and s["kernel"]
    ]
    for child in psutil.Process(lab.process.pid).children(recursive=True):
        if any(kernel_id in part for part in child.cmdline()):
            return child
    raise AssertionError(f"no process runs kernel {kernel_id}")


def test_a_kernel_killed_after_start_is_restarted_and_the_notebook_runs_in_it(lab, page):
    notebook = write_notebook(lab, "kernel_dies", ["import os\nprint('kernel pid', os.getpid())"])
    try:
        relative = open_notebook_in_lab(page, notebook)
        killed = _kernel_process(lab, relative)
        killed.kill()
        dialog = page.locator(".jp-Dialog")
        dialog.first.wait_for(state="visible", timeout=WIDGET_TIMEOUT * 1000)
        assert "Kernel Restarting" in dialog.first.text_content()

        with pytest.warns(UserWarning, match=r"'Kernel Restarting' \(The kernel for"):
            wait_for_kernel(page, relative)
        assert dialog.count() == 0
        start_run_all(page)
        wait_for_all_cells(page)
    finally:
        shutdown_kernels(lab, notebook)
    output = page.locator(f"{NOTEBOOK} .jp-OutputArea-output").first.text_content()
    pid = int(re.search(r"kernel pid (\d+)", output).group(1))
    assert pid != killed.pid


def test_a_kernel_that_cannot_start_is_replaced_by_the_python_kernel(lab, page):
    spec = lab.kernels / "missing-program"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": ["/nonexistent/python", "-f", "{connection_file}"],
                "display_name": "Missing program",
                "language": "python",
            }
        )
    )
    notebook = write_notebook(lab, "kernel_cannot_start", ["import sys\nprint(sys.executable)"])
    nb = nbformat.read(notebook, as_version=4)
    nb.metadata["kernelspec"] = {"name": "missing-program", "display_name": "Missing program"}
    nbformat.write(nb, notebook)
    try:
        with pytest.warns(UserWarning) as shown:
            open_notebook_in_lab(page, notebook)
        start_run_all(page)
        wait_for_all_cells(page)
    finally:
        shutdown_kernels(lab, notebook)
    messages = [str(w.message) for w in shown]
    assert any(
        "'Error Starting Kernel'" in m and "No such file or directory: '/nonexistent/python'" in m
        for m in messages
    ), messages
    assert any("'Select Kernel'" in m for m in messages), messages
    output = page.locator(f"{NOTEBOOK} .jp-OutputArea-output").first.text_content()
    assert "python" in output
