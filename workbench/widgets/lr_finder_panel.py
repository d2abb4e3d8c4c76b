"""LRFinderPanel: the loss-versus-learning-rate curve of a sweep, the suggested rate marked.

A view of an :class:`~workbench.train.lr_finder.LRFinderResult`. The chart is a small inline
SVG drawn here (:func:`svg_line_chart`: log x axis, raw and smoothed loss, a dashed line and a
dot at the suggested rate), so the same picture is the notebook widget, the static
``text/html`` snapshot (no script, no CDN: it survives nbconvert and GitHub's viewer) and, as
text, the ``text/plain`` fallback. ipywidgets loads only when the widget is asked for. Every
label goes through :func:`~workbench.widgets._html.escape`.

In a notebook, a bare ``s.find_lr()`` (or ``result.panel()``) shows it.

Examples:
    >>> from workbench.train.lr_finder import LRFinderResult, exponential_lrs
    >>> lrs = exponential_lrs(1e-6, 1.0, 7)
    >>> result = LRFinderResult.from_curve(lrs, [5.0, 5.0, 4.6, 3.0, 2.2, 2.0, 9.0], 0.5)
    >>> panel = LRFinderPanel(result)
    >>> print(panel.text().splitlines()[1])
    suggested lr 1.0e-4: the loss falls fastest here; use it as lr= in s.train
    >>> svg = panel.svg()
    >>> svg.startswith("<svg"), 'class="wb-chart-marker"' in svg, "<script" in panel.html()
    (True, True, False)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from workbench._display import text_table
from workbench.train.lr_finder import format_lr
from workbench.widgets._html import escape

__all__ = ["LRFinderPanel", "svg_line_chart"]

RAW_COLOR = "#9aa5b1"
SMOOTH_COLOR = "#1f77b4"
MARKER_COLOR = "#d62728"
TEXT_ROWS = 8  # curve points listed in the text fallback


def _nice_step(span: float, count: int = 5) -> float:
    raw = span / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * power:
            return factor * power
    return 10 * power  # pragma: no cover - the loop always returns


def _linear_ticks(low: float, high: float) -> list[float]:
    step = _nice_step(high - low)
    first = math.ceil(low / step - 1e-9) * step
    count = math.floor((high - first) / step + 1e-9) + 1
    return [round(first + i * step, 12) for i in range(max(count, 0))]


def _log_ticks(low: float, high: float) -> list[float]:
    first, last = math.ceil(math.log10(low) - 1e-9), math.floor(math.log10(high) + 1e-9)
    powers = list(range(first, last + 1))
    stride = max(1, math.ceil(len(powers) / 9))
    return [10.0**k for k in powers[::stride]] or [low, high]


def _tick_label(value: float, log: bool) -> str:
    if log:
        exponent = round(math.log10(value))
        return f"1e{exponent}" if math.isclose(value, 10.0**exponent) else format_lr(value)
    return f"{value:.4g}"


def _range(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    if low == high:
        pad = abs(low) * 0.1 or 1.0
        return low - pad, high + pad
    pad = (high - low) * 0.05
    return low - pad, high + pad


def svg_line_chart(
    x: Sequence[float],
    lines: Sequence[tuple[str, Sequence[float], str]],
    log_x: bool = False,
    marker: tuple[float, float | None, str] | None = None,
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    y_range: tuple[float, float] | None = None,
    width: int = 640,
    height: int = 340,
) -> str:
    """A self-contained SVG line chart (no script, no external file), every label escaped.

    Args:
        x: The x value of each point (all > 0 with ``log_x``).
        lines: ``(label, y values, colour)`` per line; non-finite values break the line, and
            values outside ``y_range`` are drawn at its edge.
        log_x: A logarithmic x axis (ticks at powers of ten).
        marker: ``(x, y or None, label)``: a dashed vertical line at ``x``, a dot at ``y``.
        title: Shown above the plot.
        x_label: Under the x axis.
        y_label: Beside the y axis.
        y_range: The y axis range (default: all finite values, padded 5%).
        width: Pixels.
        height: Pixels.

    Examples:
        >>> svg = svg_line_chart([1e-3, 1e-2, 1e-1], [("<loss>", [3.0, 2.0, 2.5], "#000")],
        ...                      log_x=True, marker=(1e-2, 2.0, "a & b"))
        >>> svg.count("<path"), "&lt;loss&gt;" in svg, "a &amp; b" in svg, ">1e-2<" in svg
        (1, True, True, True)
    """
    left, right, top, bottom = 64, 16, 30, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    scale_x = math.log10 if log_x else float
    xs = [scale_x(v) for v in x]
    x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
    y0, y1 = y_range or _range([v for _, ys, _ in lines for v in ys])

    def px(value: float) -> float:
        return left + (0.5 if x1 == x0 else (scale_x(value) - x0) / (x1 - x0)) * plot_w

    def py(value: float) -> float:
        value = min(max(value, y0), y1)
        return top + (1 - (value - y0) / (y1 - y0)) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="wb-chart" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" style="font-family:sans-serif;font-size:11px;'
        'background:#fff">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left}" y="18" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    lo = 10**x0 if log_x else x0
    hi = 10**x1 if log_x else x1
    for tick in (_log_ticks(lo, hi) if log_x else _linear_ticks(lo, hi)) if xs else []:
        at = px(tick)
        parts.append(
            f'<line x1="{at:.1f}" y1="{top}" x2="{at:.1f}" y2="{top + plot_h}" stroke="#eee"/>'
            f'<text x="{at:.1f}" y="{top + plot_h + 14}" text-anchor="middle" fill="#444">'
            f"{escape(_tick_label(tick, log_x))}</text>"
        )
    for tick in _linear_ticks(y0, y1):
        at = py(tick)
        parts.append(
            f'<line x1="{left}" y1="{at:.1f}" x2="{left + plot_w}" y2="{at:.1f}" stroke="#eee"/>'
            f'<text x="{left - 6}" y="{at + 4:.1f}" text-anchor="end" fill="#444">'
            f"{escape(_tick_label(tick, False))}</text>"
        )
    parts.append(
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
        'stroke="#999"/>'
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
        f'<text x="14" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + plot_h / 2:.1f})">{escape(y_label)}</text>'
    )
    for k, (label, ys, colour) in enumerate(lines):
        path, pen = [], "M"
        for xv, yv in zip(x, ys, strict=False):
            if not math.isfinite(yv):
                pen = "M"
                continue
            path.append(f"{pen}{px(xv):.1f} {py(yv):.1f}")
            pen = "L"
        if path:
            parts.append(
                f'<path class="wb-chart-line" data-label="{escape(label)}" d="{" ".join(path)}" '
                f'fill="none" stroke="{escape(colour)}" stroke-width="{1 + k}"/>'
            )
        legend_x = left + plot_w - 90 * (len(lines) - k)  # above the plot, on the right
        parts.append(
            f'<line x1="{legend_x}" y1="14" x2="{legend_x + 16}" y2="14" '
            f'stroke="{escape(colour)}" stroke-width="{1 + k}"/>'
            f'<text x="{legend_x + 20}" y="18">{escape(label)}</text>'
        )
    if marker is not None and xs:
        parts.append(_marker(marker, px, py, top, plot_h, left + plot_w * 0.6))
    parts.append("</svg>")
    return "".join(parts)


def _marker(marker: tuple, px: Any, py: Any, top: float, plot_h: float, flip_after: float) -> str:
    x, y, label = marker
    at = px(x)
    anchor, shift = ("end", -4) if at > flip_after else ("start", 4)
    dot = (
        f'<circle cx="{at:.1f}" cy="{py(y):.1f}" r="4" fill="{MARKER_COLOR}"/>'
        if y is not None and math.isfinite(y)
        else ""
    )
    return (
        f'<g class="wb-chart-marker" data-x="{x:.6g}">'
        f'<line x1="{at:.1f}" y1="{top}" x2="{at:.1f}" y2="{top + plot_h}" '
        f'stroke="{MARKER_COLOR}" stroke-dasharray="4 3"/>{dot}'
        f'<text x="{at + shift:.1f}" y="{top + 12}" text-anchor="{anchor}" '
        f'fill="{MARKER_COLOR}">{escape(label)}</text></g>'
    )


class LRFinderPanel:
    """The panel of a learning-rate sweep: advice line, chart, alternatives.

    Args:
        result: An :class:`~workbench.train.lr_finder.LRFinderResult`.

    Examples:
        >>> from workbench.train.lr_finder import LRFinderResult
        >>> result = LRFinderResult.from_curve([1e-4, 1e-3, 1e-2], [3.0, 1.0, 0.9], 0.0)
        >>> panel = LRFinderPanel(result)
        >>> panel.result is result
        True
    """

    def __init__(self, result: Any) -> None:
        self.result = result
        self._widget: Any = None

    def _index(self) -> int:
        lrs = self.result.lrs
        return min(range(len(lrs)), key=lambda i: abs(math.log(lrs[i] / self.result.suggested_lr)))

    def svg(self) -> str:
        """The chart: raw and smoothed loss over a log learning-rate axis, the suggestion marked.

        Examples:
            >>> from workbench.train.lr_finder import LRFinderResult
            >>> result = LRFinderResult.from_curve([1e-4, 1e-3, 1e-2], [3.0, 1.0, 0.9], 0.0)
            >>> 'data-x="0.0001"' in LRFinderPanel(result).svg()
            True
        """
        r = self.result
        smoothed = r.smoothed[self._index()]
        low = min(v for v in (*r.losses, *r.smoothed) if math.isfinite(v))
        # A diverged sweep's last point is up to 4x the rest: let it run off the top instead.
        shown = r.smoothed[:-1] if r.diverged_at is not None and len(r.smoothed) > 2 else r.smoothed
        high = max(v for v in shown if math.isfinite(v))
        y_range = None if high <= low else (low - 0.05 * (high - low), high + 0.05 * (high - low))
        return svg_line_chart(
            r.lrs,
            [("loss", r.losses, RAW_COLOR), ("smoothed", r.smoothed, SMOOTH_COLOR)],
            log_x=True,
            marker=(r.suggested_lr, smoothed, f"suggested {format_lr(r.suggested_lr)}"),
            title="Learning-rate finder",
            x_label="learning rate (log scale)",
            y_label="training loss",
            y_range=y_range,
        )

    def _facts(self) -> list[str]:
        r = self.result
        swept = (
            f"{len(r.lrs)} of {r.num_steps} steps, lr {format_lr(r.start_lr)} to "
            f"{format_lr(r.lrs[-1])}"
        )
        if r.diverged_at is not None:
            swept += f" (stopped early: the loss diverged at lr {format_lr(r.diverged_at)})"
        adapters = {
            "temporary": "a temporary adapter, removed after the sweep",
            "existing": "a copy of the model's adapter, restored after the sweep",
            "full": "every weight, restored after the sweep",
        }
        alternatives = ", ".join(f"{k} {format_lr(v)}" for k, v in r.alternatives.items())
        return [
            f"swept {swept}",
            f"other readings: {alternatives}" if alternatives else "",
            f"trained: {adapters.get(r.adapter, r.adapter)}",
        ]

    def text(self) -> str:
        """Plain-text fallback: the advice, the sweep's facts and a few points of the curve.

        Examples:
            >>> from workbench.train.lr_finder import LRFinderResult
            >>> result = LRFinderResult.from_curve([1e-4, 1e-3, 1e-2], [3.0, 1.0, 0.9], 0.0)
            >>> print(LRFinderPanel(result).text())  # doctest: +NORMALIZE_WHITESPACE
            Learning-rate finder
            suggested lr 1.0e-4: the loss falls fastest here; use it as lr= in s.train
            swept 3 of 3 steps, lr 1.0e-4 to 1.0e-2
            other readings: minimum/10 1.0e-3, valley 1.0e-4
            trained: a temporary adapter, removed after the sweep
            lr      loss    smoothed
            1.0e-4  3.0000  3.0000 <- suggested
            1.0e-3  1.0000  1.0000
            1.0e-2  0.9000  0.9000
        """
        r = self.result
        count = len(r.lrs)
        chosen = self._index()
        rows = sorted({round(i * (count - 1) / (TEXT_ROWS - 1)) for i in range(TEXT_ROWS)})
        rows = sorted({*rows, chosen}) if count > 1 else [0]
        table = text_table(
            [
                (
                    format_lr(r.lrs[i]),
                    f"{r.losses[i]:.4f}",
                    f"{r.smoothed[i]:.4f}" + (" <- suggested" if i == chosen else ""),
                )
                for i in rows
            ],
            header=("lr", "loss", "smoothed"),
        )
        lines = ["Learning-rate finder", r.advice, *[f for f in self._facts() if f], table]
        return "\n".join(lines)

    def html(self) -> str:
        """The static snapshot: escaped advice and facts around the inline SVG chart.

        Examples:
            >>> from workbench.train.lr_finder import LRFinderResult
            >>> result = LRFinderResult.from_curve([1e-4, 1e-3, 1e-2], [3.0, 1.0, 0.9], 0.0)
            >>> html = LRFinderPanel(result).html()
            >>> html.count("<svg"), "suggested lr 1.0e-4" in html, "<script" in html
            (1, True, False)
        """
        facts = "<br>".join(escape(f) for f in self._facts() if f)
        return (
            '<div class="wb-lr-finder" style="font-family:sans-serif">'
            f'<div class="wb-lr-advice" style="font-weight:bold;margin:4px 0">'
            f"{escape(self.result.advice)}</div>{self.svg()}"
            f'<div class="wb-lr-facts" style="color:#555;font-size:90%">{facts}</div></div>'
        )

    @property
    def widget(self) -> Any:
        """The ipywidgets view (an ``HTML`` widget of :meth:`html`), built on first use.

        Examples:
            >>> from workbench.train.lr_finder import LRFinderResult
            >>> result = LRFinderResult.from_curve([1e-4, 1e-3, 1e-2], [3.0, 1.0, 0.9], 0.0)
            >>> panel = LRFinderPanel(result)
            >>> type(panel.widget).__name__, panel.widget is panel.widget
            ('HTML', True)
        """
        if self._widget is None:
            import ipywidgets as w

            self._widget = w.HTML(value=self.html())
        return self._widget

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = self.text()
        bundle["text/html"] = self.html()
        return bundle

    def __str__(self) -> str:
        return self.text()
