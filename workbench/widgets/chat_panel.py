"""ChatPanel: chat with the model, with a strength dial and base vs tuned side by side.

The panel views two callables and decides nothing: ``reply(messages, max_new_tokens)``
answers a conversation (``Session.chat`` passes ``Session.generate(..., chat=True)``, which
renders the template the model was tuned with and stops at its end of turn) and
``set_strength(x)`` scales the adapter (``Session.set_adapter_strength``: 0 base, 1 tuned,
up to 1.5 on the dial). The "side by side" toggle answers each message twice, at strength 0
(base) and at the dial's strength (tuned), in two columns, then leaves the dial where it was.

An answer that calls tools (written as the template writes calls) also shows each call as
``name({arguments})`` under it.

Each widget callback calls one method (:meth:`ChatPanel.send`, :meth:`ChatPanel.apply_strength`,
:meth:`ChatPanel.clear`), which is what tests drive headless. Messages and answers are
untrusted text and are escaped. A refused call (a run training, say) shows its message in
the panel instead of raising inside a widget callback.

Examples:
    >>> panel = ChatPanel(lambda messages, max_new_tokens: messages[-1]["content"].upper())
    >>> panel.send("<b>hi</b>").answers
    (('model', '<B>HI</B>'),)
    >>> "&lt;B&gt;HI&lt;/B&gt;" in panel.history_html.value
    True
    >>> print(panel.text())
    Chat (side by side off)
    you: <b>hi</b>
    model: <B>HI</B>
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ipywidgets as w

from workbench._display import answer_html, answer_text, printable
from workbench.errors import SpecError, WorkbenchError
from workbench.widgets._closing import close_panel
from workbench.widgets._html import escape, text_dir

__all__ = ["ChatPanel", "ChatTurn"]

Reply = Callable[[list[dict[str, str]], int], str]

DIAL_MAX = 1.5
_BOX = (
    "font-family:monospace;white-space:pre-wrap;border:1px solid #ccc;border-radius:4px;"
    "padding:6px;margin:2px 0;"
)
_LABEL = "font-size:90%;color:#555;"


@dataclass(frozen=True)
class ChatTurn:
    """One message and the model's answer(s): ``(label, text)`` pairs, tuned last.

    Examples:
        >>> ChatTurn("Hi", (("base (strength 0)", "a"), ("tuned (strength 1.00)", "b"))).answer
        'b'
    """

    message: str
    answers: tuple[tuple[str, str], ...]

    @property
    def answer(self) -> str:
        """The answer a remembered conversation continues from (the tuned one).

        Examples:
            >>> ChatTurn("Hi", (("model", "Hello"),)).answer
            'Hello'
        """
        return self.answers[-1][1]


class ChatPanel:
    """A chat panel with a strength dial; the ipywidgets tree is ``.widget``.

    Args:
        reply: ``reply(messages, max_new_tokens) -> str`` answers a list of
            ``{"role", "content"}`` turns ending with the user's.
        set_strength: ``set_strength(x) -> float`` scales the adapter; ``None`` for a model
            without one (the dial and the side-by-side toggle are then disabled).
        strength: The adapter's strength now (where the dial starts).
        get_strength: ``get_strength() -> float`` reads the adapter's strength; given, the
            dial follows changes made elsewhere (``s.set_adapter_strength`` in a cell) before
            each send.
        max_new_tokens: The answer length limit the panel starts with.
        side_by_side: Start with base and tuned side by side.
        remember: Send earlier turns too (a conversation) instead of each message alone.
        about: One line shown on top (the template and its stop string).
        tools: The function schemas offered with each message, used to read the calls an
            answer makes as their parameters are declared (a Qwen3-Coder ``10115`` stays
            the text ``"10115"`` where it is declared a string).

    Examples:
        >>> level = {"x": 1.0}
        >>> def set_strength(x):
        ...     level["x"] = x
        ...     return x
        >>> def reply(messages, max_new_tokens):
        ...     return f"{messages[-1]['content']} at {level['x']}"
        >>> panel = ChatPanel(reply, set_strength, side_by_side=True)
        >>> panel.strength.value = 0.5  # the dial calls set_strength at once
        >>> level["x"]
        0.5
        >>> panel.send("q").answers
        (('base (strength 0)', 'q at 0.0'), ('tuned (strength 0.50)', 'q at 0.5'))
        >>> level["x"]  # the dial's strength again
        0.5
    """

    def __init__(
        self,
        reply: Reply,
        set_strength: Callable[[float], float] | None = None,
        strength: float = 1.0,
        get_strength: Callable[[], float | None] | None = None,
        max_new_tokens: int = 64,
        side_by_side: bool = False,
        remember: bool = False,
        about: str = "",
        tools: list[dict[str, Any]] | None = None,
    ) -> None:
        self.reply = reply
        self.tools = tools
        self.set_strength = set_strength
        self.get_strength = get_strength
        self.about = about
        self.turns: list[ChatTurn] = []
        current = get_strength() if get_strength is not None else None
        self._strength = float(strength if current is None else current)
        self._quiet = False
        self._build_widgets(max_new_tokens, side_by_side, remember)
        self._connect()
        self._show()

    def _build_widgets(self, max_new_tokens: int, side_by_side: bool, remember: bool) -> None:
        scalable = self.set_strength is not None
        self.header = w.HTML(f'<span style="{_LABEL}">{escape(self.about)}</span>')
        self.history_html = w.HTML()
        self.message = w.Textarea(
            placeholder="message", layout=w.Layout(width="100%", height="4em")
        )
        self.send_button = w.Button(description="Send", button_style="primary")
        self.clear_button = w.Button(description="clear")
        self.strength = w.FloatSlider(
            value=self._strength,
            min=0.0,
            max=max(DIAL_MAX, self._strength),
            step=0.05,
            description="strength",
            readout_format=".2f",
            continuous_update=False,
            disabled=not scalable,
            tooltip="0 = base model, 1 = tuned, above 1 = exaggerated",
        )
        self.side_by_side = w.ToggleButton(
            value=side_by_side and scalable,
            description="side by side",
            tooltip="answer with base (strength 0) and tuned (the dial's strength)",
            disabled=not scalable,
        )
        self.max_new_tokens = w.BoundedIntText(
            value=max_new_tokens, min=1, max=4096, description="max tokens"
        )
        self.remember = w.Checkbox(value=remember, description="remember the conversation")
        self.status = w.HTML()
        controls = w.HBox([self.strength, self.side_by_side, self.max_new_tokens])
        buttons = w.HBox([self.send_button, self.clear_button, self.remember])
        self.widget = w.VBox(
            [self.header, self.history_html, self.message, buttons, controls, self.status]
        )

    def _connect(self) -> None:
        self.send_button.on_click(lambda _b: self.send())
        self.clear_button.on_click(lambda _b: self.clear())
        self.strength.observe(self._on_dial, names="value")
        self.side_by_side.observe(lambda _c: self._show(), names="value")

    def _on_dial(self, change: dict) -> None:
        if not self._quiet:
            self.apply_strength(change["new"])

    def apply_strength(self, strength: float) -> float | None:
        """Scale the adapter to ``strength`` (what the dial does); returns the new strength.

        A refused change leaves the dial where the adapter is and says why.

        Examples:
            >>> from workbench.errors import SessionStateError
            >>> def refuse(x):
            ...     raise SessionStateError("the run is training")
            >>> panel = ChatPanel(lambda m, n: "", refuse)
            >>> panel.apply_strength(0.3) is None, panel.strength.value, panel.status.value
            (True, 1.0, '<span style="color:#b00;">the run is training</span>')
        """
        if self.set_strength is None:
            return None
        try:
            self._strength = float(self.set_strength(float(strength)))
        except WorkbenchError as err:
            self._fail(err)
            return None
        finally:
            self._dial(self._strength)
        self.status.value = ""
        self._show()
        return self._strength

    def send(self, message: str | None = None) -> ChatTurn | None:
        """Answer ``message`` (default: the text box) and add the turn to the history.

        Returns the turn, or ``None`` when there was nothing to send or the call was refused.

        Examples:
            >>> panel = ChatPanel(lambda messages, max_new_tokens: str(len(messages)))
            >>> panel.remember.value = True
            >>> panel.message.value = "one"
            >>> panel.send().answers, panel.message.value
            ((('model', '1'),), '')
            >>> panel.send("two").answer  # the earlier turn is sent too: user, model, user
            '3'
            >>> panel.send("   ") is None, panel.status.value
            (True, '<span style="color:#b00;">type a message first</span>')
            >>> panel.send(["a", "b"])
            Traceback (most recent call last):
            workbench.errors.SpecError: send() takes one message as text, not list
        """
        text = self.message.value if message is None else message
        if not isinstance(text, str):  # a list of messages is chat(...)'s, not one message
            msg = f"send() takes one message as text, not {type(text).__name__}"
            raise SpecError(msg)
        if not text.strip():
            self.status.value = '<span style="color:#b00;">type a message first</span>'
            return None
        messages = [*self._context(), {"role": "user", "content": text}]
        self._follow()
        limit = int(self.max_new_tokens.value)
        try:
            if self.side_by_side.value and self.set_strength is not None:
                tuned = self.reply(messages, limit)
                base = self._answer_at(0.0, messages, limit)
                answers = (
                    ("base (strength 0)", base),
                    (f"tuned (strength {self._strength:.2f})", tuned),
                )
            else:
                answers = ((self._label(), self.reply(messages, limit)),)
        except WorkbenchError as err:
            self._fail(err)
            return None
        turn = ChatTurn(text, answers)
        self.turns.append(turn)
        if message is None:
            self.message.value = ""
        self.status.value = ""
        self._show()
        return turn

    def clear(self) -> None:
        """Forget the conversation.

        Examples:
            >>> panel = ChatPanel(lambda messages, max_new_tokens: "a")
            >>> _ = panel.send("q")
            >>> panel.clear()
            >>> panel.turns
            []
        """
        self.turns.clear()
        self._show()

    def text(self) -> str:
        """The conversation as plain text (what a front end without widgets shows).

        Examples:
            >>> print(ChatPanel(lambda m, n: "", lambda x: x, about="template 'chatml'").text())
            Chat: template 'chatml' (strength 1.00, side by side off)
            (no messages yet)
        """
        head = "Chat" + (f": {self.about}" if self.about else "")
        state = [f"strength {self._strength:.2f}"] if self.set_strength is not None else []
        state.append(f"side by side {'on' if self.side_by_side.value else 'off'}")
        lines = [f"{head} ({', '.join(state)})"]
        for turn in self.turns:
            lines.append(f"you: {turn.message}")
            for label, answer in turn.answers:
                lines.append(f"{label}: {answer_text(answer)}")
                lines += [f"  calls {call}" for call in _calls(answer, self.tools)]
        if not self.turns:
            lines.append("(no messages yet)")
        return printable("\n".join(lines))

    def html(self) -> str:
        """The conversation as self-contained HTML: inline styles, no scripts, all text escaped.

        Examples:
            >>> panel = ChatPanel(lambda messages, max_new_tokens: "<script>x</script>")
            >>> _ = panel.send("hi")
            >>> "<script>" in panel.html(), "&lt;script&gt;x&lt;/script&gt;" in panel.html()
            (False, True)
        """
        parts = ['<div class="wb-chat" style="font-family:sans-serif;max-width:60em;">']
        head = "Chat" + (f": {self.about}" if self.about else "")
        if self.set_strength is not None:
            head += f" · strength {self._strength:.2f}"
        parts.append(f'<div style="{_LABEL}">{escape(head)}</div>')
        for turn in self.turns:
            parts.append(_block("you", turn.message, "#eef4ff"))
            blocks = [
                _block(label, text, "#f7f7f7", calls=_calls(text, self.tools), answer=True)
                for label, text in turn.answers
            ]
            columns = "".join(f'<div style="flex:1;min-width:0;">{b}</div>' for b in blocks)
            parts.append(f'<div style="display:flex;gap:8px;">{columns}</div>')
        if not self.turns:
            parts.append(f'<div style="{_LABEL}">(no messages yet)</div>')
        parts.append("</div>")
        return "".join(parts)

    def _ipython_display_(self) -> None:
        from workbench.widgets._snapshot import show

        show(self)  # with a display id: a saved notebook keeps the conversation as it stands

    def close(self) -> None:
        """Close the panel's widgets, every one of them (a closed panel can be collected).

        Examples:
            >>> panel = ChatPanel(lambda messages, max_new_tokens: "hi", lambda x: None)
            >>> panel.close()
            >>> panel.widget.comm is None
            True
        """
        close_panel(self)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = self.widget._repr_mimebundle_(**kwargs)
        # Without widgets (a static page, a terminal) the conversation still shows.
        bundle["text/plain"] = self.text()
        bundle["text/html"] = self.html()
        return bundle

    def __str__(self) -> str:
        return self.text()

    def _label(self) -> str:
        return "model" if self.set_strength is None else f"model (strength {self._strength:.2f})"

    def _context(self) -> list[dict[str, str]]:
        if not self.remember.value:
            return []
        context = []
        for turn in self.turns:
            context.append({"role": "user", "content": turn.message})
            context.append({"role": "assistant", "content": turn.answer})
        return context

    def _answer_at(self, strength: float, messages: list[dict[str, str]], limit: int) -> str:
        """An answer at another strength; the adapter goes back to the dial's after."""
        dial = self._strength
        self.set_strength(strength)
        try:
            return self.reply(messages, limit)
        finally:
            self.set_strength(dial)

    def _follow(self) -> None:
        """Move the dial to the adapter's strength if it was changed outside the panel."""
        current = self.get_strength() if self.get_strength is not None else None
        if current is not None and current != self._strength:
            self._strength = float(current)
            self._dial(self._strength)

    def _dial(self, value: float) -> None:
        """Move the slider without calling set_strength again."""
        self._quiet = True
        try:
            self.strength.max = max(self.strength.max, value)
            self.strength.value = value
        finally:
            self._quiet = False

    def _fail(self, err: Exception) -> None:
        self.status.value = f'<span style="color:#b00;">{escape(err)}</span>'

    def _show(self) -> None:
        from workbench.widgets._snapshot import save_snapshot

        self.history_html.value = self.html()
        save_snapshot(self)  # what a notebook saved now shows (only once displayed)


def _block(
    label: str, text: str, background: str, calls: Sequence[str] = (), answer: bool = False
) -> str:
    """A labelled text box; an answer's tool ``calls`` are listed under it, and an empty
    answer is marked as one."""
    listed = "".join(
        f'<div style="{_LABEL}">calls <code>{escape(call)}</code></div>' for call in calls
    )
    shown = answer_html(text) if answer else escape(text)
    return (
        f'<div style="{_LABEL}">{escape(label)}</div>'
        f'<div{text_dir(text)} style="{_BOX}background:{background};">{shown}</div>{listed}'
    )


def _calls(answer: str, tools: list[dict[str, Any]] | None) -> list[str]:
    """The tool calls an answer makes, each as ``name({arguments})`` (none: ``[]``)."""
    from workbench.data.tool_calls import parse_tool_calls, turn_text

    found = parse_tool_calls(answer, tools=tools)
    return [turn_text({"content": "", "tool_calls": [c]}) for c in found]
