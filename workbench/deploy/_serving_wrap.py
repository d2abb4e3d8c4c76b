"""Wrapping a method of transformers' (or uvicorn's) server once per process.

Examples:
    >>> class Handler:
    ...     def answer(self):
    ...         return "a"
    >>> _ = wrap_once(Handler, "answer", "loud", lambda original: lambda self: "A")
    >>> Handler().answer()
    'A'
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["answer_handlers", "wrap_once"]


def wrap_once(owner: Any, name: str, marker: str, wrap: Any, static: bool = False) -> bool:
    """Replace ``owner.name`` by ``wrap(original)`` once per process: the wrapper carries
    ``marker``, so a second call (a second ``serve`` in one process) changes nothing.
    ``False`` when transformers has no such method.

    Examples:
        >>> class Handler:
        ...     def answer(self):
        ...         return "a"
        >>> loud = lambda original: lambda self: original(self).upper()
        >>> wrap_once(Handler, "answer", "loud", loud), wrap_once(Handler, "answer", "loud", loud)
        (True, True)
        >>> Handler().answer(), wrap_once(Handler, "missing", "loud", loud)
        ('A', False)
    """
    original = getattr(owner, name, None)
    if original is None:
        return False
    if not getattr(original, marker, False):
        wrapped = functools.wraps(original)(wrap(original))
        setattr(wrapped, marker, True)
        setattr(owner, name, staticmethod(wrapped) if static else wrapped)
    return True


def answer_handlers() -> tuple[Any, Any, Any] | None:
    """transformers' chat, completions and responses handler classes (the server's FastAPI
    too), or ``None`` when this transformers serves without them.

    Examples:
        >>> [handler.__name__ for handler in answer_handlers()]
        ['ChatCompletionHandler', 'CompletionHandler', 'ResponseHandler']
    """
    try:
        import fastapi  # noqa: F401
        from transformers.cli.serving.chat_completion import ChatCompletionHandler
        from transformers.cli.serving.completion import CompletionHandler
        from transformers.cli.serving.response import ResponseHandler
    except ImportError:
        return None
    return ChatCompletionHandler, CompletionHandler, ResponseHandler
