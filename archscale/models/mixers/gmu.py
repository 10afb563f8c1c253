"""Gated Memory Unit (Ren et al. 2025, "Decoder-Hybrid-Decoder Architecture for Efficient Reasoning with Long
Generation", SambaY; REFERENCE §3).

    y = (SiLU(x W1) ⊙ m) W2,     W1: d -> d_m,  W2: d_m -> d,  no bias

m (B, T, d_m) is the memory of an earlier layer of the same forward (the ``M*`` layer, ``export_memory=True``),
read from ``shared.memory``: for Mamba-1 the un-gated scan output SSM(u') + D⊙u' before its SiLU(z) gate
(d_m = 2d). The GMU thus re-gates the memory layer's token mixing with the current layer's input, at the cost of
two matrices and no attention: in SambaY it replaces every other cross-attention layer of the YOCO cross-decoder,
so decoding keeps no KV cache for it (state None; the O(d_m) per token is the producer's recurrent state).

nGMU (``normalize=True``; the paper's choice for Mamba-2 and Gated DeltaNet memory, whose outputs are normalised
inside those mixers): a group RMSNorm with a learned gain is applied after gating, before W2,
RMSNorm_g(SiLU(x W1) ⊙ m), over ``norm_groups`` equal groups of d_m (1 group by default, as in ArchScale).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from archscale.models.api import CrossLayer, ParamRole, SeqInfo
from archscale.models.linear import Linear
from archscale.models.mixers.base import AttentionFlops, Mixer, MixerContext, SharedKind
from archscale.registry import mixers


class GMUConfig(BaseModel):
    """Parameters of one Gated Memory Unit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    d_mem: int | None = Field(
        None,
        ge=1,
        description="Width d_m of the shared memory; None = the exporting layer's (ctx.memory_dim, found by the "
        "model from the spec), or 2·d_model (Mamba-1 memory, expand 2) without one.",
    )
    normalize: bool = Field(False, description="nGMU: group RMSNorm after gating (Mamba-2 / GDN memory).")
    norm_groups: int = Field(1, ge=1, description="Groups of the nGMU RMSNorm (must divide d_mem).")
    bias: bool = Field(False, description="Biases on W1 and W2 (off in SambaY).")

    @model_validator(mode="after")
    def _check(self) -> GMUConfig:
        if self.d_mem is not None and self.d_mem % self.norm_groups:
            raise ValueError(f"norm_groups={self.norm_groups} must divide d_mem={self.d_mem}")
        return self


@mixers.register("gmu", config=GMUConfig)
class GatedMemoryUnit(Mixer):
    """y = (SiLU(x W1) ⊙ m) W2 on the shared memory m (see the module docstring)."""

    Config = GMUConfig

    def __init__(self, ctx: MixerContext, config: GMUConfig) -> None:
        super().__init__(ctx, config)
        self.d_mem = self.mem_width(ctx, config)
        if self.d_mem % config.norm_groups:
            raise ValueError(f"gmu: norm_groups={config.norm_groups} must divide d_mem={self.d_mem}")
        self.normalize = config.normalize
        self.norm_groups = config.norm_groups
        self.eps = ctx.norm_eps
        self.in_proj = Linear(ctx.d_model, self.d_mem, bias=config.bias)  # W1
        self.out_proj = Linear(self.d_mem, ctx.d_model, bias=config.bias)  # W2
        self.norm_weight = nn.Parameter(torch.ones(self.d_mem)) if config.normalize else None

    @staticmethod
    def mem_width(ctx: MixerContext, config: GMUConfig) -> int:
        """d_m: the config's, else the memory producer's (from the spec), else 2·d_model."""
        if config.d_mem is not None:
            if ctx.memory_dim is not None and ctx.memory_dim != config.d_mem:
                raise ValueError(
                    f"gmu: d_mem={config.d_mem} but the layer exporting memory produces width {ctx.memory_dim}"
                )
            return config.d_mem
        return ctx.memory_dim if ctx.memory_dim is not None else 2 * ctx.d_model

    def reset_parameters(self) -> None:
        for proj in (self.in_proj, self.out_proj):
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)
        if self.norm_weight is not None:
            nn.init.ones_(self.norm_weight)

    def forward(
        self, x: torch.Tensor, seq: SeqInfo, state: None = None, shared: CrossLayer | None = None
    ) -> tuple[torch.Tensor, None]:
        if shared is None or shared.memory is None:
            raise ValueError(
                "gmu: no shared memory; an earlier layer of the same forward must export it (export_memory=True, "
                "the '*' layer of a pattern)"
            )
        m = shared.memory  # (B, T, d_m), this call's tokens only
        if m.shape[:-1] != x.shape[:-1] or m.shape[-1] != self.d_mem:
            raise ValueError(
                f"gmu: shared memory of shape {tuple(m.shape)} does not fit x {tuple(x.shape)} and d_mem={self.d_mem}"
            )
        h = F.silu(self.in_proj(x)) * m.to(x.dtype)  # (B, T, d_m)
        if self.normalize:
            h = self._group_rms_norm(h)
        return self.out_proj(h), None

    def _group_rms_norm(self, h: torch.Tensor) -> torch.Tensor:
        """RMSNorm over each of ``norm_groups`` equal slices of the last dimension (in float32), then the gain."""
        assert self.norm_weight is not None
        shape = h.shape
        hg = h.view(*shape[:-1], self.norm_groups, shape[-1] // self.norm_groups)  # (B, T, G, d_m/G)
        hf = hg.to(torch.promote_types(h.dtype, torch.float32))
        hf = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (hf.view(shape) * self.norm_weight).to(h.dtype)

    # ------------------------------------------------------------------ cross-layer values
    @classmethod
    def shared_reads(cls, config: BaseModel) -> frozenset[SharedKind]:
        return frozenset({"memory"})

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
        assert isinstance(config, GMUConfig)
        d_m = cls.mem_width(ctx, config)
        return CrossLayer(memory=torch.randn(batch, seq_len, d_m, generator=generator, dtype=dtype))

    # ------------------------------------------------------------------ bookkeeping
    @classmethod
    def example_params(cls, d_model: int) -> dict[str, object]:
        return {"d_mem": 2 * d_model, "normalize": True, "norm_groups": 2}

    @classmethod
    def count_params(cls, ctx: MixerContext, config: GMUConfig) -> dict[ParamRole, int]:  # type: ignore[override]
        d, d_m = ctx.d_model, cls.mem_width(ctx, config)
        vector = (d_m + d if config.bias else 0) + (d_m if config.normalize else 0)
        return {"matrix": 2 * d * d_m, "vector": vector}

    @classmethod
    def count_flops(  # type: ignore[override]
        cls, ctx: MixerContext, config: GMUConfig, seq_len: int, attention: AttentionFlops = "dense"
    ) -> float:
        """2·(W1 + W2): the gate and the norm are elementwise and not counted."""
        return 2.0 * 2 * ctx.d_model * cls.mem_width(ctx, config)

    def output_projections(self) -> set[str]:
        return {"out_proj.weight"}
