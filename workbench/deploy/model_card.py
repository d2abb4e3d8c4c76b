"""The model card (README.md) written beside every export.

Examples:
    >>> card = ModelCard(base_model="gemma-3-270m", export_format="safetensors")
    >>> "base_model: gemma-3-270m" in card.render()
    True
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

__all__ = ["ModelCard"]


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

    def render(self) -> str:
        """The README.md text: YAML front matter, then sections.

        Examples:
            >>> "## Training" in ModelCard("m", "adapter", training={"lr": 1e-4}).render()
            True
        """
        library = "peft" if self.export_format == "adapter" else "transformers"
        lines = [
            "---",
            f"base_model: {self.base_model}",
            f"library_name: {library}",
            "tags: [tuning-workbench, lora]",
            "---",
            "",
            f"# Fine-tuned {self.base_model}",
            "",
            f"Exported by Tuning Workbench as `{self.export_format}`.",
            "",
        ]
        lines += self._section("Data", self.data_summary or "not recorded")
        lines += self._section("Training", self._training_block())
        lines += self._section("Evaluation", self._scores_block())
        lines += self._section("Licence", self.terms or "See the base model's licence.")
        return "\n".join(lines)

    @staticmethod
    def _section(title: str, body: str) -> list[str]:
        return [f"## {title}", "", body, ""]

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
            rows.append(f"| {metric} | {_number(base)} | {_number(tuned)} |")
        return "\n".join(rows)


def _number(value) -> str:
    return "-" if value is None else f"{value:.4g}"
