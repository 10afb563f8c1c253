"""Mamba-2 token mixer ("M2"; Dao & Gu 2024, "Transformers are SSMs: Generalized Models and Efficient Algorithms
Through Structured State Space Duality").

    [z, x, B, C, δ] = u W_in              z, x ∈ R^{d_inner}; B, C ∈ R^{G·N}; δ ∈ R^H   (one projection, §7.1)
    [x, B, C] = SiLU(causal_conv1d([x, B, C]))   depthwise, kernel d_conv, with bias
    dt = softplus(δ + dt_bias)            one step size per head
    y  = SSD(x, dt, A = -exp(A_log), B, C) + D ⊙ x      per head of P = head_dim channels (scalar A per head)
    out = GatedRMSNorm(y, z) W_out        y ⊙ SiLU(z), then RMSNorm over d_inner / G channels (§7.2)

Defaults (REFERENCE §3): d_state 128, head_dim 64, 1 group, chunk 256, expand 2, d_conv 4; A ~ U[1, 16],
D = 1, dt init log-uniform in [1e-3, 0.1] via the inverse-softplus bias (mamba-ssm's Mamba2 defaults).

Memory (REFERENCE §3 nGMU): with ``export_memory`` and a ``shared`` object, ``shared.memory`` is set to y above
(SSD output plus the D skip, before the gate and the norm), flattened head-major to (B, T, d_inner): channel
h·head_dim + p is channel p of head h. The nGMU's group RMSNorm after gating belongs to the consumer.

State: :class:`~archscale.models.mixers.recurrent.RecurrentState` ``(conv (B, d_conv-1, d_inner + 2·G·N),
ssm (B, H, head_dim, d_state))``, returned for every dense batch; packed varlen batches take no state and
return None.

FLOPs (2 per multiply-add, per token): 2 · matrix parameters (in_proj, out_proj) plus the matmuls of the chunked
SSD scan (:mod:`archscale.kernels.ssd.reference`): pairs · (2·N·G + 2·P·H) + tokens · 4·N·P·H, with pairs and
tokens from :func:`~archscale.models.mixers.recurrent.chunk_costs` ("dense": full Q×Q chunks, last one padded,
as ``FlopCounterMode`` sees the reference; "causal": the j ≤ i pairs only). Conv, gates, decays and the norm are
elementwise and not counted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from archscale.kernels.short_conv import short_conv
from archscale.kernels.ssd import ssd
from archscale.kernels.varlen import compute_dtype
from archscale.models.api import CrossLayer, ParamRole, SeqInfo
from archscale.models.gated_norm import GatedRMSNorm
from archscale.models.linear import Linear
from archscale.models.mixers.base import AttentionFlops, Mixer, MixerContext
from archscale.models.mixers.recurrent import (
    RecurrentState,
    chunk_costs,
    init_dt_bias_,
    init_uniform_A_log_,
    split_state,
)
from archscale.registry import mixers


class Mamba2Config(BaseModel):
    """Parameters of one Mamba-2 layer (defaults: REFERENCE §3)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    d_state: int = Field(128, ge=1, description="SSM state size N per head.")
    head_dim: int = Field(64, ge=1, description="Channels P per head; H = d_inner / head_dim heads.")
    n_groups: int = Field(1, ge=1, description="Groups G of B and C shared by H / G heads each; must divide H.")
    expand: int = Field(2, ge=1, description="d_inner = expand · d_model.")
    d_conv: int = Field(4, ge=1, description="Kernel width of the causal depthwise convolution over [x, B, C].")
    chunk_size: int = Field(256, ge=1, description="Chunk length Q of the chunked SSD scan.")
    A_init_range: tuple[float, float] = Field((1.0, 16.0), description="A = exp(A_log) ~ U[low, high] per head.")
    dt_min: float = Field(1e-3, gt=0, description="Smallest initial step size (log-uniform init).")
    dt_max: float = Field(0.1, gt=0, description="Largest initial step size (log-uniform init).")
    dt_init_floor: float = Field(1e-4, gt=0, description="Initial step sizes are floored at this value.")
    conv_bias: bool = Field(True, description="Bias in the depthwise convolution.")
    export_memory: bool = Field(
        False, description="Write the un-gated, un-normalised SSD output into shared.memory (memory layer M2*)."
    )

    @model_validator(mode="after")
    def _check_range(self) -> Mamba2Config:
        low, high = self.A_init_range
        if not 0 < low <= high:
            raise ValueError(f"A_init_range must satisfy 0 < low <= high, got {self.A_init_range}")
        return self


@mixers.register("mamba2", config=Mamba2Config)
class Mamba2(Mixer):
    """Mamba-2 (SSD) mixer (see the module docstring)."""

    Config = Mamba2Config

    def __init__(self, ctx: MixerContext, config: Mamba2Config) -> None:
        super().__init__(ctx, config)
        d = ctx.d_model
        self.d_inner, self.n_head = self.dims(ctx, config)
        di, H, G, N = self.d_inner, self.n_head, config.n_groups, config.d_state
        self.conv_dim = di + 2 * G * N
        self.in_proj = Linear(d, 2 * di + 2 * G * N + H, bias=False)  # [z, x, B, C, dt]
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, config.d_conv, groups=self.conv_dim, bias=config.conv_bias
        )
        self.dt_bias = nn.Parameter(torch.empty(H))
        self.A_log = nn.Parameter(torch.empty(H))
        self.D = nn.Parameter(torch.empty(H))
        self.norm = GatedRMSNorm(di, group_size=di // G, eps=ctx.norm_eps, norm_before_gate=False)
        self.out_proj = Linear(di, d, bias=False)
        self.reset_parameters()

    @staticmethod
    def dims(ctx: MixerContext, config: Mamba2Config) -> tuple[int, int]:
        """(d_inner, n_head) after validation."""
        di = config.expand * ctx.d_model
        if di % config.head_dim:
            raise ValueError(f"d_inner = expand·d_model = {di} is not divisible by head_dim={config.head_dim}")
        H = di // config.head_dim
        if H % config.n_groups:
            raise ValueError(f"n_groups={config.n_groups} must divide the number of heads {H}")
        return di, H

    def reset_parameters(self) -> None:
        """A ~ U[A_init_range] per head, D = 1, dt bias = softplus⁻¹(log-uniform dt) (mamba-ssm's Mamba2 init)."""
        cfg: Mamba2Config = self.config  # type: ignore[assignment]
        init_uniform_A_log_(self.A_log, *cfg.A_init_range)
        nn.init.ones_(self.D)
        init_dt_bias_(self.dt_bias, cfg.dt_min, cfg.dt_max, cfg.dt_init_floor)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: torch.Tensor,
        seq: SeqInfo,
        state: RecurrentState | None = None,
        shared: CrossLayer | None = None,
    ) -> tuple[torch.Tensor, RecurrentState | None]:
        cfg: Mamba2Config = self.config  # type: ignore[assignment]
        conv_state, ssm_state, want_state = split_state("mamba2", state, seq)
        Bsz, T, _ = x.shape
        di, H, G, N, P = self.d_inner, self.n_head, cfg.n_groups, cfg.d_state, cfg.head_dim

        zxbcdt = self.in_proj(x)  # [z, x, B, C, dt]
        xbc, dt = zxbcdt[..., di:].split([self.conv_dim, H], dim=-1)
        xbc, conv_state = short_conv(
            xbc, self.conv1d.weight[:, 0], self.conv1d.bias, "silu", conv_state, seq.cu_seqlens, want_state
        )
        xs, B, C = xbc.split([di, G * N, G * N], dim=-1)
        fp = compute_dtype(x)  # step sizes in fp32: softplus of a bf16 sum would lose the small dt values
        dt = F.softplus(dt.to(fp) + self.dt_bias.to(fp))  # (B, T, H)
        y, ssm_state = ssd(
            xs.view(Bsz, T, H, P),  # (B, T, H, P)
            dt,
            -torch.exp(self.A_log.to(fp)),
            B.view(Bsz, T, G, N),  # (B, T, G, N)
            C.view(Bsz, T, G, N),
            self.D,
            chunk_size=cfg.chunk_size,
            initial_state=ssm_state,
            cu_seqlens=seq.cu_seqlens,
            return_final_state=want_state,
        )
        y = y.reshape(Bsz, T, di)  # (B, T, H·P), head-major
        if cfg.export_memory and shared is not None:
            shared.memory = y
        # z is sliced here, where the norm uses it, not with x, B, C and dt above: torch.compile's partitioner does
        # not recompute a cast that comes long after its input in the forward, and kept the norm's float32 copy of
        # z for the backward (twice the bytes of the bf16 projection that stays alive anyway).
        out = self.out_proj(self.norm(y, zxbcdt[..., :di]))
        if not want_state:
            return out, None
        assert conv_state is not None and ssm_state is not None
        return out, RecurrentState(conv_state, ssm_state)

    # ------------------------------------------------------------------ bookkeeping
    @classmethod
    def example_params(cls, d_model: int) -> dict[str, int]:
        # 4 heads of 16 at d_model 32; chunks of 8 so that T = 17 or 63 spans several chunks and a padded one.
        return {"d_state": 8, "head_dim": max(1, d_model // 2), "chunk_size": 8}

    @classmethod
    def memory_dim(cls, ctx: MixerContext, config: Mamba2Config) -> int:  # type: ignore[override]
        """Width of ``shared.memory`` when exporting: d_inner = H · head_dim, the SSD output plus the D skip
        (head-major)."""
        return cls.dims(ctx, config)[0]

    @classmethod
    def count_params(cls, ctx: MixerContext, config: Mamba2Config) -> dict[ParamRole, int]:  # type: ignore[override]
        d = ctx.d_model
        di, H = cls.dims(ctx, config)
        conv_dim = di + 2 * config.n_groups * config.d_state
        matrix = d * (2 * di + 2 * config.n_groups * config.d_state + H) + di * d  # in_proj, out_proj
        conv = conv_dim * config.d_conv + (conv_dim if config.conv_bias else 0)
        vector = conv + 3 * H + di  # conv, dt_bias/A_log/D, norm weight
        return {"matrix": matrix, "vector": vector}

    @classmethod
    def count_flops(  # type: ignore[override]
        cls, ctx: MixerContext, config: Mamba2Config, seq_len: int, attention: AttentionFlops = "dense"
    ) -> float:
        """2 · matrix parameters + the chunked SSD matmuls (see the module docstring)."""
        _, H = cls.dims(ctx, config)
        G, N, P = config.n_groups, config.d_state, config.head_dim
        pairs, tokens = chunk_costs(seq_len, config.chunk_size, attention)
        scan = pairs * (2 * N * G + 2 * P * H) + tokens * 4 * N * P * H
        return 2.0 * cls.count_params(ctx, config)["matrix"] + scan

    def output_projections(self) -> set[str]:
        return {"out_proj.weight"}
