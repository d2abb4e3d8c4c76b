"""Does a merged export answer like the tuned model? Greedy, in plain transformers, elsewhere.

The merged folder (``export(..., format="safetensors")``) is loaded by plain transformers in a
separate Python process that never imports the workbench, as a user's script or a serving
stack would load it: ``AutoModelForCausalLM`` and ``AutoTokenizer`` from the folder, its chat
template rendering the conversations, its ``generation_config.json`` saying when an answer
ends. The same conversations go through the session's model with its training template. A
merge that changed the weights, a template or an end-of-turn token the folder lacks shows up
as a different answer, compared token by token as for a GGUF
(:mod:`workbench.deploy.parity`).

Examples:
    >>> MERGED_WEIGHTS
    ('model.safetensors', 'model.safetensors.index.json')
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workbench.deploy.parity import Conversation, ParityReport, _compared, _prompts
from workbench.errors import ModelLoadError, SpecError

__all__ = ["MERGED_WEIGHTS", "check_merged", "is_merged_export"]

MERGED_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")

# Run by the other process: only torch and transformers, reading the job from stdin and
# writing the answers as the last line of stdout.
_CHILD = r"""
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

job = json.loads(sys.stdin.read())
tokenizer = AutoTokenizer.from_pretrained(job["folder"])
model = AutoModelForCausalLM.from_pretrained(job["folder"]).eval()
ends = model.generation_config.eos_token_id
ends = [ends] if isinstance(ends, int) else list(ends or [])
pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (ends or [0])[0]
answers = []
for case in job["cases"]:
    prompt = case["text"]
    if case["messages"] is not None:
        prompt = tokenizer.apply_chat_template(
            case["messages"], tools=case["tools"], tokenize=False, add_generation_prompt=True
        )
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    with torch.no_grad():
        output = model.generate(
            torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=job["max_new_tokens"], do_sample=False,
            eos_token_id=ends or None, pad_token_id=pad,
        )
    new = output[0, len(ids):].tolist()
    ended = next((token for token in new if token in ends), None)
    answer = new[: new.index(ended)] if ended is not None else new
    text = tokenizer.decode(answer, skip_special_tokens=True)
    answers.append({"prompt_ids": ids, "answer_ids": answer, "text": text, "ended_at": ended})
print("\n" + json.dumps(answers))
"""


def is_merged_export(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a merged model (``config.json`` and safetensors).

    Examples:
        >>> is_merged_export("/nonexistent")
        False
    """
    folder = Path(path)
    has_weights = any((folder / name).is_file() for name in MERGED_WEIGHTS)
    return folder.is_dir() and (folder / "config.json").is_file() and has_weights


def check_merged(
    folder: str | Path,
    model: Any,
    tokenizer: Any,
    template: Any = None,
    conversations: Sequence[Conversation] = (),
    raw_prompts: Sequence[tuple[str, str]] = (),
    max_new_tokens: int = 32,
) -> ParityReport:
    """Run conversations greedily through ``model`` and through the merged ``folder`` loaded by
    plain transformers in another process; compare.

    Takes the arguments of :func:`workbench.deploy.parity.check_gguf`; the folder's own chat
    template renders ``conversations`` on its side.

    Raises:
        SpecError: ``folder`` is not a merged export, nothing to compare, or conversations to
            render and the folder has no chat template.
        ModelLoadError: plain transformers could not load or run the folder (its words).

    Examples:
        >>> from workbench.models.loading import load_model
        >>> from workbench.models.tiny import build_tiny_model
        >>> folder = build_tiny_model("/tmp/wb-doc-merged-check")
        >>> loaded = load_model(str(folder), on_event=len)
        >>> report = check_merged(folder, loaded.model, loaded.tokenizer, "chatml",
        ...                       [("q1", [{"role": "user", "content": "Hi"}])], max_new_tokens=8)
        >>> report.summary()
        'Export check of /tmp/wb-doc-merged-check: 1 of 1 answers the same.'
    """
    folder = Path(folder)
    if not is_merged_export(folder):
        raise SpecError(f"{folder} is not a merged export (config.json and model.safetensors).")
    stop, prompts = _prompts(tokenizer, template, conversations, raw_prompts)
    if conversations and not _has_chat_template(folder):
        raise SpecError(
            f"{folder} carries no chat template, so chat prompts cannot be rendered as a "
            "serving stack would: export again."
        )
    jobs = [{"messages": p.messages, "tools": p.tools, "text": p.prompt} for p in prompts]
    exported = _run_plain_transformers(folder, jobs, max_new_tokens)
    cases = [
        _compared(p.name, model, tokenizer, p.prompt, stop, max_new_tokens, *_fields(theirs))
        for p, theirs in zip(prompts, exported, strict=True)
    ]
    return ParityReport(str(folder), tuple(cases), runtime="transformers")


def _fields(answer: dict[str, Any]) -> tuple[Any, ...]:
    return answer["prompt_ids"], answer["answer_ids"], answer["text"], answer["ended_at"]


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    return config.is_file() and bool(json.loads(config.read_text()).get("chat_template"))


def _run_plain_transformers(
    folder: Path, cases: list[dict[str, Any]], max_new_tokens: int
) -> list[dict[str, Any]]:
    """The answers of the folder's model in a fresh process that imports only transformers."""
    job = json.dumps({"folder": str(folder), "cases": cases, "max_new_tokens": max_new_tokens})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD],
        input=job,
        capture_output=True,
        text=True,
        errors="replace",
        env=env,
        cwd=folder,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        said = [line for line in done.stderr.strip().splitlines() if line.strip()]
        reason = said[-1] if said else f"exit status {done.returncode}"
        raise ModelLoadError(f"plain transformers could not load or run {folder}: {reason}")
    return json.loads(lines[-1])
