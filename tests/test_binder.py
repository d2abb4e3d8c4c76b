"""The Binder set-up: its files are sound, and a fresh environment built from them runs the
quickstart notebook (on the tiny model: a Binder session has too little memory for Gemma)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from tests.test_notebooks import TINY, inject_parameters

REPO = Path(__file__).resolve().parent.parent
BINDER = REPO / "binder"


def requirement_lines() -> list[str]:
    text = (BINDER / "requirements.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def test_binder_files_are_sound():
    lines = requirement_lines()
    assert "torch==2.13.0" in lines  # pinned: an unpinned torch may pull a CUDA build
    assert "-e ." in lines or "." in lines  # the project itself, from the repository root
    assert (BINDER / "runtime.txt").read_text().strip().startswith("python-3.")
    post = BINDER / "postBuild"
    assert os.access(post, os.X_OK), "postBuild must be executable"
    assert post.read_text().startswith("#!/bin/bash")
    assert "load_model('gemma-3-270m')" in post.read_text()  # converts and caches Gemma
    subprocess.run(["bash", "-n", str(post)], check=True)


@pytest.mark.slow
def test_a_fresh_binder_environment_runs_the_quickstart(tmp_path, tiny_model_dir):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # Binder's environment: nothing from this one (no PYTHONPATH, no Jupyter paths).
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "JUPYTER_PATH", "VIRTUAL_ENV", "PYTHONHOME")
    }
    # The editable install writes tuning_workbench.egg-info into the repository (ignored by
    # git); remove it afterwards unless it was there before.
    egg_info = REPO / "tuning_workbench.egg-info"
    had_egg_info = egg_info.exists()
    try:
        install = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "-r", "binder/requirements.txt"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=3600,
        )
    finally:
        if not had_egg_info:
            shutil.rmtree(egg_info, ignore_errors=True)
    assert install.returncode == 0, install.stdout[-4000:] + install.stderr[-4000:]

    nb = nbformat.read(REPO / "notebooks" / "01_quickstart.ipynb", as_version=4)
    inject_parameters(nb, {**TINY, "MODEL": str(tiny_model_dir)})
    work = tmp_path / "work"
    work.mkdir()
    nbformat.write(nb, work / "01_quickstart.ipynb")
    # nbclient from that environment, with its own python3 kernel (its ipykernel).
    result = subprocess.run(
        [
            str(venv / "bin" / "jupyter"),
            "execute",
            "--kernel_name=python3",
            "--timeout=600",
            "01_quickstart.ipynb",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    assert (work / "runs" / "quickstart" / "export" / "merged" / "model.safetensors").is_file()
    where = subprocess.run(
        [str(python), "-c", "import workbench; print(workbench.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip().startswith(str(REPO))  # the editable install of this repo
