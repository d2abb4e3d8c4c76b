"""Tool calling in conversations: OpenAI's ``tool_calls`` turns and a row's ``tools`` list.

A chat row may hold assistant turns that call tools, tool turns that answer them, and the
tools on offer::

    {"tools": [{"type": "function", "function": {"name": "add", "parameters": {...}}}],
     "messages": [{"role": "user", "content": "2 + 2?"},
                  {"role": "assistant", "tool_calls": [{"type": "function",
                      "function": {"name": "add", "arguments": "{\\"a\\": 2, \\"b\\": 2}"}}]},
                  {"role": "tool", "tool_call_id": "call_1", "content": "4"},
                  {"role": "assistant", "content": "2 + 2 = 4."}]}

Each call is normalised to the form chat templates read (``{"type": "function", "function":
{"name", "arguments"}}`` with ``arguments`` a dict, parsed when the data holds JSON text, as
OpenAI's API writes it). The template renders the calls and the tools (``tools=`` of
``apply_chat_template``), and an assistant turn's calls are trained like its text; tool
results are context. What the messages hold beyond ``role`` and ``content`` is stored per
row as JSON text in the :data:`TOOL_CALLING` column, so rows without tools keep the plain
``{role, content}`` shape (and the fast batch way).

Examples:
    >>> calls = tool_calls_of([{"function": {"name": "add", "arguments": '{"a": 2}'}}], "m[1]")
    >>> calls
    [{'type': 'function', 'function': {'name': 'add', 'arguments': {'a': 2}}}]
    >>> stored = encode_tool_calling(None, {1: {"tool_calls": calls}})
    >>> turns = [{"role": "user", "content": "2?"}, {"role": "assistant", "content": ""}]
    >>> with_tool_calling(turns, stored)[0][1]["tool_calls"][0]["function"]["name"]
    'add'
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jinja2.exceptions import TemplateError

from workbench.data.call_formats import function_of, parse_tool_calls

__all__ = [
    "TOOL_CALLING",
    "ToolsNotWrittenError",
    "answer_calls",
    "answer_template",
    "check_template_writes_tools",
    "encode_tool_calling",
    "map_texts",
    "map_tool_texts",
    "parse_tool_calls",
    "refuse_dropped_tools",
    "response_template",
    "tool_calls_of",
    "tool_texts",
    "tool_turn_extras",
    "tools_of",
    "turn_text",
    "with_tool_calling",
]

TOOL_CALLING = "tool_calling"
"""Column of a row's tools and per-turn tool fields, as JSON text (null: none)."""

_TOOL_TURN_KEYS = ("tool_call_id", "name")


class ToolsNotWrittenError(TemplateError):
    """A rendering left out a row's tool calls or tools (raised while labelling).

    A ``TemplateError``: loading then checks every row before labelling and names each one
    the template drops (:func:`check_template_writes_tools` gives the words).
    """


def _row_error(field: str, message: str) -> Exception:
    from workbench.data.formats import RowError

    return RowError(field, message)


def _arguments(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError as err:
            raise _row_error(where, f"the arguments are not JSON ({err})") from None
    if not isinstance(value, dict):
        raise _row_error(where, f"expected the arguments as an object, got {type(value).__name__}")
    return value


def tool_calls_of(value: Any, where: str, field: str | None = None) -> list[dict[str, Any]]:
    """A turn's ``tool_calls`` in the form templates read, checked.

    Accepts OpenAI's ``{"type": "function", "function": {"name", "arguments"}}`` (arguments as
    JSON text or an object) and the flat ``{"name", "arguments"}`` some data sets use.
    ``field`` is where the data holds the calls (default ``<where>.tool_calls``; a ShareGPT
    ``function_call`` turn holds them in its ``value``).

    Raises:
        RowError: Not a list of calls, a call without a name, or arguments that are not a
            JSON object; the field names the call as the data writes it
            (``messages[1].tool_calls[0].function.name``, ``conversations[1].value[0].name``).

    Examples:
        >>> tool_calls_of([{"name": "now", "arguments": {}}], "messages[1]")
        [{'type': 'function', 'function': {'name': 'now', 'arguments': {}}}]
        >>> try:
        ...     tool_calls_of([{"arguments": "{}"}], "c[1]", "c[1].value")
        ... except Exception as err:
        ...     print(err.field, err.message)
        c[1].value[0].name missing
    """
    field = field or f"{where}.tool_calls"
    if not isinstance(value, list) or not value:
        raise _row_error(field, f"expected a non-empty list of calls, got {value!r:.60}")
    calls = []
    for i, call in enumerate(value):
        at = f"{field}[{i}]"
        if not isinstance(call, dict):
            raise _row_error(at, f"expected a call object, got {type(call).__name__}")
        function = call.get("function", call)
        inner = f"{at}.function" if "function" in call else at  # as the data nests it
        if not isinstance(function, dict):
            raise _row_error(inner, "expected an object with name and arguments")
        name = function.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _row_error(f"{inner}.name", "missing")
        arguments = _arguments(function.get("arguments"), f"{inner}.arguments")
        normal: dict[str, Any] = {"type": "function", "function": {"name": name}}
        normal["function"]["arguments"] = arguments
        if isinstance(call.get("id"), str):
            normal["id"] = call["id"]
        calls.append(normal)
    return calls


def tool_turn_extras(turn: Mapping[str, Any]) -> dict[str, str]:
    """What a tool turn says about the call it answers (``tool_call_id``, ``name``).

    Examples:
        >>> tool_turn_extras({"role": "tool", "content": "4", "tool_call_id": "c1"})
        {'tool_call_id': 'c1'}
    """
    return {k: turn[k] for k in _TOOL_TURN_KEYS if isinstance(turn.get(k), str)}


def tools_of(value: Any, field: str) -> list[dict[str, Any]] | None:
    """A row's ``tools`` (OpenAI's function schemas), checked; ``None`` when it has none.

    JSON text (a CSV cell) is read as the list it writes. Each tool takes the form a chat
    request sends (``{"type": "function", "function": {...}}``), so the model trains on the
    tools as it will be offered them when served: a bare function object is wrapped, and a
    flat parameter list (Salesforce's xLAM sets: ``{"city": {"type": "str, optional"}}``)
    becomes a JSON Schema object (``"string"``, ``"required"`` for the ones not optional;
    nested lists and dicts, unions and ``Literal`` too; no ``type`` for ``Any``, ``Callable``
    or an unknown name, rather than a wrong one).

    Raises:
        RowError: Not a list of tool objects, or a tool without a name.

    Examples:
        >>> tools_of('[{"type": "function", "function": {"name": "add"}}]', "tools")
        [{'type': 'function', 'function': {'name': 'add'}}]
        >>> tools_of([], "tools") is None
        True

        An xLAM tool:

        >>> flat = {"name": "add", "parameters": {"a": {"type": "int"},
        ...                                       "b": {"type": "int, optional", "default": 0}}}
        >>> tools_of([flat], "tools")[0]["function"]["parameters"]  # doctest: +NORMALIZE_WHITESPACE
        {'type': 'object', 'properties': {'a': {'type': 'integer'},
         'b': {'type': 'integer', 'default': 0}}, 'required': ['a']}
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as err:
            raise _row_error(field, f"the tools are not JSON ({err})") from None
    if not isinstance(value, list):
        raise _row_error(field, f"expected a list of tools, got {type(value).__name__}")
    for i, tool in enumerate(value):
        if function_of(tool) is None:
            raise _row_error(f"{field}[{i}]", "expected a tool object with a function name")
    return [_as_request_tool(tool) for tool in value] or None


def _as_request_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """``tool`` as a chat request sends it: wrapped, its parameters a JSON Schema object."""
    function = function_of(tool)
    parameters = function.get("parameters")
    if _is_flat_parameter_list(parameters):
        function = {**function, "parameters": _json_schema_object(parameters)}
    if "function" in tool:
        return {**tool, "function": function} if function is not tool["function"] else tool
    return {"type": "function", "function": function}


def _is_flat_parameter_list(parameters: Any) -> bool:
    """Whether ``parameters`` names each parameter at the top (xLAM) rather than being a
    JSON Schema object (``{"type": "object", "properties": ...}``). A parameter may itself
    be called ``type`` or ``properties``: a schema's are a string and a dict of dicts."""
    if not isinstance(parameters, dict) or not parameters:
        return False
    if not all(isinstance(spec, dict) for spec in parameters.values()):
        return False  # a schema: its "type" is a string, its "required" a list
    inner = parameters.get("properties")
    return not (isinstance(inner, dict) and all(isinstance(v, dict) for v in inner.values()))


def _json_schema_object(parameters: dict[str, dict[str, Any]]) -> dict[str, Any]:
    properties, required = {}, []
    for name, spec in parameters.items():
        kind = spec.get("type")
        optional = isinstance(kind, str) and "optional" in kind.lower()
        if isinstance(spec.get("required"), bool):  # some sets say so per parameter
            optional = not spec["required"]
        prop = {k: v for k, v in spec.items() if k not in ("type", "required")}
        schema = _json_schema_type(kind) if isinstance(kind, str) else None
        properties[name] = {**schema, **prop} if schema else prop
        if not optional:
            required.append(name)
    found = {"type": "object", "properties": properties}
    return {**found, "required": required} if required else found


_PYTHON_TYPES = {
    "str": "string",
    "string": "string",
    "int": "integer",
    "integer": "integer",
    "float": "number",
    "number": "number",
    "bool": "boolean",
    "boolean": "boolean",
    "list": "array",
    "tuple": "array",
    "set": "array",
    "sequence": "array",
    "array": "array",
    "dict": "object",
    "mapping": "object",
    "object": "object",
}


def _json_schema_type(kind: str) -> dict[str, Any] | None:
    """A Python-style type name (``"List[int], optional"``) as JSON Schema; ``None`` for
    ``Any``, ``Callable`` and the unknown (a guessed type would misdescribe the tool)."""
    text = re.sub(r",?\s*optional\s*$", "", kind.strip(), flags=re.IGNORECASE)
    return _type_expression_schema(text)


def _type_expression_schema(text: str) -> dict[str, Any] | None:
    """``str``, ``List[List[int]]``, ``Dict[str, float]``, ``Union[int, str]``, ``int | None``,
    ``Literal['a', 'b']``, ``typing.Optional[str]``... as JSON Schema, else ``None``."""
    text = text.strip()
    members = _split_top_level(text, "|")
    if len(members) > 1:
        return _union_schema(members)
    outer, bracket, rest = text.partition("[")
    name = outer.strip().rsplit(".", 1)[-1].lower()  # typing.List -> list
    if bracket:
        args = _split_top_level(rest[:-1], ",") if rest.endswith("]") else None
        return _generic_schema(name, args) if args else None
    found = _PYTHON_TYPES.get(name)
    return {"type": found} if found else None


def _generic_schema(name: str, args: list[str]) -> dict[str, Any] | None:
    """``name[args]``: ``Optional``, ``Union``, ``Literal``, a list or tuple, a dict."""
    if name in ("optional", "union"):
        return _union_schema(args)
    if name == "literal":
        return _literal_schema(args)
    found = _PYTHON_TYPES.get(name)
    if name == "tuple" and len(args) > 1 and "..." not in args:  # Tuple[int, str]: each place
        return _fixed_tuple_schema(args)
    if found == "array":  # List[int], Tuple[int, ...]
        items = {arg for arg in args if arg != "..."}
        key, inner = "items", items.pop() if len(items) == 1 else None
    elif found == "object":  # Dict[str, float]
        key, inner = "additionalProperties", args[1] if len(args) == 2 else None
    else:
        return {"type": found} if found else None
    schema = _type_expression_schema(inner) if inner else None
    return {"type": found, key: schema} if schema else {"type": found}


def _fixed_tuple_schema(places: list[str]) -> dict[str, Any]:
    """``Tuple[int, str]``: an array of that length, each place typed (JSON Schema's
    ``prefixItems``) when every place's type is known."""
    schema: dict[str, Any] = {"type": "array", "minItems": len(places), "maxItems": len(places)}
    typed = [_type_expression_schema(place) for place in places]
    if all(typed):
        schema["prefixItems"] = typed
    return schema


def _union_schema(members: list[str]) -> dict[str, Any] | None:
    """One of ``members`` (``None`` among them only makes it optional); ``None`` when one of
    them is unknown, since a type list missing it would refuse its values."""
    schemas = [_type_expression_schema(m) for m in members if m not in ("None", "NoneType")]
    if not schemas or any(schema is None for schema in schemas):
        return None
    if len(schemas) == 1:
        return schemas[0]
    if all(schema.keys() == {"type"} for schema in schemas):
        return {"type": list(dict.fromkeys(schema["type"] for schema in schemas))}
    return {"anyOf": schemas}


def _literal_schema(args: list[str]) -> dict[str, Any] | None:
    try:
        values = [ast.literal_eval(arg) for arg in args]
    except (ValueError, SyntaxError):
        return None
    kinds = {_JSON_TYPE_OF.get(type(value)) for value in values}
    if None in kinds:
        return None
    return {"type": kinds.pop(), "enum": values} if len(kinds) == 1 else {"enum": values}


_JSON_TYPE_OF = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _split_top_level(text: str, separator: str) -> list[str]:
    """``text`` split at ``separator`` outside brackets and quotes, each part stripped."""
    parts, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == separator and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    return [*parts, text[start:].strip()]


def encode_tool_calling(
    tools: list[dict[str, Any]] | None, extras: Mapping[int, dict[str, Any]]
) -> str | None:
    """The :data:`TOOL_CALLING` cell of a row (``None`` when it has no tools or calls).

    Examples:
        >>> encode_tool_calling(None, {}) is None
        True
        >>> encode_tool_calling(None, {2: {"tool_call_id": "c1"}})
        '{"tools": null, "turns": {"2": {"tool_call_id": "c1"}}}'
    """
    if not tools and not extras:
        return None
    turns = {str(i): extra for i, extra in sorted(extras.items())}
    return json.dumps({"tools": tools, "turns": turns}, ensure_ascii=False)


def with_tool_calling(
    messages: Sequence[Mapping[str, Any]], stored: str | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages with their tool fields put back, and the row's tools.

    Examples:
        >>> with_tool_calling([{"role": "user", "content": "Hi"}], None)
        ([{'role': 'user', 'content': 'Hi'}], None)
    """
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    if not stored:
        return plain, None
    data = json.loads(stored)
    for index, extra in data.get("turns", {}).items():
        plain[int(index)].update(extra)
    return plain, data.get("tools")


def tool_texts(stored: str | None) -> list[tuple[str, str]]:
    """Each text in a row's tools and tool fields, with the field it sits in.

    Keys count as texts too: the template writes them (an argument's name, say).

    Examples:
        >>> stored = encode_tool_calling(None, {1: {"tool_calls": tool_calls_of(
        ...     [{"name": "echo", "arguments": {"text": "hi"}}], "m[1]")}})
        >>> tool_texts(stored)[-1]
        ('messages[1].tool_calls[0].function.arguments.text', 'hi')
    """
    if not stored:
        return []
    data = json.loads(stored)
    found: list[tuple[str, str]] = []
    _collect_texts(data.get("tools"), "tools", found)
    for index, extra in data.get("turns", {}).items():
        _collect_texts(extra, f"messages[{index}]", found)
    return found


def _collect_texts(value: Any, where: str, found: list[tuple[str, str]]) -> None:
    if isinstance(value, str):
        found.append((where, value))
    elif isinstance(value, dict):
        for key, item in value.items():
            found.append((f"{where}.{key}", key))
            _collect_texts(item, f"{where}.{key}", found)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _collect_texts(item, f"{where}[{i}]", found)


def map_tool_texts(stored: str | None, change: Callable[[str], str]) -> str | None:
    """A :data:`TOOL_CALLING` cell with ``change`` applied to each of its texts (and keys).

    Examples:
        >>> stored = encode_tool_calling([{"function": {"name": "now"}}], {})
        >>> map_tool_texts(stored, str.upper)
        '{"tools": [{"FUNCTION": {"NAME": "NOW"}}], "turns": {}}'
    """
    if not stored:
        return stored
    data = json.loads(stored)
    turns = {index: map_texts(extra, change) for index, extra in data.get("turns", {}).items()}
    changed = {"tools": map_texts(data.get("tools"), change), "turns": turns}
    return json.dumps(changed, ensure_ascii=False)


def map_texts(value: Any, change: Callable[[str], str]) -> Any:
    """``value`` (JSON-like: strings, dicts, lists) with ``change`` applied to each string
    and each dict key.

    Examples:
        >>> map_texts([{"role": "user", "content": "hi"}, 3], str.upper)
        [{'ROLE': 'USER', 'CONTENT': 'HI'}, 3]
    """
    if isinstance(value, str):
        return change(value)
    if isinstance(value, dict):
        return {change(key): map_texts(item, change) for key, item in value.items()}
    if isinstance(value, list):
        return [map_texts(item, change) for item in value]
    return value


def answer_calls(messages: Sequence[Mapping[str, Any]], stored: str | None) -> list[Any]:
    """The calls of a conversation's last assistant turn (``[]``: it makes none).

    Examples:
        >>> stored = encode_tool_calling(None, {1: {"tool_calls": tool_calls_of(
        ...     [{"name": "now", "arguments": {}}], "m[1]")}})
        >>> turns = [{"role": "user", "content": "Time?"}, {"role": "assistant", "content": ""}]
        >>> [call["function"]["name"] for call in answer_calls(turns, stored)]
        ['now']
        >>> answer_calls(turns, None)
        []
    """
    full, _ = with_tool_calling(messages, stored)
    last = next((m for m in reversed(full) if m["role"] == "assistant"), None)
    return list(last.get("tool_calls") or ()) if last is not None else []


def check_template_writes_tools(
    rendered: str,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Any] | None,
    prompts: Mapping[int, str] | None = None,
) -> str | None:
    """Why a rendering drops tool calling (a template that ignores it), or ``None``.

    A template without tool support renders a calling turn as its (often empty) text and
    leaves the tools out: training would teach the model to answer nothing. ``prompts`` maps
    the index of an assistant turn to its prompt's rendering. Each tool's name must be in the
    first of them (the tools are offered before the model answers; ``rendered``, the whole
    conversation, when none is given). Each call's name must be in ``rendered``; where its
    turn's prompt begins ``rendered``, it must be written after that prompt, as often as that
    turn and later ones call it: the tools listed in the prompt do not count, nor does one
    written call for two.

    Examples:
        >>> turn = {"role": "assistant", "content": "",
        ...         "tool_calls": [{"function": {"name": "add", "arguments": {}}}]}
        >>> check_template_writes_tools("<user>2+2?<assistant>", [turn], None)
        "it does not write tool calls ('add' is missing from its rendering)"
        >>> listed_only = "<tools>add</tools><user>2+2?<assistant>"
        >>> check_template_writes_tools(listed_only, [{}, turn], None, {1: listed_only})
        "it does not write tool calls ('add' is missing from its rendering)"
    """
    prompts = prompts or {}
    starts = {i: len(p) for i, p in prompts.items() if rendered.startswith(p)}
    names = [[c["function"]["name"] for c in m.get("tool_calls", ())] for m in messages]
    for i, called in enumerate(names):
        start = starts.get(i)
        answer = rendered if start is None else rendered[start:]
        for name in dict.fromkeys(called):
            wanted = sum(later.count(name) for later in names[i:]) if start is not None else 1
            written = answer.count(name)
            if not written:
                return f"it does not write tool calls ({name!r} is missing from its rendering)"
            if written < wanted:
                return (
                    f"it does not write every tool call (messages[{i}] and later turns call "
                    f"{name!r} {wanted} times, its rendering writes it {written})"
                )
    offered_in = prompts[min(prompts)] if prompts else rendered
    for tool in tools or ():
        name = function_of(tool)["name"]
        if name not in offered_in:
            return (
                f"it does not write the tools offered (tools=): {name!r} is missing from the prompt"
            )
    return None


def refuse_dropped_tools(
    conversations: Sequence[Sequence[Mapping[str, Any]]],
    tools: Sequence[Any] | None,
    fulls: Sequence[str],
    prompts: Sequence[tuple[int, int, str]],
) -> None:
    """Raise :class:`ToolsNotWrittenError` when a row's rendering leaves out its calls or tools.

    Loading checks one row per sequence of roles before labelling; this checks every row
    with tools on the renderings labelling makes anyway (``fulls``: each row's whole
    rendering; ``prompts``: row, message index and prompt of each trained answer), so no row
    is rendered twice for the check; only the prompts of untrained (weight 0) calling turns
    are rendered for it alone.

    Examples:
        >>> call = {"role": "assistant", "content": "",
        ...         "tool_calls": [{"function": {"name": "add", "arguments": {}}}]}
        >>> rows = [[{"role": "user", "content": "2+2?"}, call]]
        >>> refuse_dropped_tools(rows, None, ["<user>2+2?<call>add()"], [(0, 1, "<user>2+2?")])
        >>> try:
        ...     refuse_dropped_tools(rows, None, ["<user>2+2?<assistant>"], [])
        ... except ToolsNotWrittenError as error:
        ...     print(error)
        it does not write tool calls ('add' is missing from its rendering)
    """
    by_row: dict[int, dict[int, str]] = {}
    for row, turn, text in prompts:
        by_row.setdefault(row, {})[turn] = text
    for row, messages in enumerate(conversations):
        offered = tools[row] if tools else None
        if offered or any("tool_calls" in m for m in messages):
            reason = check_template_writes_tools(fulls[row], messages, offered, by_row.get(row))
            if reason:
                raise ToolsNotWrittenError(reason)


def turn_text(message: Mapping[str, Any]) -> str:
    """A turn's text with its calls written as ``name({arguments})``, for previews.

    Examples:
        >>> turn_text({"role": "assistant", "content": "",
        ...            "tool_calls": [{"function": {"name": "add", "arguments": {"a": 2}}}]})
        'add({"a": 2})'
    """
    calls = [
        f"{c['function']['name']}({json.dumps(c['function']['arguments'], ensure_ascii=False)})"
        for c in message.get("tool_calls", ())
    ]
    return "\n".join(filter(None, [message["content"], *calls]))


def response_template(template: Any, end_markers: Sequence[str]) -> dict[str, Any] | None:
    """How a server reads an answer back into content and tool calls (``None``: no way known).

    For the built-in templates, which write calls as ``<tool_call>{json}</tool_call>``, this
    is transformers' declarative response template (``tokenizer.response_template``, kept in
    ``tokenizer_config.json``): ``transformers serve`` then answers an OpenAI client's
    ``tools=`` request with ``tool_calls`` instead of raw text.

    Examples:
        >>> from workbench.data.templates import TEMPLATES
        >>> reader = response_template(TEMPLATES["chatml"], ["<|im_end|>"])
        >>> reader["start_anchor"], reader["fields"]["tool_calls"]["close"]
        ('<|im_start|>assistant\\n', '</tool_call>')
        >>> response_template(TEMPLATES["alpaca"], ["</s>"]) is None
        True
    """
    if template.origin != "builtin" or "<tool_call>" not in template.source or not end_markers:
        return None
    reader = answer_template(template, end_markers)
    reader["fields"] = {
        "tool_calls": {
            "open_pattern": r"\s*<tool_call>",
            "close": "</tool_call>",
            "repeats": True,
            "content": "json",
            "transform": {"type": "function", "function": "{content}"},
        },
        **reader["fields"],
    }
    return reader


def answer_template(template: Any, end_markers: Sequence[str]) -> dict[str, Any]:
    """A response template that reads an answer as plain text up to the end of its turn.

    For a server whose own fallback for the model family (``transformers serve`` has one for
    Qwen and Gemma 4) expects another template's turns than the one the model was tuned with.

    Examples:
        >>> from workbench.data.templates import TEMPLATES
        >>> reader = answer_template(TEMPLATES["alpaca"], ["</s>"])
        >>> reader["start_anchor"], reader["fields"]["content"]["close_pattern"]
        ('### Response:\\n', '\\\\s*(?:</s>)')
    """
    ends = "|".join(re.escape(marker) for marker in end_markers)
    turn = [{"role": "user", "content": "x"}]
    opened = template.render(turn, True)[len(template.render(turn, False)) :]
    reader: dict[str, Any] = {"defaults": {"role": "assistant"}}
    if opened:
        reader["start_anchor"] = opened  # the header that opens the model's turn
    reader["fields"] = {"content": {"close_pattern": rf"\s*(?:{ends})", "content": "text"}}
    return reader
