"""Causal multi-head attention with grouped-query heads, RoPE or NoPE, and an optional sliding window.

- GQA (Ainslie et al. 2023): ``n_kv_head`` key/value heads, each shared by n_head / n_kv_head query heads
  (Transformer++ uses 4 query heads per KV head, REFERENCE §1).
- Positions: RoPE (Su et al. 2021) in the rotate-half layout of :mod:`archscale.models.rope`, from
  ``seq.position_ids``; or NoPE (no positional signal; SambaY's attention layers, Ren et al. 2025).
- Sliding window W (Samba, Ren et al. 2024): each query sees the W most recent keys including itself.
- Softmax scale: ``ctx.attn_scale`` (set by μP) or 1/√head_dim.
- Biases: none by default (Llama); ``qv_bias`` / ``o_bias`` add them to the query and value / output
  projections as in Phi-4-mini-flash. Keys never get one: a key bias adds the same q·b to every score of a
  query, which the softmax cancels.
- YOCO (Sun et al. 2024): with ``share_kv`` the layer is the cross-decoder's full-attention layer F; it writes its
  keys and values (cache + new) to ``shared.kv`` for the cross-attention layers (:mod:`.cross_attention`).

The attention itself is :func:`archscale.kernels.attention.attention`, which picks the kernel: cuDNN SDPA for
dense causal batches on CUDA, flash-attn / torch ``varlen_attn`` / FlexAttention for windows and packed varlen
batches (``seq.cu_seqlens``: no token attends across a document boundary), and SDPA with a boolean mask on CPU and
when decoding. Projections produce (B, T, H, K), the kernels' layout, so no transpose precedes the call.

State is a KV cache ``(k, v)``, each (B, n_kv_head, S, head_dim) with RoPE already applied to k. Given a state,
the new queries attend to the cached keys and the new ones, and the returned state holds both (for a window W,
only the last W-1 keys, all a future query can see). Caching is for dense batches; a varlen batch returns None.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from archscale.kernels.attention import attention as attention_kernel
from archscale.models.api import CrossLayer, ParamRole, SeqInfo
from archscale.models.linear import Linear, fused_projections
from archscale.models.mixers.base import (
    AttentionFlops,
    Mixer,
    MixerContext,
    attended_keys,
)
from archscale.models.rope import apply_rope, rope_cos_sin
from archscale.registry import mixers

KVCache = tuple[torch.Tensor, torch.Tensor]


def attention_kwargs(seq: SeqInfo) -> dict[str, object]:
    """The document layout of a batch as :func:`~archscale.kernels.attention.attention` keyword arguments."""
    if not seq.is_varlen:
        return {}
    # max_seqlen 0 means "not recorded" (SeqInfo's default): the kernels then bound documents by T.
    return {"cu_seqlens": seq.cu_seqlens, "max_seqlen": seq.max_seqlen if seq.max_seqlen > 0 else None}


class AttentionConfig(BaseModel):
    """Parameters of one attention layer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_head: int = Field(ge=1, description="Number of query heads.")
    n_kv_head: int | None = Field(
        None, ge=1, description="Number of key/value heads (GQA); must divide n_head. None = n_head (MHA)."
    )
    head_dim: int | None = Field(None, ge=1, description="Size of each head. None = d_model // n_head.")
    positional: Literal["rope", "nope"] = Field("rope", description="Rotary positions, or none (NoPE).")
    rope_base: float | None = Field(None, gt=0, description="RoPE base for this layer; None = the model's rope_base.")
    window: int | None = Field(
        None, ge=1, description="Sliding window: each query sees this many most recent keys (itself included)."
    )
    share_kv: bool = Field(
        False, description="YOCO full-attention layer: write this layer's keys and values to shared.kv."
    )
    qv_bias: bool = Field(False, description="Bias on the query and value projections (Phi-4-mini-flash).")
    o_bias: bool = Field(False, description="Bias on the output projection (Phi-4-mini-flash).")

    @model_validator(mode="after")
    def _check_groups(self) -> AttentionConfig:
        if self.n_kv_head is not None and self.n_head % self.n_kv_head:
            raise ValueError(
                f"n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head}: in grouped-query attention "
                "every key/value head serves the same number of query heads"
            )
        return self


def attention_dims(ctx: MixerContext, n_head: int, n_kv_head: int | None, head_dim: int | None,
                   positional: str) -> tuple[int, int, int]:
    """(n_head, n_kv_head, head_dim) after defaults (head_dim = d_model // n_head, n_kv_head = n_head)."""
    if head_dim is None and ctx.d_model % n_head:
        raise ValueError(f"d_model={ctx.d_model} is not divisible by n_head={n_head}; set head_dim explicitly")
    head_dim = head_dim if head_dim is not None else ctx.d_model // n_head
    n_kv = n_kv_head if n_kv_head is not None else n_head
    if positional == "rope" and head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got head_dim={head_dim}")
    return n_head, n_kv, head_dim


@mixers.register("attention", config=AttentionConfig)
class CausalSelfAttention(Mixer):
    """Causal GQA self-attention (see the module docstring)."""

    Config = AttentionConfig

    def __init__(self, ctx: MixerContext, config: AttentionConfig) -> None:
        super().__init__(ctx, config)
        self.n_head, self.n_kv_head, self.head_dim = self.dims(ctx, config)
        self.rope_base = config.rope_base if config.rope_base is not None else ctx.rope_base
        self.use_rope = config.positional == "rope"
        self.window = config.window
        self.share_kv = config.share_kv
        self.scale = ctx.attn_scale if ctx.attn_scale is not None else self.head_dim**-0.5
        d, hk, kvk = ctx.d_model, self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        # Separate q/k/v projections (HF Llama layout; each is its own matrix for Muon).
        self.q_proj = Linear(d, hk, bias=config.qv_bias)
        self.k_proj = Linear(d, kvk, bias=False)
        self.v_proj = Linear(d, kvk, bias=config.qv_bias)
        self.o_proj = Linear(hk, d, bias=config.o_bias)

    @staticmethod
    def dims(ctx: MixerContext, config: AttentionConfig) -> tuple[int, int, int]:
        """(n_head, n_kv_head, head_dim) after defaults."""
        return attention_dims(ctx, config.n_head, config.n_kv_head, config.head_dim, config.positional)

    def reset_parameters(self) -> None:
        # Biases start at zero (the model's init rule leaves vector-like parameters to their module).
        for proj in (self.q_proj, self.v_proj, self.o_proj):
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)

    # ------------------------------------------------------------------ forward
    def forward(
        self, x: torch.Tensor, seq: SeqInfo, state: KVCache | None = None, shared: CrossLayer | None = None
    ) -> tuple[torch.Tensor, KVCache | None]:
        B, T, _ = x.shape
        H, Hkv, K = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = fused_projections(x, self.q_proj, self.k_proj, self.v_proj)
        q = q.view(B, T, H, K)  # (B, T, H, K)
        k = k.view(B, T, Hkv, K)  # (B, T, Hkv, K)
        # v is a view into the stacked q/k/v product, and attention saves v for its backward: the view would keep
        # the whole stack alive until then (Transformer++ d16: 80 MiB a layer, +1.25 GiB peak on the H100,
        # benchmarks/RESULTS.md). A copy of v alone (16 MiB) lets the stack go once RoPE has read q and k.
        v = v.contiguous().view(B, T, Hkv, K)
        if self.use_rope:
            cos, sin = rope_cos_sin(seq.position_ids, K, self.rope_base)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        if state is not None:
            if seq.is_varlen:
                raise ValueError("attention: a KV cache cannot be combined with a packed varlen batch")
            k_cache, v_cache = state  # (B, Hkv, S_cached, K)
            k = torch.cat((k_cache.transpose(1, 2).to(k.dtype), k), dim=1)  # (B, S, Hkv, K), S = cached + T
            v = torch.cat((v_cache.transpose(1, 2).to(v.dtype), v), dim=1)
        if self.share_kv:
            if shared is None:
                raise ValueError("attention: share_kv=True needs the model's CrossLayer object (shared=...)")
            # Every key so far, (B, Hkv, S, K) views; the cross-attention layers align queries to the last T.
            shared.kv = (k.transpose(1, 2), v.transpose(1, 2))

        y = self._attend(q, k, v, seq)  # (B, T, H·K)

        new_state: KVCache | None = None
        if not seq.is_varlen:
            S = k.shape[1]
            keep = S if self.window is None else min(S, self.window - 1)
            new_state = (k[:, S - keep :].transpose(1, 2), v[:, S - keep :].transpose(1, 2))
        return self.o_proj(y), new_state

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq: SeqInfo) -> torch.Tensor:
        """q (B, T, H, K), k/v (B, S, Hkv, K) -> (B, T, H·K) before the output projection."""
        B, T, H, K = q.shape
        y = attention_kernel(q, k, v, scale=self.scale, window=self.window, **attention_kwargs(seq))  # (B, T, H, K)
        return y.reshape(B, T, H * K)

    # ------------------------------------------------------------------ bookkeeping
    @classmethod
    def example_params(cls, d_model: int) -> dict[str, int]:
        return {"n_head": 4, "n_kv_head": 2, "head_dim": max(2, d_model // 4)}

    @classmethod
    def count_params(cls, ctx: MixerContext, config: AttentionConfig) -> dict[ParamRole, int]:  # type: ignore[override]
        h, kv, k = cls.dims(ctx, config)
        # q and o: d·H·K each; k and v: d·Hkv·K each; biases H·K (q), Hkv·K (v), d (o).
        vector = (h * k + kv * k if config.qv_bias else 0) + (ctx.d_model if config.o_bias else 0)
        return {"matrix": 2 * ctx.d_model * h * k + 2 * ctx.d_model * kv * k, "vector": vector}

    @classmethod
    def count_flops(  # type: ignore[override]
        cls, ctx: MixerContext, config: AttentionConfig, seq_len: int, attention: AttentionFlops = "dense"
    ) -> float:
        """2·(projection matrices) + 2·2·H·K per attended key (scores QKᵀ and weighted values AV).

        Keys per query follow :data:`~archscale.models.mixers.base.AttentionFlops`: "dense" charges all T keys
        (min(T, W) with a window), "causal" the (T+1)/2 (or windowed) keys a causal kernel visits.
        """
        h, _, k = cls.dims(ctx, config)
        proj = 2.0 * cls.count_params(ctx, config)["matrix"]
        return proj + 4.0 * h * k * attended_keys(seq_len, config.window, attention)

    def output_projections(self) -> set[str]:
        return {"o_proj.weight"}
