"""Does a merged or adapter export answer like the tuned model? Greedy, in plain transformers.

The export is loaded in a separate Python process that never imports the workbench, as a
user's script or a serving stack would load it:

- a merged folder (``export(..., format="safetensors")``): ``AutoModelForCausalLM`` and
  ``AutoTokenizer`` from the folder, its ``generation_config.json`` saying when an answer ends;
- an adapter folder (``format="adapter"``): peft's ``AutoPeftModelForCausalLM``, which loads
  the base model the adapter names (``base_model_name_or_path``) and puts the adapter on it,
  quantized as the session's base was, with the folder's tokenizer and
  ``generation_config.json``, as the folder's README shows.

The folder's chat template renders the conversations; the same conversations go through the
session's model with its training template. A merge that changed the weights, an adapter
that does not fit its base, a template or an end-of-turn token the folder lacks shows up as
a different answer, compared token by token as for a GGUF (:mod:`workbench.deploy.parity`).

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
from dataclasses import replace
from pathlib import Path
from typing import Any

from workbench.deploy.parity import Conversation, ParityReport, _compared, _prompts
from workbench.errors import ModelLoadError, SpecError

__all__ = [
    "ADAPTER_WEIGHTS",
    "MERGED_WEIGHTS",
    "check_adapter",
    "check_merged",
    "is_adapter_export",
    "is_merged_export",
]

MERGED_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")

# Run by the other process: only torch and transformers, reading the job from stdin and
# writing the answers as the last line of stdout.
_CHILD = r"""
import json, os, sys, threading, time
import torch


def exit_with_parent(parent):  # a killed check leaves no model computing for nobody
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


threading.Thread(target=exit_with_parent, args=(os.getppid(),), daemon=True).start()
from transformers import AutoModelForCausalLM, AutoTokenizer

job = json.loads(sys.stdin.read())
tokenizer = AutoTokenizer.from_pretrained(job["folder"])
if job["adapter"]:  # as the adapter folder's README says to load it
    from peft import AutoPeftModelForCausalLM
    from transformers import BitsAndBytesConfig, GenerationConfig

    options = {"dtype": getattr(torch, job["dtype"])}
    if job["quantization"]:
        options["quantization_config"] = BitsAndBytesConfig.from_dict(job["quantization"])
    model = AutoPeftModelForCausalLM.from_pretrained(job["folder"], **options).eval()
    model.generation_config = GenerationConfig.from_pretrained(job["folder"])
    for module in model.modules():  # the plain 4-bit layout, as the README's lines keep it
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
else:
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
    ids = tokenizer(prompt, add_special_tokens=case["plain"]).input_ids
    with torch.no_grad():
        output = model.generate(
            torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=job["max_new_tokens"], do_sample=False,
            eos_token_id=ends or None, pad_token_id=pad,
        )
    new = output[0, len(ids):].tolist()
    ended = next((token for token in new if token in ends), None)
    answer = new[: new.index(ended)] if ended is not None else new
    text = tokenizer.decode(answer)  # as the session's: special tokens written stay
    answers.append({"prompt_ids": ids, "answer_ids": answer, "text": text, "ended_at": ended})
print("\n" + json.dumps(answers))
"""


def is_adapter_export(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a peft adapter (``adapter_config.json`` and weights).

    Examples:
        >>> is_adapter_export("/nonexistent")
        False
    """
    return _holds(Path(path), "adapter_config.json", ADAPTER_WEIGHTS)


def is_merged_export(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a merged model (``config.json`` and safetensors).

    Examples:
        >>> is_merged_export("/nonexistent")
        False
    """
    return _holds(Path(path), "config.json", MERGED_WEIGHTS)


def _holds(folder: Path, config: str, weights: Sequence[str]) -> bool:
    has_weights = any((folder / name).is_file() for name in weights)
    return folder.is_dir() and (folder / config).is_file() and has_weights


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
    job = {"adapter": False}
    return _check_in_plain_transformers(
        folder, job, model, tokenizer, template, conversations, raw_prompts, max_new_tokens
    )


def check_adapter(
    folder: str | Path,
    model: Any,
    tokenizer: Any,
    template: Any = None,
    conversations: Sequence[Conversation] = (),
    raw_prompts: Sequence[tuple[str, str]] = (),
    max_new_tokens: int = 32,
) -> ParityReport:
    """Run conversations greedily through ``model`` and through the adapter ``folder`` loaded
    by plain peft on its base model in another process; compare.

    Takes the arguments of :func:`check_merged`. The base is loaded in ``model``'s dtype and,
    when ``model``'s base is quantized (QLoRA), with the same bitsandbytes settings.

    Raises:
        SpecError: ``folder`` is not an adapter export, its base model is not where the
            adapter says, nothing to compare, or the folder has no chat template.
        ModelLoadError: peft could not load or run the adapter (its words).

    Examples:
        A merged model's folder is no adapter:

        >>> from workbench.models.tiny import build_tiny_model
        >>> folder = build_tiny_model("/tmp/wb-doc-adapter-check")
        >>> check_adapter(folder, None, None)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.errors.SpecError: /tmp/wb-doc-adapter-check is not an adapter export ...
    """
    folder = Path(folder)
    if not is_adapter_export(folder):
        raise SpecError(
            f"{folder} is not an adapter export (adapter_config.json and "
            "adapter_model.safetensors)."
        )
    base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base or not (Path(base).is_dir() or (folder / base).is_dir()):
        raise SpecError(
            f"{folder}: the adapter's base model {base!r} (base_model_name_or_path in "
            "adapter_config.json) is not on this machine, so peft cannot load the adapter."
        )
    quantization = getattr(model.config, "quantization_config", None)
    if quantization is not None and not isinstance(quantization, dict):
        quantization = quantization.to_dict()
    dtype = str(next(p.dtype for p in model.parameters() if p.is_floating_point()))
    job = {"adapter": True, "dtype": dtype.removeprefix("torch."), "quantization": quantization}
    report = _check_in_plain_transformers(
        folder, job, model, tokenizer, template, conversations, raw_prompts, max_new_tokens
    )
    return replace(report, runtime="transformers + peft")


def _check_in_plain_transformers(
    folder: Path,
    job: dict[str, Any],
    model: Any,
    tokenizer: Any,
    template: Any,
    conversations: Sequence[Conversation],
    raw_prompts: Sequence[tuple[str, str]],
    max_new_tokens: int,
) -> ParityReport:
    stop, prompts = _prompts(tokenizer, template, conversations, raw_prompts)
    if conversations and not _has_chat_template(folder):
        raise SpecError(
            f"{folder} carries no chat template, so chat prompts cannot be rendered as a "
            "serving stack would: export again."
        )
    cases = [
        {
            "messages": p.messages,
            "tools": p.tools,
            "text": p.prompt,
            "plain": p.bos_added,
        }
        for p in prompts
    ]
    exported = _run_plain_transformers(folder, {**job, "cases": cases}, max_new_tokens)
    compared = [
        _compared(p, model, tokenizer, stop, max_new_tokens, *_fields(theirs))
        for p, theirs in zip(prompts, exported, strict=True)
    ]
    return ParityReport(str(folder), tuple(compared), runtime="transformers")


def _fields(answer: dict[str, Any]) -> tuple[Any, ...]:
    return answer["prompt_ids"], answer["answer_ids"], answer["text"], answer["ended_at"]


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    return config.is_file() and bool(json.loads(config.read_text()).get("chat_template"))


def _run_plain_transformers(
    folder: Path, job: dict[str, Any], max_new_tokens: int
) -> list[dict[str, Any]]:
    """The answers of the folder's model in a fresh process that imports only transformers
    (and peft, for an adapter)."""
    text = json.dumps({**job, "folder": str(folder), "max_new_tokens": max_new_tokens})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # Its stderr's last line is the reason given: a loading bar's is none (a killed child)
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", _CHILD],
        input=text,
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
        runtime = "peft" if job["adapter"] else "plain transformers"
        raise ModelLoadError(f"{runtime} could not load or run {folder}: {reason}")
    return json.loads(lines[-1])
