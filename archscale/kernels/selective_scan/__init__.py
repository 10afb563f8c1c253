"""Mamba-1 selective scan (Gu & Dao 2023): public functional, shapes, and implementation choice.

Layout: time-major, channels last (fla's B, T, ... convention; mamba-ssm uses (B, D, T)):

    u, delta, z   (B, T, D)     D = d_inner channels
    A             (D, N)        real, negative (A = -exp(A_log)), N = d_state
    B, C          (B, T, N)     input-dependent, shared by all channels
    D             (D,)          skip connection, or None
    delta_bias    (D,)          added to delta before the softplus, or None
    initial_state (B, D, N)     h_0, or (N_docs, D, N) with cu_seqlens; None = zeros
    cu_seqlens    (N_docs + 1,) packed varlen with B == 1: the state restarts at every document start

Returns :class:`SelectiveScanOutput` ``(out, final_state, ungated)``: out (B, T, D) is y·SiLU(z) (y when z is
None); final_state (B, D, N) / (N_docs, D, N) when ``return_final_state``; ungated y = SSM(u) + D⊙u (before the
gate; SambaY's GMU memory, REFERENCE §3) when ``return_ungated``. Math in fp32; out in u's dtype.
See :mod:`archscale.kernels.selective_scan.reference` for the recurrence.
"""

from __future__ import annotations

from typing import Literal

import torch

from archscale.kernels.selective_scan.reference import SelectiveScanOutput, selective_scan_reference
from archscale.kernels.varlen import fp32_region

__all__ = ["SelectiveScanOutput", "selective_scan", "selective_scan_reference"]


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    return_final_state: bool = False,
    return_ungated: bool = False,
    impl: Literal["auto", "reference"] = "auto",
) -> SelectiveScanOutput:
    """The selective scan (see the module docstring). ``impl="auto"`` is the sequential reference for now; the
    GPU path (mamba-ssm when installed, or our own kernel) is issue #8."""
    if impl not in ("auto", "reference"):
        raise ValueError(f"impl must be 'auto' or 'reference', got {impl!r}")
    with fp32_region(u):
        return selective_scan_reference(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, cu_seqlens,
            return_final_state, return_ungated,
        )
