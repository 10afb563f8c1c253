"""The fully sized architecture of a language model, as data.

An architecture entry (``archscale.registry.architectures``) turns a small config (e.g. a depth) into an
:class:`LMSpec`; :func:`archscale.models.lm.build_model` turns the spec into modules, and
:mod:`archscale.scaling.counting` turns it into parameter and FLOP counts without building anything. A hybrid
architecture is simply a per-layer list of :class:`LayerSpec` (mixer name + that mixer's params).

The forward multipliers (``logit_multiplier``, ``residual_multiplier``, ``attn_scale``) and ``init_std`` have
neutral standard-parametrization defaults; a parametrization (μP, μP++; REFERENCE §4.7) sets them with
``spec.model_copy(update=...)``.

This module imports only pydantic, so specs can be built and counted without importing torch model code.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class LayerSpec(BaseModel):
    """One residual block: which token mixer, with which parameters. Every block also has a SwiGLU MLP."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mixer: str = Field(description="Name of a registered token mixer (archscale.registry.mixers), e.g. 'attention'.")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Parameters of the mixer, validated by the mixer's config model."
    )


class LMSpec(BaseModel):
    """Every number needed to build the model: widths, per-layer mixers, vocabulary, multipliers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: int = Field(ge=1, description="Vocabulary size (rows of the embedding and of the head).")
    n_embd: int = Field(ge=1, description="Width of the residual stream (d_model).")
    layers: list[LayerSpec] = Field(min_length=1, description="One entry per residual block, bottom to top.")
    mlp_hidden: int = Field(ge=1, description="Hidden width of each block's SwiGLU MLP.")
    tie_embeddings: bool = Field(False, description="Share the input embedding with the output head.")
    norm: Literal["rmsnorm", "layernorm"] = Field(
        "rmsnorm",
        description="The pre-norms and the final norm: RMSNorm (gain only; Llama, ArchScale) or LayerNorm (gain and "
        "bias; Phi-4-mini-flash).",
    )
    norm_eps: float = Field(1e-5, gt=0, description="Epsilon of every norm.")
    rope_base: float = Field(
        10000.0, gt=0, description="Default RoPE base (theta) for mixers that use rotary positions."
    )
    block_size: int = Field(4096, ge=1, description="Training context length (maximum positions in a sample).")
    logit_multiplier: float = Field(1.0, description="Logits are multiplied by this (μP output multiplier).")
    residual_multiplier: float = Field(
        1.0, description="Each residual branch output (mixer, MLP) is multiplied by this (Depth-μP 1/√(2L))."
    )
    attn_scale: float | None = Field(
        None, description="Softmax scale of attention mixers; None means 1/√head_dim."
    )
    init_std: float = Field(0.02, gt=0, description="Std of the standard-parametrization normal init.")
    z_loss: float = Field(
        0.0, ge=0, description="Weight of PaLM's auxiliary z-loss, z_loss · mean(logsumexp(logits)²), added to the "
        "training loss (Chowdhery et al. 2022 use 1e-4); 0 = off.",
    )
    loss_impl: Literal["fused", "naive"] = Field(
        "fused", description="Cross-entropy with targets: 'fused' never builds the (tokens, vocab) logits "
        "(archscale.kernels.cross_entropy.linear_cross_entropy); 'naive' builds them and calls F.cross_entropy.",
    )
    loss_chunk_size: int | None = Field(
        None, ge=1,
        description="Tokens per chunk of the fused loss; None = automatic (1024 for 16-bit weights, 2048 for float32).",
    )

    @property
    def n_layers(self) -> int:
        return len(self.layers)
