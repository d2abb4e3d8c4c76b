"""Notebook panels: views of workbench components, testable headless.

Each panel is built from the object it views (``DataInspector(data)``, ``EvalPanel(ev)``,
``TrainingMonitor(run)``; their modules have runnable examples) and its ipywidgets tree is
``.widget``. Panels load ipywidgets and plotly only when first asked for.

Examples:
    >>> from workbench.widgets import DataInspector, EvalPanel
    >>> DataInspector.__module__, EvalPanel.__module__
    ('workbench.widgets.data_inspector', 'workbench.widgets.eval_panel')
"""

from __future__ import annotations

from typing import Any

__all__ = ["ABRating", "DataInspector", "EvalPanel"]
_LAZY = {
    "ChatPanel": "workbench.widgets.chat_panel",
    "CheckpointGrid": "workbench.widgets.checkpoint_grid",
    "EvalProgressPanel": "workbench.widgets.eval_progress",
    "LRFinderPanel": "workbench.widgets.lr_finder_panel",
}
__all__ += list(_LAZY)


def __getattr__(name: str) -> Any:
    # ipywidgets and plotly load only when a panel is asked for.
    if name == "DataInspector":
        from workbench.widgets.data_inspector import DataInspector

        return DataInspector
    if name == "EvalPanel":
        from workbench.widgets.eval_panel import EvalPanel

        return EvalPanel
    if name == "ABRating":
        from workbench.widgets.ab_rating import ABRating

        return ABRating
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)


# TrainingMonitor (workbench.train's panel), loaded lazily like the others.
__all__ += ["TrainingMonitor"]
_panel_getattr = __getattr__


def __getattr__(name: str) -> Any:
    if name == "TrainingMonitor":
        from workbench.widgets.training_monitor import TrainingMonitor

        return TrainingMonitor
    return _panel_getattr(name)
