"""Gated delta rule (Gated DeltaNet, Yang, Kautz & Hatamizadeh 2024): public functional, shapes, implementations.

Layout (fla's, time-major):

    q, k          (B, T, H, K)    the caller L2-normalises them (Gated DeltaNet does)
    v             (B, T, H, V)
    g             (B, T, H)       log of the decay α_t (g <= 0)
    beta          (B, T, H)       delta-rule step size β_t (in (0, 2) with negative eigenvalues allowed)
    scale         float           applied to q; None = K^-1/2 (fla's default)
    initial_state (B, H, K, V)    h_0 = S_0ᵀ (fla's layout), or (N_docs, H, K, V) with cu_seqlens
    cu_seqlens    (N_docs + 1,)   packed varlen with B == 1: the state restarts at every document start

Returns ``(o, final_state)``: o (B, T, H, V) in v's dtype (math in fp32, float64 kept); final_state (B, H, K, V)
/ (N_docs, H, K, V) in the compute dtype when ``return_final_state``, else None.

impl: "chunked" (WY form, the default on CPU), "recurrent" (the step-by-step specification), "auto" (chunked for
now; fla's Triton kernels / our own are issue #8). See :mod:`archscale.kernels.delta_rule.reference`.
"""

from __future__ import annotations

from typing import Literal

import torch

from archscale.kernels.delta_rule.reference import gated_delta_rule_chunked, gated_delta_rule_recurrent
from archscale.kernels.varlen import fp32_region

__all__ = ["gated_delta_rule", "gated_delta_rule_chunked", "gated_delta_rule_recurrent"]


def gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    chunk_size: int = 64,
    initial_state: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    return_final_state: bool = False,
    impl: Literal["auto", "chunked", "recurrent"] = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The gated delta rule (see the module docstring)."""
    if impl not in ("auto", "chunked", "recurrent"):
        raise ValueError(f"impl must be 'auto', 'chunked' or 'recurrent', got {impl!r}")
    with fp32_region(q):
        if impl == "recurrent":
            return gated_delta_rule_recurrent(
                q, k, v, g, beta, scale, initial_state, cu_seqlens, return_final_state
            )
        return gated_delta_rule_chunked(
            q, k, v, g, beta, scale, chunk_size, initial_state, cu_seqlens, return_final_state
        )
