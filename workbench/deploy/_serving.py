"""``transformers serve`` as the workbench starts it: sampling when a request asks for it.

transformers' server builds each request's generation settings on the model's
``generation_config.json``, and only ever turns sampling off (``temperature`` 0). An export
of a base whose config does not sample (most base models', the built-in Gemma's) would answer
``temperature=0.8`` greedily, the same text every time, with no word said. OpenAI's API
samples at any temperature above 0, so here such a request samples (``top_p`` and ``seed``
apply as transformers reads them). A request that names ``do_sample`` itself in its
``generation_config`` keeps it. ``n`` above 1 (several answers per request), which the
server would ignore and answer once, is refused with a 400 that says to send ``n`` requests.

If a transformers release moves the method this wraps, the server runs as transformers
wrote it (:func:`sample_when_asked` returns ``False``).

Examples:
    >>> sample_when_asked()  # installs the wrapper, once
    True
    >>> from transformers.cli.serving.utils import BaseHandler
    >>> from transformers import GenerationConfig
    >>> build = BaseHandler._build_generation_kwargs
    >>> handler = BaseHandler.__new__(BaseHandler)
    >>> handler.generation_state = type("State", (), {"_compile": False})()
    >>> greedy = GenerationConfig(do_sample=False)
    >>> build(handler, {"temperature": 0.7}, greedy)["do_sample"]
    True
    >>> [build(handler, body, greedy)["do_sample"] for body in ({"temperature": 0}, {})]
    [False, False]
"""

from __future__ import annotations

import functools
import json
from typing import Any

__all__ = ["main", "sample_when_asked"]


def sample_when_asked() -> bool:
    """Make transformers' server sample when a request's ``temperature`` is above 0, and
    refuse ``n`` above 1; ``False`` when this transformers has no such method to wrap.

    Examples:
        >>> sample_when_asked(), sample_when_asked()  # a second call changes nothing
        (True, True)
    """
    try:
        from transformers.cli.serving.utils import BaseHandler
    except ImportError:
        return False
    build = getattr(BaseHandler, "_build_generation_kwargs", None)
    if build is None:
        return False
    if getattr(build, "samples_when_asked", False):
        return True

    @functools.wraps(build)
    def building(self: Any, body: dict, model_generation_config: Any) -> dict:
        _refuse_several_choices(body)
        settings = build(self, body, model_generation_config)
        temperature = body.get("temperature")
        if temperature is not None and float(temperature) > 0 and not _names_do_sample(body):
            settings["do_sample"] = True
        return settings

    building.samples_when_asked = True  # type: ignore[attr-defined]
    BaseHandler._build_generation_kwargs = building
    return True


def _names_do_sample(body: dict) -> bool:
    requested = body.get("generation_config")
    try:
        return requested is not None and "do_sample" in json.loads(requested)
    except (TypeError, ValueError):
        return False  # transformers reports a malformed one itself


def _refuse_several_choices(body: dict) -> None:
    from fastapi import HTTPException

    n = body.get("n")
    if n is not None and n != 1:
        detail = (
            f"n={n!r}: this server gives one answer per request; send {n} requests "
            "(with temperature above 0 they sample different answers)"
        )
        raise HTTPException(status_code=400, detail=detail)


def main() -> None:
    """Run ``transformers serve`` with the arguments of this process, sampling when asked."""
    sample_when_asked()
    from transformers.cli.transformers import main as transformers_main

    transformers_main()
