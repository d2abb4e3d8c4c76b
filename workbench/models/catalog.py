"""Shape facts of the models the workbench knows by name, read from their ``config.json``.

A :class:`ModelFacts` holds the handful of numbers that decide a model's size and its
training memory (layers, widths, heads, vocabulary), so a memory estimate or a fit table
needs no download. :data:`CATALOG` lists popular small models by a short name;
:func:`facts_from_config` reads the same facts from any transformers config.

Examples:
    >>> from workbench.models.catalog import get_facts
    >>> facts = get_facts("mistral-7b")
    >>> round(facts.params / 1e9, 2)
    7.24
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workbench.errors import SpecError

__all__ = ["CATALOG", "ModelFacts", "facts_from_config", "get_facts"]


@dataclass(frozen=True)
class ModelFacts:
    """The shape of a decoder-only transformer, as its ``config.json`` gives it.

    Attributes:
        name: Short name in the workbench catalog (or the config's model name).
        hub_id: Hugging Face hub id the numbers were read from.
        architecture: transformers ``model_type`` (``"llama"``, ``"gemma3_text"``, ...).
        layers: Transformer blocks (``num_hidden_layers``).
        hidden: Residual width (``hidden_size``).
        heads: Query heads (``num_attention_heads``).
        kv_heads: Key/value heads (``num_key_value_heads``; fewer than ``heads`` is GQA).
        head_dim: Width of one head (``head_dim``, else ``hidden // heads``).
        intermediate: MLP width (``intermediate_size``).
        vocab: Vocabulary size (``vocab_size``); rows of the embedding and output layer.
        tied_embeddings: The output layer shares the embedding matrix.
        gated_mlp: The MLP has gate, up and down projections (SwiGLU/GeGLU); ``False`` for
            the two-matrix MLP of GPT-2 style models.
        license: The model's license, as its model card states it.
    """

    name: str
    hub_id: str
    architecture: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    gated_mlp: bool = True
    license: str = ""

    def linear_shapes(self) -> tuple[tuple[int, int], ...]:
        """(in_features, out_features) of each linear layer in one block.

        These are the layers peft's ``target_modules="all-linear"`` adapts and that
        bitsandbytes quantizes (q, k, v, o, then gate, up, down; or fc_in, fc_out).

        Returns:
            One ``(in, out)`` pair per linear layer of a block.

        Examples:
            >>> get_facts("gemma-3-270m").linear_shapes()[:2]
            ((640, 1024), (640, 256))
        """
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        attention = ((self.hidden, q), (self.hidden, kv), (self.hidden, kv), (q, self.hidden))
        up = (self.hidden, self.intermediate)
        mlp = (up, up) if self.gated_mlp else (up,)
        return (*attention, *mlp, (self.intermediate, self.hidden))

    @property
    def block_linear_params(self) -> int:
        """Weights of all linear layers in all blocks: the part that 4/8-bit quantizes."""
        return self.layers * sum(i * o for i, o in self.linear_shapes())

    @property
    def embedding_params(self) -> int:
        """Weights of the input embedding (``vocab x hidden``)."""
        return self.vocab * self.hidden

    @property
    def lm_head_params(self) -> int:
        """Weights of the output layer; 0 when it is tied to the embedding."""
        return 0 if self.tied_embeddings else self.vocab * self.hidden

    @property
    def norm_params(self) -> int:
        """Weights of the normalisation layers (two per block and a final one)."""
        return (2 * self.layers + 1) * self.hidden

    @property
    def params(self) -> int:
        """All weights of the model (biases and small extras left out)."""
        return (
            self.block_linear_params + self.embedding_params + self.lm_head_params
            + self.norm_params
        )  # fmt: skip

    def lora_params(self, r: int) -> int:
        """Weights of a rank-``r`` LoRA adapter on every linear layer of every block.

        Each adapted ``in -> out`` layer gets ``A: r x in`` and ``B: out x r``, so
        ``r * (in + out)`` weights (Hu et al. 2021, https://arxiv.org/abs/2106.09685).

        Args:
            r: LoRA rank.

        Returns:
            The number of adapter weights.

        Examples:
            >>> get_facts("gemma-3-270m").lora_params(8)
            1898496
        """
        return self.layers * r * sum(i + o for i, o in self.linear_shapes())


# Values copied from each hub id's config.json (all gated-MLP models). Gemma 3 1B checks
# out against its published count: 999,885,952 weights (keras-hub gemma3 presets).
# Columns: name, hub id, model_type, layers, hidden, heads, kv heads, head_dim, intermediate,
# vocab, tied embeddings, license.
_ROWS = [
    ("gemma-3-270m", "google/gemma-3-270m", "gemma3_text",
     18, 640, 4, 1, 256, 2048, 262144, True, "gemma"),
    ("gemma-3-1b", "google/gemma-3-1b-pt", "gemma3_text",
     26, 1152, 4, 1, 256, 6912, 262144, True, "gemma"),
    ("smollm2-135m", "HuggingFaceTB/SmolLM2-135M", "llama",
     30, 576, 9, 3, 64, 1536, 49152, True, "apache-2.0"),
    ("smollm2-360m", "HuggingFaceTB/SmolLM2-360M", "llama",
     32, 960, 15, 5, 64, 2560, 49152, True, "apache-2.0"),
    ("smollm2-1.7b", "HuggingFaceTB/SmolLM2-1.7B", "llama",
     24, 2048, 32, 32, 64, 8192, 49152, True, "apache-2.0"),
    ("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B", "qwen2",
     24, 896, 14, 2, 64, 4864, 151936, True, "apache-2.0"),
    ("qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B", "qwen2",
     28, 1536, 12, 2, 128, 8960, 151936, True, "apache-2.0"),
    ("llama-3.2-1b", "meta-llama/Llama-3.2-1B", "llama",
     16, 2048, 32, 8, 64, 8192, 128256, True, "llama3.2"),
    ("llama-3.2-3b", "meta-llama/Llama-3.2-3B", "llama",
     28, 3072, 24, 8, 128, 8192, 128256, True, "llama3.2"),
    ("phi-3-mini", "microsoft/Phi-3-mini-4k-instruct", "phi3",
     32, 3072, 32, 32, 96, 8192, 32064, False, "mit"),
    ("mistral-7b", "mistralai/Mistral-7B-v0.1", "mistral",
     32, 4096, 32, 8, 128, 14336, 32000, False, "apache-2.0"),
    ("llama-3-8b", "meta-llama/Meta-Llama-3-8B", "llama",
     32, 4096, 32, 8, 128, 14336, 128256, False, "llama3"),
    ("qwen-7b", "Qwen/Qwen2.5-7B", "qwen2",
     28, 3584, 28, 4, 128, 18944, 152064, False, "apache-2.0"),
]  # fmt: skip

CATALOG: dict[str, ModelFacts] = {row[0]: ModelFacts(*row[:11], license=row[11]) for row in _ROWS}
"""Models the workbench knows by a short name, with the shape facts of their config.json."""


def get_facts(name: str) -> ModelFacts:
    """Look up a catalog model by its short name (case-insensitive).

    Args:
        name: A key of :data:`CATALOG`, such as ``"gemma-3-270m"`` or ``"mistral-7b"``.

    Returns:
        The model's :class:`ModelFacts`.

    Raises:
        SpecError: ``name`` is not in the catalog; the message lists the known names.

    Examples:
        >>> get_facts("Gemma-3-270M").vocab
        262144
    """
    facts = CATALOG.get(str(name).strip().lower())
    if facts is None:
        known = ", ".join(sorted(CATALOG))
        msg = (
            f"model={name!r} is not in the workbench catalog; use one of: {known}, "
            "or pass a transformers config or a local model folder"
        )
        raise SpecError(msg)
    return facts


# Model types whose MLP is two matrices (fc_in, fc_out) instead of gate/up/down.
_PLAIN_MLP = {"gpt2", "gpt_neox", "gptj", "gpt_bigcode", "opt", "phi", "falcon", "bloom",
              "starcoder2", "codegen", "gpt_neo"}  # fmt: skip

# transformers' names for each fact, newest first (GPT-2 style configs use n_*).
_KEYS = {
    "layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "hidden": ("hidden_size", "n_embd", "d_model"),
    "heads": ("num_attention_heads", "n_head"),
    "vocab": ("vocab_size",),
}


def _read(config: Any, field: str) -> int:
    for key in _KEYS[field]:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    msg = f"config has no usable {field} (looked for {', '.join(_KEYS[field])})"
    raise SpecError(msg)


def facts_from_config(config: Any, name: str | None = None) -> ModelFacts:
    """Read :class:`ModelFacts` from a transformers ``PretrainedConfig``.

    Multimodal configs are reduced to their text model (``config.get_text_config()``).
    GPT-2 style names (``n_layer``, ``n_embd``, ``n_head``, ``n_inner``) are understood.

    Args:
        config: A transformers config object (loaded or built; no weights are needed).
        name: Name to record; defaults to the config's ``name_or_path`` or ``model_type``.

    Returns:
        The model's :class:`ModelFacts`.

    Raises:
        SpecError: The config lacks a layer count, width, head count or vocabulary size.

    Examples:
        >>> from transformers import GPT2Config
        >>> facts_from_config(GPT2Config()).intermediate
        3072
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers, hidden = _read(text, "layers"), _read(text, "hidden")
    heads, vocab = _read(text, "heads"), _read(text, "vocab")
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    inter = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None)
    model_type = getattr(text, "model_type", "") or "unknown"
    hub_id = getattr(config, "name_or_path", "") or ""
    return ModelFacts(
        name=name or hub_id or model_type, hub_id=hub_id, architecture=model_type,
        layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
        intermediate=inter or 4 * hidden, vocab=vocab,
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", True)),
        gated_mlp=model_type not in _PLAIN_MLP,
    )  # fmt: skip
