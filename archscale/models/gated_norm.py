"""Gated (group) RMSNorm: the output normalisation of Mamba-2 and Gated DeltaNet, and nGMU's memory norm.

Two orders exist, and the models differ:

- gate then norm (``norm_before_gate=False``; Mamba-2, Dao & Gu 2024 §7.2: a norm after the multiplicative gate
  keeps large-scale training stable; also SambaY's nGMU, which normalises SiLU(x W1) ⊙ m):
  ``y = RMSNorm(x ⊙ SiLU(z)) ⊙ w``
- norm then gate (``norm_before_gate=True``; Gated DeltaNet's output norm, Yang et al. 2024):
  ``y = RMSNorm(x) ⊙ w ⊙ SiLU(z)``

The RMS is taken over groups of ``group_size`` consecutive channels of the last dimension (Mamba-2 uses one group
per B/C group: d_inner / n_groups; a group of the whole dimension is a plain RMSNorm). Math in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GatedRMSNorm(nn.Module):
    """RMSNorm over groups of the last dimension, with a SiLU gate before or after it (see the module docstring)."""

    def __init__(self, dim: int, group_size: int | None = None, eps: float = 1e-5, norm_before_gate: bool = False):
        super().__init__()
        self.dim = dim
        self.group_size = dim if group_size is None else group_size
        if dim % self.group_size:
            raise ValueError(f"group_size={self.group_size} must divide dim={dim}")
        self.eps = eps
        self.norm_before_gate = norm_before_gate
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """x, z (..., dim); z None = no gate."""
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        xf = x.to(dtype)
        gate = None if z is None else F.silu(z.to(dtype))
        if gate is not None and not self.norm_before_gate:
            xf = xf * gate
        groups = xf.unflatten(-1, (self.dim // self.group_size, self.group_size))  # (..., n_groups, group_size)
        groups = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)
        y = groups.flatten(-2) * self.weight.to(dtype)
        if gate is not None and self.norm_before_gate:
            y = y * gate
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"{self.dim}, group_size={self.group_size}, eps={self.eps}, norm_before_gate={self.norm_before_gate}"
        )
