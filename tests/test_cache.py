"""The model cache: complete or absent, verified on every load, rebuilt when damaged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from workbench.models.cache import MANIFEST, cached_folder, verify_entry
from workbench.models.loading import resolve_source


def write_files(tmp: Path) -> None:
    (tmp / "model.safetensors").write_bytes(os.urandom(4096))
    (tmp / "config.json").write_text("{}")


def test_entry_is_built_once_and_verified(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    builds = []
    folder = cached_folder("m", lambda tmp: (builds.append(1), write_files(tmp)), {"a": 1})
    again = cached_folder("m", lambda tmp: (builds.append(1), write_files(tmp)), {"a": 1})
    assert folder == again == tmp_path / "m"
    assert builds == [1]
    assert verify_entry(folder) is None
    assert (folder / MANIFEST).is_file()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda f: (f / "model.safetensors").write_bytes(b"short"), "has 5 bytes"),
        (lambda f: (f / MANIFEST).unlink(), "no manifest"),
        (lambda f: (f / "config.json").unlink(), "config.json is missing"),
        (lambda f: (f / MANIFEST).write_text("{not json"), "unreadable manifest"),
    ],
)
def test_damaged_entry_is_rebuilt_not_loaded(tmp_path, monkeypatch, damage, reason):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    folder = cached_folder("m", write_files, {})
    damage(folder)
    assert reason in verify_entry(folder)
    messages = []
    rebuilt = cached_folder("m", write_files, {}, messages.append)
    assert verify_entry(rebuilt) is None
    assert "rebuilding" in messages[0] and reason in messages[0]


def test_flipped_byte_is_detected(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    folder = cached_folder("m", write_files, {})
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[100] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(data))
    assert verify_entry(folder) == "model.safetensors does not match its SHA-256"


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))

    def broken(tmp: Path) -> None:
        write_files(tmp)
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        cached_folder("m", broken, {})
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_process_killed_mid_build_leaves_no_entry(tmp_path):
    script = textwrap.dedent(
        f"""
        import os, time
        os.environ["WORKBENCH_CACHE"] = {str(tmp_path)!r}
        from workbench.models.cache import cached_folder
        def slow(tmp):
            (tmp / "model.safetensors").write_bytes(b"x" * 1000)
            print("writing", flush=True)
            time.sleep(60)
        cached_folder("m", slow, {{}})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "m").exists()  # only a hidden partial folder remains
    assert len(list(tmp_path.glob(".m.partial-*"))) == 1
    env_before = os.environ.get("WORKBENCH_CACHE")
    os.environ["WORKBENCH_CACHE"] = str(tmp_path)
    try:
        folder = cached_folder("m", write_files, {})
    finally:
        if env_before is None:
            del os.environ["WORKBENCH_CACHE"]
        else:
            os.environ["WORKBENCH_CACHE"] = env_before
    assert verify_entry(folder) is None
    assert (folder / "model.safetensors").stat().st_size == 4096
    assert list(tmp_path.glob(".m.partial-*")) == []  # the killed build's files are gone


@pytest.mark.slow
def test_builtin_gemma_is_converted_cached_and_reused(gemma_folder):
    assert verify_entry(gemma_folder) is None
    names = {p.name for p in gemma_folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", MANIFEST} <= names
    written = (gemma_folder / MANIFEST).stat().st_mtime_ns
    messages: list[str] = []
    again = resolve_source("gemma-3-270m", on_event=messages.append)
    assert Path(again.location) == gemma_folder
    # Verified and reused: not converted again (the manifest is written last by a build).
    assert (gemma_folder / MANIFEST).stat().st_mtime_ns == written
    assert not any("convert" in m for m in messages), messages


@pytest.fixture
def tiny_gguf(tmp_path, tiny_model_dir) -> Path:
    """The tiny model written as a GGUF file by the workbench's exporter."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workbench.deploy.gguf_writer import write_gguf

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return write_gguf(model, tokenizer, tmp_path / "tiny.gguf")


def test_corrupted_gguf_conversion_is_rebuilt(tiny_gguf, tmp_path, monkeypatch):
    # The same cache and converter as the built-in Gemma (a GGUF converted to safetensors),
    # on a GGUF small enough to convert twice in a test.
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    first = Path(resolve_source(str(tiny_gguf), on_event=lambda m: None).location)
    weights = (first / "model.safetensors").read_bytes()
    with open(first / "model.safetensors", "r+b") as handle:
        handle.seek(len(weights) // 2)
        handle.write(b"\x00corrupted\x00")
    messages: list[str] = []
    source = resolve_source(str(tiny_gguf), on_event=messages.append)
    assert Path(source.location) == first
    assert any("does not match its SHA-256" in m and "rebuilding" in m for m in messages)
    assert verify_entry(first) is None
    assert (first / "model.safetensors").read_bytes() == weights  # converted afresh, the same


def test_gguf_protected_after_its_cache_was_prepared_loads_from_it(
    tiny_gguf, tmp_path, monkeypatch
):
    # A workshop: the teacher converts the course file into a shared cache, then protects the
    # file (chmod/chown move its change time, not a byte). The students' loads must find the
    # prepared conversion, not convert again (which a read-only cache refuses).
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    first = Path(resolve_source(str(tiny_gguf), on_event=lambda m: None).location)
    written = (first / MANIFEST).stat().st_mtime_ns
    before = tiny_gguf.stat().st_ctime_ns
    time.sleep(0.01)
    tiny_gguf.chmod(0o444)
    assert tiny_gguf.stat().st_ctime_ns != before
    messages: list[str] = []
    again = Path(resolve_source(str(tiny_gguf), on_event=messages.append).location)
    assert again == first
    assert (first / MANIFEST).stat().st_mtime_ns == written  # nothing rebuilt or rewritten
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if p.name[0] != ".") == [
        first.name
    ]
    assert any(f"has the bytes {first.name} was converted from" in m for m in messages)
    assert len(messages) == 2, messages  # looked, found: no conversion step was reported


def test_gguf_edited_in_place_is_converted_again(tiny_gguf, tmp_path, monkeypatch):
    # An edit that keeps the file's size and mtime (as `cp -p`, `rsync -t` or `touch -r`
    # leave it) must not be served the conversion of the earlier file.
    from safetensors.torch import load_file

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    first = Path(resolve_source(str(tiny_gguf), on_event=lambda m: None).location)
    old_weights = load_file(first / "model.safetensors")
    before = tiny_gguf.stat()
    data = bytearray(tiny_gguf.read_bytes())
    data[-8:] = bytes(b ^ 0x10 for b in data[-8:])  # the last tensor's last values
    tiny_gguf.write_bytes(bytes(data))
    os.utime(tiny_gguf, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (tiny_gguf.stat().st_size, tiny_gguf.stat().st_mtime_ns) == (
        before.st_size,
        before.st_mtime_ns,
    )
    messages: list[str] = []
    second = Path(resolve_source(str(tiny_gguf), on_event=messages.append).location)
    assert second != first
    assert verify_entry(second) is None
    new_weights = load_file(second / "model.safetensors")
    changed = [k for k in old_weights if not old_weights[k].equal(new_weights[k])]
    assert len(changed) == 1, changed  # the edited tensor, converted afresh
    assert not first.exists()  # the earlier file's conversion is not left on disk
    assert any(f"removed {first.name}" in m for m in messages), messages
