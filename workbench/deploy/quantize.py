"""Quantize an exported model with bitsandbytes and measure what it costs and saves.

Examples:
    The tiny model quantized to 4 bits (NF4) on CPU, in about a second:

    >>> from workbench.models.tiny import build_tiny_model
    >>> folder = build_tiny_model("/tmp/wb-doc-deploy-quantize-tiny")
    >>> report = quantize_export(folder, "/tmp/wb-doc-deploy-quantize-q4", "4bit",
    ...                          probes=["Hello"], overwrite=True)
    >>> [row[0] for row in report.rows()]
    ['size on disk', 'memory', 'latency per answer', 'tokens/s']
    >>> report.rows()[0][3], report.rows()[1][3]
    ('0.46x', '0.40x')
    >>> (report.folder / "model.safetensors").is_file()
    True
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench._display import format_bytes, html_table, text_table
from workbench._io import check_free_space
from workbench._quiet import no_transformers_bars
from workbench.deploy.paths import check_writable_target, staged_write
from workbench.errors import SpecError
from workbench.models.generation import generate_text

__all__ = [
    "ModelMeasure",
    "QuantizeReport",
    "check_quantizable",
    "check_quantize_target",
    "measure_model",
    "quantize_export",
]

ScoreFn = Callable[[Any, Any], dict[str, float]]


@dataclass(frozen=True)
class ModelMeasure:
    """Size, memory and speed of one model folder.

    Attributes:
        disk_bytes: Bytes of the weight files on disk.
        memory_bytes: Bytes of parameters and buffers once loaded.
        latency_s: Mean seconds to generate the probe answers (one prompt at a time).
        tokens_per_s: Generated tokens per second over the probes.
        scores: Evaluation scores, when a scoring function was given.

    Examples:
        >>> ModelMeasure(10, 20, 0.5, 30.0).tokens_per_s
        30.0
    """

    disk_bytes: int
    memory_bytes: int
    latency_s: float
    tokens_per_s: float
    scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class QuantizeReport:
    """Before/after table of a quantization, shown in a notebook and printed in a script.

    Examples:
        >>> before, after = ModelMeasure(4, 4, 1, 1), ModelMeasure(1, 1, 2, 1)
        >>> r = QuantizeReport("4bit", Path("q"), before, after)
        >>> r.rows()[0]
        ('size on disk', '4 B', '1 B', '0.25x')
    """

    quantization: str
    folder: Path
    before: ModelMeasure
    after: ModelMeasure

    def rows(self) -> list[tuple[str, str, str, str]]:
        """``(measure, before, after, after/before)`` rows.

        A score both measures have adds a row after the four fixed ones.

        Examples:
            >>> before = ModelMeasure(4, 4, 1.0, 10.0, scores={"rouge1": 0.5})
            >>> after = ModelMeasure(1, 1, 2.0, 5.0, scores={"rouge1": 0.4})
            >>> rows = QuantizeReport("4bit", Path("q"), before, after).rows()
            >>> [row[0] for row in rows]
            ['size on disk', 'memory', 'latency per answer', 'tokens/s', 'rouge1']
            >>> rows[-1]
            ('rouge1', '0.5', '0.4', '0.80x')
        """
        b, a = self.before, self.after
        rows = [
            _row("size on disk", b.disk_bytes, a.disk_bytes, format_bytes),
            _row("memory", b.memory_bytes, a.memory_bytes, format_bytes),
            _row("latency per answer", b.latency_s, a.latency_s, lambda v: f"{v:.2f} s"),
            _row("tokens/s", b.tokens_per_s, a.tokens_per_s, lambda v: f"{v:.1f}"),
        ]
        for metric in sorted(set(b.scores) & set(a.scores)):
            rows.append(_row(metric, b.scores[metric], a.scores[metric], lambda v: f"{v:.4g}"))
        return rows

    def __str__(self) -> str:
        header = ("", "before", f"after ({self.quantization})", "ratio")
        return f"quantized to {self.folder}\n" + text_table(self.rows(), header)

    def _repr_html_(self) -> str:
        header = ("", "before", f"after ({self.quantization})", "ratio")
        return html_table(self.rows(), header, title=f"Quantized to {self.folder}")


def _row(name: str, before: float, after: float, fmt) -> tuple[str, str, str, str]:
    ratio = f"{after / before:.2f}x" if before else "-"
    return (name, fmt(before), fmt(after), ratio)


def _disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def measure_model(
    model: Any,
    tokenizer: Any,
    folder: Path,
    probes: Sequence[str | Sequence[int]],
    max_new_tokens: int = 32,
    score: ScoreFn | None = None,
) -> ModelMeasure:
    """Measure disk size, memory, latency and tokens/s (and scores) of a loaded model.

    Examples:
        >>> from workbench.models.loading import load_model
        >>> from workbench.models.tiny import build_tiny_model
        >>> folder = build_tiny_model("/tmp/wb-doc-deploy-quantize-measure")
        >>> loaded = load_model(str(folder), on_event=len)
        >>> measure = measure_model(loaded.model, loaded.tokenizer, folder, ["Hello"],
        ...                         max_new_tokens=4, score=lambda m, t: {"rouge1": 0.5})
        >>> measure.disk_bytes == (folder / "model.safetensors").stat().st_size
        True
        >>> measure.tokens_per_s > 0, measure.scores
        (True, {'rouge1': 0.5})
    """
    generated = 0
    start = time.perf_counter()
    for prompt in probes:
        text = generate_text(model, tokenizer, [prompt], max_new_tokens)[0]
        generated += max(1, len(tokenizer(text, add_special_tokens=False).input_ids))
    elapsed = time.perf_counter() - start
    return ModelMeasure(
        disk_bytes=_disk_bytes(folder),
        memory_bytes=int(model.get_memory_footprint()),
        latency_s=elapsed / max(1, len(probes)),
        tokens_per_s=generated / elapsed if elapsed else 0.0,
        scores=dict(score(model, tokenizer)) if score else {},
    )


def check_quantize_target(target: Path, quantization: str, overwrite: bool = False) -> None:
    """Check the quantization word and that ``target`` may be written, before any work.

    Raises:
        SpecError: unknown quantization word, or a non-empty target without ``overwrite``.
        WriteError: the target's disk is read-only.

    Examples:
        >>> check_quantize_target(Path("/tmp/wb-q-doc"), "4bit")
        >>> check_quantize_target(Path("/tmp/wb-q-doc"), "2bit")
        Traceback (most recent call last):
        workbench.errors.SpecError: quantization='2bit' is not one of '4bit', '8bit'.
    """
    if quantization not in ("4bit", "8bit"):
        raise SpecError(f"quantization={quantization!r} is not one of '4bit', '8bit'.")
    check_writable_target(target, overwrite)
    check_free_space(target.parent, 0, f"the quantized model {target}")


def check_quantizable(model: Any, quantization: str) -> None:
    """Refuse, before anything is quantized or written, a model bitsandbytes would leave float.

    transformers' bitsandbytes conversion (``replace_with_bnb_linear``) takes
    ``torch.nn.Linear`` itself and GPT-2's ``Conv1D``, never a subclass: Falcon's
    ``FalconLinear`` layers all stay float, and the "quantized" copy would be the export
    again (``load_model`` refuses such a load after the fact). Judged on ``model``'s class
    built from its config on the meta device, as a load of its export builds it: no
    adapter layers, no memory. Cheap enough to call before exporting the model to quantize.

    Raises:
        SpecError: bitsandbytes would quantize none of the model's linear layers.

    Examples:
        >>> from transformers import FalconConfig, FalconForCausalLM, GPT2Config, GPT2LMHeadModel
        >>> check_quantizable(GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2)), "4bit")
        >>> falcon = FalconForCausalLM(FalconConfig(hidden_size=16, num_hidden_layers=1,
        ...                                         num_attention_heads=2, vocab_size=64))
        >>> check_quantizable(falcon, "4bit")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.errors.SpecError: quantize('4bit'): bitsandbytes would quantize none of ...
    """
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        with torch.device("meta"):
            skeleton = type(base)._from_config(base.config)
    except Exception:  # a class that cannot be built so: the quantized load judges it later
        return
    left = _linears_left_float(skeleton)
    if left:
        msg = (
            f"quantize({quantization!r}): bitsandbytes would quantize none of this "
            f"{base.config.model_type} model's linear layers: its {len(left)} "
            f"{type(left[0][1]).__name__} layers ({left[0][0]}, ...) subclass torch.nn.Linear, "
            f"which transformers' bitsandbytes conversion skips. {_instead(base.config)}"
        )
        raise SpecError(msg)


def _linears_left_float(model: Any) -> list[tuple[str, Any]]:
    """``(name, layer)`` of every linear layer but the output, when bitsandbytes would
    quantize none of them (else empty)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    output = model.get_output_embeddings()
    linears = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not output
    ]
    if any(type(m) is torch.nn.Linear or isinstance(m, Conv1D) for _, m in linears):
        return []
    return linears


def _instead(config: Any) -> str:
    """What to do instead of quantizing with bitsandbytes."""
    from workbench.deploy.gguf_writer import GGUF_ARCHITECTURES

    if config.model_type in GGUF_ARCHITECTURES:
        return "Export a quantized GGUF instead (export(format='gguf', gguf_type='q8_0'))."
    return (
        "Export it in full precision instead (export(format='safetensors')); for a smaller "
        "file, convert that export with llama.cpp's convert_hf_to_gguf.py and quantize the GGUF."
    )


def _quantized_card(source: Path, quantization: str) -> str:
    """The source export's model card, with how this copy was quantized and how it loads."""
    card = source / "README.md"
    text = card.read_text(encoding="utf-8") if card.is_file() else f"# {source.name}\n"
    note = (
        f"## Quantization\n\nThis copy of `{source.name}` is quantized with bitsandbytes "
        f"({quantization}{', NF4' if quantization == '4bit' else ''}); its config.json holds "
        'the quantization_config, so `AutoModelForCausalLM.from_pretrained("path/to/this/'
        'folder")` loads it quantized (bitsandbytes must be installed).\n'
    )
    return text.rstrip() + "\n\n" + note


def quantize_export(
    source: str | Path,
    target: str | Path,
    quantization: str,
    probes: Sequence[str | Sequence[int]],
    score: ScoreFn | None = None,
    overwrite: bool = False,
    before_placing: Callable[[Path], None] | None = None,
) -> QuantizeReport:
    """Load the exported ``source`` folder quantized, save it to ``target``, compare both.

    Args:
        source: An exported safetensors model folder.
        target: Where the quantized model is saved (atomically).
        quantization: ``"4bit"`` (NF4, double quantization) or ``"8bit"``.
        probes: Prompts used to measure generation latency and speed.
        score: Optional ``score(model, tokenizer) -> {metric: value}`` run before and after.
        overwrite: Replace a non-empty ``target``.
        before_placing: Called with the complete staging folder just before it is renamed
            to ``target`` (:func:`~workbench.deploy.paths.staged_write`).

    Raises:
        SpecError: unknown quantization word, a non-empty target, or a model bitsandbytes
            would leave float (:func:`check_quantizable`).
        WriteError: the target's disk is read-only or too full for the quantized model.
        DependencyError: bitsandbytes is missing.

    Examples:
        >>> quantize_export("out", "q", "2bit", ["Hi"])
        Traceback (most recent call last):
        workbench.errors.SpecError: quantization='2bit' is not one of '4bit', '8bit'.
    """
    from workbench.models.loading import load_model

    source, target = Path(source), Path(target)
    check_quantize_target(target, quantization, overwrite)
    plain = load_model(str(source), on_event=lambda message: None)
    check_quantizable(plain.model, quantization)
    before = measure_model(plain.model, plain.tokenizer, source, probes, score=score)
    del plain
    quantized = load_model(str(source), quantization=quantization, on_event=lambda m: None)
    needed = int(quantized.model.get_memory_footprint())  # about what save_pretrained writes
    check_free_space(target.parent, needed, f"the quantized model {target}")
    with staged_write(target, needed, before_placing) as tmp:
        with no_transformers_bars():  # no "\r" bars in the cell
            quantized.model.save_pretrained(tmp)
            quantized.tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(_quantized_card(source, quantization), encoding="utf-8")
        # Measured before it is placed: a model that cannot generate (a family whose code
        # fails on quantized weights) leaves no folder that looks like a good export.
        after = measure_model(quantized.model, quantized.tokenizer, tmp, probes, score=score)
    return QuantizeReport(quantization, target, before, after)
