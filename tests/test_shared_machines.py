"""Shared machines and odd file systems: folders another user owns, read-only caches, a
changed umask, names starting with ``~``, names near the 255-byte limit, dangling links.

Root ignores file modes, so the cases of a folder this user cannot write run in a child
process without the capabilities that let root write anyway (``setpriv``), and are skipped
where that is not possible.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import workbench as wb
from workbench._io import atomic_write_text, make_folder, staging_folder, temporary_stem
from workbench.deploy.model_card import ModelCard
from workbench.errors import WriteError
from workbench.evaluation.ratings import Rating, append_rating
from workbench.train.lock import LOCK_FILE, RunLock

_DROP = "-dac_override,-dac_read_search,-fowner"


def run_as_plain_user(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a child Python that file modes bind (skips the test where none can)."""
    command = [sys.executable, "-c", textwrap.dedent(code)]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: file modes cannot be enforced")
        command = ["setpriv", "--bounding-set", _DROP, "--", *command]
        probe = subprocess.run([*command[:4], "true"], capture_output=True, check=False)
        if probe.returncode != 0:
            pytest.skip(f"setpriv cannot drop capabilities here: {probe.stderr.decode()[:200]}")
    return subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False
    )


def _read_only(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_002():
    old = os.umask(0o002)
    yield
    os.umask(old)


def test_lock_files_follow_the_umask_so_a_group_member_can_resume(tmp_path, umask_002):
    run = make_folder(tmp_path / "run-001")
    with RunLock(run):
        pass
    append_rating(tmp_path / "ratings.jsonl", Rating(0, "tuned", "A"))
    assert oct(_mode(run / LOCK_FILE)) == oct(0o664)  # was 0o644: a teammate was refused
    assert oct(_mode(tmp_path / ".ratings.jsonl.lock")) == oct(0o664)


def test_locking_a_run_in_a_folder_you_cannot_write_names_the_lock_file(tmp_path):
    run = make_folder(tmp_path / "shared" / "run-001")
    _read_only(tmp_path / "shared")
    try:
        result = run_as_plain_user(
            f"""
            from workbench.train.lock import RunLock
            from workbench.errors import WriteError
            try:
                RunLock({str(run)!r}).acquire()
            except WriteError as err:
                print("WriteError:", err)
            """
        )
    finally:
        (tmp_path / "shared").chmod(0o755)
        run.chmod(0o755)
    assert result.returncode == 0, result.stderr
    assert f"WriteError: cannot take the lock of {run}" in result.stdout  # was PermissionError
    assert str(run / LOCK_FILE) in result.stdout and "not writable" in result.stdout
    assert "copy the run folder into a session folder of your own" in result.stdout


def test_files_get_the_umask_in_force_when_they_are_written(tmp_path):
    atomic_write_text(tmp_path / "before.txt", "x")  # the umask was read (and kept) here
    old = os.umask(0o077)  # a notebook keeps everything private from now on
    try:
        written = atomic_write_text(tmp_path / "after.txt", "x")
        with staging_folder(tmp_path / "export") as tmp:
            (tmp / "weights.bin").write_bytes(b"x")
    finally:
        os.umask(old)
    assert oct(_mode(written)) == oct(0o600)  # was 0o644
    assert oct(_mode(tmp_path / "export")) == oct(0o700)
    assert oct(_mode(tmp_path / "export" / "weights.bin")) == oct(0o600)


def test_tiny_models_get_the_umasks_modes(tmp_path):
    old = os.umask(0o022)
    try:
        folder = wb.build_tiny_model(tmp_path / "tiny")
    finally:
        os.umask(old)
    assert oct(_mode(folder)) == oct(0o755)  # was 0o700
    assert oct(_mode(folder / "model.safetensors")) == oct(0o644)  # was 0o600


def test_names_starting_with_a_tilde_are_plain_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = wb.Session("~old-runs", verbose=False)  # RuntimeError: Could not determine home...
    assert s.run_dir == tmp_path / "~old-runs" and s.run_dir.is_dir()
    assert make_folder("~exp/sub") == Path("~exp/sub") and (tmp_path / "~exp/sub").is_dir()
    s.close()


def test_a_session_folder_that_is_a_dangling_link_is_said_to_be_one(tmp_path):
    (tmp_path / "latest").symlink_to(tmp_path / "deleted-run")
    with pytest.raises(WriteError) as caught:
        wb.Session(tmp_path / "latest", verbose=False)  # was FileExistsError: File exists
    assert str(caught.value).startswith(f"{tmp_path / 'latest'} is a link to ")
    assert "a folder that no longer exists" in str(caught.value)


def test_names_near_the_limit_are_written(tmp_path):
    report = atomic_write_text(tmp_path / ("r" * 241 + ".html"), "<html>")  # 246 bytes
    with staging_folder(tmp_path / ("e" * 238)) as tmp:
        (tmp / "config.json").write_text("{}")
    assert report.read_text() == "<html>"
    assert (tmp_path / ("e" * 238) / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([report.name, "e" * 238])


def test_a_name_too_long_for_the_file_system_names_the_target(tmp_path):
    target = tmp_path / ("r" * 256)
    with pytest.raises(WriteError) as caught:
        atomic_write_text(target, "x")
    assert str(caught.value).startswith(f"cannot write to {target}: its name is too long")
    with pytest.raises(WriteError) as caught, staging_folder(tmp_path / ("e" * 256)):
        pass
    assert str(caught.value).startswith(f"cannot write to {tmp_path / ('e' * 256)}: its name")


def test_a_killed_writers_temporary_of_a_long_name_is_cleared(tmp_path):
    name = "r" * 246
    atomic_write_text(tmp_path / name, "first")
    old = 3 * 3600
    leftover = tmp_path / f".{temporary_stem(name)}.killed12"
    leftover.write_text("half")
    os.utime(leftover, (leftover.stat().st_atime - old, leftover.stat().st_mtime - old))
    atomic_write_text(tmp_path / name, "second")
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def _hours_old(path: Path) -> Path:
    then = path.stat().st_mtime - 3 * 3600
    os.utime(path, (then, then))
    return path


def test_a_cleanup_of_killed_writes_leaves_a_users_own_hidden_files(tmp_path):
    # An export's README.md was rewritten and vim's .README.md.swp beside it, an hour
    # unchanged, was deleted as a killed writer's temporary.
    atomic_write_text(tmp_path / "README.md", "first")
    swap = tmp_path / ".README.md.swp"
    swap.write_bytes(b"vim's recovery data")
    killed = tmp_path / ".README.md.k1ll3d_0"  # mkstemp's shape: 8 characters
    killed.write_text("half")
    for path in (swap, killed):
        _hours_old(path)
    atomic_write_text(tmp_path / "README.md", "second")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".README.md.swp", "README.md"]
    assert swap.read_bytes() == b"vim's recovery data"


def test_a_tiny_model_of_a_long_name_is_built_and_rebuilt(tmp_path):
    # OSError: File name too long (its own staging folder: the name, a dot and 8 more)
    target = tmp_path / ("m" * 250)
    folder = wb.build_tiny_model(target)
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert wb.build_tiny_model(target) == target
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_exports_to_long_folder_names(tmp_path, tiny_model_dir):
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    out = s.export("export/" + "x" * 238)  # OSError: File name too long: '.../.xxx...partial-'
    assert out.name == "x" * 238 and (out / "config.json").is_file()
    s.close()


@pytest.mark.parametrize("base", ["/tmp/x/llama: v2", "run #3", "[draft] llama", "& anchor"])
def test_model_card_front_matter_is_yaml_that_gives_the_path_back(base):
    card = ModelCard(base, "safetensors").render()
    front = card.split("---\n")[1]
    assert yaml.safe_load(front) == {
        "base_model": base,  # was cut at " #", or refused
        "library_name": "transformers",
        "tags": ["tuning-workbench", "lora"],
    }


def test_front_matter_keeps_plain_names_plain():
    card = ModelCard("gemma-3-270m", "adapter").render()
    assert card.startswith("---\nbase_model: gemma-3-270m\nlibrary_name: peft\n")
    assert "tags: [tuning-workbench, lora]\n---\n" in card


def test_read_only_model_cache_serves_complete_entries(tmp_path):
    cache = tmp_path / "cache"
    env = {"WORKBENCH_CACHE": str(cache)}
    code = """
        import os
        from workbench.models.cache import cached_folder
        print(cached_folder("m", lambda tmp: (tmp / "w.bin").write_text("1"), {}))
        """
    first = run_as_plain_user(code, env)
    assert first.returncode == 0, first.stderr
    _read_only(cache)
    try:
        again = run_as_plain_user(
            code
            + """
        from workbench.errors import CacheError
        try:
            cached_folder("other", lambda tmp: None, {})
        except CacheError as err:
            print("CacheError:", err)
        """,
            env,
        )
    finally:
        for path in [cache, *cache.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert again.returncode == 0, again.stderr  # was PermissionError: .../.m.lock
    lines = again.stdout.splitlines()
    assert lines[0] == str(cache / "m")
    assert lines[1].startswith(f"CacheError: cannot build other in the model cache {cache}")
    assert "WORKBENCH_CACHE" in lines[1] and "not writable" in lines[1]


def test_metrics_score_without_writing_to_hf_home(tmp_path):
    code = """
        import json
        import numpy as np
        from workbench.evaluation.metrics import METRICS, Column
        col = Column(("the cat sat on the mat", "a dog ran"), ("the cat sat on a mat", "a dog"))
        values = {}
        for name in ("exact_match", "rouge", "bleu", "chrf"):
            scored = METRICS[name].score(col, np.zeros((3, 2), int))
            values.update({key: s.value for key, s in scored.items()})
        print(json.dumps(values))
        """
    writable, locked = tmp_path / "hf", tmp_path / "locked"
    writable.mkdir()
    locked.mkdir(mode=0o555)
    normal = run_as_plain_user(code, {"HF_HOME": str(writable)})
    unwritable = run_as_plain_user(code, {"HF_HOME": str(locked / "hf")})
    assert normal.returncode == 0, normal.stderr
    assert unwritable.returncode == 0, unwritable.stderr[-2000:]  # was PermissionError
    scores = json.loads(normal.stdout)
    assert json.loads(unwritable.stdout) == scores
    assert scores["exact_match"] == 0.0 and 0 < scores["bleu"] < 100 and scores["rouge1"] > 0
    assert [str(p.relative_to(writable)) for p in writable.rglob("*")] == []  # no modules copy
