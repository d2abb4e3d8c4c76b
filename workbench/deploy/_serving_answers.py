"""How served answers end: as OpenAI's do, within the model's context.

The ``stop`` text that ended an answer is not part of it (transformers keeps it), streamed or
not, and an answer gets no more tokens than the model's context has room for after the prompt
(a client's ``max_tokens=4096`` ran GPT-2 past its 1024 positions into an IndexError, a 500,
and Llama past its context); a prompt that leaves no room is a 400 for GPT-2-style configs
too. A ``/v1/responses`` answer its token limit cut is ``"incomplete"``, with
``incomplete_details`` naming ``max_output_tokens`` (streamed, it ends with
``response.incomplete``), where transformers said ``"completed"``. A stream ends with one
``created`` and ``data: [DONE]``, as OpenAI's.

If a transformers release moves the methods this wraps, answers end as transformers wrote
them (:func:`end_answers_as_openai` returns ``False``).

Examples:
    >>> cut_at_stop("4 ### next", ["###"])
    ('4 ', True)
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workbench.deploy._serving_wrap import answer_handlers

__all__ = ["cut_at_stop", "end_answers_as_openai"]

# The end of turn a chat answer also stops at when no token of the tokenizer writes it (a
# built-in template on another family's tokenizer), read per request; set by the server
# process's main (transformers is wrapped once per process).
_turn_end: dict[str, str | None] = {"text": None}


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """``text`` up to the first of ``stops`` in it, and whether one was found.

    Examples:
        >>> cut_at_stop("4 ### next", ["###", " ##"])
        ('4', True)
        >>> cut_at_stop("4", ["###"])
        ('4', False)
    """
    found = [i for i in (text.find(stop) for stop in stops if stop) if i >= 0]
    return (text[: min(found)], True) if found else (text, False)


class _StopCutter:
    """Cuts streamed text at the first stop string: text that may begin one is held back
    until the next piece says whether it does.

    Examples:
        >>> cutter = _StopCutter(["###"])
        >>> [cutter.feed(piece) for piece in ("4 #", "#", "# more", "ignored")]
        ['4 ', '', '', '']
        >>> cutter.flush()
        ''
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops, self.held, self.stopped = [s for s in stops if s], "", False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        text, self.stopped = cut_at_stop(self.held + text, self.stops)
        if self.stopped:
            self.held = ""
            return text
        keep = max(
            (k for stop in self.stops for k in range(1, len(stop)) if text.endswith(stop[:k])),
            default=0,
        )
        self.held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        held, self.held = self.held, ""
        return "" if self.stopped else held


def _content_of(event: dict) -> tuple[dict | None, str | None]:
    """The choice of a streamed chunk and the name of its text field, if it carries text."""
    choices = event.get("choices") or []
    if not choices:
        return None, None
    choice = choices[0]
    if isinstance(choice.get("delta"), dict) and choice["delta"].get("content") is not None:
        return choice["delta"], "content"
    if choice.get("text") is not None and "delta" not in choice:
        return choice, "text"
    return None, None


async def _cut_stream(chunks: Any, stops: list[str]) -> Any:
    """The SSE chunks of a streamed answer, its text cut at the first stop string."""
    cutter, template = _StopCutter(stops), None
    async for chunk in chunks:
        out = []
        for part in chunk.split("\n\n"):
            if not part.startswith("data: ") or part == "data: [DONE]":
                out += [part] if part else []
                continue
            event = json.loads(part[len("data: ") :])
            holder, field = _content_of(event)
            closing = _finish_reason(event) is not None
            if holder is not None and not closing:
                template = json.dumps(event, ensure_ascii=False)
                text = cutter.feed(holder[field])
                if text:
                    holder[field] = text
                    out.append("data: " + json.dumps(event, ensure_ascii=False))
                continue
            if holder is not None:  # a closing chunk with text (the completions' ""): the rest
                holder[field] = cutter.feed(holder[field]) + cutter.flush()
            elif (rest := cutter.flush()) and template is not None:  # held text, before it
                last = json.loads(template)
                last_holder, last_field = _content_of(last)
                last_holder[last_field] = rest
                out.append("data: " + json.dumps(last, ensure_ascii=False))
            if closing and cutter.stopped:
                _stopped_at_a_stop(event["choices"][0])
            out.append("data: " + json.dumps(event, ensure_ascii=False))
        if out:
            yield "".join(f"{part}\n\n" for part in out)


def _finish_reason(event: dict) -> str | None:
    choices = event.get("choices") or []
    return choices[0].get("finish_reason") if choices else None


def _stopped_at_a_stop(choice: dict) -> None:
    """Say ``"stop"`` for an answer a stop string ended, as OpenAI does: transformers says
    ``"length"`` when the stop came with the last token ``max_tokens`` allowed."""
    if choice.get("finish_reason") == "length":
        choice["finish_reason"] = "stop"


def _room_for_the_answer(engine: Any, inputs: dict, settings: dict) -> None:
    """Refuse an empty prompt (the model failed on it, a 500) and a prompt the model's context
    cannot hold (for configs transformers reads no context from, GPT-2's ``n_positions``);
    cap ``max_new_tokens`` to the room after it."""
    from fastapi import HTTPException
    from transformers.cli.serving.utils import prompt_length

    from workbench.data.context import model_context

    length = prompt_length(inputs)
    if length == 0:  # the completions endpoint reads a missing prompt as ""
        detail = 'prompt is empty or missing: give the text to continue, e.g. "prompt": "Once"'
        raise HTTPException(status_code=400, detail=detail)
    context = model_context(engine.model_config)
    if context is None:
        return
    if length >= context:
        detail = f"the prompt has {length} tokens; the model reads at most {context}."
        raise HTTPException(status_code=400, detail=detail)
    wanted = settings.get("max_new_tokens")
    if isinstance(wanted, int) and length + wanted > context:
        settings["max_new_tokens"] = context - length  # the answer ends there: "length"


def _stops(settings: dict) -> list[str]:
    stops = settings.get("stop_strings") or []
    return [stops] if isinstance(stops, str) else [s for s in stops if isinstance(s, str)]


def end_answers_as_openai(turn_end: str | None = None) -> bool:
    """Cut served answers at their ``stop`` text and within the model's context, and end them
    as OpenAI's do, in the chat, completions and responses endpoints; ``False`` when
    transformers has no such methods. ``turn_end``: text that ends every chat answer as a stop
    string would (generation stops there too), for a template whose end of turn is no token
    of the tokenizer.

    Examples:
        >>> end_answers_as_openai(), end_answers_as_openai()  # a second call changes nothing
        (True, True)
    """
    handlers = answer_handlers()
    if handlers is None or not all(_takes_answer_parameters(handler) for handler in handlers):
        return False
    _turn_end["text"] = turn_end or None
    for handler in handlers:
        if not getattr(handler._non_streaming, "ends_as_openai", False):
            _end_as_openai(handler, _ENDINGS[handler.__name__])
    return True


def _takes_answer_parameters(handler: Any) -> bool:
    """Whether ``handler`` answers through ``_streaming`` and ``_non_streaming`` methods that
    name an answer's parts as :func:`_end_as_openai` reads them."""
    methods = [getattr(handler, name, None) for name in ("_streaming", "_non_streaming")]
    return all(
        callable(method) and set(_ANSWER_PARAMETERS) <= set(inspect.signature(method).parameters)
        for method in methods
    )


def _stop_at_turn_end(settings: dict) -> None:
    """Add the served template's text-only end of turn to a chat request's stop strings."""
    turn_end = _turn_end["text"]
    if turn_end is None:
        return
    stops = _stops(settings)
    if turn_end not in stops:
        settings["stop_strings"] = [*stops, turn_end]


def _end_as_openai(handler: Any, ending: _Ending) -> None:
    """Make ``handler``'s answers, streamed or not, fit the model's context and end as OpenAI's
    do, as ``ending`` says for its endpoint. transformers' handlers take an answer's engine,
    prompt and settings in another order each (the responses one takes the request's body
    first): they are read by name (:data:`_ANSWER_PARAMETERS`)."""
    from fastapi.responses import JSONResponse

    streaming, non_streaming = handler._streaming, handler._non_streaming

    def prepared(method: Any, args: tuple, kw: dict) -> tuple[tuple, dict, dict, str | None]:
        """The call's arguments, less a completion's ``suffix`` (transformers adds it to the
        text before the answer is cut at its stop text, which then cut the suffix and called
        the answer stopped: it is added here once the answer is cut), its settings and the
        suffix."""
        bound = inspect.signature(method).bind(*args, **kw)
        engine, inputs, settings = (bound.arguments[name] for name in _ANSWER_PARAMETERS)
        _room_for_the_answer(engine, inputs, settings)
        if ending.at_turn_end:
            _stop_at_turn_end(settings)
        suffix = bound.arguments.get("suffix")
        if not isinstance(suffix, str):
            return args, kw, settings, None
        bound.arguments["suffix"] = None
        return bound.args, bound.kwargs, settings, suffix

    @functools.wraps(non_streaming)
    async def answered(*args: Any, **kw: Any) -> Any:
        args, kw, settings, suffix = prepared(non_streaming, args, kw)
        response = await non_streaming(*args, **kw)
        body = json.loads(response.body)
        ending.body(body, settings)
        for choice in body.get("choices", []) if suffix else []:
            choice["text"] += suffix
        return JSONResponse(body, status_code=response.status_code)

    @functools.wraps(streaming)
    def streamed(*args: Any, **kw: Any) -> Any:
        args, kw, settings, suffix = prepared(streaming, args, kw)
        response = streaming(*args, **kw)
        chunks = ending.stream(response.body_iterator, settings)
        response.body_iterator = _suffix_before_the_end(chunks, suffix) if suffix else chunks
        return response

    answered.ends_as_openai = True  # type: ignore[attr-defined]
    handler._non_streaming, handler._streaming = answered, streamed


async def _suffix_before_the_end(chunks: Any, suffix: str) -> Any:
    """The SSE chunks of a streamed completion with ``suffix`` sent just before the chunk
    that ends it, as transformers sends it."""
    async for chunk in chunks:
        parts = []
        for part in chunk.split("\n\n"):
            event = json.loads(part[len("data: ") :]) if part.startswith("data: {") else None
            if isinstance(event, dict) and _finish_reason(event) is not None:
                choice = {**event["choices"][0], "text": suffix, "finish_reason": None}
                parts.append(_sse({**event, "choices": [choice]}))
            parts += [part] if part else []
        yield "".join(f"{part}\n\n" for part in parts)


def _end_choices(body: dict, settings: dict) -> None:
    """A chat or completions answer without the stop text that ended it (its ``finish_reason``
    then ``"stop"``), nor a character ``max_tokens`` cut in two at its end (U+FFFD; streamed,
    it is left out).

    Examples:
        >>> body = {"choices": [{"text": "9\ufffdR more", "finish_reason": "length"}]}
        >>> _end_choices(body, {"stop_strings": ["R"]})  # the model wrote U+FFFD, then R
        >>> body["choices"][0]
        {'text': '9\ufffd', 'finish_reason': 'stop'}
    """
    stops = _stops(settings)
    for choice in body.get("choices", []):
        holder = choice.get("message") or choice
        field = "content" if "message" in choice else "text"
        if isinstance(holder.get(field), str):
            holder[field], stopped = cut_at_stop(holder[field], stops)
            if stopped:  # what came before the stop was written whole, U+FFFD included
                _stopped_at_a_stop(choice)
            else:
                holder[field] = holder[field].rstrip("\ufffd")


def _end_choice_stream(chunks: Any, settings: dict) -> Any:
    """A streamed chat or completions answer cut at its stop text, ended as OpenAI's are."""
    stops = _stops(settings)
    return _ended_as_openai(_cut_stream(chunks, stops) if stops else chunks)


def _end_response(body: dict, settings: dict) -> None:
    """A ``/v1/responses`` answer without the stop text that ended it (the served template's
    end of turn, where no token writes it), nor a character the limit cut in two (U+FFFD), as
    its stream leaves them out, and incomplete when its token limit cut it
    (:func:`_say_incomplete`).

    Examples:
        >>> body = {"status": "completed", "usage": {"output_tokens": 4},
        ...         "output": [{"type": "message", "content": [{"text": "heck\ufffd"}]}]}
        >>> _end_response(body, {"max_new_tokens": 4})
        >>> body["status"], body["output"][0]["content"][0]["text"]
        ('incomplete', 'heck')
        >>> body = {"status": "completed", "usage": {"output_tokens": 4},
        ...         "output": [{"type": "message", "content": [{"text": "yes<end>"}]}]}
        >>> _end_response(body, {"max_new_tokens": 4, "stop_strings": ["<end>"]})
        >>> body["status"], body["output"][0]["content"][0]["text"]
        ('completed', 'yes')
    """
    stopped = False
    for part in _text_parts(body):
        part["text"], cut = cut_at_stop(part["text"], _stops(settings))
        part["text"] = part["text"] if cut else part["text"].rstrip("\ufffd")
        stopped = stopped or cut
    if _cut_at_the_limit(body, settings) and not stopped:
        _say_incomplete(body)


def _text_parts(response: dict) -> list[dict]:
    """The answer's text parts in a Response's JSON (its messages' ``content``)."""
    return [
        part
        for item in response.get("output") or []
        if isinstance(item, dict) and item.get("type") == "message"
        for part in item.get("content") or []
        if isinstance(part, dict) and isinstance(part.get("text"), str)
    ]


class _ResponseTextCutter:
    r"""Cuts a streamed ``/v1/responses`` answer at its first stop text: the text deltas as
    :class:`_StopCutter` does, and the whole text the closing events repeat.

    Examples:
        >>> cutter = _ResponseTextCutter(["<end>"])
        >>> delta = 'data: {"type": "response.output_text.delta", "delta": "%s"}\n\n'
        >>> [cutter.chunk(delta % piece) for piece in ("yes<e", "nd> more")]
        ['data: {"type": "response.output_text.delta", "delta": "yes"}\n\n', '']
        >>> cutter.chunk('data: {"type": "response.output_text.done", "text": "yes<end> more"}\n\n')
        'data: {"type": "response.output_text.done", "text": "yes"}\n\n'
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops, self.cutter, self.template = stops, _StopCutter(stops), None

    @property
    def stopped(self) -> bool:
        return self.cutter.stopped

    def chunk(self, chunk: str) -> str:
        out = []
        for part in chunk.split("\n\n"):
            event = json.loads(part[len("data: ") :]) if part.startswith("data: {") else None
            if event is None:
                out += [part] if part else []
            elif event.get("type") == "response.output_text.delta":
                self.template, event["delta"] = dict(event), self.cutter.feed(event["delta"])
                out += [_sse(event)] if event["delta"] else []
            else:
                out += [*self._held_text(event), _sse(self._cut(event))]
        return "".join(f"{part}\n\n" for part in out)

    def _held_text(self, event: dict) -> list[str]:
        """Text held back as a possible stop's start, sent before the text's end."""
        if event.get("type") != "response.output_text.done" or self.template is None:
            return []
        rest = self.cutter.flush()
        return [_sse({**self.template, "delta": rest})] if rest else []

    def _cut(self, event: dict) -> dict:
        if event.get("type") == "response.output_text.done" and isinstance(event.get("text"), str):
            event["text"] = cut_at_stop(event["text"], self.stops)[0]
        part = event.get("part")
        whole = [part] if isinstance(part, dict) and isinstance(part.get("text"), str) else []
        item = event.get("item")
        if isinstance(item, dict):
            whole += _text_parts({"output": [item]})
        if isinstance(event.get("response"), dict):
            whole += _text_parts(event["response"])
        for text_part in whole:
            text_part["text"] = cut_at_stop(text_part["text"], self.stops)[0]
        return event


def _sse(event: dict) -> str:
    return "data: " + json.dumps(event, ensure_ascii=False)


def _cut_at_the_limit(response: dict, settings: dict) -> bool:
    """Whether its token limit ended a ``/v1/responses`` answer (``response``: its JSON), as
    transformers tells a chat's ``finish_reason="length"`` (``BaseHandler._get_finish_reason``):
    its tokens reached ``max_new_tokens`` (``max_output_tokens``, or the room the context
    left), and it made no tool call.

    Examples:
        >>> answer = {"usage": {"output_tokens": 8}, "output": [{"type": "message"}]}
        >>> _cut_at_the_limit(answer, {"max_new_tokens": 8}), _cut_at_the_limit(answer, {})
        (True, False)
    """
    tokens = (response.get("usage") or {}).get("output_tokens") or 0
    items = [item for item in response.get("output") or [] if isinstance(item, dict)]
    calls = any(item.get("type") == "function_call" for item in items)
    limit = settings.get("max_new_tokens")
    return not calls and limit is not None and tokens >= limit


def _say_incomplete(response: dict) -> None:
    """Mark a Response (a JSON answer, or the one a stream's last event carries) as OpenAI
    marks one its token limit cut: ``status`` ``"incomplete"``, ``incomplete_details`` naming
    ``max_output_tokens``, and its message ``"incomplete"`` too (transformers said
    ``"completed"``, so a client could not tell a cut answer from a whole one)."""
    response["status"] = "incomplete"
    response["incomplete_details"] = {"reason": "max_output_tokens"}
    for item in response.get("output") or []:
        if isinstance(item, dict) and item.get("type") == "message":
            item["status"] = "incomplete"


def _ends_the_message(event: dict) -> bool:
    item = event.get("item")
    done = event.get("type") == "response.output_item.done"
    return done and isinstance(item, dict) and item.get("type") == "message"


def _sse_events(chunk: str) -> list[dict]:
    """The JSON events of an SSE chunk (its ``data: {...}`` parts)."""
    return [
        json.loads(part[len("data: ") :])
        for part in chunk.split("\n\n")
        if part.startswith("data: {")
    ]


def _said_incomplete(chunk: str) -> str:
    """The SSE chunk of a streamed ``/v1/responses`` answer its token limit cut, as OpenAI
    sends it: ``response.incomplete`` in place of ``response.completed``
    (:func:`_say_incomplete`), and its message's ``output_item.done`` saying it is incomplete.

    Examples:
        >>> _said_incomplete('data: {"type": "response.completed", "response": {}}\\n\\n')
        'data: {"type": "response.incomplete", "response": {"status": "incomplete", \
"incomplete_details": {"reason": "max_output_tokens"}}}\\n\\n'
    """
    parts = chunk.split("\n\n")
    for k, part in enumerate(parts):
        if not part.startswith("data: {"):
            continue
        event = json.loads(part[len("data: ") :])
        if event.get("type") == "response.completed":
            event["type"] = "response.incomplete"
            _say_incomplete(event["response"])
        elif _ends_the_message(event):
            event["item"]["status"] = "incomplete"
        parts[k] = "data: " + json.dumps(event, ensure_ascii=False)
    return "\n\n".join(parts)


async def _end_response_stream(chunks: Any, settings: dict) -> Any:
    """The SSE chunks of a streamed ``/v1/responses`` answer, ending as OpenAI's do: cut at
    its stop text (:class:`_ResponseTextCutter`), with ``response.incomplete`` when its token
    limit cut it (transformers always sent ``response.completed``). The events from its
    message's end on wait for the last one, whose usage says whether the limit cut it; the
    text streams as it comes."""
    held: list[str] = []
    stops = _stops(settings)
    cutter = _ResponseTextCutter(stops)
    async for given in chunks:
        chunk = cutter.chunk(given) if stops else given
        events = _sse_events(chunk)
        if not held and not any(_ends_the_message(event) for event in events):
            if chunk:
                yield chunk
            continue
        held.append(chunk)
        last = next((e for e in events if e.get("type") == "response.completed"), None)
        if last is not None:
            cut = _cut_at_the_limit(last.get("response") or {}, settings) and not cutter.stopped
            yield "".join(_said_incomplete(part) if cut else part for part in held)
            held = []
    if held:  # it failed instead (response.failed): as it was
        yield "".join(held)


@dataclass(frozen=True)
class _Ending:
    """How an endpoint's answers end as OpenAI's do."""

    body: Callable[[dict, dict], None]
    """Finishes a JSON answer in place, given its generation settings."""
    stream: Callable[[Any, dict], Any]
    """The SSE chunks of a streamed answer, finished, given its generation settings."""
    at_turn_end: bool = False
    """Whether its answers stop at the served template's text-only end of turn (a chat's)."""


# By the handler class's name in transformers.cli.serving
_ENDINGS = {
    "ChatCompletionHandler": _Ending(_end_choices, _end_choice_stream, at_turn_end=True),
    "CompletionHandler": _Ending(_end_choices, _end_choice_stream),
    "ResponseHandler": _Ending(_end_response, _end_response_stream, at_turn_end=True),
}
# What the handlers' _streaming and _non_streaming name an answer's engine, prompt and settings
_ANSWER_PARAMETERS = ("engine", "inputs", "generation_kwargs")


async def _ended_as_openai(chunks: Any) -> Any:
    """The SSE chunks of a streamed answer as OpenAI sends them: one ``created`` for the
    whole stream (transformers' completions stamped each chunk anew) and ``data: [DONE]``
    last (transformers sent none; a client waiting for it never saw the stream end)."""
    created, done = None, False
    async for chunk in chunks:
        parts = []
        for part in chunk.split("\n\n"):
            done = done or part == "data: [DONE]"
            event = json.loads(part[len("data: ") :]) if part.startswith("data: {") else None
            if isinstance(event, dict) and "created" in event:
                created = event["created"] if created is None else created
                if event["created"] != created:
                    event["created"] = created
                    parts.append("data: " + json.dumps(event, ensure_ascii=False))
                    continue
            if part:
                parts.append(part)
        if parts:
            yield "".join(f"{part}\n\n" for part in parts)
    if not done:
        yield "data: [DONE]\n\n"
