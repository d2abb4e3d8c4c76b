"""Notebook panels: views of workbench components, testable headless.

Examples:
    >>> from workbench.widgets import DataInspector
    >>> # DataInspector(data, on_apply_max_length=None).widget
"""

from __future__ import annotations

from typing import Any

__all__ = ["DataInspector"]


def __getattr__(name: str) -> Any:
    # ipywidgets and plotly load only when a panel is asked for.
    if name == "DataInspector":
        from workbench.widgets.data_inspector import DataInspector

        return DataInspector
    raise AttributeError(name)
