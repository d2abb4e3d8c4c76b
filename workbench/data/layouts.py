"""Template layouts: render a conversation by joining strings instead of running Jinja per row.

For one sequence of roles (``system, user, assistant``, say) most chat templates write fixed
text around each message's content. :func:`learn_layout` renders that sequence once with a
marker for each content and keeps the text between the markers (the *segments*); a row with
those roles is then rendered as ``seg0 + content0 + seg1 + ... + segN``, and the mask
boundaries of each answer (the end of the inference prompt, the end of the answer's own
rendering) are fixed offsets from its content.

A layout is only learned when every rendering it replaces provably behaves like that:

* each marker appears exactly once, in order, and a probe content full of newlines, quotes,
  ``<``/``&``, accents and emoji comes out verbatim (no ``trim`` of inner text, no escaping);
* each answer's prompt rendering (generation prompt on) and its own rendering are prefixes
  of the whole conversation's that end between the same two contents, for the markers and
  the probe alike.

Templates that branch on content (Qwen3's ``'</think>' in content``) are handled by
:func:`sensitive_literals`: the strings a template compares content with, or passes to a
method or filter together with content, found in its Jinja syntax tree. A content that
holds one of them, an empty answer, a private-use character (the markers) or a control
token's text is not *plain* (other empty contents have layouts of their own): such rows
are rendered per row with Jinja (see :mod:`workbench.data.batched`). Whitespace at a
content's edges is plain where a probe edged with several kinds of it comes out whole or
stripped (``Layout.strips``: ChatML keeps it, Llama 3's ``trim`` strips it); not where a
template strips some of it (Qwen3's ``lstrip('\\n')`` before a last answer).

Examples:
    >>> from workbench.data.templates import TEMPLATES
    >>> layout = learn_layout(TEMPLATES["chatml"], None, ("user", "assistant"))
    >>> layout.segments
    ('<|im_start|>user\\n', '<|im_end|>\\n<|im_start|>assistant\\n', '<|im_end|>\\n')
    >>> text, turns = layout.compose(["Hi", "Hello"])
    >>> text
    '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello<|im_end|>\\n'
    >>> text[: turns[0][0]]  # the inference prompt of the answer
    '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from workbench.data.templates import Template, render_many

__all__ = ["MARKERS", "Layout", "learn_layout", "marker", "sensitive_literals"]

MARKERS = "[\U000f0000-\U0010ffff]"
"""Regex of the private-use characters a layout reserves (contents holding one are not plain)."""

_OPEN, _CLOSE = "\U000f0000", "\U000f0001"
# Inner whitespace, both cases, quotes, markup, a backslash, accents, an emoji: a template that
# escapes, trims inside, changes case or re-encodes content changes it: no layout is learned.
_PROBE = "a\n Bc\t<'\"&>{{ x }}{% y %}#\\ é É \U0001f600 Z 1.5"
# Whitespace of several kinds around a probe: a template that keeps it, or strips all of it
# (Jinja's trim, Python's strip()), renders contents edged with whitespace by a layout too.
_EDGES = ("\n \t\r\n\u3000", " \t\n\u00a0\n ")


@dataclass(frozen=True)
class Layout:
    """How a template renders conversations with one sequence of roles.

    Attributes:
        roles: The roles, in order.
        segments: Text before each content and after the last (``len(roles) + 1``).
        turns: Per assistant message ``(index, back, after)``: its inference prompt ends
            ``back`` characters before its content; its own rendering ends ``after``
            characters past its content (``None`` for the last message: the whole text).
        strips: Per content, whether the template strips its edge whitespace (``trim``);
            ``None`` when contents that start or end with whitespace come out neither
            whole nor stripped (such rows are rendered one by one).

    Examples:
        >>> from workbench.data.templates import TEMPLATES
        >>> roles = ("system", "user", "assistant")
        >>> learn_layout(TEMPLATES["chatml"], None, roles).turns
        ((2, 0, None),)
    """

    roles: tuple[str, ...]
    segments: tuple[str, ...]
    turns: tuple[tuple[int, int, int | None], ...]
    strips: tuple[bool, ...] | None = None

    def compose(self, contents: list[str]) -> tuple[str, list[tuple[int, int | None]]]:
        """The rendered text, and per answer ``(prompt end, own end)`` character offsets.

        The own end is ``None`` for a final answer (it ends with the text).

        Examples:
            >>> from workbench.data.templates import TEMPLATES
            >>> roles = ("user", "assistant", "user", "assistant")
            >>> layout = learn_layout(TEMPLATES["chatml"], None, roles)
            >>> text, turns = layout.compose(["a", "b", "c", "d"])
            >>> [(text[:p][-10:], text[:e][-12:] if e else None) for p, e in turns]
            [('assistant\\n', 'b<|im_end|>\\n'), ('assistant\\n', None)]
        """
        if self.strips and any(self.strips):
            contents = [c.strip() if s else c for c, s in zip(contents, self.strips, strict=True)]
        segments = self.segments
        parts = [segments[0]]
        starts = []
        pos = len(segments[0])
        for content, segment in zip(contents, segments[1:], strict=True):
            starts.append(pos)
            parts += (content, segment)
            pos += len(content) + len(segment)
        turns = [
            (starts[i] - back, None if after is None else starts[i] + len(contents[i]) + after)
            for i, back, after in self.turns
        ]
        return "".join(parts), turns


def marker(k: int) -> str:
    """The ``k``-th content marker (private-use characters around ``k``).

    Examples:
        >>> marker(2)
        '\U000f00002\U000f0001'
    """
    return f"{_OPEN}{k}{_CLOSE}"


def _markers(n: int) -> list[str]:
    return [marker(k) for k in range(n)]


def _conversation(roles: tuple[str, ...], contents: list[str]) -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in zip(roles, contents, strict=True)]


def _split(text: str, markers: list[str]) -> list[str] | None:
    """``text`` cut at each marker (each exactly once, in order), or ``None``."""
    segments, pos = [], 0
    for marker in markers:
        at = text.find(marker, pos)
        if at < 0 or text.count(marker) != 1:
            return None
        segments.append(text[pos:at])
        pos = at + len(marker)
    segments.append(text[pos:])
    return None if any(re.search(MARKERS, s) for s in segments) else segments


def _turns(
    template: Template,
    tokenizer: Any,
    roles: tuple[str, ...],
    contents: list[str],
    segments: list[str],
    shown: list[str] | None = None,
) -> list[tuple[int, int, int | None]] | None:
    """Per assistant message ``(index, back, after)`` for these contents, or ``None``;
    ``shown``: the contents as the template writes them (default: verbatim)."""
    shown = contents if shown is None else shown
    full = "".join(s + c for s, c in zip(segments, [*shown, ""], strict=True))
    spans, pos = [], 0
    for segment, content in zip(segments, shown, strict=False):
        pos += len(segment)
        spans.append((pos, pos + len(content)))
        pos += len(content)
    answers = [i for i, role in enumerate(roles) if role == "assistant"]
    if not answers or answers[0] == 0:
        return None
    conversation = _conversation(roles, contents)
    prompts = render_many(template, tokenizer, [conversation[:i] for i in answers], True)
    inner = [i for i in answers if i < len(roles) - 1]
    owns = render_many(template, tokenizer, [conversation[: i + 1] for i in inner], False)
    own_of = dict(zip(inner, owns, strict=True))
    turns = []
    for i, prompt in zip(answers, prompts, strict=True):
        begin, end = spans[i]
        if not full.startswith(prompt) or not spans[i - 1][1] <= len(prompt) <= begin:
            return None
        after = None
        if i in own_of:
            own = own_of[i]
            if not full.startswith(own) or not end <= len(own) <= spans[i + 1][0]:
                return None
            after = len(own) - end
        turns.append((i, begin - len(prompt), after))
    return turns


def learn_layout(
    template: Template, tokenizer: Any, roles: tuple[str, ...], empty: frozenset[int] = frozenset()
) -> Layout | None:
    """The layout of ``roles`` under ``template``, or ``None`` when it has none.

    ``None`` when rendering fails (a template that rejects the roles), when contents do not
    come out verbatim, or when a prompt or an answer's own rendering is not a prefix of the
    whole (then rows with these roles are rendered and checked one by one). ``empty``: the
    positions of contents that are empty (an empty system prompt, say; not an answer): the
    template may write them otherwise, so such rows have layouts of their own.

    Examples:
        >>> from workbench.data.templates import TEMPLATES, Template
        >>> roles = ("system", "user", "assistant")
        >>> for segment in learn_layout(TEMPLATES["gemma"], None, roles).segments:
        ...     print(repr(segment))
        '<start_of_turn>user\\n'
        '\\n\\n'
        '<end_of_turn>\\n<start_of_turn>model\\n'
        '<end_of_turn>\\n'
        >>> tojson = "{% for m in messages %}{{ m['content'] | tojson }}{% endfor %}"
        >>> learn_layout(Template("x", tojson), None, ("user", "assistant")) is None
        True
        >>> empty_system = learn_layout(TEMPLATES["chatml"], None, roles, frozenset({0}))
        >>> print(empty_system.compose(["", "Hi", "Hello"])[0])
        <|im_start|>system
        <|im_end|>
        <|im_start|>user
        Hi<|im_end|>
        <|im_start|>assistant
        Hello<|im_end|>
        <BLANKLINE>
    """
    n = len(roles)
    if not n or any(roles[i] == "assistant" for i in empty):
        return None
    markers = ["" if i in empty else m for i, m in enumerate(_markers(n))]
    probes = [f"{m}{_PROBE}" if m else "" for m in markers]
    try:
        full, probed = render_many(
            template,
            tokenizer,
            [_conversation(roles, markers), _conversation(roles, probes)],
            False,
        )
        split = _split(full, [m for m in markers if m])
        if split is None:
            return None
        segments = _with_empty_contents(split, [bool(m) for m in markers])
        if probed != "".join(s + c for s, c in zip(segments, [*probes, ""], strict=True)):
            return None
        turns = _turns(template, tokenizer, roles, markers, segments)
        if turns is None or _turns(template, tokenizer, roles, probes, segments) != turns:
            return None
        strips = _strips(template, tokenizer, roles, probes, segments, turns)
    except Exception:
        return None
    return Layout(roles, tuple(segments), tuple(turns), strips)


def _with_empty_contents(split: list[str], present: list[bool]) -> list[str]:
    """Segments around every content, from those around the non-empty ones: the text between
    two non-empty contents goes before the first empty one between them (the others get
    ``""``), so joining still gives the rendering."""
    segments = []
    rest = iter(split)
    pending = next(rest)
    for here in present:
        segments.append(pending)
        pending = next(rest) if here else ""
    segments.append(pending)
    return segments


def _strips(
    template: Template,
    tokenizer: Any,
    roles: tuple[str, ...],
    probes: list[str],
    segments: list[str],
    turns: list[tuple[int, int, int | None]],
) -> tuple[bool, ...] | None:
    """Per content, whether the template strips edge whitespace (else it keeps it), read
    from a rendering of probes edged with whitespace; ``None`` when it does neither (it
    strips newlines only, say) or the answers' boundaries move."""
    lead, trail = _EDGES
    edged = [f"{lead}{p}{trail}" if p else "" for p in probes]
    text = render_many(template, tokenizer, [_conversation(roles, edged)], False)[0]
    if not text.startswith(segments[0]):
        return None
    pos, strips, shown = len(segments[0]), [], []
    for content, segment in zip(edged, segments[1:], strict=True):
        for strip in (False, True):
            written = content.strip() if strip else content
            if text.startswith(written + segment, pos):
                break
        else:
            return None
        strips.append(strip)
        shown.append(written)
        pos += len(written) + len(segment)
    if pos != len(text) or _turns(template, tokenizer, roles, edged, segments, shown) != turns:
        return None
    return tuple(strips)


def sensitive_literals(template: Template) -> frozenset[str] | None:
    """Strings the template tests content against (``in``, ``==``, methods, filters).

    Read from the template's Jinja syntax tree, following content through ``set``
    assignments, namespaces and macro arguments; branches taken only when content is not a
    string (``{% if content is string %}...{% else %}`` for multimodal parts) are skipped.
    A row whose contents hold none of these strings renders like the layout's markers.

    ``None`` (no row is plain) when the template cannot be parsed or measures content: a
    length (``| length``, ``| truncate``, ``| wordwrap``...), a slice (``content[:50]``) or a
    loop over it; a short probe would not show what those do to a long answer. Whitespace
    arguments of ``strip``/``trim`` are left out (what a template does to whitespace at a
    content's edges is read from a rendering, see ``Layout.strips``).

    Examples:
        >>> from workbench.data.templates import TEMPLATES, Template
        >>> sensitive_literals(TEMPLATES["gemma"])  # trim takes no argument
        frozenset()
        >>> source = (
        ...     "{% for m in messages %}{% set c = m['content'] %}"
        ...     "{% if '</think>' in c %}{{ c.split('</think>')[-1].lstrip('\\n') }}"
        ...     "{% else %}{{ c }}{% endif %}{% endfor %}"
        ... )
        >>> sorted(sensitive_literals(Template("qwen3-like", source)))
        ['</think>']
        >>> print(sensitive_literals(Template("cut", "{{ messages[0]['content'][:50] }}")))
        None
    """
    from jinja2 import nodes
    from transformers.utils.chat_template_utils import _compile_jinja_template

    try:
        tree = _compile_jinja_template(template.source).environment.parse(template.source)
    except Exception:
        return None
    names: set[str] = {"content"}
    for macro in _walk(tree, names):
        if isinstance(macro, nodes.Macro):
            names.update(arg.name for arg in macro.args)  # content may be passed in
    growing = True
    while growing:
        before = len(names)
        for node in list(_walk(tree, names)):
            names |= _assigned(node, names)
        growing = len(names) > before
    found: set[str] = set()
    for node in _walk(tree, names):
        if _measures(node, names):
            return None
        if isinstance(node, (nodes.Compare, nodes.Call, nodes.Filter, nodes.Test)) and _mentions(
            node, names
        ):
            found |= _literals(node)
    return frozenset(found)


_MEASURING_FILTERS = frozenset(
    {"length", "count", "wordcount", "truncate", "wordwrap", "center", "batch", "slice"}
)
_STRIPS = frozenset({"strip", "lstrip", "rstrip", "trim"})


def _walk(node: Any, names: set[str] | None = None) -> Any:
    """``node`` and its descendants; with ``names``, not branches for non-string content."""
    from jinja2 import nodes

    yield node
    children: list[Any] = list(node.iter_child_nodes())
    if names is not None and isinstance(node, (nodes.If, nodes.CondExpr)):
        is_string = _string_test(node.test, names)
        if is_string is True:  # {% if content is string %}: the other branches are dead
            children = [node.test, *([node.expr1] if isinstance(node, nodes.CondExpr) else [])]
            children += node.body if isinstance(node, nodes.If) else []
        elif is_string is False:  # {% if content is not string %}: its body is dead
            if isinstance(node, nodes.If):
                children = [node.test, *node.elif_, *node.else_]
            else:
                children = [node.test, *([node.expr2] if node.expr2 is not None else [])]
    for child in children:
        yield from _walk(child, names)


def _string_test(test: Any, names: set[str]) -> bool | None:
    """True for ``content is string``, False for ``content is not string``, else None.

    Only a message's own ``content`` counts (``message.content``, ``message['content']`` or
    a name ``content``): other names derived from it may hold something else.
    """
    from jinja2 import nodes

    negated = isinstance(test, nodes.Not)
    inner = test.node if negated else test
    if not (isinstance(inner, nodes.Test) and inner.name == "string"):
        return None
    target = inner.node
    direct = (
        (isinstance(target, nodes.Name) and target.name == "content")
        or (isinstance(target, nodes.Getattr) and target.attr == "content")
        or (
            isinstance(target, nodes.Getitem)
            and isinstance(target.arg, nodes.Const)
            and target.arg.value == "content"
        )
    )
    return (not negated) if direct else None


def _measures(node: Any, names: set[str]) -> bool:
    """A length, slice or loop over content (its effect depends on how long content is)."""
    from jinja2 import nodes

    if isinstance(node, nodes.Filter) and node.name in _MEASURING_FILTERS:
        return node.node is not None and _mentions(node.node, names)
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Slice):
        return _mentions(node.node, names)
    return isinstance(node, nodes.For) and _mentions(node.iter, names)


def _literals(node: Any) -> set[str]:
    """String constants under ``node``, except item keys and whitespace given to strip."""
    from jinja2 import nodes

    skip = set()
    for n in _walk(node):
        if isinstance(n, nodes.Getitem):
            skip.add(id(n.arg))
        strip = (isinstance(n, nodes.Call) and getattr(n.node, "attr", None) in _STRIPS) or (
            isinstance(n, nodes.Filter) and n.name in _STRIPS
        )
        if strip:
            skip.update(id(a) for a in n.args if isinstance(a, nodes.Const) and _blank(a.value))
    return {
        n.value
        for n in _walk(node)
        if isinstance(n, nodes.Const) and isinstance(n.value, str) and n.value and id(n) not in skip
    }


def _blank(value: Any) -> bool:
    return isinstance(value, str) and not value.strip()


def _mentions(node: Any, names: set[str]) -> bool:
    """Whether ``node`` reads content (or a name or namespace field derived from it)."""
    from jinja2 import nodes

    for n in _walk(node):
        if isinstance(n, nodes.Name) and n.name in names:
            return True
        if isinstance(n, (nodes.Getattr, nodes.NSRef)) and n.attr in names:
            return True
        if isinstance(n, nodes.Getitem) and isinstance(n.arg, nodes.Const) and n.arg.value in names:
            return True
    return False


def _assigned(node: Any, names: set[str]) -> set[str]:
    """Names (and namespace fields) that ``node`` sets from content."""
    from jinja2 import nodes

    sources = {
        nodes.Assign: lambda: [node.node],
        nodes.AssignBlock: lambda: node.body,
        nodes.For: lambda: [node.iter],
    }
    get = sources.get(type(node))
    if get is None or not any(_mentions(s, names) for s in get()):
        return set()
    out = set()
    for n in _walk(node.target):
        if isinstance(n, nodes.Name):
            out.add(n.name)
        elif isinstance(n, nodes.NSRef):
            out.add(n.attr)
    return out
