"""Mamba-2 SSD scan (Dao & Gu 2024): public functional, shapes, and implementation choice.

Layout (fla-style, time-major):

    x             (B, T, H, P)    H heads of P = head_dim channels
    dt            (B, T, H)       step sizes, already positive (the mixer applies softplus(dt + dt_bias))
    A             (H,)            negative scalar per head (A = -exp(A_log))
    B, C          (B, T, G, N)    G groups (head h uses group h // (H/G)), N = d_state
    D             (H,)            skip connection, or None
    initial_state (B, H, P, N)    h_0 (mamba-ssm's ssm_state layout), or (N_docs, H, P, N) with cu_seqlens
    cu_seqlens    (N_docs + 1,)   packed varlen with B == 1: the state restarts at every document start

Returns ``(y, final_state)``: y (B, T, H, P) = SSD(x) + D·x in x's dtype (math in fp32, float64 kept);
final_state (B, H, P, N) / (N_docs, H, P, N) in the compute dtype when ``return_final_state``, else None.

impl:
    "recurrent"  the step-by-step specification.
    "chunked"    the SSD algorithm in one pass over the (packed) stream, varlen included; eager.
    "auto"       a single token (T == 1, decoding): "recurrent". On CUDA: "chunked" compiled
                 (``torch.compile(fullgraph=True)`` built once; inside a compiled model the model's own compile
                 fuses it). Elsewhere: "chunked".
There is no fused Triton SSD kernel here; mamba-ssm's would be the one to plug in when importable.
"""

from __future__ import annotations

from typing import Literal

import torch

from archscale.kernels.ssd.reference import ssd_chunked, ssd_recurrent
from archscale.kernels.varlen import compiled_call, fp32_region

__all__ = ["ssd", "ssd_chunked", "ssd_recurrent"]

_IMPLS = ("auto", "chunked", "recurrent")


def ssd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    chunk_size: int = 256,
    initial_state: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    return_final_state: bool = False,
    impl: Literal["auto", "chunked", "recurrent"] = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The SSD scan (see the module docstring)."""
    if impl not in _IMPLS:
        raise ValueError(f"impl must be one of {', '.join(map(repr, _IMPLS))}, got {impl!r}")
    choice = impl if impl != "auto" else "recurrent" if x.shape[1] == 1 else "compiled" if x.is_cuda else "chunked"
    with fp32_region(x):
        if choice == "recurrent":
            return ssd_recurrent(x, dt, A, B, C, D, initial_state, cu_seqlens, return_final_state)
        args = (x, dt, A, B, C, D, chunk_size, initial_state, cu_seqlens, return_final_state)
        return compiled_call(ssd_chunked, *args) if choice == "compiled" else ssd_chunked(*args)
