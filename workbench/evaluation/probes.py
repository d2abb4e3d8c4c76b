"""The probe-prompt timeline of a training run, as flat records for the panel.

Two layouts of ``probes.jsonl`` are read: flat records ``{step, prompt, output, base}``, and
the training loop's ``{step, base: bool, outputs: [...]}`` per evaluation, whose prompts are
listed in ``run.json`` (``probes`` or ``probe_prompts``); the record marked ``base`` holds
the base model's answers.

Examples:
    >>> flat_probes([{"step": 0, "base": True, "outputs": ["b"]},
    ...              {"step": 5, "base": False, "outputs": ["t"]}], ["Q?"])
    [{'step': 5, 'prompt': 'Q?', 'output': 't', 'base': 'b'}]
"""

from __future__ import annotations

import json
from pathlib import Path

from workbench._io import read_jsonl

__all__ = ["flat_probes", "read_probes"]


def flat_probes(records: list[dict], prompts: list[str]) -> list[dict]:
    """Normalise probe records to ``{step, prompt, output, base}``.

    Examples:
        >>> flat_probes([{"step": 1, "prompt": "p", "output": "o", "base": "b"}], [])
        [{'step': 1, 'prompt': 'p', 'output': 'o', 'base': 'b'}]
    """
    flat = [r for r in records if "prompt" in r and "output" in r]
    base_rows = [r for r in records if r.get("base") is True and "outputs" in r]
    base = base_rows[0]["outputs"] if base_rows else []
    for record in records:
        if "outputs" not in record or record.get("base") is True:
            continue
        for k, output in enumerate(record["outputs"]):
            prompt = prompts[k] if k < len(prompts) else f"probe {k}"
            flat.append(
                {
                    "step": record.get("step"),
                    "prompt": prompt,
                    "output": output,
                    "base": base[k] if k < len(base) else None,
                }
            )
    return flat


def read_probes(run_dir: str | Path) -> tuple[dict, ...]:
    """Read a run folder's ``probes.jsonl`` (empty when it has none).

    Examples:
        >>> read_probes("/nonexistent-run")
        ()
    """
    folder = Path(run_dir)
    records = read_jsonl(folder / "probes.jsonl")
    prompts: list[str] = []
    meta = folder / "run.json"
    if meta.is_file():
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            data = {}
        prompts = list(data.get("probes") or data.get("probe_prompts") or [])
    return tuple(flat_probes(records, prompts))
