"""Notebooks rerun cleanly: Run All twice in the same folder gives the same outcome.

A learner runs a notebook, restarts the kernel (or not) and runs it again in the same folder.
Every tutorial and workshop solution runs here twice in a row in one working folder, each
time in a fresh kernel (which is also the kernel-restart case), on the tiny model; the first
run is each notebook's plain top-to-bottom run, so this is also where they are run. Both runs
must succeed cell for cell, and what the second run writes must be the next of everything:
its numbered run and evaluation folders follow the first run's, and its exports replace the
first run's (the session folder remembers what it wrote, so no ``overwrite=True`` is needed).

The second half checks the rules behind that on a session directly: an export, a quantized
model or a server that this session folder made before is replaced (with a message saying
so); a folder it did not write, or one changed since, is still refused without
``overwrite=True``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests import test_notebooks
from tests.test_notebooks import (
    PER_NOTEBOOK,
    REPO,
    SOLUTIONS,
    TINY,
    TUTORIALS,
    execute,
    free_port,
)

kernel_name = test_notebooks.kernel_name  # the notebooks' kernel fixture, shared

NUMBERED = re.compile(r"^(run|eval)-(\d+)$")


def numbered_folders(root: Path) -> dict[str, list[int]]:
    """``{parent folder (relative): [numbers]}`` of every ``run-NNN`` / ``eval-NNN`` folder."""
    found: dict[str, list[int]] = {}
    for path in sorted(root.rglob("*")):
        match = NUMBERED.match(path.name)
        if match and path.is_dir() and (path.parent.name in ("runs", "evaluations")):
            key = f"{path.parent.relative_to(root)}/{match.group(1)}"
            found.setdefault(key, []).append(int(match.group(2)))
    return {key: sorted(numbers) for key, numbers in found.items()}


def text_of(nb) -> str:
    """Everything the code cells printed (streams and plain-text results)."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif "data" in out:
                parts.append(str(out["data"].get("text/plain", "")))
    return "".join(parts)


def outcome(nb) -> list[tuple[int, bool]]:
    """``(cell index, ran)`` of each code cell: executed, with no error output."""
    return [
        (
            i,
            c.get("execution_count") is not None
            and not any(o.get("output_type") == "error" for o in c.get("outputs", [])),
        )
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code"
    ]


@pytest.mark.parametrize("path", TUTORIALS + SOLUTIONS, ids=lambda p: p.name)
def test_notebook_runs_twice_in_the_same_folder(path, tiny_model_dir, kernel_name, tmp_path):
    values = {**TINY, **PER_NOTEBOOK.get(path.stem, {}), "MODEL": str(tiny_model_dir)}
    work = tmp_path / "work"
    start = time.monotonic()
    # A fresh port for each run: the first run's server has stopped, but the test does not
    # depend on how soon the system lets a port be bound again.
    first = execute(path, {**values, "PORT": free_port()}, work, kernel_name)
    after_first = numbered_folders(work)
    second = execute(path, {**values, "PORT": free_port()}, work, kernel_name)
    after_second = numbered_folders(work)
    print(f"{path.relative_to(REPO)} twice: {time.monotonic() - start:.0f}s")

    assert outcome(second) == outcome(first)
    assert all(ran for _, ran in outcome(second))
    # The second run's numbered folders are the next numbers after the first run's.
    assert set(after_second) == set(after_first)
    for key, numbers in after_first.items():
        count = len(numbers)
        assert numbers == list(range(1, count + 1)), (key, numbers)
        assert after_second[key] == list(range(1, 2 * count + 1)), (key, after_second[key])
    # Whatever the first run exported, the second replaced, saying whose it was.
    if "exported" in text_of(first):
        assert "replacing the export written by" in text_of(second)


# -- the rules behind it, on a session ---------------------------------------------------------


ROWS = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)]


def trained_session(folder: Path, model: Path, verbose: bool = False):
    import workbench as wb

    s = wb.Session(folder, verbose=verbose)
    s.load_model(str(model))
    s.load_data(ROWS, validation=None)
    s.train(max_steps=1, wait=True)
    return s


def test_an_export_this_session_folder_wrote_is_replaced_on_a_rerun(tmp_path, tiny_model_dir):
    first = trained_session(tmp_path / "s", tiny_model_dir)
    folder = first.export("export/merged")
    old = folder.stat().st_ino
    first.close()

    again = trained_session(tmp_path / "s", tiny_model_dir)
    messages: list[str] = []
    again.on("progress", messages.append)
    assert again.export("export/merged") == folder
    assert f"replacing the export written by run-001: {folder}" in messages
    # A new folder (staged, then renamed into place), now remembered as run-002's.
    assert folder.stat().st_ino != old and (folder / "model.safetensors").is_file()
    written = json.loads((tmp_path / "s" / "session.json").read_text())["written"]
    assert written["export/merged"]["by"] == "run-002"
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no leftovers
    # The adapter and GGUF formats are remembered the same way.
    for fmt in ("adapter", "gguf"):
        again.export(f"export/{fmt}", format=fmt)
        assert again.export(f"export/{fmt}", format=fmt).is_dir()
    again.close()


KILLED_EXPORT = """
import os, pathlib, signal, sys
import workbench as wb
from tests.test_notebook_reruns import trained_session

folder, model, moment = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
s = trained_session(folder, model)
if moment == "after the swap":  # the export is in place, session.json not yet told
    record = wb.Session._record
    def killed(self, change):
        if "exports" in change:
            os.kill(os.getpid(), signal.SIGKILL)
        return record(self, change)
    wb.Session._record = killed
else:  # "before the swap": the new export is complete, about to replace the previous one
    import workbench._io
    s.export("export/merged")
    place = workbench._io._place
    def killed(new, final):
        if final.name == "merged" and final.exists():
            os.kill(os.getpid(), signal.SIGKILL)
        return place(new, final)
    workbench._io._place = killed
s.export("export/merged")
"""


@pytest.mark.parametrize("moment", ["after the swap", "before the swap"])
def test_an_export_killed_as_it_is_placed_is_still_the_session_folders(
    tmp_path, tiny_model_dir, moment
):
    # Killed just after its rename, the export was refused on the rerun ("exists and is not
    # empty; pass overwrite=True"): session.json learned of it only after the rename.
    import subprocess
    import sys

    from workbench.errors import SpecError

    child = [sys.executable, "-c", KILLED_EXPORT, str(tmp_path / "s"), str(tiny_model_dir)]
    killed = subprocess.run([*child, moment], cwd=REPO, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    folder = tmp_path / "s" / "export" / "merged"
    assert (folder / "model.safetensors").is_file()
    again = trained_session(tmp_path / "s", tiny_model_dir)
    messages: list[str] = []
    again.on("progress", messages.append)
    assert again.export("export/merged") == folder
    assert f"replacing the export written by run-001: {folder}" in messages
    assert sorted(p.name for p in folder.parent.iterdir()) == ["merged"]  # nothing left over
    written = json.loads((tmp_path / "s" / "session.json").read_text())["written"]
    assert (
        written["export/merged"]["by"] == "run-002"
        and "until_placed" not in written["export/merged"]
    )
    # A folder changed by hand is still refused, whichever record it would have matched.
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(SpecError, match="not empty; pass overwrite=True"):
        again.export("export/merged")
    again.close()


def test_a_replacement_that_fails_leaves_the_old_folder(tmp_path):
    from workbench.deploy.paths import staged_write

    target = tmp_path / "export"
    with staged_write(target) as tmp:
        (tmp / "model.txt").write_text("old")
    with pytest.raises(RuntimeError, match="disk trouble"), staged_write(target) as tmp:
        (tmp / "model.txt").write_text("half of the new")
        raise RuntimeError("disk trouble")
    assert (target / "model.txt").read_text() == "old"
    with staged_write(target) as tmp:
        (tmp / "model.txt").write_text("new")
    assert (target / "model.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # nothing staged or set aside


def test_a_folder_the_session_did_not_write_still_needs_overwrite(tmp_path, tiny_model_dir):
    from workbench.errors import SpecError

    s = trained_session(tmp_path / "s", tiny_model_dir)
    mine = tmp_path / "s" / "export" / "mine"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("my own notes")
    with pytest.raises(SpecError, match="exists and is not empty; pass overwrite=True"):
        s.export("export/mine")
    assert (mine / "notes.txt").read_text() == "my own notes"

    # An export changed by hand since it was written is no longer the session's to replace.
    folder = s.export("export/merged")
    (folder / "README.md").write_text("my edited model card")
    with pytest.raises(SpecError, match="exists and is not empty; pass overwrite=True"):
        s.export("export/merged")
    assert (folder / "README.md").read_text() == "my edited model card"
    # A file added by hand counts as a change too.
    s.export("export/merged", overwrite=True)
    (folder / "extra.txt").write_text("x")
    with pytest.raises(SpecError, match="not empty"):
        s.export("export/merged")

    # Another session folder's export is not this one's either.
    other = trained_session(tmp_path / "other", tiny_model_dir)
    theirs = other.export("export/merged")
    with pytest.raises(SpecError, match="not empty"):
        s.export(theirs)
    s.close()
    other.close()


def test_a_quantized_model_and_a_script_are_replaced_on_a_rerun(tmp_path, tiny_model_dir):
    pytest.importorskip("bitsandbytes")
    first = trained_session(tmp_path / "s", tiny_model_dir)
    report = first.quantize("4bit", probes=["Hello"])
    first.to_script("script")
    first.close()

    again = trained_session(tmp_path / "s", tiny_model_dir)
    messages: list[str] = []
    again.on("progress", messages.append)
    assert again.quantize("4bit", probes=["Hello"]).folder == report.folder
    assert f"replacing the export written by run-001: {report.folder}" in messages
    assert (again.to_script("script") / "train.py").is_file()
    again.close()


def test_a_server_left_running_by_the_session_folder_is_stopped_on_a_rerun(
    tmp_path, tiny_model_dir
):
    # A notebook that failed between serve() and server.stop(), run again in the same
    # kernel: the first server still holds the port.
    pytest.importorskip("fastapi")
    port = free_port()
    first = trained_session(tmp_path / "s", tiny_model_dir)
    old = first.serve(port=port)
    again = trained_session(tmp_path / "s", tiny_model_dir)
    messages: list[str] = []
    again.on("progress", messages.append)
    try:
        server = again.serve(port=port)
        # stopped and reaped: killed by its pid alone, it stayed a zombie per rerun
        assert not Path(f"/proc/{old.process.pid}").exists()
        assert not old.running
        assert any(
            f"stopping the server this session folder started on port {port}" in m for m in messages
        ), messages
        assert server.chat("Hello", max_tokens=4) is not None
    finally:
        again.close()
        first.close()


def test_another_kernels_live_server_on_the_folder_is_refused_not_stopped(tmp_path, tiny_model_dir):
    # Two kernels on one session folder (a handout's wb.Session("runs/demo")): B's serve on
    # A's port stopped A's live server under it, saying "still running from an earlier run".
    from workbench.errors import ServeError

    pytest.importorskip("fastapi")
    port = free_port()
    serving = f"print(s.serve(port={port}).process.pid)"
    a = _other_kernel(tmp_path / "s", tiny_model_dir, serving)
    try:
        b = trained_session(tmp_path / "s", tiny_model_dir)
        with pytest.raises(
            ServeError,
            match=rf"port {port} is served by another kernel .*"
            rf"process {a.pid} started the server",
        ):
            b.serve(port=port, path=b.export("export/b"))  # A's export/merged is A's
        assert Path(f"/proc/{int(a.said.split()[-1])}").exists()  # A's server goes on
        b.close()
    finally:
        a.stdin.close()
        a.wait(timeout=60)


def _other_kernel(folder: Path, model: Path, code: str):
    """A second kernel on ``folder`` (a process with its own Session): runs ``code`` with
    ``s`` loaded (what it prints kept as ``.said``), and lives on until its stdin closes."""
    import subprocess
    import sys

    script = (
        "import sys, workbench as wb\n"
        "s = wb.Session(sys.argv[1], verbose=False)\n"
        "s.load_model(sys.argv[2])\n"
        f"{code}\n"
        "print('done', flush=True)\n"
        "sys.stdin.read()\n"
    )
    args = [sys.executable, "-c", script, str(folder), str(model)]
    kernel = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    lines = []
    while not lines or lines[-1] not in ("done\n", ""):
        lines.append(kernel.stdout.readline())
    assert lines[-1] == "done\n", lines
    kernel.said = "".join(lines[:-1])
    return kernel


def test_another_kernels_live_export_is_neither_replaced_nor_taken_for_ours(
    tmp_path, tiny_model_dir
):
    # B's export("export/merged") replaced A's without overwrite=True ("replacing the export
    # written by run-002", A's run), and A's serve()/quantize() then used B's model as A's.
    from workbench.errors import SpecError

    a = trained_session(tmp_path / "s", tiny_model_dir)
    mine = (a.export("export/merged") / "model.safetensors").read_bytes()
    refused = "try:\n    s.export('export/merged')\nexcept wb.SpecError as err:\n    print(err)"
    b = _other_kernel(tmp_path / "s", tiny_model_dir, refused)
    try:
        assert "in another kernel still working in this session folder" in b.said, b.said
        assert (a.run_dir / "export/merged/model.safetensors").read_bytes() == mine
        b.stdin.close()
        b.wait(timeout=60)
        b = _other_kernel(
            tmp_path / "s", tiny_model_dir, "s.export('export/merged', overwrite=True)"
        )
        with pytest.raises(SpecError, match=r"in another kernel still working in this session"):
            a.export("export/merged")
        with pytest.raises(SpecError, match=r"first export the model .* another kernel"):
            a.quantize("8bit", probes=["Hello"])  # not B's model quantized as A's
    finally:
        b.stdin.close()
        b.wait(timeout=60)
        a.close()


def test_a_port_held_by_another_program_is_still_refused(tmp_path, tiny_model_dir):
    import socket

    from workbench.errors import SpecError

    s = trained_session(tmp_path / "s", tiny_model_dir)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(SpecError, match=f"port {port} on 127.0.0.1 is in use"):
            s.serve(port=port)
    s.close()


def test_an_interrupted_serve_leaves_no_server_behind(tmp_path, tiny_model_dir):
    # Ctrl-C while serve() waited for the model left the child serving on the port, held
    # by nobody: s.close() could not stop it and the next serve(port) was refused.
    import _thread
    import threading

    pytest.importorskip("fastapi")
    port = free_port()
    s = trained_session(tmp_path / "s", tiny_model_dir)
    from workbench.deploy import serve as serving

    def interrupt_once_started():
        deadline = time.monotonic() + 120
        while not serving._STARTED and time.monotonic() < deadline:
            time.sleep(0.01)
        _thread.interrupt_main()  # while serve() waits for the model to answer

    threading.Thread(target=interrupt_once_started, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        s.serve(port=port)
    from workbench.deploy.serve import port_is_free

    assert not serving._STARTED  # stopped and forgotten
    time.sleep(3)  # what the child would have needed to load and bind
    assert port_is_free(port)
    server = s.serve(port=port)
    try:
        assert server.chat("Hello", max_tokens=4) is not None
    finally:
        s.close()
    assert not server.running and port_is_free(port)
