"""Diagnostic findings as HTML and text, for the panels and for ``Session.diagnose()``.

:func:`findings_html` is a compact list (title, evidence, suggestion), coloured by severity,
every piece of text escaped (evidence can quote data rows); it returns ``""`` when there is
nothing to show, so a panel can drop it into an ``ipywidgets.HTML`` as it is:
``html.value = findings_html(run.diagnostics)``. :class:`Diagnosis` is the list
``Session.diagnose()`` and ``run.diagnostics`` return: text when printed, the coloured list in
a notebook.

Examples:
    >>> from workbench.diagnostics import Finding
    >>> f = Finding("validation_leak", "warning", "Leak", "row <script>x</script>", "drop it")
    >>> "&lt;script&gt;" in findings_html([f]), "<script>" in findings_html([f])
    (True, False)
    >>> findings_html([])
    ''
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from workbench.diagnostics.findings import Finding
from workbench.widgets._html import escape

__all__ = ["Diagnosis", "findings_html", "findings_text"]

_COLOURS = {
    "warning": ("#b45309", "#fff7ed", "⚠"),  # border, background, mark
    "info": ("#1d4ed8", "#eff6ff", "ℹ"),
}
NONE_TEXT = "no findings: nothing looks wrong in the run, the data or the evaluation"


def _item(finding: Finding) -> str:
    border, background, mark = _COLOURS.get(finding.severity, _COLOURS["info"])
    step = (
        f" <span style='color:#555;'>(step {finding.step})</span>"
        if finding.step is not None
        else ""
    )
    return (
        f'<li class="wb-finding wb-finding-{escape(finding.severity)}" '
        f'data-kind="{escape(finding.kind)}" style="list-style:none;margin:4px 0;'
        f"padding:4px 8px;border-left:4px solid {border};background:{background};"
        f'color:#1f2937;">'
        f"<div><b>{mark} {escape(finding.title)}</b>{step}</div>"
        f'<div style="font-size:90%;">{escape(finding.evidence)}</div>'
        f'<div style="font-size:90%;"><i>Try:</i> {escape(finding.suggestion)}</div>'
        "</li>"
    )


def findings_html(findings: Iterable[Finding]) -> str:
    """A compact, escaped HTML list of findings; ``""`` when there are none.

    Each item shows the title (with the step, if any), the evidence and the suggestion,
    with a left border coloured by severity (amber warnings, blue infos) and the classes
    ``wb-finding wb-finding-<severity>`` for tests and themes.

    Examples:
        >>> from workbench.diagnostics import Finding
        >>> html = findings_html([Finding("grad_spikes", "info", "Spikes", "step 7: 9", "lower lr",
        ...                               step=7)])
        >>> html.startswith('<ul class="wb-findings"'), "wb-finding-info" in html, "step 7" in html
        (True, True, True)
    """
    items = [_item(f) for f in findings]
    if not items:
        return ""
    return '<ul class="wb-findings" style="padding:0;margin:4px 0;">' + "".join(items) + "</ul>"


def findings_text(findings: Iterable[Finding]) -> str:
    """Findings as plain text, one block per finding; ``""`` when there are none.

    Examples:
        >>> from workbench.diagnostics import Finding
        >>> flat = Finding("flat_loss", "warning", "Flat", "2.3 to 2.3", "raise lr")
        >>> print(findings_text([flat]))
        [warning] Flat
          evidence: 2.3 to 2.3
          try: raise lr
        >>> findings_text([])
        ''
    """
    return "\n".join(f.text() for f in findings)


class Diagnosis(list):
    """A list of :class:`~workbench.diagnostics.Finding`: text when printed, HTML in a notebook.

    It is a plain ``list`` otherwise (``len``, iteration, indexing, slicing).

    Examples:
        >>> from workbench.diagnostics import Finding
        >>> d = Diagnosis([Finding("answers_cut", "info", "Cut", "1 of 200 rows", "raise it")])
        >>> len(d), d[0].kind, d.kinds, d.warnings
        (1, 'answers_cut', ['answers_cut'], [])
        >>> print(Diagnosis())
        no findings: nothing looks wrong in the run, the data or the evaluation
        >>> sorted(d._repr_mimebundle_())
        ['text/html', 'text/plain']

        ``judged`` says what there was to look at; with nothing, it says so rather than
        that all is well:

        >>> print(Diagnosis(judged=("data",)))
        no findings: nothing looks wrong in the data
        >>> print(Diagnosis(judged=()))  # doctest: +NORMALIZE_WHITESPACE
        nothing to judge yet: this session has no run, data or evaluation (train, load_data or
        evaluate first)
    """

    def __init__(self, items: Any = (), judged: tuple[str, ...] | None = None) -> None:
        super().__init__(items)
        self.judged = judged  # None: the run, the data and the evaluation

    @property
    def kinds(self) -> list[str]:
        """The findings' kinds, in order.

        Examples:
            >>> Diagnosis().kinds
            []
        """
        return [f.kind for f in self]

    @property
    def warnings(self) -> list[Finding]:
        """The findings of severity ``"warning"``.

        Examples:
            >>> from workbench.diagnostics import Finding
            >>> len(Diagnosis([Finding("grad_spikes", "warning", "t", "e", "s")]).warnings)
            1
        """
        return [f for f in self if f.is_warning]

    def text(self) -> str:
        """All findings as text (a line saying so when there are none).

        Examples:
            >>> from workbench.diagnostics import Finding
            >>> Diagnosis([Finding("grad_spikes", "info", "t", "e", "s")]).text().splitlines()[0]
            '[info] t'
        """
        return findings_text(self) or self._none_text()

    def _none_text(self) -> str:
        if self.judged is None:
            return NONE_TEXT
        if not self.judged:
            return (
                "nothing to judge yet: this session has no run, data or evaluation (train, "
                "load_data or evaluate first)"
            )
        names = [f"the {what}" for what in self.judged]
        listed = ", ".join(names[:-1]) + (" or " if len(names) > 1 else "") + names[-1]
        return f"no findings: nothing looks wrong in {listed}"

    def __str__(self) -> str:
        return self.text()

    def __repr__(self) -> str:
        return self.text()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, str]:
        html = findings_html(self) or f"<p>{escape(self._none_text())}</p>"
        return {"text/plain": self.text(), "text/html": html}
