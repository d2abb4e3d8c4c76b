"""Static snapshots of the panels: what a saved, reopened or exported notebook shows.

A live panel is an ipywidgets tree; its notebook output is a *widget view*, a pointer to a
model that lives in the kernel. Once the kernel is gone (a reopened notebook, ``nbconvert``,
GitHub's viewer, a notebook emailed to a student) the pointer leads nowhere: JupyterLab shows
"Error displaying widget: model not found", and saved widget state costs ~5 MB per plotly
chart and still needs a CDN. So every panel's output carries a static fallback in the same
display, and the saved file keeps only that fallback:

- **The bundle.** :func:`show` displays a panel with a ``display_id``: the widget view, a
  ``text/html`` snapshot (status, the curves as an SVG image, the tables; every piece of data
  text escaped, no script, no external URL) and a ``text/plain`` summary. Output metadata
  ``{"workbench": {"panel", "snapshot", "model_id"}}`` marks it as ours.
- **The end of a job.** When a displayed monitor's run finishes or fails, :func:`finalise`
  updates its displays in place to the static bundle alone (no widget view; ``run.monitor()``
  shows a live panel again). A stopped run that can resume, and an evaluation, keep their live
  panel (Resume; the examples and the A/B rater) and get the final snapshot beside it.
  JupyterLab applies the update to the cell that displayed the panel (until that cell runs
  again or the page reloads); nbclient (papermill, ``nbconvert --execute``) applies it when it
  arrives during a cell: the end itself, or ``run.wait()``/``ev.wait()`` sending it again.
- **Saving.** :func:`pre_save_hook`, a Jupyter server extension, runs :func:`static_panels`
  on every notebook the server saves: our outputs get the latest snapshot the kernel wrote
  (see below) and lose their widget view, the saved widget state keeps only models that other
  outputs still show, and any other widget view whose model has no saved state (a progress
  bar) keeps only its fallback. A wheel install enables the extension
  (``etc/jupyter/jupyter_server_config.d/tuning_workbench.json``); an editable install needs
  ``python -m workbench.widgets._snapshot`` once (see :func:`enable_server_extension`).
- **The latest snapshot.** A displayed panel writes its snapshot to
  ``<tempdir>/workbench-panels-<uid>/<token>.json`` when it is shown, on a run's state
  changes and evaluations, and at the end; the saving server reads it back by the token in
  the output's metadata (only a 32-hex-digit name, only in that folder, only when the folder
  belongs to the user). So a notebook saved in Lab after a run shows the final status, not
  the status at the moment the panel was first displayed.

The charts come from :mod:`workbench.widgets.svg_chart` (re-exported here). Each is an
``<img>`` with an SVG data URI (:func:`svg_img`) rather than inline ``<svg>``: JupyterLab's
sanitizer (untrusted notebooks) drops ``<svg>`` but keeps an image's ``src``.

Limits: a page reload while the kernel still runs shows the saved snapshots (``run.monitor()``,
``ev``, ``s.inspect_data()`` show live panels again); a kernel and a server on different
machines, or with different temporary folders, share no snapshot files (the saved output then
keeps the snapshot of its last display or update); nbclient keeps the state of every widget
it saw, closed or not, unless ``store_widget_state=False`` or the notebook is saved through a
Jupyter server (or passed to :func:`static_panels`).

Examples:
    A two-series chart, as an image any front end shows:

    >>> svg = line_chart([{"name": "train <loss>", "x": [1, 2, 3], "y": [3.0, 2.0, 1.5]},
    ...                   {"name": "eval", "x": [3], "y": [2.2], "dots": True}],
    ...                  title="loss", x_label="step", y_label="loss")
    >>> svg.startswith("<svg"), "train &lt;loss&gt;" in svg, "<script" in svg
    (True, True, False)
    >>> svg_img(svg, "loss").startswith('<img src="data:image/svg+xml;base64,')
    True
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workbench.widgets._html import escape, pre, shorten, table
from workbench.widgets.svg_chart import (
    bar_chart,
    finite_points,
    histogram_chart,
    line_chart,
    svg_img,
)

__all__ = [
    "WIDGET_STATE",
    "WIDGET_VIEW",
    "bar_chart",
    "enable_server_extension",
    "finalise",
    "histogram_chart",
    "line_chart",
    "pre_save_hook",
    "read_snapshot",
    "save_snapshot",
    "show",
    "snapshot_bundle",
    "static_panels",
    "svg_img",
]

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
MARKER = "workbench"  # the output metadata key of a panel's output
SNAPSHOT_EVERY = 2.0  # seconds between snapshot files written during a run
MAX_SNAPSHOT_BYTES = 4 * 1024 * 1024
EXAMPLES_SHOWN = 3  # evaluation rows in the evaluation's snapshot
PROBLEMS_SHOWN = 20  # data problems listed in the inspector's snapshot
_TOKEN = re.compile(r"^[0-9a-f]{32}$")
_MODEL_REF = re.compile(r"IPY_MODEL_([0-9A-Za-z_-]+)")
_LOCK = threading.RLock()
_NOTE = "color:#666;font-size:smaller;margin-top:4px;"
_BOX = "font-family:var(--jp-ui-font-family, sans-serif);"


# -- each panel's snapshot ---------------------------------------------------------------
def _note(text: str) -> str:
    return f'<div class="wb-snapshot-note" style="{_NOTE}">{escape(text)}</div>'


def _wrap(kind: str, parts: list[str]) -> str:
    return f'<div class="wb-snapshot wb-snapshot-{kind}" style="{_BOX}">{"".join(parts)}</div>'


def _monitor(monitor: Any) -> tuple[str, str]:
    with monitor._lock:
        data = {k: list(v) for k, v in monitor._data.items()}
        probes = {k: list(v) for k, v in monitor._probes.items()}
        family = [
            (m["relative"], list(m["step"]), list(m["loss"])) for m in monitor._family.values()
        ]
    status = monitor._status
    state = status.state.value if status is not None else "none"
    series = [
        {"name": "train loss", "x": data["step"], "y": data["loss"], "opacity": 0.35},
        {"name": "train loss (smoothed)", "x": data["step"], "y": data["smoothed"]},
        {"name": "eval loss", "x": data["eval_step"], "y": data["eval_loss"], "dots": True},
    ]
    forks = []  # dashed vertical lines where a fork starts
    for relative, steps, losses in family:
        start = relative.fork_step if relative.fork_step is not None else -math.inf
        shown = [(s, v) for s, v in zip(steps, losses, strict=False) if s >= start]
        series.append(
            {
                "name": relative.label,
                "x": [s for s, _ in shown],
                "y": [v for _, v in shown],
                "dash": relative.role == "parent",
            }
        )
        if relative.fork_step is not None:
            forks.append({"x": relative.fork_step})
    if monitor._origin is not None:
        forks.append({"x": monitor._origin["step"]})
    chart = line_chart(series, title="loss", x_label="step", y_label="loss", markers=forks)
    alt = _curve_words(data)
    color = "color:#b00;" if state == "failed" else ""
    parts = [
        f'<div class="wb-snapshot-status" style="font-weight:bold;{color}">'
        f"{escape(monitor.status_text())}</div>",
        monitor._choices_html(),
        _findings(monitor),
        f'<div class="wb-snapshot-chart">{svg_img(chart, alt)}</div>',
        monitor._probes_html(probes),
        _note(_monitor_note(monitor, state)),
    ]
    return _wrap("monitor", parts), monitor.text()


def _findings(monitor: Any) -> str:
    try:
        return monitor._findings_html()
    except Exception:  # a snapshot never fails on diagnostics
        return monitor.findings_html.value


def _curve_words(data: dict[str, list[float]]) -> str:
    points = finite_points(data["step"], data["loss"])
    if not points:
        return "loss curve: no training steps yet"
    (s0, l0), (s1, l1) = points[0], points[-1]
    words = f"loss curve: train loss {l0:.4g} at step {s0:g}, {l1:.4g} at step {s1:g}"
    evals = finite_points(data["eval_step"], data["eval_loss"])
    if evals:
        words += f"; eval loss {evals[-1][1]:.4g} at step {evals[-1][0]:g}"
    return words


def _monitor_note(monitor: Any, state: str) -> str:
    name = monitor.run.run_dir.name if monitor.run is not None else "this run"
    base = f"Static snapshot of the training monitor of {name}."
    status = monitor._status
    if state == "stopped" and status is not None and status.message.startswith("early stop"):
        run = monitor.run
        kept = (
            f"; the model holds the weights of step {run.weights_step}, where it was lowest"
            if run is not None and run.weights_step != status.step
            else ""
        )
        return (
            f"{base} Stopped by early stopping at step {status.step} of "
            f"{status.total_steps}: the eval loss stopped improving{kept}. run.monitor() "
            "shows the live panel again."
        )
    if state == "stopped" and status is not None and status.step < status.total_steps:
        return (
            f"{base} Stopped at step {status.step} of {status.total_steps}: run.resume() "
            "continues it; run.monitor() shows the live panel again."
        )
    if state in ("finished", "stopped", "failed"):
        return f"{base} In a live kernel, run.monitor() shows the live panel (fork, probes)."
    return f"{base} Taken while the run was {state}; run.monitor() shows the live panel."


def _eval_panel(panel: Any) -> tuple[str, str]:
    return _evaluation(panel.evaluation, panel.order, panel.findings_html.value)


def _evaluation(ev: Any, order: Sequence[int] = (), findings: str | None = None) -> tuple[str, str]:
    names = list(ev.scores)
    series = []
    for column in ev.columns:
        entries = [ev.scores[n] for n in names]
        cis = [e.get(f"{column}_ci") or (math.nan, math.nan) for e in entries]
        series.append(
            {
                "name": column,
                "values": [e.get(column, math.nan) for e in entries],
                "low": [c[0] for c in cis],
                "high": [c[1] for c in cis],
            }
        )
    chart = bar_chart(names, series, title="base vs tuned (95% bootstrap interval)")
    alt = "scores: " + "; ".join(
        f"{n} " + ", ".join(f"{c} {ev.scores[n].get(c, math.nan):.3g}" for c in ev.columns)
        for n in names
    )
    header = ["score", "base", "base 95% CI", "tuned", "tuned 95% CI", "gain"]
    where = f" saved in {ev.path}" if ev.path else ""
    rows = [ev.rows[i] for i in order[:EXAMPLES_SHOWN]] or list(ev.rows[:EXAMPLES_SHOWN])
    examples = [
        [r.index, shorten(r.prompt, 160), shorten(r.reference, 120)]
        + [None if r.outputs.get(c) is None else shorten(r.outputs[c], 160) for c in ev.columns]
        for r in rows
    ]
    parts = [
        f"<div><b>{escape(f'Evaluation of {len(ev.rows)} examples{where}')}</b></div>",
        _evaluation_findings(ev) if findings is None else findings,
        table(header, ev.score_table()),
    ]
    if names:
        parts.append(f'<div class="wb-snapshot-chart">{svg_img(chart, alt)}</div>')
    if examples:
        parts.append(f"<div><b>{escape(f'first {len(examples)} examples')}</b></div>")
        answers = range(3, 3 + len(ev.columns))  # an empty answer marked, not a blank cell
        parts.append(table(["#", "prompt", "reference", *ev.columns], examples, answers=answers))
    summary = ev.ratings_summary() if ev.ratings_path is not None else None
    if summary is not None and summary.n:
        parts.append(pre(f"human (blind A/B): {summary}"))
    parts.append(
        _note(
            "Static snapshot of the evaluation panel. In a live kernel, ev.panel() shows "
            "every example, the token losses and the blind A/B rater."
        )
    )
    return _wrap("eval", parts), str(ev)


def _evaluation_findings(ev: Any) -> str:
    try:
        from workbench.diagnostics import diagnose_evaluation
        from workbench.widgets._findings import findings_html

        return findings_html(diagnose_evaluation(ev))
    except Exception:  # a snapshot never fails on diagnostics
        return ""


def _eval_progress(panel: Any) -> tuple[str, str]:
    snap = panel.run.snapshot()
    if snap.state == "finished":
        return _evaluation(snap.evaluation)
    colour = "color:#b00;" if snap.state in ("failed", "cancelled") else ""
    parts = [
        f'<div class="wb-snapshot-status" style="font-weight:bold;{colour}">'
        f"{escape(snap.status_text())}</div>",
        panel._rows_html(snap),
        _note(
            f"Static snapshot of an evaluation that was {snap.state}. In a live kernel, "
            "ev.monitor() shows its live panel."
        ),
    ]
    return _wrap("eval-progress", parts), f"Evaluation {snap.status_text()}"


def _inspector(panel: Any) -> tuple[str, str]:
    report = panel.report
    counts, edges = report.histogram
    cutoff = panel.data.spec.max_length
    chart = histogram_chart(
        list(counts),
        list(edges),
        cutoff,
        title="tokens per example",
        x_label="tokens (template applied)",
        y_label="examples",
    )
    alt = f"length histogram: {report.train + report.validation} examples, longest " + str(
        report.lengths["total"].max if "total" in report.lengths else "-"
    )
    listed = [str(p) for p in report.problems[:PROBLEMS_SHOWN]]
    more = len(report.problems) - len(listed)
    problems = "".join(f"<li>{escape(shorten(p, 200))}</li>" for p in listed)
    if more > 0:
        problems += f"<li>{escape(f'... and {more} more (report.problems)')}</li>"
    facts = itertools.takewhile(lambda line: not line.startswith("problems ("), report.lines())
    # A panel whose data the session has replaced says so in its snapshot too: a saved
    # notebook must not show the old data as the current one.
    stale = [f"<div><b>{escape(panel._stale_message())}</b></div>"] if panel.stale else []
    parts = [
        *stale,
        pre("\n".join(facts)),
        f'<div class="wb-snapshot-chart">{svg_img(chart, alt)}</div>',
        f"<div><b>{escape(f'problems ({len(report.problems)})')}</b></div>",
        f"<ul>{problems}</ul>" if problems else "<div><i>none</i></div>",
        _note(
            "Static snapshot of the data inspector. In a live kernel, s.inspect_data() shows "
            "the rows, the token view and the length cutoff."
        ),
    ]
    text = f"{panel._stale_message()}\n{report}" if panel.stale else str(report)
    return _wrap("inspector", parts), text


def _ab_rating(panel: Any) -> tuple[str, str]:
    from workbench.evaluation.ratings import read_ratings, summarize

    rated, total = panel.rater.progress()
    summary = summarize(read_ratings(panel.rater.path))
    text = f"Blind A/B rating: {rated} of {total} rated; {summary}"
    parts = [
        "<div><b>Blind A/B rating</b> " + escape(f"({rated} of {total} rated)") + "</div>",
        f"<div>{escape(str(summary))}</div>",
        "<div><i>Static snapshot: in a live kernel, ev.rater() shows the rating panel.</i></div>",
    ]
    return _wrap("ab-rating", parts), text


def _chat(panel: Any) -> tuple[str, str]:
    note = _note("Static snapshot of the chat. In a live kernel, s.chat() opens a live one.")
    return _wrap("chat", [panel.html(), note]), panel.text()


_KINDS = {
    "ABRating": ("ab-rating", _ab_rating),
    "ChatPanel": ("chat", _chat),
    "TrainingMonitor": ("training-monitor", _monitor),
    "EvalPanel": ("eval-panel", _eval_panel),
    "DataInspector": ("data-inspector", _inspector),
    "EvalProgressPanel": ("eval-progress", _eval_progress),
}


def _kind(panel: Any) -> tuple[str, Any]:
    for cls in type(panel).__mro__:
        if cls.__name__ in _KINDS:
            return _KINDS[cls.__name__]
    msg = f"no static snapshot for {type(panel).__name__}"
    raise TypeError(msg)


def snapshot_bundle(panel: Any) -> dict[str, str]:
    """The panel's static bundle: ``text/html`` (self-contained) and ``text/plain``.

    Examples:
        >>> from workbench.widgets.training_monitor import TrainingMonitor
        >>> bundle = snapshot_bundle(TrainingMonitor())
        >>> sorted(bundle), "no run" in bundle["text/html"], bundle["text/plain"]
        (['text/html', 'text/plain'], True, 'no run')
    """
    _, build = _kind(panel)
    text_html, text_plain = build(panel)
    return {"text/html": text_html, "text/plain": text_plain}


# -- displays and their end ---------------------------------------------------------------
def _state(panel: Any) -> dict[str, Any]:
    with _LOCK:
        return panel.__dict__.setdefault(
            "_wb_snapshot", {"token": uuid.uuid4().hex, "handles": [], "written": 0.0}
        )


def _metadata(panel: Any) -> dict[str, Any]:
    kind, _ = _kind(panel)
    state = _state(panel)
    model_id = getattr(getattr(panel, "widget", None), "model_id", None)
    return {MARKER: {"panel": kind, "snapshot": state["token"], "model_id": model_id}}


def show(panel: Any, live: bool = True) -> Any:
    """Display ``panel`` with a display id: its widget view plus its static snapshot.

    Args:
        panel: A TrainingMonitor, EvalPanel or DataInspector.
        live: Include the widget view. ``False`` shows the static snapshot alone (a run
            that has ended).

    Returns:
        The IPython ``DisplayHandle`` (also kept on the panel for :func:`finalise`).

    Examples:
        Outside IPython (a script) it prints the text and returns ``None``:

        >>> from workbench.widgets.training_monitor import TrainingMonitor
        >>> handle = show(TrainingMonitor(), live=False)
        no run
    """
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.display import display

    ended = _ended(panel)
    bundle = snapshot_bundle(panel)
    if not InteractiveShell.initialized():
        print(bundle["text/plain"])
        return None
    data = dict(panel.widget._repr_mimebundle_()) if live else {}
    data.update(bundle)
    handle = display(data, raw=True, metadata=_metadata(panel), display_id=True)
    with _LOCK:
        _state(panel)["handles"].append((handle, live))
    if live and not ended and _ended(panel):  # the run ended while this was being shown
        finalise(panel)
    else:
        _write(panel, bundle)
    return handle


def _ended(panel: Any) -> bool:
    """Whether the job the panel shows has ended (a run, an evaluation); ``False`` if none."""
    if _kind(panel)[0] == "eval-progress":
        return bool(panel.run.done)
    return bool(getattr(getattr(panel, "_status", None), "done", False))


def finalise(panel: Any) -> int:
    """Update every display of ``panel`` in place to its final static snapshot.

    A finished or failed run's monitor becomes the snapshot alone (no widget view:
    ``run.monitor()`` shows a live one). Where it was live, a stopped run's monitor (its
    Resume button) and an evaluation's panel (its examples and A/B rater) stay interactive:
    the widget view stays, beside the final snapshot.

    Returns:
        How many displays were updated (0 for a panel never shown with :func:`show`).

    Examples:
        A panel shown in a notebook has displays to update; this one has none:

        >>> from workbench.widgets.training_monitor import TrainingMonitor
        >>> finalise(TrainingMonitor())
        0
    """
    state = _state(panel)
    with _LOCK:
        handles = list(state["handles"])
    if not handles:
        return 0
    bundle = snapshot_bundle(panel)
    sent = (_parent_id(), bundle)
    with _LOCK:
        if sent[0] is not None and state.get("final") == sent:
            return 0  # this cell already carried this update (a loop reading ev.scores)
        state["final"] = sent
    metadata = _metadata(panel)
    keep_live = _keeps_live(panel) and getattr(panel.widget, "comm", None) is not None
    for handle, live in handles:
        data = {**panel.widget._repr_mimebundle_(), **bundle} if live and keep_live else bundle
        handle.update(data, raw=True, metadata=metadata)
    _write(panel, bundle)
    return len(handles)


def _keeps_live(panel: Any) -> bool:
    """Whether the panel's live displays stay live at the end: an evaluation's (examples, A/B
    rater), and a stopped run's that can resume (its Resume button)."""
    kind = _kind(panel)[0]
    if kind == "eval-progress":
        return True
    status = getattr(panel, "_status", None)
    return (
        kind == "training-monitor"
        and status is not None
        and status.state.value == "stopped"
        and status.step < status.total_steps
    )


def _parent_id() -> str | None:
    """The id of the request (cell) that display messages are sent for now, if known."""
    from IPython import get_ipython

    header = getattr(getattr(get_ipython(), "display_pub", None), "parent_header", None)
    return header.get("msg_id") if isinstance(header, dict) else None


def save_snapshot(panel: Any, every: float = 0.0) -> bool:
    """Write the snapshot file of a displayed panel (what a saving server puts in the file).

    Args:
        every: Skip when the last write is more recent than this many seconds.

    Returns:
        Whether a file was written (never for a panel that was not displayed).

    Examples:
        A panel never displayed writes nothing:

        >>> from workbench.widgets.training_monitor import TrainingMonitor
        >>> save_snapshot(TrainingMonitor())
        False
    """
    state = _state(panel)
    if not state["handles"] or time.monotonic() - state["written"] < every:
        return False
    return _write(panel, snapshot_bundle(panel))


def _user() -> str:
    if hasattr(os, "getuid"):
        return str(os.getuid())
    return re.sub(r"\W", "_", os.environ.get("USERNAME", "user"))


def _folder(create: bool = False) -> Path | None:
    """The snapshot folder, only if it is a real folder that belongs to this user."""
    folder = Path(tempfile.gettempdir()) / f"workbench-panels-{_user()}"
    if create:
        with contextlib.suppress(OSError):
            folder.mkdir(mode=0o700, exist_ok=True)
    try:
        info = folder.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
        return None
    return folder


def _write(panel: Any, bundle: dict[str, str]) -> bool:
    state = _state(panel)
    folder = _folder(create=True)
    if folder is None:
        return False
    _forget_old(folder)
    path = folder / f"{state['token']}.json"
    staged = folder / f".{state['token']}.{threading.get_ident()}.tmp"
    try:
        staged.write_text(json.dumps(bundle), encoding="utf-8")
        os.replace(staged, path)
    except OSError:  # a snapshot file is a convenience: the panel works without it
        with contextlib.suppress(OSError):
            staged.unlink()
        return False
    state["written"] = time.monotonic()
    return True


_FORGOTTEN: set[str] = set()
KEEP_SNAPSHOTS_DAYS = 30  # snapshot files older than this are removed (once per process)


def _forget_old(folder: Path) -> None:
    if str(folder) in _FORGOTTEN:
        return
    _FORGOTTEN.add(str(folder))
    cutoff = time.time() - KEEP_SNAPSHOTS_DAYS * 86400
    for path in folder.glob("*.json"):
        with contextlib.suppress(OSError):
            if path.lstat().st_mtime < cutoff:
                path.unlink()


def read_snapshot(token: Any, folder: str | Path | None = None) -> dict[str, str] | None:
    """The latest snapshot a kernel wrote for ``token``, or ``None``.

    Only a 32-hex-digit token, only a regular file in the user's own snapshot folder (or in
    ``folder``), at most 4 MB, and only its ``text/html`` and ``text/plain`` strings.

    Examples:
        >>> from workbench.widgets.training_monitor import TrainingMonitor
        >>> monitor = TrainingMonitor()
        >>> _write(monitor, snapshot_bundle(monitor))  # what a displayed panel does
        True
        >>> read_snapshot(_state(monitor)["token"])["text/plain"]
        'no run'
        >>> read_snapshot("../../etc/passwd"), read_snapshot("0" * 32, "/nonexistent")
        (None, None)
    """
    if not isinstance(token, str) or not _TOKEN.match(token):
        return None
    base = Path(folder) if folder is not None else _folder()
    if base is None:
        return None
    path = base / f"{token}.json"
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_SNAPSHOT_BYTES:
            return None
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(found, dict):
        return None
    bundle = {k: found[k] for k in ("text/html", "text/plain") if isinstance(found.get(k), str)}
    return bundle or None


# -- saving: the notebook file keeps the static panels ------------------------------------
def _reachable(roots: list[str], state: dict[str, Any]) -> set[str]:
    seen: set[str] = set()
    todo = [r for r in roots if r in state]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        refs = _MODEL_REF.findall(json.dumps(state[model].get("state", {})))
        todo.extend(r for r in refs if r in state and r not in seen)
    return seen


def static_panels(nb: dict[str, Any], folder: str | Path | None = None) -> int:
    """Make a notebook's saved form show static panels; returns how many outputs changed.

    - Outputs of workbench panels (metadata ``workbench``) get the latest snapshot file's
      HTML and text (see :func:`read_snapshot`) and lose their widget view.
    - Any other widget view whose model has no saved state, and that has another mime type,
      loses the widget view (it would only say "model not found").
    - When the notebook has workbench panels, the saved widget state keeps only the models
      that the remaining widget views reach (and models that refer to those, such as links):
      the panels' models (~5 MB per plotly chart) and the models no output shows go.

    Works on the notebook as a dict (a ``NotebookNode`` or the JSON a server saves), in place.

    Examples:
        >>> view = {"model_id": "m1", "version_major": 2, "version_minor": 0}
        >>> out = {"output_type": "display_data", "metadata": {"workbench": {
        ...     "panel": "eval-panel", "snapshot": "0" * 32, "model_id": "m1"}},
        ...     "data": {WIDGET_VIEW: view, "text/html": "<b>scores</b>", "text/plain": "s"}}
        >>> bar = {"output_type": "display_data", "metadata": {},
        ...        "data": {WIDGET_VIEW: dict(view, model_id="m3"), "text/plain": "50%"}}
        >>> slider = {"output_type": "display_data", "metadata": {},
        ...           "data": {WIDGET_VIEW: dict(view, model_id="m5"), "text/plain": "3"}}
        >>> refs = {"m1": ["m2"], "m2": [], "m5": ["m7"], "m6": ["m5"], "m7": [], "m9": []}
        >>> state = {m: {"state": {"children": [f"IPY_MODEL_{c}" for c in kids]}}
        ...          for m, kids in refs.items()}  # m6 links to m5; nothing shows m9
        >>> nb = {"cells": [{"cell_type": "code", "outputs": [out, bar, slider]}],
        ...       "metadata": {"widgets": {WIDGET_STATE: {"state": state}}}}
        >>> static_panels(nb, "/nonexistent")
        2
        >>> sorted(out["data"]), sorted(bar["data"]), sorted(state)
        (['text/html', 'text/plain'], ['text/plain'], ['m5', 'm6', 'm7'])
    """
    box = (nb.get("metadata") or {}).get("widgets", {}).get(WIDGET_STATE, {})
    state = box.get("state") if isinstance(box, dict) else None
    state = state if isinstance(state, dict) else {}
    base = Path(folder) if folder is not None else _folder()
    ours: list[str] = []
    kept: list[str] = []
    changed = 0
    for cell in nb.get("cells", []):
        for output in cell.get("outputs") or []:
            data = output.get("data")
            if not isinstance(data, dict):
                continue
            marker = (output.get("metadata") or {}).get(MARKER)
            view = data.get(WIDGET_VIEW)
            model_id = view.get("model_id") if isinstance(view, dict) else None
            if isinstance(marker, dict):
                fresh = read_snapshot(marker.get("snapshot"), base) if base else None
                if fresh and any(data.get(k) != v for k, v in fresh.items()):
                    data.update(fresh)
                    changed += view is None
                if view is not None and ("text/html" in data or "text/plain" in data):
                    del data[WIDGET_VIEW]
                    changed += 1
                ours += [m for m in (marker.get("model_id"), model_id) if isinstance(m, str)]
            elif view is not None:
                if model_id in state:
                    kept.append(model_id)
                elif len(data) > 1:
                    del data[WIDGET_VIEW]
                    changed += 1
    if state and ours:
        _prune(state, kept)
        if not state:
            del nb["metadata"]["widgets"]
    return changed


def _prune(state: dict[str, Any], kept: list[str]) -> None:
    """Keep the models ``kept`` reach, and models that refer to those (links)."""
    keep = _reachable(kept, state)
    while True:
        linked = [
            m
            for m in state
            if m not in keep and set(_MODEL_REF.findall(json.dumps(state[m]))) & keep
        ]
        if not linked:
            break
        keep |= _reachable(linked, state)
    for model in set(state) - keep:
        del state[model]


def pre_save_hook(model: dict[str, Any], **kwargs: Any) -> None:
    """A Jupyter ``ContentsManager`` pre-save hook: :func:`static_panels` on notebooks.

    The package's server extension registers it (``register_pre_save_hook``); without the
    extension, ``c.FileContentsManager.pre_save_hook =
    "workbench.widgets._snapshot.pre_save_hook"`` in a server config does the same.

    Examples:
        >>> nb = {"cells": [{"cell_type": "code", "outputs": [{"output_type": "display_data",
        ...     "metadata": {}, "data": {WIDGET_VIEW: {"model_id": "gone"},
        ...                              "text/plain": "IntSlider(value=3)"}}]}],
        ...     "metadata": {}}
        >>> pre_save_hook({"type": "notebook", "content": nb}, path="a.ipynb")
        >>> nb["cells"][0]["outputs"][0]["data"]
        {'text/plain': 'IntSlider(value=3)'}
    """
    if model.get("type") == "notebook" and isinstance(model.get("content"), dict):
        static_panels(model["content"])


def enable_server_extension(prefix: str | Path | None = None) -> Path:
    """Enable the saving hook's server extension for Jupyter servers of ``prefix``'s environment.

    A wheel install puts ``etc/jupyter/jupyter_server_config.d/tuning_workbench.json`` there
    itself; an editable install (``pip install -e .``) does not (setuptools skips data files
    in editable mode), so ``python -m workbench.widgets._snapshot`` writes it. Restart the
    server afterwards.

    Args:
        prefix: The environment (default ``sys.prefix``).

    Returns:
        The config file written.

    Examples:
        >>> path = enable_server_extension("/tmp/wb-doc-snapshot-prefix")
        >>> path.name, json.loads(path.read_text())["ServerApp"]["jpserver_extensions"]
        ('tuning_workbench.json', {'workbench.widgets._snapshot': True})
    """
    import sys

    folder = Path(prefix if prefix is not None else sys.prefix) / "etc/jupyter"
    path = folder / "jupyter_server_config.d" / "tuning_workbench.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {"ServerApp": {"jpserver_extensions": {"workbench.widgets._snapshot": True}}}
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "workbench.widgets._snapshot"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    serverapp.contents_manager.register_pre_save_hook(pre_save_hook)
    serverapp.log.info("workbench: saved notebooks keep static panels (pre-save hook)")


if __name__ == "__main__":
    print(f"wrote {enable_server_extension()}; restart Jupyter to load it")
