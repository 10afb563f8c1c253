"""YOCO cross-attention (Sun et al. 2024, "You Only Cache Once"; the X layers of SambaY, Ren et al. 2025).

In a decoder-decoder model one full-attention layer F (``attention`` or ``diff_attention`` with
``share_kv=True``) computes keys and values once and writes them to ``shared.kv``; every cross-attention layer
after it has only a query and an output projection and attends causally to those shared K,V: a query at
absolute position p sees keys 0..p (the W most recent with a window). Decoding therefore keeps one KV cache for
the whole cross-decoder, F's, and this layer's state is None.

Shapes: ``shared.kv`` = (k, v), each (B, Hkv, S, K) with positions already applied to k; the T queries of this
call are the last T of the S positions (S = T in training, cached + new when decoding; varlen: S = T and no
query sees a key of another document). With RoPE the queries are rotated at ``seq.position_ids`` (F must use RoPE
with the same base); with NoPE (SambaY) neither is. ``differential=True`` makes the layer differential cross-attention
(Differential Attention over the shared K,V, with its own λ and RMSNorm: SambaY-DA, Phi-4-mini-flash).

The attention is :func:`archscale.kernels.attention.attention`, the dispatch every attention layer uses: causal
over the shared keys, so training batches (S = T) take the same fast kernels as the producer layer F.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from archscale.kernels.attention import attention as attention_kernel
from archscale.models.api import CrossLayer, ParamRole, SeqInfo
from archscale.models.linear import Linear
from archscale.models.mixers.attention import attention_dims, attention_kwargs
from archscale.models.mixers.base import (
    AttentionFlops,
    Mixer,
    MixerContext,
    SharedKind,
    attended_keys,
)
from archscale.models.mixers.diff_attention import DifferentialCore
from archscale.models.rope import apply_rope, rope_cos_sin
from archscale.registry import mixers


class CrossAttentionConfig(BaseModel):
    """Parameters of one YOCO cross-attention layer (heads must match the K,V producer's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_head: int = Field(ge=1, description="Number of query heads.")
    n_kv_head: int | None = Field(
        None, ge=1, description="Key/value heads of the shared K,V (must divide n_head). None = n_head."
    )
    head_dim: int | None = Field(None, ge=1, description="Size of each head. None = d_model // n_head.")
    positional: Literal["rope", "nope"] = Field("rope", description="Rotate the queries (RoPE) or not (NoPE).")
    rope_base: float | None = Field(None, gt=0, description="RoPE base; None = the model's rope_base.")
    window: int | None = Field(
        None, ge=1, description="Sliding window over the shared keys (at most the producer's window, if any)."
    )
    differential: bool = Field(False, description="Differential cross-attention (Ye et al. 2024).")
    qv_bias: bool = Field(False, description="Bias on the query projection (the value bias lives in the producer).")
    o_bias: bool = Field(False, description="Bias on the output projection.")

    @model_validator(mode="after")
    def _check(self) -> CrossAttentionConfig:
        n_kv = self.n_kv_head if self.n_kv_head is not None else self.n_head
        if self.n_head % n_kv:
            raise ValueError(f"n_head={self.n_head} is not divisible by n_kv_head={n_kv}")
        if self.differential and (self.n_head % 2 or n_kv % 2):
            raise ValueError(
                f"differential cross-attention pairs heads: n_head={self.n_head} and n_kv_head={n_kv} must be even"
            )
        return self


@mixers.register("yoco_cross", config=CrossAttentionConfig)
class CrossAttention(Mixer):
    """Causal cross-attention on the shared K,V of the YOCO full-attention layer (see the module docstring)."""

    Config = CrossAttentionConfig

    def __init__(self, ctx: MixerContext, config: CrossAttentionConfig) -> None:
        super().__init__(ctx, config)
        self.n_head, self.n_kv_head, self.head_dim = self.dims(ctx, config)
        self.rope_base = config.rope_base if config.rope_base is not None else ctx.rope_base
        self.use_rope = config.positional == "rope"
        self.window = config.window
        self.scale = ctx.attn_scale if ctx.attn_scale is not None else self.head_dim**-0.5
        hk = self.n_head * self.head_dim
        self.q_proj = Linear(ctx.d_model, hk, bias=config.qv_bias)
        self.o_proj = Linear(hk, ctx.d_model, bias=config.o_bias)
        self.diff = DifferentialCore(self.head_dim, ctx.layer_idx, eps=ctx.norm_eps) if config.differential else None

    @staticmethod
    def dims(ctx: MixerContext, config: CrossAttentionConfig) -> tuple[int, int, int]:
        return attention_dims(ctx, config.n_head, config.n_kv_head, config.head_dim, config.positional)

    def reset_parameters(self) -> None:
        for proj in (self.q_proj, self.o_proj):
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)

    def forward(
        self, x: torch.Tensor, seq: SeqInfo, state: None = None, shared: CrossLayer | None = None
    ) -> tuple[torch.Tensor, None]:
        if shared is None or shared.kv is None:
            raise ValueError(
                "yoco_cross: no shared K,V; an earlier full-attention layer must set share_kv=True "
                "(the YOCO layer F) in the same forward"
            )
        B, T, _ = x.shape
        H, K = self.n_head, self.head_dim
        k, v = shared.kv  # (B, Hkv, S, K)
        if k.shape[0] != B or k.shape[1] != self.n_kv_head or k.shape[3] != K or k.shape[2] < T:
            raise ValueError(
                f"yoco_cross: shared K,V of shape {tuple(k.shape)} do not fit B={B}, n_kv_head={self.n_kv_head}, "
                f"head_dim={K} and T={T} queries (the producer's heads must match this layer's)"
            )
        q = self.q_proj(x).view(B, T, H, K)  # (B, T, H, K)
        if self.use_rope:
            cos, sin = rope_cos_sin(seq.position_ids, K, self.rope_base)
            q = apply_rope(q, cos, sin)
        q = q.to(k.dtype)
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # (B, S, Hkv, K): views (the producer's own layout)
        kwargs = attention_kwargs(seq)
        if self.diff is not None:
            y = self.diff(q, k, v, self.scale, window=self.window, **kwargs)  # (B, T, H·K)
        else:
            y = attention_kernel(q, k, v, scale=self.scale, window=self.window, **kwargs).reshape(B, T, H * K)
        return self.o_proj(y.to(x.dtype)), None

    # ------------------------------------------------------------------ cross-layer values
    @classmethod
    def shared_reads(cls, config: BaseModel) -> frozenset[SharedKind]:
        return frozenset({"kv"})

    @classmethod
    def example_shared(
        cls,
        ctx: MixerContext,
        config: BaseModel,
        batch: int,
        seq_len: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> CrossLayer:
        assert isinstance(config, CrossAttentionConfig)
        _, n_kv, k = cls.dims(ctx, config)
        shape = (batch, n_kv, seq_len, k)
        return CrossLayer(kv=(torch.randn(shape, generator=generator, dtype=dtype),
                              torch.randn(shape, generator=generator, dtype=dtype)))

    # ------------------------------------------------------------------ bookkeeping
    @classmethod
    def example_params(cls, d_model: int) -> dict[str, int]:
        return {"n_head": 4, "n_kv_head": 2, "head_dim": max(2, d_model // 4)}

    @classmethod
    def count_params(  # type: ignore[override]
        cls, ctx: MixerContext, config: CrossAttentionConfig
    ) -> dict[ParamRole, int]:
        h, _, k = cls.dims(ctx, config)
        # Only W_q and W_o: the keys and values belong to the producer layer F.
        vector = (h * k if config.qv_bias else 0) + (ctx.d_model if config.o_bias else 0)
        if config.differential:
            vector += DifferentialCore.n_params(k)
        return {"matrix": 2 * ctx.d_model * h * k, "vector": vector}

    @classmethod
    def count_flops(  # type: ignore[override]
        cls, ctx: MixerContext, config: CrossAttentionConfig, seq_len: int, attention: AttentionFlops = "dense"
    ) -> float:
        """2·(W_q + W_o) + per attended key 2·2·H·K (plain) or 2·3·H·K (differential: values of width 2K)."""
        h, _, k = cls.dims(ctx, config)
        per_key = (6.0 if config.differential else 4.0) * h * k
        keys = attended_keys(seq_len, config.window, attention)
        return 2.0 * cls.count_params(ctx, config)["matrix"] + per_key * keys

    def output_projections(self) -> set[str]:
        return {"o_proj.weight"}
