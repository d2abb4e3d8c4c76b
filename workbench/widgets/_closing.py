"""Closing a panel's whole widget tree.

``widget.close()`` closes that one widget: a ``VBox``'s children, each widget's ``layout``
and ``style`` (widgets too) and a panel's widgets not shown at the moment stay open, kept in
ipywidgets' registry with the callbacks that hold the panel, and through it the run, model
and optimizer it views. :func:`close_panel` closes every widget the panel holds, and every
widget those hold, so a closed panel can be collected.

Examples:
    >>> import ipywidgets as w
    >>> button = w.Button()
    >>> class Panel:
    ...     def __init__(self):
    ...         self.spare = w.HTML("not shown now")
    ...         self.widget = w.VBox([button])
    >>> panel = Panel()
    >>> close_panel(panel)
    >>> [x.comm is None for x in (panel.widget, button, button.layout, button.style, panel.spare)]
    [True, True, True, True, True]
"""

from __future__ import annotations

from typing import Any

__all__ = ["close_panel", "close_tree", "is_closed"]


def close_tree(*roots: Any) -> None:
    """Close each widget among ``roots`` and every widget it holds in a trait (``children``,
    ``layout``, ``style``...), depth first.

    Examples:
        >>> import ipywidgets as w
        >>> inner = w.Label("x")
        >>> close_tree(w.HBox([w.VBox([inner])]))
        >>> inner.comm is None and inner.layout.comm is None
        True
    """
    from ipywidgets import Widget

    seen: set[int] = set()
    stack = [x for x in roots if isinstance(x, Widget)]
    while stack:
        widget = stack.pop()
        if id(widget) in seen:
            continue
        seen.add(id(widget))
        for name in widget.keys:
            stack.extend(_widgets_in(getattr(widget, name, None)))
        widget.close()


def close_panel(panel: Any) -> None:
    """Close every widget ``panel`` holds in an attribute (its ``widget`` tree, and widgets
    kept aside to swap in), and every widget those hold.

    Examples:
        >>> import ipywidgets as w
        >>> class Panel:
        ...     def __init__(self):
        ...         self.buttons = {"a": w.Button()}
        ...         self.widget = w.VBox()
        >>> panel = Panel()
        >>> close_panel(panel)
        >>> panel.buttons["a"].comm is None
        True
    """
    close_tree(*_held_by(panel, set()))


def is_closed(panel: Any) -> bool:
    """Whether ``panel`` was closed (its ``widget`` no longer reaches a front end): one
    asked for again is then built anew.

    Examples:
        >>> import ipywidgets as w
        >>> class Panel:
        ...     def __init__(self):
        ...         self.widget = w.VBox()
        >>> panel = Panel()
        >>> is_closed(panel)
        False
        >>> close_panel(panel)
        >>> is_closed(panel)
        True
    """
    return panel.widget.comm is None


def _held_by(panel: Any, seen: set[int]) -> list[Any]:
    """The widgets ``panel`` holds, its sub-panels' (a monitor's heatmap) included."""
    seen.add(id(panel))
    held = []
    for value in vars(panel).values():
        for item in _items(value):
            if _is_panel(item) and id(item) not in seen:
                held.extend(_held_by(item, seen))
        held.extend(_widgets_in(value))
    return held


def _is_panel(value: Any) -> bool:
    """One of the workbench's panels: a ``widgets`` class with a ``widget``."""
    module = type(value).__module__
    return module.startswith("workbench.widgets") and hasattr(value, "widget")


def _items(value: Any) -> list[Any]:
    """``value``, or what it holds (one level of a list, tuple, set or dict)."""
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    return [value]


def _widgets_in(value: Any) -> list[Any]:
    """The widgets ``value`` is or holds (one level of a list, tuple, set or dict)."""
    from ipywidgets import Widget

    return [x for x in _items(value) if isinstance(x, Widget)]
