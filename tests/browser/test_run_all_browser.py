"""Run All in a real JupyterLab: the monitor lives while the kernel blocks in ``run.wait()``.

The notebook trains the tiny model (``wait=False``), shows the run's monitor, then blocks in
``run.wait()`` in the next cell, as "Run All" (or Shift-Enter into the next cell) does. The
browser records, every 100 ms from page load, the number of points of the monitor's loss
trace, its status line, its probe table and the cells' prompts; the curve must grow while the
``run.wait()`` cell is still running. A second notebook clicks Pause, then Resume and Stop,
while ``run.wait()`` blocks; the run follows each click (status line and ``status.json``), and
the cells after the blocking one run once it returns. A listener holds each step for 10 ms, so
a fast machine cannot finish the run between two renders. Saves ``run_all_live.png``,
``run_all_paused.png`` and the samples (``run_all_live.samples.json``) under
``test-artifacts/screenshots/``. Kernels are shut down afterwards.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import time

import pytest
from browser_helpers import (
    _ALL_CELLS_DONE,
    NOTEBOOK,
    SCREENSHOTS,
    WIDGET_TIMEOUT,
    open_notebook_in_lab,
    panel_output,
    run_notebook_in_lab,
    screenshot,
    shutdown_kernels,
    start_run_all,
    write_notebook,
)

pytestmark = pytest.mark.browser

DATA = (
    's.load_model(str(wb.build_tiny_model("tiny")))\n'
    "rows = [{'question': f'What is {i} plus {i}?', 'answer': f'{i} plus {i} is {2 * i}.'}\n"
    "        for i in range(40)]\n"
    "s.load_data(rows, validation=rows[:4]);\n"
    "import time\n"  # at least 10 ms a step, so a fast machine cannot end a run in a blink
    "_ = s.on('train_log', lambda _: time.sleep(0.01))"
)
# The monitor's status line, live or in the static snapshot that replaces it when a run ends.
STATUS = f"{NOTEBOOK} :is(.wb-train-status, .wb-snapshot-status)"
WAIT = 'status = run.wait()\nprint("waited:", status.state.value)'
AFTER = 'print("after:", run.state.value, run.status.step)'
RUN_TIMEOUT = 600  # seconds: 300 steps of the tiny model, on two cores shared with others
CLICK_TIMEOUT = 60  # seconds: a step (or a checkpoint) on busy cores, then the render

# Sampled in the page from load: the loss trace's points, the status line, the probe table's
# headers and the code cells' prompts ("[*]" while a cell runs).
SAMPLER = f"""
window.__wb = [];
setInterval(() => {{
  const panel = document.querySelector('{NOTEBOOK}');
  if (!panel) return;
  const monitor = panel.querySelector('.wb-training-monitor');
  const gd = monitor && monitor.querySelector('.js-plotly-plot');
  const trace = gd && (gd.data || []).find(t => t.name === 'train loss');
  const status = monitor && monitor.querySelector('.wb-train-status');
  window.__wb.push({{
    points: trace && trace.x ? trace.x.length : 0,
    status: status ? status.textContent : '',
    probes: monitor ? [...monitor.querySelectorAll('th')].map(th => th.textContent) : [],
    prompts: [...panel.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]
      .map(p => p.textContent.trim().replace(/:$/, '')),
  }});
}}, 100);
"""


def _setup(folder: str) -> str:
    """The first cell: a session in ``folder`` (each test its own), the tiny model, the data."""
    return f'import workbench as wb\ns = wb.Session("{folder}", verbose=False)\n' + DATA


def _label(text: str) -> re.Pattern:
    """A button's accessible name: chromium prefixes the Font Awesome glyph of its icon."""
    return re.compile(rf"^\W*{text}$")


def _status(lab, folder: str) -> dict:
    """The status of the session's first run as its folder says (``status.json``), or {}."""
    with contextlib.suppress(OSError, ValueError):
        return json.loads((lab.root / folder / "runs" / "run-001" / "status.json").read_text())
    return {}


def _state(lab, folder: str) -> str:
    return _status(lab, folder).get("state", "")


def _until(predicate, timeout: float = CLICK_TIMEOUT, every: float = 0.25):
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(every)
        value = predicate()
    return value


def _prompts(page) -> list[str]:
    return page.evaluate(
        f"() => [...document.querySelectorAll('{NOTEBOOK} .jp-CodeCell .jp-InputArea-prompt')]"
        ".map(p => p.textContent.trim().replace(/:$/, ''))"
    )


def _outputs(page, index: int) -> list[str]:
    return (
        page.locator(f"{NOTEBOOK} .jp-CodeCell")
        .nth(index)
        .locator(".jp-OutputArea-output")
        .all_text_contents()
    )


def test_run_all_curves_grow_while_run_wait_blocks(lab, page):
    notebook = write_notebook(
        lab,
        "run_all_live",
        [
            _setup("live"),
            "run = s.train(max_steps=300, batch_size=4, lr=1e-3, eval_every=100,\n"
            "              probes=['What is 2 plus 2?'], wait=False)\nrun",
            WAIT,
            AFTER,
        ],
    )
    page.add_init_script(SAMPLER)
    try:
        run_notebook_in_lab(page, notebook, timeout=RUN_TIMEOUT)
        samples = page.evaluate("window.__wb")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        (SCREENSHOTS / "run_all_live.samples.json").write_text(json.dumps(samples))
        final = page.locator(STATUS).first.text_content()
        screenshot(page, "run_all_live")
    finally:
        shutdown_kernels(lab, notebook)

    # While the run.wait() cell ran ("[*]") and the run had not ended, the curve grew.
    blocked = [
        s
        for s in samples
        if len(s["prompts"]) == 4
        and re.fullmatch(r"\[\d+\]:?", s["prompts"][1])
        and s["prompts"][2] == "[*]"
        and s["status"].startswith("running")
    ]
    counts = [s["points"] for s in blocked]
    growths = sum(b > a for a, b in itertools.pairwise(counts))
    assert growths >= 3, f"the loss trace grew {growths} times during run.wait(): {counts}"
    # The status line followed, and the probe table gained a column while the cell blocked.
    steps = {int(re.search(r"step (\d+)/300", s["status"]).group(1)) for s in blocked}
    assert len(steps) >= 3, steps
    assert any("step 100" in s["probes"] for s in blocked), blocked[-1]["probes"]
    # The run ended in that cell; the next cell ran after it, once.
    assert any("waited: finished" in t for t in _outputs(page, 2))
    assert any("after: finished 300" in t for t in _outputs(page, 3))
    assert final.startswith("finished · step 300/300"), final


def test_pause_resume_and_stop_act_while_run_wait_blocks(lab, page):
    from playwright.sync_api import expect

    notebook = write_notebook(
        lab,
        "run_all_buttons",
        [
            _setup("buttons"),
            "run = s.train(max_steps=5000, batch_size=4, lr=1e-3, eval_every=5000,\n"
            "              wait=False)\nrun",
            WAIT,
            AFTER,
        ],
    )
    try:
        open_notebook_in_lab(page, notebook)
        start_run_all(page)
        page.locator(f"{NOTEBOOK} .wb-training-monitor").first.wait_for(timeout=RUN_TIMEOUT * 1000)
        panel = panel_output(page, ".wb-training-monitor")
        status = panel.locator(".wb-train-status")
        expect(status).to_contain_text("running", timeout=RUN_TIMEOUT * 1000)
        assert _until(lambda: _prompts(page)[2] == "[*]", WIDGET_TIMEOUT), _prompts(page)

        panel.get_by_role("button", name=_label("Pause")).click()
        expect(status).to_contain_text("paused", timeout=CLICK_TIMEOUT * 1000)
        assert _until(lambda: _state(lab, "buttons") == "paused"), _state(lab, "buttons")
        paused_at = int(re.search(r"step (\d+)/5000", status.text_content()).group(1))
        screenshot(page, "run_all_paused", panel)
        assert _prompts(page)[2:] == ["[*]", "[*]"], "run.wait() should still block"

        panel.get_by_role("button", name=_label("Resume")).click()
        assert _until(lambda: _state(lab, "buttons") == "running"), _state(lab, "buttons")
        expect(status).not_to_contain_text(f"step {paused_at}/", timeout=CLICK_TIMEOUT * 1000)

        panel.get_by_role("button", name=_label("Stop")).click()
        page.wait_for_function(_ALL_CELLS_DONE, timeout=CLICK_TIMEOUT * 1000, polling=250)
        assert _state(lab, "buttons") == "stopped"
        # The live panel, or the static snapshot that replaces it at the end, says so.
        expect(page.locator(STATUS).first).to_contain_text("stopped")
        assert any("waited: stopped" in t for t in _outputs(page, 2))
        stopped_at = _status(lab, "buttons")["step"]
        assert paused_at < stopped_at < 5000
        assert any(f"after: stopped {stopped_at}" in t for t in _outputs(page, 3))
    finally:
        shutdown_kernels(lab, notebook)
