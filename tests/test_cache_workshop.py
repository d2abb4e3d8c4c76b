"""The model cache in a workshop: a full cache disk, a killed conversion, a second kernel
waiting for the first one's conversion, and a prepared cache made read-only.

Everything is real: a tiny model written as GGUF and converted through the same cache code as
the built-in Gemma, a tmpfs that really fills up, a process really killed, a real read-only
bind mount (the last two need root, as ``small_disk`` does; skipped elsewhere).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import astuple
from pathlib import Path

import pytest

from workbench._io import sha256_file
from workbench.errors import CacheError
from workbench.models.builtin import BUILTIN_MODELS, BuiltinModel
from workbench.models.cache import MANIFEST, cached_folder, verify_entry
from workbench.models.loading import resolve_source


@pytest.fixture
def tiny_gguf(tmp_path, tiny_model_dir) -> Path:
    """The tiny model written as a GGUF file (about 430 KB) by the workbench's exporter."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workbench.deploy.gguf_writer import write_gguf

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return write_gguf(model, tokenizer, tmp_path / "tiny.gguf")


def _not_locks(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


# --- 1. a cache disk that fills up during a conversion -------------------------------------


def test_a_full_cache_disk_is_a_cache_error_naming_the_cache(tiny_gguf, small_disk, monkeypatch):
    cache = small_disk(200)  # room for the lock and the small files, not the 430 KB weights
    monkeypatch.setenv("WORKBENCH_CACHE", str(cache))
    with pytest.raises(CacheError) as caught:
        resolve_source(str(tiny_gguf), on_event=lambda m: None)
    said = str(caught.value)
    assert f"model cache {cache} is full" in said, said
    assert "Free some space" in said and "WORKBENCH_CACHE" in said, said
    assert "os error" not in said and "SafetensorError" not in said, said
    assert caught.value.errno == 28  # still an OSError a caller can test for ENOSPC
    assert _not_locks(cache) == []  # no entry, no half-written staging folder
    # nothing was left for a later load to trust: it tries again and says the same
    with pytest.raises(CacheError, match="is full"):
        resolve_source(str(tiny_gguf), on_event=lambda m: None)
    assert _not_locks(cache) == []


# --- 2. a killed conversion of a built-in model ----------------------------------------------

FAKE_PACKAGE = '''
"""Stands for a built-in model's package: assemble() copies a GGUF, then may hang."""
import os, shutil, sys, time

def assemble(target, overwrite=False):
    shutil.copyfile(os.environ["FAKE_GGUF"], target)
    if os.environ.get("FAKE_HANG"):
        print("assembled", target, flush=True)
        time.sleep(600)
'''


@pytest.fixture
def fake_builtin(tmp_path, tiny_gguf, monkeypatch):
    """A built-in model "tiny-builtin" whose package assembles the tiny GGUF."""
    packages = tmp_path / "packages"
    packages.mkdir()
    (packages / "fake_builtin_gguf.py").write_text(FAKE_PACKAGE)
    monkeypatch.syspath_prepend(str(packages))
    monkeypatch.setenv("PYTHONPATH", str(packages))
    monkeypatch.setenv("FAKE_GGUF", str(tiny_gguf))
    model = BuiltinModel(
        "tiny-builtin", "fake_builtin_gguf", "fake-builtin", sha256_file(tiny_gguf), "tiny", ""
    )
    monkeypatch.setitem(BUILTIN_MODELS, "tiny-builtin", model)
    return model


def test_a_killed_builtin_conversion_leaves_no_scratch_gguf(fake_builtin, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("WORKBENCH_CACHE", str(cache))
    script = textwrap.dedent(
        f"""
        from workbench.models.builtin import BUILTIN_MODELS, BuiltinModel
        from workbench.models.loading import resolve_source
        BUILTIN_MODELS["tiny-builtin"] = BuiltinModel(*{astuple(fake_builtin)!r})
        resolve_source("tiny-builtin", on_event=lambda m: None)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, FAKE_HANG="1"),
    )
    try:
        line = proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGKILL)  # a kernel restart mid-conversion
        proc.wait()
    assert line.startswith("assembled"), line
    scratch = Path(line.split()[1]).parent
    assert scratch.is_dir()  # the killed build's scratch GGUF is still on disk...
    # ...and so is one an earlier version left in the cache root
    old_style = cache / ".gguf-k1ll3d00"
    old_style.mkdir()
    shutil.copyfile(os.environ["FAKE_GGUF"], old_style / "tiny-builtin.gguf")

    folder = Path(resolve_source("tiny-builtin", on_event=lambda m: None).location)
    assert verify_entry(folder) is None
    assert not scratch.exists() and not old_style.exists()
    assert [str(p) for p in cache.rglob("*.gguf")] == []  # no scratch GGUF anywhere
    assert _not_locks(cache) == [folder.name]  # no staging folder either
    assert not any(p.name.startswith(".gguf-") for p in folder.iterdir())


# --- 3. a second process waits for another's conversion -------------------------------------

HOLDER = """
import os, sys, time
from pathlib import Path
os.environ["WORKBENCH_CACHE"] = sys.argv[1]
from workbench.models.cache import cached_folder

def slow(tmp):
    (tmp / "x.txt").write_text("built by the other process")
    print("building", flush=True)
    while not Path(sys.argv[2]).exists():
        time.sleep(0.05)

cached_folder("demo-entry", slow, {})
"""


def test_waiting_for_another_process_building_the_entry_is_said_once(tmp_path, monkeypatch):
    cache, release = tmp_path / "cache", tmp_path / "release"
    monkeypatch.setenv("WORKBENCH_CACHE", str(cache))
    other = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(cache), str(release)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout.readline().strip() == "building"
        messages: list[str] = []
        built_here: list[int] = []
        result: list[Path] = []
        waiter = threading.Thread(
            target=lambda: result.append(
                cached_folder(
                    "demo-entry", lambda tmp: built_here.append(1), {}, on_event=messages.append
                )
            )
        )
        waiter.start()
        for _ in range(600):  # until the waiter has said it waits (a poll, not a time check)
            if messages:
                break
            time.sleep(0.05)
        assert waiter.is_alive() and result == []  # it waits, as before
        release.touch()
        waiter.join(60)
        assert other.wait(60) == 0
    finally:
        release.touch()
        other.kill()
    assert len(messages) == 1, messages
    assert "waiting for another process" in messages[0]
    assert "demo-entry" in messages[0] and str(cache / ".demo-entry.lock") in messages[0]
    assert built_here == [] and (result[0] / "x.txt").read_text() == "built by the other process"


# --- 4. a prepared cache on a read-only mount --------------------------------------------------


@pytest.fixture
def read_only_view(tmp_path):
    """``read_only_view(folder)``: a read-only bind mount of ``folder`` (root only)."""
    mounts: list[Path] = []

    def make(folder: Path) -> Path:
        point = tmp_path / f"ro-{len(mounts)}"
        point.mkdir()
        done = subprocess.run(["mount", "--bind", str(folder), str(point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot bind-mount here: {done.stderr.decode().strip()}")
        mounts.append(point)
        done = subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(point)], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot make a bind mount read-only here: {done.stderr.strip()}")
        return point

    yield make
    for point in reversed(mounts):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_info_calls_a_prepared_read_only_cache_read_only(tiny_gguf, tmp_path, read_only_view):
    cache = tmp_path / "cache"
    env = dict(os.environ, WORKBENCH_CACHE=str(cache))
    load = (
        "from workbench.models.loading import resolve_source; "
        f"print(resolve_source({str(tiny_gguf)!r}, on_event=id).location)"
    )
    subprocess.run([sys.executable, "-c", load], env=env, check=True, capture_output=True)
    ro = read_only_view(cache)
    env = dict(os.environ, WORKBENCH_CACHE=str(ro))
    info = subprocess.run(
        [sys.executable, "-m", "workbench", "info"], env=env, capture_output=True, text=True
    )
    assert info.returncode == 0, info.stderr
    line = next(x for x in info.stdout.splitlines() if x.startswith("cache"))
    assert "cannot be used" not in line, line
    assert f"{ro} (read-only: the models cached in it load, nothing new can be cached" in line
    assert "WORKBENCH_CACHE" in line
    assert "built-in gemma-3-270m  not cached (the cache is read-only)" in info.stdout
    # and what it says is so: the prepared entry loads from the read-only mount
    loaded = subprocess.run([sys.executable, "-c", load], env=env, capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip().startswith(str(ro)), loaded.stdout
    assert (Path(loaded.stdout.strip()) / MANIFEST).is_file()
