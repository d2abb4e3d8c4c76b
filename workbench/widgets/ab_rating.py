"""ABRating: blind A/B human evaluation of an evaluation's base and tuned answers.

The answers show as A and B in a seeded random order, never saying which is tuned. Each
click calls :meth:`ABRating.rate`, which appends the rating to ``ratings.jsonl`` at once
(flushed and fsynced) through :class:`~workbench.evaluation.ratings.BlindRater`.

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

from collections.abc import Callable
from typing import Any

import ipywidgets as w

from workbench.widgets._html import escape

__all__ = ["ABRating"]

_BOX = "font-family:monospace;white-space:pre-wrap;border:1px solid #ccc;padding:6px;"


class ABRating:
    """Blind A/B rating panel; the ipywidgets tree is ``.widget``.

    Args:
        evaluation: A saved :class:`~workbench.evaluation.Evaluation` with base and tuned.
        seed: Seed of the order of rows and of which answer is A.
        on_rated: Called with each :class:`~workbench.evaluation.Rating` after it is written.

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
        self._build_widgets()
        self._connect()
        self.show_current()

    def _build_widgets(self) -> None:
        self.progress = w.Label()
        self.prompt_html, self.a_html, self.b_html = w.HTML(), w.HTML(), w.HTML()
        self.a_button = w.Button(description="A better")
        self.b_button = w.Button(description="B better")
        self.tie_button = w.Button(description="tie")
        self.score = w.Dropdown(
            options=[("no score", None), *[(str(i), i) for i in range(1, 6)]],
            value=None,
            description="score 1-5",
        )
        self.comment = w.Textarea(placeholder="comment (optional)")
        answers = w.HBox(
            [w.VBox([w.HTML("<b>A</b>"), self.a_html]), w.VBox([w.HTML("<b>B</b>"), self.b_html])]
        )
        buttons = w.HBox([self.a_button, self.b_button, self.tie_button])
        self.widget = w.VBox(
            [self.progress, self.prompt_html, answers, buttons, w.HBox([self.score, self.comment])]
        )
        self.widget.add_class("wb-ab-rating")  # a stable hook for browser tests

    def _connect(self) -> None:
        self.a_button.on_click(lambda _: self.rate("A"))
        self.b_button.on_click(lambda _: self.rate("B"))
        self.tie_button.on_click(lambda _: self.rate("tie"))

    def show_current(self) -> None:
        """Show the next unrated pair (or a done message).

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
        total = len(self.rater.rows)
        self.progress.value = f"{total - len(self.rater.remaining)} of {total} rated"
        pair = self.rater.current()
        done = pair is None
        for button in (self.a_button, self.b_button, self.tie_button):
            button.disabled = done
        if done:
            self.current_row = None
            self.prompt_html.value = "<b>all rated</b>"
            self.a_html.value = self.b_html.value = ""
            return
        self.current_row, prompt, a, b = pair
        self.prompt_html.value = f"<b>prompt</b><div style='{_BOX}'>{escape(prompt)}</div>"
        self.a_html.value = f"<div style='{_BOX}'>{escape(a)}</div>"
        self.b_html.value = f"<div style='{_BOX}'>{escape(b)}</div>"

    def rate(self, verdict: str) -> Any:
        """Record ``verdict`` (``"A"``, ``"B"`` or ``"tie"``) with the score and comment fields.

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
        rating = self.rater.rate(verdict, self.score.value, self.comment.value)
        self.score.value, self.comment.value = None, ""
        self.show_current()
        if self.on_rated is not None:
            self.on_rated(rating)
        return rating
