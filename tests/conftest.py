"""Shared fixtures: a tiny model built on the spot and the built-in Gemma, cached per run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Converted models are kept in the repository's ignored .cache folder, so a clean clone (CI)
# converts once per run and a developer's later runs reuse it.
os.environ.setdefault("WORKBENCH_CACHE", str(REPO / ".cache" / "workbench"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama-style model folder with a ChatML chat template."""
    from workbench.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    """A tiny GPT-2 (Conv1D layers) model folder."""
    from workbench.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-gpt2", "gpt2")


@pytest.fixture(scope="session")
def gemma_folder() -> Path:
    """The built-in Gemma 3 270M converted to safetensors (converted once, then cached)."""
    from workbench.models.loading import resolve_source

    return Path(resolve_source("gemma-3-270m", on_event=print).location)


@pytest.fixture
def small_disk(tmp_path):
    """Make a folder on a tiny RAM disk: ``small_disk(size_kb)`` returns its path.

    A real file system that really fills up (tmpfs), so a test sees the exact error a full
    disk gives. Needs root (CI and the developer machines run as root); skipped elsewhere.
    """
    import subprocess

    mounts: list[Path] = []

    def make(size_kb: int) -> Path:
        point = tmp_path / f"disk-{len(mounts)}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(point)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounts.append(point)
        return point

    yield make
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)
