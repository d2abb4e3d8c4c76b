"""Training throughput on one GPU: Trainer + peft, TRL's SFTTrainer and the workbench (issue 12).

One prepared script for a bare GPU machine with torch, transformers, peft and accelerate
installed (TRL if its wheel was carried in; without it the TRL rows say "skipped"). Nothing
is downloaded: the models are built from configs with random weights, and the data are
generated token ids, so no tokenizer or hub is needed.

Setting (issue 12): Qwen2.5-0.5B-shaped model (24 layers, hidden 896, intermediate 4864, 14
heads, 2 KV heads, vocabulary 151,936) and a Qwen2.5-1.5B shape; 960 instruction rows
(prompts of 40-300 words, answers of 4-24 words; a word is 1-2 tokens, the answer alone is
trained); LoRA r=16, alpha 32, dropout 0.05 on every linear layer; batch 8, lr 2e-4, one pass
(120 steps; the 1.5B shape runs 60 by default to keep the whole script under 5 minutes on an
H200). Every variant runs in its own process, in alternating order, from the same weights:

- ``trainer``: transformers ``Trainer`` + peft as a user writes it: base in bf16,
  ``bf16=True``, a padding collator, every other argument at its default;
- ``trl``: TRL's ``SFTTrainer`` with its defaults (gradient checkpointing on) on the same
  pre-tokenized rows (``input_ids`` + ``labels``), ``trl-nogc``: the same with gradient
  checkpointing off;
- ``workbench``: the training path of ``Session.train`` (``wrap_model`` + ``TrainLoop``,
  ``TrainSpec`` defaults, so ``packing="auto"`` packs on CUDA), ``workbench-padded``: the same
  with ``packing=False`` (the packing lever alone).

Printed per variant: tokens/s (real, non-padding tokens of the steps after the warm-up,
timed between two ``cuda.synchronize()``), peak GPU memory (``torch.cuda.max_memory_allocated``
over the whole run, weights included), useful FLOPs as issue 12 defines them (4 x the base
model's parameters per real token: forward and input-gradient backward, LoRA and padding not
counted) as a share of a bf16 matmul peak measured in this run, the mean train loss of the
last 10 steps, and the mean token loss on the same 32 held-out rows for every variant.

Usage::

    python benchmarks/gpu_throughput.py                       # on the GPU machine
    python benchmarks/gpu_throughput.py --shapes 0.5b --variants trainer,workbench
    python benchmarks/gpu_throughput.py --smoke               # tiny config on CPU, < 1 minute
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

VARIANTS = ("trainer", "trl", "trl-nogc", "workbench", "workbench-padded")
SHAPES = {
    "0.5b": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
    ),
    "1.5b": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
    ),
    "tiny": dict(  # --smoke: the same family, small enough for a CPU
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1024,
    ),
}
STEPS = {"0.5b": 120, "1.5b": 60, "tiny": 4}
ROWS, HELD_OUT, BATCH, LR, WARMUP_STEPS, LAST = 960, 32, 8, 2e-4, 5, 10
SMOKE = {"rows": 16, "held_out": 4, "batch": 4, "warmup": 1}
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
PAD_ID, EOS_ID = 0, 1
SKIPPED = "skipped"


# -- data -----------------------------------------------------------------------------------
def make_rows(n: int, vocab: int, seed: int, words=(40, 300), answer=(4, 24)) -> list[dict]:
    """Deterministic instruction rows as token ids: ``input_ids`` and ``labels`` (prompt -100).

    A fixed lexicon maps each of 4,000 words to 1-2 token ids; word frequencies follow a
    Zipf-like law, so rows look like text to the model without a tokenizer.
    """
    lexicon_rng = random.Random(12)
    low = 16  # ids below are special (pad 0, eos 1, headers)
    lexicon = [
        [lexicon_rng.randrange(low, vocab) for _ in range(1 + (lexicon_rng.random() < 0.3))]
        for _ in range(4000)
    ]
    weights = [1.0 / (rank + 10) for rank in range(len(lexicon))]
    rng = random.Random(seed)
    header, turn = [2, 3, 4], [5, 6]
    rows = []
    for _ in range(n):
        prompt_words = rng.choices(lexicon, weights, k=rng.randint(*words))
        answer_words = rng.choices(lexicon, weights, k=rng.randint(*answer))
        prompt = header + [t for w in prompt_words for t in w] + turn
        reply = [t for w in answer_words for t in w] + [EOS_ID]
        rows.append({"input_ids": prompt + reply, "labels": [-100] * len(prompt) + reply})
    return rows


def pad_batch(features: list[dict]) -> dict:
    """The padding collator: right-pad ``input_ids`` (pad id), ``labels`` (-100), mask."""
    import torch

    width = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), width), PAD_ID, dtype=torch.long)
    labels = torch.full((len(features), width), -100, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        ids[row, :n] = torch.tensor(f["input_ids"])
        labels[row, :n] = torch.tensor(f["labels"])
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


# -- model ----------------------------------------------------------------------------------
def build_model(shape: str, device: str, dtype):
    """A Qwen2-shaped causal LM with random weights (seed 0), built on ``device``."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        **SHAPES[shape],
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        bos_token_id=EOS_ID,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model


def word_tokenizer(vocab: int):
    """A stand-in tokenizer (TRL asks for one, for its pad id): token ``t<k>`` is id ``k``."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = {f"t{k}": k for k in range(vocab)}
    inner = Tokenizer(WordLevel(words, unk_token="t2"))
    return PreTrainedTokenizerFast(
        tokenizer_object=inner, pad_token="t0", eos_token="t1", unk_token="t2"
    )


def lora_config():
    from peft import LoraConfig

    return LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def held_out_loss(model, rows: list[dict], device: str) -> float:
    """Mean token loss over the held-out rows, one row at a time (the same for every variant)."""
    import torch
    from torch.nn.functional import cross_entropy

    model.eval()
    total, count = 0.0, 0
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")
    with torch.no_grad(), autocast:
        for row in rows:
            ids = torch.tensor([row["input_ids"]], device=device)
            labels = torch.tensor(row["labels"][1:], device=device)
            logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
            keep = labels != -100
            total += float(cross_entropy(logits[keep], labels[keep], reduction="sum"))
            count += int(keep.sum())
    return total / count


# -- the variants (each in its own process) -------------------------------------------------
class Clock:
    """Wall time between the end of step ``warmup`` and the end of the last step (synced)."""

    def __init__(self, device: str, warmup: int, steps: int) -> None:
        self.device, self.warmup, self.steps = device, warmup, steps
        self.start = self.end = None

    def step_done(self, step: int) -> None:
        if step not in (self.warmup, self.steps):
            return
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
        if step == self.warmup:
            self.start = time.perf_counter()
        else:
            self.end = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.end - self.start


def counting(collate, lengths: list[int]):
    """Wrap a collator so the real (non-padding) tokens of each batch are recorded in order."""

    def wrapped(features):
        lengths.append(sum(len(f["input_ids"]) for f in features))
        return collate(features)

    return wrapped


def _hf_training(variant: str, model, train: list[dict], plan: dict, clock: Clock) -> dict:
    """Trainer + peft, or TRL's SFTTrainer; returns the batch lengths and logged losses."""
    import torch
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.step_done(state.global_step)

    on_gpu = plan["device"] == "cuda"
    common = dict(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=plan["batch"],
        max_steps=plan["steps"],
        learning_rate=LR,
        logging_steps=min(LAST, plan["steps"]),
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=42,
        use_cpu=not on_gpu,
    )
    lengths: list[int] = []
    torch.manual_seed(42)  # the adapter's initial weights, as the workbench seeds them
    if variant == "trainer":
        from peft import get_peft_model
        from transformers import Trainer, TrainingArguments

        args = TrainingArguments(bf16=on_gpu, **common)
        trainer = Trainer(
            model=get_peft_model(model, lora_config()),
            args=args,
            train_dataset=train,  # a list of dicts: no datasets package needed
            data_collator=pad_batch,
            callbacks=[Timer()],
        )
    else:
        from datasets import Dataset  # TRL depends on it
        from trl import SFTConfig, SFTTrainer

        extra = {} if on_gpu else {"bf16": False}  # TRL's default bf16 is for GPUs
        if variant == "trl-nogc":
            extra["gradient_checkpointing"] = False
        args = SFTConfig(**common, **extra)
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(train),
            processing_class=word_tokenizer(model.config.vocab_size),
            peft_config=lora_config(),
            callbacks=[Timer()],
        )
    trainer.data_collator = counting(trainer.data_collator, lengths)
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {"model": trainer.model, "lengths": lengths, "last_loss": losses[-1]}


def _workbench_training(variant: str, model, train: list[dict], plan: dict, clock: Clock) -> dict:
    """The workbench's training path: the adapter and loop Session.train builds."""
    from workbench.train import LoRA, TrainSpec
    from workbench.train.batches import Examples
    from workbench.train.loop import TrainLoop
    from workbench.train.prepare import wrap_model

    spec = TrainSpec(
        max_steps=plan["steps"],
        batch_size=plan["batch"],
        lr=LR,
        warmup=0,
        lora=LoRA(**LORA),
        seed=42,
        packing=False if variant == "workbench-padded" else "auto",
    )
    examples = Examples.from_rows([r["input_ids"] for r in train], [r["labels"] for r in train])
    peft_model = wrap_model(model, spec)
    loop = TrainLoop(peft_model, PAD_ID, examples, None, spec, total_steps=plan["steps"])
    losses = []
    for step in range(1, plan["steps"] + 1):
        losses.append(loop.train_step().loss)
        clock.step_done(step)
    lengths = [int(examples.lengths[loop.batch_at(k)].sum()) for k in range(plan["steps"])]
    note = loop.packing.reason if loop.packing is not None else ""
    return {
        "model": peft_model,
        "lengths": lengths,
        "last_loss": sum(losses[-LAST:]) / len(losses[-LAST:]),
        "note": note,
    }


def worker(variant: str, shape: str, plan: dict, out: Path) -> None:
    """Train one variant in this process and write its measurements as JSON."""
    import torch

    device = plan["device"]
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    vocab = SHAPES[shape]["vocab_size"]
    words = (40, 300) if shape != "tiny" else (10, 40)
    train = make_rows(plan["rows"], vocab, seed=1, words=words)
    held_out = make_rows(plan["held_out"], vocab, seed=2, words=words)
    model = build_model(shape, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    clock = Clock(device, plan["warmup"], plan["steps"])
    run = _workbench_training if variant.startswith("workbench") else _hf_training
    result = run(variant, model, train, plan, clock)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    tokens = sum(result["lengths"][plan["warmup"] : plan["steps"]])
    out.write_text(
        json.dumps(
            {
                "variant": variant,
                "shape": shape,
                "steps": plan["steps"],
                "params": params,
                "tokens_per_s": tokens / clock.seconds,
                "useful_flops": 4.0 * params * tokens / clock.seconds,
                "peak_gib": None if peak is None else peak / 2**30,
                "train_loss": result["last_loss"],
                "held_out_loss": held_out_loss(result["model"], held_out, device),
                "seconds": clock.seconds,
                "note": result.get("note", ""),
            }
        )
    )


# -- the parent -----------------------------------------------------------------------------
def matmul_peak(device: str) -> float:
    """FLOP/s of a square matmul (bf16 8192^3 on a GPU, float32 1024^3 on CPU), best of 10."""
    import torch

    n, dtype = (8192, torch.bfloat16) if device == "cuda" else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for k in range(13):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        if k >= 3:  # the first calls pick kernels
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def versions() -> str:
    import torch

    found = []
    for name in ("torch", "transformers", "peft", "accelerate", "trl", "datasets"):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    if torch.cuda.is_available():
        found.append(f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})")
    else:
        found.append(f"CPU, {torch.get_num_threads()} threads")
    return ", ".join(found)


def has_trl() -> bool:
    try:
        import trl  # noqa: F401
    except ImportError:
        return False
    return True


def measure(variant: str, shape: str, plan: dict, timeout: float) -> dict:
    """Run one variant in a new process; its JSON, or a row saying why there is none."""
    if variant.startswith("trl") and not has_trl():
        return {"variant": variant, "shape": shape, SKIPPED: "trl is not installed"}
    out = Path(tempfile.mkdtemp()) / "result.json"
    cmd = [sys.executable, __file__, "--worker", variant, shape, str(out), json.dumps(plan)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"variant": variant, "shape": shape, SKIPPED: f"ran past {timeout:.0f} s"}
    if done.returncode != 0 or not out.exists():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"variant": variant, "shape": shape, SKIPPED: f"failed: {last[:200]}"}
    return json.loads(out.read_text())


def table(results: list[dict], peak: float, on_gpu: bool) -> str:
    memory = "peak GPU memory GiB" if on_gpu else "peak GPU memory"
    lines = [
        f"| shape | path | tokens/s | x trainer | {memory} | x trainer | useful TFLOP/s "
        "(% of matmul peak) | train loss (last 10 steps) | held-out loss |",
        "|" + "---|" * 9,
    ]
    base = {r["shape"]: r for r in results if r["variant"] == "trainer" and SKIPPED not in r}
    for r in results:
        if SKIPPED in r:
            lines.append(f"| {r['shape']} | {r['variant']} | {SKIPPED}: {r[SKIPPED]} |" + " |" * 6)
            continue
        ref = base.get(r["shape"])
        speed = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x" if ref else "-"
        if r["peak_gib"] is None:
            peak_text, ratio = "n/a (CPU)", "-"
        else:
            peak_text = f"{r['peak_gib']:.1f}"
            ratio = f"{r['peak_gib'] / ref['peak_gib']:.2f}x" if ref else "-"
        lines.append(
            f"| {r['shape']} | {r['variant']} | {r['tokens_per_s']:,.0f} | {speed} | "
            f"{peak_text} | {ratio} | {r['useful_flops'] / 1e12:.2f} "
            f"({r['useful_flops'] / peak:.1%}) | {r['train_loss']:.4f} | "
            f"{r['held_out_loss']:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="0.5b,1.5b", help=f"of {sorted(SHAPES)}")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"of {VARIANTS}")
    parser.add_argument("--steps", type=int, default=None, help="per shape (default 120 / 60)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat, alternating the order")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per variant")
    parser.add_argument("--smoke", action="store_true", help="tiny config on CPU (< 1 minute)")
    parser.add_argument("--worker", nargs=4, metavar=("VARIANT", "SHAPE", "OUT", "PLAN"))
    args = parser.parse_args()
    if args.worker:
        variant, shape, out, plan = args.worker
        worker(variant, shape, json.loads(plan), Path(out))
        return
    import torch

    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    shapes = ["tiny"] if args.smoke else args.shapes.split(",")
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS)) + sorted(set(shapes) - set(SHAPES))
    if unknown:
        raise SystemExit(f"unknown variant or shape {unknown}; variants: {VARIANTS}")
    started = time.perf_counter()
    peak = matmul_peak(device)
    print(f"# Training throughput on one device ({versions()})")
    print(f"matmul peak measured here: {peak / 1e12:.1f} TFLOP/s ({device})", flush=True)
    results = []
    for k, shape in enumerate(shapes):
        plan = {
            "device": device,
            "steps": args.steps or STEPS[shape],
            "rows": ROWS,
            "held_out": HELD_OUT,
            "batch": BATCH,
            "warmup": WARMUP_STEPS,
        }
        if args.smoke:
            plan.update(SMOKE)
        for round_ in range(args.rounds):
            order = variants if (k + round_) % 2 == 0 else variants[::-1]  # alternate
            for variant in order:
                result = measure(variant, shape, plan, args.timeout)
                results.append(result)
                print(f"  {shape} {variant}: {json.dumps(result)}", flush=True)
    order = {v: i for i, v in enumerate(VARIANTS)}
    results.sort(key=lambda r: (shapes.index(r["shape"]), order[r["variant"]]))
    print()
    print(table(results, peak, device == "cuda"))
    notes = {r["note"] for r in results if r.get("note")}
    for note in sorted(notes):
        print(f"workbench: {note}")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
