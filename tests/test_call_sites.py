"""The last call sites of three fixes: ``~name`` paths that name no user, the cleanup of a
killed writer's temporaries of a long name, numpy numbers in user-facing checks, and
transformers' ``\\r`` progress bars around the workbench's own saves and loads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import workbench as wb
from workbench._io import temporary_stem
from workbench.deploy.merged_check import check_merged
from workbench.errors import EvaluationError, ModelLoadError, SpecError
from workbench.evaluation import EvalRow
from workbench.evaluation.checkpoints import evaluate_checkpoints
from workbench.evaluation.ratings import BlindRater, Rating, read_ratings
from workbench.models.memory import estimate_memory, fit_table
from workbench.train.launch.spec import LaunchSpec
from workbench.train.store import remove_partial_runs

_HOURS_AGO = 3 * 3600
_BARS = ("Writing model shards", "Loading weights", "\r")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _left_by_a_killed_writer(path: Path) -> Path:
    path.mkdir()
    (path / "model.safetensors").write_bytes(b"half")
    then = path.stat().st_mtime - _HOURS_AGO
    os.utime(path, (then, then))
    return path


@pytest.fixture
def session(tmp_path, tiny_model_dir):
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    yield s
    s.close()


# ~name paths


def test_an_export_to_a_tilde_name_goes_in_the_session_folder(session, tmp_path):
    out = session.export("~exp")  # RuntimeError: Could not determine home directory
    assert out == (tmp_path / "s" / "~exp").resolve() and (out / "config.json").is_file()


def test_a_model_folder_named_with_a_tilde_loads_and_is_estimated(
    tmp_path, tiny_model_dir, monkeypatch
):
    shutil.copytree(tiny_model_dir, tmp_path / "~backup-model")
    monkeypatch.chdir(tmp_path)
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model("~backup-model")  # RuntimeError: Could not determine home directory
    assert s._loaded.source.lasting_spec == str(tmp_path / "~backup-model")
    s.close()
    assert estimate_memory("~backup-model", device="cpu").total > 0


# a killed writer's temporaries of a long name


def test_a_killed_export_of_a_long_name_is_cleared_by_the_next(session, tmp_path):
    name = "x" * 238
    out = session.export(f"export/{name}")
    stem = temporary_stem(name)
    stage = _left_by_a_killed_writer(out.parent / f".{stem}.partial-k1ll3d00")
    aside = _left_by_a_killed_writer(out.parent / f".{stem}.old-k1ll3d00")
    session.export(f"export/{name}", overwrite=True)
    assert sorted(p.name for p in out.parent.iterdir()) == [name], (stage, aside)


def test_a_killed_start_of_a_long_run_name_is_cleared(tmp_path):
    run_dir = tmp_path / ("r" * 240)
    stage = _left_by_a_killed_writer(tmp_path / f".{temporary_stem(run_dir.name)}.partial-k1ll3d00")
    assert remove_partial_runs(run_dir) == [stage] and not stage.exists()


def test_a_killed_start_is_cleared_and_a_sibling_runs_start_is_not(tmp_path):
    # The cleanup of run "a" (.a.partial-*) removed the staging folder of run "a.partial-x"
    # starting in another process.
    sibling = _left_by_a_killed_writer(tmp_path / ".a.partial-x.partial-k1ll3d00")
    ours = _left_by_a_killed_writer(tmp_path / ".a.partial-k1ll3d00")
    assert remove_partial_runs(tmp_path / "a") == [ours]
    assert sorted(p.name for p in tmp_path.iterdir()) == [sibling.name]


def test_a_cache_build_clears_its_killed_build_and_not_a_sibling_entrys(tmp_path, monkeypatch):
    from workbench.models.cache import cached_folder

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    sibling = _left_by_a_killed_writer(tmp_path / ".a.partial-x.partial-k1ll3d00")
    _left_by_a_killed_writer(tmp_path / ".a.partial-k1ll3d00")
    cached_folder("a", lambda tmp: (tmp / "x.txt").write_text("1"), {})
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [sibling.name, "a"]


# numpy numbers


def test_memory_estimates_take_numpy_numbers_and_still_refuse_bools():
    plain = estimate_memory("gemma-3-270m", seq_len=256, batch_size=2, lora_r=8, device="cpu")
    numpy = estimate_memory(
        "gemma-3-270m", seq_len=np.arange(0, 512, 256)[1], batch_size=np.int64(2),
        lora_r=np.int32(8), lora_dropout=np.float32(0.05), processes=np.int64(1),
        logit_tokens=None, device="cpu",
    )  # fmt: skip
    assert numpy == plain
    with pytest.raises(SpecError, match=r"seq_len=True: use a positive integer"):
        estimate_memory("gemma-3-270m", seq_len=True, device="cpu")
    table = fit_table(seq_len=np.int64(256), available=np.int64(16 * 2**30), device="cuda")
    assert table.records[0]["available"] == 16 * 2**30 and type(table.seq_len) is int
    with pytest.raises(SpecError, match=r"available=True: give a positive number of bytes"):
        fit_table(available=True, device="cuda")


def test_a_launch_takes_numpy_counts_and_still_refuses_bools():
    spec = LaunchSpec(processes=np.int64(2), machines=np.int64(1), main_port=np.int64(29511))
    assert (spec.processes, spec.main_port) == (2, 29511) and type(spec.processes) is int
    with pytest.raises(SpecError, match=r"processes=True must be a positive int"):
        LaunchSpec(processes=True)
    with pytest.raises(SpecError, match=r"main_port=True must be a TCP port"):
        LaunchSpec(main_port=True)


def test_checkpoint_steps_from_numpy_are_evaluated(session):
    loaded = session._loaded
    name, param = next(iter(loaded.model.named_parameters()))
    weights = param.detach().clone()
    available = {5: lambda: {name: weights}, 10: lambda: {name: weights}}
    rows = [{"prompt": "Hello", "reference": "x"}]
    for steps in (np.array([5, 10]), list(np.arange(5, 15, 5)), np.int64(10)):
        result = evaluate_checkpoints(
            loaded.model, loaded.tokenizer, rows, available, steps,
            correct=lambda p, r: True, max_new_tokens=2,
        )  # fmt: skip
        assert result.steps == ((5, 10) if np.ndim(steps) else (10,))
    with pytest.raises(SpecError, match=r"np.True_ is not a step number"):
        evaluate_checkpoints(loaded.model, loaded.tokenizer, rows, available, [np.True_])


def test_a_rating_of_a_numpy_row_and_score_is_written(tmp_path):
    path = tmp_path / "ratings.jsonl"
    rater = BlindRater([EvalRow(0, "2+2?", "4", {"base": "5", "tuned": "4"})], path)
    rater.rate("A", score=np.int64(4), row=np.int64(0))  # row=np.int64(0) must be a row index
    (rating,) = read_ratings(path)
    assert (rating.row, rating.score) == (0, 4) and type(rating.score) is int
    with pytest.raises(EvaluationError, match=r"row=True must be a row index"):
        Rating(True, "base", "A")


# transformers' progress bars


def test_building_exporting_and_quantizing_a_model_draws_no_progress_bar(tmp_path):
    done = _python(
        f"""
        import workbench as wb
        from workbench.train.launch.rank import _load_on_cpu

        folder = wb.build_tiny_model({str(tmp_path / "tiny")!r})
        s = wb.Session({str(tmp_path / "s")!r}, verbose=False)
        s.load_model(str(folder))
        s.export("export/merged")
        s.quantize("8bit", probes=["Hi"])
        _load_on_cpu(str(folder), "cpu", {{}})  # each rank of a sharded run
        """
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not [bar for bar in _BARS if bar in done.stderr], done.stderr[-3000:]


def test_a_killed_export_check_says_how_it_ended_not_a_loading_bar(session, monkeypatch):
    from workbench.deploy import merged_check

    out = session.export("export/merged")
    killed = merged_check._CHILD.replace(
        "\nends = model.generation_config", "\nos.kill(os.getpid(), 9)  # as the OOM killer\n"
        "ends = model.generation_config"
    )  # fmt: skip
    monkeypatch.setattr(merged_check, "_CHILD", killed)
    loaded = session._loaded
    with pytest.raises(ModelLoadError) as caught:
        check_merged(out, loaded.model, loaded.tokenizer, raw_prompts=[("q", "Hi")])
    assert str(caught.value).endswith(f"could not load or run {out}: exit status -9")


def test_the_sessions_own_checks_take_numpy_and_tilde_names(tmp_path, tiny_model_dir, monkeypatch):
    # s.report("~r.html") raised RuntimeError, check_export(limit=np.int64(2)) was refused
    # as "must be an integer", and generate's context check skipped an np.int64 length.
    monkeypatch.chdir(tmp_path)
    s = wb.Session("s", verbose=False)
    s.load_model(str(tiny_model_dir))
    assert s.report("~r.html") == tmp_path / "s" / "~r.html"
    context = s.model.config.max_position_embeddings
    with pytest.raises(SpecError, match="past the model's context"):
        s.generate("hello", max_new_tokens=np.int64(context))
    s.export("merged")
    assert s.check_export("merged", limit=np.int64(1), max_new_tokens=np.int64(2)).rows()
