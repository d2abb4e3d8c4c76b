"""Put several training runs side by side: loss curves and evaluation scores.

Each run folder is read as written: ``history.jsonl`` (records with ``step``, ``loss``,
``eval_loss``), ``run.json`` (its settings) and every saved evaluation below it (a folder
with ``scores.json``); the latest evaluation of a run's own weights gives its scores (not a
checkpoint sweep's), with how many rows it scored, which data, and the adapter strength
when an evaluation had it at another than 1. A damaged evaluation of the session is left
out with a warning naming its file. Only what the comparison shows is read: an evaluation's
scores and settings; its rows (``rows.jsonl``, tens of MB for a large evaluation) are read
when something asks for them (``run.latest.rows``), and a damaged one is refused then.

A session folder (``session.json``) stands for its runs; a folder that is no run itself but
holds session or run folders stands for all of theirs, a session's runs named
``<session>/<run>`` (its ``evaluations/`` are not mixed into one run).

In a notebook, a bare ``cmp`` shows the figure and the table. The figure's output also
carries the same charts as SVG images (:meth:`Comparison.static_html`), which is what a saved,
reopened or converted notebook shows, as it does for the other panels
(:mod:`workbench.widgets._snapshot`).

Examples:
    >>> import json
    >>> for name, losses in [("lr-1e-4", [2.0, 1.5]), ("lr-5e-4", [2.0, 1.1])]:
    ...     folder = Path("/tmp/wb-doc-compare") / name
    ...     folder.mkdir(parents=True, exist_ok=True)
    ...     lines = [json.dumps({"step": s, "loss": v}) for s, v in enumerate(losses, 1)]
    ...     _ = (folder / "history.jsonl").write_text("\\n".join(lines) + "\\n")
    >>> cmp = compare(["/tmp/wb-doc-compare/lr-1e-4", "/tmp/wb-doc-compare/lr-5e-4"])
    >>> print(cmp)
    Comparison of 2 runs
    run      steps  final_loss  final_eval_loss  best_eval_loss
    lr-1e-4  2      1.5         -                -
    lr-5e-4  2      1.1         -                -
    >>> [r["final_loss"] for r in cmp.records()]
    [1.5, 1.1]

    The folder that holds them stands for both (not for one run with their evaluations):

    >>> [run.name for run in compare("/tmp/wb-doc-compare").runs]
    ['lr-1e-4', 'lr-5e-4']
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench._display import html_table, plotly_text, text_table
from workbench._io import json_lines, read_jsonl
from workbench.errors import EvaluationError, WorkbenchWarning
from workbench.evaluation.results import Evaluation
from workbench.widgets._html import escape
from workbench.widgets.svg_chart import PALETTE, bar_chart, line_chart, svg_img

__all__ = ["Comparison", "RunResults", "compare", "format_score", "score_scale"]

SCORE_COLUMNS = 3  # score charts per row: each score gets its own subplot and y axis


@dataclass(frozen=True)
class RunResults:
    """What one run folder holds: its history, settings and evaluations.

    Examples:
        >>> RunResults("a", Path("a"), ({"step": 1, "loss": 2.0},), {}, ()).final("loss")
        2.0
    """

    name: str
    path: Path
    history: tuple[dict, ...]
    settings: dict
    evaluations: tuple[Evaluation, ...]

    def curve(self, key: str) -> tuple[list[int], list[float]]:
        """Steps and values of ``key`` (``"loss"`` or ``"eval_loss"``) where logged.

        Examples:
            >>> RunResults("a", Path("a"), ({"step": 1, "loss": 2.0},), {}, ()).curve("loss")
            ([1], [2.0])
        """
        points = [
            (r["step"], float(r[key]))
            for r in self.history
            if r.get(key) is not None and "step" in r
        ]
        return [s for s, _ in points], [v for _, v in points]

    def final(self, key: str) -> float:
        """The last logged value of ``key`` (``nan`` if never logged).

        Examples:
            >>> RunResults("a", Path("a"), (), {}, ()).final("eval_loss")
            nan
        """
        values = self.curve(key)[1]
        return values[-1] if values else float("nan")

    @property
    def latest(self) -> Evaluation | None:
        """The most recent evaluation, or ``None``.

        Examples:
            >>> RunResults("a", Path("a"), (), {}, ()).latest is None
            True
        """
        return self.evaluations[-1] if self.evaluations else None


def score_scale(
    name: str, values: Sequence[float], higher_is_better: bool = True
) -> tuple[str, list[float]]:
    """A score's own chart scale: its title (saying which way is better) and a y range.

    Scores differ by orders of magnitude (perplexity ~1500, exact match 0-1), so every chart
    gives each score its own y axis: from 0 (or the lowest value, if negative) to a little
    above the highest value or interval bound, room left for the value labels.

    Examples:
        >>> score_scale("perplexity", [1580.0, 1200.0, float("nan")], higher_is_better=False)
        ('perplexity ↓ lower is better', [0.0, 1817.0])
        >>> score_scale("exact_match", [0.5, 0.25])
        ('exact_match ↑ higher is better', [0.0, 0.575])
        >>> score_scale("rouge1", [0.0])[1]  # nothing above 0: a unit axis
        [0.0, 1.0]
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    low, high = min([0.0, *finite]), max([0.0, *finite])
    top = round(high * 1.15, 12) if high > 0 else (0.0 if low < 0 else 1.0)
    bottom = round(low * 1.15, 12) if low < 0 else 0.0
    way = "↑ higher is better" if higher_is_better else "↓ lower is better"
    return f"{name} {way}", [bottom, top]


def format_score(value: float) -> str:
    """A score as a chart label: 3 significant digits, whole numbers from 1,000 up.

    Examples:
        >>> [format_score(v) for v in (0.5, 1 / 3, 1580.4, 0.0, float("nan"))]
        ['0.5', '0.333', '1,580', '0', '-']
    """
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _evaluations(
    folder: Path, saved_in: Callable[[Path], list[Evaluation]]
) -> tuple[Evaluation, ...]:
    """The evaluations saved in a run folder, and those ``Session.evaluate`` saved in its
    session folder's ``evaluations/`` naming this run, oldest first; a copy saved in two
    places counts once."""
    found = _saved_in(folder)
    if folder.parent.name == "runs":
        others = saved_in(folder.parent.parent / "evaluations")
        found += [e for e in others if e.settings.get("run") == folder.name]
    # a checkpoint sweep's evaluations are of earlier weights, not the run's own
    found = [e for e in found if "checkpoint_step" not in e.settings]
    unique = {json.dumps(e.settings, sort_keys=True, default=str): e for e in found}
    ordered = sorted(
        unique.values(), key=lambda e: (str(e.settings.get("created", "")), str(e.path))
    )
    return tuple(ordered)


def _saved_in(folder: Path, skip_damaged: bool = False) -> list[Evaluation]:
    """Evaluations saved under ``folder``; with ``skip_damaged``, those that load (the
    session's other evaluations are not the run's own to refuse compare over)."""
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.rglob("scores.json")):
        hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)
        if hidden or not (path.parent / "settings.json").is_file():
            continue  # a save's staging folder (a killed one's too) is no evaluation yet
        try:
            found.append(Evaluation.load(path.parent, lazy=True))  # rows when asked for
        except EvaluationError as err:
            if not skip_damaged:
                raise
            warnings.warn(f"left out of the comparison: {err}", WorkbenchWarning, stacklevel=4)
    return found


def _run_folders(
    folder: Path, saved_in: Callable[[Path], list[Evaluation]]
) -> list[tuple[Path, str]]:
    """The runs ``folder`` stands for, each with the name the comparison gives it: a session
    folder's runs; a folder holding session or run folders (and no run itself), theirs, a
    session's named ``<session>/<run>``; else ``folder`` itself (a run, or saved evaluations).
    """
    if _is_session(folder):
        runs = _session_runs(folder)
        if not runs:
            raise EvaluationError(f"session folder {folder} has no training runs to compare yet")
        _warn_of_evaluations_naming_no_run(saved_in(folder / "evaluations"), folder)
        return [(run, run.name) for run in runs]
    held = [] if _is_run(folder) or not folder.is_dir() else _held_runs(folder, saved_in)
    return held or [(folder, folder.name)]


def _is_run(folder: Path) -> bool:
    return (folder / "history.jsonl").is_file() or (folder / "run.json").is_file()


def _is_session(folder: Path) -> bool:
    return (folder / "session.json").is_file() and not (folder / "history.jsonl").is_file()


def _session_runs(session: Path) -> list[Path]:
    return sorted(p for p in (session / "runs").glob("*") if (p / "run.json").is_file())


def _held_runs(
    folder: Path, saved_in: Callable[[Path], list[Evaluation]]
) -> list[tuple[Path, str]]:
    """The runs of the session and run folders directly in ``folder`` (``[]``: none there).

    Read as one run, such a folder mixed every session's evaluations and showed whichever
    was saved last under the folder's own name. A session without runs yet, and saved
    evaluations outside any run, are left out with a warning naming them.
    """
    children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    found, idle, loose = [], [], []
    for child in children:
        if _is_session(child):
            runs = _session_runs(child)
            if not runs:
                idle.append(child.name)
                continue
            _warn_of_evaluations_naming_no_run(saved_in(child / "evaluations"), child)
            found += [(run, f"{child.name}/{run.name}") for run in runs]
        elif _is_run(child):
            found.append((child, child.name))
        elif next(child.rglob("scores.json"), None) is not None:
            loose.append(child.name)
    if not found:
        if idle:
            msg = f"the session folders in {folder} ({', '.join(idle)}) have no training runs yet"
            raise EvaluationError(msg)
        return []
    for names, why in ((idle, "session folders without runs yet"), (loose, "not runs")):
        if names:
            said = f"left out of the comparison of {folder}: {', '.join(names)} ({why})"
            warnings.warn(said, WorkbenchWarning, stacklevel=4)
    return found


def _warn_of_evaluations_naming_no_run(saved: list[Evaluation], session: Path) -> None:
    """Say which of a session's evaluations compare cannot place: those an earlier version
    saved without the run they evaluated (a ``run`` setting), left out rather than guessed."""
    unplaced = [
        e.path for e in saved if "run" not in e.settings and "checkpoint_step" not in e.settings
    ]
    if unplaced:
        names = ", ".join(str(Path(p).relative_to(session)) for p in unplaced)
        msg = (
            f"left out of the comparison: {names} (saved by an earlier version of the "
            "workbench, which did not record which run, if any, trained the weights it "
            "evaluated); Evaluation.load(folder) shows each, and s.evaluate() again scores "
            "the run the session holds"
        )
        warnings.warn(msg, WorkbenchWarning, stacklevel=4)


def _run_settings(path: Path) -> dict:
    """A run's ``run.json``, or an error naming it when it is damaged."""
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # JSON and UTF-8 errors are ValueErrors
        raise EvaluationError(f"{path} is not a readable run file: {err}.") from err
    if not isinstance(settings, dict):
        raise EvaluationError(f"{path} is not a readable run file: it holds no JSON object.")
    return settings


def _unplottable(row: dict) -> str | None:
    """Why a history record cannot be drawn (a step or loss that is not a number), or ``None``."""
    for key in ("step", "loss", "eval_loss"):
        value = row.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"{key!r} is {value!r}, not a number"[:100]
    return None


def _history(path: Path) -> tuple[dict, ...]:
    """A run's ``history.jsonl``; records whose step or loss is not a number (damage) are
    left out with a warning naming the file and line, as lines that are not JSON are."""
    rows = read_jsonl(path)
    kept = tuple(row for row in rows if _unplottable(row) is None)
    if len(kept) < len(rows):
        lines = json_lines(path.read_text(encoding="utf-8", errors="replace"))
        damaged = [(n, why) for n, line in enumerate(lines, 1) if (why := _line_unplottable(line))]
        numbers = ", ".join(str(n) for n, _ in damaged)
        said = "; ".join(f"line {n}: {why}" for n, why in damaged[:3])
        msg = f"{path}: skipped line(s) {numbers}, whose step or loss is no number ({said})."
        warnings.warn(msg, WorkbenchWarning, stacklevel=3)
    return kept


def _line_unplottable(line: str) -> str | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None  # not JSON: read_jsonl said so
    return _unplottable(row) if isinstance(row, dict) else None


def _read_run(
    path: str | Path, saved_in: Callable[[Path], list[Evaluation]], name: str
) -> RunResults:
    folder = Path(path)
    if not folder.is_dir():
        raise EvaluationError(f"run folder {folder} does not exist")
    history = _history(folder / "history.jsonl")
    settings: dict = {}
    if (folder / "run.json").is_file():
        settings = _run_settings(folder / "run.json")
    evaluations = _evaluations(folder, saved_in)
    if not history and not evaluations:
        msg = f"run folder {folder} has no history.jsonl and no saved evaluation to compare"
        raise EvaluationError(msg)
    return RunResults(name, folder, history, settings, evaluations)


# The settings an evaluation's scores depend on, with the words a note names them by.
_MEASURED_ALIKE = (
    ("rows_fingerprint", "the rows (prompts and references)"),
    ("data", "the data"),
    ("rows", "the number of rows"),
    ("max_new_tokens", "max_new_tokens"),
    ("generation", "the generation settings"),
    ("metric_options", "the metric options"),
    ("stop_strings", "the stop strings"),
    ("base", "the base column's model"),
)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Comparison:
    """Several runs side by side; ``records()`` for code, ``figure()`` for the eye.

    Examples:
        >>> run = RunResults("a", Path("runs/a"), ({"step": 1, "loss": 2.0},), {}, ())
        >>> Comparison((run,)).records()[0]["final_loss"]
        2.0
    """

    runs: tuple[RunResults, ...]

    def score_names(self) -> list[str]:
        """Every score any run's latest evaluation has, in first-seen order.

        Examples:
            >>> Comparison(()).score_names()
            []
        """
        names: dict[str, None] = {}
        for run in self.runs:
            if run.latest is not None:
                names.update(dict.fromkeys(run.latest.scores))
        return list(names)

    def records(self) -> list[dict[str, Any]]:
        """One dict per run: final losses, best eval loss, and each score (base and tuned).

        Examples:
            >>> Comparison(()).records()
            []
        """
        records = []
        for run in self.runs:
            evals, steps = run.curve("eval_loss")[1], run.curve("loss")[0]
            record = {
                "run": run.name,
                "path": str(run.path),
                "steps": steps[-1] if steps else None,
                "final_loss": run.final("loss"),
                "final_eval_loss": run.final("eval_loss"),
                "best_eval_loss": min(evals) if evals else float("nan"),
            }
            latest = run.latest.settings if run.latest is not None else {}
            if self._evaluated():
                record["eval_rows"] = latest.get("rows")
                record["eval_data"] = latest.get("data")
            if self._scaled():
                record["adapter_strength"] = latest.get("adapter_strength", 1)
            if self._measured_earlier():
                record["eval_step"] = latest.get("step", record["steps"])
            scores = run.latest.scores if run.latest is not None else {}
            for name in self.score_names():
                for column in ("base", "tuned"):
                    record[f"{name}_{column}"] = scores.get(name, {}).get(column, float("nan"))
            records.append(record)
        return records

    def table(self) -> tuple[list[str], list[list[str]]]:
        """Header and text rows of :meth:`records` (without the path).

        Examples:
            >>> Comparison(()).table()[0][:2]
            ['run', 'steps']
        """
        records = self.records()
        header = ["run", "steps", "final_loss", "final_eval_loss", "best_eval_loss"]
        header += ["eval_rows", "eval_data"] if self._evaluated() else []
        header += ["adapter_strength"] if self._scaled() else []
        header += ["eval_step"] if self._measured_earlier() else []
        header += [f"{n}_{c}" for n in self.score_names() for c in ("base", "tuned")]
        return header, [[_fmt(r.get(h)) for h in header] for r in records]

    def unlike(self) -> list[str]:
        """How the runs' latest evaluations were not measured alike, one line per setting
        that differs (the rows, their source, answer length, generation settings, metric
        options, stop strings, the base column's model); ``[]`` when they were.

        Scores measured otherwise (other rows, longer answers) stood side by side in one
        column with nothing said.

        Examples:
            >>> def run(name, **settings):
            ...     ev = Evaluation({}, (), {"data": "validation split", **settings})
            ...     return RunResults(name, Path(name), (), {}, (ev,))
            >>> runs = (run("a", max_new_tokens=2), run("b", max_new_tokens=2),
            ...         run("c", max_new_tokens=16))
            >>> Comparison(runs).unlike()
            ['max_new_tokens differs: c 16; a, b 2']
        """
        latest = {run.name: run.latest.settings for run in self.runs if run.latest is not None}
        prints = [settings.get("rows_fingerprint") for settings in latest.values()]
        same_rows = None not in prints and len(set(prints)) == 1  # however they were given
        lines = []
        for key, label in _MEASURED_ALIKE:
            if same_rows and key in ("data", "rows"):
                continue
            given = {name: settings.get(key) for name, settings in latest.items()}
            if key == "rows_fingerprint":  # older evaluations kept none: compare the rest
                given = {name: value for name, value in given.items() if value is not None}
            groups: dict[str, list[str]] = {}
            for name, value in given.items():
                groups.setdefault(json.dumps(value, sort_keys=True, default=str), []).append(name)
            if len(groups) > 1:
                ordered = sorted(groups.items(), key=lambda group: len(group[1]))
                said = "; ".join(
                    f"{', '.join(names[:4])}{' ...' if len(names) > 4 else ''} {value}"
                    for value, names in ordered
                )
                lines.append(f"{label} differs: {said}")
        return lines

    def _evaluated(self) -> bool:
        return any(run.latest is not None for run in self.runs)

    def _scaled(self) -> bool:
        """Whether a run's latest evaluation had its adapter at another strength than 1."""
        return any(
            run.latest is not None and "adapter_strength" in run.latest.settings
            for run in self.runs
        )

    def _measured_earlier(self) -> bool:
        """Whether a run's latest evaluation measured other weights than its last step's (it
        was paused then, or early stopping kept an earlier step)."""
        for run in self.runs:
            step = run.latest.settings.get("step") if run.latest is not None else None
            steps = run.curve("loss")[0]
            if step is not None and steps and step != steps[-1]:
                return True
        return False

    def __str__(self) -> str:
        header, rows = self.table()
        text = f"Comparison of {len(self.runs)} runs\n" + text_table(rows, header=header)
        return text + "".join(f"\nNot measured alike: {line}" for line in self.unlike())

    def _repr_html_(self) -> str:
        header, rows = self.table()
        table = html_table(rows, header=header, title=f"Comparison of {len(self.runs)} runs")
        notes = "".join(
            f'<p style="color:#b00;">Not measured alike: {escape(line)}</p>'
            for line in self.unlike()
        )
        return table + notes

    def figure(self) -> Any:
        """A plotly figure: loss curves (solid train, dotted eval), then one chart per score.

        Each score has its own subplot and y axis (:func:`score_scale`), a bar per run (its
        latest evaluation's tuned value), titled with which way is better.

        Examples:
            >>> run = RunResults("a", Path("runs/a"), ({"step": 1, "loss": 2.0},), {}, ())
            >>> [trace.name for trace in Comparison((run,)).figure().data]
            ['a loss']
        """
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        names = self.score_names()
        cols = max(1, min(len(names), SCORE_COLUMNS))
        rows = 1 + math.ceil(len(names) / cols)
        scales = [score_scale(n, self._score_values(n), self._higher_is_better(n)) for n in names]
        fig = make_subplots(
            rows=rows,
            cols=cols,
            specs=[[{"colspan": cols}] + [None] * (cols - 1)]
            + [[{}] * cols for _ in range(rows - 1)],
            subplot_titles=["loss ↓ lower is better", *[plotly_text(t) for t, _ in scales]],
            vertical_spacing=min(0.3, 70 / (300 + 240 * (rows - 1))),  # ~70px for titles
            horizontal_spacing=0.08,
        )
        for k, run in enumerate(self.runs):
            color = f"hsl({(k * 67) % 360},60%,45%)"
            for key, dash in (("loss", "solid"), ("eval_loss", "dot")):
                steps, values = self.runs[k].curve(key)
                if steps:
                    fig.add_trace(
                        go.Scatter(
                            x=steps,
                            y=values,
                            name=plotly_text(f"{run.name} {key}"),
                            line=dict(color=color, dash=dash),
                        ),
                        row=1,
                        col=1,
                    )
            scores = run.latest.scores if run.latest is not None else {}
            for i, name in enumerate(names):
                if name not in scores:
                    continue
                value = scores[name].get("tuned", float("nan"))
                fig.add_trace(
                    go.Bar(
                        x=[plotly_text(run.name)],
                        y=[value],
                        name=plotly_text(f"{run.name} scores"),
                        legendgroup=f"{run.name} scores",
                        showlegend=i == 0,
                        marker_color=color,
                        text=[format_score(value)],
                        textposition="outside",
                        cliponaxis=False,
                    ),
                    row=2 + i // cols,
                    col=1 + i % cols,
                )
        for i, (_title, y_range) in enumerate(scales):
            fig.update_yaxes(range=y_range, row=2 + i // cols, col=1 + i % cols)
        fig.update_annotations(font_size=12)
        fig.update_layout(
            height=300 + 240 * (rows - 1),
            barmode="relative",  # one bar per run and category: no empty group slots
            margin=dict(l=40, r=10, t=40, b=40),
        )
        fig.update_xaxes(title_text="step", row=1, col=1)
        return fig

    def static_html(self) -> str:
        """The figure as self-contained SVG images: the loss curves, then a chart per score.

        Escaped, no script and no URL: what a notebook shows once the kernel is gone.

        Examples:
            >>> run = RunResults("a<b>", Path("runs/a"), ({"step": 1, "loss": 2.0},), {}, ())
            >>> html = Comparison((run,)).static_html()
            >>> html.count("<img "), 'alt="a&lt;b&gt;: final loss 2"' in html, "a<b>" in html
            (1, True, False)
        """
        series = []
        for k, run in enumerate(self.runs):
            color = PALETTE[k % len(PALETTE)]
            for key, dash in (("loss", False), ("eval_loss", True)):
                steps, values = run.curve(key)
                if steps:
                    series.append(
                        {
                            "name": f"{run.name} {key}",
                            "x": steps,
                            "y": values,
                            "color": color,
                            "dash": dash,
                        }
                    )
        alt = "; ".join(f"{run.name}: final loss {_fmt(run.final('loss'))}" for run in self.runs)
        images = [svg_img(line_chart(series, "loss (lower is better)", "step", "loss"), alt)]
        for name in self.score_names():
            title, _ = score_scale(name, self._score_values(name), self._higher_is_better(name))
            shown = [r for r in self.runs if r.latest is not None and name in r.latest.scores]
            entries = [r.latest.scores[name] for r in shown]
            intervals = [e.get("tuned_ci") or (math.nan, math.nan) for e in entries]
            tuned = {
                "name": "tuned",
                "values": [e.get("tuned", math.nan) for e in entries],
                "low": [lo for lo, _ in intervals],
                "high": [hi for _, hi in intervals],
            }
            words = ", ".join(
                f"{r.name} {_fmt(v)}" for r, v in zip(shown, tuned["values"], strict=True)
            )
            chart = bar_chart([r.name for r in shown], [tuned], title, width=360, height=220)
            images.append(svg_img(chart, f"{name}: {words}"))
        charts = "".join(f'<div class="wb-snapshot-chart">{image}</div>' for image in images)
        head = escape(f"Comparison of {len(self.runs)} runs")
        return (
            f'<div class="wb-snapshot wb-snapshot-compare"><div><b>{head}</b></div>{charts}</div>'
        )

    def _score_values(self, name: str) -> list[float]:
        return [
            r.latest.scores[name].get("tuned", float("nan"))
            for r in self.runs
            if r.latest is not None and name in r.latest.scores
        ]

    def _higher_is_better(self, name: str) -> bool:
        for run in self.runs:
            if run.latest is not None and name in run.latest.scores:
                return run.latest.higher_is_better(name)
        return True

    def _ipython_display_(self) -> None:
        import plotly.graph_objects as go
        from IPython.display import HTML, display

        from workbench.widgets._snapshot import MARKER

        live = go.FigureWidget(self.figure())
        bundle = {
            **live._repr_mimebundle_(),
            "text/html": self.static_html(),
            "text/plain": f"Comparison of {len(self.runs)} runs: loss curves and scores",
        }
        # Marked as a panel's output: a saving server keeps the static charts and drops the
        # figure's widget view and its ~5 MB of widget state (see widgets/_snapshot).
        marker = {"panel": "comparison", "snapshot": None, "model_id": live.model_id}
        display(bundle, raw=True, metadata={MARKER: marker})
        display(HTML(self._repr_html_()))


def compare(run_dirs: Sequence[str | Path]) -> Comparison:
    """Read several run folders for a side-by-side view of losses and scores.

    Args:
        run_dirs: Training run folders (each with ``history.jsonl`` and/or saved
            evaluations); a session folder stands for all of its runs, and a folder that
            holds session or run folders (and is no run itself) for all of theirs: a
            session's runs are named ``<session>/<run>`` (``alice/run-001``).

    Returns:
        A :class:`Comparison`.

    Raises:
        EvaluationError: No folders given, a folder missing, or one with nothing to compare.
            (A damaged ``rows.jsonl`` is refused only when its rows are asked for: the
            comparison reads scores and settings.)

    Examples:
        >>> compare([])
        Traceback (most recent call last):
        workbench.errors.EvaluationError: compare([...]): give at least one run folder
    """
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    if not run_dirs:
        raise EvaluationError("compare([...]): give at least one run folder")
    # a session folder's evaluations/ is read once, however many of its runs are compared
    saved_in = functools.cache(lambda folder: _saved_in(folder, skip_damaged=True))
    runs = [
        _read_run(path, saved_in, name)
        for given in run_dirs
        for path, name in _run_folders(Path(given), saved_in)
    ]
    names = _distinct_names([r.path for r in runs], [r.name for r in runs])
    runs = [
        RunResults(n, r.path, r.history, r.settings, r.evaluations)
        for n, r in zip(names, runs, strict=True)
    ]
    comparison = Comparison(tuple(runs))
    for line in comparison.unlike():
        msg = f"the runs' latest evaluations were not measured alike: {line}"
        warnings.warn(msg, WorkbenchWarning, stacklevel=2)
    return comparison


def _distinct_names(paths: list[Path], names: list[str]) -> list[str]:
    """``names``, where two are alike (``run-001`` of two sessions) each named by as many of
    its path's last folders as tell them apart (``alice/runs/run-001``)."""
    depth, deepest = 1, max(len(p.parts) for p in paths)
    while len(set(names)) != len(names) and depth < deepest:
        depth += 1
        alike = {n for n in names if names.count(n) > 1}
        names = [
            str(Path(*p.parts[-depth:])) if n in alike else n
            for p, n in zip(paths, names, strict=True)
        ]
    return names
