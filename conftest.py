"""Collect the package's docstring examples with the tests: an example runs, or it is prose.

pytest's ``--doctest-modules`` would also import the tests' two ``conftest.py`` files as
doctest modules, and they clash by name; this collects ``workbench/`` alone, with pytest's own
doctest collector.
"""

from __future__ import annotations

from pathlib import Path

from _pytest.doctest import DoctestModule

PACKAGE = Path(__file__).resolve().parent / "workbench"


def pytest_collect_file(file_path: Path, parent):
    """A doctest module for every ``.py`` file of the package (not ``__main__``)."""
    if (
        file_path.suffix == ".py"
        and PACKAGE in file_path.resolve().parents
        and file_path.name != "__main__.py"
        and not parent.config.option.doctestmodules
    ):
        return DoctestModule.from_parent(parent, path=file_path)
    return None
