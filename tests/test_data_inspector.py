"""DataInspector driven headless: the same handlers a click calls, then read widget state."""

from __future__ import annotations

import html as html_lib
import re

import pytest
from data_fixtures import cache_dir, load, tokenizer

from workbench.data import PreparedData
from workbench.widgets.data_inspector import DataInspector

__all__ = ["cache_dir", "tokenizer"]

XSS = "<img src=x onerror=alert(1)>"
SCRIPT = "<script>alert('x')</script>"


@pytest.fixture(scope="module")
def data(tokenizer, tmp_path_factory):
    rows = [
        {"question": f"What is number {i} in words, please tell me?", "answer": f"n{i}"}
        for i in range(45)
    ]
    rows[7] = {"question": f"Find {SCRIPT} here", "answer": XSS}
    rows.append(dict(rows[3]))  # a duplicate, to have a clickable problem
    return PreparedData.load(
        rows, tokenizer, validation=0.1, cache_dir=str(tmp_path_factory.mktemp("cache"))
    )


def _body_rows(html):
    return html.count("<tr>") - 1  # minus the header row


def test_pages(data):
    ins = DataInspector(data, page_size=10)
    assert ins.page == 0 and _body_rows(ins.table_html.value) == 10
    assert ins.page_label.value == f"page 1 of 5 ({len(data.train)} rows)"
    ins.next_button.click()
    assert ins.page == 1 and "page 2 of 5" in ins.page_label.value
    ins.go_to_page(99)
    assert ins.page == 4 and ins.next_button.disabled
    assert _body_rows(ins.table_html.value) == len(data.train) - 40


def test_search_filters_rows(data):
    ins = DataInspector(data)
    ins.search_box.value = "number 1"  # continuous_update=False: fires on enter, like this
    expected = {
        i for i in range(len(data.train)) if "number 1" in data.train[i]["messages"][0]["content"]
    }
    assert ins.matches == len(expected) > 0 and ins.page == 0
    ins.search("no such text anywhere")
    assert ins.matches == 0 and "no matching rows" in ins.table_html.value


def test_split_toggle_shows_validation_rows(data):
    ins = DataInspector(data)
    ins.split_toggle.value = "validation"
    assert f"({len(data.validation)} rows)" in ins.page_label.value


def _kept_share(data, cutoff):
    """Share of trained tokens a cutoff keeps, counted token by token on uncut data."""
    assert data.spec.max_length is None
    kept = total = 0
    for split in ("train", "validation"):
        for labels in data.split(split)["labels"]:
            trained = [i for i, label in enumerate(labels) if label != -100]
            kept += sum(i < cutoff for i in trained)
            total += len(trained)
    return kept / total


def test_slider_reports_truncation_from_the_data(data):
    ins = DataInspector(data)
    longest = data.report().lengths["total"].max
    assert ins.cutoff_slider.max == longest and ins.cutoff_slider.value == longest
    assert ins.cutoff_label.value.startswith(f"at {longest} tokens: 0 of 46 answers lose tokens")
    ins.cutoff_slider.value = 20
    cut = data.truncation_at(20)
    # Changed on purpose (issue 11): the preview line counts answers first, then the share of
    # answer tokens kept, then examples; it used to read "cutoff 20: N of M examples cut, ...".
    assert ins.cutoff_label.value == (
        f"at 20 tokens: {cut['answers']} of 46 answers lose tokens, {cut['answers_lost']} lose "
        f"all; {_kept_share(data, 20):.0%} of answer tokens kept; "
        f"{cut['examples']} of {cut['total']} examples cut"
    )
    assert ins.figure.layout.shapes[0].x0 == 20
    assert sum(ins.figure.data[0].y) == cut["total"]


def test_kept_share_matches_the_tokens(data):
    ins = DataInspector(data)
    for cutoff in (38, 40, 41):
        ins.set_cutoff(cutoff)
        share = _kept_share(data, cutoff)
        assert 0 < share < 1
        assert f"; {round(share * 100)}% of answer tokens kept;" in ins.cutoff_label.value


def test_slider_is_full_width_and_linked_to_the_number_box(data):
    ins = DataInspector(data)
    assert ins.cutoff_slider.layout.width == "100%"
    assert ins.cutoff_box.max == ins.cutoff_slider.max
    ins.cutoff_box.value = 21  # typing a number moves the slider and the preview
    assert ins.cutoff_slider.value == 21 and ins.cutoff_label.value.startswith("at 21 tokens")
    ins.cutoff_slider.value = 25
    assert ins.cutoff_box.value == 25
    ins.set_cutoff(10_000)  # clamped to the longest example
    assert ins.cutoff == ins.cutoff_box.value == ins.cutoff_slider.max


def _applier(data, calls):
    def apply(n):
        calls.append(n)
        return data.with_max_length(n)

    return apply


def test_apply_calls_back_and_shows_the_new_data(data):
    calls = []
    ins = DataInspector(data, on_apply_max_length=_applier(data, calls))
    # Changed on purpose (issue 11): this test applied 18, where every answer loses all its
    # tokens; now the button is off there, and at 40, which cuts some answers, it asks first.
    ins.cutoff_slider.value = 40
    ins.apply_button.click()
    assert calls == [] and ins.apply_button.description.startswith("Cut 36 answers?")
    ins.apply_button.click()
    assert calls == [40]
    assert ins.data.spec.max_length == 40 and ins.cutoff_slider.value == 40
    assert ins.report.count("truncated_answer") + ins.report.count("no_trained_tokens") > 0
    assert ins.apply_button.description == "Apply max_length"


def test_apply_states_ready_confirm_blocked(data):
    calls = []
    ins = DataInspector(data, on_apply_max_length=_applier(data, calls))
    longest = ins.cutoff

    # Nothing cut: one click applies.
    assert ins.apply_state == "ready" and not ins.apply_button.disabled
    assert ins.apply_button.description == "Apply max_length" and ins.apply_note.value == ""

    # Some answers cut: the first click turns the button into a question, the second applies.
    ins.set_cutoff(41)
    cut = data.truncation_at(41)
    assert 0 < cut["answers"] < 46 and ins.apply_state == "confirm"
    ins.apply_button.click()
    assert calls == [] and ins.apply_state == "armed"
    assert ins.apply_button.description == f"Cut {cut['answers']} answers? Apply anyway"
    assert ins.apply_button.button_style == "warning"
    assert f"cuts {cut['answers']} of 46 answers" in ins.apply_note.value
    ins.set_cutoff(40)  # moving the cutoff takes the question back
    assert ins.apply_state == "confirm" and ins.apply_button.description == "Apply max_length"
    ins.apply_button.click()
    ins.apply_button.click()
    assert calls == [40] and ins.data.spec.max_length == 40

    # Every answer loses all its tokens: the button is off, the reason is shown, a click
    # (clicks reach the handler even on a disabled button here) applies nothing.
    ins.set_cutoff(20)
    assert data.truncation_at(20)["answers_lost"] == 46
    assert ins.apply_state == "blocked" and ins.apply_button.disabled
    assert "Apply is off: at 20 tokens all 46 answers lose every trained token" in (
        ins.apply_note.value
    )
    ins.apply_button.click()
    ins.apply_button.click()
    assert calls == [40]
    ins.set_cutoff(longest)
    assert ins.apply_state == "ready" and not ins.apply_button.disabled


def test_without_a_callback_apply_is_off(data):
    ins = DataInspector(data)
    assert ins.apply_state == "unavailable" and ins.apply_button.disabled
    assert ins.apply_cutoff() is None


def test_problem_click_shows_its_example(data):
    ins = DataInspector(data)
    report = data.report()
    index = next(i for i, p in enumerate(report.problems) if p.kind == "duplicate")
    problem = report.problems[index]
    ins.problem_kind.value = "duplicate"
    assert [v for _, v in ins.problems_select.options] == [index]
    ins.problems_select.value = index
    assert (ins.example.index, ins.example.split) == (problem.row, problem.split)
    assert f"example {problem.row} " in ins.example_html.value


def test_example_view_marks_tokens(data):
    ins = DataInspector(data)
    ins.example_index.value = 2
    ex = data.example(2)
    html = ins.example_html.value
    trained = sum(t.trained for t in ex.tokens)
    assert html.count('class="wb-tok trained') == trained + 1  # + the legend
    assert html.count('class="wb-tok masked') == len(ex.tokens) - trained + 2
    assert f'title="id {ex.tokens[0].id} · masked · special"' in html


def test_everything_is_escaped(data):
    ins = DataInspector(data)
    row = next(i for i in range(len(data.train)) if data.train[i]["messages"][1]["content"] == XSS)
    ins.search("find")
    ins.show_example(row, "train")
    for html in (ins.table_html.value, ins.example_html.value, ins.summary_html.value):
        assert "<img" not in html and "<script" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in ins.table_html.value
    assert "&lt;script&gt;" in ins.table_html.value
    shown = html_lib.unescape(re.sub(r"<[^>]+>", "", ins.example_html.value.replace("↵<br>", "\n")))
    assert XSS in shown and SCRIPT in shown  # shown as text, token by token


def test_characters_split_over_byte_tokens_read_as_written(tokenizer, cache_dir):
    # Each token was decoded alone: "مرحبا 🙂" showed as [�][�][�]... in the view,
    # the inspector and the trained text.
    answer = "مرحبا 🙂 你好 “déjà”"
    data = load([{"question": "Say hi", "answer": answer}], tokenizer, cache_dir)
    example = data.example(0)
    assert example.trained_text == answer + "<|im_end|>\n"
    assert "�" not in str(example) and len(example.tokens) == len(data.train[0]["input_ids"])
    ins = DataInspector(data)
    ins.show_example(0, "train")
    shown = html_lib.unescape(re.sub(r"<[^>]+>", "", ins.example_html.value.replace("↵<br>", "\n")))
    assert answer in shown and "�" not in shown


def test_large_data_renders_one_page(tokenizer, cache_dir):
    rows = [{"text": f"A preamble every row has.\n\nrow {i}"} for i in range(3000)]
    ins = DataInspector(load(rows, tokenizer, cache_dir), page_size=25)
    assert _body_rows(ins.table_html.value) == 25 and "of 120" in ins.page_label.value
    # Which text rows share is learned from a sample of 200 rows, and the note says so.
    assert _cells(ins.table_html.value, 2)[:3] == ["row 0", "row 1", "row 2"]
    assert "text 200 of 200 sampled rows share (&quot;A preamble" in ins.shared_html.value


# --- a session's panels are bound to their own data -----------------------------------------


@pytest.fixture
def session(tmp_path, tiny_model_dir):
    import workbench as wb

    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(tiny_model_dir))
    rows = [
        {"question": f"What is {i} plus {i}, in words?", "answer": f"{i} plus {i} is {2 * i}."}
        for i in range(40)
    ]
    s.load_data(rows, validation=None)
    return s


def _some_cut(data):
    """A cutoff that cuts some answers but leaves every answer a token."""
    longest = data.report().lengths["total"].max
    return next(
        c
        for c in range(longest, 0, -1)
        if data.truncation_at(c)["answers"] > 0 and data.truncation_at(c)["answers_lost"] == 0
    )


def test_an_older_panel_goes_stale_and_refuses(session):
    from workbench.errors import SessionStateError

    old, new = session.inspect_data(), session.inspect_data()
    first = session.data
    assert not old.stale and old.stale_html.layout.display == "none" and old.stale_html.value == ""
    applied = []
    session.on("data_loaded", lambda report: applied.append(report.max_length))

    cutoff = _some_cut(first)
    new.set_cutoff(cutoff)
    new.apply_button.click()  # asks first: answers would be cut
    new.apply_button.click()
    assert applied == [cutoff] and session.data.spec.max_length == cutoff
    assert new.data is session.data and not new.stale
    assert f"max_length: {cutoff} " in new.summary_html.value
    assert new.applied_label.value.count(f"max_length: {cutoff}") == 1

    # The old panel still shows its own data, says it is stale, and will not apply.
    assert old.data is first and old.stale
    assert old.stale_html.layout.display is None
    banner = html_lib.unescape(old.stale_html.value)
    assert (
        "stale: the session's data changed since this panel was made "
        f"(now max_length={cutoff}); run s.inspect_data() again"
    ) in banner
    assert old.apply_state == "stale" and old.apply_button.disabled
    context = first.report().max_length  # the model's context: the first data's cutoff
    assert f"max_length: {context} " in old.summary_html.value
    assert f"this panel's data: max_length: {context}" in html_lib.unescape(old.applied_label.value)
    old.set_cutoff(cutoff - 1)
    old.apply_button.click()
    old.apply_button.click()
    with pytest.raises(SessionStateError, match="stale"):
        old.apply_cutoff()
    # A saved notebook shows the old panel as stale too, not its data as the current one.
    from workbench.widgets._snapshot import snapshot_bundle

    bundle = snapshot_bundle(old)
    note = f"stale: the session's data changed since this panel was made (now max_length={cutoff})"
    assert note in html_lib.unescape(bundle["text/html"]) and note in bundle["text/plain"]
    assert "stale" not in snapshot_bundle(new)["text/plain"]
    assert applied == [cutoff] and session.data.spec.max_length == cutoff

    # New data from load_data makes the newer panel stale too.
    session.load_data([{"question": "q", "answer": "a"}] * 4, validation=None)
    assert new.stale and new.apply_button.disabled
    assert "(now max_length=1024)" in html_lib.unescape(new.stale_html.value)
    assert not session.inspect_data().stale


def test_preview_shows_the_memory_estimate(session):
    from workbench._display import format_bytes

    panel = session.inspect_data()
    panel.set_cutoff(30)
    expected = session.estimate_memory(seq_len=30)
    assert (
        f"memory estimate {format_bytes(expected.total)} per training step "
        f"({expected.batch_size} x 30 tokens)"
    ) in panel.cutoff_label.value
    panel.set_cutoff(20)
    assert format_bytes(session.estimate_memory(seq_len=20).total) in panel.cutoff_label.value


# --- row labels: the text that varies, no template markers ----------------------------------


def _cells(html, column):
    """The text of one column of the table's body rows."""
    rows = re.findall(r"<tr>(.*?)</tr>", html.split("<tbody>", 1)[1])
    return [html_lib.unescape(re.findall(r"<td>(.*?)</td>", r)[column]) for r in rows]


def test_demo_rows_are_labelled_by_the_persons_description(tokenizer, cache_dir):
    from workbench.tasks.records import INSTRUCTION, records_to_json

    train, _ = records_to_json()
    data = load(train, tokenizer, cache_dir)
    ins = DataInspector(data)
    labels = _cells(ins.table_html.value, 2)
    assert len(labels) == 20 and len(set(labels)) == 20  # every row tells itself apart
    inputs = [data.example(i).row["input"] for i in range(20)]
    for label, text in zip(labels, inputs, strict=True):
        assert label == text[: len(label) - 1] + "…" if label.endswith("…") else label == text
        assert "Extract" not in label and "<|im_" not in label and "<s>" not in label
    assert "prompt (what varies)" in ins.table_html.value
    assert INSTRUCTION[:40] not in html_lib.unescape(ins.table_html.value)
    # The list says what it leaves out, and the token view still shows every token.
    note = html_lib.unescape(ins.shared_html.value)
    assert f'text 64 of 64 rows share ("{INSTRUCTION[:40]}' in note
    shown = html_lib.unescape(re.sub(r"<[^>]+>", "", ins.example_html.value))
    assert INSTRUCTION[:40] in shown and "<|im_start|>" in shown and inputs[0] in shown


def test_chat_rows_are_labelled_by_the_varying_user_message(tokenizer, cache_dir):
    system = "You extract <b>facts</b> carefully."  # shared, and markup: shown escaped
    people = ["Ada is 36, from Oslo", "Ben is a baker", "Chloe teaches in Lima", XSS]
    rows = [
        {
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": person},
                {"role": "assistant", "content": f"ok {k}"},
            ]
        }
        for k, person in enumerate(people * 3)
    ]
    ins = DataInspector(load(rows, tokenizer, cache_dir))
    assert ins.data.format == "chat"
    assert _cells(ins.table_html.value, 2)[:4] == people
    assert "You extract" not in ins.table_html.value  # the system prompt is not a user turn
    assert "<img" not in ins.table_html.value and "&lt;img src=x" in ins.table_html.value

    # Rendered chat as raw text: the shared system turn and the markers stay out of the list.
    text_rows = [
        {"text": f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{p}<|im_end|>\n"}
        for p in people * 3
    ]
    ins = DataInspector(load(text_rows, tokenizer, cache_dir))
    labels = _cells(ins.table_html.value, 2)
    assert labels[:4] == people
    assert not any("<|im_" in label or "user" in label for label in labels)
    assert "<b>" not in ins.shared_html.value and "&lt;b&gt;facts" in ins.shared_html.value
    shown = html_lib.unescape(re.sub(r"<[^>]+>", "", ins.example_html.value))
    assert f"<|im_start|>system↵{system}<|im_end|>↵<|im_start|>user↵{people[0]}" in shown


def test_apply_refused_while_a_run_trains_says_so_under_the_button(session):
    # The click's SessionStateError went to ipywidgets' log: nothing changed and nothing said.
    panel = session.inspect_data()
    before = session.data.spec.max_length
    run = session.train(max_steps=5000, wait=False)
    try:
        panel.set_cutoff(_some_cut(session.data))
        panel.apply_button.click()  # asks first
        panel.apply_button.click()
        note = html_lib.unescape(panel.apply_note.value)
        assert "refused while run-001 is running" in note, note
        assert session.data.spec.max_length == before
        assert panel.apply_state == "confirm" and not panel.apply_button.disabled
    finally:
        run.stop()
        run.wait()
    panel.apply_button.click()
    panel.apply_button.click()
    assert session.data.spec.max_length == panel.cutoff and panel.apply_note.value == ""


def test_search_finds_a_word_however_its_accent_or_width_is_written(tokenizer, cache_dir):
    # "Café" found only the rows typed the same way; "FULL" did not find "ＦＵＬＬ"
    rows = [
        {"question": "Cafe\u0301 au lait?", "answer": "ＦＵＬＬ cup"},
        {"question": "Café noir?", "answer": "full"},
        {"question": "tea", "answer": "none"},
    ] * 4
    data = load(rows, tokenizer, cache_dir, validation=None)
    with_cafe = [i for i in range(12) if "tea" not in data.texts("train")[i].as_py()]
    for query in ("Café", "cafe\u0301", "FULL", "ｃａｆé"):
        assert data.search(query).tolist() == with_cafe, query
    panel = DataInspector(data)
    panel.search("ＣＡＦÉ")
    assert panel.matches == 8 and panel.page_label.value == "page 1 of 1 (8 rows)"
