"""Data set formats: detect one from the columns, check each row, normalise it.

Every prompt/answer format is normalised to a chat ``messages`` list (``role`` in
``system``/``user``/``assistant``/``tool``, ``content`` a string), so one template and one
masking rule serve them all. Raw ``text`` stays text (continued pretraining). An assistant
turn with OpenAI's ``weight: 0`` stays in its conversation as context and is not trained on
(its index is in :attr:`Normalised.untrained`). A conversation held as text (a CSV cell, a
database export) is read as the list it writes, in JSON or in Python's repr (pandas'
``to_csv``).

==========  ==========================================  =====================================
format      columns                                     becomes
==========  ==========================================  =====================================
alpaca      instruction, output (input, system)         system?, user(instruction+input), assistant
qa          prompt/question/query (or input), answer/    system?, user, assistant (its
            completion/response (or output); with         tool calls, when a row with tools
            tools, answers (xLAM)                         answers with a list of calls)
chat        messages: [{role, content}] (system)        system?, the messages (developer->system)
sharegpt    conversations: [{from, value}] (system)     system?, the messages (human->user,
                                                        gpt->assistant)
text        text                                        raw text, every token trained
==========  ==========================================  =====================================

Examples:
    >>> fmt, plan = detect_format(["question", "answer"], None, "data.csv")
    >>> fmt.name, plan
    ('qa', {'prompt': 'question', 'answer': 'answer'})
    >>> fmt.normalise({"question": "2+2?", "answer": "4"}, plan).messages[1]
    {'role': 'assistant', 'content': '4'}
    >>> fmt.normalise({"question": "2+2?", "answer": 4}, plan).messages[1]  # a number's text
    {'role': 'assistant', 'content': '4'}
"""

from __future__ import annotations

import ast
import json
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from workbench.data.tool_calls import tool_calls_of, tool_turn_extras, tools_of
from workbench.errors import DataError

__all__ = [
    "CANONICAL_FIELDS",
    "FORMATS",
    "FORMAT_NAMES",
    "Format",
    "FormatName",
    "Normalised",
    "RowError",
    "detect_format",
]

FormatName = Literal["alpaca", "qa", "chat", "sharegpt", "text"]
FORMAT_NAMES: tuple[str, ...] = ("alpaca", "qa", "chat", "sharegpt", "text")
CANONICAL_FIELDS: tuple[str, ...] = (
    "instruction",
    "input",
    "output",
    "prompt",
    "answer",
    "system",
    "messages",
    "conversations",
    "text",
    "tools",
)
# Common column names that mean a canonical field (matched case-insensitively).
_ALIASES = {"question": "prompt", "completion": "answer", "response": "answer", "query": "prompt"}
_CHAT_ROLES = {
    "system": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "model": "assistant",
    "developer": "system",  # OpenAI's name for the system message since its o1 models
}
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
    "function_call": "assistant",  # LLaMA-Factory's: the value is the call as JSON
}


class RowError(Exception):
    """A row breaks its format; ``field`` names the column (or ``messages[2].role``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Normalised:
    """A checked row in normal form.

    Attributes:
        messages: The conversation (prompt/answer formats), or ``None`` for raw text.
        text: The raw text (``text`` format), or ``None``.
        empty: Names of fields that are present but empty or only whitespace.
        untrained: Indices in ``messages`` of assistant turns not to train on (OpenAI's
            per-turn ``weight: 0``); they stay in the conversation as context.
        tools: The tools offered to the model (the row's ``tools``), or ``None``.

    A message holds ``role`` and ``content``, and, for tool calling, an assistant turn's
    ``tool_calls`` and a tool turn's ``tool_call_id``/``name``
    (see :mod:`workbench.data.tool_calls`).

    Examples:
        >>> Normalised(None, "hello", ()).text
        'hello'
        >>> turns = [{"role": "user", "content": "Hi"},
        ...          {"role": "assistant", "content": "Hey", "weight": 0},
        ...          {"role": "user", "content": "Bye"},
        ...          {"role": "assistant", "content": "Bye!"}]
        >>> FORMATS["chat"].normalise({"messages": turns}, {}).untrained
        (1,)
    """

    messages: list[dict[str, Any]] | None
    text: str | None
    empty: tuple[str, ...]
    untrained: tuple[int, ...] = ()
    tools: list[dict[str, Any]] | None = None


Plan = Mapping[str, str]  # canonical field -> column in the data


def _string(
    values: Mapping[str, Any], plan: Plan, field: str, empty: list[str], required: bool = True
) -> str:
    column = plan.get(field, field)
    value = values.get(column)
    if value is None:
        if required:
            raise RowError(column, "missing")
        return ""
    value = _text_parts(value, column)
    if not value.strip():
        empty.append(column)
    return value


def _text_parts(value: Any, field: str) -> str:
    if isinstance(value, str):
        return value
    # A number is its text ("answer": 42, as math and classification sets store them); a
    # bool or a non-finite float is refused: its text would be a guess.
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if number and (isinstance(value, numbers.Integral) or math.isfinite(value)):
        return str(value)
    # OpenAI-style content parts: [{"type": "text", "text": "..."}]
    if isinstance(value, list) and value and all(isinstance(p, dict) for p in value):
        kinds = sorted({str(p.get("type")) for p in value} - {"text"})
        if not kinds:
            return "".join(str(p.get("text", "")) for p in value)
        if all("type" in p for p in value):
            msg = (
                f"has {', '.join(kinds)} parts: only text is tuned (the workbench loads "
                "text-only models); skip such rows (on_error='skip') or keep their text parts"
            )
            raise RowError(field, msg)
    shown = repr(value)[:60]
    raise RowError(field, f"expected a string, got {type(value).__name__} {shown}")


def _alpaca(values: Mapping[str, Any], plan: Plan) -> Normalised:
    empty: list[str] = []
    instruction = _string(values, plan, "instruction", empty)
    extra = _string(values, plan, "input", [], required=False)
    output = _string(values, plan, "output", empty)
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return Normalised(_with_system(values, plan, user, output), None, tuple(empty))


def _qa(values: Mapping[str, Any], plan: Plan) -> Normalised:
    if any(_is_messages(values.get(plan.get(f, f))) for f in ("prompt", "answer")):
        return _conversational_qa(values, plan)
    empty: list[str] = []
    tools = _tools(values, plan)
    prompt = _string(values, plan, "prompt", empty)
    calls = _answer_calls(values, plan) if tools else None
    answer = "" if calls else _string(values, plan, "answer", empty)
    messages = _with_system(values, plan, prompt, answer)
    if calls:
        messages[-1]["tool_calls"] = calls
    return Normalised(messages, None, tuple(empty), (), tools)


def _answer_calls(values: Mapping[str, Any], plan: Plan) -> list[dict[str, Any]] | None:
    """The answer as tool calls, when a row offering tools answers with a list of
    ``{"name", "arguments"}`` objects (as JSON text, Python's repr or a list: Salesforce's
    xLAM sets). Text that opens a list of objects and does not close it is refused: trained
    as plain text, a cut-short call list would teach the model to write one."""
    column = plan.get("answer", "answer")
    value = values.get(column)
    if isinstance(value, str) and value.lstrip().startswith("["):
        value = _calls_in_text(value, column)
        if value is None:
            return None  # a text answer that starts with "["
    if isinstance(value, dict):
        value = [value]
    is_call = [isinstance(c, dict) and ("function" in c or "arguments" in c) for c in value or ()]
    if not isinstance(value, list) or not value or not all(is_call):
        return None
    return tool_calls_of(value, column, column)  # the list the answers column holds


def _calls_in_text(text: str, column: str) -> Any:
    """The list an answer's text writes as JSON or Python's repr; ``None`` for text that is
    not one; refused when it breaks off at its end (a call list cut short)."""
    value, json_error = _literal_in_text(text)
    if json_error is None:
        return value
    cut = getattr(json_error, "pos", -1) >= len(text.rstrip())  # ended before it closed
    if cut and text.lstrip()[1:].lstrip().startswith("{"):
        msg = f"the list of tool calls breaks off at its end, cut short? ({json_error})"
        raise RowError(column, msg)
    return None


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and any(isinstance(m, dict) and "role" in m for m in value)


def _conversational_qa(values: Mapping[str, Any], plan: Plan) -> Normalised:
    """TRL's conversational prompt-completion rows: message lists (or a string) on each side.

    The completion's assistant turns are trained; assistant turns in the prompt (few-shot
    examples, earlier turns) are context, as in TRL's completion-only loss.
    """
    empty: list[str] = []
    parts = []
    for field, role in (("prompt", "user"), ("answer", "assistant")):
        column = plan.get(field, field)
        value = values.get(column)
        if _is_messages(value):
            parts.append(_messages(value, column, _CHAT_ROLES, empty))
        else:
            text = _string(values, plan, field, empty)
            parts.append(([{"role": role, "content": text}], ()))
    (prompt, _), (answer, answer_untrained) = parts
    system = _string(values, plan, "system", [], required=False)
    head = [{"role": "system", "content": system}] if system.strip() else []
    if head and prompt[0]["role"] == "system":
        head = []  # the prompt's own system message wins
    messages = [*head, *prompt, *answer]
    _check_start(messages, plan.get("prompt", "prompt"))
    context = [len(head) + i for i, m in enumerate(prompt) if m["role"] == "assistant"]
    shift = len(head) + len(prompt)
    untrained = (*context, *(shift + i for i in answer_untrained))
    tools = _tools(values, plan)
    return Normalised(messages, None, tuple(empty), tuple(sorted(untrained)), tools)


def _with_system(
    values: Mapping[str, Any], plan: Plan, user: str, answer: str
) -> list[dict[str, str]]:
    system = _string(values, plan, "system", [], required=False)
    head = [{"role": "system", "content": system}] if system.strip() else []
    return [*head, {"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def _chat(values: Mapping[str, Any], plan: Plan) -> Normalised:
    return _conversation(values, plan, "messages", _CHAT_ROLES)


def _sharegpt(values: Mapping[str, Any], plan: Plan) -> Normalised:
    return _conversation(values, plan, "conversations", _SHAREGPT_ROLES)


def _conversation(
    values: Mapping[str, Any], plan: Plan, field: str, roles: dict[str, str]
) -> Normalised:
    column = plan.get(field, field)
    turns = values.get(column)
    if turns is None:
        raise RowError(column, "missing")
    if isinstance(turns, str):  # a CSV cell or database text holding the list
        turns = _list_in_text(turns, column)
    empty: list[str] = []
    messages, untrained = _messages(turns, column, roles, empty)
    # A system column beside the turns (LLaMA-Factory's ShareGPT layout) opens the
    # conversation, unless the conversation has a system message of its own.
    system = _string(values, plan, "system", [], required=False)
    if system.strip() and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}, *messages]
        untrained = tuple(i + 1 for i in untrained)
    _check_start(messages, column)
    return Normalised(messages, None, tuple(empty), untrained, _tools(values, plan))


def _tools(values: Mapping[str, Any], plan: Plan) -> list[dict[str, Any]] | None:
    column = plan.get("tools", "tools")
    try:
        return tools_of(values.get(column), column)
    except RowError as err:  # a spreadsheet's "Tools" column may mean something else
        hint = (
            f"; a {column!r} column holds the function schemas offered to the model (OpenAI's "
            "tools=): rename it if it means something else"
        )
        raise RowError(err.field, err.message + hint) from None


def _messages(
    turns: Any, column: str, roles: dict[str, str], empty: list[str]
) -> tuple[list[dict[str, Any]], tuple[int, ...]]:
    """The checked messages of a list, and the indices of its weight-0 assistant turns."""
    if not isinstance(turns, list) or not turns:
        raise RowError(column, f"expected a non-empty list of messages, got {type(turns).__name__}")
    messages = [_message(turn, f"{column}[{i}]", roles, empty) for i, turn in enumerate(turns)]
    untrained = tuple(
        i
        for i, (turn, message) in enumerate(zip(turns, messages, strict=True))
        if message["role"] == "assistant" and not _trained(turn, f"{column}[{i}]")
    )
    return messages, untrained


def _check_start(messages: list[dict[str, str]], column: str) -> None:
    if messages[0]["role"] not in ("system", "user"):
        raise RowError(
            f"{column}[0].role", "a conversation must start with a system or user message"
        )


def _list_in_text(text: str, column: str) -> Any:
    """The list a text cell writes as JSON, or as Python's repr (pandas' ``to_csv``)."""
    if not text.lstrip().startswith("["):
        raise RowError(column, f"expected a non-empty list of messages, got text {text[:60]!r}")
    value, json_error = _literal_in_text(text)
    if json_error is not None:
        msg = f"the text is not a list of messages in JSON ({json_error})"
        raise RowError(column, msg)
    return value


def _literal_in_text(text: str) -> tuple[Any, Exception | None]:
    """What ``text`` writes as JSON, or as Python's repr (literals only: nothing in the
    text runs); ``(None, the JSON error)`` when it is neither."""
    try:
        return json.loads(text), None
    except (ValueError, RecursionError) as err:
        json_error = err
    try:
        return ast.literal_eval(text.strip()), None
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None, json_error


def _message(turn: Any, where: str, roles: dict[str, str], empty: list[str]) -> dict[str, Any]:
    if not isinstance(turn, dict):
        raise RowError(where, f"expected a message object, got {type(turn).__name__}")
    sharegpt = "role" not in turn and ("from" in turn or "value" in turn)
    role_key, content_key = ("from", "value") if sharegpt else ("role", "content")
    if role_key not in turn:
        raise RowError(f"{where}.{role_key}", f"missing (each message needs a {role_key!r})")
    raw_role = turn.get(role_key)
    role = roles.get(raw_role.strip().lower()) if isinstance(raw_role, str) else None
    if role is None:
        raise RowError(
            f"{where}.{role_key}", f"unknown role {raw_role!r}; expected one of {sorted(roles)}"
        )
    if role_key == "from" and raw_role.strip().lower() == "function_call":
        value = f"{where}.{content_key}"
        calls = tool_calls_of(_calls_in_value(turn.get(content_key), value), where, value)
        return {"role": "assistant", "content": "", "tool_calls": calls}
    extras = _tool_fields(turn, role, where)
    if turn.get(content_key) is None and "tool_calls" not in extras:
        raise RowError(f"{where}.{content_key}", "missing")
    content = _text_parts(turn.get(content_key) or "", f"{where}.{content_key}")
    if not content.strip() and role != "system" and "tool_calls" not in extras:
        empty.append(f"{where}.{content_key}")
    return {"role": role, "content": content, **extras}


def _calls_in_value(value: Any, where: str) -> list[Any]:
    """A ShareGPT ``function_call`` turn's value: one ``{name, arguments}`` call or a list of
    them, as JSON text (LLaMA-Factory's tool-calling format) or already parsed."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as err:
            raise RowError(where, f"the call is not JSON ({err})") from None
    return value if isinstance(value, list) else [value]


def _tool_fields(turn: dict[str, Any], role: str, where: str) -> dict[str, Any]:
    """An assistant turn's tool calls (OpenAI's ``tool_calls``, or the older single
    ``function_call``), a tool turn's ``tool_call_id``/``name``; ``{}`` for other turns."""
    calls = turn.get("tool_calls")
    if calls is None and turn.get("function_call") is not None:
        calls = [{"function": turn["function_call"]}]
    if calls is not None and calls != []:
        if role != "assistant":
            raise RowError(f"{where}.tool_calls", f"only an assistant turn calls tools, not {role}")
        return {"tool_calls": tool_calls_of(calls, where)}
    return tool_turn_extras(turn) if role == "tool" else {}


def _trained(turn: dict[str, Any], where: str) -> bool:
    """An assistant turn's OpenAI ``weight``: 1 (or none) trains on it, 0 keeps it as context."""
    weight = turn.get("weight")
    if weight is None:
        return True
    if isinstance(weight, numbers.Real) and weight in (0, 1):
        return bool(weight)
    shown = repr(weight)[:60]
    raise RowError(
        f"{where}.weight",
        f"expected 0 (do not train on this turn) or 1 (train on it), got {shown}",
    )


def _text(values: Mapping[str, Any], plan: Plan) -> Normalised:
    empty: list[str] = []
    return Normalised(None, _string(values, plan, "text", empty), tuple(empty))


@dataclass(frozen=True)
class Format:
    """One data set format: the fields it needs and how a row becomes normal form.

    Attributes:
        name: The format's name, one of :data:`FORMAT_NAMES`.
        required: Canonical fields every row must have.
        optional: Canonical fields that are used when present.
        description: One line for people.
        normalise_row: ``(values, plan) -> Normalised``; raises :class:`RowError`.

    Examples:
        >>> FORMATS["alpaca"].required
        ('instruction', 'output')
    """

    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    description: str
    normalise_row: Callable[[Mapping[str, Any], Plan], Normalised]

    @property
    def is_text(self) -> bool:
        """True for raw text (no prompt, every token trained).

        Examples:
            >>> FORMATS["text"].is_text, FORMATS["qa"].is_text
            (True, False)
        """
        return self.name == "text"

    def normalise(self, values: Mapping[str, Any], plan: Plan) -> Normalised:
        """Check one row and return it in normal form.

        Raises:
            RowError: The row breaks the format (missing field, wrong type, unknown role).

        Examples:
            >>> FORMATS["text"].normalise({"body": "hi"}, {"text": "body"}).text
            'hi'
        """
        return self.normalise_row(values, plan)


# Detection order: the first format whose required fields are all present wins.
FORMATS: dict[str, Format] = {
    "chat": Format(
        "chat", ("messages",), ("tools", "system"), "messages: list of {role, content}", _chat
    ),
    "sharegpt": Format(
        "sharegpt",
        ("conversations",),
        ("tools", "system"),
        "ShareGPT conversations: {from, value}",
        _sharegpt,
    ),
    "alpaca": Format(
        "alpaca",
        ("instruction", "output"),
        ("input", "system"),
        "instruction/input/output",
        _alpaca,
    ),
    "qa": Format(
        "qa",
        ("prompt", "answer"),
        ("system", "tools"),
        "question/answer or prompt/completion",
        _qa,
    ),
    "text": Format("text", ("text",), (), "raw text for continued pretraining", _text),
}


def _available(columns: list[str], mapping: Mapping[str, str] | None) -> dict[str, str]:
    plan = dict(mapping or {})
    for column in columns:
        name = column.strip().lower()  # " Question " from a spreadsheet's header
        canonical = name if name in CANONICAL_FIELDS else _ALIASES.get(name)
        if canonical and canonical not in plan:
            plan[canonical] = column
    return plan


def detect_format(
    columns: list[str], mapping: Mapping[str, str] | None, label: str, name: str = "auto"
) -> tuple[Format, dict[str, str]]:
    """Pick the format (or check the one asked for) and map canonical fields to columns.

    Args:
        columns: The data's column names.
        mapping: Explicit ``{canonical field: column}``, e.g. ``{"prompt": "q", "answer": "a"}``.
        label: The source's name, for messages.
        name: ``"auto"`` or one of :data:`FORMAT_NAMES`.

    Returns:
        The format and the plan ``{canonical field: column}`` restricted to its fields.

    Raises:
        DataError: No format fits the columns, a required column is missing, or a mapped
            column does not exist.

    Examples:
        >>> detect_format(["q", "a"], {"prompt": "q", "answer": "a"}, "x.csv")[0].name
        'qa'
        >>> detect_format(["conversations"], None, "x.jsonl")[0].name
        'sharegpt'
    """
    for canonical, column in (mapping or {}).items():
        if column not in columns:
            msg = (
                f"{label}, field {column!r}: column not found (mapped to {canonical!r}); "
                f"columns are {columns}"
            )
            raise DataError(msg)
    plan = _available(columns, mapping)
    if name == "auto":
        found = next((f for f in FORMATS.values() if all(r in plan for r in f.required)), None)
        if found is None and {"input", "output"} <= plan.keys():  # no instruction: a pair
            found = FORMATS["qa"]
            plan = {**plan, "prompt": plan["input"], "answer": plan["output"]}
        answers = next((c for c in columns if c.strip().lower() == "answers"), None)
        if found is None and answers and {"prompt", "tools"} <= plan.keys():  # xLAM's calls
            found = FORMATS["qa"]
            plan = {**plan, "answer": answers}
        if found is None:
            msg = (
                f"{label}: cannot tell the format from the columns {columns}; expected one of "
                + "; ".join(f"{f.name} ({f.description})" for f in FORMATS.values())
                + '. Map yours with columns=, e.g. columns={"prompt": "q", "answer": "a"}'
                + _preference_hint(columns)
            )
            raise DataError(msg)
        return found, _restrict(plan, found)
    fmt = FORMATS[name]
    missing = [r for r in fmt.required if r not in plan]
    if missing:
        msg = (
            f"{label}, field {missing[0]!r}: missing column for format {name!r} "
            f"(columns are {columns})"
        )
        raise DataError(msg)
    return fmt, _restrict(plan, fmt)


def _preference_hint(columns: list[str]) -> str:
    lowered = {c.lower(): c for c in columns}
    if not {"chosen", "rejected"} <= lowered.keys():
        return ""
    prompt = next((lowered[c] for c in ("prompt", "question", "query") if c in lowered), None)
    chosen = lowered["chosen"]
    how = (
        f'map them with columns={{"prompt": "{prompt}", "answer": "{chosen}"}}'
        if prompt
        else f'map the chosen conversations with columns={{"messages": "{chosen}"}}'
    )
    return (
        ". These look like preference pairs (chosen/rejected, for DPO), which the workbench "
        f"does not train on; to tune on the chosen answers, {how}"
    )


def _restrict(plan: dict[str, str], fmt: Format) -> dict[str, str]:
    return {k: v for k, v in plan.items() if k in fmt.required + fmt.optional}
