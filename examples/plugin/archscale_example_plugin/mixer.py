"""Token shift (as in RWKV, Peng et al. 2023): each token mixes with its predecessor through a learned per-channel
interpolation, then a projection. The smallest mixer that satisfies archscale's token-mixer contract: causal,
document-masked (the predecessor of a document's first token is zero), and stateful (the state is the last token,
so a sequence processed in chunks gives the same output as in one pass).
Registered through the ``archscale.mixers`` entry point; archscale's generic mixer tests apply to it unchanged."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from archscale.models.api import CrossLayer, SeqInfo
from archscale.models.mixers.base import Mixer, MixerContext


class TokenShiftConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mix_init: float = Field(0.5, ge=0.0, le=1.0, description="Initial weight of the previous token per channel.")


class TokenShift(Mixer):
    Config = TokenShiftConfig

    def __init__(self, ctx: MixerContext, config: TokenShiftConfig) -> None:
        super().__init__(ctx, config)
        d = ctx.d_model
        self.mix = nn.Parameter(torch.full((d,), config.mix_init))
        self.proj = nn.Linear(d, d, bias=False)
        self.out = nn.Linear(d, d, bias=False)

    def forward(
        self, x: torch.Tensor, seq: SeqInfo, state: Any | None = None, shared: CrossLayer | None = None
    ) -> tuple[torch.Tensor, Any]:
        # shared: values earlier layers hand on (YOCO K,V, GMU memory); this mixer neither reads nor writes them.
        first = torch.zeros_like(x[:, :1]) if state is None else state.unsqueeze(1).to(x.dtype)
        prev = torch.cat([first, x[:, :-1]], dim=1)  # (B, T, D)
        doc_start = (seq.position_ids == 0).unsqueeze(-1)  # the predecessor belongs to another document
        prev = prev.masked_fill(doc_start, 0.0)
        h = torch.lerp(x, prev, self.mix.to(x.dtype))
        return self.out(self.proj(h)), x[:, -1]

    @classmethod
    def count_flops(cls, ctx: MixerContext, config: BaseModel, seq_len: int, attention: str = "dense") -> float:
        return 2.0 * 2 * ctx.d_model * ctx.d_model  # two d×d projections, 2 FLOPs per multiply-add

    def output_projections(self) -> set[str]:
        return {"out.weight"}
