"""The README's screenshots, from a real Gemma 3 270M run in JupyterLab and chromium.

Opt-in (``WORKBENCH_FULL=1``; 15-30 minutes on two cores): one notebook runs the quickstart's
flow on the built-in Gemma 3 270M with *Run All Cells*: the demo data (64 training records,
16 held out), the DataInspector, a LoRA run of two epochs (16 steps) with the live
TrainingMonitor, the run's final monitor, base vs tuned in the EvalPanel, ``report.html``,
then a short teaching-mode run (layer-norm heatmap, Pause, Single step). While the kernel
waits for the run, the test takes a frame of the live monitor at each new step.

It checks what the pictures show: the frames are at increasing steps with the loss curve
drawn up to that step, the train and eval losses fall, the tuned model beats the base one on
exact match and valid JSON (in the panel's table and the report's summary), the teaching
heatmap has a row per Gemma block and a column per step, and no output shows an error.

Saves under ``test-artifacts/screenshots/`` (copied to ``docs/screenshots/`` for the README):
``gemma_data_inspector.png``, ``gemma_training_monitor_step<NN>.png`` (each frame),
``gemma_training_monitor.png`` (the finished run), ``gemma_training_monitor_live.gif`` (the
frames as an animation) and ``gemma_training_monitor_live.png`` (four frames on one image),
``gemma_eval_panel.png``, ``gemma_report.png`` and ``gemma_training_monitor_teaching.png``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from browser_helpers import (
    _ALL_CELLS_DONE,
    _CELL_ERRORS,
    NOTEBOOK,
    SCREENSHOTS,
    open_notebook_in_lab,
    screenshot,
    shutdown_kernels,
    start_run_all,
    write_notebook,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("WORKBENCH_FULL") != "1",
        reason="15-30 minutes on 2 cores (Gemma 3 270M in a browser); set WORKBENCH_FULL=1",
    ),
]

PREFIX = "gemma_"
GEMMA_BLOCKS = 18  # Gemma 3 270M's transformer blocks: the teaching heatmap's rows
TRAIN_STEPS = 16  # 64 records, batch 8, 2 epochs
HELD_OUT = 16

# The quickstart's flow (notebooks/src/01_quickstart.py), one cell per panel. The cell
# indices below (CELL_*) point into this list.
CELLS = [
    "import os\nfrom pathlib import Path\n\nimport workbench as wb\n"
    "from workbench.report import write_report\n"
    "from workbench.tasks import json_valid, records_to_json\n\n"
    's = wb.Session("runs/readme", verbose=False)\n'
    's.load_model("gemma-3-270m");',
    f"train, test = records_to_json(train_size=64, test_size={HELD_OUT})\n"
    "data_report = s.load_data(train, validation=test)",
    "s.inspect_data()",
    'probe = s.example(0, "validation").prompt\n'
    'run = s.train(method="lora", lora=wb.LoRA(r=8, target="all-linear"), lr=5e-4,\n'
    "              epochs=2, batch_size=8, eval_every=4, probes=[probe], wait=False)\n"
    "run",
    'status = run.wait()\nassert status.state.value == "finished", status.error\nrun.monitor()',
    'ev = s.evaluate(metrics=["exact_match", json_valid], max_new_tokens=48)\nev',
    "evaluation = ev.wait()\n"
    'match = evaluation.scores["exact_match"]\n'
    "report = write_report(\n"
    '    Path("report.html"), "Tuning Workbench demo", data_report=data_report,\n'
    "    history=run.history, evaluation=evaluation,\n"
    "    summary=[\n"
    '        f"model: {s.loaded.source.spec}, LoRA r=8 on all linear layers",\n'
    '        f"training: {run.state.value} after {run.status.step} steps, "\n'
    '        f"{run.status.elapsed:.0f} s on {os.cpu_count()} CPU cores",\n'
    '        f"exact match on {len(evaluation.rows)} held-out records: "\n'
    "        f\"base {match['base']:.2f} -> tuned {match['tuned']:.2f}\",\n"
    "    ],\n"
    ")",
    # Teaching mode: a fresh adapter (the model carries the first run's), a few steps.
    's.load_model("gemma-3-270m")\n'
    "teach = s.train(max_steps=12, batch_size=4, lr=5e-4, lora=wb.LoRA(r=8),\n"
    "                track_layer_norms=True, wait=False)\n"
    "teach",
]
CELL_INSPECTOR, CELL_RUN, CELL_FINAL, CELL_EVAL, CELL_TEACH = 2, 3, 4, 5, 7

RUN_ALL_TIMEOUT = 45 * 60  # seconds: load, inspect, train, evaluate on two busy cores
STEP_TIMEOUT = 240  # seconds for one Gemma step (or a pause, which waits for it)
STATUS = re.compile(r"^(\w+) · step (\d+)/(\d+)")
TRACE = """
(gd, name) => {
  const trace = (gd.data || []).find(t => t.name === name);
  return trace && trace.y ? Array.from(trace.y) : [];
}
"""
HEATMAP_SHAPE = """
gd => {
  const z = (gd.data && gd.data[0] && gd.data[0].z) || [];
  return [z.length, z.length ? z[0].length : 0];
}
"""
SCORES = """
table => {
  const head = [...table.querySelectorAll('tr')][0];
  const names = [...head.children].map(c => c.textContent.trim());
  const rows = {};
  for (const tr of [...table.querySelectorAll('tr')].slice(1)) {
    const cells = [...tr.children].map(c => c.textContent.trim());
    rows[cells[0]] = Object.fromEntries(names.map((n, i) => [n, cells[i]]));
  }
  return rows;
}
"""
REPORT_SIZE = {"width": 1200, "height": 1800}  # the README's report.png


@dataclass
class Frame:
    """One picture of the live monitor: the step its status line showed, and the PNG."""

    step: int
    total: int
    losses: list[float]
    png: bytes


def _shot(page, name: str, locator) -> Path:
    """``screenshot`` with the mouse moved off the panels (no hover toolbar, no hover colour)."""
    page.mouse.move(1, 1)
    return screenshot(page, name, locator)


def _label(text: str) -> re.Pattern:
    """A button's accessible name: chromium prefixes the Font Awesome glyph of its icon."""
    return re.compile(rf"^\W*{text}$")


def _status(panel) -> tuple[str, int, int] | None:
    """(state, step, total) from a monitor's status line; ``None`` before it has one, or
    once the panel is gone (a finished run's display becomes its static snapshot)."""
    from playwright.sync_api import Error as PlaywrightError

    locator = panel.locator(".wb-train-status").first
    try:
        text = locator.text_content(timeout=2000) if panel.count() else ""
    except PlaywrightError:
        text = ""
    match = STATUS.match(text or "")
    return (match.group(1), int(match.group(2)), int(match.group(3))) if match else None


def _cell_output(page, cell: int, selector: str):
    """The output of code cell ``cell`` that contains ``selector``."""
    return (
        page.locator(f"{NOTEBOOK} .jp-CodeCell")
        .nth(cell)
        .locator(".jp-OutputArea-output")
        .filter(has=page.locator(selector))
        .first
    )


def _check_no_cell_error(page) -> None:
    failures = page.evaluate(_CELL_ERRORS)
    if failures:
        raise AssertionError("a notebook cell raised:\n" + "\n---\n".join(failures))


def _wait(page, predicate, timeout: float, what: str, every_ms: int = 500):
    """Poll ``predicate`` (failing early if a cell raised) until truthy; returns its value.

    Polls with ``page.wait_for_timeout`` (not ``time.sleep``): the page's requests go through
    a route that only runs while Playwright is called.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        _check_no_cell_error(page)
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        page.wait_for_timeout(every_ms)


def _take_frames(page, panel, timeout: float) -> list[Frame]:
    """A picture of the live monitor at each new step, until the run ends."""
    from playwright.sync_api import Error as PlaywrightError

    plot = panel.locator(".js-plotly-plot").first
    frames: list[Frame] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if panel.count() == 0:  # the run ended: its display became the static snapshot
            return frames
        status = _status(panel)
        if status and status[0] in ("finished", "stopped", "failed"):
            return frames
        if status and status[0] == "running" and status[1] > (frames[-1].step if frames else 0):
            # The status line and the curve update together, at most a few times a second.
            losses: list[float] = []
            wait_until = time.monotonic() + 10
            with contextlib.suppress(PlaywrightError):
                while time.monotonic() < wait_until:
                    losses = plot.evaluate(TRACE, "train loss", timeout=2000)
                    if len(losses) >= status[1]:
                        break
                    page.wait_for_timeout(250)
                page.mouse.move(1, 1)
                png = panel.screenshot(animations="disabled", timeout=10_000)
                if _status(panel) == status:  # still that step: the picture shows it
                    frames.append(Frame(status[1], status[2], losses, png))
        _check_no_cell_error(page)
        page.wait_for_timeout(500)
    steps = [f.step for f in frames]
    raise AssertionError(f"the run did not end within {timeout:.0f} s (frames at {steps})")


# -- pictures -------------------------------------------------------------------------------


def _images(pngs: list[bytes]):
    from PIL import Image

    images = [Image.open(io.BytesIO(png)).convert("RGB") for png in pngs]
    width = max(i.width for i in images)
    height = max(i.height for i in images)
    padded = []
    for image in images:  # the panel grows a little (probe rows): pad to one size
        canvas = Image.new("RGB", (width, height), "white")
        canvas.paste(image, (0, 0))
        padded.append(canvas)
    return padded


def make_gif(pngs: list[bytes], path: Path, scale: float = 0.8, ms: int = 700) -> Path:
    """An animated GIF of the frames (the last one held longer), in one shared palette.

    Example: ``make_gif([p.read_bytes() for p in sorted(folder.glob("*_step*.png"))], out)``.
    """
    from PIL import Image

    images = _images(pngs)
    size = (round(images[0].width * scale), round(images[0].height * scale))
    images = [i.resize(size, Image.Resampling.LANCZOS) for i in images]
    # One palette from all frames together, so colours do not flicker between frames.
    sheet = Image.new("RGB", (size[0], size[1] * len(images)))
    for k, image in enumerate(images):
        sheet.paste(image, (0, k * size[1]))
    # Max coverage keeps the thin curves' colours and the greys (median cut merges the curves
    # into the greys, octree tints the greys).
    palette = sheet.quantize(colors=256, method=Image.Quantize.MAXCOVERAGE)
    frames = [i.quantize(palette=palette, dither=Image.Dither.NONE) for i in images]
    durations = [ms] * (len(frames) - 1) + [ms * 4]
    frames[0].save(
        path, save_all=True, append_images=frames[1:], duration=durations, loop=0, optimize=True
    )
    return path


def make_strip(pngs: list[bytes], path: Path, columns: int = 2, scale: float = 0.7) -> Path:
    """The frames on one image, ``columns`` per row, left to right then down.

    Example: ``make_strip([first, second, third, last], out)``.
    """
    from PIL import Image

    images = _images(pngs)
    size = (round(images[0].width * scale), round(images[0].height * scale))
    gap = 12
    rows = -(-len(images) // columns)
    sheet = Image.new(
        "RGB",
        (columns * size[0] + (columns - 1) * gap, rows * size[1] + (rows - 1) * gap),
        "white",
    )
    for k, image in enumerate(images):
        x, y = (k % columns) * (size[0] + gap), (k // columns) * (size[1] + gap)
        sheet.paste(image.resize(size, Image.Resampling.LANCZOS), (x, y))
    sheet.quantize(colors=256, method=Image.Quantize.MAXCOVERAGE).save(path, optimize=True)
    return path


def _spread(frames: list[Frame], n: int) -> list[Frame]:
    """``n`` frames spread evenly over the run, ending with the last (a quarter, a half...)."""
    if len(frames) <= n:
        return frames
    return [frames[round((k + 1) * len(frames) / n) - 1] for k in range(n)]


def _float(text: str) -> float:
    return float(text.replace(",", ""))


# -- the test, in the order the notebook shows the panels ------------------------------------


class Deadline:
    """Seconds left of the Run All budget."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(1.0, self.end - time.monotonic())


def _data_inspector(page, deadline: Deadline) -> None:
    """The 64 training records and the length histogram."""
    from playwright.sync_api import expect

    inspector = _cell_output(page, CELL_INSPECTOR, ".widget-tab")
    _wait(page, lambda: inspector.count() > 0, deadline.left(), "the DataInspector")
    expect(inspector).to_contain_text("train 64, validation 16")
    inspector.get_by_role("tab", name="Lengths").click()
    expect(inspector.locator(".js-plotly-plot .barlayer .point path").first).to_be_attached()
    _shot(page, f"{PREFIX}data_inspector", inspector)


def _live_monitor(page, deadline: Deadline) -> None:
    """A frame per step while the kernel waits in ``run.wait()``; the GIF and the strip."""
    live = _cell_output(page, CELL_RUN, ".wb-training-monitor")
    _wait(page, lambda: live.count() > 0, deadline.left(), "the live TrainingMonitor")
    frames = _take_frames(page, live, deadline.left())
    for frame in frames:
        name = f"{PREFIX}training_monitor_step{frame.step:02d}.png"
        (SCREENSHOTS / name).write_bytes(frame.png)
    steps = [f.step for f in frames]
    print("live frames at steps", steps)
    assert len(frames) >= 6, f"too few live frames: steps {steps}"
    assert steps == sorted(set(steps)), steps
    assert all(f.total == TRAIN_STEPS for f in frames), [f.total for f in frames]
    # Each picture shows the loss curve up to its step.
    assert all(len(f.losses) >= f.step for f in frames), [(f.step, len(f.losses)) for f in frames]
    make_gif([f.png for f in frames], SCREENSHOTS / f"{PREFIX}training_monitor_live.gif")
    make_strip(
        [f.png for f in _spread(frames, 4)], SCREENSHOTS / f"{PREFIX}training_monitor_live.png"
    )


def _final_monitor(page, deadline: Deadline) -> None:
    """The finished run's monitor (``run.monitor()`` in the next cell): the losses fell."""
    from playwright.sync_api import expect

    final = _cell_output(page, CELL_FINAL, ".wb-training-monitor")
    _wait(page, lambda: final.count() > 0, deadline.left(), "the finished run's monitor")
    expect(final.locator(".wb-train-status")).to_contain_text(
        f"finished · step {TRAIN_STEPS}/{TRAIN_STEPS}"
    )
    plot = final.locator(".js-plotly-plot").first
    train = _wait(
        page,
        lambda: (y := plot.evaluate(TRACE, "train loss")) and len(y) == TRAIN_STEPS and y,
        60,
        "the final loss curve",
    )
    evals = plot.evaluate(TRACE, "eval loss")
    print(f"train loss {train[0]:.3f} -> {train[-1]:.3f}; eval loss {evals}")
    assert train[-1] < 0.5 * train[0], train
    assert len(evals) >= 3 and evals[-1] < evals[0], evals
    _shot(page, f"{PREFIX}training_monitor", final)


def _eval_panel(page, deadline: Deadline) -> dict[str, dict[str, str]]:
    """Base vs tuned: real, non-zero scores, tuned above base. Returns the score table."""
    from playwright.sync_api import expect

    panel = _cell_output(page, CELL_EVAL, ".wb-eval-panel")
    _wait(page, lambda: panel.count() > 0, deadline.left(), "the EvalPanel")
    table = panel.locator("table.wb-table").first
    expect(table).to_contain_text("json_valid")
    scores = table.evaluate(SCORES)
    print("scores", scores)
    for name in ("exact_match", "json_valid"):
        base, tuned = _float(scores[name]["base"]), _float(scores[name]["tuned"])
        assert tuned > base, (name, scores[name])
    assert _float(scores["exact_match"]["tuned"]) >= 0.5, scores["exact_match"]
    expect(panel.locator(".js-plotly-plot").first).to_be_visible()
    _shot(page, f"{PREFIX}eval_panel", panel)
    return scores


def _report(page, report: Path, scores: dict[str, dict[str, str]]) -> None:
    """``report.html`` as a reader opens it: its summary says what the panel said."""
    from playwright.sync_api import expect

    match = scores["exact_match"]
    reader = page.context.new_page()
    try:
        reader.set_viewport_size(REPORT_SIZE)
        reader.set_content(report.read_text(), wait_until="load", timeout=60_000)
        expect(reader.locator("body")).to_contain_text(
            f"exact match on {HELD_OUT} held-out records: base "
            f"{_float(match['base']):.2f} -> tuned {_float(match['tuned']):.2f}"
        )
        expect(reader.locator(".js-plotly-plot")).to_have_count(3)
        expect(reader.locator(".js-plotly-plot .scatterlayer .trace").first).to_be_attached()
        path = SCREENSHOTS / f"{PREFIX}report.png"
        reader.screenshot(path=str(path), full_page=False, animations="disabled")
    finally:
        reader.close()


def _teaching_monitor(page) -> None:
    """The heatmap grows a column per step; Pause, one Single step, the weight norms."""
    from playwright.sync_api import expect

    teaching = _cell_output(page, CELL_TEACH, ".wb-training-monitor")
    heatmap = teaching.locator(".wb-layer-norms .js-plotly-plot").first
    expect(heatmap).to_be_visible()
    _wait(page, lambda: heatmap.evaluate(HEATMAP_SHAPE)[1] >= 2, 2 * STEP_TIMEOUT, "2 steps")
    status = teaching.locator(".wb-train-status")
    teaching.get_by_role("button", name=_label("Pause")).click()
    expect(status).to_contain_text("paused", timeout=STEP_TIMEOUT * 1000)

    def settled():  # the step in flight at the click may still be logged after "paused"
        first = _status(teaching)
        page.wait_for_timeout(1500)
        columns = heatmap.evaluate(HEATMAP_SHAPE)[1]
        now = _status(teaching)
        return first is not None and first == now and first[0] == "paused" and columns == now[1]

    _wait(page, settled, 60, "the paused run's status and heatmap to agree")
    _, paused_at, total = _status(teaching)
    step_button = teaching.get_by_role("button", name=_label("Single step"))
    expect(step_button).to_be_enabled()
    step_button.click()
    expect(status).to_contain_text(
        f"paused · step {paused_at + 1}/{total}", timeout=STEP_TIMEOUT * 1000
    )
    _wait(
        page,
        lambda: heatmap.evaluate(HEATMAP_SHAPE) == [GEMMA_BLOCKS, paused_at + 1],
        30,
        f"a {GEMMA_BLOCKS} x {paused_at + 1} heatmap",
    )
    teaching.get_by_text("weight norm").click()
    page.wait_for_timeout(1000)  # the re-render is throttled
    _shot(page, f"{PREFIX}training_monitor_teaching", teaching)
    teaching.get_by_role("button", name=_label("Stop")).click()
    expect(status).to_contain_text("stopped", timeout=STEP_TIMEOUT * 1000)


def test_readme_screenshots_from_a_gemma_run(lab, page):
    from playwright.sync_api import expect

    pytest.importorskip("PIL", reason="the animated monitor needs Pillow (the dev extras)")
    page.set_viewport_size({"width": 1400, "height": 1400})  # the tall teaching monitor fits
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    notebook = write_notebook(lab, "readme_gemma", CELLS)
    try:
        open_notebook_in_lab(page, notebook)
        start_run_all(page)  # returns once started: the pictures are taken while it runs
        deadline = Deadline(RUN_ALL_TIMEOUT)
        _data_inspector(page, deadline)
        _live_monitor(page, deadline)
        _final_monitor(page, deadline)
        scores = _eval_panel(page, deadline)
        # The teaching run starts in the last cell: every cell before it is done.
        page.wait_for_function(_ALL_CELLS_DONE, timeout=deadline.left() * 1000, polling=500)
        _check_no_cell_error(page)
        expect(page.locator(NOTEBOOK)).not_to_contain_text("model not found")
        expect(page.locator(NOTEBOOK)).not_to_contain_text("Error displaying widget")
        _report(page, lab.root / "report.html", scores)
        _teaching_monitor(page)
        assert page.blocked_requests == [], page.blocked_requests
    finally:
        shutdown_kernels(lab, notebook)
