"""ABRating: blind A/B human evaluation of an evaluation's base and tuned answers.

The answers show as A and B in a seeded random order, never saying which is tuned. Each
click calls :meth:`ABRating.rate`, which appends the rating to ``ratings.jsonl`` at once
(flushed and fsynced) through :class:`~workbench.evaluation.ratings.BlindRater`.

The ratings file is the panel's only state about what is rated: the panel re-reads it before
it shows a pair and before it writes, so a second panel on the same evaluation (a cell run
twice, another notebook, another kernel) never rates a row this one rated. Panels on the
same file in one kernel also tell each other when they write, so the other one moves on to
an unrated pair at once and its counts stay right. "change previous verdict" re-shows the
last pair this panel rated (A and B as they were) and records the next click as a change.

Examples:
    The evaluation must be saved (the ratings go next to it) and have base and tuned:

    >>> import shutil
    >>> from workbench.evaluation import EvalRow, Evaluation
    >>> shutil.rmtree("/tmp/wb-doc-ab-rating", ignore_errors=True)
    >>> rows = tuple(EvalRow(i, f"Q{i}", "A", {"base": "B", "tuned": "A"}) for i in range(2))
    >>> ev = Evaluation({}, rows, {"columns": ["base", "tuned"]}).save("/tmp/wb-doc-ab-rating")
    >>> ab = ABRating(ev)
    >>> ab.score.value, ab.comment.value = 4, "more precise"
    >>> ab.rate("A").comment, ab.progress.value
    ('more precise', '1 of 2 rated')
    >>> ev.ratings_summary().n
    1
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import ipywidgets as w

from workbench.errors import EvaluationError, WorkbenchError
from workbench.widgets._closing import close_panel
from workbench.widgets._html import answer_html, escape, text_dir

__all__ = ["ABRating"]

_BOX = "font-family:monospace;white-space:pre-wrap;border:1px solid #ccc;padding:6px;"
_VERDICT_WORDS = {"A": "A better", "B": "B better", "tie": "tie"}
# Live panels by ratings file, so a panel that writes can tell the others on the same file.
_PANELS: dict[str, weakref.WeakSet] = {}


class ABRating:
    """Blind A/B rating panel; the ipywidgets tree is ``.widget``.

    Args:
        evaluation: A saved :class:`~workbench.evaluation.Evaluation` with base and tuned.
        seed: Seed of the order of rows and of which answer is A.
        on_rated: Called with each :class:`~workbench.evaluation.Rating` written to the
            evaluation's ratings file by this panel or by another panel on the same file in
            this kernel.

    Examples:
        >>> import shutil
        >>> from workbench.evaluation import EvalRow, Evaluation
        >>> shutil.rmtree("/tmp/wb-doc-ab-rating-class", ignore_errors=True)
        >>> row = EvalRow(0, "Q", "A", {"base": "<b>B</b>", "tuned": "A"})
        >>> ev = Evaluation({}, (row,), {"columns": ["base", "tuned"]})
        >>> ab = ABRating(ev.save("/tmp/wb-doc-ab-rating-class"))
        >>> ab.current_row, "&lt;b&gt;B&lt;/b&gt;" in ab.a_html.value + ab.b_html.value
        (0, True)
        >>> ab.rate("tie").winner, ab.prompt_html.value, ab.tie_button.disabled
        ('tie', '<b>all rated</b>', True)
    """

    def __init__(
        self, evaluation: Any, seed: int = 0, on_rated: Callable[[Any], Any] | None = None
    ) -> None:
        self.rater = evaluation.rater(seed)
        self.on_rated = on_rated
        self.current_row: int | None = None
        self.changing: Any = None  # the Rating whose verdict the next click changes
        self.rated_here: list[int] = []  # rows this panel rated, latest last
        self._build_widgets()
        self._connect()
        key = str(self.rater.path.resolve())
        _PANELS.setdefault(key, weakref.WeakSet()).add(self)
        self._key = key
        self.show_current()

    def _build_widgets(self) -> None:
        self.progress = w.Label()
        self.notice = w.HTML()
        self.prompt_html, self.a_html, self.b_html = w.HTML(), w.HTML(), w.HTML()
        self.a_button = w.Button(description="A better")
        self.b_button = w.Button(description="B better")
        self.tie_button = w.Button(description="tie")
        self.change_button = w.Button(description="change previous verdict", disabled=True)
        self.score = w.Dropdown(
            options=[("no score", None), *[(str(i), i) for i in range(1, 6)]],
            value=None,
            description="score 1-5",
        )
        self.comment = w.Textarea(placeholder="comment (optional)")
        answers = w.HBox(
            [w.VBox([w.HTML("<b>A</b>"), self.a_html]), w.VBox([w.HTML("<b>B</b>"), self.b_html])]
        )
        buttons = w.HBox([self.a_button, self.b_button, self.tie_button, self.change_button])
        self.widget = w.VBox(
            [
                self.progress,
                self.notice,
                self.prompt_html,
                answers,
                buttons,
                w.HBox([self.score, self.comment]),
            ]
        )
        self.widget.add_class("wb-ab-rating")  # a stable hook for browser tests

    def _connect(self) -> None:
        self.a_button.on_click(lambda _: self.rate("A"))
        self.b_button.on_click(lambda _: self.rate("B"))
        self.tie_button.on_click(lambda _: self.rate("tie"))
        self.change_button.on_click(lambda _: self._toggle_change())

    def _show_pair(self, pair: tuple[int, str, str, str]) -> None:
        self.current_row, prompt, a, b = pair
        self.prompt_html.value = f"<b>prompt</b>{_box(prompt)}"
        self.a_html.value, self.b_html.value = _box(a, answer=True), _box(b, answer=True)

    def _ipython_display_(self) -> None:
        from workbench.widgets._snapshot import show

        show(self)  # the widget view plus a static snapshot (progress and summary)

    def close(self) -> None:
        """Close the panel's widgets, every one of them (a closed panel can be collected).

        Examples:
            >>> from workbench.evaluation import EvalRow, Evaluation
            >>> row = EvalRow(0, "Q", "A", {"base": "B", "tuned": "A"})
            >>> ev = Evaluation({}, (row,), {"columns": ["base", "tuned"]})
            >>> ab = ABRating(ev.save("/tmp/wb-doc-ab-rating-close"))
            >>> ab.close()
            >>> ab.widget.comm is None and ab.tie_button.comm is None
            True
        """
        close_panel(self)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        from workbench.widgets._snapshot import snapshot_bundle

        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle.update(snapshot_bundle(self))
        return bundle

    def _show_progress(self) -> None:
        rated, total = self.rater.progress()
        self.progress.value = f"{rated} of {total} rated"

    def show_current(self, notice: str = "") -> None:
        """Re-read the ratings file and show the next unrated pair (or a done message).

        Args:
            notice: A line to show above the pair (escaped).

        Examples:
            A new panel resumes where the ratings file stops:

            >>> import shutil
            >>> from workbench.evaluation import EvalRow, Evaluation
            >>> shutil.rmtree("/tmp/wb-doc-ab-rating-show", ignore_errors=True)
            >>> rows = tuple(EvalRow(i, "Q", "A", {"base": "B", "tuned": "A"}) for i in range(3))
            >>> ev = Evaluation({}, rows, {"columns": ["base", "tuned"]})
            >>> ev = ev.save("/tmp/wb-doc-ab-rating-show")
            >>> _ = ABRating(ev).rate("B")
            >>> ab = ABRating(ev)  # show_current() runs when the panel is built
            >>> ab.progress.value
            '1 of 3 rated'
        """
        self.changing = None
        self.notice.value = f"<i>{escape(notice)}</i>" if notice else ""
        self.change_button.description = "change previous verdict"
        self.change_button.disabled = not self.rated_here
        pair = self.rater.current()
        self._show_progress()
        done = pair is None
        for button in (self.a_button, self.b_button, self.tie_button):
            button.disabled = done
        if done:
            self.current_row = None
            self.prompt_html.value = "<b>all rated</b>"
            self.a_html.value = self.b_html.value = ""
            return
        self._show_pair(pair)

    def revisit(self, row: int) -> None:
        """Show rated row ``row`` again (A and B as rated); the next click changes its verdict.

        Examples:
            >>> import shutil
            >>> from workbench.evaluation import EvalRow, Evaluation
            >>> shutil.rmtree("/tmp/wb-doc-ab-rating-revisit", ignore_errors=True)
            >>> rows = tuple(EvalRow(i, "Q", "A", {"base": "B", "tuned": "A"}) for i in range(2))
            >>> ev = Evaluation({}, rows, {"columns": ["base", "tuned"]})
            >>> ev = ev.save("/tmp/wb-doc-ab-rating-revisit")
            >>> ab = ABRating(ev)
            >>> first = ab.rate("A")
            >>> ab.revisit(first.row)
            >>> ab.current_row == first.row, ab.notice.value
            (True, '<i>changing your verdict on this pair (was: A better)</i>')
            >>> change = ab.rate("tie")
            >>> change.kind, ab.progress.value, ev.ratings_summary().ties
            ('change', '1 of 2 rated', 1)
        """
        before = self.rater.latest().get(row)
        if before is None:
            self.show_current(f"row {row} has no verdict yet to change")
            return
        self.changing = before
        self._show_pair(self.rater.pair(row, before.a_is))
        self._show_progress()
        for button in (self.a_button, self.b_button, self.tie_button):
            button.disabled = False
        self.change_button.description = "cancel change"
        self.change_button.disabled = False
        was = _VERDICT_WORDS[before.verdict]
        self.notice.value = f"<i>changing your verdict on this pair (was: {escape(was)})</i>"

    def _toggle_change(self) -> None:
        if self.changing is not None:
            self.show_current()
        elif self.rated_here:
            self.revisit(self.rated_here[-1])

    def rate(self, verdict: str) -> Any:
        """Record ``verdict`` (``"A"``, ``"B"`` or ``"tie"``) with the score and comment fields.

        Records a first verdict on the pair shown, or a change while :meth:`revisit` is on.
        When the pair was rated meanwhile elsewhere nothing is written: the notice says so,
        the next unrated pair shows and ``None`` is returned.

        Examples:
            >>> import shutil
            >>> from workbench.evaluation import EvalRow, Evaluation
            >>> shutil.rmtree("/tmp/wb-doc-ab-rating-rate", ignore_errors=True)
            >>> rows = tuple(EvalRow(i, "Q", "A", {"base": "B", "tuned": "A"}) for i in range(2))
            >>> ev = Evaluation({}, rows, {"columns": ["base", "tuned"]})
            >>> ab = ABRating(ev.save("/tmp/wb-doc-ab-rating-rate"))
            >>> ab.score.value = 5
            >>> rating = ab.rate("B")
            >>> rating.verdict, rating.score, ab.score.value  # the fields reset for the next
            ('B', 5, None)
        """
        score, comment = self.score.value, self.comment.value
        try:
            if self.changing is not None:
                before = self.changing
                rating = self.rater.change(before.row, verdict, score, comment)
                notice = (
                    f"verdict changed: was {_VERDICT_WORDS[before.verdict]}, "
                    f"now {_VERDICT_WORDS[rating.verdict]}"
                )
            else:
                rating = self.rater.rate(verdict, score, comment, row=self.current_row)
                self.rated_here.append(rating.row)
                notice = ""
        except EvaluationError as err:
            refused = self.current_row
            if self.changing is None and refused is not None and refused in self.rater.done:
                notice = (
                    "that pair was rated meanwhile in another panel or kernel: your click "
                    "was not recorded; here is the next unrated pair"
                )
            else:
                notice = str(err)
            self.show_current(notice)
            return None
        except (OSError, WorkbenchError) as err:  # the write failed: the click must say so
            kept = "The pair, score and comment stay here to rate again."
            self.notice.value = f"<i>{escape(f'not saved: {err}. {kept}')}</i>"
            return None
        self.score.value, self.comment.value = None, ""
        self.show_current(notice)
        for panel in self._others():
            panel._written_elsewhere(rating)
        if self.on_rated is not None:
            self.on_rated(rating)
        return rating

    def _others(self) -> list[ABRating]:
        return [p for p in list(_PANELS.get(self._key, ())) if p is not self]

    def _written_elsewhere(self, rating: Any) -> None:
        """Another panel on this file wrote ``rating``: move on if it took the pair shown."""
        if self.changing is None and self.current_row == rating.row:
            self.show_current(
                "the pair shown here was just rated in another panel; here is the next one"
            )
        else:
            self._show_progress()
        if self.on_rated is not None:
            self.on_rated(rating)


def _box(text: str, answer: bool = False) -> str:
    """Escaped text in a bordered box; an empty answer is marked, so it shows as one."""
    shown = answer_html(text) if answer else escape(text)
    return f"<div{text_dir(text)} style='{_BOX}'>{shown}</div>"
