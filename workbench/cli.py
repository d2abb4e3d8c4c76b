"""The command line: ``python -m workbench info`` and ``python -m workbench demo``.

Examples:
    >>> from workbench.cli import main
    >>> main(["--help"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import sys
from pathlib import Path

from workbench.models.builtin import BUILTIN_MODELS, DEFAULT_MODEL

__all__ = ["environment_facts", "main"]

PACKAGES = ("workbench", "torch", "transformers", "peft", "bitsandbytes", "datasets",
            "evaluate", "accelerate", "gguf", "ipywidgets", "plotly")


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
    facts.append(("cache", str(root)))
    for spec, model in BUILTIN_MODELS.items():
        entry = root / f"{spec}-{model.sha256[:12]}"
        cached = entry.exists() and verify_entry(entry) is None
        facts.append((f"built-in {spec}", "cached" if cached else "not cached yet"))
    return facts


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
    import workbench as wb

    session = wb.Session(args.run_dir)
    info = session.load_model(args.model)
    print(info)
    print()
    print(wb.estimate_memory(session.model.config, seq_len=256, batch_size=4))
    print()
    completion = session.generate(args.prompt, max_new_tokens=args.max_new_tokens)
    print(f"prompt:     {args.prompt}")
    print(f"completion: {completion}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m workbench",
        description="Tuning Workbench: fine-tune small language models in a notebook.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="versions, device, cache and built-in models")
    info.set_defaults(run=_info)
    demo = commands.add_parser("demo", help="load the built-in model and generate")
    demo.add_argument("--model", default=DEFAULT_MODEL, help="model spec (default: %(default)s)")
    demo.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    demo.add_argument("--prompt", default="The three primary colours are")
    demo.add_argument("--max-new-tokens", type=int, default=24)
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    Examples:
        >>> main(["info"])  # doctest: +SKIP
        0
    """
    from workbench.errors import WorkbenchError

    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except WorkbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
