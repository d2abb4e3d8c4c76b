"""BLEU on sacrebleu: corpus BLEU, as evaluate's published ``sacrebleu`` module (offline copy).

The workbench's ``bleu`` is sacrebleu's corpus BLEU on a 0-100 scale (exponential
smoothing), the number evaluate's ``sacrebleu`` module reports as ``score``. Two differences:
texts are compared in Unicode NFC, and without a ``tokenize`` the tokenizer suits the
references' script (``"zh"`` for Chinese, ``"char"`` for Japanese kana, Thai, Lao, Khmer,
Myanmar, else sacrebleu's ``"13a"``; see ``bleu_tokenize``), so a perfect Chinese answer
scores 100, not 0; the result's ``tokenize`` names the one used. It is
not evaluate's older ``bleu`` module (TensorFlow NMT's ``compute_bleu``, on a 0-1 scale).
Shipped with the workbench so it loads offline: ``evaluate.load(<this folder>)``.
"""

import datasets
import evaluate
from sacrebleu import BLEU

from workbench.evaluation.metrics._scorers import bleu_tokenize, nfc

_DESCRIPTION = """
Corpus BLEU (sacrebleu), 0-100.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: List of predicted texts.
    references: List of reference texts, or of lists (same count for every prediction).
    smooth_method: ``"exp"`` (default), ``"floor"``, ``"add-k"`` or ``"none"``.
    smooth_value: Value for ``floor`` and ``add-k`` smoothing.
    force: Ignore tokenized-input warnings.
    lowercase: Lower-case before scoring.
    tokenize: sacrebleu tokenizer name (default: chosen from the references' script, see
        ``bleu_tokenize``: ``"zh"``, ``"char"`` or ``"13a"``).
    use_effective_order: Skip n-gram orders with no matches (for sentence BLEU).
    per_example: Also return ``"per_example"``: sentence BLEU of each pair (workbench addition).
Returns:
    score, counts, totals, precisions, bp, sys_len, ref_len (as the published module), and
    tokenize: the tokenizer used (workbench addition).
Examples:
    >>> from workbench.evaluation import module_path
    >>> m = evaluate.load(module_path("bleu"))
    >>> m.compute(predictions=["the cat sat on the mat"], references=["the cat sat on the mat"])[
    ...     "score"]
    100.00000000000004
    >>> m.compute(predictions=["猫在睡觉"], references=["猫在睡觉"])["tokenize"]
    'zh'
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
class Bleu(evaluate.Metric):
    """sacrebleu corpus BLEU with the published ``sacrebleu`` module's arguments."""

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
        smooth_method="exp",
        smooth_value=None,
        force=False,
        lowercase=False,
        tokenize=None,
        use_effective_order=False,
        per_example=False,
    ):
        predictions, references = nfc(predictions), nfc(references)
        tokenize = tokenize or bleu_tokenize(references)
        bleu = BLEU(
            lowercase=lowercase,
            force=force,
            tokenize=tokenize,
            smooth_method=smooth_method,
            smooth_value=smooth_value,
            effective_order=use_effective_order,
        )
        streams = _transpose(references)
        output = bleu.corpus_score(predictions, streams)
        result = {
            "score": output.score,
            "counts": output.counts,
            "totals": output.totals,
            "precisions": output.precisions,
            "bp": output.bp,
            "sys_len": output.sys_len,
            "ref_len": output.ref_len,
            "tokenize": tokenize,
        }
        if per_example:
            # Sentence BLEU needs effective order (sacrebleu's advice), else most are 0.
            sentence = BLEU(
                lowercase=lowercase,
                force=force,
                tokenize=tokenize,
                smooth_method=smooth_method,
                smooth_value=smooth_value,
                effective_order=True,
            )
            result["per_example"] = [
                sentence.sentence_score(pred, [s[i] for s in streams]).score
                for i, pred in enumerate(predictions)
            ]
        return result
