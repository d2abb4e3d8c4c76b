"""Training throughput on one GPU: Trainer + peft, TRL's SFTTrainer and the workbench (issue 12).

One prepared script for a bare GPU machine with torch, transformers, peft and accelerate
installed (bitsandbytes, TRL and datasets if their wheels were carried in: see
benchmarks/fetch_device_wheels.sh and benchmarks/gpu_device_run.sh; without one, the rows
that need it say why). Nothing is downloaded: the models are built from configs with random
weights, and the data are generated token ids, so no tokenizer or hub is needed.

Setting (issue 12): Qwen2.5-0.5B-shaped model (24 layers, hidden 896, intermediate 4864, 14
heads, 2 KV heads, vocabulary 151,936), a Qwen2.5-1.5B shape, and a Qwen2.5-3B shape on
request (``--shapes 3b``); 960 instruction rows (prompts of 40-300 words, answers of 4-24
words; a word is 1-2 tokens, so a row is 244 tokens on average, the answer alone is
trained); LoRA r=16, alpha 32, dropout 0.05 on every linear layer; batch 8, lr 2e-4. Every
variant runs in its own process, in alternating order, from the same weights (seed 0):

- ``trainer``: transformers ``Trainer`` + peft as a user writes it: base in bf16,
  ``bf16=True``, a padding collator, every other argument at its default;
- ``trl``: TRL's ``SFTTrainer`` with its defaults (gradient checkpointing on) on the same
  pre-tokenized rows (``input_ids`` + ``labels``), ``trl-nogc``: the same with gradient
  checkpointing off;
- ``workbench``: the training path of ``Session.train`` (``wrap_model`` + ``TrainLoop``,
  ``TrainSpec`` defaults, so ``packing="auto"`` packs on CUDA), ``workbench-padded``: the same
  with ``packing=False`` (the packing lever alone), ``workbench-compile``: the same with
  ``TrainSpec(compile=True)`` (a row saying why where the workbench has no such field yet);
- ``trainer-qlora``: Trainer + peft on the same weights saved once and loaded 4-bit (NF4,
  double quantization, bf16 compute: peft's QLoRA recipe) with
  ``prepare_model_for_kbit_training(model)`` at its defaults, as peft's docs show it (which
  turns gradient checkpointing on); ``workbench-qlora``: ``load_model(quantization="4bit")``
  and ``wrap_model`` with ``TrainSpec(method="qlora")``, the path ``Session`` takes (whose
  ``gradient_checkpointing="auto"`` checkpoints a 4-bit base on CUDA), ``workbench-qlora-nogc``:
  the same with ``gradient_checkpointing=False`` (the speed it trades for the memory);
- ``workbench-liger``: ``workbench`` with its output-layer loss
  (``workbench.train.loss._chunked_loss``, the cross-entropy of the trained rows) replaced, in
  its own process only, by Liger-Kernel's fused linear cross-entropy
  (``LigerFusedLinearCrossEntropyLoss``, Triton): does a fused kernel from a maintained
  package pay here (issue 12)? Run last (``liger-kernel`` carried in as a wheel; Triton comes
  with CUDA torch); a row saying why on CPU or where either does not import;
- ablations of two levers found by the first GPU run: ``workbench-cudnn``, the workbench with
  attention left to PyTorch's choice (cuDNN's on Hopper) instead of
  ``workbench.train.precision.attention_kernels``; ``workbench-qlora-upcast``,
  ``workbench-qlora`` after peft's ``prepare_model_for_kbit_training`` (16-bit weights cast
  to float32), as ``wrap_model`` prepared a 4-bit base before; ``workbench-peft-inputs``,
  the workbench with peft's LoRA forward as it comes (each adapted layer keeps its own
  float32 copy of its input after dropout) instead of ``workbench.train.core.lean_lora_inputs``;
  ``workbench-mlp-as-written``, the workbench with its gated MLPs run as transformers writes
  them (four intermediate-wide tensors kept for backward) instead of
  ``workbench.train.core.lean_gated_mlps`` (two); ``workbench-norms-as-written``, its
  RMSNorms keeping float32 copies of their bfloat16 inputs, as transformers' do, instead of
  ``workbench.train.core.lean_norm_inputs``.

Printed per variant: tokens/s (real, non-padding tokens of the steps after the warm-up,
timed between two ``cuda.synchronize()``), peak GPU memory (``torch.cuda.max_memory_allocated``
over training, weights included), each against its own baseline (LoRA rows against
``trainer``, QLoRA rows against ``trainer-qlora``), useful FLOPs as issue 12 defines them (4 x
the base model's parameters per real token: forward and input-gradient backward, LoRA and
padding not counted) as a share of a bf16 matmul peak measured in this run, the mean train
loss of the last 10 steps, and the mean token loss on the same 32 held-out rows. After those,
each workbench row runs 3 more steps under torch's profiler (``--out``: ``profiles.md``): time
per step, the kernels' busy time within it (a step that waits on Python and kernel launches
shows it) and the busiest ops.

A second table (issue 12 item 4) sets each row's measured device peak (the caching
allocator's peak reservation plus the memory CUDA itself holds outside it: context, kernels,
library handles) against ``workbench.models.memory.estimate_memory`` for the same model,
batch and widest micro-batch; ``--out DIR`` writes every raw figure (estimate parts included)
to ``DIR/results.json`` so ``_OVERHEAD["cuda"]`` and ``_ALLOCATOR_FACTOR["cuda"]`` can be fitted
from one run.

Usage::

    python benchmarks/gpu_throughput.py                       # on the GPU machine
    python benchmarks/gpu_throughput.py --shapes 0.5b --variants trainer,workbench
    python benchmarks/gpu_throughput.py --shapes 3b --out /tmp/bench
    python benchmarks/gpu_throughput.py --smoke               # tiny config on CPU
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Ablations of the workbench's memory levers (workbench.train.core): each runs without one.
MLP_AS_WRITTEN = "workbench-mlp-as-written"
NORMS_AS_WRITTEN = "workbench-norms-as-written"
PEFT_INPUTS = "workbench-peft-inputs"
VARIANTS = (
    "trainer",
    "trl",
    "trl-nogc",
    "workbench",
    "workbench-padded",
    "workbench-compile",
    "trainer-qlora",
    "workbench-qlora",
    "workbench-liger",
    "workbench-cudnn",
    "workbench-qlora-upcast",
    "workbench-peft-inputs",
    "workbench-qlora-nogc",
    "workbench-mlp-as-written",
    "workbench-norms-as-written",
)
# load_model(quantization="4bit")
WORKBENCH_QLORA = ("workbench-qlora", "workbench-qlora-upcast", "workbench-qlora-nogc")
QLORA = ("trainer-qlora", *WORKBENCH_QLORA)
# The figures issue 12 asks for, run first on every shape; the rest (EXTRA) after them, so a
# run cut short by --budget still has these.
CORE = ("trainer", "workbench", "trainer-qlora", "workbench-qlora")
# The memory levers' ablations first (the gated MLP's and norms' of 2026-12-05, the LoRA input's of
# 2026-12-04: their effect on the GPU's peak is the open question), then compile: on a
# host-bound machine fewer, fused launches are the lever left.
EXTRA = (
    MLP_AS_WRITTEN,
    NORMS_AS_WRITTEN,
    PEFT_INPUTS,
    "workbench-qlora-nogc",
    "workbench-compile",
    "trl-nogc",
    "trl",
    "workbench-padded",
    "workbench-cudnn",
    "workbench-qlora-upcast",
    "workbench-liger",
)
LIGER = "workbench-liger"  # needs CUDA: Liger-Kernel's kernels are Triton
# Gradient checkpointing as each baseline runs (TRL's default; peft's
# prepare_model_for_kbit_training turns it on by default), for the memory estimate; a
# workbench row records what its "auto" decided ("checkpointed": on for a 4-bit base on CUDA).
CHECKPOINTING = {"trl": True, "trainer-qlora": True}
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
    "3b": dict(
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
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
# Default run, sized from the one run measured so far (H200, 2026-12-04,
# benchmarks/gpu-runs/2026-12-04-h200). A step is 8 rows of 244 tokens on average, ~1,950
# real tokens. That machine's host was slow: every path waited on Python and kernel launches
# (the chip was busy 7-15% of a step), so a step took ~0.4 s at 0.5B for Trainer + peft and
# the workbench alike (4,400-4,700 tokens/s; the issue had measured 19,800 elsewhere), 0.65 s
# in 4 bits, ~0.5 s for 1.5B in 4 bits; the chip's share grows with the shape. Each row also
# paid 35-55 s of its own (a fresh process: imports, CUDA context, weights, warm-up, the
# held-out rows; each row's "phases" now say which), and the first 4-bit row of a shape
# ~17 s to save the weights it loads. At 40 and 30 steps the CORE rows (every figure issue
# 12 sets a bar for) take ~4 x 60 s per shape, ~520 s for both, so within the 9 minutes of
# gpu_device_run.sh the EXTRA rows run only when the host is faster; --budget skips what
# does not fit and says so. Issue 12's 5 minutes hold for one shape (`--shapes 0.5b
# --variants trainer,workbench,trainer-qlora,workbench-qlora`) on such a host.
DEFAULT_SHAPES = "0.5b,1.5b"
STEPS = {"0.5b": 40, "1.5b": 30, "3b": 20, "tiny": 4}
SHAPE_VARIANTS = {"0.5b": VARIANTS, "tiny": VARIANTS}  # other shapes: CORE unless --variants
ROWS, HELD_OUT, BATCH, LR, WARMUP_STEPS, LAST = 960, 32, 8, 2e-4, 5, 10
PROFILE_STEPS = 3  # workbench rows: steps profiled after the timed ones (profiles.md)
SMOKE = {"rows": 16, "held_out": 4, "batch": 4, "warmup": 1}
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
PAD_ID, EOS_ID = 0, 1
SKIPPED = "skipped"
WITHIN = 0.15  # issue 12 item 4: the estimate within 15% of the measured peak
GiB = 2**30


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
def qwen_config(shape: str):
    """The Qwen2 config of ``shape`` (Qwen2.5's RoPE base, norms and tied embeddings)."""
    from transformers import Qwen2Config

    return Qwen2Config(
        **SHAPES[shape],
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        bos_token_id=EOS_ID,
    )


def build_model(shape: str, device: str, dtype):
    """A Qwen2-shaped causal LM with random weights (seed 0), built on ``device``."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            qwen_config(shape), dtype=dtype, attn_implementation="sdpa"
        )
    return model


def count_params(shape: str) -> int:
    """Weights of the unquantized model (tied embeddings once), counted on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(qwen_config(shape))
    return sum(p.numel() for p in model.parameters())


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


def save_base(shape: str, device: str, folder: Path) -> None:
    """Save the seed-0 weights of ``shape`` (and the stand-in tokenizer) for the 4-bit loads."""
    import torch

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = build_model(shape, device, dtype)
    model.save_pretrained(folder)
    word_tokenizer(SHAPES[shape]["vocab_size"]).save_pretrained(folder)


def nf4_config(dtype):
    """peft's QLoRA recipe, the one ``load_model(quantization="4bit")`` uses too."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )


def load_base(variant: str, shape: str, plan: dict):
    """The model a variant starts from: built in 16 bits, or its saved weights loaded 4-bit."""
    import torch

    device = plan["device"]
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if variant == "trainer-qlora":
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(
            plan["base"][shape],
            quantization_config=nf4_config(dtype),
            dtype=dtype,
            device_map={"": device},
        )
    if variant in WORKBENCH_QLORA:
        from workbench.models.loading import load_model

        loaded = load_model(
            plan["base"][shape],
            quantization="4bit",
            dtype="bfloat16" if device == "cuda" else "float32",
            device=device,
            on_event=lambda message: None,
        )
        if variant == "workbench-qlora-upcast":  # peft's recipe, as wrap_model did before
            from peft import prepare_model_for_kbit_training

            return prepare_model_for_kbit_training(loaded.model, use_gradient_checkpointing=False)
        return loaded.model
    if variant.startswith("workbench") and device == "cuda":
        from workbench.models.loading import expandable_cuda_segments

        expandable_cuda_segments()  # what load_model does for a model loaded on CUDA
    return build_model(shape, device, dtype)


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


class Phases:
    """Seconds a worker spends in each phase, from its process's start (imports included).

    The timed steps are a part of ``train``; the rest is what a row costs beyond them, which
    sizes the default run (on the 2026-12-04 H200 rows took 73-93 s for 33-52 s of steps).
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        try:
            import psutil

            self.last = time.perf_counter() - (time.time() - psutil.Process().create_time())
            self.mark("start")
        except Exception:  # no psutil: the first phase starts here
            self.last = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self.last, 2)
        self.last = now


class GpuMemory:
    """The CUDA memory figures of one variant, in bytes (empty on CPU).

    ``context_*``: what the device holds for this process outside torch's caching allocator
    (CUDA context, kernel images, cuBLAS/bitsandbytes handles), read as used device memory
    minus the allocator's reservation; the parent process holds no CUDA context, so nothing
    else is on the device. ``device_peak``: the allocator's peak reservation plus
    ``context_end``, the figure an out-of-memory error is about and the one
    ``estimate_memory`` models on CUDA.
    """

    def __init__(self, device: str) -> None:
        self.on = device == "cuda"
        self.facts: dict = {}
        if self.on:
            import torch

            torch.zeros(1, device="cuda")  # create the context
            self.facts["context_start"] = self._outside()

    def _outside(self) -> int:
        import torch

        free, total = torch.cuda.mem_get_info()
        self.facts["device_total"] = total
        return total - free - torch.cuda.memory_reserved()

    def loaded(self) -> None:
        """The model is on the device: record its weights, start the peak from here."""
        if self.on:
            import torch

            torch.cuda.synchronize()
            self.facts["loaded_allocated"] = torch.cuda.memory_allocated()
            self.facts["loaded_reserved"] = torch.cuda.memory_reserved()
            torch.cuda.reset_peak_memory_stats()

    def trained(self) -> None:
        """Training is over: record the peaks."""
        if self.on:
            import torch

            torch.cuda.synchronize()
            self.facts["peak_allocated"] = torch.cuda.max_memory_allocated()
            self.facts["peak_reserved"] = torch.cuda.max_memory_reserved()
            self.facts["context_end"] = self._outside()
            self.facts["device_peak"] = self.facts["peak_reserved"] + self.facts["context_end"]


def counting(collate, lengths: list[int], widths: list[int], trained: list[int]):
    """Wrap a collator so each batch's real tokens, width and trained labels are recorded."""

    def wrapped(features):
        sizes = [len(f["input_ids"]) for f in features]
        lengths.append(sum(sizes))
        widths.append(max(sizes))
        trained.append(sum(sum(t != -100 for t in f["labels"]) for f in features))
        return collate(features)

    return wrapped


def _hf_training(variant: str, model, train: list[dict], plan: dict, clock: Clock) -> dict:
    """Trainer + peft (16-bit or 4-bit base), or TRL's SFTTrainer; lengths and losses."""
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
    widths: list[int] = []
    trained: list[int] = []
    torch.manual_seed(42)  # the adapter's initial weights, as the workbench seeds them
    if variant in ("trainer", "trainer-qlora"):
        from peft import get_peft_model
        from transformers import Trainer, TrainingArguments

        if variant == "trainer-qlora":
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model)  # peft's docs: defaults
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
    trainer.data_collator = counting(trainer.data_collator, lengths, widths, trained)
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    steps = plan["steps"]  # the dataloader may have fetched one batch ahead
    return {
        "model": trainer.model,
        "lengths": lengths[:steps],
        "widths": widths[:steps],
        "trained": trained[:steps],
        "last_loss": losses[-1],
        "packed": False,
    }


def workbench_spec(variant: str, plan: dict):
    """The ``TrainSpec`` of a workbench variant (raises where the workbench lacks a field)."""
    from workbench.train import LoRA, TrainSpec

    extra = {}
    if variant == "workbench-padded":
        extra["packing"] = False
    if variant == "workbench-compile":
        extra["compile"] = True  # TypeError until TrainSpec has the field: a "failed" row
    if variant in WORKBENCH_QLORA:
        extra["method"] = "qlora"
    if variant == "workbench-qlora-nogc":
        extra["gradient_checkpointing"] = False
    return TrainSpec(
        max_steps=plan["steps"],
        batch_size=plan["batch"],
        lr=LR,
        warmup=0,
        lora=LoRA(**LORA),
        seed=42,
        **extra,
    )


def _workbench_training(spec, model, train: list[dict], plan: dict, clock: Clock) -> dict:
    """The workbench's training path: the adapter and loop Session.train builds."""
    from workbench.train.batches import Examples
    from workbench.train.loop import TrainLoop
    from workbench.train.prepare import choose_checkpointing, wrap_model

    examples = Examples.from_rows([r["input_ids"] for r in train], [r["labels"] for r in train])
    checkpointed = choose_checkpointing(model, spec)[0].gradient_checkpointing
    peft_model = wrap_model(model, spec)
    loop = TrainLoop(peft_model, PAD_ID, examples, None, spec, total_steps=plan["steps"])
    losses = []
    for step in range(1, plan["steps"] + 1):
        losses.append(loop.train_step().loss)
        clock.step_done(step)
    batches = [loop.batch_at(k) for k in range(plan["steps"])]
    rows = [examples.lengths[b] for b in batches]
    labelled = [int((labels != -100).sum()) for labels in examples.labels]
    packed = loop.packing is not None and loop.packing.on
    return {
        "model": peft_model,
        "lengths": [int(r.sum()) for r in rows],
        "widths": [int(r.max()) for r in rows],
        "trained": [sum(labelled[i] for i in b) for b in batches],
        "last_loss": sum(losses[-LAST:]) / len(losses[-LAST:]),
        "note": loop.packing.reason if loop.packing is not None else "",
        "packed": packed,
        "checkpointed": checkpointed,
        "more_steps": loop.train_step,
    }


def profile_steps(step, device: str, count: int = PROFILE_STEPS) -> dict:
    """Run ``step()`` ``count`` more times under torch's profiler; where the time goes.

    Run after the timed steps and the held-out loss, so neither moves. On a GPU:
    ``wall_ms`` and ``gpu_busy_ms`` per step (the kernels' summed time: far below the wall
    time means the step waits on Python and kernel launches, not on the chip), ``kernels``
    per step, and the ops taking the most device time; on CPU the ops taking the most CPU
    time. ``{"error": ...}`` where the profiler fails: the row keeps its figures.
    """
    try:
        import torch
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU]
        if device == "cuda":
            activities.append(ProfilerActivity.CUDA)
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            start = time.perf_counter()
            for _ in range(count):
                step()
            if device == "cuda":
                torch.cuda.synchronize()
            wall = time.perf_counter() - start
        found = {"steps": count, "wall_ms": 1e3 * wall / count}
        if device == "cuda":
            kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
            busy = sum(e.time_range.elapsed_us() for e in kernels) / 1e3
            found.update(gpu_busy_ms=busy / count, kernels=len(kernels) / count)
            by = "self_device_time_total"
        else:
            by = "self_cpu_time_total"
        found["table"] = prof.key_averages().table(
            sort_by=by, row_limit=18, max_name_column_width=60
        )
        return found
    except Exception as err:  # a profile is extra: its failure must not lose the row
        return {"error": repr(err)}


def liger_loss():
    """Liger-Kernel's fused linear cross-entropy in the place of ``_chunked_loss``, or why not.

    ``(loss, None)``, where ``loss(hidden, head, targets, softcap)`` is the sum of the token
    cross-entropies of ``hidden`` (trained rows x hidden size) through the output layer
    ``head``, as ``workbench.train.loss._chunked_loss`` returns it; ``(None, reason)`` where
    triton or liger_kernel does not import.
    """
    try:
        import triton  # noqa: F401  # ships with CUDA torch; Liger's kernels are Triton
    except Exception as err:
        return None, f"triton cannot be imported: {err!r}"
    try:
        from liger_kernel.transformers.fused_linear_cross_entropy import (
            LigerFusedLinearCrossEntropyLoss,
        )
    except Exception as err:
        return None, f"liger_kernel cannot be imported: {err!r}"
    losses: dict = {}

    def fused(hidden, head, targets, softcap):
        cap = softcap or None  # the workbench leaves a cap of 0 out; Liger asserts cap > 0
        if cap not in losses:
            losses[cap] = LigerFusedLinearCrossEntropyLoss(reduction="sum", softcap=cap)
        # forward(lin_weight, _input, target, bias=None), as liger-kernel 0.8.5 reads
        found = losses[cap](head.weight, hidden.to(head.weight.dtype), targets, head.bias)
        if isinstance(found, tuple):  # (loss, z_loss) in versions that return both
            found = found[0]
        return getattr(found, "loss", found)  # 0.8: a CrossEntropyOutput when asked for more

    return fused, None


def warm_liger(fused, model) -> None:
    """Compile Liger's Triton kernels before the clock starts (no gradient reaches ``model``).

    Triton compiles a kernel again for an integer argument that is a multiple of 16 (here the
    count of trained rows): a step whose count is one would otherwise compile inside the
    timed steps, so both cases run once here, forward and backward.
    """
    from types import SimpleNamespace

    import torch

    head = model.get_output_embeddings()
    weight = head.weight.detach()
    bias = head.bias.detach() if head.bias is not None else None
    frozen = SimpleNamespace(weight=weight, bias=bias)
    softcap = getattr(model.config, "final_logit_softcapping", None)
    for rows in (16, 17):
        hidden = torch.zeros(rows, weight.shape[1], device=weight.device, dtype=weight.dtype)
        hidden.requires_grad_(True)
        targets = torch.arange(rows, device=weight.device)
        (fused(hidden, frozen, targets, softcap) / rows).backward()


def worker(variant: str, shape: str, plan: dict, out: Path) -> None:
    """Train one variant in this process and write its measurements as JSON."""
    device = plan["device"]
    # Before anything heavy, so a spec the workbench does not take yet fails in seconds.
    spec = workbench_spec(variant, plan) if variant.startswith("workbench") else None
    fused = None
    if variant == "workbench-cudnn":  # attention as PyTorch picks it, as before 2026-12-04
        import contextlib

        import workbench.train.precision

        workbench.train.precision.attention_kernels = lambda device: contextlib.nullcontext()
    if variant == PEFT_INPUTS:  # peft's LoRA forward, as before 2026-12-04
        import workbench.train.core

        workbench.train.core.lean_lora_inputs = lambda model: 0
    if variant == MLP_AS_WRITTEN:  # the MLP keeps its four tensors, as before 2026-12-05
        import workbench.train.core

        workbench.train.core.LEAN_MLP_ON = set()
    if variant == NORMS_AS_WRITTEN:  # float32 copies kept, as before 2026-12-05
        import workbench.train.core

        workbench.train.core.LEAN_NORM_ON = set()
    if variant == LIGER:  # the workbench with Liger's loss, in this process only
        fused, why = liger_loss()
        if why is not None:
            out.write_text(json.dumps({"variant": variant, "shape": shape, SKIPPED: why}))
            return
        import workbench.train.loss

        workbench.train.loss._chunked_loss = fused  # token_loss_sum looks it up per call
    phases = Phases()
    vocab = SHAPES[shape]["vocab_size"]
    words = (40, 300) if shape != "tiny" else (10, 40)
    train = make_rows(plan["rows"], vocab, seed=1, words=words)
    held_out = make_rows(plan["held_out"], vocab, seed=2, words=words)
    params = count_params(shape)
    phases.mark("imports_rows")
    memory = GpuMemory(device)
    model = load_base(variant, shape, plan)
    if fused is not None:
        warm_liger(fused, model)
    memory.loaded()
    phases.mark("load")
    clock = Clock(device, plan["warmup"], plan["steps"])
    if spec is not None:
        result = _workbench_training(spec, model, train, plan, clock)
    else:
        result = _hf_training(variant, model, train, plan, clock)
    memory.trained()
    phases.mark("train")
    facts = memory.facts
    tokens = sum(result["lengths"][plan["warmup"] : plan["steps"]])
    held_out_loss_ = held_out_loss(result["model"], held_out, device)
    phases.mark("held_out")
    profiled = profile_steps(result["more_steps"], device) if "more_steps" in result else None
    phases.mark("profile")
    out.write_text(
        json.dumps(
            {
                "variant": variant,
                "shape": shape,
                "steps": plan["steps"],
                "batch": plan["batch"],
                "params": params,
                "tokens_per_s": tokens / clock.seconds,
                "useful_flops": 4.0 * params * tokens / clock.seconds,
                "peak_gib": facts["peak_allocated"] / GiB if facts else None,
                "train_loss": result["last_loss"],
                "held_out_loss": held_out_loss_,
                "seconds": clock.seconds,
                "note": result.get("note", ""),
                "packed": result["packed"],
                "checkpointed": result.get("checkpointed", CHECKPOINTING.get(variant, False)),
                "widest": max(result["widths"]),  # padded width of the widest micro-batch
                "max_batch_tokens": max(result["lengths"]),  # real tokens, fullest batch
                "max_padded_tokens": max(w * plan["batch"] for w in result["widths"]),
                "max_trained_tokens": max(result["trained"]),  # labels of the fullest batch
                "memory": facts,
                "profile": profiled,
                "phases": phases.seconds,
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
    names = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "trl", "datasets")
    names += ("liger-kernel", "triton")
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    if torch.cuda.is_available():  # the device's name comes from the peak's process
        found.append(f"CUDA {torch.version.cuda}")
    else:
        found.append(f"CPU, {torch.get_num_threads()} threads")
    return ", ".join(found)


def missing_package(variant: str) -> str | None:
    """Which package ``variant`` needs is not installed here, else ``None``.

    Found without importing it: importing bitsandbytes can start CUDA, and the parent must
    hold no CUDA context, or each worker's reading of the memory outside its allocator would
    count the parent's too. A package that is there but does not import fails in the worker,
    whose row then says why.
    """
    from importlib.util import find_spec

    needs = ["trl", "datasets"] if variant.startswith("trl") else []
    needs += ["bitsandbytes"] if variant in QLORA else []
    needs += ["triton", "liger_kernel"] if variant == LIGER else []
    for name in needs:
        if find_spec(name) is None:
            return f"{name} is not installed"
    return None


def _subprocess(args: list[str], timeout: float, log: Path | None, title: str):
    """Run this script with ``args``; (ok, reason). The output's tail goes to ``log``."""
    cmd = [sys.executable, __file__, *args]
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout, 1))
    except subprocess.TimeoutExpired as err:
        output = err.stderr or b""
        text = output.decode(errors="replace") if isinstance(output, bytes) else output
        _log(log, title, f"ran past {timeout:.0f} s", text)
        return False, f"ran past {timeout:.0f} s"
    took = time.perf_counter() - started
    _log(log, title, f"exit {done.returncode} after {took:.1f} s", done.stderr)
    print(f"  ({title}: {took:.1f} s in its process)", flush=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return False, f"failed: {last[:200]}"
    return True, ""


def _log(log: Path | None, title: str, status: str, text: str) -> None:
    if log is None:
        return
    tail = "\n".join((text or "").strip().splitlines()[-40:])
    with log.open("a", encoding="utf-8") as handle:
        handle.write(f"===== {title}: {status}\n{tail}\n\n")


def measure(variant: str, shape: str, plan: dict, timeout: float, log: Path | None) -> dict:
    """Run one variant in a new process; its JSON, or a row saying why there is none."""
    row = {"variant": variant, "shape": shape}
    why = missing_package(variant)
    if variant == LIGER and plan["device"] != "cuda":
        why = "liger-kernel needs CUDA (Triton)"
    if why is None and variant in QLORA and not plan["base"].get(shape):
        why = plan["base_error"].get(shape, "no saved base")
    if why is not None:
        return {**row, SKIPPED: why}
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        args = ["--worker", variant, shape, str(out), json.dumps(plan)]
        ok, why = _subprocess(args, timeout, log, f"{shape} {variant}")
        if not ok or not out.exists():
            return {**row, SKIPPED: why or "failed: no result written"}
        return json.loads(out.read_text())


def prepare_base(shape: str, plan: dict, folder: Path, timeout: float, log: Path | None) -> None:
    """Save the shape's weights once for the 4-bit variants; the reason in plan if it failed."""
    ok, why = _subprocess(
        ["--save", shape, str(folder), plan["device"]], timeout, log, f"{shape} save"
    )
    if ok:
        plan["base"][shape] = str(folder)
    else:
        plan["base_error"][shape] = f"saving the weights for the 4-bit load {why}"


def measure_peak(device: str, timeout: float, log: Path | None) -> tuple[float | None, str]:
    """The matmul peak and device name, from a process of its own (the parent stays off CUDA)."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "peak.json"
        ok, why = _subprocess(["--peak", device, str(out)], timeout, log, "matmul peak")
        if not ok or not out.exists():
            return None, why
        found = json.loads(out.read_text())
    return found["flops"], found["name"]


def peak_worker(device: str, out: Path) -> None:
    import torch

    flops = matmul_peak(device)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    out.write_text(json.dumps({"flops": flops, "name": name}))


def baseline_of(variant: str) -> str:
    """The row a variant's ratios are taken against: QLoRA against Trainer + peft in 4 bits."""
    return "trainer-qlora" if variant in QLORA else "trainer"


def table(results: list[dict], peak: float | None, on_gpu: bool) -> str:
    memory = "peak GPU memory GiB" if on_gpu else "peak GPU memory"
    lines = [
        f"| shape | path | tokens/s | x trainer | {memory} | x trainer | useful TFLOP/s "
        "(% of matmul peak) | train loss (last 10 steps) | held-out loss |",
        "|" + "---|" * 9,
    ]
    base = {
        (r["shape"], r["variant"]): r
        for r in results
        if r["variant"] in ("trainer", "trainer-qlora") and SKIPPED not in r
    }
    for r in results:
        if SKIPPED in r:
            lines.append(f"| {r['shape']} | {r['variant']} | {SKIPPED}: {r[SKIPPED]} |" + " |" * 6)
            continue
        ref = base.get((r["shape"], baseline_of(r["variant"])))
        speed = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x" if ref else "-"
        if r["peak_gib"] is None:
            peak_text, ratio = "n/a (CPU)", "-"
        else:
            peak_text = f"{r['peak_gib']:.1f}"
            ratio = f"{r['peak_gib'] / ref['peak_gib']:.2f}x" if ref else "-"
        share = f"{r['useful_flops'] / peak:.1%}" if peak else "no peak"
        lines.append(
            f"| {r['shape']} | {r['variant']} | {r['tokens_per_s']:,.0f} | {speed} | "
            f"{peak_text} | {ratio} | {r['useful_flops'] / 1e12:.2f} ({share}) | "
            f"{r['train_loss']:.4f} | {r['held_out_loss']:.4f} |"
        )
    lines.append(
        "\nx trainer: LoRA rows against trainer (Trainer + peft, bf16 base), QLoRA rows against "
        "trainer-qlora (Trainer + peft on the same 4-bit NF4 base), same shape."
    )
    return "\n".join(lines)


# The workbench's memory levers (workbench.train.core) a variant's worker ran without, by the
# switch that turns each off: the baselines (plain transformers + peft, TRL) have none.
_ALL_LEVERS = ("LEAN_MLP_ON", "LEAN_NORM_ON", "REDRAWS_MASKS_ON")
_LEVERS_OFF = {
    MLP_AS_WRITTEN: ("LEAN_MLP_ON",),
    NORMS_AS_WRITTEN: ("LEAN_NORM_ON",),
    PEFT_INPUTS: ("REDRAWS_MASKS_ON",),
}


def _estimate_as_run(variant: str, config, settings: dict):
    """``estimate_memory`` with the levers the variant's worker ran with, and no others.

    A baseline's estimate is the closest the workbench's model gets to it: peft's dropout
    also keeps each adapted layer's dropped input, which the estimate does not count.
    """
    from workbench.models import memory as mem
    from workbench.train import core

    off = _LEVERS_OFF.get(variant, ()) if variant.startswith("workbench") else _ALL_LEVERS
    saved = {name: getattr(core, name) for name in off}
    try:
        for name in off:
            setattr(core, name, set())
        return mem.estimate_memory(config, **settings)
    finally:
        for name, devices in saved.items():
            setattr(core, name, devices)


def estimate_row(r: dict) -> dict:
    """``estimate_memory`` for a measured row, with its parts and the fitting inputs."""
    from workbench.models import memory as mem

    qlora = r["variant"] in QLORA
    settings = dict(
        device="cuda",
        dtype="bfloat16",
        lora_r=LORA["r"],
        batch_size=r["batch"],
        seq_len=r["widest"],
        quantization="4bit" if qlora else None,
        method="qlora" if qlora else "lora",
        gradient_checkpointing=r.get("checkpointed", CHECKPOINTING.get(r["variant"], False)),
    )
    if r["variant"].startswith("workbench") and r.get("max_trained_tokens"):
        # The workbench's loss computes logits only for trained labels (estimate_memory's
        # logit_tokens); a packed step is one row of the micro-batch's real tokens.
        settings["logit_tokens"] = int(r["max_trained_tokens"])
        if r.get("packed") and r.get("max_batch_tokens"):
            settings.update(batch_size=1, seq_len=int(r["max_batch_tokens"]))
    config = qwen_config(r["shape"])
    config.dtype = "bfloat16"  # the checkpoint's dtype, as a saved config states it
    est = _estimate_as_run(r["variant"], config, settings)
    factor, overhead = mem._ALLOCATOR_FACTOR["cuda"], mem._OVERHEAD["cuda"]
    found = {
        "variant": r["variant"],
        "shape": r["shape"],
        "settings": settings,
        "constants": {"overhead": overhead, "allocator_factor": factor},
        "parts": {
            name: getattr(est, name)
            for name in ("weights", "adapter", "gradients", "optimizer", "activations")
        }
        | {"logits": est.logits, "overhead": est.overhead, "total": est.total},
        # activations = saved * allocator_factor + logits: saved is what the factor multiplies
        "saved_activations": (est.activations - est.logits) / factor,
        "packed": r.get("packed", False),
        "max_batch_tokens": r.get("max_batch_tokens"),
        "max_trained_tokens": r.get("max_trained_tokens"),
    }
    facts = r.get("memory") or {}
    if facts:
        measured = facts["device_peak"]
        found["measured"] = measured
        found["allocated"] = facts["peak_allocated"]
        found["ratio"] = measured / est.total
        found["within"] = abs(measured / est.total - 1) <= WITHIN
        # What the two constants would have to be for this row alone (the other parts as
        # estimated): overhead = memory outside the allocator; factor = the rest / saved.
        static = est.weights + est.adapter + est.gradients + est.optimizer + est.logits
        rest = facts["peak_reserved"] - static
        found["implied"] = {
            "overhead": facts["context_end"],
            "allocator_factor": rest / found["saved_activations"]
            if found["saved_activations"]
            else None,
        }
    return found


def calibration(results: list[dict]) -> list[dict]:
    """One estimate per measured row (a row saying why where the estimate itself failed)."""
    found = []
    for r in results:
        if SKIPPED in r:
            continue
        try:
            found.append(estimate_row(r))
        except Exception as err:  # one row's failure stays in its row
            found.append({"variant": r["variant"], "shape": r["shape"], "error": repr(err)})
    return found


def calibration_table(rows: list[dict]) -> str:
    lines = [
        "### Measured vs estimated peak (estimate_memory, device='cuda', bfloat16, r=16)",
        "",
        "| shape | path | batch x widest | measured peak GiB (reserved + CUDA outside) | "
        "allocated peak GiB | estimated GiB | measured / estimated | within 15% |",
        "|" + "---|" * 8,
    ]
    for c in rows:
        if "error" in c:
            lines.append(f"| {c['shape']} | {c['variant']} | estimate failed: {c['error']} |")
            lines[-1] += " |" * 5
            continue
        s = c["settings"]
        gc = " (gc)" if s["gradient_checkpointing"] else ""
        size = f"{s['batch_size']} x {s['seq_len']}{gc}"
        total = f"{c['parts']['total'] / GiB:.2f}"
        if "measured" in c:
            measured = f"{c['measured'] / GiB:.2f}"
            allocated = f"{c['allocated'] / GiB:.2f}" if "allocated" in c else "-"
            ratio, within = f"{c['ratio']:.2f}", "yes" if c["within"] else "no"
        else:
            measured = allocated = "n/a"
            ratio = within = "-"
        lines.append(
            f"| {c['shape']} | {c['variant']} | {size} | {measured} | {allocated} | {total} | "
            f"{ratio} | {within} |"
        )
    # The constants are the workbench's: fitted on its rows only (the estimate does not model
    # what peft's dropout keeps in a baseline's, nor what TRL adds).
    fits = [c["implied"] for c in rows if c.get("implied") and c["variant"].startswith("workbench")]
    if fits:
        overhead = sorted(f["overhead"] for f in fits)[len(fits) // 2]
        factors = sorted(f["allocator_factor"] for f in fits if f["allocator_factor"])
        median = factors[len(factors) // 2] if factors else float("nan")
        lines.append(
            f"\nImplied per workbench row, median: overhead {overhead / GiB:.2f} GiB (now "
            f"{rows[0]['constants']['overhead'] / GiB:.2f}), allocator factor {median:.2f} "
            f"(now {rows[0]['constants']['allocator_factor']:.2f}); every part is in results.json."
        )
    return "\n".join(lines)


def profiles_text(results: list[dict]) -> str:
    """Each profiled row's time per step, GPU busy time and busiest ops, as one text."""
    parts = []
    for r in results:
        found = r.get("profile")
        if not found:
            continue
        title = f"## {r['shape']} {r['variant']}"
        if "error" in found:
            parts.append(f"{title}\n\nprofile failed: {found['error']}\n")
            continue
        line = f"{found['wall_ms']:.1f} ms per step over {found['steps']} steps"
        if "gpu_busy_ms" in found:
            share = found["gpu_busy_ms"] / found["wall_ms"]
            line += (
                f"; kernels busy {found['gpu_busy_ms']:.1f} ms ({share:.0%}), "
                f"{found['kernels']:.0f} kernels per step"
            )
        parts.append(f"{title}\n\n{line}\n\n```\n{found['table']}\n```\n")
    return "\n".join(parts) or "no profiled rows\n"


def plan_order(shapes: list[str], variants: list[str] | None, rounds: int) -> list[tuple]:
    """(shape, variant) in run order: CORE rows of every shape first, then the others.

    Within each shape and group the order alternates from one shape or round to the next.
    """
    order = []
    for group in (CORE, EXTRA):
        for k, shape in enumerate(shapes):
            chosen = variants or SHAPE_VARIANTS.get(shape, CORE)
            members = [v for v in group if v in chosen]
            for round_ in range(rounds):
                flip = (k + round_) % 2 == 1
                order += [(shape, v) for v in (members[::-1] if flip else members)]
    return order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help=f"of {sorted(SHAPES)}")
    parser.add_argument(
        "--variants",
        default=None,
        help=f"of {VARIANTS}; default: all on 0.5b, {','.join(CORE)} on the others",
    )
    parser.add_argument("--steps", type=int, default=None, help=f"per shape (default {STEPS})")
    parser.add_argument("--rounds", type=int, default=1, help="repeat, alternating the order")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per variant")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole run")
    parser.add_argument("--out", default=None, help="folder for results.json, tables.md, logs")
    parser.add_argument("--smoke", action="store_true", help="tiny config on CPU")
    parser.add_argument("--worker", nargs=4, metavar=("VARIANT", "SHAPE", "OUT", "PLAN"))
    parser.add_argument("--save", nargs=3, metavar=("SHAPE", "FOLDER", "DEVICE"))
    parser.add_argument("--peak", nargs=2, metavar=("DEVICE", "OUT"))
    args = parser.parse_args()
    if args.worker:
        variant, shape, out, plan = args.worker
        worker(variant, shape, json.loads(plan), Path(out))
        return
    if args.save:
        save_base(args.save[0], args.save[2], Path(args.save[1]))
        return
    if args.peak:
        peak_worker(args.peak[0], Path(args.peak[1]))
        return
    run(args)


def run(args) -> None:
    """The parent: measure every (shape, variant) in its own process and print the tables."""
    import torch

    started = time.perf_counter()
    deadline = started + args.budget if args.budget else math.inf
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    shapes = ["tiny"] if args.smoke else args.shapes.split(",")
    variants = args.variants.split(",") if args.variants else None
    unknown = sorted(set(variants or ()) - set(VARIANTS)) + sorted(set(shapes) - set(SHAPES))
    if unknown:
        raise SystemExit(f"unknown variant or shape {unknown}; variants: {VARIANTS}")
    out = Path(args.out) if args.out else None
    log = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        log = out / "workers.log"
        log.write_text("")
    peak, name = measure_peak(device, min(args.timeout, 120), log)
    print(f"# Training throughput on one device ({versions()}, {name})")
    peak_text = f"{peak / 1e12:.1f} TFLOP/s" if peak else f"not measured ({name})"
    print(f"matmul peak measured here: {peak_text} ({device})", flush=True)
    report = {"versions": versions(), "device": name, "matmul_peak": peak, "results": []}
    order = plan_order(shapes, variants, args.rounds)
    measure_all(order, args, device, deadline, report, out, log)
    results = report["results"]
    rank = {v: i for i, v in enumerate(VARIANTS)}
    results.sort(key=lambda r: (shapes.index(r["shape"]), rank[r["variant"]]))
    report["calibration"] = calibration(results)
    text = [table(results, peak, device == "cuda")]
    notes = {r["note"] for r in results if r.get("note")}
    text += [f"workbench: {note}" for note in sorted(notes)]
    text += ["", calibration_table(report["calibration"])]
    report["total_s"] = time.perf_counter() - started
    if out is not None:
        (out / "profiles.md").write_text(profiles_text(results), encoding="utf-8")
    text.append(f"\ntotal {report['total_s']:.0f} s")
    print()
    print("\n".join(text))
    _write(out, report)
    if out is not None:
        (out / "tables.md").write_text("\n".join(text) + "\n", encoding="utf-8")


def measure_all(order, args, device, deadline, report, out, log) -> None:
    """Measure each (shape, variant) of ``order``, within ``deadline``; rows into ``report``."""
    plan = {"device": device, "base": {}, "base_error": {}}
    scratch = Path(tempfile.mkdtemp(prefix="gpu-throughput-"))
    results = report["results"]
    try:
        for shape, variant in order:
            left = deadline - time.perf_counter()
            if left < 30:
                results.append({"variant": variant, "shape": shape, SKIPPED: "out of --budget"})
                continue
            if variant in QLORA and shape not in plan["base"] | plan["base_error"]:
                prepare_base(shape, plan, scratch / shape, min(args.timeout, left - 20), log)
            step_plan = {
                **plan,
                "steps": args.steps or STEPS[shape],
                "rows": ROWS,
                "held_out": HELD_OUT,
                "batch": BATCH,
                "warmup": WARMUP_STEPS,
            }
            if args.smoke:
                step_plan.update(SMOKE)
            timeout = min(args.timeout, deadline - time.perf_counter() - 20)
            result = measure(variant, shape, step_plan, timeout, log)
            results.append(result)
            brief = {k: v for k, v in result.items() if k != "profile"}
            found = result.get("profile") or {}
            if "gpu_busy_ms" in found:
                brief["profile"] = {k: found[k] for k in ("wall_ms", "gpu_busy_ms", "kernels")}
            brief.pop("memory", None)  # in results.json; the phases say where the time went
            print(f"  {shape} {variant}: {json.dumps(brief)}", flush=True)
            _write(out, report)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _write(out: Path | None, report: dict) -> None:
    if out is not None:
        (out / "results.json").write_text(json.dumps(report, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
