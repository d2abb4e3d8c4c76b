"""Build the teaching notebooks from their sources in ``notebooks/src``.

    python notebooks/build.py              # (re)write every .ipynb under notebooks/
    python notebooks/build.py --check      # exit 1 if a committed notebook differs
    python notebooks/build.py --out DIR    # write them under DIR instead (to compare, review)

Each notebook's source is a jupytext percent-format script (``src/01_quickstart.py`` builds
``01_quickstart.ipynb``): ``# %%`` starts a code cell, ``# %% [markdown]`` a text cell, and
``# %% tags=["parameters"]`` the parameters cell that the tests add their own values to.
Edit the sources, never the .ipynb files, and run this again. The notebooks are written
without outputs or widget state, with stable cell ids, so a diff shows only the text.

Shared text lives once, in ``src/_shared/``: a source line ``# %load FILE`` (IPython's
``%load``, as jupytext writes it) is replaced by that file's text, FILE being relative to
the file that loads it. Loads may nest.

A source with cells tagged ``exercise`` and ``solution`` is a workshop exercise. It builds
two notebooks: ``NAME.ipynb`` for participants keeps the ``exercise`` cells (the gaps to
fill in, ``...``) and drops the ``solution`` cells; ``NAME_solution.ipynb`` does the reverse.
The participants' copy also gets a cell right after its parameters that turns on
:func:`workbench.exercises.enable_gap_check`: a cell still holding a gap then stops with one
line saying what to fill in (an ``ExerciseGap`` error, so *Run All* stops there) instead of a
library's traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import jupytext
import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
METADATA = {
    "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)",
                   "language": "python"},
    "language_info": {"name": "python"},
}
LOAD = re.compile(r"^(?:# )?%load (\S+)$", re.MULTILINE)  # jupytext reads `# %load` as `%load`
VARIANT_TAGS = ("exercise", "solution")
# Added after the parameters cell of every participants' copy (see the module docstring).
GAP_CHECK = """\
from workbench.exercises import enable_gap_check

enable_gap_check()  # from here on, a cell with a gap (`...`) stops and says what to fill in"""


def expand(text: str, base: Path) -> str:
    """Replace every ``%load FILE`` line of ``text`` with FILE's text (relative to ``base``)."""
    def load(match: re.Match) -> str:
        path = (base / match.group(1)).resolve()
        return expand(path.read_text(encoding="utf-8").strip("\n"), path.parent)
    return LOAD.sub(load, text)


def build(source: Path, variant: str | None = None) -> tuple[str, nbformat.NotebookNode]:
    """The notebook ``source`` builds, as (path relative to notebooks/, notebook).

    ``variant`` is None for a tutorial, "exercise" or "solution" for a workshop copy.
    """
    rel = source.relative_to(SRC).with_suffix("")
    if variant == "solution":
        rel = rel.with_name(rel.name + "_solution")
    stem = rel.name.replace(".", "-")[:40]
    nb = new_notebook(metadata=METADATA)
    for cell in jupytext.read(source, fmt="py:percent").cells:
        tags = cell.metadata.get("tags", [])
        if any(tag in VARIANT_TAGS and tag != variant for tag in tags):
            continue
        tags = [tag for tag in tags if tag not in VARIANT_TAGS]
        if cell.cell_type == "markdown":
            out = new_markdown_cell(cell.source)
        else:
            out = new_code_cell(expand(cell.source, source.parent))
        if tags:
            out.metadata["tags"] = tags
        out["id"] = f"{stem}-{len(nb.cells):02d}"
        nb.cells.append(out)
        if variant == "exercise" and "parameters" in tags:
            check = new_code_cell(GAP_CHECK)
            check["id"] = f"{stem}-{len(nb.cells):02d}"
            nb.cells.append(check)
    nbformat.validate(nb)
    return f"{rel}.ipynb", nb


def all_notebooks() -> dict[str, nbformat.NotebookNode]:
    """Relative path -> notebook, for every notebook the sources build."""
    out = {}
    for source in sorted(SRC.rglob("*.py")):
        if "_shared" in source.relative_to(SRC).parts:
            continue
        cells = jupytext.read(source, fmt="py:percent").cells
        tagged = {tag for cell in cells for tag in cell.metadata.get("tags", [])}
        for variant in VARIANT_TAGS if "solution" in tagged else (None,):
            rel, nb = build(source, variant)
            out[rel] = nb
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a notebook differs from its source")
    parser.add_argument("--out", type=Path, default=HERE,
                        help="folder to write the notebooks in (default: notebooks/)")
    args = parser.parse_args(argv)
    stale = []
    for rel, nb in all_notebooks().items():
        path = args.out / rel
        text = nbformat.writes(nb) + "\n"
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        if args.check:
            stale.append(rel)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print("wrote", path)
    if stale:
        print("out of date (run python notebooks/build.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
