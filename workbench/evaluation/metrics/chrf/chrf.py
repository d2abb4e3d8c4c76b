"""chrF on sacrebleu, as evaluate's published ``chrf`` module (offline copy), 0-100.

Shipped with the workbench so it loads offline: ``evaluate.load(<this folder>)``. Texts are
compared in Unicode NFC (a precomposed ``é`` and ``e`` + U+0301 read alike), otherwise the
numbers are the published module's.
"""

import datasets
import evaluate
from sacrebleu import CHRF

from workbench.evaluation.metrics._scorers import nfc

_DESCRIPTION = """
Corpus chrF / chrF++ (sacrebleu), 0-100.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: List of predicted texts.
    references: List of reference texts, or of lists (same count for every prediction).
    char_order: Character n-gram order (6).
    word_order: Word n-gram order (0 for chrF, 2 for chrF++).
    beta: Recall weight (2).
    lowercase: Lower-case before scoring.
    whitespace: Keep whitespace in character n-grams.
    eps_smoothing: Use sacrebleu's epsilon smoothing instead of chrF++'s effective order.
    per_example: Also return ``"per_example"``: sentence chrF of each pair (workbench addition).
Returns:
    score, char_order, word_order, beta (as the published module).
Examples:
    >>> from workbench.evaluation import module_path
    >>> m = evaluate.load(module_path("chrf"))
    >>> m.compute(predictions=["the cat"], references=["the cat"])["score"]
    100.0
"""


def _transpose(references):
    """sacrebleu wants one stream per reference position, not a list per prediction."""
    if isinstance(references[0], str):
        references = [[ref] for ref in references]
    count = len(references[0])
    if any(len(refs) != count for refs in references):
        raise ValueError("sacrebleu needs the same number of references for each prediction")
    return [[refs[i] for refs in references] for i in range(count)]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ChrF(evaluate.Metric):
    """sacrebleu corpus chrF with the published ``chrf`` module's arguments."""

    def _info(self):
        string = datasets.Value("string", id="sequence")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": string, "references": datasets.Sequence(string)}),
                datasets.Features({"predictions": string, "references": string}),
            ],
        )

    def _compute(
        self,
        predictions,
        references,
        char_order=CHRF.CHAR_ORDER,
        word_order=CHRF.WORD_ORDER,
        beta=CHRF.BETA,
        lowercase=False,
        whitespace=False,
        eps_smoothing=False,
        per_example=False,
    ):
        predictions, references = nfc(predictions), nfc(references)
        chrf = CHRF(char_order, word_order, beta, lowercase, whitespace, eps_smoothing)
        streams = _transpose(references)
        output = chrf.corpus_score(predictions, streams)
        result = {
            "score": output.score,
            "char_order": output.char_order,
            "word_order": output.word_order,
            "beta": output.beta,
        }
        if per_example:
            result["per_example"] = [
                chrf.sentence_score(pred, [s[i] for s in streams]).score
                for i, pred in enumerate(predictions)
            ]
        return result
