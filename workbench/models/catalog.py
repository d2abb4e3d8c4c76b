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

import contextlib
import dataclasses
import functools
import json
from collections import Counter, OrderedDict
from dataclasses import dataclass, replace
from typing import Any

from workbench.errors import SpecError

__all__ = [
    "CATALOG",
    "Experts",
    "LatentAttention",
    "Mixer",
    "ModelFacts",
    "block_kinds",
    "experts_from_config",
    "facts_from_config",
    "gemma4_mlp_widths",
    "get_facts",
    "matched_to_model",
    "mlp_width",
    "recurrent_blocks",
]


@dataclass(frozen=True)
class Experts:
    """The mixture-of-experts part of a model: what replaces the MLP in its expert blocks.

    transformers 5 stores each block's experts as fused 3D weights, which bitsandbytes does
    not quantize and ``"all-linear"`` LoRA adapts only where peft maps them (``adapted``).

    Attributes:
        count: Routed experts per expert block (``num_local_experts``, ``num_experts``).
        per_token: Experts each token is routed to (``num_experts_per_tok``).
        intermediate: Width of one expert's MLP (``moe_intermediate_size``, else
            ``intermediate_size``).
        layers: Blocks with experts; the others keep the dense MLP.
        shared_intermediate: Width of the shared expert MLP beside them (0: none).
        all_computed: Every token goes through every expert, weighted by its router score
            (Llama 4), so ``per_token`` does not bound the compute.
        adapted: peft adapts the fused expert weights (and the router's) under
            ``target="all-linear"``: one rank-r LoRA per expert.
        mlps_frozen: peft moves the MLP's layer names onto the adapted experts and leaves
            the linear MLPs beside them (dense blocks', the shared expert's) without LoRA:
            peft 0.21 did; 0.22 adapts them too.
        shared_gate: The shared expert's output is scaled by a ``hidden -> 1`` linear gate
            (``shared_expert_gate``: Qwen2-MoE, Qwen3-Next, Qwen3.5-MoE).
        fused_at_load: The checkpoint stores the experts one by one and transformers fuses
            them into the 3D weights while loading (a copy, not a view of the file).

    Examples:
        >>> from transformers import Qwen3MoeConfig
        >>> facts_from_config(Qwen3MoeConfig(num_hidden_layers=4, num_experts=8)).experts.layers
        4
    """

    count: int
    per_token: int
    intermediate: int
    layers: int
    shared_intermediate: int = 0
    all_computed: bool = False
    adapted: bool = False
    fused_at_load: bool = False
    mlps_frozen: bool = False
    shared_gate: bool = False

    @property
    def routed(self) -> int:
        """Experts that compute each token."""
        return self.count if self.all_computed else self.per_token

    def describe(self, layers: int) -> str:
        """One line for a model's facts table (``layers``: the model's block count).

        Examples:
            >>> Experts(16, 2, 512, 4, adapted=True).describe(4)
            '16 in every block, 2 per token; LoRA adapts each expert'
            >>> Experts(16, 2, 512, 3, 512, adapted=True, mlps_frozen=True).describe(4)[-66:]
            "(peft leaves the shared expert and dense blocks' MLP without LoRA)"
        """
        where = "every block" if self.layers == layers else f"{self.layers} of {layers} blocks"
        routing = "all compute every token" if self.all_computed else f"{self.per_token} per token"
        shared = ", one shared" if self.shared_intermediate else ""
        lora = "LoRA adapts each expert" if self.adapted else "LoRA leaves the experts frozen"
        others = [
            name
            for name, present in (("shared expert", self.shared_intermediate),
                                  ("dense blocks' MLP", self.layers < layers))
            if present
        ]  # fmt: skip
        if self.adapted and self.mlps_frozen and others:  # see ModelFacts.linear_shapes
            lora += f" (peft leaves the {' and '.join(others)} without LoRA)"
        return f"{self.count} in {where}, {routing}{shared}; {lora}"


@dataclass(frozen=True)
class LatentAttention:
    """Multi-head latent attention (MLA), as DeepSeek-V2/V3, MiniCPM3, GLM-4.7-Flash and
    Youtu-LLM attend: keys and values come up from one small latent per token, queries
    (optionally) from another, instead of from the hidden state.

    Each block has ``kv_a_proj_with_mqa`` (hidden -> latent + rope), ``kv_b_proj``
    (latent -> heads x (nope + value)), the query's ``q_a_proj`` and ``q_b_proj`` through its
    latent (or one ``q_proj`` when ``query_rank`` is 0), and ``o_proj``; a norm on each latent.

    Attributes:
        query_rank: Width of the query latent (``q_lora_rank``; 0: no query latent).
        kv_rank: Width of the key/value latent (``kv_lora_rank``).
        nope: Per-head query/key width without rotary positions (``qk_nope_head_dim``).
        rope: Per-head query/key width with rotary positions (``qk_rope_head_dim``), shared
            by all heads on the key side.
        value: Per-head value width (``v_head_dim``).

    Examples:
        >>> mla = LatentAttention(query_rank=48, kv_rank=32, nope=16, rope=8, value=16)
        >>> mla.linear_shapes(hidden=64, heads=4)
        ((64, 48), (48, 96), (64, 40), (32, 128), (64, 64))
    """

    query_rank: int
    kv_rank: int
    nope: int
    rope: int
    value: int

    def linear_shapes(self, hidden: int, heads: int) -> tuple[tuple[int, int], ...]:
        """(in_features, out_features) of its Linear layers in one block, queries first."""
        query_key = heads * (self.nope + self.rope)
        query = ((hidden, self.query_rank), (self.query_rank, query_key))
        if not self.query_rank:
            query = ((hidden, query_key),)
        latent = (hidden, self.kv_rank + self.rope)  # with the key's shared rotary part
        key_value = (self.kv_rank, heads * (self.nope + self.value))
        return (*query, latent, key_value, (heads * self.value, hidden))

    @property
    def norm_params(self) -> int:
        """Weights of the norms on its latents, per block."""
        return self.query_rank + self.kv_rank

    def describe(self) -> str:
        """One line for a model's facts table.

        Examples:
            >>> LatentAttention(1536, 512, 128, 64, 128).describe()
            'latent (MLA): keys and values from a 512-wide latent, queries from a 1536-wide one'
        """
        query = f"queries from a {self.query_rank}-wide one" if self.query_rank else ""
        keys = f"latent (MLA): keys and values from a {self.kv_rank}-wide latent"
        return f"{keys}, {query}" if query else keys


@dataclass(frozen=True)
class Mixer:
    """The token mixer of a hybrid model's recurrent blocks: what replaces their attention.

    LFM2's blocks are mostly gated short convolutions; Granite 4.0-H's and Bamba's mostly
    Mamba-2 state-space layers; Qwen3.5's mostly Gated DeltaNet linear attention. Each such
    block keeps its MLP; only attention is replaced. Falcon-H1's blocks run a Mamba-2 layer
    beside attention instead (``parallel``).

    Attributes:
        kind: ``"short_conv"`` (LFM2), ``"mamba2"`` (Granite 4.0-H, Bamba, Falcon-H1) or
            ``"gated_deltanet"`` (Qwen3.5).
        layers: Blocks with this mixer (instead of attention, unless ``parallel``).
        inner: Width the mixer works in (LFM2: ``hidden_size``; Mamba-2: ``mamba_expand``
            times it; Gated DeltaNet: its value heads times their width).
        kernel: Width of its depthwise convolution (``conv_L_cache``, ``mamba_d_conv``,
            ``linear_conv_kernel_dim``).
        heads: Mamba-2 heads (``mamba_n_heads``), Gated DeltaNet value heads; 0 for a short
            convolution.
        state: Mamba-2 state size per group (``mamba_d_state``); Gated DeltaNet key width
            per head.
        groups: Mamba-2 groups of B and C (``mamba_n_groups``); Gated DeltaNet key heads.
        chunk: Tokens per chunk of its scan (``mamba_chunk_size``; 64 for Gated DeltaNet).
        conv_bias: The convolution has a bias.
        with_experts: How many of its blocks also have experts.
        gated_norm: Mamba-2's gated RMSNorm before the output projection (Falcon-H1 may
            leave it out: ``mamba_rms_norm``).
        parallel: The mixer runs beside attention in every block, its output added to
            attention's (Falcon-H1), rather than in place of it.

    Examples:
        >>> from transformers import Lfm2Config
        >>> kinds = ["conv", "conv", "full_attention"]
        >>> mixer = facts_from_config(Lfm2Config(num_hidden_layers=3, layer_types=kinds)).mixer
        >>> mixer.kind, mixer.layers
        ('short_conv', 2)
    """

    kind: str
    layers: int
    inner: int
    kernel: int
    heads: int = 0
    state: int = 0
    groups: int = 0
    chunk: int = 0
    conv_bias: bool = False
    with_experts: int = 0
    gated_norm: bool = True
    parallel: bool = False

    @property
    def channels(self) -> int:
        """Channels of its convolution (Mamba-2 convolves x, B and C together; Gated
        DeltaNet its queries, keys and values)."""
        return self.inner + 2 * self.groups * self.state

    def linear_shapes(self, hidden: int, adapted: bool = False) -> tuple[tuple[int, int], ...]:
        """(in_features, out_features) of its Linear layers: the input and output projections.

        With ``adapted=True``, only those LoRA adapts: a Mamba-2 layer's output projection
        is read by the fused kernel and left out
        (:func:`workbench.train.core.kernel_read_projections`).

        Examples:
            >>> Mixer("short_conv", layers=10, inner=1024, kernel=3).linear_shapes(1024)
            ((1024, 3072), (1024, 1024))
            >>> Mixer("mamba2", layers=2, inner=64, kernel=4, heads=4).linear_shapes(32, True)
            ((32, 132),)
        """
        if self.kind == "short_conv":  # B, C and x in one projection
            return (hidden, 3 * hidden), (hidden, hidden)
        if self.kind == "gated_deltanet":  # q, k and v; the output gate; beta; the decay
            heads = (hidden, self.heads)
            return (hidden, self.channels), (hidden, self.inner), heads, heads, (self.inner, hidden)
        # z (the gate), x, B, C and one time step per head in one projection
        projection = (hidden, self.inner + self.channels + self.heads)
        return (projection,) if adapted else (projection, (self.inner, hidden))

    @property
    def other_params(self) -> int:
        """Its weights that are not Linear layers, per block (kept in float when quantized):
        the convolution, and Mamba-2's A, D, time-step bias and gated norm."""
        conv = self.channels * (self.kernel + int(self.conv_bias))
        if self.kind == "short_conv":
            return conv
        if self.kind == "gated_deltanet":  # A, the time-step bias, a norm over one head
            return conv + 2 * self.heads + self.inner // self.heads
        return conv + 3 * self.heads + (self.inner if self.gated_norm else 0)

    def describe(self, layers: int) -> str:
        """One line for a model's facts table (``layers``: the model's block count).

        Examples:
            >>> Mixer("mamba2", layers=28, inner=1536, kernel=4, heads=48).describe(32)
            '28 Mamba-2, 4 attention'
            >>> beside = Mixer("mamba2", layers=24, inner=1536, kernel=4, parallel=True)
            >>> beside.describe(24)
            '24 attention + Mamba-2 side by side'
        """
        names = {"short_conv": "short-convolution", "mamba2": "Mamba-2",
                 "gated_deltanet": "Gated DeltaNet"}  # fmt: skip
        name = names[self.kind]
        if self.parallel:
            return f"{layers} attention + {name} side by side"
        return f"{self.layers} {name}, {layers - self.layers} attention"


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
        fused_qkv: q, k and v are one Linear layer (Phi-3's ``qkv_proj``): same weights,
            one LoRA pair instead of three.
        fused_gate_up: gate and up are one Linear layer (Phi-3's ``gate_up_proj``,
            Granite's ``input_linear``).
        attention_gate: The query projection also makes a gate for the attention output
            (Qwen3.5): twice as wide.
        per_layer_input: Width of each block's own token embedding (Gemma 3n and 4's
            ``hidden_size_per_layer_input``; 0: none), which a gate and a projection in the
            block mix in.
        per_layer_vocab: Rows of those per-block embeddings (``vocab_size_per_layer_input``).
        experts: The mixture of experts, ``None`` for a dense model.
        mixer: What replaces attention in a hybrid model's recurrent blocks, ``None`` when
            every block attends.
        latent_attention: The blocks attend through latents (DeepSeek's MLA), ``None`` for
            the usual q, k, v and o projections (then ``heads``, ``kv_heads`` and
            ``head_dim`` describe them).
        other_params: Weights outside the structure the other fields describe (learned position
            embeddings, biases; negative where it counts a norm the model lacks), so that
            :attr:`params` is the model's own count; set from the model built from the config.

    Examples:
        >>> facts = get_facts("smollm2-135m")
        >>> facts.architecture, facts.layers, facts.hidden, facts.heads, facts.kv_heads
        ('llama', 30, 576, 9, 3)
        >>> facts.params, facts.tied_embeddings, facts.experts is None
        (134515008, True, True)
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
    fused_qkv: bool = False
    fused_gate_up: bool = False
    attention_gate: bool = False
    per_layer_input: int = 0
    per_layer_vocab: int = 0
    experts: Experts | None = None
    mixer: Mixer | None = None
    latent_attention: LatentAttention | None = None
    other_params: int = 0

    def _mlp_shapes(self, width: int) -> tuple[tuple[int, int], ...]:
        if self.gated_mlp and self.fused_gate_up:
            return (self.hidden, 2 * width), (width, self.hidden)
        up = (self.hidden, width)
        return (*((up, up) if self.gated_mlp else (up,)), (width, self.hidden))

    def linear_shapes(
        self, expert_block: bool = False, attention: bool = True, adapted: bool = False
    ) -> tuple[tuple[int, int], ...]:
        """(in_features, out_features) of each linear layer in one block.

        These are the layers peft's ``target_modules="all-linear"`` adapts and that
        bitsandbytes quantizes (q, k, v, o, then gate, up, down; or fc_in, fc_out). In an
        expert block (``expert_block=True``) the MLP is the shared expert's, if any: the
        experts themselves are fused 3D weights, not linear layers. In a hybrid model's
        recurrent block (``attention=False``) the mixer's projections replace q, k, v, o;
        a parallel mixer's (Falcon-H1) come after them. ``adapted=True``: only the layers
        LoRA adapts (see :meth:`Mixer.linear_shapes`; no MLP where peft adapts the experts).

        Returns:
            One ``(in, out)`` pair per linear layer of a block.

        Examples:
            >>> get_facts("gemma-3-270m").linear_shapes()[:2]
            ((640, 1024), (640, 256))
        """
        mixing = self._attention_shapes()
        if self.mixer is not None and not attention:
            mixing = self.mixer.linear_shapes(self.hidden, adapted)
        elif self.mixer is not None and self.mixer.parallel:
            mixing = (*mixing, *self.mixer.linear_shapes(self.hidden, adapted))
        if self.per_layer_input:  # the block's own embedding: its gate and its projection
            mixing = (
                *mixing,
                (self.hidden, self.per_layer_input),
                (self.per_layer_input, self.hidden),
            )
        # peft 0.21 maps "all-linear" onto adapted experts by the MLP's layer names
        # (gate_proj, up_proj, down_proj), which takes every other Linear layer of those
        # names off the adapter: the dense blocks' MLPs and the shared experts (measured on
        # Qwen3-MoE and DeepSeek-V3; Experts.mlps_frozen).
        gate = ((self.hidden, 1),) if expert_block and self.experts.shared_gate else ()
        if adapted and self.experts is not None and self.experts.mlps_frozen:
            return (*mixing, *gate)
        if not expert_block:
            return (*mixing, *self._mlp_shapes(self.intermediate))
        shared = self.experts.shared_intermediate if self.experts else 0
        return (*mixing, *(self._mlp_shapes(shared) if shared else ()), *gate)

    def _attention_shapes(self) -> tuple[tuple[int, int], ...]:
        if self.latent_attention is not None:
            return self.latent_attention.linear_shapes(self.hidden, self.heads)
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        if self.fused_qkv:
            return (self.hidden, q + 2 * kv), (q, self.hidden)
        query = (self.hidden, 2 * q if self.attention_gate else q)  # with its gate, if any
        return query, (self.hidden, kv), (self.hidden, kv), (q, self.hidden)

    @property
    def expert_layers(self) -> int:
        """Blocks whose MLP is a mixture of experts (0 for a dense model)."""
        return self.experts.layers if self.experts else 0

    def block_kinds(self) -> dict[tuple[bool, bool], int]:
        """How many blocks of each kind the model has, by ``(expert_block, attention)``.

        Kinds the model does not have are left out.

        Examples:
            >>> get_facts("gemma-3-270m").block_kinds()
            {(False, True): 18}
        """
        replaced = self.mixer is not None and not self.mixer.parallel
        recurrent = self.mixer.layers if replaced else 0
        recurrent_experts = self.mixer.with_experts if replaced else 0
        counts = {
            (True, False): recurrent_experts,
            (True, True): self.expert_layers - recurrent_experts,
            (False, False): recurrent - recurrent_experts,
        }
        counts[(False, True)] = self.layers - sum(counts.values())
        return {kind: n for kind, n in sorted(counts.items()) if n > 0}

    def sum_over_blocks(self, count: Any) -> int:
        """``count(expert_block, attention)`` summed over the model's blocks.

        ``count`` is asked only of the kinds of block the model has (see
        :meth:`block_kinds`).

        Examples:
            >>> facts = get_facts("gemma-3-270m")
            >>> facts.sum_over_blocks(lambda expert_block, attention: 1) == facts.layers
            True
        """
        return sum(n * count(*kind) for kind, n in self.block_kinds().items())

    def _block_params(self, expert_block: bool, attention: bool) -> int:
        """Weights of one block of a kind: linear layers, experts and mixer extras."""
        linear = sum(i * o for i, o in self.linear_shapes(expert_block, attention))
        experts = self.expert_params // max(self.expert_layers, 1) if expert_block else 0
        mixes = self.mixer is not None and (self.mixer.parallel or not attention)
        extras = self.mixer.other_params if mixes else 0
        return linear + experts + extras

    @property
    def per_layer_projection(self) -> tuple[int, int]:
        """(in, out) of the linear layer that makes every block's share of the per-block
        embeddings from the token's hidden state ((0, 0): the model has none)."""
        if not self.per_layer_input:
            return 0, 0
        return self.hidden, self.layers * self.per_layer_input

    @property
    def block_linear_params(self) -> int:
        """Weights of all linear layers in all blocks (and the per-block embeddings'
        projection): the part that 4/8-bit quantizes."""
        blocks = self.sum_over_blocks(
            lambda moe, attention: sum(i * o for i, o in self.linear_shapes(moe, attention))
        )
        into, out = self.per_layer_projection
        return blocks + into * out

    @property
    def largest_block_params(self) -> int:
        """Weights of the largest block (with its experts): what FSDP gathers at once.

        Examples:
            >>> facts = get_facts("mistral-7b")
            >>> facts.largest_block_params * facts.layers == facts.block_linear_params
            True
        """
        return max(self._block_params(*kind) for kind in self.block_kinds())

    @property
    def mixer_params(self) -> int:
        """Weights of the recurrent blocks' mixers that are not Linear layers (0: none)."""
        return self.mixer.layers * self.mixer.other_params if self.mixer else 0

    @property
    def expert_params(self) -> int:
        """Weights of the fused experts and their routers (kept in float when quantized).

        Examples:
            >>> get_facts("mistral-7b").expert_params
            0
        """
        if self.experts is None:
            return 0
        one = sum(i * o for i, o in self._mlp_shapes(self.experts.intermediate))
        router = self.hidden * self.experts.count
        return self.experts.layers * (self.experts.count * one + router)

    @property
    def embedding_params(self) -> int:
        """Weights of the input embeddings (``vocab x hidden``, and the per-block ones).

        Examples:
            >>> from transformers import Gemma4TextConfig
            >>> facts = facts_from_config(Gemma4TextConfig(num_hidden_layers=2))
            >>> facts.embedding_params == (262144 * 2304 + 262144 * 2 * 256)
            True
        """
        return self.vocab * self.hidden + self.per_layer_vocab * self.layers * self.per_layer_input

    @property
    def lm_head_params(self) -> int:
        """Weights of the output layer; 0 when it is tied to the embedding."""
        return 0 if self.tied_embeddings else self.vocab * self.hidden

    @property
    def norm_params(self) -> int:
        """Weights of the normalisation layers (two per block and a final one, and those on
        the latents of latent attention)."""
        blocks = (2 * self.layers + 1) * self.hidden
        if self.latent_attention is None:
            return blocks
        attending = self.sum_over_blocks(lambda expert_block, attention: int(attention))
        return blocks + attending * self.latent_attention.norm_params

    @property
    def params(self) -> int:
        """All weights of the model (biases and small extras left out, unless counted in
        :attr:`other_params`)."""
        return (
            self.block_linear_params + self.expert_params + self.mixer_params
            + self.embedding_params + self.lm_head_params + self.norm_params + self.other_params
        )  # fmt: skip

    @property
    def params_in_blocks(self) -> int:
        """Weights inside the transformer blocks (each block's linear layers, experts, mixer
        and two norms), as the model's list of blocks holds them."""
        into, out = self.per_layer_projection
        outside = self.embedding_params + self.lm_head_params + self.hidden + into * out
        return self.params - self.other_params - outside

    def lora_params(self, r: int) -> int:
        """Weights of a rank-``r`` LoRA adapter on every linear layer of every block.

        Each adapted ``in -> out`` layer gets ``A: r x in`` and ``B: out x r``, so
        ``r * (in + out)`` weights (Hu et al. 2021, https://arxiv.org/abs/2106.09685).
        Experts peft adapts get one such pair per expert and fused weight, and the router one.

        Args:
            r: LoRA rank.

        Returns:
            The number of adapter weights.

        Examples:
            >>> get_facts("gemma-3-270m").lora_params(8)
            1898496
        """

        def in_plus_out(expert_block: bool, attention: bool) -> int:
            return sum(i + o for i, o in self.linear_shapes(expert_block, attention, True))

        linear = r * (self.sum_over_blocks(in_plus_out) + sum(self.per_layer_projection))
        if self.experts is None or not self.experts.adapted:
            return linear
        experts = self.experts
        one = sum(i + o for i, o in self._mlp_shapes(experts.intermediate))
        if self.gated_mlp:
            # gate and up are one fused (hidden -> 2 x width) weight, which peft adapts at
            # rank 2r (one r for each of the two it replaces): 2 * (h + 2w) + (w + h)
            one = 3 * self.hidden + 5 * experts.intermediate
        router = self.hidden + experts.count
        return linear + experts.layers * r * (experts.count * one + router)


# Model types whose projections transformers fuses into one Linear layer.
_FUSED_QKV = {"phi3", "gpt2", "gpt_neox", "gpt_bigcode", "falcon", "bloom", "mpt"}
_FUSED_GATE_UP = {"phi3", "granitemoeshared", "granitemoehybrid"}
_GATED_ATTENTION = {"qwen3_5_text"}  # q_proj also makes the output's gate


def _fusions(model_type: str) -> dict[str, bool]:
    return dict(
        fused_qkv=model_type in _FUSED_QKV,
        fused_gate_up=model_type in _FUSED_GATE_UP,
        attention_gate=model_type in _GATED_ATTENTION,
    )


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

CATALOG: dict[str, ModelFacts] = {
    row[0]: ModelFacts(*row[:11], license=row[11], **_fusions(row[2])) for row in _ROWS
}
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
              "starcoder2", "codegen", "gpt_neo", "mpt", "xglm", "biogpt", "nemotron", "arcee",
              "apertus", "persimmon", "nanochat", "jais2"}  # fmt: skip

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
        SpecError: The config lacks a layer count, width, head count or vocabulary size, or
            its blocks are laid out in a way the estimate does not model (Nemotron-H's
            single-purpose blocks, a pure Mamba, blocks that do not attend in a family whose
            mixer it does not know: Zamba2, Jamba, Qwen3-Next, RecurrentGemma).

    Examples:
        >>> from transformers import GPT2Config
        >>> facts_from_config(GPT2Config()).intermediate
        3072
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    unmodelled = _UNMODELLED.get(getattr(text, "model_type", ""))
    if unmodelled:
        msg = f"the memory estimate does not model {text.model_type} models yet: {unmodelled}"
        raise SpecError(msg)
    if getattr(text, "is_heterogeneous", False) or _sizes_per_layer(text):
        text = _LayerMeans(text)
    layers, hidden = _read(text, "layers"), _read(text, "hidden")
    heads, vocab = _read(text, "heads"), _read(text, "vocab")
    kv_heads = _kv_heads(text, heads)
    head_dim = _declared(text, "head_dim") or hidden // heads
    inter = mlp_width(text)
    model_type = getattr(text, "model_type", "") or "unknown"
    hub_id = getattr(config, "name_or_path", "") or ""
    expert_blocks = _expert_blocks(text, layers)
    experts = _experts(text, len(expert_blocks), inter or 4 * hidden)
    if experts is not None and not _declared(text, "moe_intermediate_size"):
        # intermediate_size is the experts' width; a dense block (if any) has its own
        inter = getattr(text, "intermediate_size_mlp", None) or inter
    return ModelFacts(
        name=name or hub_id or model_type, hub_id=hub_id, architecture=model_type,
        layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
        intermediate=inter or 4 * hidden, vocab=vocab,
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", True)),
        gated_mlp=model_type not in _PLAIN_MLP, **_fusions(model_type), experts=experts,
        per_layer_input=getattr(text, "hidden_size_per_layer_input", None) or 0,
        per_layer_vocab=getattr(text, "vocab_size_per_layer_input", None) or 0,
        mixer=_mixer(text, hidden, expert_blocks if experts else set()),
        latent_attention=_latent_attention(text),
    )  # fmt: skip


def experts_from_config(config: Any) -> Experts | None:
    """The experts of a mixture-of-experts ``config`` (``None`` for a dense one), read even
    for a model whose layout :func:`facts_from_config` refuses (Jamba's Mamba blocks).

    Raises:
        SpecError: The config lacks a layer count or width.

    Examples:
        >>> from transformers import JambaConfig
        >>> experts_from_config(JambaConfig(num_hidden_layers=4, num_experts=8)).describe(4)
        '8 in 2 of 4 blocks, 2 per token; LoRA leaves the experts frozen'
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers, hidden = _read(text, "layers"), _read(text, "hidden")
    expert_blocks = _expert_blocks(text, layers)
    if not expert_blocks:
        return None
    return _experts(text, len(expert_blocks), mlp_width(text) or 4 * hidden)


def block_kinds(config: Any) -> str | None:
    """How many blocks of each kind a hybrid ``config`` lists, in order of first appearance;
    ``None`` when it lists none or only one kind.

    Examples:
        >>> from transformers import JambaConfig
        >>> block_kinds(JambaConfig(num_hidden_layers=4, attn_layer_period=4, attn_layer_offset=3))
        '3 mamba, 1 attention'
    """
    for key in ("block_types", "layers_block_type", "layer_types"):
        listed = getattr(config, key, None)
        if isinstance(listed, (list, tuple)) and listed:
            counts = Counter(str(kind) for kind in listed)
            if len(counts) > 1:
                return ", ".join(f"{n} {kind}" for kind, n in counts.items())
            return None
    return None


# How far the blocks' weights read from a config may be from the model's own count: biases
# and small extras make up to ~3% of a tiny test model's blocks; a structure the facts do
# not describe (another attention, another MLP) is off by more.
_BLOCK_COUNT_TOLERANCE = 0.10


def matched_to_model(facts: ModelFacts, config: Any) -> ModelFacts:
    """``facts`` read from ``config``, checked against the model the config builds, with
    :attr:`~ModelFacts.other_params` set so that :attr:`~ModelFacts.params` is its count.

    The model is built on the meta device (no memory), once per config (a multimodal
    config's text model). A config transformers cannot build is taken as read.

    Raises:
        SpecError: The blocks' weights read from the config are more than 10% off the
            model's own, or the model has no list of as many blocks as the config reads (an
            encoder-decoder's decoder): the estimate would be wrong in a way it cannot tell.

    Examples:
        >>> from transformers import BloomConfig
        >>> config = BloomConfig(hidden_size=64, n_layer=2, n_head=4, vocab_size=512)
        >>> facts = matched_to_model(facts_from_config(config), config)
        >>> facts.params, facts.other_params  # biases and the embedding's norm
        (132992, 1600)
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    counts = _model_counts(text, facts.layers)
    if counts is None:
        return facts
    total, in_blocks = counts
    if not in_blocks:
        msg = (
            f"the memory estimate does not model {facts.architecture} models yet: it reads "
            f"{facts.layers} blocks from the config, and the model holds no list of that many"
        )
        raise SpecError(msg)
    read = facts.params_in_blocks
    if abs(read - in_blocks) > _BLOCK_COUNT_TOLERANCE * in_blocks:
        msg = (
            f"the memory estimate does not model {facts.architecture} models yet: their "
            f"blocks hold {in_blocks:,} weights and it reads {read:,} from the config (an "
            "attention, MLP or experts layout it does not know)"
        )
        raise SpecError(msg)
    return replace(facts, other_params=total - facts.params)


def _model_counts(config: Any, layers: int) -> tuple[int, int] | None:
    """(weights, weights in the list of blocks) of the model ``config`` builds, or ``None``."""
    import torch

    model = _built_on_meta(config)
    if model is None:
        return None
    total = sum(p.numel() for p in model.parameters())
    blocks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == layers]
    in_blocks = max((sum(p.numel() for p in m.parameters()) for m in blocks), default=0)
    return total, in_blocks


# config JSON -> the model built on the meta device, or None; the most recent few only
_META_MODELS: OrderedDict[str, Any] = OrderedDict()
_META_MODELS_KEPT = 8
_NOT_SHAPE = ("_name_or_path", "transformers_version")  # the same model from another folder


def _built_on_meta(config: Any) -> Any:
    """The model ``config`` builds, on the meta device (no memory, no weights), once per
    shape of config (a kernel loading many folders keeps the last few); ``None`` for a config
    transformers cannot build (a raw config.json it does not know, a family it lacks)."""
    if not hasattr(config, "to_dict"):
        return None
    settings = {k: v for k, v in config.to_dict().items() if k not in _NOT_SHAPE}
    key = json.dumps(settings, sort_keys=True, default=str)
    if key not in _META_MODELS:
        _META_MODELS[key] = _build_on_meta(config)
        while len(_META_MODELS) > _META_MODELS_KEPT:
            _META_MODELS.popitem(last=False)
    _META_MODELS.move_to_end(key)
    return _META_MODELS[key]


def _build_on_meta(config: Any) -> Any:
    import warnings

    try:
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # a config's own advice, said again at load
        try:
            with warnings.catch_warnings(), torch.device("meta"):
                warnings.simplefilter("ignore")
                return AutoModelForCausalLM.from_config(config)
        finally:
            hf_logging.set_verbosity(verbosity)
    except Exception:
        return None


def _latent_attention(config: Any) -> LatentAttention | None:
    """The config's latent attention (``kv_lora_rank`` and the per-head widths), if any."""
    kv_rank = _declared(config, "kv_lora_rank")
    if not isinstance(kv_rank, int) or kv_rank <= 0:
        return None
    widths = {
        key: _declared(config, name) or 0
        for key, name in (("nope", "qk_nope_head_dim"), ("rope", "qk_rope_head_dim"),
                          ("value", "v_head_dim"))
    }  # fmt: skip
    query_rank = _declared(config, "q_lora_rank") or 0
    return LatentAttention(query_rank=query_rank, kv_rank=kv_rank, **widths)


def _kv_heads(config: Any, heads: int) -> int:
    """Key/value heads; Falcon's ``multi_query`` (before its new decoder architecture) is one."""
    if getattr(config, "model_type", "") == "falcon":
        multi_query = config.multi_query and not config.new_decoder_architecture
        return 1 if multi_query else config.num_kv_heads or heads
    return getattr(config, "num_key_value_heads", None) or heads  # set after init by some


# Families whose blocks are not an attention or recurrent layer followed by an MLP: counted as
# such, a tiny Nemotron-H came out at 383 times its weights, with experts in every block (the
# config's defaults; it had none)
_UNMODELLED = {
    "nemotron_h": "each of its blocks is a Mamba-2, attention, MLP or experts layer alone",
    "mamba": "its blocks are Mamba layers without attention or MLP",
    "mamba2": "its blocks are Mamba-2 layers without attention or MLP",
    "falcon_mamba": "its blocks are Mamba layers without attention or MLP",
}


# Sizes a config may give block by block as a list (Gemma 3n's intermediate_size)
_SIZES = ("intermediate_size", "num_key_value_heads", "num_attention_heads", "head_dim")


def _sizes_per_layer(config: Any) -> bool:
    return any(isinstance(getattr(config, key, None), (list, tuple)) for key in _SIZES)


class _LayerMeans:
    """A config whose blocks differ (Gemma 4's global blocks have wider heads and its last
    blocks may have wider MLPs, Gemma 3n's MLPs are listed block by block) read as a uniform
    one: a per-layer value is its mean over
    the blocks, which keeps the sums over blocks (weights, saved activations) right where they
    are linear in it."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self._per_layer = set(getattr(config, "per_layer_attributes", None) or ())

    def __getattr__(self, key: str) -> Any:
        if key in self._per_layer:
            values = [getattr(layer, key) for layer in self.config.per_layer_config]
        elif key == "intermediate_size" and getattr(self.config, "use_double_wide_mlp", False):
            values = gemma4_mlp_widths(self.config)
        else:
            values = getattr(self.config, key)
            if key not in _SIZES or not isinstance(values, (list, tuple)):
                return values
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if not numbers or len(numbers) != len(values):
            return values[0] if values else None  # not numbers: the first block's
        return round(sum(numbers) / len(numbers))


def gemma4_mlp_widths(config: Any) -> list[int]:
    """Each block's MLP width in a Gemma 4 text config: ``intermediate_size``, twice that on
    the blocks that reuse an earlier block's keys and values when ``use_double_wide_mlp``
    (E2B's last 20; the config says so only through these two settings).

    Examples:
        >>> from transformers import AutoConfig
        >>> config = AutoConfig.for_model("gemma4_text", num_hidden_layers=3,
        ...     intermediate_size=8, num_kv_shared_layers=1, use_double_wide_mlp=True,
        ...     layer_types=["sliding_attention", "full_attention", "full_attention"])
        >>> gemma4_mlp_widths(config)
        [8, 8, 16]
    """
    double = 2 if getattr(config, "use_double_wide_mlp", False) else 1
    width = int(config.intermediate_size)
    return [width * (double if mode == "reuse" else 1) for mode in config.kv_sharing_modes]


def mlp_width(config: Any) -> int | None:
    """The width of a block's MLP as the model builds it (``None``: the config does not say).

    ``intermediate_size``, or GPT-2's ``n_inner``; LFM2 derives its own from it (two thirds,
    times ``block_ffn_dim_multiplier``, rounded up to ``block_multiple_of``), as its MLP does;
    a Granite 4.0-H without experts has only its shared MLP.

    Examples:
        >>> from transformers import GraniteMoeHybridConfig, Lfm2Config
        >>> mlp_width(Lfm2Config(intermediate_size=6656, block_multiple_of=256))
        4608
        >>> mlp_width(GraniteMoeHybridConfig(num_local_experts=0, shared_intermediate_size=2048))
        2048
    """
    if getattr(config, "num_local_experts", None) == 0 and hasattr(
        config, "shared_intermediate_size"
    ):
        return config.shared_intermediate_size
    width = _declared_width(config)
    if width and getattr(config, "block_auto_adjust_ff_dim", False):
        width = int(int(2 * width / 3) * (config.block_ffn_dim_multiplier or 1))
        width = -(-width // config.block_multiple_of) * config.block_multiple_of
    return width


# The MLP width as each family's config names it (Llama, GPT-2, OPT, Falcon).
_WIDTH_KEYS = ("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size")


def _declared_width(config: Any) -> int | None:
    """The MLP width under the key the config's class declares: a key it does not declare
    (``intermediate_size`` given to a GPT-2 or BLOOM config) is kept but never read by the
    model. ``None``: the family's MLP is four times the hidden size (BLOOM; MPT too, whatever
    its ``expansion_ratio`` says, as transformers builds it)."""
    return next(filter(None, (_declared(config, key) for key in _WIDTH_KEYS)), None)


def _declared(config: Any, key: str) -> Any:
    """``config.key`` if the config's class declares that field (else ``None``): a key given
    to a class that does not declare it is kept as an attribute the model never reads. A raw
    ``config.json`` read as attributes declares whatever it holds."""
    inner = config.config if isinstance(config, _LayerMeans) else config
    declared = _declared_keys(type(inner))
    if declared and key not in declared and not hasattr(type(inner), key):  # not a property
        return None
    return getattr(config, key, None)


@functools.cache
def _declared_keys(config_class: type) -> frozenset[str]:
    """The fields a config class declares, the names its ``attribute_map`` aliases, and the
    attributes its default instance sets for itself (Switch's ``decoder_sparse_step``)."""
    if not dataclasses.is_dataclass(config_class):
        return frozenset()
    keys = {field.name for field in dataclasses.fields(config_class)}
    keys |= set(getattr(config_class, "attribute_map", None) or ())
    with contextlib.suppress(Exception):  # a class that needs arguments: its fields suffice
        keys |= set(vars(config_class()))
    return frozenset(keys)


# Mixture-of-experts config keys, as transformers' MoE configs name them.
_EXPERT_KEYS = {
    "count": ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"),
    "per_token": ("num_experts_per_tok", "moe_topk", "top_k", "moe_k"),
}
# Model types whose every token goes through every expert (measured with saved-tensor hooks:
# Llama 4's activations grow with the number of experts, not with num_experts_per_tok).
_ALL_EXPERTS_COMPUTED = {"llama4", "llama4_text"}
# HunYuan's expert blocks keep a dense-width MLP (`shared_mlp`) beside the experts, named by
# no config key; these scale their shared expert by a linear `shared_expert_gate`.
_SHARED_MLP_OF_DENSE_WIDTH = {"hunyuan_v1_moe"}
_SHARED_EXPERT_GATED = {"qwen2_moe", "qwen3_next", "qwen3_5_moe", "qwen3_5_moe_text"}


def _first_int(config: Any, keys: tuple[str, ...]) -> int:
    for key in keys:
        value = _declared(config, key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def _expert_blocks(config: Any, layers: int) -> set[int]:
    """Indices of the blocks with experts (if the model has any): all, unless the config
    names dense ones."""
    listed = _declared(config, "moe_layers")
    if isinstance(listed, (list, tuple)):
        return {i for i in listed if isinstance(i, int) and 0 <= i < layers}
    kinds = _declared(config, "mlp_layer_types")  # "dense" or "sparse" per block
    if isinstance(kinds, (list, tuple)) and kinds:
        return {i for i, kind in enumerate(kinds[:layers]) if kind != "dense"}
    single_purpose = _declared(config, "layers_block_type")  # Nemotron-H: "moe" blocks
    if isinstance(single_purpose, (list, tuple)) and {"mlp", "moe"} & set(single_purpose):
        return {i for i, kind in enumerate(single_purpose[:layers]) if kind == "moe"}
    period = _declared(config, "expert_layer_period")  # Jamba: every period-th block
    if isinstance(period, int) and period > 0:
        offset = _declared(config, "expert_layer_offset") or 0
        return {i for i in range(layers) if i % period == offset}
    dense = set(_declared(config, "mlp_only_layers") or ())
    step = _first_int(config, ("decoder_sparse_step", "moe_layer_interval")) or 1
    first = _first_int(config, _FIRST_EXPERT_BLOCK)
    end = _first_int(config, ("moe_layer_end_index",))  # inclusive (ERNIE 4.5)
    last = min(end, layers - 1) if end else layers - 1
    return {i for i in range(first, last + 1) if i not in dense and (i + 1) % step == 0}


_FIRST_EXPERT_BLOCK = (
    "first_k_dense_replace",  # DeepSeek
    "num_dense_layers",  # LFM2-MoE
    "moe_layer_start_index",  # ERNIE 4.5
)


# Hybrid families whose non-attention blocks the memory estimate knows, by model type.
_MIXERS = {"lfm2": "short_conv", "lfm2_moe": "short_conv", "granitemoehybrid": "mamba2",
           "bamba": "mamba2", "qwen3_5_text": "gated_deltanet", "falcon_h1": "mamba2"}  # fmt: skip
_PARALLEL_MIXERS = {"falcon_h1"}  # Mamba-2 beside attention in every block
_DELTANET_CHUNK = 64  # transformers' chunked gated delta rule


def _attention_only(kind: Any) -> bool:
    """Whether a block kind named in a config is attention alone: ``"full_attention"``,
    ``"sliding_attention"``, ``"chunked_attention"``..., but not ``"linear_attention"``
    (Gated DeltaNet), ``"conv"``, ``"mamba"`` or ``"hybrid"`` (a recurrent layer beside
    attention: Falcon-H1, Zamba2)."""
    return str(kind) != "linear_attention" and str(kind).endswith("attention")


def recurrent_blocks(config: Any) -> list[int]:
    """Indices of a hybrid model's blocks with a recurrent layer, from its ``layer_types``
    (LFM2 says ``"conv"``, Granite 4.0-H ``"mamba"`` before loading and ``"linear_attention"``
    after, Bamba and Qwen3.5 the latter, Falcon-H1 ``"hybrid"``: beside attention); empty
    when every block is attention alone.

    Examples:
        >>> from transformers import BambaConfig
        >>> recurrent_blocks(BambaConfig(num_hidden_layers=4, attn_layer_indices=[1, 3]))
        [0, 2]
    """
    types = getattr(config, "layer_types", None) or ()
    return [i for i, kind in enumerate(types) if not _attention_only(kind)]


def _refuse_unknown_recurrent_blocks(config: Any, model_type: str) -> None:
    """Refuse a model with blocks that do not attend (by its ``layer_types``,
    ``layers_block_type`` or ``block_types``) of a family whose mixer is not modelled:
    counted as attention, a Zamba2 shape came out 30% under its measured peak."""
    kinds = set()
    for key in ("block_types", "layers_block_type", "layer_types"):  # the family's own first
        listed = getattr(config, key, None)
        if isinstance(listed, (list, tuple)) and listed:
            kinds = set(listed)  # Jamba's layer_types calls its Mamba "linear_attention"
            break
    recurrent = sorted(str(kind) for kind in kinds if not _attention_only(kind))
    if recurrent:
        msg = (
            f"the memory estimate does not model {model_type} models yet: their "
            f"{', '.join(map(repr, recurrent))} blocks would be counted as attention"
        )
        raise SpecError(msg)


def _mixer(config: Any, hidden: int, expert_blocks: set[int]) -> Mixer | None:
    """The mixer of a hybrid model's recurrent blocks (see :func:`recurrent_blocks`)."""
    model_type = getattr(config, "model_type", "")
    kind = _MIXERS.get(model_type)
    if kind is None:
        _refuse_unknown_recurrent_blocks(config, model_type)
    parallel = model_type in _PARALLEL_MIXERS
    recurrent = set(range(_read(config, "layers"))) if parallel else set(recurrent_blocks(config))
    if kind is None or not recurrent:
        return None
    shared = dict(layers=len(recurrent), with_experts=len(recurrent & expert_blocks))
    if kind == "short_conv":
        return Mixer(
            kind, inner=hidden, kernel=int(config.conv_L_cache),
            conv_bias=bool(getattr(config, "conv_bias", False)), **shared,
        )  # fmt: skip
    if kind == "gated_deltanet":
        heads = int(config.linear_num_value_heads)
        return Mixer(
            kind, inner=heads * int(config.linear_value_head_dim),
            kernel=int(config.linear_conv_kernel_dim), heads=heads,
            state=int(config.linear_key_head_dim), groups=int(config.linear_num_key_heads),
            chunk=_DELTANET_CHUNK, **shared,
        )  # fmt: skip
    inner = getattr(config, "mamba_d_ssm", None) or int(config.mamba_expand * hidden)
    return Mixer(
        kind, inner=int(inner), kernel=int(config.mamba_d_conv),
        heads=int(config.mamba_n_heads), state=int(config.mamba_d_state),
        groups=int(config.mamba_n_groups), chunk=int(config.mamba_chunk_size),
        conv_bias=bool(getattr(config, "mamba_conv_bias", True)),
        gated_norm=bool(getattr(config, "mamba_rms_norm", True)), parallel=parallel, **shared,
    )  # fmt: skip


def _experts(config: Any, expert_layers: int, intermediate: int) -> Experts | None:
    count = _first_int(config, _EXPERT_KEYS["count"])
    if count <= 1:
        return None
    model_type = getattr(config, "model_type", "")
    width = _declared(config, "moe_intermediate_size") or intermediate
    shared = _declared(config, "shared_expert_intermediate_size") or 0
    shared = shared or _declared(config, "shared_intermediate_size") or 0  # Granite's
    shared = shared or (_declared(config, "n_shared_experts") or 0) * width
    shared = shared or (_declared(config, "moe_num_shared_experts") or 0) * width  # ERNIE
    if model_type in _ALL_EXPERTS_COMPUTED:
        shared = shared or width  # Llama 4's shared expert is as wide as one routed expert
    if model_type in _SHARED_MLP_OF_DENSE_WIDTH:
        shared = shared or intermediate
    adapted, mlps_frozen = _what_peft_adapts(config)
    return Experts(
        count=count,
        per_token=_first_int(config, _EXPERT_KEYS["per_token"]) or 1,
        intermediate=width,
        layers=expert_layers,
        shared_intermediate=shared,
        all_computed=model_type in _ALL_EXPERTS_COMPUTED,
        adapted=adapted,
        fused_at_load=_fused_at_load(model_type),
        mlps_frozen=mlps_frozen,
        shared_gate=bool(shared) and model_type in _SHARED_EXPERT_GATED,
    )


def _fused_at_load(model_type: str) -> bool:
    """Whether transformers merges per-expert checkpoint weights into 3D ones at load."""
    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping

        mapping = get_checkpoint_conversion_mapping(model_type) or []
    except (ImportError, KeyError, ValueError):
        return False
    operations = (type(op).__name__ for rule in mapping for op in getattr(rule, "operations", []))
    return "MergeModulelist" in operations


def _what_peft_adapts(config: Any) -> tuple[bool, bool]:
    """Whether peft's ``"all-linear"`` adapts this model's fused expert weights, and whether
    it then leaves the linear MLPs beside them frozen (:attr:`Experts.mlps_frozen`).

    Asked of the model itself, built on the meta device (:func:`_built_on_meta`), so the
    answer is the installed peft's.
    """
    from peft import LoraConfig

    from workbench.train.core import dropout_free_targets, linears_moved_to_experts

    model = _built_on_meta(getattr(config, "config", config))  # a heterogeneous config's own
    if model is None:
        return False, False  # a config transformers cannot build: count the experts as frozen
    lora = LoraConfig(target_modules="all-linear", task_type="CAUSAL_LM")
    if not dropout_free_targets(model, lora):
        return False, False
    return True, bool(linears_moved_to_experts(model, lora))
