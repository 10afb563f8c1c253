"""Short causal depthwise conv1d with state and varlen (Mamba's ``conv1d``, Gated DeltaNet's short convolution).

Layout: channels last, x (B, T, C); weight (C, W) (``nn.Conv1d(C, C, W, groups=C).weight[:, 0]``), weight[:, W-1]
multiplies the current token; bias (C,) or None; activation "silu" or None (applied after the bias).

State: (B, W-1, C), the last W-1 inputs (pre-activation inputs, oldest first); zeros for a fresh sequence.
Varlen: ``cu_seqlens`` (N + 1,) with B == 1; no tap reaches across a document start; ``initial_state`` and the
final state are then per document, (N, W-1, C) (a document shorter than W-1 keeps the tail of its initial state).

Returns ``(y, final_state)``: y (B, T, C) in x's dtype (math in fp32, or float64 for float64 inputs);
final_state in the compute dtype when ``return_final_state`` else None.
"""

from __future__ import annotations

from typing import Literal

import torch

from archscale.kernels.short_conv.reference import short_conv_reference
from archscale.kernels.varlen import fp32_region

__all__ = ["short_conv", "short_conv_reference"]


def short_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: Literal["silu"] | None = "silu",
    initial_state: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    return_final_state: bool = False,
    impl: Literal["auto", "reference"] = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal depthwise convolution (see the module docstring). ``impl="auto"`` is the reference: W shifted
    multiply-adds with device-side document indexing (no host sync), which inductor fuses inside a compiled model;
    causal-conv1d / fla's ShortConvolution are not wired in."""
    if impl not in ("auto", "reference"):
        raise ValueError(f"impl must be 'auto' or 'reference', got {impl!r}")
    with fp32_region(x):
        return short_conv_reference(x, weight, bias, activation, initial_state, cu_seqlens, return_final_state)
