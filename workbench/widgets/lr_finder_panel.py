"""LRFinderPanel: the loss-versus-learning-rate curve of a sweep, the suggested rate marked.

A view of an :class:`~workbench.train.lr_finder.LRFinderResult`. The chart is a small SVG
(drawn by :func:`workbench.widgets.svg_chart.line_chart`: log x axis, raw and smoothed loss,
a dashed line and a dot at the suggested rate) shown as an image of a
data URI, so the same picture is the notebook widget, the static ``text/html`` snapshot (no
script, no CDN: it survives nbconvert, GitHub's viewer and an untrusted notebook's
sanitizer) and, as text, the ``text/plain`` fallback. ipywidgets
loads only when the widget is asked for. Every label goes through
:func:`~workbench.widgets._html.escape`.

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
from typing import Any

from workbench._display import text_table
from workbench.train.lr_finder import format_lr
from workbench.widgets._closing import close_panel
from workbench.widgets._html import escape
from workbench.widgets.svg_chart import line_chart, svg_img

__all__ = ["LRFinderPanel"]

RAW_COLOR = "#9aa5b1"
SMOOTH_COLOR = "#1f77b4"
MARKER_COLOR = "#d62728"
TEXT_ROWS = 8  # curve points listed in the text fallback


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
        lines = [("loss", r.losses, RAW_COLOR), ("smoothed", r.smoothed, SMOOTH_COLOR)]
        series = [  # the smoothed line one pixel wider
            {"name": name, "x": r.lrs, "y": ys, "color": colour, "width": 1 + k}
            for k, (name, ys, colour) in enumerate(lines)
        ]
        label = f"suggested {format_lr(r.suggested_lr)}"
        marker = {"x": r.suggested_lr, "y": smoothed, "label": label, "color": MARKER_COLOR}
        return line_chart(
            series,
            title="Learning-rate finder",
            x_label="learning rate (log scale)",
            y_label="training loss",
            width=640,
            height=340,
            log_x=True,
            markers=[marker],
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
        """The static snapshot: escaped advice and facts around the chart.

        The chart is an ``<img>`` of :meth:`svg` (a data URI, :func:`svg_img`), as in the other
        panels' snapshots: JupyterLab's sanitizer drops an inline ``<svg>`` from the output of
        an untrusted notebook (one saved elsewhere and reopened) but keeps the image.

        Examples:
            >>> from workbench.train.lr_finder import LRFinderResult
            >>> result = LRFinderResult.from_curve([1e-4, 1e-3, 1e-2], [3.0, 1.0, 0.9], 0.0)
            >>> html = LRFinderPanel(result).html()
            >>> html.count('<img src="data:image/svg+xml;base64,'), "<svg" in html
            (1, False)
            >>> "suggested lr 1.0e-4" in html, "<script" in html
            (True, False)
        """
        facts = "<br>".join(escape(f) for f in self._facts() if f)
        chart = svg_img(self.svg(), f"learning-rate finder: {self.result.advice}")
        return (
            '<div class="wb-lr-finder" style="font-family:sans-serif">'
            f'<div class="wb-lr-advice" style="font-weight:bold;margin:4px 0">'
            f"{escape(self.result.advice)}</div>{chart}"
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

    def close(self) -> None:
        """Close the panel's widgets, every one of them (a closed panel can be collected).

        Examples:
            >>> from workbench.train.lr_finder import LRFinderResult
            >>> result = LRFinderResult.from_curve([1e-4, 1e-3, 1e-2], [3.0, 1.0, 0.9], 0.0)
            >>> shown = LRFinderPanel(result)
            >>> view = shown.widget
            >>> shown.close()
            >>> view.comm is None
            True
        """
        close_panel(self)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = self.text()
        bundle["text/html"] = self.html()
        return bundle

    def __str__(self) -> str:
        return self.text()
