"""The arrows that must never exist between the workbench's parts (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "workbench"
SHARED = {"errors", "types", "events", "_io", "_display", "_quiet", "_numbers", "_model_context"}


def part_of(path: Path) -> str:
    """``train`` for workbench/train/x.py, ``session`` for workbench/session.py."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def imports() -> list[tuple[Path, str, str]]:
    """(file, its part, imported workbench part) for every import, lazy ones included."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                pieces = name.split(".")
                if pieces[0] == "workbench" and len(pieces) > 1:
                    found.append((path, part_of(path), _target(pieces)))
    return found


def _target(pieces: list[str]) -> str:
    """The part an import reaches; ``train.core`` is a leaf of its own (it imports nothing of
    the workbench, being copied beside the standalone script), so any part may use it."""
    return "train.core" if pieces[1:3] == ["train", "core"] else pieces[1]


FORBIDDEN = [
    ("widgets", {"session"}, "a panel views an object, it does not decide"),
    (
        "models",
        {"session", "cli", "report", "data", "train", "evaluation", "deploy", "diagnostics"},
        "models/ sits below everything",
    ),
    (
        "data",
        {"session", "cli", "report", "models", "train", "evaluation", "deploy", "diagnostics"},
        "data/ needs a tokenizer, not the other parts",
    ),
    (
        "train",
        {"session", "cli", "report", "deploy", "evaluation"},
        "deploy reads a run; the run never imports deploy",
    ),
    (
        "evaluation",
        {"session", "cli", "report", "deploy", "train", "diagnostics"},
        "evaluation works on any model and rows",
    ),
    (
        "diagnostics",
        {"session", "cli", "report", "widgets", "deploy", "models"},
        "diagnostics reads records, data and evaluations; the facade and the panels show it",
    ),
    ("deploy", {"session", "cli", "report"}, "deploy works without the facade"),
    *[
        (
            shared,
            {
                "session",
                "models",
                "data",
                "train",
                "evaluation",
                "deploy",
                "widgets",
                "diagnostics",
            },
            "shared modules sit at the bottom",
        )
        for shared in sorted(SHARED)
    ],
]


@pytest.mark.parametrize(("part", "banned", "why"), FORBIDDEN, ids=[f[0] for f in FORBIDDEN])
def test_no_forbidden_arrow(part, banned, why):
    wrong = [
        f"{path.relative_to(PACKAGE)} imports workbench.{target}"
        for path, source, target in imports()
        if source == part and target in banned
    ]
    assert not wrong, f"{why}: " + "; ".join(wrong)


def test_the_training_core_imports_nothing_of_the_workbench():
    core = PACKAGE / "train" / "core.py"
    assert not [t for p, _, t in imports() if p == core]


def test_the_checker_sees_lazy_imports():
    # The check is only worth something if it reads imports inside functions too.
    lazy = [(p.name, t) for p, s, t in imports() if s == "session" and t == "deploy"]
    assert lazy, "Session's lazy imports of deploy/ should be seen"
