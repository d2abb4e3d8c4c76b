"""Benchmark: load + report 100k rows, against a plain ``datasets`` pipeline in the same run.

The baseline reads the same JSONL with ``Dataset.from_json`` and tokenizes the chat-template
rendering with the same tokenizer in one ``map`` (no masks, no checks, no report): the floor
any loader pays. Every run starts on a fresh Arrow cache, so nothing is served from an
earlier one. ``--repeat N`` runs the baseline and the batch-wise load N times each,
alternating, and keeps each one's fastest time (a shared machine is noisy).

The earlier row-by-row way (``batched=False``: every prompt rendered and checked at token
level) runs once as well, unless ``--no-row-by-row``, and its columns are compared with the
batch-wise ones: the script fails if a single token, label or problem differs.

Usage:
    .venv/bin/python benchmarks/data_load.py [--rows 100000] [--repeat 3] [--no-row-by-row]
        [--layout alpaca|qa|text|messages|sharegpt|tools|tools-mixed] [--tokenizer tiny|gemma]
        [--edged 0.3] [--empty-system]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import datasets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from workbench.data import PreparedData
from workbench.data.templates import TEMPLATES, resolve_template
from workbench.models.loading import resolve_source
from workbench.models.tiny import build_tiny_model

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "model",
    "learns",
    "from",
    "examples",
    "capital",
    "of",
    "france",
    "paris",
    "answer",
    "question",
    "record",
    "json",
    "name",
    "age",
    "city",
    "london",
    "red",
    "green",
    "blue",
    "cat",
    "bird",
]


def _text(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(low, high)))


def _alpaca(rng: random.Random, i: int) -> dict:
    return {"instruction": _text(rng, 8, 60), "input": f"id {i}", "output": _text(rng, 2, 30)}


def _messages(rng: random.Random, i: int) -> dict:
    """A conversation of 1-4 exchanges, a system turn in half of them."""
    turns = [{"role": "system", "content": f"You are helper {i}."}] if i % 2 else []
    for _ in range(rng.randint(1, 4)):
        turns.append({"role": "user", "content": _text(rng, 4, 40)})
        turns.append({"role": "assistant", "content": _text(rng, 2, 30)})
    return {"messages": turns}


def _qa(rng: random.Random, i: int) -> dict:
    """A question and its answer, named as completion datasets name them."""
    return {"question": _text(rng, 8, 60), "completion": _text(rng, 2, 30)}


def _plain_text(rng: random.Random, i: int) -> dict:
    """Raw text for continued pretraining: a few sentences."""
    return {"text": ". ".join(_text(rng, 4, 20) for _ in range(rng.randint(1, 6)))}


def _sharegpt(rng: random.Random, i: int) -> dict:
    roles = {"user": "human", "assistant": "gpt", "system": "system"}
    turns = _messages(rng, i)["messages"]
    return {"conversations": [{"from": roles[t["role"]], "value": t["content"]} for t in turns]}


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def _tools(rng: random.Random, i: int) -> dict:
    """A tool-calling exchange: a question, a call, its result, the answer (OpenAI's form)."""
    call = {"type": "function", "function": {"name": "weather", "arguments": {"city": f"c{i}"}}}
    turns = [
        {"role": "user", "content": _text(rng, 4, 40)},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": _text(rng, 2, 10)},
        {"role": "assistant", "content": _text(rng, 2, 30)},
    ]
    return {"tools": TOOLS, "messages": turns}


MORE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"The {name} in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    for name in ("time", "population")
]


def _tools_mixed(rng: random.Random, i: int) -> dict:
    """Tool rows of several shapes: one call, parallel calls, two exchanges, a call as the
    answer (xLAM's rows), with one to three tools; arguments as JSON text (OpenAI's form)."""
    offered = [*TOOLS, *MORE_TOOLS][: rng.randint(1, 3)]

    def call(k: int) -> dict:
        name = rng.choice(offered)["function"]["name"]
        arguments = json.dumps({"city": f"c{i}-{k}"})
        return {"type": "function", "function": {"name": name, "arguments": arguments}}

    def exchange(calls: int) -> list[dict]:
        turns = [
            {"role": "user", "content": _text(rng, 4, 40)},
            {"role": "assistant", "content": "", "tool_calls": [call(k) for k in range(calls)]},
        ]
        turns += [{"role": "tool", "content": _text(rng, 2, 10)} for _ in range(calls)]
        return [*turns, {"role": "assistant", "content": _text(rng, 2, 30)}]

    shape = rng.randrange(4)
    if shape == 0:
        turns = exchange(1)
    elif shape == 1:
        turns = exchange(2)
    elif shape == 2:
        turns = exchange(1) + exchange(1)
    else:
        turns = exchange(1)[:2]
    return {"tools": offered, "messages": turns}


ROW_MAKERS = {
    "alpaca": _alpaca,
    "qa": _qa,
    "text": _plain_text,
    "messages": _messages,
    "sharegpt": _sharegpt,
    "tools": _tools,
    "tools-mixed": _tools_mixed,
}


EDGES = ["", " ", "\n", "\n\n", "  ", "\t"]
_TEXTS = (
    "content",
    "value",
    "instruction",
    "output",
    "question",
    "completion",
    "text",
)  # the fields whose texts get edges


def _edged(rng: random.Random, value: object, text: bool = False) -> object:
    """Every text of a row given whitespace at its edges, as scraped and exported data has."""
    if isinstance(value, str) and value and text:
        return rng.choice(EDGES[1:]) + value + rng.choice(EDGES)
    if isinstance(value, list):
        return [_edged(rng, v, text) for v in value]
    if isinstance(value, dict):
        return {k: _edged(rng, v, k in _TEXTS) for k, v in value.items()}
    return value


def write_rows(
    path: Path, n: int, layout: str = "alpaca", edged: float = 0.0, empty_system: bool = False
) -> None:
    """``n`` rows of ``layout``; a share ``edged`` of them with whitespace around their texts;
    ``empty_system``: every conversation opens with an empty system turn (as some exports do)."""
    rng = random.Random(0)
    make = ROW_MAKERS[layout]
    with path.open("w") as fh:
        for i in range(n):
            row = make(rng, i)
            if rng.random() < edged:
                row = _edged(rng, row)
            if empty_system and "messages" in row:
                turns = [t for t in row["messages"] if t["role"] != "system"]
                row["messages"] = [{"role": "system", "content": ""}, *turns]
            fh.write(json.dumps(row) + "\n")


def _chats(batch: dict) -> list[list[dict]]:
    """Each row of a ``from_json`` batch as the chat the baseline templates."""
    if "messages" in batch:
        return batch["messages"]
    if "conversations" in batch:
        roles = {"human": "user", "gpt": "assistant", "system": "system"}
        return [
            [{"role": roles[t["from"]], "content": t["value"]} for t in turns]
            for turns in batch["conversations"]
        ]
    if "question" in batch:
        return [
            [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            for q, a in zip(batch["question"], batch["completion"], strict=True)
        ]
    return [
        [{"role": "user", "content": f"{a}\n\n{b}"}, {"role": "assistant", "content": c}]
        for a, b, c in zip(batch["instruction"], batch["input"], batch["output"], strict=True)
    ]


def baseline(path: Path, tokenizer, cache: str) -> float:
    start = time.perf_counter()
    ds = datasets.Dataset.from_json(str(path), cache_dir=cache)

    def tokenize(batch):
        if "text" in batch:  # raw text: no template
            return tokenizer(batch["text"], add_special_tokens=False)
        chats = _chats(batch)
        offered = batch.get("tools")
        if offered and any(tools != offered[0] for tools in offered):  # a list per row
            texts = [
                tokenizer.apply_chat_template(chat, tools=tools, tokenize=False)
                for chat, tools in zip(chats, offered, strict=True)
            ]
        else:  # one list (or none) for every row: one call for the batch
            tools = offered[0] if offered else None
            texts = tokenizer.apply_chat_template(chats, tools=tools, tokenize=False)
        return tokenizer(texts, add_special_tokens=False)

    ds.map(tokenize, batched=True, remove_columns=ds.column_names)
    return time.perf_counter() - start


def workbench_load(
    path: Path, tokenizer, cache: str, batched: bool = True, template: str | None = None
) -> tuple[float, float, PreparedData]:
    start = time.perf_counter()
    data = PreparedData.load(
        path,
        tokenizer,
        validation=0.1,
        max_length=1024 if template else 256,  # the tools text alone is ~190 tokens
        cache_dir=cache,
        batched=batched,
        template=template,
    )
    loaded = time.perf_counter() - start
    data.report()
    return loaded, time.perf_counter() - start - loaded, data


def assert_identical(batched: PreparedData, rows: PreparedData) -> None:
    """Every column of both splits, and the problem report, equal (else AssertionError)."""
    for split in ("train", "validation"):
        a = batched.split(split).with_format("arrow")[:]
        b = rows.split(split).with_format("arrow")[:]
        assert a.column_names == b.column_names, split
        for name in a.column_names:
            assert a.column(name).equals(b.column(name)), f"{split}: column {name} differs"
    assert batched.report().problems == rows.report().problems, "problem reports differ"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--no-row-by-row", action="store_true")
    parser.add_argument(
        "--layout",
        choices=sorted(ROW_MAKERS),
        default="alpaca",
        help="row shape: alpaca (one exchange), qa (question/completion), text (raw text, no "
        "template), messages or sharegpt (1-4 exchanges), tools "
        "(a call, its result, the answer), tools-mixed (one call, parallel calls, two "
        "exchanges or a call as the answer; 1-3 tools a row)",
    )
    parser.add_argument(
        "--tokenizer",
        choices=("tiny", "gemma"),
        default="tiny",
        help="tiny BPE (built on the spot) or the built-in Gemma 3 270M's (262k vocabulary)",
    )
    parser.add_argument(
        "--edged",
        type=float,
        default=0.0,
        help="share of rows whose texts start and end with whitespace (messy real data)",
    )
    parser.add_argument(
        "--empty-system",
        action="store_true",
        help="every conversation opens with an empty system turn (messages and tools layouts)",
    )
    args = parser.parse_args()
    datasets.disable_progress_bars()
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.tokenizer == "gemma":
            folder = resolve_source("gemma-3-270m", on_event=lambda message: None).location
        else:
            folder = build_tiny_model(root / "tiny")
        tokenizer = AutoTokenizer.from_pretrained(folder)
        # The base Gemma has no chat template; the baseline renders the one the workbench picks
        # (the built-in ChatML for tool calls: the tiny model's own has no tools).
        template = "chatml" if args.layout.startswith("tools") else None
        chosen = TEMPLATES[template] if template else resolve_template(None, tokenizer)
        tokenizer.chat_template = chosen.source
        path = root / "data.jsonl"
        write_rows(path, args.rows, args.layout, args.edged, args.empty_system)
        size_mb = path.stat().st_size / 1e6
        runs = []
        for k in range(args.repeat):
            base = baseline(path, tokenizer, str(root / f"cache-base-{k}"))
            loaded, reported, data = workbench_load(
                path, tokenizer, str(root / f"cache-wb-{k}"), template=template
            )
            runs.append((base, loaded, reported))
        base, loaded, reported = (min(r[i] for r in runs) for i in range(3))
        rows = [
            ("baseline: from_json + chat template + tokenize", base),
            ("workbench: PreparedData.load (masks, checks)", loaded),
            ("workbench: report() (lengths, duplicates, problems)", reported),
            ("workbench: load + report", loaded + reported),
        ]
        if not args.no_row_by_row:
            old, _, old_data = workbench_load(
                path, tokenizer, str(root / "cache-rows"), batched=False, template=template
            )
            assert_identical(data, old_data)
            rows.append(("earlier row-by-row load (batched=False)", old))
        report = data.report()
    print(
        f"{args.rows} {args.layout} rows ({args.edged:.0%} edged), {size_mb:.1f} MB JSONL, "
        f"{args.tokenizer} tokenizer, best of {args.repeat}"
    )
    print(f"{'step':<55}{'seconds':>9}{'x baseline':>12}")
    for name, seconds in rows:
        print(f"{name:<55}{seconds:>9.2f}{seconds / base:>12.2f}")
    print(f"problems found: {report.by_kind}")
    if not args.no_row_by_row:
        print("batch-wise and row-by-row: identical columns and problem report")
    print("load average after the run: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
