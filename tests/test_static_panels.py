"""Panels that survive: static snapshots in every panel's output, finalised at the end.

What a reopened notebook, nbconvert's HTML, GitHub or a mail reader shows has no kernel and no
network: each panel's display carries a self-contained ``text/html`` snapshot (status, curves
as an SVG image, tables; escaped, no script, no URL), a run's or an evaluation's end replaces
the display by that snapshot alone, and a Jupyter server saving the notebook keeps only the
snapshots (:mod:`workbench.widgets._snapshot`). The last test runs the quickstart notebook on
the tiny model with nbclient, saves it through a Jupyter contents manager with the extension
loaded, and converts it with nbconvert.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import threading
import types
from pathlib import Path

import nbformat
import pytest
from eval_fixtures import XSS, handmade_evaluation
from test_notebooks import NOTEBOOKS, TINY, execute, kernel_name  # noqa: F401 (a fixture)
from train_helpers import toy_run

from workbench.data import PreparedData
from workbench.evaluation import EvalRow, Evaluation
from workbench.evaluation.background import EvaluationRun
from workbench.evaluation.compare import compare as wb_compare
from workbench.events import EventHub
from workbench.train import TrainSpec
from workbench.widgets import _snapshot
from workbench.widgets._snapshot import (
    WIDGET_STATE,
    WIDGET_VIEW,
    read_snapshot,
    show,
    snapshot_bundle,
)
from workbench.widgets.data_inspector import DataInspector
from workbench.widgets.eval_panel import EvalPanel
from workbench.widgets.training_monitor import TrainingMonitor

REPO = Path(__file__).resolve().parent.parent
IMG = re.compile(r'<img [^>]*src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"')
STEPS = 4
PROBES = ["<script>alert(1)</script> cat =>"]


def svgs(html: str) -> list[str]:
    """The SVG documents of the snapshot's images."""
    return [base64.b64decode(data).decode("utf-8") for data in IMG.findall(html)]


def assert_self_contained(html: str) -> None:
    """No script, no URL to fetch; images are SVG data URIs without scripts or links."""
    assert "<script" not in html.lower()
    assert "http://" not in html and "https://" not in html
    images = svgs(html)
    assert images, "the snapshot has no chart"
    for svg in images:
        assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg"')
        assert "<script" not in svg.lower() and "href" not in svg
        assert svg.count("http") == 1  # the SVG namespace only


@pytest.fixture
def shell(tmp_path, monkeypatch):
    """An IPython shell whose display messages the test captures (``shell.captured``)."""
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    instance = InteractiveShell.instance()
    try:
        with capture_output(stdout=False, stderr=False) as captured:
            instance.captured = captured
            yield instance
    finally:
        InteractiveShell.clear_instance()


def _held_run(tiny_model_dir, run_dir, spec: TrainSpec, hold_at: int):
    """A run whose worker waits at step ``hold_at`` until ``gate`` is set."""
    events, reached, gate = EventHub(), threading.Event(), threading.Event()

    def hold(payload):
        if payload.record.kind == "train" and payload.record.step == hold_at:
            reached.set()
            gate.wait(60)

    events.on("train_log", hold)
    run = toy_run(tiny_model_dir, run_dir, spec, events=events, wait=False, probes=PROBES)
    assert reached.wait(60), "the run never reached the held step"
    return run, gate


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory):
    spec = TrainSpec(max_steps=STEPS, lr=5e-3, batch_size=8, eval_every=2)
    run = toy_run(tiny_model_dir, tmp_path_factory.mktemp("run") / "run-001", spec, probes=PROBES)
    assert run.status.state.value == "finished"
    return run


# -- each panel's bundle ----------------------------------------------------------------------


def test_a_finished_runs_monitor_bundle_carries_a_static_snapshot(finished_run):
    monitor = TrainingMonitor(finished_run)
    try:
        bundle = monitor._repr_mimebundle_()
        assert WIDGET_VIEW in bundle  # live where a kernel is
        html = bundle["text/html"]
        assert f"finished · step {STEPS}/{STEPS}" in html
        assert bundle["text/plain"].startswith(f"finished · step {STEPS}/{STEPS}")
        assert_self_contained(html)
        (chart,) = svgs(html)
        assert "<path" in chart and "train loss (smoothed)" in chart and "eval loss" in chart
        assert "&lt;script&gt;alert(1)&lt;/script&gt; cat =&gt;" in html  # the probe, escaped
        assert "run.monitor()" in html  # how to get the live panel back
    finally:
        monitor.close()


def test_the_eval_panel_bundle_has_scores_bars_and_escaped_examples():
    panel = EvalPanel(handmade_evaluation())
    html = panel._repr_mimebundle_()["text/html"]
    assert_self_contained(html)
    assert "<th>score</th>" in html and "<td>exact_match</td>" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "<img src=x" not in html
    (chart,) = svgs(html)
    assert chart.count("<rect") - 2 == 2  # base and tuned bars (not counting frame and page)

    row = EvalRow(0, "Q", "A", {"base": "B", "tuned": "A"})
    scores = {"<b>m</b>": {"base": 0.25, "tuned": 0.75}}
    ev = Evaluation(scores, (row,), {"columns": ["base", "tuned"]})
    html = snapshot_bundle(EvalPanel(ev))["text/html"]
    (chart,) = svgs(html)
    assert "&lt;b&gt;m&lt;/b&gt;" in chart and "<b>m</b>" not in chart
    assert "<td>&lt;b&gt;m&lt;/b&gt;</td>" in html


def test_the_inspector_bundle_has_the_data_summary_histogram_and_problems(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [{"question": f"What is {i} plus {i}? {XSS}", "answer": str(2 * i)} for i in range(30)]
    rows.append(rows[3])  # a duplicate
    data = PreparedData.load(rows, tok, validation=None, cache_dir=tmp_path / "cache")
    inspector = DataInspector(data)
    bundle = inspector._repr_mimebundle_()
    html = bundle["text/html"]
    assert_self_contained(html)
    assert "Data report for list" in html and "rows: 31 read" in html
    assert "problems (2)" in html and "[duplicate] train row 30" in html
    (chart,) = svgs(html)
    assert "tokens per example" in chart and chart.count('fill="#1f77b4"') >= 1
    assert bundle["text/plain"] == str(data.report())


# -- displays: shown with a display id, finalised when the job ends ----------------------------


def _displays(shell) -> list:
    outputs = shell.captured.outputs
    return [o for o in outputs if o.transient and "display_id" in o.transient]


def test_a_displayed_monitor_becomes_its_static_snapshot_when_the_run_ends(
    shell, tiny_model_dir, tmp_path
):
    spec = TrainSpec(max_steps=STEPS, lr=5e-3, batch_size=8, eval_every=2)
    run, gate = _held_run(tiny_model_dir, tmp_path / "run-001", spec, hold_at=2)
    try:
        run._ipython_display_()  # what a bare `run` at the end of a cell does
    finally:
        gate.set()
    run.wait()
    first, *updates = _displays(shell)
    display_id = first.transient["display_id"]
    assert not first.update and WIDGET_VIEW in first.data  # the live panel while running
    assert first.metadata["workbench"]["panel"] == "training-monitor"
    assert "running · step 2/4" in first.data["text/html"]
    assert updates, "the run's end did not update the display"
    last = updates[-1]
    assert last.update and last.transient["display_id"] == display_id
    assert sorted(last.data) == ["text/html", "text/plain"]  # no widget view left
    assert f"finished · step {STEPS}/{STEPS}" in last.data["text/html"]
    assert_self_contained(last.data["text/html"])
    # The saving server finds the same final snapshot by the token in the metadata.
    saved = read_snapshot(last.metadata["workbench"]["snapshot"])
    assert saved == last.data
    # A run that has ended displays its snapshot alone; run.monitor() shows a live panel.
    run._ipython_display_()
    ended = _displays(shell)[-1]
    assert not ended.update and WIDGET_VIEW not in ended.data
    run.monitor()._ipython_display_()
    assert WIDGET_VIEW in _displays(shell)[-1].data
    run.monitor().close()


def test_a_displayed_evaluation_becomes_its_scores_when_it_ends(shell):
    release = threading.Event()

    def work(emit, cancelled):
        release.wait(30)
        return handmade_evaluation()

    ev = EvaluationRun(work, [{"prompt": "Q", "reference": "A"}] * 3, ("base", "tuned"))
    ev._ipython_display_()
    shell.display_pub.parent_header = {"msg_id": "cell-2"}  # as a kernel's publisher has
    release.set()
    ev.wait()
    first, *updates = _displays(shell)
    assert WIDGET_VIEW in first.data and "running" in first.data["text/plain"]
    assert len(updates) == 1  # the end, then wait() in the same cell: one update
    # The finished panel stays live (examples, A/B rater) beside its final snapshot.
    assert updates[0].data[WIDGET_VIEW] == first.data[WIDGET_VIEW]
    html = updates[0].data["text/html"]
    assert "<td>exact_match</td>" in html and "Evaluation of 3 examples" in html
    assert_self_contained(html)
    shell.display_pub.parent_header = {"msg_id": "cell-3"}
    ev.wait()  # a later cell that waits sends it again (nbclient applies only its own cell's)
    assert len(_displays(shell)) == 3


def test_a_displayed_comparison_carries_its_charts_and_saves_without_the_figure(shell, tmp_path):
    # The plotly figure is a widget: once the kernel is gone it said "model not found" and
    # only the table was left. Its output carries the same charts as images now.
    names = ["lr <b onmouseover=x>", "lr-5e-4"]
    for name, losses, tuned in [(names[0], [3.0, 2.0], 0.25), (names[1], [3.0, 1.0], 0.75)]:
        folder = tmp_path / name
        folder.mkdir()
        lines = [{"kind": "train", "step": i + 1, "loss": x} for i, x in enumerate(losses)]
        (folder / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        ev = handmade_evaluation()
        ev.scores["exact_match"]["tuned"] = tuned
        ev.save(folder / "evaluations" / "eval-1")
    cmp = wb_compare([tmp_path / n for n in names])
    cmp._ipython_display_()
    figure, table_output = shell.captured.outputs[-2:]
    assert WIDGET_VIEW in figure.data and "<table" in table_output.data["text/html"]
    html = figure.data["text/html"]
    assert_self_contained(html)
    loss_chart, score_chart = svgs(html)
    assert "lr &lt;b onmouseover=x&gt; loss" in loss_chart and "lr-5e-4 loss" in loss_chart
    assert "exact_match" in score_chart and "0.75" in score_chart and "<b " not in html
    model_id = figure.data[WIDGET_VIEW]["model_id"]
    saved = {
        "cells": [
            {
                "cell_type": "code",
                "outputs": [
                    {
                        "output_type": "display_data",
                        "data": dict(figure.data),
                        "metadata": figure.metadata,
                    }
                ],
            }
        ],
        "metadata": {"widgets": {WIDGET_STATE: {"state": {model_id: {"state": {}}}}}},
    }
    assert _snapshot.static_panels(saved, tmp_path / "no-snapshots") == 1
    (output,) = saved["cells"][0]["outputs"]
    assert (
        sorted(output["data"]) == ["text/html", "text/plain"]
        and output["data"]["text/html"] == html
    )
    assert "widgets" not in saved["metadata"]  # the figure's state went with its view


def test_a_panel_shown_outside_ipython_prints_its_text(capsys):
    assert show(TrainingMonitor()) is None
    assert capsys.readouterr().out == "no run\n"


# -- saving ---------------------------------------------------------------------------------------


def test_snapshot_files_are_read_only_from_the_users_folder(tmp_path):
    folder = tmp_path / "snapshots"
    folder.mkdir()
    token = "a" * 32
    (folder / f"{token}.json").write_text(json.dumps({"text/html": "<b>x</b>", "x": 1}))
    assert read_snapshot(token, folder) == {"text/html": "<b>x</b>"}
    secret = tmp_path / "secret.txt"
    secret.write_text(json.dumps({"text/plain": "private"}))
    (folder / f"{'b' * 32}.json").symlink_to(secret)
    assert read_snapshot("b" * 32, folder) is None  # a link could point at any file
    assert read_snapshot("../secret", folder) is None
    assert read_snapshot("A" * 32, folder) is None


def test_the_server_extension_is_installed_with_the_package():
    shipped = REPO / "jupyter-config" / "jupyter_server_config.d" / "tuning_workbench.json"
    config = json.loads(shipped.read_text())
    assert config["ServerApp"]["jpserver_extensions"] == {"workbench.widgets._snapshot": True}
    pyproject = (REPO / "pyproject.toml").read_text()  # (tomllib is Python 3.11+)
    section = pyproject.split("[tool.setuptools.data-files]", 1)[1].split("\n[", 1)[0]
    line = f'"etc/jupyter/jupyter_server_config.d" = ["{shipped.relative_to(REPO)}"]'
    assert line in section
    points = _snapshot._jupyter_server_extension_points()
    assert points == [{"module": "workbench.widgets._snapshot"}]


def _save_through_a_server(nb, folder: Path) -> Path:
    """Save ``nb`` the way a Jupyter server does, with the workbench's extension loaded."""
    from jupyter_server.services.contents.filemanager import FileContentsManager

    manager = FileContentsManager(root_dir=str(folder))
    server = types.SimpleNamespace(contents_manager=manager, log=logging.getLogger("server"))
    _snapshot._load_jupyter_server_extension(server)
    content = json.loads(nbformat.writes(nb))
    manager.save({"type": "notebook", "format": "json", "content": content}, "saved.ipynb")
    return folder / "saved.ipynb"


def _panel(html: str, kind: str) -> str:
    start = html.index(f'<div class="wb-snapshot wb-snapshot-{kind}"')
    return html[start : html.index('class="wb-snapshot-note"', start)]


def test_the_quickstart_saved_and_exported_shows_the_final_panels(
    tiny_model_dir,
    kernel_name,  # noqa: F811 (the fixture imported from test_notebooks)
    tmp_path,
):
    from nbconvert import HTMLExporter

    values = {**TINY, "MODEL": str(tiny_model_dir)}
    nb = execute(NOTEBOOKS / "01_quickstart.ipynb", values, tmp_path / "work", kernel_name)
    marked = {
        o.metadata["workbench"]["panel"]: o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "workbench" in o.get("metadata", {})
    }
    assert set(marked) == {"data-inspector", "training-monitor", "eval-progress"}
    # At the end the kernel replaced the run's display by its snapshot; the evaluation's
    # display got its final snapshot beside the live panel.
    assert sorted(marked["training-monitor"].data) == ["text/html", "text/plain"]
    assert f"finished · step {TINY['MAX_STEPS']}/" in marked["training-monitor"].data["text/html"]
    assert "<td>exact_match</td>" in marked["eval-progress"].data["text/html"]
    assert WIDGET_VIEW in marked["eval-progress"].data
    # nbclient keeps the state of every widget it saw (the plotly charts: ~5 MB each) ...
    assert len(nbformat.writes(nb)) > 5_000_000

    saved = _save_through_a_server(nb, tmp_path)
    # ... saving through a Jupyter server keeps the panels' snapshots, not their state.
    assert saved.stat().st_size < 1_000_000, saved.stat().st_size
    nb = nbformat.read(saved, as_version=4)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if "workbench" in output.get("metadata", {}):
                assert WIDGET_VIEW not in output.data
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    assert not any("_esm" in m.get("state", {}) for m in state.values())  # no anywidget/plotly

    html, _ = HTMLExporter().from_notebook_node(nb)
    monitor = _panel(html, "monitor")
    steps = TINY["MAX_STEPS"]
    assert f"finished · step {steps}/{steps}" in monitor
    (curve,) = svgs(monitor)
    assert "train loss" in curve and ("<path" in curve or "<circle" in curve)
    scores = _panel(html, "eval")
    assert "<td>exact_match</td>" in scores and "<td>json_valid</td>" in scores
    assert re.search(r"<td>exact_match</td><td>[0-9.]+</td>", scores)
    assert "Data report for" in _panel(html, "inspector")
    for kind in ("monitor", "eval", "inspector"):
        assert_self_contained(_panel(html, kind))
    assert "plotly" not in html.lower()  # no chart needs plotly.js (nor its CDN)
    keep = os.environ.get("WORKBENCH_NOTEBOOK_OUTPUTS")
    if keep:
        Path(keep, "01_quickstart_static.html").write_text(html)


def _snapshot_text(panel) -> str:
    """What a saving server would put in the notebook for ``panel`` now: its snapshot file."""
    token = _snapshot._state(panel)["token"]
    saved = read_snapshot(token)
    assert saved is not None, "the displayed panel wrote no snapshot"
    return saved["text/plain"]


def test_a_notebook_saved_mid_run_shows_the_step_it_was_saved_at(
    shell, tiny_model_dir, tmp_path, monkeypatch
):
    # Only state changes and probes wrote the snapshot: saved at step 6 of a run without
    # probes, the notebook showed the step the panel was displayed at.
    monkeypatch.setattr(_snapshot, "SNAPSHOT_EVERY", 0.0)  # each log, not every 2 s
    events, gates, reached = EventHub(), {}, {}
    for step in (2, 6):
        gates[step], reached[step] = threading.Event(), threading.Event()

    def hold(payload):
        step = payload.record.step
        if payload.record.kind == "train" and step in gates:
            reached[step].set()
            gates[step].wait(60)

    events.on("train_log", hold)
    spec = TrainSpec(max_steps=8, lr=5e-3, batch_size=8)
    run = toy_run(tiny_model_dir, tmp_path / "run-001", spec, events=events, wait=False)
    try:
        assert reached[2].wait(60)
        monitor = run.monitor()
        monitor._ipython_display_()
        assert "step 2/8" in _snapshot_text(monitor)
        gates[2].set()
        assert reached[6].wait(60)  # held before the monitor hears step 6
        assert "running · step 5/8" in _snapshot_text(monitor)
    finally:
        for gate in gates.values():
            gate.set()
        run.wait()


def test_a_notebook_saved_mid_evaluation_shows_the_rows_answered(shell, monkeypatch):
    from workbench.evaluation.background import EvalProgress

    monkeypatch.setattr(_snapshot, "SNAPSHOT_EVERY", 0.0)
    shown, answered, release = threading.Event(), threading.Event(), threading.Event()

    def work(emit, cancelled):
        shown.wait(30)  # rows answered after the panel was displayed
        emit("eval_progress", EvalProgress("base", 2, 3, ("x", "y")))
        answered.set()
        release.wait(30)
        return handmade_evaluation()

    ev = EvaluationRun(work, [{"prompt": "Q", "reference": "A"}] * 3, ("base", "tuned"))
    try:
        ev._ipython_display_()
        assert "base 0/3" in _snapshot_text(ev.monitor())
        shown.set()
        assert answered.wait(30)
        assert "base 2/3" in _snapshot_text(ev.monitor()), _snapshot_text(ev.monitor())
    finally:
        release.set()
        ev.wait()


def test_a_saved_notebook_keeps_the_chat_typed_in_its_panel(shell):
    # The panel's output was its HTML at display time: "(no messages yet)" once saved.
    from workbench.widgets.chat_panel import ChatPanel

    panel = ChatPanel(lambda messages, max_new_tokens: "<b>hi</b> there")
    panel._ipython_display_()
    [shown] = _displays(shell)
    assert shown.metadata["workbench"]["panel"] == "chat" and WIDGET_VIEW in shown.data
    assert "(no messages yet)" in shown.data["text/html"]
    panel.send("Tell me <i>something</i> 🙂")
    saved = read_snapshot(shown.metadata["workbench"]["snapshot"])
    assert "you: Tell me <i>something</i> 🙂\nmodel: <b>hi</b> there" in saved["text/plain"]
    html = saved["text/html"]
    assert "Tell me &lt;i&gt;something&lt;/i&gt; 🙂" in html and "&lt;b&gt;hi&lt;/b&gt;" in html
    assert "<b>hi" not in html and "<script" not in html
    panel.clear()
    assert (
        "(no messages yet)" in read_snapshot(shown.metadata["workbench"]["snapshot"])["text/plain"]
    )
