"""Causal multi-head attention with grouped-query heads, RoPE or NoPE, and an optional sliding window.

- GQA (Ainslie et al. 2023): ``n_kv_head`` key/value heads, each shared by n_head / n_kv_head query heads
  (Transformer++ uses 4 query heads per KV head, REFERENCE §1).
- Positions: RoPE (Su et al. 2021) in the rotate-half layout of :mod:`archscale.models.rope`, from
  ``seq.position_ids``; or NoPE (no positional signal; SambaY's full-attention layer, Ren et al. 2025).
- Sliding window W (Samba, Ren et al. 2024): each query sees the W most recent keys including itself.
- Softmax scale: ``ctx.attn_scale`` (set by μP) or 1/√head_dim.

This is the reference path: ``torch.nn.functional.scaled_dot_product_attention``. Dense batches without cache or
window use ``is_causal`` (no mask tensor, compile-friendly). Packed varlen batches (``seq.cu_seqlens``) use a
block-diagonal causal boolean mask, O(T²) memory, so no token attends across a document boundary.

State is a KV cache ``(k, v)``, each (B, n_kv_head, S, head_dim) with RoPE already applied to k. Given a state,
the new queries attend to the cached keys and the new ones, and the returned state holds both (for a window W,
only the last W-1 keys, all a future query can see). Caching is for dense batches; a varlen batch returns None.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from archscale.models.api import ParamRole, SeqInfo
from archscale.models.mixers.base import AttentionFlops, Mixer, MixerContext, attended_keys
from archscale.models.rope import apply_rope, rope_cos_sin
from archscale.registry import mixers

KVCache = tuple[torch.Tensor, torch.Tensor]


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

    @model_validator(mode="after")
    def _check_groups(self) -> AttentionConfig:
        if self.n_kv_head is not None and self.n_head % self.n_kv_head:
            raise ValueError(
                f"n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head}: in grouped-query attention "
                "every key/value head serves the same number of query heads"
            )
        return self


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
        self.scale = ctx.attn_scale if ctx.attn_scale is not None else self.head_dim**-0.5
        d, hk, kvk = ctx.d_model, self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        # Separate q/k/v projections (HF Llama layout; each is its own matrix for Muon).
        self.q_proj = nn.Linear(d, hk, bias=False)
        self.k_proj = nn.Linear(d, kvk, bias=False)
        self.v_proj = nn.Linear(d, kvk, bias=False)
        self.o_proj = nn.Linear(hk, d, bias=False)

    @staticmethod
    def dims(ctx: MixerContext, config: AttentionConfig) -> tuple[int, int, int]:
        """(n_head, n_kv_head, head_dim) after defaults."""
        if config.head_dim is None and ctx.d_model % config.n_head:
            raise ValueError(
                f"d_model={ctx.d_model} is not divisible by n_head={config.n_head}; set head_dim explicitly"
            )
        head_dim = config.head_dim if config.head_dim is not None else ctx.d_model // config.n_head
        n_kv = config.n_kv_head if config.n_kv_head is not None else config.n_head
        if config.positional == "rope" and head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got head_dim={head_dim}")
        return config.n_head, n_kv, head_dim

    # ------------------------------------------------------------------ forward
    def forward(
        self, x: torch.Tensor, seq: SeqInfo, state: KVCache | None = None
    ) -> tuple[torch.Tensor, KVCache | None]:
        B, T, _ = x.shape
        H, Hkv, K = self.n_head, self.n_kv_head, self.head_dim
        q = self.q_proj(x).view(B, T, H, K)  # (B, T, H, K)
        k = self.k_proj(x).view(B, T, Hkv, K)  # (B, T, Hkv, K)
        v = self.v_proj(x).view(B, T, Hkv, K)
        if self.use_rope:
            cos, sin = rope_cos_sin(seq.position_ids, K, self.rope_base)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H or Hkv, T, K)

        if state is not None:
            if seq.is_varlen:
                raise ValueError("attention: a KV cache cannot be combined with a packed varlen batch")
            k_cache, v_cache = state
            k = torch.cat((k_cache.to(k.dtype), k), dim=2)  # (B, Hkv, S, K), S = cached + T
            v = torch.cat((v_cache.to(v.dtype), v), dim=2)

        mask = self._mask(seq, T, k.shape[2], has_cache=state is not None)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, scale=self.scale, enable_gqa=H != Hkv
        )  # (B, H, T, K)
        y = y.transpose(1, 2).reshape(B, T, H * K)  # (B, T, H·K)

        new_state: KVCache | None = None
        if not seq.is_varlen:
            keep = k.shape[2] if self.window is None else min(k.shape[2], self.window - 1)
            new_state = (k[:, :, k.shape[2] - keep :], v[:, :, v.shape[2] - keep :])
        return self.o_proj(y), new_state

    def _mask(self, seq: SeqInfo, T: int, S: int, has_cache: bool) -> torch.Tensor | None:
        """Boolean (T, S) mask, True = may attend; None when plain ``is_causal`` is exact (T == S, no window)."""
        device = seq.position_ids.device
        if seq.is_varlen:
            assert seq.cu_seqlens is not None
            idx = torch.arange(T, device=device)
            doc = torch.searchsorted(seq.cu_seqlens[1:].long(), idx, right=True)  # (T,) document of each token
            allowed = (doc[:, None] == doc[None, :]) & (idx[None, :] <= idx[:, None])
            if self.window is not None:
                allowed = allowed & (idx[:, None] - idx[None, :] < self.window)
            return allowed
        if not has_cache and self.window is None:
            return None
        # Query t sits at index S - T + t of the key sequence (cached keys first); keys are contiguous.
        qi = torch.arange(T, device=device)[:, None] + (S - T)
        kj = torch.arange(S, device=device)[None, :]
        allowed = kj <= qi
        if self.window is not None:
            allowed = allowed & (qi - kj < self.window)
        return allowed

    # ------------------------------------------------------------------ bookkeeping
    @classmethod
    def example_params(cls, d_model: int) -> dict[str, int]:
        return {"n_head": 4, "n_kv_head": 2, "head_dim": max(2, d_model // 4)}

    @classmethod
    def count_params(cls, ctx: MixerContext, config: AttentionConfig) -> dict[ParamRole, int]:  # type: ignore[override]
        h, kv, k = cls.dims(ctx, config)
        # q and o: d·H·K each; k and v: d·Hkv·K each.
        return {"matrix": 2 * ctx.d_model * h * k + 2 * ctx.d_model * kv * k}

    @classmethod
    def count_flops(  # type: ignore[override]
        cls, ctx: MixerContext, config: AttentionConfig, seq_len: int, attention: AttentionFlops = "dense"
    ) -> float:
        """2·(projection params) + 2·2·H·K per attended key (scores QKᵀ and weighted values AV).

        Keys per query follow :data:`~archscale.models.mixers.base.AttentionFlops`: "dense" charges all T keys
        (min(T, W) with a window), "causal" the (T+1)/2 (or windowed) keys a causal kernel visits.
        """
        h, _, k = cls.dims(ctx, config)
        proj = 2.0 * cls.count_params(ctx, config)["matrix"]
        return proj + 4.0 * h * k * attended_keys(seq_len, config.window, attention)

    def output_projections(self) -> set[str]:
        return {"o_proj.weight"}
