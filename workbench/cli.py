"""The command line: ``python -m workbench info`` and ``python -m workbench demo``.

Examples:
    >>> from workbench.cli import main
    >>> try:
    ...     main(["--help"])
    ... except SystemExit as done:  # argparse exits after printing the help
    ...     print("exit status", done.code)  # doctest: +ELLIPSIS
    usage: python -m workbench [-h] {info,demo} ...
    <BLANKLINE>
    Tuning Workbench: fine-tune small language models in a notebook.
    ...
    exit status 0
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any

from workbench.models.builtin import BUILTIN_MODELS, DEFAULT_MODEL

__all__ = ["environment_facts", "main"]

PACKAGES = (
    "tuning-workbench",  # this package's distribution name (it imports as workbench)
    "torch",
    "transformers",
    "peft",
    "bitsandbytes",
    "datasets",
    "evaluate",
    "accelerate",
    "gguf",
    "ipywidgets",
    "plotly",
)


def environment_facts() -> list[tuple[str, str]]:
    """Versions, device, cache location and whether each built-in model is cached.

    Examples:
        >>> dict(environment_facts())["python"] == platform.python_version()
        True
    """
    from workbench.models.cache import cache_root, verify_entry

    facts = [("python", platform.python_version())]
    for name in PACKAGES:
        try:
            facts.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            facts.append((name, "not installed"))
    facts.append(("device", _device()))
    root = cache_root()
    facts.append(("cache", f"{root}{_unusable(root)}"))
    read_only = root.is_dir() and not os.access(root, os.W_OK)
    missing = "not cached (the cache is read-only)" if read_only else "not cached yet"
    for spec, model in BUILTIN_MODELS.items():
        entry = root / f"{spec}-{model.sha256[:12]}"
        cached = entry.exists() and verify_entry(entry) is None
        facts.append((f"built-in {spec}", "cached" if cached else missing))
    return facts


def _unusable(root: Path) -> str:
    """Why a model cannot be cached at ``root`` (``""``: it can), for a teacher to see
    before a workshop rather than when the demo starts."""
    from workbench._io import file_in_the_way

    blocking = file_in_the_way(root)
    if blocking is not None:
        return f" (cannot be used: {blocking} is a file)"
    place = next(p for p in (root, *root.parents) if p.exists())
    if os.access(place, os.W_OK):
        return ""
    if place == root and root.is_dir():  # a prepared cache made read-only for a workshop
        return (
            " (read-only: the models cached in it load, nothing new can be cached; set "
            "WORKBENCH_CACHE to a writable folder to cache more)"
        )
    return f" (cannot be used: {place} is not writable)"


def _device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu ({torch.get_num_threads()} threads), no GPU"


def _info(_: argparse.Namespace) -> int:
    from workbench._display import text_table

    print(text_table(environment_facts()))
    return 0


def _demo(args: argparse.Namespace) -> int:
    """The quickstart path, headless: data, training, base vs tuned, export (checked in plain
    transformers), report.html."""
    import workbench as wb
    from workbench.report import write_report
    from workbench.tasks import json_valid, records_to_json

    existed = Path(args.run_dir).exists()
    session = wb.Session(args.run_dir)
    _section("model")
    try:
        print(session.load_model(args.model))
    except wb.WorkbenchError:
        if not existed:  # a model that does not load leaves no empty run folder behind
            with contextlib.suppress(OSError):
                Path(args.run_dir).rmdir()
        raise
    _section("data: free-text records -> JSON")
    train, test = records_to_json(args.train_size, args.test_size)
    report = session.load_data(train, validation=test)
    print(report)
    longest = int(report.lengths["total"].max)
    try:
        print(session.estimate_memory(seq_len=longest, batch_size=args.batch_size))
    except wb.SpecError as error:  # a family the estimate does not model: train anyway
        print(f"no memory estimate: {error}")
    _section("training")
    run = session.train(
        epochs=args.epochs,
        max_steps=args.max_steps,
        lr=args.lr,
        batch_size=args.batch_size,
        lora=wb.LoRA(r=8),
        eval_every=4,
        wait=True,
    )
    _section("evaluation: base vs tuned on held-out records")
    evaluation = session.evaluate(
        metrics=["exact_match", json_valid], max_new_tokens=args.max_new_tokens
    )
    print(evaluation)
    _section("export")
    folder = session.export("export/merged", overwrite=True)
    check = session.check_export("export/merged", max_new_tokens=args.max_new_tokens)
    print(check.table())  # check_export has printed its summary line
    page = write_report(
        session.run_dir / "report.html",
        "Tuning Workbench demo",
        data_report=report,
        history=run.history,
        evaluation=evaluation,
        summary=_summary_lines(session, run, evaluation, folder, check),
    )
    print("\n".join(_summary_lines(session, run, evaluation, folder, check)))
    print(f"report:   {page}")
    return 0 if run.state == "finished" else 1


def _section(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def _summary_lines(session, run, evaluation, folder, check) -> list[str]:
    match = evaluation.scores.get("exact_match", {})
    ties = f", {check.near_tie_count} more at near ties" if check.near_tie_count else ""
    return [
        f"model:    {session.loaded.source.spec}",
        f"training: {run.state} after {run.status.step} steps",
        f"exact match on {len(evaluation.rows)} held-out records: "
        f"base {match.get('base', 0):.2f} -> tuned {match.get('tuned', 0):.2f}",
        f"exported: {folder}",
        f"export check in plain transformers: {check.same_count} of {len(check.cases)} answers "
        f"the same{ties}",
    ]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m workbench",
        description="Tuning Workbench: fine-tune small language models in a notebook.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="versions, device, cache and built-in models")
    info.set_defaults(run=_info, usage_of=info)
    demo = commands.add_parser(
        "demo", help="the quickstart headless: data, training, base vs tuned, export, report"
    )
    demo.add_argument("--model", default=DEFAULT_MODEL, help="model spec (default: %(default)s)")
    demo.add_argument(
        "--run-dir", type=_folder, default=Path("runs/demo"), help="(default: %(default)s)"
    )
    count = "(default: %(default)s)"
    demo.add_argument("--train-size", type=_positive(int), default=64, help=f"rows {count}")
    demo.add_argument("--test-size", type=_positive(int), default=16, help=f"rows {count}")
    demo.add_argument("--epochs", type=_positive(float), default=2, help=count)
    demo.add_argument("--max-steps", type=_positive(int), default=None, help="overrides --epochs")
    demo.add_argument("--batch-size", type=_positive(int), default=8, help=count)
    demo.add_argument("--lr", type=_positive(float), default=5e-4, help=count)
    demo.add_argument(
        "--max-new-tokens", type=_positive(int), default=48, help=f"per answer {count}"
    )
    demo.set_defaults(run=_demo, usage_of=demo)
    return parser


def _positive(kind: type) -> Any:
    """An argparse type: a positive ``kind`` (a finite one), refused before anything runs.

    Examples:
        >>> steps = _positive(int)
        >>> steps("3"), steps("1e3"), _positive(float)("2.5")
        (3, 1000, 2.5)
        >>> steps("2.5")
        Traceback (most recent call last):
        argparse.ArgumentTypeError: '2.5' is not a whole number
    """

    def parse(text: str) -> Any:
        value = _number(text, kind)
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} must be a finite number above 0")
        if isinstance(value, float) and kind is int and not value.is_integer():
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
        return kind(value)

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _number(text: str, kind: type) -> int | float:
    """``text`` as a float, or for an ``int`` one written as one, that int (exact however
    large)."""
    with contextlib.suppress(ValueError):
        return int(text) if kind is int else float(text)
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _folder(text: str) -> Path:
    """An argparse type: a folder path, not an empty one (which meant the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("give a folder, e.g. runs/demo")
    return Path(text)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    ``demo`` loads the built-in Gemma and trains it (minutes), so only ``info`` runs here;
    versions and paths differ from machine to machine.

    Examples:
        >>> main(["info"])  # doctest: +ELLIPSIS
        python                 ...
        tuning-workbench       ...
        ...
        built-in gemma-3-270m  ...
        0
    """
    from workbench.errors import WorkbenchError

    args, unknown = _parser().parse_known_args(argv)
    if unknown:  # named by the command's own usage, not the top level's
        args.usage_of.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return args.run(args)
    except WorkbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a run stopped by Ctrl-C keeps its checkpoint
        where = getattr(args, "run_dir", None)
        kept = f"; {where} keeps what was done (Session.resume(folder) goes on)" if where else ""
        print(f"interrupted{kept}", file=sys.stderr)
        return 130
