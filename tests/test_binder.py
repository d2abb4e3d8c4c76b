"""The Binder set-up: its files are sound, its torch is the CPU build, and a fresh
environment built from them runs the quickstart notebook (on the tiny model: a Binder session
has too little memory for Gemma)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import nbformat
import pytest

from tests.test_notebooks import TINY, inject_parameters

REPO = Path(__file__).resolve().parent.parent
BINDER = REPO / "binder"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH = "torch==2.13.0+cpu"
# Only PyPI is reachable from the project's machines and CI, not PyTorch's CPU index, and pip
# retries every package's lookup there with growing pauses (5 times by default): with no
# retries the lookups fail at once and pip goes on with the other sources (here the CPU wheel
# of torch lies on local disk, as for the project's own `pip install torch==2.13.0`).
NO_RETRIES = {"PIP_RETRIES": "0"}


def requirement_lines() -> list[str]:
    text = (BINDER / "requirements.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def test_binder_files_are_sound():
    lines = requirement_lines()
    # The CPU build, pinned, from PyTorch's CPU index: PyPI's torch is the CUDA build.
    assert TORCH in lines
    assert f"--extra-index-url {CPU_INDEX}" in lines
    assert "-e ." in lines or "." in lines  # the project itself, from the repository root
    assert (BINDER / "runtime.txt").read_text().strip().startswith("python-3.")
    post = BINDER / "postBuild"
    assert os.access(post, os.X_OK), "postBuild must be executable"
    assert post.read_text().startswith("#!/bin/bash")
    assert "load_model('gemma-3-270m')" in post.read_text()  # converts and caches Gemma
    subprocess.run(["bash", "-n", str(post)], check=True)


def resolve(requirements: Path, report: Path) -> subprocess.CompletedProcess:
    """``pip install --dry-run`` of ``requirements`` as in a fresh environment; report as JSON."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            "-r",
            str(requirements),
        ],
        cwd=REPO,
        env={**os.environ, **NO_RETRIES},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_binder_torch_resolves_to_the_cpu_build(tmp_path):
    # What pip would install for binder/requirements.txt's torch (its index options and its
    # torch line; the project's own dependencies pin no torch): the CPU build, from the CPU
    # index or a local copy of that wheel, and none of the CUDA build's nvidia-* packages.
    # (The whole file, with the project, is resolved and installed by the slow test below.)
    lines = [line for line in requirement_lines() if line.startswith(("-", "torch"))]
    lines = [line for line in lines if not line.startswith("-e")]
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("\n".join(lines) + "\n")
    done = resolve(requirements, tmp_path / "report.json")
    if done.returncode != 0:
        why = (
            f"{TORCH} could not be resolved: PyTorch's CPU index ({CPU_INDEX}) is not reachable "
            "from this machine and no local copy of the wheel was found, so nothing proves "
            "that Binder gets the CPU build. pip said:\n" + done.stderr[-2000:]
        )
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    installs = json.loads((tmp_path / "report.json").read_text())["install"]
    found = {i["metadata"]["name"].lower(): i for i in installs}
    torch = found["torch"]
    assert torch["metadata"]["version"] == "2.13.0+cpu"
    assert "+cpu" in torch["download_info"]["url"] or "%2Bcpu" in torch["download_info"]["url"]
    cuda = sorted(n for n in found if n.startswith(("nvidia-", "triton", "cuda-")))
    assert cuda == [], f"the CUDA build's packages would be installed: {cuda}"
    source = torch["download_info"]["url"]
    if not source.startswith(CPU_INDEX.replace("/whl/cpu", "")):
        # Say where it came from: it proves the pin is the CPU build, not that the index has it.
        warnings.warn(
            f"PyTorch's CPU index was not reachable here; {TORCH} resolved to {source}",
            UserWarning,
            stacklevel=1,
        )


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
    install_env = {**env, **NO_RETRIES}
    # The editable install writes tuning_workbench.egg-info into the repository (ignored by
    # git); remove it afterwards unless it was there before.
    egg_info = REPO / "tuning_workbench.egg-info"
    had_egg_info = egg_info.exists()
    try:
        install = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "-r", "binder/requirements.txt"],
            cwd=REPO,
            env=install_env,
            capture_output=True,
            text=True,
            timeout=3600,
        )
    finally:
        if not had_egg_info:
            shutil.rmtree(egg_info, ignore_errors=True)
    assert install.returncode == 0, install.stdout[-4000:] + install.stderr[-4000:]
    # The CPU build of torch, and none of the CUDA build's packages.
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    versions = {p["name"].lower(): p["version"] for p in json.loads(listed.stdout)}
    assert versions["torch"] == "2.13.0+cpu"
    assert not [n for n in versions if n.startswith(("nvidia-", "triton"))], sorted(versions)

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
