"""Mamba-1 token mixer ("M"; Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces").

    [u, z] = x W_in                       u, z ∈ R^{d_inner}, d_inner = expand · d
    u'     = SiLU(causal_conv1d(u))       depthwise, kernel d_conv, with bias
    [δ, B, C] = u' W_x                    δ ∈ R^{dt_rank} (low-rank step size), B, C ∈ R^{d_state}
    Δ      = softplus(δ W_dt + dt_bias)   per channel
    y      = selective_scan(u', Δ, A = -exp(A_log), B, C) + D ⊙ u'
    out    = (y ⊙ SiLU(z)) W_out

Defaults (REFERENCE §3): d_state 16, d_conv 4, expand 2, dt_rank ⌈d/16⌉, dt init log-uniform in [1e-3, 0.1] via
the inverse-softplus bias, A_log S4D-real, D = 1, conv bias on, linear biases off.

The dt bias is its own parameter ``dt_bias`` (mamba-ssm keeps it in ``dt_proj.bias``): a bias inside an
``nn.Linear`` would be re-initialised by the Linear's own ``reset_parameters`` after ours.

Memory (SambaY's M*, REFERENCE §3 GMU): with ``export_memory`` and a ``shared`` object, ``shared.memory`` is set to
the un-gated scan output y = SSM(u') + D ⊙ u', shape (B, T, d_inner), before the SiLU(z) gate.

State: :class:`~archscale.models.mixers.recurrent.RecurrentState` ``(conv (B, d_conv-1, d_inner), ssm (B, d_inner,
d_state))``, returned for every dense batch; packed varlen batches take no state and return None.

FLOPs (2 per multiply-add, per token): 2 · (matrix parameters) — in_proj, x_proj, dt_proj, out_proj. The scan is
elementwise (diagonal A): ≈ 7 · d_inner · d_state per token (exp(ΔA), Δ·B·u, the state update, the C read-out),
plus 2 · d_conv · d_inner for the depthwise conv; like norms and softmax elsewhere these are not counted, which
is also what ``FlopCounterMode`` reports.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from archscale.kernels.selective_scan import selective_scan
from archscale.kernels.short_conv import short_conv
from archscale.kernels.varlen import compute_dtype
from archscale.models.api import CrossLayer, ParamRole, SeqInfo
from archscale.models.linear import Linear
from archscale.models.mixers.base import AttentionFlops, Mixer, MixerContext
from archscale.models.mixers.recurrent import (
    RecurrentState,
    init_dt_bias_,
    init_s4d_real_A_log_,
    split_state,
)
from archscale.registry import mixers


class MambaConfig(BaseModel):
    """Parameters of one Mamba-1 layer (defaults: REFERENCE §3)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    d_state: int = Field(16, ge=1, description="SSM state size N per channel.")
    d_conv: int = Field(4, ge=1, description="Kernel width of the causal depthwise convolution.")
    expand: int = Field(2, ge=1, description="d_inner = expand · d_model.")
    dt_rank: int | None = Field(None, ge=1, description="Rank of the step-size projection; None = ⌈d_model/16⌉.")
    dt_min: float = Field(1e-3, gt=0, description="Smallest initial step size (log-uniform init).")
    dt_max: float = Field(0.1, gt=0, description="Largest initial step size (log-uniform init).")
    dt_init_floor: float = Field(1e-4, gt=0, description="Initial step sizes are floored at this value.")
    conv_bias: bool = Field(True, description="Bias in the depthwise convolution.")
    export_memory: bool = Field(
        False, description="Write the un-gated scan output into shared.memory (SambaY's memory layer M*)."
    )


@mixers.register("mamba", config=MambaConfig)
class Mamba(Mixer):
    """Mamba-1 selective state-space mixer (see the module docstring)."""

    Config = MambaConfig

    def __init__(self, ctx: MixerContext, config: MambaConfig) -> None:
        super().__init__(ctx, config)
        d = ctx.d_model
        self.d_inner, self.dt_rank = self.dims(ctx, config)
        di, N = self.d_inner, config.d_state
        self.in_proj = Linear(d, 2 * di, bias=False)
        # Parameter layout of nn.Conv1d (weight (di, 1, d_conv)); the convolution itself is short_conv.
        self.conv1d = nn.Conv1d(di, di, config.d_conv, groups=di, bias=config.conv_bias)
        self.x_proj = Linear(di, self.dt_rank + 2 * N, bias=False)
        self.dt_proj = Linear(self.dt_rank, di, bias=False)
        self.dt_bias = nn.Parameter(torch.empty(di))
        self.A_log = nn.Parameter(torch.empty(di, N))
        self.D = nn.Parameter(torch.empty(di))
        self.out_proj = Linear(di, d, bias=False)
        self.reset_parameters()

    @staticmethod
    def dims(ctx: MixerContext, config: MambaConfig) -> tuple[int, int]:
        """(d_inner, dt_rank) after defaults."""
        dt_rank = config.dt_rank if config.dt_rank is not None else math.ceil(ctx.d_model / 16)
        return config.expand * ctx.d_model, dt_rank

    def reset_parameters(self) -> None:
        """S4D-real A, D = 1, dt bias = softplus⁻¹(log-uniform dt) (Gu & Dao 2023 §3.6)."""
        cfg: MambaConfig = self.config  # type: ignore[assignment]
        init_s4d_real_A_log_(self.A_log)
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
        cfg: MambaConfig = self.config  # type: ignore[assignment]
        conv_state, ssm_state, want_state = split_state("mamba", state, seq)
        export = cfg.export_memory and shared is not None

        u, z = self.in_proj(x).chunk(2, dim=-1)  # (B, T, d_inner) each
        u, conv_state = short_conv(
            u, self.conv1d.weight[:, 0], self.conv1d.bias, "silu", conv_state, seq.cu_seqlens, want_state
        )
        dt, B, C = self.x_proj(u).split([self.dt_rank, cfg.d_state, cfg.d_state], dim=-1)
        dt = self.dt_proj(dt)  # (B, T, d_inner); bias and softplus are applied in fp32 inside the scan
        res = selective_scan(
            u, dt, -torch.exp(self.A_log.to(compute_dtype(x))), B, C, self.D, z=z, delta_bias=self.dt_bias,
            delta_softplus=True, initial_state=ssm_state, cu_seqlens=seq.cu_seqlens, return_final_state=want_state,
            return_ungated=export,
        )
        if export:
            assert shared is not None
            shared.memory = res.ungated  # (B, T, d_inner): y = SSM(u') + D ⊙ u', before SiLU(z)
        y = self.out_proj(res.out)
        if not want_state:
            return y, None
        assert conv_state is not None and res.final_state is not None
        return y, RecurrentState(conv_state, res.final_state)

    # ------------------------------------------------------------------ bookkeeping
    @classmethod
    def example_params(cls, d_model: int) -> dict[str, int]:
        return {"d_state": 4, "expand": 2}

    @classmethod
    def memory_dim(cls, ctx: MixerContext, config: MambaConfig) -> int:  # type: ignore[override]
        """Width of ``shared.memory`` when exporting: d_inner: the un-gated scan output y = SSM(u') + D ⊙ u'."""
        return cls.dims(ctx, config)[0]

    @classmethod
    def count_params(cls, ctx: MixerContext, config: MambaConfig) -> dict[ParamRole, int]:  # type: ignore[override]
        d = ctx.d_model
        di, r = cls.dims(ctx, config)
        N, W = config.d_state, config.d_conv
        matrix = d * 2 * di + di * (r + 2 * N) + r * di + di * d  # in_proj, x_proj, dt_proj, out_proj
        vector = di * W + (di if config.conv_bias else 0) + di + di * N + di  # conv, dt_bias, A_log, D
        return {"matrix": matrix, "vector": vector}

    @classmethod
    def count_flops(  # type: ignore[override]
        cls, ctx: MixerContext, config: MambaConfig, seq_len: int, attention: AttentionFlops = "dense"
    ) -> float:
        """2 · matrix parameters; the elementwise scan and conv are not counted (module docstring). Independent of
        ``seq_len`` and of the attention convention."""
        return 2.0 * cls.count_params(ctx, config)["matrix"]

    def output_projections(self) -> set[str]:
        return {"out_proj.weight"}
