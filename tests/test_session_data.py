"""Session-level data calls: load_data, example, data_report, inspect_data, set_max_length."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import workbench as wb


@pytest.fixture
def session(tmp_path, tiny_model_dir):
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(tiny_model_dir))
    return s


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_load_data_from_a_file_reports_and_records(session, tmp_path):
    rows = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(40)]
    report = session.load_data(str(write_jsonl(tmp_path / "qa.jsonl", rows)), validation=0.25)
    assert report is session.data_report()
    assert (report.train, report.validation) == (30, 10)
    state = json.loads((session.run_dir / "session.json").read_text())
    assert state["data"]["format"] == "qa"
    assert state["data"]["source"].endswith("qa.jsonl")
    example = session.example(0)
    trained = "".join(t.text for t in example.tokens if t.trained)
    assert example.answer in trained
    assert not example.tokens[0].trained


def test_load_data_from_a_workbook_sheet_records_the_sheet(session, tmp_path):
    from openpyxl import Workbook

    book = Workbook()
    book.active.title = "notes"
    data = book.create_sheet("Data")
    data.append(["question", "answer"])
    for i in range(12):
        data.append([f"What is {i} plus {i}?", str(2 * i)])
    book.save(tmp_path / "sums.xlsx")
    report = session.load_data(str(tmp_path / "sums.xlsx"), sheet="Data", validation=0.25)
    assert (report.train, report.validation) == (9, 3)
    state = json.loads((session.run_dir / "session.json").read_text())
    assert state["data"]["source"].endswith("sums.xlsx")
    assert state["data"]["options"] == {"sheet": "Data", "validation": 0.25}


def test_inspector_apply_sets_max_length_on_the_session(session):
    rows = [{"prompt": "word " * (5 + i), "completion": "done"} for i in range(30)]
    session.load_data(rows, validation=0)
    events = []
    session.on("data_loaded", events.append)
    panel = session.inspect_data()
    panel.set_cutoff(12)
    panel.apply_cutoff()
    assert session.data.spec.max_length == 12
    assert max(len(ids) for ids in session.data.train["input_ids"]) <= 12
    assert events and events[-1].train == 30
    assert "max_length: 12" in str(panel)


def test_data_calls_without_data_or_model(tmp_path):
    s = wb.Session(tmp_path, verbose=False)
    with pytest.raises(wb.NoModelError):
        s.load_data([{"text": "x"}])
    with pytest.raises(
        wb.session.NoDataError, match=r"load_model\(\.\.\.\), then session\.load_data"
    ):
        s.data_report()


def test_bad_row_names_file_line_and_field(session, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "a", "answer": "b"}\n{"question": "c", "answer": {"x": 5}}\n')
    with pytest.raises(wb.DataError, match=r"bad.jsonl.*line 2.*answer"):
        session.load_data(str(path))
    assert not list(session.run_dir.glob("data-cache/**/*.arrow.tmp*"))


def test_a_tokenizer_larger_than_the_model_is_refused_at_load_data(tmp_path, tiny_model_dir):
    """Ids past the embedding's rows failed later, in torch.embedding, with IndexError."""
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(shutil.copytree(tiny_model_dir, tmp_path / "small-vocabulary"))
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.resize_token_embeddings(300)  # the tokenizer keeps its 512 tokens
    model.save_pretrained(folder)
    assert len(AutoTokenizer.from_pretrained(folder)) > 300
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(folder))
    rows = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(8)]
    with pytest.raises(
        wb.DataError, match=r"train row \d+ \(source row \d+\): token id \d+ .* 300 rows"
    ):
        s.load_data(rows, validation=None)
    with pytest.raises(wb.NoDataError):
        _ = s.data  # nothing half-loaded


def test_a_session_opened_again_says_which_data_its_folder_loaded(session, tmp_path):
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(12)]
    path = write_jsonl(tmp_path / "tickets.jsonl", rows)
    session.load_data(str(path), template="chatml")
    again = wb.Session(session.run_dir, verbose=False)  # a new kernel, the same folder
    said = rf"last loaded {path}: s\.load_data\('{path}', template='chatml'\) loads it again"
    with pytest.raises(wb.NoDataError, match=said):
        _ = again.data
    with pytest.raises(wb.NoDataError, match=said):
        again.data_report()
    session.load_data(rows)
    with pytest.raises(
        wb.NoDataError, match=r"s\.load_data\(rows\) with the rows <list of 12 rows> given then"
    ):
        _ = wb.Session(session.run_dir, verbose=False).data
    # with no model either, the model comes first: load_data needs its tokenizer
    with pytest.raises(wb.NoDataError) as refused:
        again.train(max_steps=1)
    assert str(refused.value).startswith(
        "no model is loaded: call session.load_model(...) first; then: no data is loaded in "
        "this session object;"
    )


def test_the_call_that_loads_the_data_again_keeps_the_options_it_was_given(
    session, tmp_path, tiny_model_dir
):
    # Found by QA: the call named after a restart dropped columns, validation and on_error
    # ("with the validation split and other options it was given then") and failed to run.
    path = tmp_path / "german.csv"
    lines = ["Frage,Antwort"] + [f"Was ist {i} plus {i}?,{2 * i}" for i in range(11)] + ["x"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    options = dict(columns={"prompt": "Frage", "answer": "Antwort"}, validation=0.25)
    first = session.load_data(path, on_error="skip", **options)
    s = wb.Session(session.run_dir, verbose=False)
    s.load_model(str(tiny_model_dir))
    with pytest.raises(wb.NoDataError) as refused:
        _ = s.data
    call = str(refused.value).split(": ", 1)[1].removesuffix(" loads it again.")
    assert call == (
        f"s.load_data({str(path)!r}, on_error='skip', columns={{'prompt': 'Frage', 'answer': "
        "'Antwort'}, validation=0.25)"
    )
    again = eval(call, {"s": s})  # the call as the message writes it
    assert (again.train, again.validation, again.skipped) == (first.train, first.validation, 1)
    assert s.data.train["input_ids"] == session.data.train["input_ids"]

    # what only the notebook holds is named, not written
    validation = [{"Frage": "q", "Antwort": "a"}] * 3
    session.load_data(path, columns=options["columns"], on_error="skip", validation=validation)
    with pytest.raises(wb.NoDataError) as refused:
        _ = wb.Session(session.run_dir, verbose=False).data
    assert str(refused.value).endswith(
        "on_error='skip', validation=...) with the validation <list of 3 rows> given then "
        "loads it again."
    )


def test_train_or_evaluate_before_anything_is_loaded_names_the_model_first(tmp_path):
    # It said "call session.load_data(...) first", which then said to load a model.
    s = wb.Session(tmp_path / "fresh", verbose=False)
    for call in (lambda: s.train(max_steps=1), lambda: s.evaluate()):
        with pytest.raises(wb.NoDataError) as refused:
            call()
        assert str(refused.value) == (
            "no model or data is loaded: call session.load_model(...), then session.load_data(...)."
        )


def test_a_list_of_texts_or_a_dict_of_columns_is_told_what_a_row_looks_like(session):
    # A list of strings said only "list: no readable rows"; a dict of lists named no way out.
    with pytest.raises(wb.DataError) as refused:
        session.load_data(["What is 2 plus 2?", "Name a colour."])
    assert str(refused.value) == (
        "list, row 1: expected a dict such as {'question': ..., 'answer': ...} ({'text': ...} "
        "for raw text), got the text 'What is 2 plus 2?'"
    )
    with pytest.raises(wb.DataError, match=r"a dict of columns: pandas\.DataFrame\(columns\)"):
        session.load_data({"question": ["q"], "answer": ["a"]})
