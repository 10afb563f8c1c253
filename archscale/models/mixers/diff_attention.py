"""Differential Attention (Ye et al. 2024, "Differential Transformer"; REFERENCE §3).

Query and key heads come in pairs (heads 2h and 2h+1: the "stripe" layout of the paper's code, friendly to
tensor parallelism). Pair h computes two softmax maps over the same values [v1 ‖ v2] (the value heads of its KV
pair, concatenated to width 2K) and subtracts them, which cancels attention noise common to both:

    A1 = softmax(q1 k1ᵀ s),  A2 = softmax(q2 k2ᵀ s)
    out_h = RMSNorm(A1 [v1‖v2] − λ A2 [v1‖v2]) · (1 − λ_init)          (B, T, 2K), back to two heads of K
    λ = exp(λ_q1·λ_k1) − exp(λ_q2·λ_k2) + λ_init,   λ_init = 0.8 − 0.6·exp(−0.3·layer_idx)

λ_q1, λ_k1, λ_q2, λ_k2 are learnable vectors of size head_dim, initialised N(0, 0.1), one set per layer; the
RMSNorm (over 2K, with a gain) is applied to every pair alone, and the factor (1 − λ_init) keeps the output
scale of ordinary attention at initialisation (the paper's §2.1). The softmax scale is 1/√K (K = head_dim).

Everything else is :class:`~archscale.models.mixers.attention.CausalSelfAttention`'s (GQA, RoPE/NoPE, window,
KV cache, varlen, ``share_kv`` for the YOCO full-attention layer); :mod:`.cross_attention` reuses
:class:`DifferentialCore` for differential cross-attention (SambaY-DA, Phi-4-mini-flash).

Computation: one :func:`~archscale.kernels.attention.attention` call (the same kernel dispatch as plain
attention, so windows and packed varlen batches take the fast paths too). Query heads are reordered from
(pair, j) to (j, pair) and key heads likewise, so that standard GQA grouping pairs q_j of pair h with k_j of KV
pair h // (H/Hkv); the values of KV pair g are [v_2g ‖ v_2g+1] for both j. Where the kernel accepts values wider
than keys (the CPU reference, FlexAttention) each score map is computed once: 2·(K + 2K) FLOPs per query head and
key, i.e. 1.5x ordinary attention; kernels that need equal widths (cuDNN, flash) get the two K-wide halves of
the values as two heads (each score map computed twice), i.e. 2x, which still beats handing 2K-wide values to a
slower generic kernel (the "wide-v" case of benchmarks/attention_bench.py measures both).
"""

from __future__ import annotations

import math

import torch
from pydantic import model_validator
from torch import nn

from archscale.kernels.attention import attention as attention_kernel
from archscale.models.api import ParamRole, SeqInfo
from archscale.models.mixers.attention import (
    AttentionConfig,
    CausalSelfAttention,
    attention_kwargs,
)
from archscale.models.mixers.base import AttentionFlops, MixerContext, attended_keys
from archscale.registry import mixers


def lambda_init_fn(layer_idx: int) -> float:
    """λ_init = 0.8 − 0.6·exp(−0.3·layer_idx) (Ye et al. 2024, eq. 3), layer_idx counted from 0."""
    return 0.8 - 0.6 * math.exp(-0.3 * layer_idx)


class DifferentialCore(nn.Module):
    """The differential part of a layer: λ parameters, the per-pair RMSNorm and the attention computation."""

    def __init__(self, head_dim: int, layer_idx: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.lambda_init = lambda_init_fn(layer_idx)
        self.lambda_q1 = nn.Parameter(torch.empty(head_dim))
        self.lambda_k1 = nn.Parameter(torch.empty(head_dim))
        self.lambda_q2 = nn.Parameter(torch.empty(head_dim))
        self.lambda_k2 = nn.Parameter(torch.empty(head_dim))
        self.subln = nn.RMSNorm(2 * head_dim, eps=eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in (self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2):
            nn.init.normal_(p, mean=0.0, std=0.1)
        self.subln.reset_parameters()

    def lam(self) -> torch.Tensor:
        """The scalar λ, in at least float32 (exp of a dot product; bf16 would round it visibly)."""
        dt = torch.promote_types(self.lambda_q1.dtype, torch.float32)
        l1 = torch.exp(torch.sum(self.lambda_q1.to(dt) * self.lambda_k1.to(dt)))
        l2 = torch.exp(torch.sum(self.lambda_q2.to(dt) * self.lambda_k2.to(dt)))
        return l1 - l2 + self.lambda_init

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        scale: float,
        *,
        window: int | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
    ) -> torch.Tensor:
        """q (B, T, H, K), k/v (B, S, Hkv, K), heads in (pair, j) order -> (B, T, H·K); the keyword arguments are
        :func:`~archscale.kernels.attention.attention`'s."""
        B, T, H, K = q.shape
        S, Hkv = k.shape[1], k.shape[2]
        if H % 2 or Hkv % 2:
            raise ValueError(f"differential attention needs even head counts, got n_head={H}, n_kv_head={Hkv}")
        P, Pkv = H // 2, Hkv // 2
        q = q.view(B, T, P, 2, K).transpose(2, 3).reshape(B, T, H, K)  # (B, T, 2·P, K) in (j, pair) order
        k = k.view(B, S, Pkv, 2, K).transpose(2, 3).reshape(B, S, Hkv, K)  # (B, S, 2·Pkv, K)
        v2 = v.reshape(B, S, Pkv, 2 * K)  # [v_2g ‖ v_2g+1]: heads 2g and 2g+1 side by side
        v2 = torch.cat((v2, v2), dim=2)  # (B, S, 2·Pkv, 2K): the same values for j = 0 and j = 1
        a = attention_kernel(q, k, v2, scale=scale, window=window, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
        a = a.view(B, T, 2, P, 2 * K)  # (B, T, j, pair, 2K)
        out = a[:, :, 0] - self.lam().to(a.dtype) * a[:, :, 1]  # (B, T, P, 2K)
        out = self.subln(out) * (1.0 - self.lambda_init)
        return out.reshape(B, T, H * K)  # pair h's 2K = heads 2h, 2h+1 side by side

    @staticmethod
    def n_params(head_dim: int) -> int:
        return 4 * head_dim + 2 * head_dim  # four λ vectors and the RMSNorm gain over 2K


class DiffAttentionConfig(AttentionConfig):
    """Parameters of a differential attention layer: those of attention, with even head counts."""

    @model_validator(mode="after")
    def _check_pairs(self) -> DiffAttentionConfig:
        n_kv = self.n_kv_head if self.n_kv_head is not None else self.n_head
        if self.n_head % 2 or n_kv % 2:
            raise ValueError(
                f"differential attention pairs heads: n_head={self.n_head} and n_kv_head={n_kv} must be even"
            )
        return self


@mixers.register("diff_attention", config=DiffAttentionConfig)
class DiffAttention(CausalSelfAttention):
    """Causal differential GQA self-attention (see the module docstring)."""

    Config = DiffAttentionConfig

    def __init__(self, ctx: MixerContext, config: DiffAttentionConfig) -> None:
        super().__init__(ctx, config)
        self.diff = DifferentialCore(self.head_dim, ctx.layer_idx, eps=ctx.norm_eps)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq: SeqInfo) -> torch.Tensor:
        return self.diff(q, k, v, self.scale, window=self.window, **attention_kwargs(seq))

    @classmethod
    def count_params(  # type: ignore[override]
        cls, ctx: MixerContext, config: DiffAttentionConfig
    ) -> dict[ParamRole, int]:
        counts = super().count_params(ctx, config)
        _, _, k = cls.dims(ctx, config)
        return {"matrix": counts["matrix"], "vector": counts["vector"] + DifferentialCore.n_params(k)}

    @classmethod
    def count_flops(  # type: ignore[override]
        cls, ctx: MixerContext, config: DiffAttentionConfig, seq_len: int, attention: AttentionFlops = "dense"
    ) -> float:
        """2·(projection matrices) + 2·(K + 2K)·H per attended key (scores, then values of width 2K)."""
        h, _, k = cls.dims(ctx, config)
        proj = 2.0 * cls.count_params(ctx, config)["matrix"]
        return proj + 6.0 * h * k * attended_keys(seq_len, config.window, attention)
