"""The model card (README.md) written beside every export.

Examples:
    >>> card = ModelCard(base_model="gemma-3-270m", export_format="safetensors")
    >>> "base_model: gemma-3-270m" in card.render()
    True
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field

__all__ = ["ModelCard"]


# On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights for its inference kernel on
# the first forward, and peft's DoRA reads the weights in that layout: a QLoRA + DoRA adapter
# answered otherwise than the session (logits off by 3-4 on a tiny model). Plain layout:
_KEEP_4BIT_LAYOUT = [
    "# keep bitsandbytes' plain 4-bit layout on CPUs with AVX512-BF16 (DoRA reads it)",
    "for module in model.modules():",
    '    if hasattr(module, "support_avx512bf16_for_cpu"):',
    "        module.support_avx512bf16_for_cpu = False",
]


@dataclass(frozen=True)
class ModelCard:
    """Facts about an exported model, rendered as a Hugging Face style README.md.

    Attributes:
        base_model: The spec the base model was loaded from.
        export_format: ``safetensors``, ``adapter`` or ``gguf``.
        data_summary: A few lines on the training data (rows, formats, lengths).
        training: Training settings (learning rate, epochs, LoRA rank...).
        scores: Final evaluation scores, ``{metric: {"base": x, "tuned": y}}``.
        terms: The licence note of the base weights.
        quantization: How the base was quantized for training (``"4bit"``, ``"8bit"``,
            ``None``): an adapter is loaded on a base quantized the same way.
        dtype: The dtype the base was trained in (``"float32"``, ``"bfloat16"``).
        adapter_strength: The session's adapter strength at export (``None``: no adapter,
            or the tuned strength 1).
        tuned: The weights were tuned (a run, a loaded adapter, merged or not); ``False``:
            a base model exported as it was loaded, which the card does not call fine-tuned.

    Examples:
        >>> ModelCard("m", "adapter", scores={"rouge1": {"base": 0.1, "tuned": 0.5}}).render()[:3]
        '---'
    """

    base_model: str
    export_format: str
    data_summary: str = ""
    training: dict = field(default_factory=dict)
    scores: dict = field(default_factory=dict)
    terms: str = ""
    quantization: str | None = None
    dtype: str = "float32"
    adapter_strength: float | None = None
    tuned: bool = True

    def render(self) -> str:
        """The README.md text: YAML front matter, then sections.

        Examples:
            >>> "## Training" in ModelCard("m", "adapter", training={"lr": 1e-4}).render()
            True

            Each format says how a plain script loads it:

            >>> card = ModelCard("m", "adapter", quantization="4bit").render()
            >>> "AutoPeftModelForCausalLM" in card, "load_in_4bit=True" in card
            (True, True)
        """
        lines = [
            "---",
            self._front_matter(),
            "---",
            "",
            f"# Fine-tuned {self.base_model}" if self.tuned else f"# {self.base_model}",
            "",
            f"Exported by Tuning Workbench as `{self.export_format}`.",
            "",
        ]
        if self.strength_note():
            lines += [self.strength_note(), ""]
        lines += self._section("Use", self._usage_block())
        lines += self._section("Data", self.data_summary or "not recorded")
        lines += self._section("Training", self._training_block())
        lines += self._section("Evaluation", self._scores_block())
        lines += self._section("Licence", self.terms or "See the base model's licence.")
        return "\n".join(lines)

    def _front_matter(self) -> str:
        """The YAML metadata, quoted where a value needs it (a path holding ": " or " #")."""
        import yaml

        method = str(self.training.get("method") or "lora") if self.tuned else ""
        facts = {
            "base_model": str(self.base_model),
            "library_name": "peft" if self.export_format == "adapter" else "transformers",
            "tags": ["tuning-workbench", *([method] if method else [])],
        }
        text = yaml.safe_dump(
            facts, sort_keys=False, allow_unicode=True, default_flow_style=None, width=1 << 30
        )
        return text.rstrip("\n")

    def strength_note(self) -> str:
        """What the export holds when the session scaled its adapter (``""`` at strength 1).

        Examples:
            >>> ModelCard("m", "safetensors", adapter_strength=0.5).strength_note()
            'The adapter is merged at strength 0.5 (set_adapter_strength), not as trained (1).'
            >>> ModelCard("m", "adapter", adapter_strength=0.5).strength_note()[:48]
            'The adapter is saved as trained (strength 1): th'
        """
        if self.adapter_strength is None or self.adapter_strength == 1.0:
            return ""
        if self.export_format == "adapter":
            return (
                "The adapter is saved as trained (strength 1): the session's strength "
                f"{self.adapter_strength:g} is not part of it."
            )
        return (
            f"The adapter is merged at strength {self.adapter_strength:g} "
            "(set_adapter_strength), not as trained (1)."
        )

    @staticmethod
    def _section(title: str, body: str) -> list[str]:
        return [f"## {title}", "", body, ""]

    def _usage_block(self) -> str:
        """How a plain script or server loads this folder (the export check runs the same)."""
        if self.export_format == "gguf":
            return (
                "```bash\nollama create my-model -f Modelfile   # or: llama-server -m "
                "model.gguf\n```"
            )
        if self.export_format != "adapter":
            loading = [
                "from transformers import AutoModelForCausalLM, AutoTokenizer",
                "",
                'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")',
            ]
        else:
            quantized = ", BitsAndBytesConfig" if self.quantization else ""
            loading = [
                "import torch",
                "from peft import AutoPeftModelForCausalLM",
                f"from transformers import AutoTokenizer{quantized}, GenerationConfig",
                "",
                "# loads the base model named in adapter_config.json, then the adapter on it",
                'model = AutoPeftModelForCausalLM.from_pretrained("path/to/this/folder", '
                f"dtype=torch.{self.dtype}{self._quantization_argument()})",
                "# peft keeps the base's: this one ends answers at the training template's end",
                'model.generation_config = GenerationConfig.from_pretrained("path/to/this/folder")',
                *(_KEEP_4BIT_LAYOUT if self.quantization == "4bit" else []),
            ]
        using = [
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
            'messages = [{"role": "user", "content": "Hello"}]',
            "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, "
            'return_tensors="pt", return_dict=True)',
            "output = model.generate(**inputs, max_new_tokens=64)",
            'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], '
            "skip_special_tokens=True))",
        ]
        return "```python\n" + "\n".join(loading + using) + "\n```"

    def _quantization_argument(self) -> str:
        if self.quantization == "8bit":
            return ",\n    quantization_config=BitsAndBytesConfig(load_in_8bit=True)"
        if self.quantization == "4bit":  # as the workbench loaded it for QLoRA
            return (
                ",\n    quantization_config=BitsAndBytesConfig(load_in_4bit=True, "
                'bnb_4bit_quant_type="nf4",\n        bnb_4bit_use_double_quant=True, '
                f"bnb_4bit_compute_dtype=torch.{self.dtype})"
            )
        return ""

    def _training_block(self) -> str:
        if not self.training:
            return "not recorded"
        return "```json\n" + json.dumps(self.training, indent=2, default=str) + "\n```"

    def _scores_block(self) -> str:
        if not self.scores:
            return "not evaluated"
        rows = ["| metric | base | tuned |", "|---|---|---|"]
        for metric, values in self.scores.items():
            base, tuned = values.get("base"), values.get("tuned")
            rows.append(f"| {_cell(metric)} | {_number(base)} | {_number(tuned)} |")
        return "\n".join(rows)


def _cell(text: object) -> str:
    r"""``text`` as one Markdown table cell: a ``|`` would split the row, HTML would render.

    Examples:
        >>> _cell("f1|<b>macro</b>")
        'f1\\|&lt;b&gt;macro&lt;/b&gt;'
    """
    escaped = html.escape(" ".join(str(text).split()), quote=False)
    return escaped.replace("\\", "\\\\").replace("|", "\\|")


def _number(value) -> str:
    """A score as the card shows it: ``-`` where there is none (not measured, or NaN)."""
    return "-" if value is None or math.isnan(value) else f"{value:.4g}"
