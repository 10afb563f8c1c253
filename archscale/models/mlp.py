"""SwiGLU feed-forward network (Shazeer 2020, "GLU Variants Improve Transformer"), as in Llama/Transformer++.

y = W_down (SiLU(W_gate x) ⊙ W_up x), no biases. ``down_proj`` writes into the residual stream, so it is the
block's output projection (scaled-down init, REFERENCE §4.6).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archscale.models.api import ParamRole
from archscale.models.linear import Linear


class SwiGLU(nn.Module):
    """SwiGLU MLP d_model -> hidden -> d_model."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.d_model = d_model
        self.hidden = hidden
        self.gate_proj = Linear(d_model, hidden, bias=False)
        self.up_proj = Linear(d_model, hidden, bias=False)
        self.down_proj = Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    # ------------------------------------------------------------------ bookkeeping
    @staticmethod
    def count_params(d_model: int, hidden: int) -> dict[ParamRole, int]:
        return {"matrix": 3 * d_model * hidden}

    @staticmethod
    def count_flops(d_model: int, hidden: int) -> float:
        """Forward FLOPs per token: three d_model x hidden matmuls, 2 FLOPs per multiply-add."""
        return 2.0 * 3 * d_model * hidden

    def flops_per_token(self, seq_len: int = 0) -> float:
        return self.count_flops(self.d_model, self.hidden)

    def param_roles(self) -> dict[str, ParamRole]:
        return {"gate_proj.weight": "matrix", "up_proj.weight": "matrix", "down_proj.weight": "matrix"}

    def output_projections(self) -> set[str]:
        """Parameters whose output is added to the residual stream (init std / √(2L))."""
        return {"down_proj.weight"}
