"""A standalone HTML report of a session: length histogram, loss curves, scores, examples.

The page embeds plotly.js once, so it opens offline. All dataset text and model outputs are
escaped (control characters shown as pictures), and each table cell and preformatted block
takes its direction from its own text (``unicode-bidi: plaintext``), so Hebrew and Arabic
read right-to-left on the left-to-right page.

Examples:
    >>> path = write_report(Path("/tmp/wb-doc-report.html"), title="empty")
    >>> "<html" in path.read_text()
    True
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

from workbench._display import answer_html, escape_html, plotly_text
from workbench._io import atomic_write_text
from workbench.evaluation.compare import score_scale

__all__ = ["write_report"]


def _histogram_figure(report: Any):
    import plotly.graph_objects as go

    counts, edges = report.histogram
    centers = [(a + b) / 2 for a, b in pairwise(edges)]
    figure = go.Figure(go.Bar(x=centers, y=list(counts), name="examples"))
    figure.update_layout(
        title="Token length per example (prompt + answer)",
        xaxis_title="tokens",
        yaxis_title="examples",
        height=320,
    )
    return figure


def _loss_figure(history: Sequence[Any]):
    import plotly.graph_objects as go

    train = [r for r in history if _get(r, "kind") == "train" and _get(r, "loss") is not None]
    evals = [r for r in history if _get(r, "kind") == "eval" and _get(r, "eval_loss") is not None]
    figure = go.Figure()
    figure.add_scatter(
        x=[_get(r, "step") for r in train],
        y=[_get(r, "loss") for r in train],
        mode="lines",
        name="train loss",
    )
    figure.add_scatter(
        x=[_get(r, "step") for r in evals],
        y=[_get(r, "eval_loss") for r in evals],
        mode="lines+markers",
        name="eval loss",
    )
    figure.update_layout(title="Loss", xaxis_title="step", yaxis_title="loss", height=320)
    return figure


def _scores_figure(scores: dict):
    """One small chart per score, each on its own axis (perplexity in the hundreds beside
    exact match in [0, 1] would flatten the latter), with its 95% interval and which way is
    better."""
    from plotly.subplots import make_subplots

    names = list(scores)
    titles = [
        f"{plotly_text(name)} "
        f"({'higher' if scores[name].get('higher_is_better', True) else 'lower'} is better)"
        for name in names
    ]
    figure = make_subplots(rows=1, cols=len(names), subplot_titles=titles)
    colours = {"base": "#9ca3af", "tuned": "#2563eb"}
    for col, name in enumerate(names, 1):
        shown = []
        for column in ("base", "tuned"):
            value = scores[name].get(column)
            if value is None:
                continue
            ci = scores[name].get(f"{column}_ci")
            error = None
            shown.append(value)
            if ci is not None and all(v is not None and math.isfinite(v) for v in ci):
                shown += list(ci)
                error = dict(type="data", symmetric=False, array=[ci[1] - value],
                             arrayminus=[value - ci[0]])  # fmt: skip
            figure.add_bar(
                x=[column], y=[value], name=column, marker_color=colours[column],
                error_y=error, showlegend=False, row=1, col=col,
            )  # fmt: skip
        higher = scores[name].get("higher_is_better", True)
        figure.update_yaxes(range=score_scale(name, shown, higher)[1], row=1, col=col)
    figure.update_layout(title="Scores: base vs tuned (95% intervals)", height=340)
    return figure


def _coverage(data_report: Any, history: Sequence[Any], evaluation: Any) -> str:
    """One line on what the page holds, and what it does not."""
    held, missing = [], []
    if data_report is not None:
        held.append(f"data ({data_report.train} train, {data_report.validation} validation rows)")
    else:
        missing.append("data")
    steps = [_get(r, "step") for r in history if _get(r, "kind") == "train"]
    if steps:
        held.append(f"training history (steps {min(steps)}-{max(steps)})")
    else:
        missing.append("training history")
    if evaluation is not None:
        settings = getattr(evaluation, "settings", {}) or {}
        of = f" of {settings['run']}" if settings.get("run") else ""
        if isinstance(settings.get("step"), int) and steps and settings["step"] != max(steps):
            of += f" at step {settings['step']}"  # paused then, or early stopping's best
        columns = ", ".join(getattr(evaluation, "columns", ()) or ())
        measured = evaluation.measured() if hasattr(evaluation, "measured") else ""
        measured = f"; {measured}" if measured else ""
        held.append(f"evaluation{of} ({len(evaluation.rows)} rows; {columns}{measured})")
    else:
        missing.append("evaluation")
    line = "Covers: " + ("; ".join(held) if held else "nothing")
    return line + (f". Not included: {', '.join(missing)}." if missing else ".")


def _get(record: Any, name: str):
    return record.get(name) if isinstance(record, dict) else getattr(record, name, None)


# -- the Examples table: each row's input without the template, answers marked right/wrong --

_SENTINEL = "\x01{}\x01"  # stand-ins for the parts of a conversation; no template trims them
_SPECIAL_TOKENS = {"bos_token": _SENTINEL.format("BOS"), "eos_token": _SENTINEL.format("EOS")}
_SPECIAL = re.compile("\x01(?:BOS|EOS)\x01")


def _literal(text: str) -> str:
    """Regex of template text; bos/eos (whatever the tokenizer's) and a system text match any."""
    parts = re.split("(\x01[A-Z0-9]+\x01)", text)
    out = []
    for part in parts:
        if _SPECIAL.fullmatch(part):
            out.append(".{0,40}?")
        elif part == _SENTINEL.format("SYS"):
            out.append(".*?")
        else:
            out.append(re.escape(part))
    return "".join(out)


def _input_pattern(template: Any, system: bool) -> re.Pattern | None:
    """A regex whose ``input`` group is the last user message of a prompt ``template`` renders.

    The template renders a two-turn conversation of stand-ins: what comes before the first
    user message, between an answer and the next user message, and after the last one (the
    generation prompt) are its markers; earlier turns, if any, are skipped.
    """
    conversation = [
        {"role": "user", "content": _SENTINEL.format("U1")},
        {"role": "assistant", "content": _SENTINEL.format("A1")},
        {"role": "user", "content": _SENTINEL.format("U2")},
    ]
    if system:
        conversation.insert(0, {"role": "system", "content": _SENTINEL.format("SYS")})
    try:
        text = template.render(conversation, add_generation_prompt=True, **_SPECIAL_TOKENS)
    except Exception:  # a template that refuses this conversation shape
        return None
    marks = [text.find(_SENTINEL.format(k)) for k in ("U1", "A1", "U2")]
    if -1 in marks or marks != sorted(marks) or (system and _SENTINEL.format("SYS") not in text):
        return None
    head = text[: marks[0]]
    between = text[marks[1] + len(_SENTINEL.format("A1")) : marks[2]]
    tail = text[marks[2] + len(_SENTINEL.format("U2")) :]
    turn = _literal(between)  # an answer's end and the next user message's start
    earlier = f"(?:.*{turn})?"  # earlier turns of a conversation, skipped
    last = f"(?P<input>(?:(?!{turn}).)*?)"
    return re.compile(f"\\A{_literal(head)}{earlier}{last}{_literal(tail)}\\Z", re.DOTALL)


def _templates(data_report: Any, template: Any) -> list[Any]:
    """Templates to try on the prompts: the one given, the data's, then every built-in."""
    from workbench.data.templates import TEMPLATES, Template

    found = []
    if isinstance(template, Template):
        found.append(template)
    elif isinstance(template, str) and template in TEMPLATES:
        found.append(TEMPLATES[template])
    elif isinstance(template, str) and ("{{" in template or "{%" in template):
        found.append(Template("given", template))
    name = _get(data_report, "template") if data_report is not None else None
    if name in TEMPLATES:
        found.append(TEMPLATES[name])
    found += [t for t in TEMPLATES.values() if t not in found]
    return found


def _user_inputs(prompts: list[str], templates: list[Any]) -> list[str]:
    """Each prompt's last user message, template markers removed (the prompt when none fits)."""
    for template in templates:
        for system in (False, True):
            pattern = _input_pattern(template, system)
            if pattern is None:
                continue
            matches = [pattern.match(p) for p in prompts]
            if prompts and all(matches):
                return [m["input"] for m in matches]
    return list(prompts)


def _split_shared(inputs: list[str]) -> tuple[str, list[str]]:
    """``(instruction shared by every row, the rest of each)``: split at a blank line.

    The alpaca format joins ``instruction`` and ``input`` with a blank line; when every row
    starts with the same paragraphs, those are said once and each row shows what varies.
    """
    if len(inputs) < 2:
        return "", inputs
    common = inputs[0]
    for text in inputs[1:]:
        while not text.startswith(common):
            common = common[:-1]
    cut = common.rfind("\n\n")
    if cut <= 0 or any(not text[cut + 2 :].strip() for text in inputs):
        return "", inputs
    return common[:cut].strip(), [text[cut + 2 :] for text in inputs]


def _mark_score(evaluation: Any, rows: list[Any]) -> str | None:
    """The score that says right or wrong: ``exact_match``, else the first one scored 0 or 1."""
    names = list(getattr(evaluation, "scores", {}) or {})
    for row in rows:
        names += [n for n in (_get(row, "scores") or {}) if n not in names]
    if "exact_match" in names:
        names.insert(0, names.pop(names.index("exact_match")))
    for name in names:
        values = [v for row in rows for v in ((_get(row, "scores") or {}).get(name) or {}).values()]
        if values and all(isinstance(v, int | float) and float(v) in (0.0, 1.0) for v in values):
            return name
    return None


def _answer_cell(text: str, value: Any, higher_is_better: bool) -> str:
    if not isinstance(value, int | float) or math.isnan(value):
        return f"<td>{answer_html(text)}</td>"
    right = (float(value) == 1.0) == higher_is_better
    kind, mark = ("right", "\u2713") if right else ("wrong", "\u2717")
    return (
        f'<td class="{kind}"><span class="mark" title="{kind}">{mark}</span> '
        f"{answer_html(text)}</td>"
    )


def _examples_section(
    evaluation: Any, data_report: Any = None, template: Any = None, limit: int = 50
) -> str:
    """The Examples table: input (no template markers), reference, answers marked right/wrong.

    Examples:
        >>> from workbench.evaluation import EvalRow, Evaluation
        >>> prompt = "<|im_start|>user\\n2+2?<|im_end|>\\n<|im_start|>assistant\\n"
        >>> rows = (EvalRow(0, prompt, "4", {"base": "5", "tuned": "4"},
        ...                 {"exact_match": {"base": 0.0, "tuned": 1.0}}),)
        >>> page = _examples_section(Evaluation({}, rows, {"columns": ["base", "tuned"]}))
        >>> "<td>2+2?</td>" in page, "im_start" in page
        (True, False)
        >>> '<td class="right"><span class="mark" title="right">\u2713</span> 4</td>' in page
        True
    """
    all_rows = list(getattr(evaluation, "rows", ()) or ())
    rows = all_rows[:limit]
    columns = [c for c in getattr(evaluation, "columns", ("base", "tuned")) if c]
    inputs = _user_inputs(
        [_get(r, "prompt") or "" for r in rows], _templates(data_report, template)
    )
    shared, inputs = _split_shared(inputs)
    score = _mark_score(evaluation, rows)
    higher = True
    if score is not None and hasattr(evaluation, "higher_is_better"):
        higher = evaluation.higher_is_better(score)
    parts = ["<h2>Examples</h2>"]
    if score is not None:
        parts.append(
            f"<p class='legend'>\u2713 right, \u2717 wrong by {escape_html(score)} "
            "(its per-row score); unmarked: not scored.</p>"
        )
    else:
        parts.append("<p class='legend'>no right/wrong score (such as exact_match) to mark.</p>")
    if shared:
        parts.append(
            "<p><b>Instruction (the same in every row):</b></p>"
            f"<pre class='instruction'>{escape_html(shared)}</pre>"
        )
    if len(all_rows) > len(rows):
        parts.append(f"<p>the first {len(rows)} of {len(all_rows)} rows</p>")
    header = "".join(f"<th>{escape_html(h)}</th>" for h in ("#", "input", "reference", *columns))
    body = []
    for row, shown in zip(rows, inputs, strict=True):
        outputs = _get(row, "outputs") or {}
        row_scores = ((_get(row, "scores") or {}).get(score) or {}) if score else {}
        cells = [
            f"<td>{escape_html(str(_get(row, 'index')))}</td>",
            f"<td>{escape_html(shown)}</td>",
            f"<td>{escape_html(str(_get(row, 'reference') or ''))}</td>",
            *[_answer_cell(str(outputs.get(c) or ""), row_scores.get(c), higher) for c in columns],
        ]
        body.append(f"<tr>{''.join(cells)}</tr>")
    parts.append(
        f'<table class="workbench examples"><thead><tr>{header}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )
    return "\n".join(parts)


STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1100px; }
table.workbench { border-collapse: collapse; font-size: 12px; }
table.workbench td, table.workbench th { border: 1px solid #ccc; padding: 4px; vertical-align: top;
  white-space: pre-wrap; }
pre { white-space: pre-wrap; margin: 0; }
table.workbench td, pre { unicode-bidi: plaintext; text-align: start; }
table.examples td.right { background: #e6f4e6; }
table.examples td.wrong { background: #fbe7e7; }
table.examples .mark { font-weight: bold; }
td.right .mark { color: #1a7f1a; }
td.wrong .mark { color: #b22222; }
</style>"""


def write_report(
    path: Path,
    title: str,
    data_report: Any = None,
    history: Sequence[Any] = (),
    evaluation: Any = None,
    summary: Sequence[str] = (),
    template: Any = None,
) -> Path:
    """Write the report page atomically and return its path.

    Args:
        path: Where to write the ``.html`` file.
        title: Page heading (escaped).
        data_report: A :class:`~workbench.data.DataReport` (histogram and its text).
        history: Training log records (``kind``, ``step``, ``loss``, ``eval_loss``).
        evaluation: An :class:`~workbench.evaluation.Evaluation` (scores and rows).
        summary: Lines shown at the top (escaped).
        template: The chat template the prompts were rendered with (a
            :class:`~workbench.data.templates.Template`, a built-in name or Jinja text), so
            the Examples table shows each input without it; by default the data report's
            template and the built-ins are tried.

    Examples:
        The title is escaped in both places it appears (``<title>`` and ``<h1>``):

        >>> page = write_report(Path("/tmp/wb-doc-report-page.html"), "<b>x</b>",
        ...                     summary=["a < b"]).read_text()
        >>> page.count("&lt;b&gt;x&lt;/b&gt;"), "<b>x</b>" in page, "<p>a &lt; b</p>" in page
        (2, False, True)
    """
    import plotly.io as pio

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{escape_html(title)}</title>{STYLE}</head><body>",
        f"<h1>{escape_html(title)}</h1>",
    ]
    parts += [f"<p>{escape_html(line)}</p>" for line in summary]
    parts.append(f"<p><i>{escape_html(_coverage(data_report, history, evaluation))}</i></p>")
    figures = []
    if data_report is not None:
        figures.append(_histogram_figure(data_report))
    if history:
        figures.append(_loss_figure(history))
    if evaluation is not None and evaluation.scores:
        figures.append(_scores_figure(evaluation.scores))
    for i, figure in enumerate(figures):
        parts.append(pio.to_html(figure, full_html=False, include_plotlyjs=(i == 0)))
    if data_report is not None:
        parts.append(f"<h2>Data</h2><pre>{escape_html(str(data_report))}</pre>")
    if evaluation is not None:
        parts.append(f"<h2>Evaluation</h2><pre>{escape_html(str(evaluation))}</pre>")
        parts.append(_examples_section(evaluation, data_report, template))
    parts.append("</body></html>")
    return Path(atomic_write_text(path, "\n".join(parts)))
