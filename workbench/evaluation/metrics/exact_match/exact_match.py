"""Exact match, as evaluate's published ``exact_match`` module, plus ``strip``.

Shipped with the workbench so it loads offline: ``evaluate.load(<this folder>)``.
With ``strip=False`` (the default) the numbers equal the published module's, except that
texts are compared in Unicode NFC (a precomposed ``é`` and ``e`` + U+0301 read alike) and
``ignore_case`` no longer cuts off a text that lower-casing lengthens (numpy's ``char.lower``
keeps the array's width, so ``"İSTANBUL"`` and ``"İSTANBUX"`` both became ``"i̇stanbu"``).
"""

import re
import string

import datasets
import evaluate
import numpy as np

from workbench.evaluation.metrics._scorers import nfc

_DESCRIPTION = """
Fraction of predictions equal to their reference after optional normalisation.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: List of predicted texts.
    references: List of reference texts.
    regexes_to_ignore: Regular expressions removed from both before comparing.
    ignore_case: Lower-case both before comparing.
    ignore_punctuation: Remove ``string.punctuation`` from both.
    ignore_numbers: Remove digits from both.
    strip: Strip leading and trailing whitespace from both (workbench addition).
    per_example: Also return ``"per_example"``, the 0/1 score of each pair (workbench addition).
Returns:
    exact_match: Mean of the per-example matches, in [0, 1].
Examples:
    >>> from workbench.evaluation import module_path
    >>> m = evaluate.load(module_path("exact_match"))
    >>> m.compute(predictions=[" Paris\\n"], references=["paris"], ignore_case=True, strip=True)
    {'exact_match': 1.0}
"""


def _normalise(texts, regexes, ignore_case, ignore_punctuation, ignore_numbers, strip):
    # Python strings, not numpy's: a numpy str array drops trailing NULs ("a\x00" == "a")
    # and np.char.lower cuts "İ" -> "i̇" short.
    texts = list(texts)
    for regex in regexes or []:
        texts = [re.sub(regex, "", x) for x in texts]
    if ignore_case:
        texts = [x.lower() for x in texts]
    if ignore_punctuation:
        texts = [x.translate(str.maketrans("", "", string.punctuation)) for x in texts]
    if ignore_numbers:
        texts = [x.translate(str.maketrans("", "", string.digits)) for x in texts]
    if strip:
        texts = [x.strip() for x in texts]
    return texts


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExactMatch(evaluate.Metric):
    """Exact match with the published module's options and ``strip``."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string", id="sequence"),
                    "references": datasets.Value("string", id="sequence"),
                }
            ),
        )

    def _compute(
        self,
        predictions,
        references,
        regexes_to_ignore=None,
        ignore_case=False,
        ignore_punctuation=False,
        ignore_numbers=False,
        strip=False,
        per_example=False,
    ):
        predictions, references = nfc(predictions), nfc(references)
        options = (regexes_to_ignore, ignore_case, ignore_punctuation, ignore_numbers, strip)
        preds = _normalise(predictions, *options)
        refs = _normalise(references, *options)
        # As published: an empty normalised prediction only matches an identical original.
        matches = [
            p == r and (p != "" or original == reference)
            for p, r, original, reference in zip(preds, refs, predictions, references, strict=True)
        ]
        result = {"exact_match": float(np.mean(matches)) if matches else 0.0}
        if per_example:
            result["per_example"] = [float(m) for m in matches]
        return result
