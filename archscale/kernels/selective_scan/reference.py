"""Mamba-1 selective scan, sequential reference (Gu & Dao 2023, "Mamba", Algorithm 2 and §3.5).

Per channel d and state index n, with the zero-order-hold discretisation of A and the simplified Euler one of B:

    Δ_t   = softplus(δ_t + δ_bias)                  (if delta_softplus)
    h_t   = exp(Δ_t · A[d, n]) · h_{t-1} + Δ_t · B_t[n] · u_t[d]
    y_t   = Σ_n C_t[n] · h_t[d, n] + D[d] · u_t[d]
    out_t = y_t · SiLU(z_t[d])                      (if z is given)

A is diagonal (one real value per channel and state: S4D-real), so the whole recurrence is elementwise; the loop
over t is the specification, not a fast path. All math runs in fp32 (float64 for float64 inputs).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from archscale.kernels.varlen import check_initial_state, compute_dtype, doc_bounds


class SelectiveScanOutput(NamedTuple):
    """out: (B, T, D) gated output (== ungated y when z is None), in u's dtype.
    final_state: (B, D, N) (or (N_docs, D, N) for varlen) in the compute dtype, or None if not requested.
    ungated: (B, T, D) y = SSM(u) + D⊙u before the SiLU(z) gate (SambaY's GMU memory), or None if not requested.
    """

    out: torch.Tensor
    final_state: torch.Tensor | None
    ungated: torch.Tensor | None


def selective_scan_reference(
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
) -> SelectiveScanOutput:
    """See :func:`archscale.kernels.selective_scan.selective_scan` for shapes and semantics."""
    Bsz, T, Dch = u.shape
    N = A.shape[-1]
    if delta.shape != u.shape or A.shape != (Dch, N) or B.shape != (Bsz, T, N) or C.shape != (Bsz, T, N):
        raise ValueError(
            f"selective_scan shapes: u, delta (B, T, D); A (D, N); B, C (B, T, N); got u {tuple(u.shape)}, "
            f"delta {tuple(delta.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}, C {tuple(C.shape)}"
        )
    dtype = compute_dtype(u, delta, A, B, C)
    uf, Bf, Cf = u.to(dtype), B.to(dtype), C.to(dtype)
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)
    if delta_softplus:
        dt = F.softplus(dt)

    dA = torch.exp(dt.unsqueeze(-1) * A.to(dtype))  # (B, T, D, N) per-step decay
    dBu = (dt * uf).unsqueeze(-1) * Bf.unsqueeze(2)  # (B, T, D, N) per-step input

    # Where a (new) document starts, the state is replaced by that document's initial state.
    if cu_seqlens is None:
        check_initial_state(initial_state, (Bsz, Dch, N))
        starts: dict[int, torch.Tensor] = {
            0: u.new_zeros(Bsz, Dch, N, dtype=dtype) if initial_state is None else initial_state.to(dtype)
        }
        ends = {T - 1: 0}
    else:
        bounds = doc_bounds(cu_seqlens, T, Bsz)
        check_initial_state(initial_state, (len(bounds), Dch, N))
        h0 = u.new_zeros(len(bounds), Dch, N, dtype=dtype) if initial_state is None else initial_state.to(dtype)
        starts = {s: h0[i : i + 1] for i, (s, _) in enumerate(bounds)}
        ends = {e - 1: i for i, (_, e) in enumerate(bounds)}

    hs: list[torch.Tensor] = []
    finals: list[torch.Tensor] = []
    h = starts[0]
    for t in range(T):
        if t in starts:
            h = starts[t]
        h = dA[:, t] * h + dBu[:, t]  # (B, D, N)
        hs.append(h)
        if t in ends:
            finals.append(h)
    y = (torch.stack(hs, dim=1) * Cf.unsqueeze(2)).sum(-1)  # (B, T, D)
    if D is not None:
        y = y + uf * D.to(dtype)

    out = y if z is None else y * F.silu(z.to(dtype))
    final = torch.cat(finals, dim=0) if return_final_state else None  # (B or N_docs, D, N)
    return SelectiveScanOutput(out.to(u.dtype), final, y.to(u.dtype) if return_ungated else None)
