"""A failed export changes nothing: the session keeps its adapter, the target keeps its files.

And a successful one changes nothing either: the adapter is merged into a copy. Full and
read-only disks are real (a tmpfs from the ``small_disk`` fixture), and bad serve ports are
refused at once.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from deploy_fixtures import make_adapter

import workbench as wb
from workbench.deploy import is_adapted

PROBES = ["The quick brown fox", "Question: What is", "Hello there"]
ARCHITECTURES = ["llama", "gpt2"]


@pytest.fixture(params=ARCHITECTURES)
def model_dir(request, tiny_model_dir, tiny_gpt2_dir):
    return {"llama": tiny_model_dir, "gpt2": tiny_gpt2_dir}[request.param]


def adapted_session(tmp_path, model_dir, quantization=None):
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(model_dir), quantization=quantization)
    s.load_adapter(make_adapter(model_dir, tmp_path / "adapter"))
    return s


def weights(session):
    return {k: v.detach().clone() for k, v in session.model.state_dict().items()}


def logits(session):
    batch = session.tokenizer(PROBES, return_tensors="pt", padding=True)
    with torch.no_grad():
        return session.model(**batch).logits


def assert_unchanged(session, before_weights, before_text):
    """The session still carries its adapter, with the same weights and the same outputs."""
    assert is_adapted(session.model)
    after = weights(session)
    assert after.keys() == before_weights.keys()
    assert all(torch.equal(after[k], v) for k, v in before_weights.items())
    assert session.generate(PROBES, max_new_tokens=8) == before_text


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --- item 1: a failed export destroys nothing --------------------------------------------


@pytest.mark.parametrize("export_format", ["safetensors", "gguf"])
def test_export_to_a_non_empty_folder_keeps_the_adapter(tmp_path, model_dir, export_format):
    s = adapted_session(tmp_path, model_dir)
    before_weights, before_text = weights(s), s.generate(PROBES, max_new_tokens=8)
    taken = tmp_path / "run" / "export" / "taken"
    taken.mkdir(parents=True)
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(wb.SpecError, match="not empty; pass overwrite=True"):
        s.export("export/taken", format=export_format)
    assert_unchanged(s, before_weights, before_text)
    assert files_under(taken) == ["keep.txt"] and (taken / "keep.txt").read_text() == "mine"
    # What the old code lost: the adapter can still be exported, and evaluated against base.
    folder = s.export("export/adapter", format="adapter")
    assert (folder / "adapter_model.safetensors").is_file()


def test_successful_export_merges_into_a_copy(tmp_path, model_dir):
    from transformers import AutoModelForCausalLM

    s = adapted_session(tmp_path, model_dir)
    before_weights, before_text = weights(s), s.generate(PROBES, max_new_tokens=8)
    before_logits = logits(s)
    folder = s.export("export/merged")
    assert_unchanged(s, before_weights, before_text)
    assert torch.equal(logits(s), before_logits)
    merged = AutoModelForCausalLM.from_pretrained(folder)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    batch = s.tokenizer(PROBES, return_tensors="pt", padding=True)
    with torch.no_grad():
        exported = merged(**batch).logits
    assert torch.allclose(exported, before_logits, atol=1e-4)
    # The adapter is still there to export after the merged export.
    assert (s.export("export/adapter", format="adapter") / "adapter_config.json").is_file()


def test_export_after_training_keeps_the_trained_adapter_and_the_base_column(tmp_path):
    model_dir = wb.build_tiny_model(tmp_path / "tiny", "llama")
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(model_dir))
    rows = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(20)]
    s.load_data(rows, validation=0.3)
    s.train(max_steps=2, lr=5e-3, batch_size=4, wait=True)
    before_weights, before_text = weights(s), s.generate(PROBES, max_new_tokens=8)
    (tmp_path / "run" / "export" / "merged").mkdir(parents=True)
    (tmp_path / "run" / "export" / "merged" / "x").write_text("x")
    with pytest.raises(wb.SpecError, match="not empty"):
        s.export("export/merged")
    s.export("export/merged2")
    assert_unchanged(s, before_weights, before_text)
    evaluation = s.evaluate(metrics=["exact_match"], limit=2, max_new_tokens=4)
    assert set(evaluation.scores["exact_match"]) >= {"base", "tuned"}


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_export_of_a_quantized_base_leaves_the_live_model_quantized_and_adapted(
    tmp_path, model_dir, quantization
):
    # state_dict() itself repacks bitsandbytes' CPU 4-bit layers, so compare outputs only.
    s = adapted_session(tmp_path, model_dir, quantization)
    before = logits(s)
    folder = s.export("export/merged")
    assert is_adapted(s.model)
    assert any(type(m).__module__.startswith("bitsandbytes") for m in s.model.modules())
    assert torch.equal(logits(s), before)
    reloaded = wb.Session(tmp_path / "re", verbose=False)
    assert reloaded.load_model(str(folder)).quantization is None
    after = logits(reloaded)
    assert (after - before).abs().max().item() < 0.05 * before.abs().max().item()


def test_export_of_a_quantized_model_without_adapter_does_not_dequantize_it(tmp_path, model_dir):
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(model_dir), quantization="4bit")
    before = logits(s)
    s.export("export/plain")
    assert any(type(m).__module__.startswith("bitsandbytes") for m in s.model.modules())
    assert s.model_info().quantization == "4bit"
    assert torch.equal(logits(s), before)


# --- item 8 (d, e): full and read-only disks ----------------------------------------------


@pytest.mark.parametrize("export_format", ["safetensors", "adapter"])
def test_full_disk_is_refused_before_writing(tmp_path, model_dir, small_disk, export_format):
    s = adapted_session(tmp_path, model_dir)
    before_weights, before_text = weights(s), s.generate(PROBES, max_new_tokens=8)
    disk = small_disk(64)  # smaller than the tiny model, larger than nothing
    target = disk / "out"
    with pytest.raises(wb.WriteError) as caught:
        s.export(target, format=export_format)
    message = str(caught.value)
    assert f"no space left on device at {disk} for the {export_format} export" in message
    assert re.search(r"\d+\.\d MB needed, \d+\.\d MB free", message)
    assert files_under(disk) == []
    assert_unchanged(s, before_weights, before_text)


@pytest.mark.parametrize("export_format", ["safetensors", "gguf"])
def test_disk_filling_during_the_write_is_a_clear_error_and_leaves_nothing(
    tmp_path, tiny_model_dir, small_disk, monkeypatch, export_format
):
    # The estimate is made too small on purpose, so the write itself meets the full disk.
    from workbench.deploy import export

    s = adapted_session(tmp_path, tiny_model_dir)
    before_weights, before_text = weights(s), s.generate(PROBES, max_new_tokens=8)
    monkeypatch.setattr(export, "export_bytes", lambda model, fmt: 1000)
    disk = small_disk(200)
    target = disk / "out"
    expected = rf"no space left on device at {re.escape(str(target))} \(\d+\.\d MB needed\)"
    with pytest.raises(wb.WriteError, match=expected):
        s.export(target, format=export_format)
    assert files_under(disk) == []
    assert_unchanged(s, before_weights, before_text)


def test_disk_filling_while_llama_cpp_quantizes_is_a_clear_error_and_leaves_nothing(
    tmp_path, tiny_model_dir, small_disk, monkeypatch
):
    # Room for the F16 file staged for llama.cpp (about 260 kB), not for its Q4_K_M file too.
    pytest.importorskip("llama_cpp")
    from workbench.deploy import export

    s = adapted_session(tmp_path, tiny_model_dir)
    monkeypatch.setattr(export, "export_bytes", lambda model, fmt, **sized: 1000)
    disk = small_disk(300)
    target = disk / "out"
    expected = rf"no space left on device at {re.escape(str(target))} \(\d+\.\d MB needed\)"
    with pytest.raises(wb.WriteError, match=expected):
        s.export(target, format="gguf", gguf_type="q4_k_m")
    assert files_under(disk) == []


@pytest.mark.parametrize("overwrite", [False, True])
def test_read_only_target_is_a_clear_error(tmp_path, model_dir, small_disk, overwrite):
    s = adapted_session(tmp_path, model_dir)
    before_weights, before_text = weights(s), s.generate(PROBES, max_new_tokens=8)
    disk = small_disk(4096)
    if overwrite:
        (disk / "out").mkdir()
        (disk / "out" / "old.txt").write_text("old")
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    with pytest.raises(wb.WriteError, match=rf"{re.escape(str(disk))} is not writable .*read-only"):
        s.export(disk / "out", overwrite=overwrite)
    assert files_under(disk) == (["out", "out/old.txt"] if overwrite else [])
    assert_unchanged(s, before_weights, before_text)


def test_size_estimate_covers_what_is_written(tmp_path, model_dir):
    from workbench.deploy.export import export_bytes

    s = adapted_session(tmp_path, model_dir)
    for export_format in ("safetensors", "adapter"):
        folder = s.export(f"export/{export_format}", format=export_format)
        written = sum(p.stat().st_size for p in folder.iterdir())
        estimate = export_bytes(s.model, export_format)
        assert written <= estimate <= 2 * written + 256 * 1024, export_format


WRITER = """
import sys, time
from pathlib import Path
from workbench.deploy.paths import staged_write
with staged_write(Path(sys.argv[1])) as tmp:
    (tmp / "model.safetensors").write_bytes(b"x" * 100_000)
    print("writing", flush=True)
    time.sleep(600)
"""


def start_writer(target):
    """A process exporting to ``target``, stopped while its files are staged."""
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout.readline() == "writing\n"
    return writer


def test_a_killed_export_leaves_nothing_once_the_next_export_runs(tmp_path, tiny_model_dir):
    s = adapted_session(tmp_path, tiny_model_dir)
    target = tmp_path / "run" / "export" / "merged"

    def staged():
        return sorted(target.parent.glob(".merged.partial-*"))

    killed = start_writer(target)
    killed.kill()  # SIGKILL: no clean-up of its own ran
    killed.wait()
    assert len(staged()) == 1
    folder = s.export("export/merged")
    assert staged() == []
    assert ".workbench.lock" not in {p.name for p in folder.iterdir()}
    live = start_writer(target)  # another notebook exporting to the same place right now
    try:
        s.export("export/merged")
        assert len(staged()) == 1 and (staged()[0] / "model.safetensors").is_file()
        assert (folder / "model.safetensors").stat().st_size > 100_000  # ours, not theirs
    finally:
        live.kill()
        live.wait()
    s.export("export/merged")  # its writer is gone too: now it is removed
    assert sorted(p.name for p in target.parent.iterdir()) == ["merged"]


def test_an_export_killed_while_swapping_folders_gets_the_previous_one_back(tmp_path):
    from workbench.deploy.paths import remove_abandoned_stages

    # A kill between "move the old export aside" and "move the new one in" leaves the old
    # one aside and the new one staged, its writer dead (no lock holder).
    target = tmp_path / "export" / "merged"
    aside = target.with_name(".merged.old-abc12345")
    aside.mkdir(parents=True)
    (aside / "model.safetensors").write_text("previous")
    stage = target.with_name(".merged.partial-abc12345")
    stage.mkdir()
    (stage / "model.safetensors").write_text("new, never swapped in")
    (stage / ".workbench.lock").write_text("")
    assert remove_abandoned_stages(target) == [stage]
    assert (target / "model.safetensors").read_text() == "previous"
    assert sorted(p.name for p in target.parent.iterdir()) == ["merged"]
    # A kill after the swap, before the old one was deleted: the old one goes.
    aside.mkdir()
    assert remove_abandoned_stages(target) == [aside]
    assert sorted(p.name for p in target.parent.iterdir()) == ["merged"]


def test_an_export_killed_as_it_replaces_the_previous_one_leaves_the_previous_in_place(
    tmp_path, tiny_model_dir
):
    # The previous export was moved aside before the new one was renamed in: a kill in
    # between left nothing at export/merged ("path ... does not exist" to load_model), and
    # the staged copy, its lock already gone, counted as live for an hour. Now the two are
    # exchanged in one step: export/merged is the previous export or the new one, never none.
    target = tmp_path / "s" / "export" / "merged"
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.export("export/merged")
    previous = {p.name: p.read_bytes() for p in target.iterdir()}
    child = (
        "import os, signal, workbench as wb, workbench._io as io\n"
        f"s = wb.Session({str(tmp_path / 's')!r}, verbose=False)\n"
        f"s.load_model({str(tiny_model_dir)!r})\n"
        "io._as_created = lambda folder: os.kill(os.getpid(), signal.SIGKILL)  # the kill\n"
        "s.export('export/merged', overwrite=True)\n"  # this process, alive, wrote it
    )
    killed = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in target.iterdir()} == previous
    from workbench.models.loading import load_model

    assert load_model(str(target), on_event=len).model is not None


# --- quantize and serve check before they export -----------------------------------------


def test_quantize_into_a_non_empty_target_refuses_before_exporting(tmp_path, tiny_model_dir):
    s = adapted_session(tmp_path, tiny_model_dir)
    taken = tmp_path / "run" / "export" / "quantized-4bit"
    taken.mkdir(parents=True)
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(wb.SpecError, match="not empty; pass overwrite=True"):
        s.quantize("4bit")
    assert not (tmp_path / "run" / "export" / "merged").exists()
    assert is_adapted(s.model)


def test_quantize_exports_without_merging_the_session(tmp_path, tiny_model_dir):
    s = adapted_session(tmp_path, tiny_model_dir)
    before_weights, before_text = weights(s), s.generate(PROBES, max_new_tokens=8)
    report = s.quantize("8bit", probes=PROBES[:1])
    assert report.folder.is_dir()
    assert_unchanged(s, before_weights, before_text)


def test_a_quantized_model_that_fails_its_measurement_leaves_no_folder(tmp_path, tiny_model_dir):
    # The quantized model was placed first and measured after: a score that fails (or a
    # family whose code fails on quantized weights) left a complete-looking export behind.
    from workbench.deploy import quantize_export

    def failing_score(model, tokenizer):  # scores the float model, fails on the 4-bit one
        if getattr(model, "is_loaded_in_4bit", False):
            raise RuntimeError("the scorer failed")
        return {"score": 1.0}

    target = tmp_path / "quantized"
    with pytest.raises(RuntimeError, match="the scorer failed"):
        quantize_export(tiny_model_dir, target, "4bit", ["Hello"], score=failing_score)
    assert not target.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("port", [-1, 0, 70000, "8000", True, 3.5, None])
def test_bad_serve_port_is_refused_at_once(tmp_path, tiny_model_dir, port):
    s = adapted_session(tmp_path, tiny_model_dir)
    with pytest.raises(wb.SpecError, match=rf"port={port!r}.*1 to 65535"):
        s.serve(port=port)
    assert not (tmp_path / "run" / "export").exists()  # refused before exporting
    assert is_adapted(s.model)


@pytest.mark.parametrize("port", [-1, 0, 65536, "8000", True, 3.5])
def test_serve_model_checks_the_port_itself(tmp_path, port):
    from workbench.deploy import serve_model

    with pytest.raises(wb.SpecError, match=r"1 to 65535"):
        serve_model(tmp_path, port)


def test_serving_an_adapter_or_gguf_export_says_what_to_serve(tmp_path, tiny_model_dir):
    # both used to be told "not a model folder (no config.json): export the model first"
    s = adapted_session(tmp_path, tiny_model_dir)
    adapter = s.export("export/adapter", format="adapter")
    with pytest.raises(wb.SpecError, match=r"is an adapter export: the server takes a merged"):
        s.serve(port=18999, path="export/adapter")  # relative to the session folder
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(wb.SpecError, match=r"holds a GGUF file: .* llama-server"):
        s.serve(port=18999, path=tmp_path / "g")
    assert adapter.is_dir()


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"limit": 0}, "limit=0 must be an integer of 1 or more"),
        ({"limit": -1}, "limit=-1 must be"),
        ({"max_new_tokens": 0}, "max_new_tokens=0 must be"),
        ({"max_new_tokens": 2.5}, "max_new_tokens=2.5 must be"),
    ],
)
def test_check_export_refuses_bad_settings_before_starting_anything(
    tmp_path, tiny_model_dir, settings, says
):
    # limit=0 checked two default messages; max_new_tokens=0 blamed the export after ~4 s
    s = adapted_session(tmp_path, tiny_model_dir)
    with pytest.raises(wb.SpecError, match=says):
        s.check_export("export/nothing-yet", **settings)


def test_an_export_cleanup_leaves_a_users_hidden_folders_and_a_siblings_stage(tmp_path):
    import os

    from workbench.deploy.paths import remove_abandoned_stages

    # .model.old-backup (the user's) was deleted beside an existing model, and renamed
    # into model where there was none; run for "a", the stage of export "a.partial-x" went.
    def folder(name: str):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_text(name)
        then = (tmp_path / name).stat().st_mtime - 3 * 3600
        os.utime(tmp_path / name, (then, then))
        return tmp_path / name

    backup, sibling = folder(".model.old-backup"), folder(".a.partial-x.partial-k1ll3d00")
    assert remove_abandoned_stages(tmp_path / "model") == []  # no model: not put back
    assert remove_abandoned_stages(tmp_path / "a") == []
    folder("model")
    killed = [folder(".model.partial-k1ll3d00"), folder(".model.old-k1ll3d00")]
    assert remove_abandoned_stages(tmp_path / "model") == killed
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [backup.name, sibling.name, "model"]
    )
    assert (backup / "model.safetensors").read_text() == ".model.old-backup"
