"""The report's Examples table: each row's input (not the template), answers marked right/wrong.

A real evaluation of the tiny model on demo rows (records to JSON, alpaca format: a shared
instruction and a varying ``input``), their prompts rendered with the alpaca and the Gemma
templates exactly as a session renders them, one row carrying a ``<script>``.
"""

from __future__ import annotations

import html
import re
from dataclasses import replace

import pytest

from workbench._display import escape_html
from workbench.evaluation import Evaluation, run_evaluation
from workbench.report import write_report
from workbench.tasks import INSTRUCTION, json_valid, records_to_json

SCRIPT = "<script>alert(1)</script>"
MARKERS = ("### Instruction", "### Response", "Below is an instruction", "start_of_turn", "<bos>")


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    """The tiny model with a LoRA adapter of random weights: base and tuned answer differently."""
    import torch
    from peft import LoraConfig, get_peft_model

    from workbench.models.loading import load_model

    loaded = load_model(str(tiny_model_dir), on_event=lambda m: None)
    torch.manual_seed(0)
    config = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    return get_peft_model(loaded.model, config), loaded.tokenizer


def demo_rows() -> tuple[list[dict], list[dict]]:
    train, test = records_to_json(train_size=8, test_size=3)
    hostile = {"instruction": INSTRUCTION, "input": f"{SCRIPT} Ada is 30.", "output": "{}"}
    return train, [*test, hostile]


@pytest.fixture(scope="module", params=["alpaca", "gemma"])
def report(request, model, tmp_path_factory):
    """(page, Examples section, evaluation, the rows' inputs) for one template."""
    from workbench.data import PreparedData
    from workbench.data.report import build_report

    peft_model, tok = model
    train, test = demo_rows()
    data = PreparedData.load(train, tok, validation=test, template=request.param)
    examples = [data.example(i, "validation") for i in range(len(test))]
    rows = [{"prompt": ex.prompt, "reference": ex.answer} for ex in examples]  # as Session does
    assert all(MARKERS[0 if request.param == "alpaca" else 3] in r["prompt"] for r in rows)
    settings = {"metrics": ["exact_match", json_valid], "max_new_tokens": 6, "batch_size": 4}
    first = run_evaluation(peft_model, tok, rows, **settings)
    rows[0]["reference"] = first.rows[0].tuned  # so one answer is right
    folder = tmp_path_factory.mktemp(f"report-{request.param}")
    evaluation = run_evaluation(peft_model, tok, rows, out_dir=folder / "eval", **settings)
    page = write_report(
        folder / "report.html",
        "demo",
        data_report=build_report(data),
        evaluation=evaluation,
    ).read_text(encoding="utf-8")
    section = page[page.index("<h2>Examples</h2>") : page.index("</table>", page.index("<h2>Ex"))]
    return page, section, evaluation, [r["input"] for r in test]


def cells(section: str) -> list[list[str]]:
    body = section[section.index("<tbody>") :]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S) for row in body.split("<tr>")[1:]]


def test_the_table_shows_each_input_not_the_template(report):
    _, section, evaluation, inputs = report
    table = cells(section)
    assert [row[1] for row in table] == [html.escape(text) for text in inputs]
    assert [row[2] for row in table] == [html.escape(r.reference) for r in evaluation.rows]
    for marker in MARKERS:
        assert marker not in section and html.escape(marker) not in section
    # The instruction every row shares is said once, above the table.
    assert section.count(html.escape(INSTRUCTION)) == 1
    assert "Instruction (the same in every row)" in section


def test_answers_are_marked_right_or_wrong_with_a_legend(report):
    _, section, evaluation, _ = report
    assert "✓ right, ✗ wrong by exact_match" in section
    for row, shown in zip(evaluation.rows, cells(section), strict=True):
        for column, cell in zip(("base", "tuned"), shown[3:], strict=True):
            right = row.scores["exact_match"][column] == 1.0
            mark = "✓" if right else "✗"
            assert cell == (
                f'<span class="mark" title="{"right" if right else "wrong"}">{mark}</span> '
                f"{escape_html(row.outputs[column])}"  # control characters shown
            )
    assert evaluation.rows[0].scores["exact_match"]["tuned"] == 1.0
    assert section.count("✓</span>") == sum(
        v == 1.0 for r in evaluation.rows for v in r.scores["exact_match"].values()
    )
    assert section.count('<td class="right">') + section.count('<td class="wrong">') == 8


def test_untrusted_text_is_escaped(report):
    page, section, _, _ = report
    assert SCRIPT not in page
    assert f"<td>{html.escape(SCRIPT)} Ada is 30.</td>" in section


def test_without_a_right_or_wrong_score_nothing_is_marked(report, tmp_path):
    _, _, evaluation, inputs = report
    rows = tuple(
        replace(r, scores={"json_valid": {"base": 0.5, "tuned": 0.25}}) for r in evaluation.rows
    )
    page = write_report(
        tmp_path / "report.html", "demo", evaluation=Evaluation({}, rows, evaluation.settings)
    ).read_text()
    assert "no right/wrong score (such as exact_match) to mark" in page
    assert "✓" not in page and "✗" not in page
    assert html.escape(inputs[1]) in page
