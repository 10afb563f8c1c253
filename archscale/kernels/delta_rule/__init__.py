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

impl (see :mod:`archscale.kernels.delta_rule.reference`):
    "recurrent"  the step-by-step specification.
    "chunked"    the WY form in one pass over the (packed) stream, varlen included; eager.
    "fla"        fla's Triton kernel, where fla allows it (:mod:`archscale.kernels.delta_rule.fla` has the rule);
                 a clear error elsewhere.
    "auto"       a single token (T == 1, decoding): "recurrent". On CUDA: "fla" where allowed, else "chunked"
                 compiled (``torch.compile(fullgraph=True)`` built once; inside a compiled model the model's own
                 compile fuses it; fla's op, by contrast, is not compile-friendly). Elsewhere: "chunked".
"""

from __future__ import annotations

from typing import Literal

import torch

from archscale.kernels.delta_rule.fla import fla_gated_delta_rule, fla_refusal
from archscale.kernels.delta_rule.reference import (
    gated_delta_rule_chunked,
    gated_delta_rule_recurrent,
)
from archscale.kernels.varlen import compiled_call, fp32_region

__all__ = ["fla_refusal", "gated_delta_rule", "gated_delta_rule_chunked", "gated_delta_rule_recurrent"]

_IMPLS = ("auto", "chunked", "recurrent", "fla")


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
    impl: Literal["auto", "chunked", "recurrent", "fla"] = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The gated delta rule (see the module docstring)."""
    if impl not in _IMPLS:
        raise ValueError(f"impl must be one of {', '.join(map(repr, _IMPLS))}, got {impl!r}")
    choice: str = impl
    if impl == "auto":
        if q.shape[1] == 1:
            choice = "recurrent"
        elif q.is_cuda:
            # fla has no float64 kernels: double precision (the tests' reference checks) stays on our own form.
            use_fla = q.dtype != torch.float64 and fla_refusal(q.device) is None
            choice = "fla" if use_fla else "compiled"
        else:
            choice = "chunked"
    with fp32_region(q):
        if choice == "recurrent":
            return gated_delta_rule_recurrent(
                q, k, v, g, beta, scale, initial_state, cu_seqlens, return_final_state
            )
        if choice == "fla":
            return fla_gated_delta_rule(q, k, v, g, beta, scale, initial_state, cu_seqlens, return_final_state)
        args = (q, k, v, g, beta, scale, chunk_size, initial_state, cu_seqlens, return_final_state)
        return compiled_call(gated_delta_rule_chunked, *args) if choice == "compiled" else gated_delta_rule_chunked(*args)
