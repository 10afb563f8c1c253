"""Gated DeltaNet token mixer ("GDN"; Yang, Kautz & Hatamizadeh 2024, "Gated Delta Networks: Improving Mamba2
with Delta Rule", ICLR 2025), in the layout of fla's ``GatedDeltaNet`` layer.

    q, k, v = SiLU(short_conv([x W_q, x W_k, x W_v]))   depthwise, kernel d_conv (one conv over the concatenated
                                                          channels == three separate ones); H heads, q,k ∈ R^K,
                                                          v ∈ R^V with V = expand_v · K
    q, k   = q / ‖q‖, k / ‖k‖                           L2-normalised per head (§3.3)
    β      = sigmoid(x W_b)  (× 2 with negative eigenvalues allowed: β ∈ (0, 2), Grazzi et al. 2024)
    g      = -exp(A_log) · softplus(x W_a + dt_bias)     log decay α = exp(g), Mamba-2 style per head
    o      = gated_delta_rule(q, k, v, g, β)             S_t = α_t S_{t-1}(I - β_t k_t k_tᵀ) + β_t v_t k_tᵀ, o = S_t q_t
    out    = (RMSNorm(o) ⊙ w ⊙ SiLU(x W_g)) W_o          norm per head (V channels, shared weight), then gate

Defaults (REFERENCE §3): key head dim 256, expand_v 2, heads ⌈0.75·d/256⌉, short conv 4 (no bias), negative
eigenvalues allowed, output gate + gated RMSNorm; A ~ U[0, 16], dt init log-uniform in [1e-3, 0.1] via the
inverse-softplus bias (fla's init); the kernel scales q by K^-1/2 (fla's default).

Memory (REFERENCE §3 nGMU): with ``export_memory`` and a ``shared`` object, ``shared.memory`` is set to o, the
delta-rule read-out before the norm and gate, flattened head-major to (B, T, H·V): channel h·V + j is channel j
of head h. The nGMU's group RMSNorm after gating belongs to the consumer.

State: :class:`~archscale.models.mixers.recurrent.RecurrentState` ``(conv (B, d_conv-1, 2·H·K + H·V), ssm (B, H,
K, V))`` (the state transposed, fla's layout), returned for every dense batch; packed varlen batches take no state
and return None.

FLOPs (2 per multiply-add, per token): 2 · matrix parameters (q, k, v, a, b, g, o projections) plus the matmuls of
the chunked delta rule (:mod:`archscale.kernels.delta_rule.reference`): H · (pairs · (4K + 2V) + tokens · 6·K·V),
pairs and tokens from :func:`~archscale.models.mixers.recurrent.chunk_costs`. The per-chunk triangular solve
(≈ H·Q·(K+V) per token), conv, gates, L2 norms and the output norm are not counted (``FlopCounterMode`` does not
count them either).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from archscale.kernels.delta_rule import gated_delta_rule
from archscale.kernels.short_conv import short_conv
from archscale.kernels.varlen import compute_dtype
from archscale.models.api import CrossLayer, ParamRole, SeqInfo
from archscale.models.gated_norm import GatedRMSNorm
from archscale.models.linear import Linear, stacked_projection
from archscale.models.mixers.base import AttentionFlops, Mixer, MixerContext
from archscale.models.mixers.recurrent import (
    RecurrentState,
    chunk_costs,
    init_dt_bias_,
    init_uniform_A_log_,
    split_state,
)
from archscale.registry import mixers


class GatedDeltaNetConfig(BaseModel):
    """Parameters of one Gated DeltaNet layer (defaults: REFERENCE §3)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    head_dim: int = Field(256, ge=1, description="Key (and query) dimension K per head.")
    expand_v: float = Field(2.0, gt=0, description="Value dimension V = expand_v · head_dim per head.")
    n_heads: int | None = Field(None, ge=1, description="Number of heads H; None = ⌈0.75 · d_model / head_dim⌉.")
    d_conv: int = Field(4, ge=1, description="Kernel width of the short convolutions on q, k, v.")
    conv_bias: bool = Field(False, description="Bias in the short convolutions (fla's default: none).")
    allow_neg_eigval: bool = Field(
        True, description="β ∈ (0, 2) instead of (0, 1): I - βkkᵀ may have a negative eigenvalue."
    )
    chunk_size: int = Field(64, ge=1, description="Chunk length Q of the chunked (WY) delta-rule scan.")
    A_init_range: tuple[float, float] = Field((0.0, 16.0), description="A = exp(A_log) ~ U[low, high] per head.")
    dt_min: float = Field(1e-3, gt=0, description="Smallest initial step size (log-uniform init).")
    dt_max: float = Field(0.1, gt=0, description="Largest initial step size (log-uniform init).")
    dt_init_floor: float = Field(1e-4, gt=0, description="Initial step sizes are floored at this value.")
    export_memory: bool = Field(
        False, description="Write the delta-rule output (before norm and gate) into shared.memory (GDN*)."
    )

    @model_validator(mode="after")
    def _check(self) -> GatedDeltaNetConfig:
        low, high = self.A_init_range
        if not 0 <= low <= high:
            raise ValueError(f"A_init_range must satisfy 0 <= low <= high, got {self.A_init_range}")
        v = self.expand_v * self.head_dim
        if v != int(v):
            raise ValueError(f"expand_v · head_dim must be an integer, got {self.expand_v} · {self.head_dim}")
        return self


def _l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(Σx² + eps) over the last dimension, in fp32 (float64 kept)."""
    xf = x.to(compute_dtype(x))
    return (xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + eps)).to(x.dtype)


@mixers.register("gdn", config=GatedDeltaNetConfig)
class GatedDeltaNet(Mixer):
    """Gated DeltaNet mixer (see the module docstring)."""

    Config = GatedDeltaNetConfig

    def __init__(self, ctx: MixerContext, config: GatedDeltaNetConfig) -> None:
        super().__init__(ctx, config)
        d = ctx.d_model
        self.n_head, self.head_k, self.head_v = self.dims(ctx, config)
        H, K, V = self.n_head, self.head_k, self.head_v
        self.q_proj = Linear(d, H * K, bias=False)
        self.k_proj = Linear(d, H * K, bias=False)
        self.v_proj = Linear(d, H * V, bias=False)
        self.a_proj = Linear(d, H, bias=False)  # decay input
        self.b_proj = Linear(d, H, bias=False)  # β input
        self.g_proj = Linear(d, H * V, bias=False)  # output gate
        self.conv_dim = 2 * H * K + H * V
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, config.d_conv, groups=self.conv_dim, bias=config.conv_bias
        )
        self.A_log = nn.Parameter(torch.empty(H))
        self.dt_bias = nn.Parameter(torch.empty(H))
        self.o_norm = GatedRMSNorm(V, eps=ctx.norm_eps, norm_before_gate=True)
        self.o_proj = Linear(H * V, d, bias=False)
        self.reset_parameters()

    @staticmethod
    def dims(ctx: MixerContext, config: GatedDeltaNetConfig) -> tuple[int, int, int]:
        """(n_head, K, V) after defaults."""
        H = config.n_heads if config.n_heads is not None else math.ceil(0.75 * ctx.d_model / config.head_dim)
        return H, config.head_dim, int(config.expand_v * config.head_dim)

    def reset_parameters(self) -> None:
        """A ~ U[A_init_range] per head, dt bias = softplus⁻¹(log-uniform dt) (fla's GatedDeltaNet init)."""
        cfg: GatedDeltaNetConfig = self.config  # type: ignore[assignment]
        init_uniform_A_log_(self.A_log, *cfg.A_init_range)
        init_dt_bias_(self.dt_bias, cfg.dt_min, cfg.dt_max, cfg.dt_init_floor)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: torch.Tensor,
        seq: SeqInfo,
        state: RecurrentState | None = None,
        shared: CrossLayer | None = None,
    ) -> tuple[torch.Tensor, RecurrentState | None]:
        cfg: GatedDeltaNetConfig = self.config  # type: ignore[assignment]
        conv_state, ssm_state, want_state = split_state("gdn", state, seq)
        Bsz, T, _ = x.shape
        H, K, V = self.n_head, self.head_k, self.head_v

        qkv = stacked_projection(x, self.q_proj, self.k_proj, self.v_proj)  # (B, T, 2HK + HV): one product
        qkv, conv_state = short_conv(
            qkv, self.conv1d.weight[:, 0], self.conv1d.bias, "silu", conv_state, seq.cu_seqlens, want_state
        )
        q, k, v = qkv.split([H * K, H * K, H * V], dim=-1)
        q = _l2_normalize(q.view(Bsz, T, H, K))  # (B, T, H, K)
        k = _l2_normalize(k.view(Bsz, T, H, K))
        v = v.view(Bsz, T, H, V)  # (B, T, H, V)

        fp = compute_dtype(x)  # gates in fp32
        beta = torch.sigmoid(self.b_proj(x).to(fp))  # (B, T, H)
        if cfg.allow_neg_eigval:
            beta = beta * 2.0
        g = -torch.exp(self.A_log.to(fp)) * F.softplus(self.a_proj(x).to(fp) + self.dt_bias.to(fp))  # (B, T, H)

        o, ssm_state = gated_delta_rule(
            q, k, v, g, beta, chunk_size=cfg.chunk_size, initial_state=ssm_state, cu_seqlens=seq.cu_seqlens,
            return_final_state=want_state,
        )  # (B, T, H, V)
        if cfg.export_memory and shared is not None:
            shared.memory = o.reshape(Bsz, T, H * V)  # head-major, before norm and gate
        o = self.o_norm(o, self.g_proj(x).view(Bsz, T, H, V))
        out = self.o_proj(o.reshape(Bsz, T, H * V))
        if not want_state:
            return out, None
        assert conv_state is not None and ssm_state is not None
        return out, RecurrentState(conv_state, ssm_state)

    # ------------------------------------------------------------------ bookkeeping
    @classmethod
    def example_params(cls, d_model: int) -> dict[str, int]:
        # 2 heads, K = 8, V = 16 at d_model 32; chunks of 8 so that T = 17 or 63 spans several chunks.
        return {"head_dim": max(1, d_model // 4), "n_heads": 2, "chunk_size": 8}

    @classmethod
    def memory_dim(cls, ctx: MixerContext, config: GatedDeltaNetConfig) -> int:  # type: ignore[override]
        """Width of ``shared.memory`` when exporting: H · V, the delta-rule read-out, head-major."""
        H, _, V = cls.dims(ctx, config)
        return H * V

    @classmethod
    def count_params(  # type: ignore[override]
        cls, ctx: MixerContext, config: GatedDeltaNetConfig
    ) -> dict[ParamRole, int]:
        d = ctx.d_model
        H, K, V = cls.dims(ctx, config)
        conv_dim = 2 * H * K + H * V
        matrix = d * (2 * H * K + 2 * H * V + 2 * H) + H * V * d  # q, k, v, g, a, b; o
        vector = conv_dim * config.d_conv + (conv_dim if config.conv_bias else 0) + 2 * H + V  # conv, A, dt, norm
        return {"matrix": matrix, "vector": vector}

    @classmethod
    def count_flops(  # type: ignore[override]
        cls, ctx: MixerContext, config: GatedDeltaNetConfig, seq_len: int, attention: AttentionFlops = "dense"
    ) -> float:
        """2 · matrix parameters + the chunked delta-rule matmuls (see the module docstring)."""
        H, K, V = cls.dims(ctx, config)
        pairs, tokens = chunk_costs(seq_len, config.chunk_size, attention)
        scan = H * (pairs * (4 * K + 2 * V) + tokens * 6 * K * V)
        return 2.0 * cls.count_params(ctx, config)["matrix"] + scan

    def output_projections(self) -> set[str]:
        return {"o_proj.weight"}
