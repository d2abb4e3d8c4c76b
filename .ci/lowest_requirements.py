"""Print the project's dependencies pinned to their lower bounds (``>=X`` becomes ``==X``; an
upper bound after it, ``>=X,<Y``, is dropped: X lies below it).

CI installs these beside torch and runs a part of the tests with them
(``.ci/lowest-versions.sh``), so that the bounds pyproject.toml declares stay true: a user whose
environment already holds older packages keeps them when installing the workbench.
torch is left out (the README pins its CPU build).

Example: ``python3 .ci/lowest_requirements.py`` prints ``transformers[serving]==5.25 ...``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
dependencies = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
pins = []
for requirement in dependencies:
    match = re.fullmatch(
        r"([A-Za-z0-9_.\-]+(?:\[[^\]]*\])?)\s*>=\s*([0-9][0-9A-Za-z.]*)(?:\s*,\s*<\s*[0-9][0-9A-Za-z.]*)?",
        requirement,
    )
    if match is None:
        sys.exit(f"{pyproject}: {requirement!r} is not of the form name>=version[,<version]")
    name, version = match.groups()
    if name != "torch":
        pins.append(f"{name}=={version}")
print(" ".join(pins))
