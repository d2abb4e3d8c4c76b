"""Read the tool calls a model wrote, in the forms chat templates write them.

A model's answer is untrusted text: nothing in it runs, and what does not parse as a call is
left out. The forms read, wherever they sit in the answer:

==============================  ===============================================================
form                            written as
==============================  ===============================================================
JSON object (Hermes, Qwen)      ``<tool_call>{"name": "f", "arguments": {...}}</tool_call>``,
                                or bare; ``"parameters"`` for ``"arguments"`` (Llama 3.1)
JSON list (Mistral)             ``[TOOL_CALLS][{"name": "f", "arguments": {...}}, ...]``
Mistral v11                     ``[TOOL_CALLS]f[ARGS]{...}``
OpenAI's wrapping               ``{"function": {"name": "f", "arguments": "{...}"}}``
pythonic (Llama 3.2, Gemma)     ``[f(a=1, b="x"), g()]``: a list of calls with keyword literals
Gemma 3's code fence            a Markdown fence opened as ``tool_code``, one call per line:
                                ``f(a=1)``, or ``print(f(a=1))`` as Google's examples write it
FunctionGemma                   ``<start_function_call>call:f{a:<escape>x<escape>,n:2}``
                                ``<end_function_call>``
Gemma 4                         ``<|tool_call>call:f{a:<|"|>x<|"|>,n:2}<tool_call|>``
XML-ish (Qwen3-Coder)           ``<function=f><parameter=a>1</parameter></function>``: a value
                                that parses as JSON is read as JSON (``1``, ``[2]``), any
                                other as text, as the template writes them; with ``tools``,
                                a parameter declared a string stays text (``"10115"``)
==============================  ===============================================================

Examples:
    >>> [c["function"] for c in parse_tool_calls('[add(a=1, b=2), now()]')]
    [{'name': 'add', 'arguments': {'a': 1, 'b': 2}}, {'name': 'now', 'arguments': {}}]
    >>> parse_tool_calls("<start_function_call>call:weather{city:<escape>Paris<escape>}"
    ...                  "<end_function_call>")[0]["function"]
    {'name': 'weather', 'arguments': {'city': 'Paris'}}
    >>> parse_tool_calls("<tool_call>\\n<function=weather>\\n<parameter=city>\\nParis\\n"
    ...                  "</parameter>\\n<parameter=days>\\n3\\n</parameter>\\n</function>"
    ...                  )[0]["function"]
    {'name': 'weather', 'arguments': {'city': 'Paris', 'days': 3}}
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

__all__ = ["function_of", "parse_tool_calls"]

_STARTS = re.compile(
    r"(?P<gemma>(?:<start_function_call>|<\|tool_call>)\s*call:"
    r"(?P<gemma_name>[A-Za-z_][\w.-]*)\s*(?=\{))"
    r"|(?P<named>\[TOOL_CALLS\]\s*(?P<named_name>[A-Za-z_][\w.-]*)\s*\[ARGS\])"
    r"|(?P<xml><function=(?P<xml_name>[A-Za-z_][\w.-]*)>)"
    r"|(?P<pythonic>\[\s*[A-Za-z_][\w.]*\s*\()"
    r"|(?P<fence>```tool_code[ \t]*\r?\n)"
    r"|[{\[]"
)
_STRING_DELIMITERS = ("<escape>", '<|"|>')  # FunctionGemma's, Gemma 4's
_XML_PARAMETER = re.compile(r"<parameter=([^>\n]+)>\n?(.*?)\n?</parameter>", re.DOTALL)
_MAX_PYTHONIC_ENDS = 64  # closing brackets tried for one pythonic list
Call = dict[str, Any]


def parse_tool_calls(text: str, tools: list[dict[str, Any]] | None = None) -> list[Call]:
    """The tool calls written in a model's answer, in OpenAI's form, in order.

    See the module's table for the forms read. A call cut off by ``max_new_tokens`` counts
    when its arguments are whole. Calls written in a form not listed (``add(a=1)`` outside a
    list or a ``tool_code`` fence, prose) are not read. ``tools``, the function schemas the
    model was offered (as a chat request sends them, or bare), settle what only they can: a
    Qwen3-Coder value written ``10115`` is the text ``"10115"`` where its parameter is
    declared a string.

    Examples:
        >>> parse_tool_calls('<tool_call>\\n{"name": "add", "arguments": {"a": 1}}\\n</tool_call>')
        [{'type': 'function', 'function': {'name': 'add', 'arguments': {'a': 1}}}]
        >>> [c["function"]["name"] for c in parse_tool_calls(
        ...     '[TOOL_CALLS][{"name": "add", "arguments": {}}, {"name": "now", "arguments": {}}]')]
        ['add', 'now']
        >>> parse_tool_calls('{"name": "add", "parameters": {"a": 1}}')[0]["function"]
        {'name': 'add', 'arguments': {'a': 1}}
        >>> parse_tool_calls("It is 4, says {the table}, or [see above](link).")
        []
        >>> code = "<function=lookup><parameter=code>10115</parameter></function>"
        >>> parse_tool_calls(code)[0]["function"]["arguments"]
        {'code': 10115}
        >>> tool = {"name": "lookup", "parameters": {"type": "object",
        ...         "properties": {"code": {"type": "string"}}}}
        >>> parse_tool_calls(code, tools=[tool])[0]["function"]["arguments"]
        {'code': '10115'}
    """
    calls: list[Call] = []
    decoder = json.JSONDecoder()
    strings = _string_parameters(tools)
    position = 0
    while (start := _STARTS.search(text, position)) is not None:
        found, end = _read_at(text, start, decoder, strings)
        calls += found
        position = end if end is not None else start.start() + 1
    return calls


def _read_at(
    text: str,
    start: re.Match[str],
    decoder: json.JSONDecoder,
    strings: dict[str, set[str]],
) -> tuple[list[Call], int | None]:
    """The calls read from ``start`` and where reading ended (``None``: nothing parsed)."""
    if start.group("gemma"):
        read = _gemma_value(text, start.end())
        if read is None or not isinstance(read[0], dict):
            return [], None
        return [_call(start.group("gemma_name"), read[0])], read[1]
    if start.group("xml"):
        return _xml_call(text, start, strings.get(start.group("xml_name"), set()))
    if start.group("pythonic") or start.group("fence"):
        pythonic = start.group("pythonic")
        read = (
            _pythonic_calls(text, start.start()) if pythonic else _fenced_calls(text, start.end())
        )
        return read if read is not None else ([], None)
    at = start.end() if start.group("named") else start.start()
    try:
        value, end = decoder.raw_decode(text, at)
    except ValueError:
        return [], None
    if start.group("named"):
        value = {"name": start.group("named_name"), "arguments": value}
    return _calls_in(value), end


def _call(name: str, arguments: dict[str, Any]) -> Call:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def _calls_in(value: Any) -> list[Call]:
    """The calls a decoded JSON value is or holds (a call, a list of calls, an object
    wrapping them), in order; each value is decoded once, so a long JSON answer costs
    one pass."""
    call = _call_of(value)
    if call is not None:
        return [call]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return [c for item in items for c in _calls_in(item)]


def _call_of(value: Any) -> Call | None:
    if isinstance(value, dict) and isinstance(value.get("function"), dict):
        value = value["function"]
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    key = "arguments" if "arguments" in value else "parameters"
    if key not in value:
        return None
    arguments = value[key]
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            return None
    return _call(value["name"], arguments) if isinstance(arguments, dict) else None


def function_of(tool: Any) -> dict[str, Any] | None:
    """A tool's function object, as a chat request wraps it or bare; ``None`` when ``tool``
    is no object with a function name.

    Examples:
        >>> function_of({"type": "function", "function": {"name": "add"}})
        {'name': 'add'}
        >>> function_of({"name": "add"}), function_of({"function": {}}), function_of("add")
        ({'name': 'add'}, None, None)
    """
    function = tool.get("function", tool) if isinstance(tool, dict) else None
    named = isinstance(function, dict) and isinstance(function.get("name"), str)
    return function if named else None


def _string_parameters(tools: list[dict[str, Any]] | None) -> dict[str, set[str]]:
    """For each offered function, the parameters its schema declares only as strings."""
    found: dict[str, set[str]] = {}
    for tool in tools or ():
        function = function_of(tool)
        if function is None:
            continue
        properties = (function.get("parameters") or {}).get("properties") or {}
        found[function["name"]] = {
            name
            for name, schema in properties.items()
            if isinstance(schema, dict) and schema.get("type") in ("string", ["string"])
        }
    return found


# --- XML-ish: <function=f><parameter=a>1</parameter></function> -------------------------


def _xml_call(text: str, start: re.Match[str], strings: set[str]) -> tuple[list[Call], int | None]:
    """The call whose ``<function=...>`` tag is ``start``, when its ``</function>`` is there;
    the parameters named in ``strings`` are declared strings and kept as text."""
    close = text.find("</function>", start.end())
    if close < 0:
        return [], None  # cut off before its arguments were whole
    arguments = {}
    for raw_name, value in _XML_PARAMETER.findall(text, start.end(), close):
        name = raw_name.strip()
        try:
            arguments[name] = value if name in strings else json.loads(value)
        except ValueError:
            arguments[name] = value
    return [_call(start.group("xml_name"), arguments)], close + len("</function>")


# --- pythonic: [f(a=1), g(b="x")] ---------------------------------------------------------


def _pythonic_calls(text: str, start: int) -> tuple[list[Call], int] | None:
    """The calls of a ``[f(a=1), ...]`` list at ``start``, read with :mod:`ast` (literals
    only: nothing runs), and the end of the list; ``None`` when it is no such list."""
    end = start
    for _ in range(_MAX_PYTHONIC_ENDS):
        end = text.find("]", end + 1)
        if end < 0:
            return None
        try:
            tree = ast.parse(text[start : end + 1], mode="eval").body
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        calls = _pythonic_list(tree)
        return (calls, end + 1) if calls is not None else None
    return None


def _pythonic_list(tree: ast.AST) -> list[Call] | None:
    if not isinstance(tree, ast.List) or not tree.elts:
        return None
    return _keyword_calls(tree.elts)


def _fenced_calls(text: str, at: int) -> tuple[list[Call], int] | None:
    """The calls of a ``tool_code`` fence whose body starts at ``at``, one statement each
    (``f(a=1)``, or ``print(f(a=1))`` as Google's Gemma 3 examples write them), and the end
    of the fence. A fence cut off by ``max_new_tokens`` keeps its whole lines; any other
    code in the body means it is code, not calls: ``None``."""
    close = text.find("```", at)
    body = text[at:] if close < 0 else text[at:close]
    if close < 0:  # cut off: the last line may be half a call
        body = body[: body.rfind("\n") + 1] if "\n" in body else ""
    try:
        statements = ast.parse(body).body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    calls = []
    for statement in statements:
        node = statement.value if isinstance(statement, ast.Expr) else None
        printed = isinstance(node, ast.Call) and ast.unparse(node.func) == "print"
        if printed and len(node.args) == 1 and not node.keywords:
            node = node.args[0]
        calls.append(node)
    read = _keyword_calls(calls) if calls else None
    return (read, len(text) if close < 0 else close + 3) if read else None


def _keyword_calls(nodes: list[Any]) -> list[Call] | None:
    """The calls ``nodes`` are, each ``name(keyword=literal, ...)``; ``None`` when one is not."""
    calls = []
    for node in nodes:
        if not isinstance(node, ast.Call) or node.args or any(k.arg is None for k in node.keywords):
            return None
        try:
            arguments = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
            name = ast.unparse(node.func)
        except (ValueError, TypeError, SyntaxError, RecursionError):
            return None
        if not re.fullmatch(r"[A-Za-z_][\w.]*", name):
            return None
        calls.append(_call(name, arguments))
    return calls


# --- FunctionGemma and Gemma 4: call:f{a:<escape>x<escape>,n:2} ------------------------


def _gemma_value(text: str, at: int) -> tuple[Any, int] | None:
    """A FunctionGemma or Gemma 4 value at ``at`` and the index after it (``None``: malformed).

    Strings sit between ``<escape>`` tokens (Gemma 4: ``<|"|>``), objects are
    ``{key:value,...}`` with bare keys, lists ``[value,...]``; anything else is a bare number,
    ``true``/``false``/``null``, or text up to the next ``,``, ``}`` or ``]``. Space between
    the parts is allowed.
    """
    at = _after_space(text, at)
    delimiter = next((d for d in _STRING_DELIMITERS if text.startswith(d, at)), None)
    if delimiter is not None:
        close = text.find(delimiter, at + len(delimiter))
        return None if close < 0 else (text[at + len(delimiter) : close], close + len(delimiter))
    if at < len(text) and text[at] in "{[":
        return _gemma_container(text, at)
    match = re.compile(r"[^,}\]]*").match(text, at)
    assert match is not None  # the pattern matches the empty string
    bare = match.group().strip()
    if not bare:
        return None
    try:
        return json.loads(bare), match.end()  # a number, true, false, null
    except ValueError:
        return bare, match.end()


def _gemma_container(text: str, at: int) -> tuple[Any, int] | None:
    closing = "}" if text[at] == "{" else "]"
    items: list[Any] = []
    pairs: dict[str, Any] = {}
    at = _after_space(text, at + 1)
    while at < len(text) and text[at] != closing:
        if closing == "}":
            colon = text.find(":", at)
            if colon < 0:
                return None
            key = text[at:colon].strip()
            read = _gemma_value(text, colon + 1)
            if read is None or not key:
                return None
            pairs[key], at = read
        else:
            read = _gemma_value(text, at)
            if read is None:
                return None
            value, at = read
            items.append(value)
        at = _after_space(text, at)
        if at < len(text) and text[at] == ",":
            at = _after_space(text, at + 1)
    if at >= len(text):
        return None  # cut off before it closed
    return (pairs if closing == "}" else items), at + 1


def _after_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at
