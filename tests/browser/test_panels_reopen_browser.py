"""Panels that survive save and reopen, in a real JupyterLab and chromium.

A notebook shows the DataInspector (then applies a new cutoff from a later cell), displays a
40-step run of the tiny model while it is paused and resumes it in the next cell, and
evaluates four rows. The browser sees the live panels, and the run's display replaced in place
by its static snapshot when the run ended. It saves the notebook (the Save button; the
server's pre-save hook from :mod:`workbench.widgets._snapshot` keeps each panel's latest
snapshot, the inspector's new cutoff included), the kernel is shut down, and the notebook is
opened again: every panel shows its final static snapshot (``finished · step 40/40``, the loss
curve image, the score table, the data summary) and no output says "model not found". The
same file altered by hand (no longer trusted, as a notebook mailed to a student is) is
sanitized by JupyterLab and still shows the charts. Saves ``panels_reopened.png`` under
``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from browser_helpers import (
    NOTEBOOK,
    WIDGET_TIMEOUT,
    open_notebook_in_lab,
    panel_output,
    run_notebook_in_lab,
    screenshot,
    shutdown_kernels,
    write_notebook,
)

pytestmark = pytest.mark.browser

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
CELLS = [
    'import workbench as wb\ns = wb.Session("run", verbose=False)\n'
    's.load_model(str(wb.build_tiny_model("tiny")))',
    "qa = lambda i: {'question': f'What is {i} plus {i}?', 'answer': f'{i} plus {i} is {2 * i}.'}\n"
    "s.load_data([qa(i) for i in range(40)], validation=[qa(i) for i in range(40, 44)]);",
    "inspector = s.inspect_data()\ninspector",
    # A later change to a displayed panel reaches the saved file through its snapshot file.
    "inspector.set_cutoff(28)\n_ = inspector.apply_cutoff()",
    # Paused while its monitor is displayed (tiny steps take milliseconds), then resumed: the
    # live panel sees the end in a later cell.
    "run = s.train(max_steps=40, batch_size=4, lr=1e-3, eval_every=20, wait=False)\n"
    "run.pause()\nrun",
    "run.resume()\nstatus = run.wait()\nstatus.state.value",
    'ev = s.evaluate(metrics=["exact_match"], max_new_tokens=8, limit=4)\nev',
    "_ = ev.wait()",
]
HOOK_LOADED = "workbench: saved notebooks keep static panels"
SAVE_TIMEOUT = 30
IMAGE_LOADED = "img => img.complete && img.naturalWidth > 0"


def _output(page, selector: str):
    """The notebook output holding ``selector``, scrolled into view (long notebooks render
    off-screen cells lazily)."""
    output = page.locator(f"{NOTEBOOK} .jp-OutputArea-output").filter(has=page.locator(selector))
    output.first.scroll_into_view_if_needed(timeout=WIDGET_TIMEOUT * 1000)
    return panel_output(page, selector)


def _saved_panels(path: Path) -> dict[str, dict]:
    """Our outputs in the file on disk, by panel kind."""
    nb = json.loads(path.read_text())
    return {
        o["metadata"]["workbench"]["panel"]: o
        for c in nb["cells"]
        for o in c.get("outputs", [])
        if "workbench" in o.get("metadata", {})
    }


def _save(page, path: Path) -> dict[str, dict]:
    """Save with the notebook's toolbar button; waits until the file holds the static panels."""
    before = path.stat().st_mtime_ns
    page.locator(f'{NOTEBOOK} [data-command="docmanager:save"]').first.click()
    deadline = time.monotonic() + SAVE_TIMEOUT
    while time.monotonic() < deadline:
        if path.stat().st_mtime_ns != before:
            panels = _saved_panels(path)
            if len(panels) == 3:
                return panels
        page.wait_for_timeout(250)  # not time.sleep: the page's requests go through a route
    raise AssertionError(f"the notebook was not saved with its 3 panels: {_saved_panels(path)}")


def _assert_static_panels(page) -> None:
    from playwright.sync_api import expect

    notebook = page.locator(NOTEBOOK)
    monitor = _output(page, ".wb-snapshot-monitor")
    expect(monitor.locator(".wb-snapshot-status")).to_contain_text("finished · step 40/40")
    curve = monitor.locator(".wb-snapshot-chart img")
    expect(curve).to_be_visible()
    assert curve.evaluate(IMAGE_LOADED), "the loss curve image did not load"
    scores = _output(page, ".wb-snapshot-eval")
    expect(scores.locator("table").first).to_contain_text("exact_match")
    assert scores.locator(".wb-snapshot-chart img").evaluate(IMAGE_LOADED)
    inspector = _output(page, ".wb-snapshot-inspector")
    expect(inspector).to_contain_text("max_length: 28")
    assert inspector.locator(".wb-snapshot-chart img").evaluate(IMAGE_LOADED)
    expect(notebook).not_to_contain_text("model not found")
    expect(notebook).not_to_contain_text("Error displaying widget")


def test_panels_survive_save_and_reopen(lab, page):
    from playwright.sync_api import expect

    if HOOK_LOADED not in lab.log.read_text(errors="replace"):
        pytest.fail(
            "the Jupyter server did not load the workbench's server extension; an editable "
            "install needs `python -m workbench.widgets._snapshot` (setuptools skips data "
            "files in editable mode)",
            pytrace=False,
        )
    notebook = write_notebook(lab, "panels_reopen", CELLS)
    untrusted = notebook.with_name("panels_reopen_mailed.ipynb")
    try:
        run_notebook_in_lab(page, notebook, timeout=240)
        # Live while the kernel runs; the run, displayed while paused, ended in a later cell
        # and its display became the static snapshot in place.
        expect(_output(page, ".wb-data-inspector").locator(".widget-tab")).to_be_visible()
        expect(_output(page, ".wb-snapshot-monitor")).to_contain_text("finished · step 40/40")
        expect(page.locator(f"{NOTEBOOK} .wb-training-monitor")).to_have_count(0)
        expect(_output(page, ".wb-eval-panel").locator("table").first).to_contain_text(
            "exact_match"
        )

        panels = _save(page, notebook)
        for kind, output in panels.items():
            assert WIDGET_VIEW not in output["data"], kind
        # The saving server put in the latest snapshots.
        html = {kind: "".join(o["data"]["text/html"]) for kind, o in panels.items()}
        assert "finished · step 40/40" in html["training-monitor"]
        assert "<td>exact_match</td>" in html["eval-progress"]
        # The inspector was displayed before its cutoff was applied; the file has the new one.
        assert "max_length: 28" in html["data-inspector"]
        assert "widgets" not in json.loads(notebook.read_text())["metadata"]

        shutdown_kernels(lab, notebook)
        open_notebook_in_lab(page, notebook, kernel=False)
        _assert_static_panels(page)
        screenshot(page, "panels_reopened", _output(page, ".wb-snapshot-monitor"))

        # A copy changed elsewhere is untrusted: JupyterLab sanitizes its HTML (an inline
        # <svg> is dropped, as the sentinel shows), and the snapshots' images still show.
        nb = json.loads(notebook.read_text())
        nb["metadata"]["mailed"] = True
        sentinel = '<div class="wb-sentinel">sentinel<svg><circle r="3"></circle></svg></div>'
        nb["cells"][0]["outputs"].append(
            {"output_type": "display_data", "metadata": {}, "data": {"text/html": sentinel}}
        )
        untrusted.write_text(json.dumps(nb))
        shutdown_kernels(lab, notebook)
        open_notebook_in_lab(page, untrusted, kernel=False)
        expect(page.locator(f"{NOTEBOOK} .wb-sentinel")).to_contain_text("sentinel")
        expect(page.locator(f"{NOTEBOOK} .wb-sentinel svg")).to_have_count(0)
        _assert_static_panels(page)
    finally:
        shutdown_kernels(lab, notebook)
        shutdown_kernels(lab, untrusted)
