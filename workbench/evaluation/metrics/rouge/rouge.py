"""ROUGE on rouge-score, as evaluate's published ``rouge`` module (offline copy).

Shipped with the workbench so it loads offline: ``evaluate.load(<this folder>)``. Same
arguments and the same algorithm as the published module: ``RougeScorer`` per example; with
``use_aggregator=True`` the result is rouge-score's ``BootstrapAggregator`` median F-measure
(it resamples with numpy's global random state, so it moves slightly between calls, exactly
as the published module does); with ``use_aggregator=False`` it is the per-example F-measures.
Texts are compared in Unicode NFC (a precomposed ``é`` and ``e`` + U+0301 read alike).
"""

import datasets
import evaluate
from rouge_score import rouge_scorer, scoring

from workbench.evaluation.metrics._scorers import nfc

_DESCRIPTION = """
ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum F-measures (Google's rouge-score package).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: List of predicted texts.
    references: List of reference texts, or of lists of references.
    rouge_types: Subset of ``["rouge1", "rouge2", "rougeL", "rougeLsum"]`` (default: all).
    use_aggregator: Return rouge-score's bootstrap median F-measure (default) instead of lists.
    use_stemmer: Porter-stem words before matching.
    tokenizer: Optional callable ``text -> list[str]``.
Returns:
    One float per rouge type (or one list per type when ``use_aggregator=False``).
Examples:
    >>> from workbench.evaluation import module_path
    >>> m = evaluate.load(module_path("rouge"))
    >>> float(m.compute(predictions=["hello there"], references=["hello there"])["rouge1"])
    1.0
"""


class _Tokenizer:
    """Wraps a callable into the ``tokenize`` interface rouge-score expects."""

    def __init__(self, tokenizer_func):
        self.tokenizer_func = tokenizer_func

    def tokenize(self, text):
        return self.tokenizer_func(text)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Rouge(evaluate.Metric):
    """ROUGE with the published module's arguments and results."""

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
        rouge_types=None,
        use_aggregator=True,
        use_stemmer=False,
        tokenizer=None,
    ):
        predictions, references = nfc(predictions), nfc(references)
        rouge_types = rouge_types or ["rouge1", "rouge2", "rougeL", "rougeLsum"]
        multi_ref = isinstance(references[0], list)
        scorer = rouge_scorer.RougeScorer(
            rouge_types=rouge_types,
            use_stemmer=use_stemmer,
            tokenizer=_Tokenizer(tokenizer) if tokenizer is not None else None,
        )
        scores = [
            scorer.score_multi(ref, pred) if multi_ref else scorer.score(ref, pred)
            for ref, pred in zip(references, predictions, strict=True)
        ]
        if not use_aggregator:
            return {key: [s[key].fmeasure for s in scores] for key in rouge_types}
        aggregator = scoring.BootstrapAggregator()
        for score in scores:
            aggregator.add_scores(score)
        result = aggregator.aggregate()
        return {key: result[key].mid.fmeasure for key in result}
