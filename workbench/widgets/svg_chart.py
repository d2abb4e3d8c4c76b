"""SVG charts: line, bar and histogram, each one self-contained ``<svg>`` string.

The one chart writer of the workbench's static pictures: the training monitor's, evaluation's
and data inspector's snapshots (shown through :func:`svg_img`, an ``<img>`` with a data URI,
which JupyterLab's sanitizer keeps) and the learning-rate finder's panel (inline). A chart has
no script and no external URL, and every piece of text in it (title, axis labels, series
names, marker labels, colours) is escaped.

:func:`line_chart` draws lines over a linear or logarithmic x axis (ticks at powers of ten,
labelled ``1e-2``), with markers (a dashed vertical line, an optional dot and a label), dashed
or faint series, dots at the points, a legend, and a y range that clamps what lies outside it.
A non-finite value breaks its line (``gaps="break"``) or is left out (``gaps="skip"``); a
series longer than :data:`MAX_POINTS` is thinned to each slice's lowest and highest points
(a spike stays visible) and its ends.

Examples:
    >>> svg = line_chart(
    ...     [{"name": "<loss>", "x": [1e-3, 1e-2, 1e-1, 1.0], "y": [3.0, 2.0, float("nan"), 9.0]}],
    ...     log_x=True, markers=[{"x": 1e-2, "y": 2.0, "label": "a & b"}], title="sweep")
    >>> ">1e-2<" in svg, "&lt;loss&gt;" in svg, "a &amp; b" in svg, "<script" in svg
    (True, True, True, False)
    >>> svg_img(svg, "a sweep").startswith('<img src="data:image/svg+xml;base64,')
    True
"""

from __future__ import annotations

import base64
import itertools
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from workbench.widgets._html import escape, shorten

__all__ = [
    "bar_chart",
    "finite_points",
    "histogram_chart",
    "line_chart",
    "svg_img",
    "thinned_indices",
]

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
MAX_POINTS = 400  # points per drawn series (longer ones keep each slice's extremes and the ends)
MAX_DOTS = 120  # dots per series with ``dots`` (the last ones)
MARKER_COLOR = "#888"
LINE_WIDTH = 1.6


# -- ticks and ranges ------------------------------------------------------------------------
def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering ``lo..hi``."""
    raw = (hi - lo) / max(n, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step - 1e-9)
    ticks = []
    for k in range(first, first + 2 * n + 2):
        value = round(k * step, 12)
        if value > hi + step * 1e-9:
            break
        ticks.append(value)
    return ticks


def _log_ticks(lo: float, hi: float) -> list[tuple[float, str]]:
    """``(value, label)`` ticks of a log axis from ``10**lo`` to ``10**hi``.

    Powers of ten (at most 9 of them, labelled ``1e-2``); over less than two decades 1, 2 and
    5 times them (``2e-3``); over less than a factor of about 2.5, round linear values.
    """
    first, last = math.ceil(lo - 1e-9), math.floor(hi + 1e-9)
    powers = list(range(first, last + 1))
    if len(powers) >= 2:
        stride = math.ceil(len(powers) / 9)
        return [(10.0**k, f"1e{k}") for k in powers[::stride]]
    steps = [
        (m * 10.0**k, f"{m}e{k}")
        for k in range(first - 1, last + 1)
        for m in (1, 2, 5)
        if lo - 1e-9 <= k + math.log10(m) <= hi + 1e-9
    ]
    if len(steps) >= 2:
        return steps
    return [(v, _tick_label(v)) for v in _ticks(10**lo, 10**hi) if v > 0]


def _tick_label(value: float) -> str:
    return f"{value:.4g}"


def _range(values: list[float], floor: float | None = None) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if floor is not None:
        lo = min(lo, floor)
    if hi - lo < 1e-12:
        pad = abs(hi) * 0.1 or 1.0
        return (lo if floor is not None else lo - pad), hi + pad
    pad = (hi - lo) * 0.05
    return (lo if floor is not None and lo == floor else lo - pad), hi + pad


# -- the frame every chart draws in ----------------------------------------------------------
class _Frame:
    """Plot area of a chart: data to pixel coordinates, axes, ticks and labels."""

    def __init__(self, width: int, height: int, legend: bool) -> None:
        self.width, self.height = width, height
        self.left, self.right = 58, width - 14
        self.top, self.bottom = (44 if legend else 28), height - 40
        self.log_x = False

    def scale(self, xr: tuple[float, float], yr: tuple[float, float], log_x: bool = False) -> None:
        """The axes' ends: ``xr`` in axis units (``log10`` of the values on a log axis)."""
        self.xr, self.yr, self.log_x = xr, yr, log_x

    def x(self, value: float) -> float:
        lo, hi = self.xr
        at = math.log10(value) if self.log_x else value
        return self.left + (at - lo) / (hi - lo) * (self.right - self.left)

    def y(self, value: float) -> float:
        lo, hi = self.yr
        value = min(max(value, lo), hi)  # beyond the range: drawn at its edge
        return self.bottom - (value - lo) / (hi - lo) * (self.bottom - self.top)

    def axes(self, x_label: str, y_label: str, x_ticks: bool = True) -> list[str]:
        parts = [
            f'<rect x="{self.left}" y="{self.top}" width="{self.right - self.left}" '
            f'height="{self.bottom - self.top}" fill="none" stroke="#ccc"/>'
        ]
        for value in _ticks(*self.yr):
            py = self.y(value)
            parts.append(
                f'<line x1="{self.left}" x2="{self.right}" y1="{py:.1f}" y2="{py:.1f}" '
                f'stroke="#eee"/><text x="{self.left - 5}" y="{py + 4:.1f}" '
                f'text-anchor="end">{escape(_tick_label(value))}</text>'
            )
        if x_ticks:
            lo, hi = self.xr
            ticks = (
                _log_ticks(lo, hi) if self.log_x else [(v, _tick_label(v)) for v in _ticks(lo, hi)]
            )
            for value, label in ticks:
                px = self.x(value)
                parts.append(
                    f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{self.bottom}" '
                    f'y2="{self.bottom + 4}" stroke="#888"/><text x="{px:.1f}" '
                    f'y="{self.bottom + 16}" text-anchor="middle">{escape(label)}</text>'
                )
        middle_x, middle_y = (self.left + self.right) / 2, (self.top + self.bottom) / 2
        parts.append(
            f'<text x="{middle_x:.1f}" y="{self.height - 6}" text-anchor="middle">'
            f"{escape(x_label)}</text>"
            f'<text x="14" y="{middle_y:.1f}" text-anchor="middle" '
            f'transform="rotate(-90 14 {middle_y:.1f})">{escape(y_label)}</text>'
        )
        return parts


def _svg(
    width: int, height: int, title: str, body: list[str], legend: Sequence[dict[str, Any]] = ()
) -> str:
    """The ``<svg>`` document: page, title, ``body`` and a legend row of lines and names."""
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="wb-chart" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" font-family="sans-serif" font-size="11" fill="#333">'
        f"<title>{escape(title)}</title>"
        f'<rect width="{width}" height="{height}" fill="#fff"/>'
        f'<text x="{width / 2:.1f}" y="16" text-anchor="middle" font-size="13">'
        f"{escape(title)}</text>",
        *body,
    ]
    x = 58.0
    for item in legend:
        parts.append(
            f'<line x1="{x:.1f}" x2="{x + 18:.1f}" y1="31" y2="31"{_stroke(item, 0.5)}/>'
            f'<text x="{x + 22:.1f}" y="35">{escape(item["name"])}</text>'
        )
        x += 34 + 6.2 * len(str(item["name"]))
    parts.append("</svg>")
    return "".join(parts)


def _stroke(item: dict[str, Any], least_opacity: float = 0.0) -> str:
    """The stroke attributes of a series (its legend line shows at least ``least_opacity``)."""
    opacity = max(float(item.get("opacity", 1.0)), least_opacity)
    width = float(item.get("width", LINE_WIDTH))
    dash = ' stroke-dasharray="5 3"' if item.get("dash") else ""
    fade = f' stroke-opacity="{opacity:.2f}"' if opacity < 1 else ""
    return f' stroke="{escape(item["color"])}" stroke-width="{width:g}"{dash}{fade}'


def _empty(width: int, height: int, title: str, words: str) -> str:
    body = [
        f'<text x="{width / 2:.1f}" y="{height / 2:.1f}" text-anchor="middle" '
        f'fill="#888">{escape(words)}</text>'
    ]
    return _svg(width, height, title, body)


# -- line charts -----------------------------------------------------------------------------
def _point(x: Any, y: Any, log_x: bool) -> tuple[float, float] | None:
    try:
        fx, fy = float(x), float(y)
    except (TypeError, ValueError):
        return None
    if math.isfinite(fx) and math.isfinite(fy) and (fx > 0 or not log_x):
        return fx, fy
    return None


def finite_points(xs: Sequence[Any], ys: Sequence[Any]) -> list[tuple[float, float]]:
    """The ``(x, y)`` pairs where both are finite numbers, in order.

    Examples:
        >>> finite_points([1, 2, 3, None], [0.5, float("nan"), "2", 1.0])
        [(1.0, 0.5), (3.0, 2.0)]
    """
    return [p for x, y in zip(xs, ys, strict=False) if (p := _point(x, y, False)) is not None]


def thinned_indices(values: Any, limit: int = MAX_POINTS) -> np.ndarray:
    """Which of ``values`` to draw: all up to ``limit``, else the first, the last and, in
    each of ``limit // 2 - 1`` equal slices, the lowest and the highest (non-NaN) value, so a
    loss spike or a dip survives the thinning. Sorted positions into ``values``.

    Examples:
        >>> values = [0.0] * 1000
        >>> values[500] = 9.0  # a spike
        >>> keep = thinned_indices(values, limit=20)
        >>> len(keep) <= 20, 500 in keep, int(keep[0]), int(keep[-1])
        (True, True, 0, 999)
        >>> thinned_indices([3.0, float("nan"), 1.0]).tolist()  # short: every point
        [0, 1, 2]
    """
    y = np.asarray(values, dtype=np.float64)
    count = len(y)
    if count <= limit:
        return np.arange(count)
    slices = max(limit // 2 - 1, 1)
    slice_of = np.arange(count) * slices // count
    starts = np.searchsorted(slice_of, np.arange(slices))
    missing = np.isnan(y)
    lowest = np.lexsort((np.where(missing, np.inf, y), slice_of))[starts]
    highest = np.lexsort((np.where(missing, np.inf, -y), slice_of))[starts]
    keep = np.concatenate([[0, count - 1], lowest[~missing[lowest]], highest[~missing[highest]]])
    return np.unique(keep)


def _thinned(cells: list[tuple[float, float] | None]) -> Sequence[int]:
    """Which cells to draw (:func:`thinned_indices` of their y values)."""
    values = [math.nan if cell is None else cell[1] for cell in cells]
    return thinned_indices(values).tolist()


def _runs(
    xs: Sequence[Any], ys: Sequence[Any], log_x: bool, gaps: str
) -> list[list[tuple[float, float]]]:
    """A series' drawable points, thinned to :data:`MAX_POINTS`, in the runs a line joins.

    With ``gaps="break"`` a point that cannot be drawn (non-finite, or not positive on a log
    axis) ends a run, thinned-out ones included; with ``gaps="skip"`` it is left out.
    """
    cells = [_point(x, y, log_x) for x, y in zip(xs, ys, strict=False)]
    if gaps == "skip":
        cells = [c for c in cells if c is not None]
    keep = _thinned(cells)
    holes = list(itertools.accumulate((c is None for c in cells), initial=0))
    runs: list[list[tuple[float, float]]] = [[]]
    previous = None
    for i in keep:
        hole_between = previous is not None and holes[i] > holes[previous + 1]
        if (cells[i] is None or hole_between) and runs[-1]:
            runs.append([])
        if cells[i] is not None:
            runs[-1].append(cells[i])
        previous = i
    return [run for run in runs if run]


def _marker(frame: _Frame, marker: dict[str, Any]) -> str:
    """A dashed vertical line at ``x``, a dot at ``y`` (when given) and the label."""
    x, y, label = float(marker["x"]), marker.get("y"), marker.get("label", "")
    color = escape(marker.get("color", MARKER_COLOR))
    at = frame.x(x)
    dot = ""
    if y is not None and math.isfinite(float(y)):
        dot = f'<circle cx="{at:.1f}" cy="{frame.y(float(y)):.1f}" r="4" fill="{color}"/>'
    words = ""
    if label:
        flip = at > frame.left + (frame.right - frame.left) * 0.6
        anchor, shift = ("end", -4) if flip else ("start", 4)
        words = (
            f'<text x="{at + shift:.1f}" y="{frame.top + 12}" text-anchor="{anchor}" '
            f'fill="{color}">{escape(label)}</text>'
        )
    return (
        f'<g class="wb-chart-marker" data-x="{x:.6g}"><line x1="{at:.1f}" y1="{frame.top}" '
        f'x2="{at:.1f}" y2="{frame.bottom}" stroke="{color}" stroke-dasharray="4 3"/>'
        f"{dot}{words}</g>"
    )


def line_chart(
    series: Sequence[dict[str, Any]],
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    width: int = 560,
    height: int = 250,
    log_x: bool = False,
    markers: Sequence[dict[str, Any]] = (),
    y_range: tuple[float, float] | None = None,
    gaps: str = "break",
) -> str:
    """A self-contained SVG line chart with axes, ticks, labels, a legend and markers.

    Args:
        series: One dict per line: ``name``, ``x``, ``y`` (sequences of equal length), and
            optionally ``color`` (default: the next of :data:`PALETTE`), ``width`` (of the
            line, 1.6), ``dash`` (a dashed line), ``opacity``, ``dots`` (a dot at each point,
            the last 120). Each line is a ``<path class="wb-chart-line" data-label=name>``;
            a point alone between gaps is drawn as a dot. Series longer than 400 points are
            thinned to each slice's lowest and highest points and the ends.
        title, x_label, y_label: Text (escaped).
        width, height: Pixels.
        log_x: A logarithmic x axis (ticks at powers of ten, ``1e-2``); x values that are
            not positive cannot be drawn on it.
        markers: One dict per marker: ``x``, and optionally ``y`` (a dot there), ``label``
            and ``color``: a dashed vertical line across the plot, a
            ``<g class="wb-chart-marker" data-x=x>``. Markers outside the x range are left out.
        y_range: The y axis ends (default: every drawn value, padded 5%); values beyond
            them are drawn at the edge.
        gaps: What a point that cannot be drawn (NaN, infinite, missing) does to its line:
            ``"break"`` it, or ``"skip"`` the point and join its neighbours.

    Examples:
        >>> nan = float("nan")
        >>> svg = line_chart([{"name": "loss", "x": [1, 2, 3, 4], "y": [3.0, 2.5, nan, 1.0]}],
        ...                  markers=[{"x": 2, "label": "fork"}])
        >>> import re; re.search(r'd="([^"]+)"', svg).group(1).count("M")  # two runs
        2
        >>> svg.count("<circle"), 'class="wb-chart-marker"' in svg  # 1.0 alone: a dot
        (1, True)
        >>> "no data yet" in line_chart([], title="loss")
        True
    """
    drawn = []
    for k, s in enumerate(series):
        runs = _runs(s.get("x", ()), s.get("y", ()), log_x, gaps)
        if runs:
            drawn.append(({**s, "color": s.get("color") or PALETTE[k % len(PALETTE)]}, runs))
    if not drawn:
        return _empty(width, height, title, "no data yet")
    xs = [x for _, runs in drawn for run in runs for x, _ in run]
    ys = [y for _, runs in drawn for run in runs for _, y in run]
    frame = _Frame(width, height, legend=True)
    if y_range is None or not y_range[1] > y_range[0]:
        y_range = _range(ys)
    frame.scale(_range([math.log10(x) for x in xs] if log_x else xs), y_range, log_x)
    body = frame.axes(x_label, y_label)
    for s, runs in drawn:
        color = escape(s["color"])
        path = " ".join(
            f"{'L' if k else 'M'}{frame.x(x):.1f} {frame.y(y):.1f}"
            for run in runs
            for k, (x, y) in enumerate(run)
        )
        if any(len(run) > 1 for run in runs):
            body.append(
                f'<path class="wb-chart-line" data-label="{escape(s.get("name", ""))}" '
                f'd="{path}" fill="none"{_stroke(s)}/>'
            )
        dots = (
            [p for run in runs for p in run][-MAX_DOTS:]
            if s.get("dots")
            else [run[0] for run in runs if len(run) == 1]
        )
        opacity = min(max(float(s.get("opacity", 1.0)), 0.5), 1.0)
        fade = f' fill-opacity="{opacity:.2f}"' if opacity < 1 else ""
        body.extend(
            f'<circle cx="{frame.x(x):.1f}" cy="{frame.y(y):.1f}" r="3" fill="{color}"{fade}/>'
            for x, y in dots
        )
    lo, hi = frame.xr
    for marker in markers:
        at = _point(marker.get("x"), 0.0, log_x)
        if at is not None and lo <= (math.log10(at[0]) if log_x else at[0]) <= hi:
            body.append(_marker(frame, marker))
    legend = [{**s, "name": s.get("name", "")} for s, _ in drawn]
    return _svg(width, height, title, body, legend)


# -- bar charts and histograms ---------------------------------------------------------------
def bar_chart(
    categories: Sequence[str],
    series: Sequence[dict[str, Any]],
    title: str = "",
    y_label: str = "",
    width: int = 560,
    height: int = 250,
) -> str:
    """A self-contained SVG grouped bar chart, with optional interval whiskers.

    Args:
        categories: Group labels along x (escaped).
        series: One dict per bar in a group: ``name``, ``values`` (one per category, NaN
            for none), optionally ``low``/``high`` (interval ends) and ``color``.
        title, y_label: Text (escaped).
        width, height: Pixels.

    Examples:
        >>> svg = bar_chart(["em", "json"], [
        ...     {"name": "base", "values": [0.0, 0.5]},
        ...     {"name": "tuned", "values": [0.5, 1.0], "low": [0.2, 0.8], "high": [0.8, 1.0]}])
        >>> svg.count("<rect") - 2, svg.count('stroke="#333"')  # 4 bars, 2 whiskers (frame, bg)
        (4, 2)
    """
    legend = [
        {"name": s["name"], "color": s.get("color") or PALETTE[k % len(PALETTE)], "width": 2}
        for k, s in enumerate(series)
    ]
    values = [
        float(v)
        for s in series
        for key in ("values", "low", "high")
        for v in s.get(key, ())
        if v is not None and math.isfinite(float(v))
    ]
    if not categories or not values:
        return _empty(width, height, title, "no scores")
    frame = _Frame(width, height, bool(legend))
    frame.scale((0.0, float(len(categories))), _range(values, floor=0.0))
    body = frame.axes("", y_label, x_ticks=False)
    group = (frame.right - frame.left) / len(categories)
    bar = group * 0.8 / max(len(series), 1)
    zero = frame.y(max(frame.yr[0], 0.0))
    for c, name in enumerate(categories):
        body.append(
            f'<text x="{frame.left + group * (c + 0.5):.1f}" y="{frame.bottom + 16}" '
            f'text-anchor="middle">{escape(shorten(name, 24))}</text>'
        )
        for k, s in enumerate(series):
            value = s["values"][c] if c < len(s["values"]) else math.nan
            if value is None or not math.isfinite(float(value)):
                continue
            x0 = frame.left + group * c + group * 0.1 + bar * k
            top = frame.y(float(value))
            body.append(
                f'<rect x="{x0:.1f}" y="{min(top, zero):.1f}" width="{bar * 0.92:.1f}" '
                f'height="{abs(zero - top):.1f}" fill="{escape(legend[k]["color"])}"><title>'
                f"{escape(s['name'])} {escape(name)}: {float(value):.4g}</title></rect>"
            )
            low, high = s.get("low"), s.get("high")
            if low and high and c < len(low) and c < len(high):
                lo, hi = float(low[c]), float(high[c])
                if math.isfinite(lo) and math.isfinite(hi):
                    mid = x0 + bar * 0.46
                    body.append(
                        f'<path d="M{mid:.1f},{frame.y(lo):.1f}V{frame.y(hi):.1f}'
                        f"M{mid - 4:.1f},{frame.y(lo):.1f}h8M{mid - 4:.1f},{frame.y(hi):.1f}h8"
                        f'" stroke="#333" fill="none"/>'
                    )
    return _svg(width, height, title, body, legend)


def histogram_chart(
    counts: Sequence[int],
    edges: Sequence[float],
    cutoff: float | None = None,
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    width: int = 560,
    height: int = 230,
) -> str:
    """A self-contained SVG histogram, with an optional red cutoff line.

    Args:
        counts: One count per bin.
        edges: The bins' edges (one more than ``counts``).
        cutoff: An x value marked by a red line (in words at the right when far beyond).
        title, x_label, y_label: Text (escaped).
        width, height: Pixels.

    Examples:
        >>> svg = histogram_chart([3, 1], [0, 10, 20], cutoff=15, title="lengths")
        >>> svg.count('fill="#1f77b4"'), "cutoff 15" in svg
        (2, True)
    """
    if not counts or len(edges) != len(counts) + 1:
        return _empty(width, height, title, "no examples")
    frame = _Frame(width, height, False)
    lo, hi = float(edges[0]), float(edges[-1])
    beyond = cutoff is not None and float(cutoff) > hi + (hi - lo) * 0.5  # far right: in words
    if cutoff is not None and not beyond:
        lo, hi = min(lo, float(cutoff)), max(hi, float(cutoff))
    if hi - lo < 1e-12:
        lo, hi = lo - 1, hi + 1
    frame.scale((lo, hi), _range([float(c) for c in counts], floor=0.0))
    body = frame.axes(x_label, y_label)
    for n, a, b in zip(counts, edges[:-1], edges[1:], strict=False):
        if not n:
            continue
        x0, x1, top = frame.x(float(a)), frame.x(float(b)), frame.y(float(n))
        body.append(
            f'<rect x="{x0:.1f}" y="{top:.1f}" width="{max(x1 - x0 - 0.5, 0.5):.1f}" '
            f'height="{frame.bottom - top:.1f}" fill="#1f77b4"><title>{float(a):.0f}-'
            f"{float(b):.0f} tokens: {int(n)}</title></rect>"
        )
    if cutoff is not None and not beyond:
        px = frame.x(float(cutoff))
        anchor, dx = ("end", -3) if px > (frame.left + frame.right) / 2 else ("start", 3)
        body.append(
            f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{frame.top}" y2="{frame.bottom}" '
            f'stroke="#d00" stroke-width="1.5"/><text x="{px + dx:.1f}" y="{frame.top + 12}" '
            f'text-anchor="{anchor}" fill="#d00">{escape(f"cutoff {cutoff:g}")}</text>'
        )
    elif cutoff is not None:
        body.append(
            f'<text x="{frame.right - 4}" y="{frame.top + 12}" text-anchor="end" fill="#d00">'
            f"{escape(f'cutoff {cutoff:g} (beyond the longest example) →')}</text>"
        )
    return _svg(width, height, title, body)


def svg_img(svg: str, alt: str) -> str:
    """An ``<img>`` showing ``svg`` from a data URI, with ``alt`` text (escaped).

    JupyterLab's sanitizer (untrusted notebooks) drops inline ``<svg>`` but keeps an image's
    ``src``; nbconvert, GitHub and mail readers show it too.

    Examples:
        >>> tag = svg_img("<svg/>", 'a "b"')
        >>> tag.startswith('<img src="data:image/svg+xml;base64,PHN2Zy8+" alt="a &quot;b&quot;"')
        True
    """
    data = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    match = re.search(r'width="(\d+)" height="(\d+)"', svg)
    size = f' width="{match.group(1)}" height="{match.group(2)}"' if match else ""
    return (
        f'<img src="data:image/svg+xml;base64,{data}" alt="{escape(alt)}"{size} '
        f'style="max-width:100%;height:auto;">'
    )
