"""Training throughput on CPU: transformers Trainer + peft (as a user writes it) vs ours.

Both train the same model on the same generated instruction data (prompts of varied length,
longer than the answers) with the same LoRA settings (r=16, alpha=32, all linear layers),
batch 4, lr 2e-4, one pass over ``steps * 4`` examples. Each variant runs in its own process
so peak RSS is its own. Printed per model: examples/s and tokens/s over the steps after the
first, peak RSS, the eval loss of the trained adapter on held-out examples (same function for
both), an estimate of executed GFLOP/s against a float32 matmul peak measured here, and the
load average. The table is also written to benchmarks/results.md.

Usage::

    .venv/bin/python benchmarks/train_throughput.py                 # tiny model and Gemma
    .venv/bin/python benchmarks/train_throughput.py --models tiny
    # padding-free packing (TrainSpec(packing=True)) as a third variant, table printed only:
    .venv/bin/python benchmarks/train_throughput.py --variants trainer,ours,packed --no-write
    # the training forward under torch.compile (TrainSpec(compile=True)), likewise:
    .venv/bin/python benchmarks/train_throughput.py --variants trainer,ours,compiled --no-write
    BENCH_GEMMA_STEPS=24 .venv/bin/python benchmarks/train_throughput.py --models gemma
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("WORKBENCH_CACHE", str(REPO / ".cache" / "workbench"))
sys.path.insert(0, str(REPO))

BATCH, MAX_LEN, EVAL_EXAMPLES = 4, 256, 8
STEPS = {"tiny": 24, "gemma": int(os.environ.get("BENCH_GEMMA_STEPS", "6"))}
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
NAMES = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Margaret"]
CITIES = ["London", "Paris", "Lagos", "Lima", "Osaka", "Oslo", "Pune", "Quito", "Rome"]
FIELDS = ["name", "age", "city", "team", "role", "language", "hobby", "pet", "colour", "food"]


def make_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """Instruction examples: a long, varied prompt and a short JSON answer."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        fields = rng.sample(FIELDS, rng.randint(3, len(FIELDS)))
        values = {
            f: rng.choice(NAMES if f == "name" else CITIES)
            if f in ("name", "city")
            else str(rng.randint(18, 90))
            if f == "age"
            else f"{f}-{rng.randint(1, 99)}"
            for f in fields
        }
        notes = " ".join(
            rng.choice(
                ["Note:", "Also,", "Remember", "the", "record", "is", "from", "a", "survey", "form"]
            )
            for _ in range(rng.randint(5, 60))
        )
        record = ", ".join(f"{k} {v}" for k, v in values.items())
        keep = fields[: rng.randint(2, 3)]
        prompt = (
            f"### Instruction:\nExtract the fields {', '.join(keep)} as JSON. {notes}\n"
            f"### Input:\n{record}\n### Response:\n"
        )
        rows.append((prompt, json.dumps({k: values[k] for k in keep})))
    return rows


def tokenize(tokenizer, rows: list[tuple[str, str]]) -> dict[str, list]:
    """input_ids / labels (prompt masked) / attention_mask, cut at MAX_LEN tokens."""
    out = {"input_ids": [], "labels": [], "attention_mask": []}
    for prompt, answer in rows:
        p = tokenizer(prompt, add_special_tokens=True).input_ids
        a = [*tokenizer(answer, add_special_tokens=False).input_ids, tokenizer.eos_token_id]
        ids = (p + a)[:MAX_LEN]
        labels = ([-100] * len(p) + a)[:MAX_LEN]
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["attention_mask"].append([1] * len(ids))
    return out


def load(model_name: str):
    from workbench.models.loading import load_model

    if model_name == "gemma":
        return load_model("gemma-3-270m", dtype="float32", device="cpu", on_event=lambda m: None)
    from workbench.models.tiny import build_tiny_model

    folder = build_tiny_model(
        Path(tempfile.mkdtemp()) / "tiny", hidden=256, layers=4, vocab_size=2048
    )
    return load_model(str(folder), on_event=lambda m: None)


def eval_loss(model, tokenizer, data: dict[str, list]) -> float:
    """Mean token loss over held-out examples, one at a time, full logits (same for both)."""
    import torch

    from workbench.train.batches import Examples, collate
    from workbench.train.loss import token_loss_sum

    examples = Examples.from_rows(data["input_ids"], data["labels"])
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(examples)):
            loss, n = token_loss_sum(model, collate(examples, [i], 0), fast=False)
            total, count = total + float(loss), count + n
    return total / count


def flops(body_params: int, hidden: int, vocab: int, body_tokens: int, head_rows: int) -> float:
    """Executed FLOPs of LoRA training on a frozen base: forward 2x, input-grad backward 2x."""
    return 4.0 * body_params * body_tokens + 4.0 * hidden * vocab * head_rows


def body_params(model) -> int:
    head = model.get_output_embeddings().weight
    emb = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters() if p is not head and p is not emb)


def run_trainer(loaded, train: dict, steps: int) -> dict:
    """The baseline: peft + transformers Trainer with a padding collator."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    model = get_peft_model(
        loaded.model,
        LoraConfig(
            r=LORA["r"],
            lora_alpha=LORA["alpha"],
            lora_dropout=LORA["dropout"],
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
    )
    shapes, times = [], []
    collator = DataCollatorForSeq2Seq(loaded.tokenizer, padding=True, label_pad_token_id=-100)

    def collate(features):
        batch = collator(features)
        shapes.append(
            (
                int(batch["attention_mask"].sum()),
                batch["input_ids"].numel(),
                int((batch["labels"][:, 1:] != -100).sum()),
            )
        )
        return batch

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.start)

    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=BATCH,
        max_steps=steps,
        learning_rate=2e-4,
        lr_scheduler_type="linear",
        warmup_steps=0,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        seed=42,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict(train),
        data_collator=collate,
        callbacks=[Timer()],
    )
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {"model": model, "times": times, "shapes": shapes[:steps], "losses": losses}


def run_ours(
    loaded, train: dict, steps: int, packing: bool | str = "auto", compile: bool = False
) -> dict:
    """Our path: start_run with the same LoRA settings (``packing=True``: packed rows;
    ``compile=True``: the training forward under torch.compile, its first step not timed)."""
    from workbench.events import EventHub
    from workbench.train import LoRA, TrainSpec, start_run
    from workbench.train.batches import collate
    from workbench.train.packing import pack

    spec = TrainSpec(
        max_steps=steps,
        batch_size=BATCH,
        lr=2e-4,
        warmup=0,
        lora=LoRA(**LORA),
        seed=42,
        save_every=10_000,
        packing=packing,
        compile=compile,
    )
    run = start_run(
        loaded.model,
        loaded.tokenizer,
        train,
        None,
        spec,
        Path(tempfile.mkdtemp()) / "run",
        EventHub(),
        {},
        wait=False,
    )
    run.wait()
    records = [r for r in run.history if r.kind == "train"]
    ends = [r.elapsed for r in records]
    times = [b - a for a, b in zip([0.0, *ends[:-1]], ends, strict=True)]
    shapes = []
    packed = run.loop.packing is not None and run.loop.packing.on
    for micro in range(steps):
        rows = run.loop.batch_at(micro)
        batch = pack(run.loop.train, rows) if packed else collate(run.loop.train, rows, 0)
        shapes.append(
            (
                int(batch["lengths"].sum()),
                batch["input_ids"].numel(),
                int((batch["labels"][:, 1:] != -100).sum()),
            )
        )
    return {
        "model": run.model,
        "times": times,
        "shapes": shapes,
        "losses": [r.loss for r in records],
        "error": run.status.error,
    }


def worker(variant: str, model_name: str, out: Path) -> None:
    """Train one variant in this process and write its measurements as JSON."""
    import torch

    torch.manual_seed(0)
    loaded = load(model_name)
    steps = STEPS[model_name]
    train = tokenize(loaded.tokenizer, make_rows(steps * BATCH, seed=1))
    held_out = tokenize(loaded.tokenizer, make_rows(EVAL_EXAMPLES, seed=2))
    config = loaded.model.config.get_text_config()
    body = body_params(loaded.model)
    if variant == "trainer":
        result = run_trainer(loaded, train, steps)
    else:
        packing = variant == "packed" or "auto"
        result = run_ours(loaded, train, steps, packing=packing, compile=variant == "compiled")
    timed = slice(1, None)  # the first step pays one-time costs in both
    seconds = sum(result["times"][timed])
    real, padded, rows = (sum(s[k] for s in result["shapes"][timed]) for k in range(3))
    head_rows = padded if variant == "trainer" else rows
    executed = flops(body, config.hidden_size, config.vocab_size, padded, head_rows)
    out.write_text(
        json.dumps(
            {
                "variant": variant,
                "model": model_name,
                "steps": steps,
                "error": result.get("error"),
                "examples_per_s": BATCH * (steps - 1) / seconds,
                "tokens_per_s": real / seconds,
                "padding": 1 - real / padded,
                "peak_rss_gib": peak_rss_bytes() / 2**30,
                "gflops": executed / seconds / 1e9,
                "final_train_loss": result["losses"][-1],
                "eval_loss": eval_loss(result["model"], loaded.tokenizer, held_out),
                "seconds": seconds,
            }
        )
    )


def peak_rss_bytes() -> int:
    """This process's own peak RSS (VmHWM): ru_maxrss would include the parent's RSS at fork."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def matmul_peak() -> float:
    """float32 GFLOP/s of a 2048 x 2048 matmul on this machine, best of 5."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return 2 * 2048**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(model_name: str, variants: list[str]) -> list[dict]:
    results = []
    for variant in variants:
        out = Path(tempfile.mkdtemp()) / "result.json"
        cmd = [sys.executable, __file__, "--worker", variant, model_name, str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{variant} on {model_name} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(out.read_text()))
    return results


def table(results: list[dict], peak: float) -> str:
    head = (
        "| model | path | examples/s | tokens/s | padding | peak RSS GiB | GFLOP/s "
        "(% of matmul peak) | last train loss | held-out loss |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['examples_per_s']:.2f} | "
            f"{r['tokens_per_s']:.0f} | {r['padding']:.0%} | {r['peak_rss_gib']:.2f} | "
            f"{r['gflops']:.1f} ({r['gflops'] / peak:.0%}) | {r['final_train_loss']:.4f} | "
            f"{r['eval_loss']:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="tiny,gemma")
    parser.add_argument(
        "--variants", default="trainer,ours", help="trainer, ours, packed, compiled"
    )
    parser.add_argument("--no-write", action="store_true", help="print, leave results.md")
    parser.add_argument("--worker", nargs=3, metavar=("VARIANT", "MODEL", "OUT"))
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], Path(args.worker[2]))
        return
    import torch

    peak = matmul_peak()
    results, ratios = [], []
    variants = args.variants.split(",")
    for name in args.models.split(","):
        runs = measure(name, variants)
        results += runs
        for base, run in ((runs[0], r) for r in runs[1:]):
            speed = run["tokens_per_s"] / base["tokens_per_s"]
            memory = run["peak_rss_gib"] / base["peak_rss_gib"]
            ratios.append(
                f"{name}: {run['variant']} / {base['variant'].replace('trainer', 'Trainer')} = "
                f"{speed:.2f}x tokens/s, "
                f"peak RSS {memory:.2f}x"
            )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    text = "\n".join(
        [
            f"# Training throughput (CPU, {torch.get_num_threads()} threads, float32)",
            "",
            f"float32 matmul peak (2048^3, measured in this run): {peak:.1f} GFLOP/s; "
            f"load average after the run: {load}",
            "",
            table(results, peak),
            "",
            *ratios,
            "",
        ]
    )
    print(text)
    if not args.no_write:
        (REPO / "benchmarks" / "results.md").write_text(text)


if __name__ == "__main__":
    main()
