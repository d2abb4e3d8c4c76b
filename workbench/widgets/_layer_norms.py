"""The teaching-mode heatmap: adapter gradient or weight norm per transformer block and step.

Fed with the records of ``run.layer_norms`` / the ``train_layer_norms`` event; rendering is
left to the owner (the :class:`~workbench.widgets.training_monitor.TrainingMonitor`), which
throttles it like its loss plot.

Examples:
    >>> heatmap = LayerNormHeatmap()
    >>> heatmap.add({"step": 1, "layers": [0, 1], "weight": [0.5, 0.6], "grad": [0.1, 0.2]})
    True
    >>> heatmap.render()
    >>> heatmap.trace.z.tolist(), list(heatmap.trace.y)
    ([[0.1], [0.2]], [0, 1])
"""

from __future__ import annotations

import threading
from typing import Any

import ipywidgets as w
import numpy as np

__all__ = ["LayerNormHeatmap"]

MAX_COLUMNS = 300  # newest steps shown: keeps each update small on long runs
KINDS = [("gradient norm", "grad"), ("weight norm", "weight")]


class LayerNormHeatmap:
    """Rows are transformer blocks, columns are steps, colour is the chosen norm.

    Args:
        max_columns: How many of the newest steps to show.

    Attributes:
        figure: The plotly ``FigureWidget``.
        trace: Its ``Heatmap`` trace (``z[block][column]``).
        kind: Toggle between ``"grad"`` and ``"weight"``.
        widget: Toggle and figure.

    Examples:
        >>> h = LayerNormHeatmap()
        >>> h.add({"step": 1, "layers": [0, 1], "weight": [0.5, 0.6], "grad": [0.1, 0.2]})
        True
        >>> h.kind.value = "weight"  # the toggle re-renders
        >>> h.trace.z.tolist(), h.trace.colorbar.title.text
        ([[0.5], [0.6]], 'weight')
    """

    def __init__(self, max_columns: int = MAX_COLUMNS) -> None:
        self.max_columns = max_columns
        self._lock = threading.Lock()
        self._records: list[dict[str, Any]] = []
        self.figure = self._figure()
        self.trace = self.figure.data[0]
        self.kind = w.ToggleButtons(options=KINDS, value="grad")
        self.kind.observe(lambda _change: self.render(), names="value")
        self.widget = w.VBox([self.kind, self.figure])
        self.widget.add_class("wb-layer-norms")

    @staticmethod
    def _figure() -> Any:
        import plotly.graph_objects as go

        fig = go.FigureWidget(
            go.Heatmap(x=[], y=[], z=[], colorscale="Viridis", colorbar={"title": {"text": "grad"}})
        )
        fig.update_layout(height=260, margin={"l": 50, "r": 50, "t": 20, "b": 40})
        fig.update_xaxes(title_text="step")
        fig.update_yaxes(title_text="block", dtick=1)
        return fig

    def add(self, record: dict[str, Any]) -> bool:
        """Keep one step's record; ``False`` (ignored) for a step already seen.

        Examples:
            >>> heatmap = LayerNormHeatmap()
            >>> record = {"step": 2, "layers": [0], "weight": [0.5], "grad": [0.1]}
            >>> heatmap.add(record), heatmap.add(record)
            (True, False)
        """
        with self._lock:
            if self._records and record["step"] <= self._records[-1]["step"]:
                return False
            self._records.append(record)
            return True

    def arrays(self) -> tuple[np.ndarray, list[int], np.ndarray]:
        """``(steps, blocks, z)`` of the chosen norm, ``z`` shaped blocks x steps.

        Examples:
            >>> heatmap = LayerNormHeatmap()
            >>> for step in (1, 2, 3):
            ...     _ = heatmap.add({"step": step, "layers": [0, 1], "weight": [1.0, 2.0],
            ...                      "grad": [0.1, 0.2]})
            >>> steps, blocks, z = heatmap.arrays()
            >>> steps.tolist(), blocks, z.shape
            ([1.0, 2.0, 3.0], [0, 1], (2, 3))
        """
        with self._lock:
            records = self._records[-self.max_columns :]
        layers = list(records[-1]["layers"]) if records else []
        records = [r for r in records if list(r["layers"]) == layers]
        steps = np.asarray([r["step"] for r in records], dtype=np.float64)
        z = np.asarray([r[self.kind.value] for r in records], dtype=np.float64)
        return steps, layers, z.T.reshape(len(layers), len(records))

    def render(self) -> None:
        """Push the arrays into the figure (one batched update).

        Examples:
            >>> heatmap = LayerNormHeatmap()
            >>> _ = heatmap.add({"step": 5, "layers": [0], "weight": [1.0], "grad": [0.25]})
            >>> heatmap.render()
            >>> heatmap.trace.x.tolist(), heatmap.trace.z.tolist()
            ([5.0], [[0.25]])
        """
        steps, layers, z = self.arrays()
        with self.figure.batch_update():
            self.trace.x, self.trace.y, self.trace.z = steps, layers, z
            self.trace.colorbar.title.text = self.kind.value
