"""The TrainingMonitor in a real JupyterLab and chromium: live curves, status, the Stop button.

A notebook starts a 400-step run on the tiny model (``wait=False``, so the cell returns and the
run's monitor displays while the worker trains). The browser sees the loss trace grow and the
status line change, clicks Stop, and sees the run stop. Saves ``training_monitor.png`` under
``test-artifacts/screenshots/``. The notebook's kernel is shut down afterwards, so a run left
training (a failed assertion before Stop) cannot outlive the test.
"""

from __future__ import annotations

import re
import time

import pytest
from browser_helpers import (
    WIDGET_TIMEOUT,
    panel_output,
    run_notebook_in_lab,
    screenshot,
    shutdown_kernels,
    write_notebook,
)

pytestmark = pytest.mark.browser

CELLS = [
    'import workbench as wb\ns = wb.Session("run", verbose=False)\n'
    's.load_model(str(wb.build_tiny_model("tiny")))',
    "rows = [{'question': f'What is {i} plus {i}?', 'answer': f'{i} plus {i} is {2 * i}.'}\n"
    "        for i in range(40)]\n"
    "s.load_data(rows);",
    "run = s.train(max_steps=400, batch_size=4, lr=1e-3, wait=False)\nrun",
]
LOSS_POINTS = """
gd => {
  const trace = (gd.data || []).find(t => t.name === 'train loss');
  return trace && trace.x ? trace.x.length : 0;
}
"""
STEP = re.compile(r"step (\d+)/400")
STOP_TIMEOUT = 60  # seconds: the current step, then a checkpoint, on two busy cores


def _label(text: str) -> re.Pattern:
    """A button's accessible name: chromium prefixes the Font Awesome glyph of its icon."""
    return re.compile(rf"^\W*{text}$")


def _until(predicate, timeout: float = WIDGET_TIMEOUT, every: float = 0.25):
    """Poll ``predicate`` until it returns something truthy; that value, else the last one."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(every)
        value = predicate()
    return value


def test_training_monitor_updates_live_and_stops(lab, page):
    from playwright.sync_api import expect

    notebook = write_notebook(lab, "training_monitor", CELLS)
    try:
        run_notebook_in_lab(page, notebook)
        panel = panel_output(page, ".wb-training-monitor")
        plot = panel.locator(".js-plotly-plot").first
        expect(plot).to_be_visible()
        expect(plot.locator(".plot-container")).to_be_visible()
        status = panel.locator(".wb-train-status")

        # The loss trace grows in place while the worker trains, and the status line follows.
        first = _until(lambda: plot.evaluate(LOSS_POINTS))
        assert first > 0, "no training step reached the plot"
        text = status.text_content()
        assert _until(lambda: plot.evaluate(LOSS_POINTS) > first), (
            f"the loss trace stayed at {first} points"
        )
        expect(status).not_to_have_text(text)
        expect(status).to_contain_text("running")
        # What the run chose for itself, decided at the first step, under the status line.
        expect(panel.locator(".wb-train-choices")).to_contain_text(
            "packing off: packing='auto' packs on CUDA only"
        )

        stop = panel.get_by_role("button", name=_label("Stop"))
        expect(stop).to_be_enabled()
        stop.click()
        expect(status).to_contain_text("stopped", timeout=STOP_TIMEOUT * 1000)
        expect(status).to_contain_text("stopped by the user")
        expect(stop).to_be_disabled()
        expect(panel.get_by_role("button", name=_label("Resume"))).to_be_enabled()
        steps = int(STEP.search(status.text_content()).group(1))
        assert 0 < steps < 400, status.text_content()
        # The final render shows every step the run took.
        assert _until(lambda: plot.evaluate(LOSS_POINTS) == steps), (
            plot.evaluate(LOSS_POINTS),
            steps,
        )
        screenshot(page, "training_monitor", panel)
    finally:
        shutdown_kernels(lab, notebook)


HEATMAP_SHAPE = """
gd => {
  const z = (gd.data && gd.data[0] && gd.data[0].z) || [];
  return [z.length, z.length ? z[0].length : 0];
}
"""


def test_teaching_monitor_single_step_and_heatmap(lab, page):
    from playwright.sync_api import expect

    cells = [
        *CELLS[:2],
        "run = s.train(max_steps=400, batch_size=4, lr=1e-3, wait=False,\n"
        "              track_layer_norms=True)\nrun",
    ]
    notebook = write_notebook(lab, "teaching_monitor", cells)
    try:
        run_notebook_in_lab(page, notebook)
        panel = panel_output(page, ".wb-training-monitor")
        heatmap = panel.locator(".wb-layer-norms .js-plotly-plot").first
        expect(heatmap).to_be_visible()
        status = panel.locator(".wb-train-status")
        step_button = panel.get_by_role("button", name=_label("Single step"))
        expect(step_button).to_be_disabled()  # running
        assert _until(lambda: heatmap.evaluate(HEATMAP_SHAPE)[1] > 0)
        assert heatmap.evaluate(HEATMAP_SHAPE)[0] == 2  # the tiny model's blocks

        panel.get_by_role("button", name=_label("Pause")).click()
        expect(status).to_contain_text("paused", timeout=STOP_TIMEOUT * 1000)
        expect(step_button).to_be_enabled()
        steps = int(STEP.search(status.text_content()).group(1))
        assert _until(lambda: heatmap.evaluate(HEATMAP_SHAPE)[1] == steps)
        step_button.click()
        expect(status).to_contain_text(
            f"paused · step {steps + 1}/400", timeout=STOP_TIMEOUT * 1000
        )
        expect(step_button).to_be_enabled()
        assert _until(lambda: heatmap.evaluate(HEATMAP_SHAPE) == [2, steps + 1])
        panel.get_by_text("weight norm").click()
        screenshot(page, "training_monitor_teaching", panel)
        panel.get_by_role("button", name=_label("Stop")).click()
        expect(status).to_contain_text("stopped", timeout=STOP_TIMEOUT * 1000)
        expect(step_button).to_be_disabled()
    finally:
        shutdown_kernels(lab, notebook)
