"""Plain-language diagnostics: each rule provoked for real on the tiny model, and the rules'
thresholds on hand-built records.

Every rule but one is provoked by a real run, real data or a real evaluation of the tiny
model; only the "may be worse" branch of worse-than-base is checked on hand-built rows (the
significant branch is real). Runs are at most 40 steps.
"""

from __future__ import annotations

import random

import pytest

import workbench as wb
from workbench.diagnostics import (
    KINDS,
    CutAnswer,
    DataFacts,
    Finding,
    answers_cut,
    diagnose,
    flat_loss,
    grad_spikes,
    overfitting,
    worse_than_base,
)
from workbench.errors import SpecError
from workbench.evaluation.results import EvalRow, Evaluation
from workbench.train.records import LogRecord
from workbench.widgets._findings import Diagnosis, findings_html, findings_text

# A template that ends an answer with a blank line and no end-of-turn token; its generation
# prompt ends with a newline, so training and inference prompts agree at token level.
NO_EOT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] + ':\n' + m['content'] + '\n\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:\n' }}{% endif %}"
)


def session(tmp_path, model_dir, name="s"):
    s = wb.Session(tmp_path / name, verbose=False)
    s.load_model(str(model_dir))
    return s


def only(findings, kind) -> Finding:
    found = [f for f in findings if f.kind == kind]
    assert len(found) == 1, [f.kind for f in findings]
    return found[0]


def num(value: float) -> str:
    return f"{value:.4g}"


# -- run rules, provoked by real runs --------------------------------------------------------
def overfitting_rows() -> tuple[list[dict], list[dict]]:
    """Four training rows learnt by heart, and validation rows about something else: many
    epochs at a high lr drive the eval loss up while the training loss falls."""
    train = [
        {"question": f"What colour is item {i}?", "answer": a}
        for i, a in enumerate(["red", "green", "blue", "apple"])
    ]
    val = [
        {"question": f"Which shape is thing {i}?", "answer": a}
        for i, a in enumerate(["square", "circle", "cone", "star"])
    ]
    return train, val


def test_overfitting_four_rows_many_epochs_high_lr(tmp_path, tiny_model_dir):
    s = session(tmp_path, tiny_model_dir)
    train, val = overfitting_rows()
    s.load_data(train, validation=val)
    run = s.train(max_steps=30, lr=1e-2, batch_size=4, eval_every=1, wait=True)
    finding = only(run.diagnostics, "overfitting")
    assert finding.severity == "warning"
    evals = {r.step: r.eval_loss for r in run.history if r.kind == "eval"}
    lowest = min(evals, key=evals.get)
    # The evidence names the steps and the losses of the rise and the best evaluation.
    assert f"from {num(evals[finding.step])} at step {finding.step}" in finding.evidence
    assert f"lowest eval loss was {num(evals[lowest])} at step {lowest}" in finding.evidence
    assert "consecutive evaluations" in finding.evidence
    assert "training loss fell" in finding.evidence
    assert f"max_steps={lowest}" in finding.suggestion
    # The eval loss really rose after its minimum while the training loss kept falling.
    assert evals[max(evals)] > evals[lowest]
    train_losses = [r.loss for r in run.history if r.kind == "train"]
    assert train_losses[-1] < train_losses[lowest - 1]
    assert "overfitting" in s.diagnose().kinds
    assert "flat_loss" not in run.diagnostics.kinds


def test_flat_loss_at_a_tiny_learning_rate(tmp_path, tiny_model_dir):
    s = session(tmp_path, tiny_model_dir)
    s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)], validation=None)
    run = s.train(max_steps=10, lr=1e-9, batch_size=8, wait=True)
    finding = only(run.diagnostics, "flat_loss")
    assert finding.severity == "warning" and finding.step == 10
    losses = [r.loss for r in run.history if r.kind == "train"]
    assert f"after 10 of 10 steps the training loss is {num(sum(losses[-2:]) / 2)}" in (
        finding.evidence
    )
    assert "the learning rate was at most 1e-09" in finding.evidence
    assert "raise lr" in finding.suggestion and "data.example(0)" in finding.suggestion


def test_grad_spikes_from_a_row_that_contradicts_the_others(tmp_path, tiny_model_dir):
    # Provoked for real: seven rows teach "hello", one row asks the same and wants another
    # answer. Once "hello" is learnt (small gradients), each visit of that row is a spike.
    s = session(tmp_path, tiny_model_dir)
    rows = [{"question": "Say hi", "answer": "hello"}] * 7
    rows.append({"question": "Say hi", "answer": "zebra crossing at night"})
    s.load_data(rows, validation=None)
    run = s.train(max_steps=40, lr=1e-2, batch_size=1, grad_norm_limit=None, wait=True)
    finding = only(run.diagnostics, "grad_spikes")
    assert finding.severity == "warning"
    norms = {r.step: r.grad_norm for r in run.history if r.kind == "train"}
    assert f"step {finding.step}: {num(norms[finding.step])} (" in finding.evidence
    assert "steps had a gradient norm over 5x the median" in finding.evidence
    assert "lower lr" in finding.suggestion
    # The spikes are the contradicting row's visits: its loss is high where the norm spikes.
    losses = {r.step: r.loss for r in run.history if r.kind == "train"}
    assert losses[finding.step] > 1.0


# -- data rules, provoked by real data on the tiny tokenizer ---------------------------------
def test_end_of_turn_never_trained_with_a_template_that_writes_none(tmp_path, tiny_model_dir):
    s = session(tmp_path, tiny_model_dir)
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)]
    report = s.load_data(rows, validation=None, template=NO_EOT_TEMPLATE)
    assert report.count("template_mismatch") == 0  # the template itself is consistent
    finding = only(s.diagnose(), "end_of_turn_untrained")
    assert finding.severity == "warning"
    assert finding.evidence == (
        "none of the 8 training rows has '</s>' among its trained tokens; the template "
        "writes '\\n\\n' after an answer"
    )
    assert "eos_token" in finding.suggestion
    # The tokenizer's own template ends answers with <|im_end|>, which is trained.
    s.load_data(rows, validation=None)
    assert "end_of_turn_untrained" not in s.diagnose().kinds


def test_a_built_in_template_whose_end_is_no_token_says_exports_will_not_stop(tmp_path):
    """'gemma' on a Llama tokenizer: the session stopped at '<end_of_turn>' by text while
    exports (which stop at end tokens only) wrote on, and the finding did not say why."""
    folder = wb.build_tiny_model(tmp_path / "llama", "llama", chat_template=False)
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(folder))
    assert len(s.tokenizer.tokenize("<end_of_turn>")) > 1
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)]
    # said when the data loads, not only if diagnose() is asked (a served model wrote on)
    with pytest.warns(
        wb.WorkbenchWarning,
        match=r"template 'gemma' ends each answer with '<end_of_turn>', which is no token of "
        r"this tokenizer: .* an export .* writes on; use template='tokenizer'",
    ):
        s.load_data(rows, validation=None, template="gemma")
    finding = only(s.diagnose(), "end_of_turn_untrained")
    assert finding.evidence.endswith(
        "'<end_of_turn>' is no token of this tokenizer: the session's own generate stops at "
        "it by searching the text, and so does s.serve(), but an export (plain transformers, "
        "llama.cpp, another server) stops only at an end token, and writes on"
    )
    assert "template='alpaca'" in finding.suggestion and "chatml" not in finding.suggestion
    s.load_data(rows, validation=None, template="alpaca")  # ends answers with eos: trained
    assert "end_of_turn_untrained" not in s.diagnose().kinds
    import warnings

    with warnings.catch_warnings():  # raw text uses no template: nothing to say
        warnings.simplefilter("error", wb.WorkbenchWarning)
        s.load_data([{"text": f"line {i}"} for i in range(8)], validation=None, template="gemma")


def test_answers_cut_by_a_small_max_length(tmp_path, tiny_model_dir):
    s = session(tmp_path, tiny_model_dir)
    rows = [
        {"question": f"question number {i} is long", "answer": f"answer {i} is quite long " * 3}
        for i in range(8)
    ]
    s.load_data(rows, validation=None, max_length=30)
    stats = s.data.stats("train")
    finding = only(s.diagnose(), "answers_cut")
    assert finding.severity == "warning"
    assert finding.evidence.startswith("8 of 8 training rows lose answer tokens at max_length=30")
    lost0 = int(stats["answer_end"][0]) - 30
    assert f"train row 0: {lost0} of {int(stats['n_answer'][0])} lost" in finding.evidence
    longest = int(stats["n_tokens"].max())
    assert f"the longest cut example has {longest} tokens" in finding.evidence
    assert f"raise max_length to {longest}" in finding.suggestion
    # Cutting every answer also cuts the <|im_end|> that ends it: never trained either.
    eot = only(s.diagnose(), "end_of_turn_untrained")
    assert "8 training answers are cut at max_length=30" in eot.evidence
    assert "raise max_length" in eot.suggestion  # the template is fine; the cutoff is not
    # The report counts the same rows.
    assert s.data_report().count("truncated_answer") == 8


def test_validation_leak_and_untrusted_text_is_escaped(tmp_path, tiny_model_dir):
    s = session(tmp_path, tiny_model_dir)
    train = [
        {"question": f"<script>alert({i})</script> what is {i}?", "answer": f"a{i}"}
        for i in range(8)
    ]
    s.load_data(train, validation=[train[0], train[3], {"question": "new", "answer": "x"}])
    diagnosis = s.diagnose()
    finding = only(diagnosis, "validation_leak")
    assert finding.severity == "warning"
    assert finding.evidence.startswith("2 of 3 validation rows repeat training rows")
    assert "same text as train row" in finding.evidence
    assert "<script>alert(0)</script> what is 0? a0" in finding.evidence  # the quoted row
    assert "drop those rows" in finding.suggestion
    for html in (findings_html(diagnosis), diagnosis._repr_mimebundle_()["text/html"]):
        assert "<script>" not in html
        assert "&lt;script&gt;alert(0)&lt;/script&gt;" in html
        assert 'class="wb-finding wb-finding-warning"' in html
    assert "<script>alert(0)</script>" in findings_text(diagnosis)


# -- the evaluation rule, on a real evaluation -----------------------------------------------
def test_worse_than_base_on_references_the_base_model_wrote(tmp_path, tiny_model_dir):
    # A random tiny model scores 0 either way on real answers, so the references are the
    # base model's own greedy outputs (generated here, for real): the base then matches
    # them exactly and the tuned model, trained to say "zebra", does not.
    s = session(tmp_path, tiny_model_dir)
    s.load_data([{"question": f"Name a colour {i}", "answer": "zebra"} for i in range(8)])
    s.train(max_steps=10, lr=1e-2, batch_size=4, wait=True)
    words = ("cats", "dogs", "rain", "snow", "maps", "tea", "bread", "ships", "clocks", "rivers")
    questions = [f"Tell me about {w}{end}" for w in words for end in ("", " today")]
    first = s.evaluate(
        data=[{"question": q, "answer": "x"} for q in questions],
        metrics=["exact_match"],
        max_new_tokens=6,
    )
    rows = [
        {"question": q, "answer": r.base}
        for q, r in zip(questions, first.rows, strict=True)
        if r.base.strip() and r.base.strip() != r.tuned.strip()
    ]
    assert len(rows) >= 10  # enough rows for an interval (MIN_ROWS_FOR_AN_INTERVAL)
    evaluation = s.evaluate(data=rows, metrics=["exact_match"], max_new_tokens=6)
    assert evaluation.scores["exact_match"]["base"] == 1.0
    assert evaluation.scores["exact_match"]["tuned"] == 0.0
    finding = only(s.diagnose(), "worse_than_base")
    assert finding.severity == "warning"
    assert finding.title.endswith(f"on {len(rows)} held-out rows")
    assert finding.evidence == (
        "exact_match: tuned 0 vs base 1 (difference -1; 95% CI of the difference [-1, -1]): "
        "significantly worse"
    )
    assert "sorted_rows('exact_match', descending=False)" in finding.suggestion


def test_a_handful_of_rows_is_never_significantly_worse():
    # One or a few rows that all went the base's way give a bootstrap interval that
    # excludes 0: it used to be reported as a warning, "significantly worse".
    for n in (1, 3, 9):
        rows = tuple(
            EvalRow(i, "Q", "A", {}, {"perplexity": {"base": 180.0, "tuned": 210.0}})
            for i in range(n)
        )
        scores = {"perplexity": {"base": 180.0, "tuned": 210.0, "higher_is_better": False}}
        finding = worse_than_base(scores, rows)
        assert finding.severity == "info"
        assert f"too few rows ({n}) for an interval): may be worse" in finding.evidence


def test_worse_than_base_says_may_be_when_the_interval_holds_zero():
    marks = [(1.0, 0.0), (0.0, 1.0), (1.0, 0.0), (0.0, 0.0), (1.0, 1.0), (0.0, 0.0)] * 2
    rows = tuple(
        EvalRow(i, "Q", "A", {}, {"exact_match": {"base": b, "tuned": t}})
        for i, (b, t) in enumerate(marks)
    )
    scores = {"exact_match": {"base": 0.5, "tuned": 2 / 6, "higher_is_better": True}}
    finding = worse_than_base(scores, rows)
    assert finding.severity == "info"
    assert finding.evidence.endswith(": may be worse")
    assert "95% CI of the difference [" in finding.evidence
    # Lower is better (perplexity): a higher tuned value is worse.
    lower = {"perplexity": {"base": 5.0, "tuned": 9.0, "higher_is_better": False}}
    assert worse_than_base(lower).evidence.startswith("perplexity: tuned 9 vs base 5")
    assert worse_than_base({"perplexity": {**lower["perplexity"], "tuned": 4.0}}) is None
    ev = Evaluation(scores, rows, {"columns": ["base", "tuned"]})
    assert diagnose(evaluation=ev)[0].kind == "worse_than_base"


# -- a healthy run ---------------------------------------------------------------------------
def toy_rows(n: int, offset: int, seed: int) -> list[dict]:
    pairs = [("cat", "red"), ("dog", "green"), ("bird", "blue"), ("fish", "apple")]
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        key, value = pairs[rng.randrange(4)]
        digits = " ".join(str(rng.randrange(10)) for _ in range(rng.randrange(1, 6)))
        rows.append({"question": f"item {offset + i}: {digits} {key} =>", "answer": value})
    return rows


def test_a_healthy_run_has_no_warnings(tmp_path, tiny_model_dir):
    s = session(tmp_path, tiny_model_dir)
    report = s.load_data(toy_rows(64, 0, 0), validation=toy_rows(16, 1000, 1))
    assert report.count("leak") == 0
    run = s.train(max_steps=30, lr=5e-3, batch_size=8, eval_every=10, wait=True)
    s.evaluate(metrics=["exact_match"], limit=4, max_new_tokens=4)
    diagnosis = s.diagnose()
    assert diagnosis.warnings == [], diagnosis.text()
    assert not run.diagnostics.warnings
    losses = [r.loss for r in run.history if r.kind == "train"]
    assert losses[-1] < losses[0] / 2  # it did learn


# -- thresholds on hand-built records --------------------------------------------------------
def history_of(train: list[float], evals: dict[int, float]) -> list[LogRecord]:
    out = []
    for step, loss in enumerate(train, 1):
        out.append(LogRecord("train", step, step / len(train), loss=loss, grad_norm=1.0))
        if step in evals:
            out.append(LogRecord("eval", step, step / len(train), eval_loss=evals[step]))
    return out


def test_overfitting_needs_the_train_loss_to_fall_and_the_rise_to_hold():
    falling = [3.0, 2.5, 2.0, 1.5, 1.0, 0.5]
    rising = {2: 2.0, 3: 2.1, 4: 2.2, 5: 2.3}
    assert overfitting(history_of(falling, rising)).step == 2
    # Train loss rising too: not overfitting (the run diverges, or the data shifts).
    assert overfitting(history_of(falling[::-1], rising)) is None
    # The rise was undone: the latest eval loss is back below where it started.
    assert overfitting(history_of(falling, {**rising, 6: 1.9})) is None
    # A plateau's wiggle under min_rise (0.5%) is no trend.
    assert overfitting(history_of(falling, {2: 2.0, 3: 2.001, 4: 2.002})) is None
    # patience is configurable: three rises needed, three present; four needed, not.
    assert overfitting(history_of(falling, rising), patience=3) is not None
    assert overfitting(history_of(falling, rising), patience=4) is None


def test_flat_loss_waits_for_a_fifth_of_the_run_and_five_steps():
    flat = history_of([2.0] * 8, {})
    assert flat_loss(flat, total_steps=100) is None  # 8 < 20% of 100
    assert flat_loss(flat, total_steps=40).step == 8
    assert flat_loss(history_of([2.0] * 4, {}), total_steps=4) is None  # < 5 steps
    # The fitted line must be 95% sure of a fall of 2% or more: a steady 5% fall is moving,
    # a 1.25% one is flat, and so is a jump in the last two steps that the line can't trust.
    assert flat_loss(history_of([2.0 - 0.1 * i / 7 for i in range(8)], {})) is None
    assert flat_loss(history_of([2.0 - 0.025 * i / 7 for i in range(8)], {})) is not None
    assert flat_loss(history_of([2.0] * 6 + [1.9, 1.9], {})) is not None
    # Batch noise with no trend (Gemma 3 270M at lr 1e-7, measured) is flat, though the
    # mean of the last quarter happens to be below the first quarter's.
    noisy = [1.89, 1.22, 1.01, 1.99, 1.77, 1.65, 1.29, 1.30, 1.42, 1.44, 0.90, 1.92]
    assert flat_loss(history_of(noisy, {}), total_steps=12) is not None


def test_grad_spikes_need_history_and_a_jump_over_five_times_the_median():
    def with_norms(norms):
        return [LogRecord("train", s, 0.1, loss=1.0, grad_norm=g) for s, g in enumerate(norms, 1)]

    assert grad_spikes(with_norms([1.0] * 5 + [4.9])) is None  # under 5x
    assert grad_spikes(with_norms([1.0, 50.0])) is None  # too early to judge
    single = grad_spikes(with_norms([1.0] * 6 + [6.0]))
    assert (single.severity, single.step) == ("info", 7)
    assert "step 7: 6 (6x the median 1)" in single.evidence


def test_answers_cut_by_the_context_and_a_small_share_is_info():
    few = DataFacts(
        train_rows=500,
        cutoff=64,
        cutoff_source="context",
        answered={"train": 500},
        cut_answers=(CutAnswer("train", 3, 80, 20, 16),),
    )
    finding = answers_cut(few)
    assert finding.severity == "info"  # 1 of 500 (< 1%), none lost entirely
    assert finding.title == "Answers cut by the model's context"
    assert "longer context than 64 tokens" in finding.suggestion
    whole = DataFacts(
        train_rows=500,
        cutoff=64,
        answered={"train": 500},
        cut_answers=(CutAnswer("train", 3, 80, 10, 10),),
    )
    assert answers_cut(whole).severity == "warning"
    assert "1 of them entirely" in answers_cut(whole).evidence


def test_findings_and_their_views():
    warning = Finding("grad_spikes", "warning", "W", "e", "s", step=0)
    info = Finding("answers_cut", "info", "I", "e", "s")
    assert set(KINDS) >= {"overfitting", "flat_loss", "validation_leak", "worse_than_base"}
    with pytest.raises(SpecError):
        Finding("x", "fatal", "t", "e", "s")
    facts = DataFacts(
        train_rows=10,
        stop_tokens=("</s>",),
        stop_trained_rows=0,
        cutoff=8,
        answered={"train": 10},
        cut_answers=(CutAnswer("train", 0, 20, 4, 1),),
    )
    kinds = [f.severity for f in diagnose(data=facts)]
    assert kinds == sorted(kinds, key=lambda k: k != "warning")  # warnings first
    diagnosis = Diagnosis([info, warning])
    assert len(diagnosis) == 2 and diagnosis[1] is warning and next(iter(diagnosis)) is info
    assert diagnosis.warnings == [warning]
    assert "(step 0)" in findings_html([warning])
    assert findings_html([]) == "" and findings_text([]) == ""
    assert str(Diagnosis()).startswith("no findings")
    assert diagnosis.text() == findings_text([info, warning])


def test_cut_answers_get_advice_the_context_allows(tmp_path, tiny_model_dir):
    # Examples longer than the model's context: "raise max_length to <longest>" could not be
    # followed (set_max_length caps it), and once capped the same advice came back.
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    context = s.model.config.max_position_embeddings
    long = " ".join(["word"] * (context + 200))
    rows = [{"question": f"q{i}", "answer": long if i == 0 else f"a{i}"} for i in range(20)]
    s.load_data(rows, validation=None, max_length=64)
    cut = only(s.diagnose(), "answers_cut")
    assert f"raise max_length to {context} (the model reads at most {context}" in cut.suggestion
    with pytest.warns(wb.WorkbenchWarning):
        s.set_max_length(10_000)  # capped at the context
    capped = only(s.diagnose(), "answers_cut")
    assert capped.title == "Answers cut by the model's context"
    assert f"longer context than {context} tokens" in capped.suggestion


def test_an_early_stopped_run_is_told_as_it_is(tmp_path, tiny_model_dir):
    # It used to get "set early_stopping=2" as advice, an ETA in its status, and a snapshot
    # note saying run.resume() continues it.
    from workbench.widgets._snapshot import snapshot_bundle

    s = session(tmp_path, tiny_model_dir)
    train, val = overfitting_rows()
    s.load_data(train, validation=val)
    run = s.train(max_steps=60, lr=1e-2, batch_size=4, eval_every=1, early_stopping=2, wait=True)
    assert run.state.value == "stopped" and run.status.message.startswith("early stopping")
    assert run.status.step < 60
    status = run.monitor().status_text()
    assert status.startswith("stopped") and "ETA" not in status
    note = snapshot_bundle(run.monitor())["text/html"]
    assert "Stopped by early stopping at step" in note and "run.resume() continues" not in note
    for found in (run.diagnostics, s.diagnose()):
        advice = only(found, "overfitting").suggestion  # it stopped on a rising eval loss
        assert "early_stopping=2 stopped the run" in advice
        assert "set early_stopping" not in advice


def test_a_failed_run_is_the_first_finding(tmp_path, tiny_model_dir):
    # A collapsed run used to get "no findings: nothing looks wrong in the run".
    s = session(tmp_path, tiny_model_dir)
    s.load_data([{"question": f"q{i} is", "answer": f"a{i}"} for i in range(16)])
    with pytest.warns(wb.WorkbenchWarning, match="far above"):
        run = s.train(max_steps=30, lr=1000.0, batch_size=8, eval_every=100, wait=True)
    assert run.state.value == "failed"
    for found in (s.diagnose(), run.diagnostics):
        first = found[0]
        assert (first.kind, first.severity) == ("run_failed", "warning")
        assert first.step == run.status.step
        assert first.evidence == run.status.error and first.title.startswith("The run failed")


def test_data_that_trains_nothing_does_not_blame_the_template(tmp_path, tiny_model_dir):
    # Every assistant turn weight 0: nothing trains, which the data report lists; the
    # finding used to tell the user to change a template that was fine.
    s = session(tmp_path, tiny_model_dir)
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"q{i}"},
                {"role": "assistant", "content": f"a{i}", "weight": 0},
            ]
        }
        for i in range(8)
    ]
    report = s.load_data(rows, validation=None)
    assert any(p.kind == "no_trained_tokens" for p in report.problems)
    assert "end_of_turn_untrained" not in s.diagnose().kinds


def test_a_session_with_nothing_to_judge_says_so(tmp_path, tiny_model_dir):
    # a fresh Session (after a kernel restart) was told "nothing looks wrong in the run, the
    # data or the evaluation" though it had none of them
    s = wb.Session(tmp_path / "s", verbose=False)
    assert str(s.diagnose()).startswith("nothing to judge yet: this session has no run")
    s.load_model(str(tiny_model_dir))
    s.load_data([{"question": f"q{i} is", "answer": f"a{i}"} for i in range(40)])
    diagnosis = s.diagnose()
    assert diagnosis.kinds == [] and str(diagnosis) == (
        "no findings: nothing looks wrong in the data"
    )
    assert "nothing looks wrong in the data" in diagnosis._repr_mimebundle_()["text/html"]


def test_running_medians_are_the_median_of_the_steps_before_each():
    # grad_spikes took a median per step in a loop: 208 ms per live render at 20,000 steps
    import numpy as np

    from workbench.diagnostics.rules import _running_medians, grad_spikes

    rng = np.random.default_rng(1)
    for n, window, first in [(0, 25, 5), (6, 25, 5), (26, 25, 5), (300, 25, 5), (40, 3, 5)]:
        values = rng.lognormal(0, 1, n)
        expected = [
            np.median(values[max(0, i - window) : i]) if i >= first else np.nan for i in range(n)
        ]
        assert np.allclose(_running_medians(values, window, first), expected, equal_nan=True)
    norms = rng.lognormal(0, 0.3, 20_000)
    norms[[100, 5_000, 15_000]] *= 40
    history = [
        LogRecord("train", s, 0.1, loss=1.0, grad_norm=float(g)) for s, g in enumerate(norms, 1)
    ]
    assert grad_spikes(history).evidence.startswith("3 steps had a gradient norm over 5x")
    assert "step 5001" in grad_spikes(history).evidence
