"""Mamba-2 state-space duality (SSD; Dao & Gu 2024, "Transformers are SSMs"): recurrent and chunked references.

Per head h (group g = h // (H/G) supplies B and C; A is one negative scalar per head), with dt already positive:

    h_t = exp(dt_t · A) · h_{t-1} + dt_t · x_t B_tᵀ          (P × N state; x_t ∈ R^P, B_t, C_t ∈ R^N)
    y_t = h_t C_t + D · x_t

Two forms compute the same thing:

- :func:`ssd_recurrent`: the recurrence above, a loop over t (elementwise work only). The specification.
- :func:`ssd_chunked`: the SSD algorithm (paper §6): split T into chunks of Q tokens; inside a chunk the output is
  a masked "attention" y = (L ∘ C Bᵀ)(dt·x) with L_ij = exp(Σ_{j<s≤i} dt_s A) for j ≤ i (the 1-semiseparable
  mask); across chunks a state is carried: each chunk's contribution to the state is Bᵀ(decay·dt·x), the state is
  passed with the chunk's total decay, and C reads it back with the decay since the chunk start. The quadratic
  part is matmuls of size Q; the chunk loop is over T/Q steps only.

Matmul FLOPs of the chunked form (2 per multiply-add, per token, Q = min(chunk_size, T), last chunk padded):
2·Q·N·G (C Bᵀ) + 2·Q·P·H (scores · x) + 2·N·P·H (chunk states) + 2·N·P·H (C · carried state). The mask, decays
and the chunk-to-chunk state pass are elementwise and not counted.

Varlen (cu_seqlens, B == 1): the recurrent form restarts the state at every document start; the chunked form
runs each document on its own (a loop over documents; the GPU kernels of issue #8 do this in one launch).
"""

from __future__ import annotations

import torch

from archscale.kernels.varlen import check_initial_state, compute_dtype, doc_bounds


def _check(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> None:
    Bsz, T, H, _ = x.shape
    G, N = B.shape[2], B.shape[3]
    if dt.shape != (Bsz, T, H) or A.shape != (H,) or B.shape != (Bsz, T, G, N) or C.shape != B.shape or H % G:
        raise ValueError(
            "ssd shapes: x (B, T, H, P); dt (B, T, H); A (H,); B, C (B, T, G, N) with G dividing H; got "
            f"x {tuple(x.shape)}, dt {tuple(dt.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}, C {tuple(C.shape)}"
        )


def ssd_recurrent(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The SSD recurrence, one step per token (see the module docstring and :func:`archscale.kernels.ssd.ssd`)."""
    _check(x, dt, A, B, C)
    Bsz, T, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    dtype = compute_dtype(x, dt, A, B, C)
    xf, dtf = x.to(dtype), dt.to(dtype)
    Bh = B.to(dtype).repeat_interleave(H // G, dim=2)  # (B, T, H, N): head h reads group h // (H/G)
    Ch = C.to(dtype).repeat_interleave(H // G, dim=2)
    decay = torch.exp(dtf * A.to(dtype))  # (B, T, H)
    inp = (dtf.unsqueeze(-1) * xf).unsqueeze(-1) * Bh.unsqueeze(-2)  # (B, T, H, P, N)

    if cu_seqlens is None:
        check_initial_state(initial_state, (Bsz, H, P, N))
        h0 = x.new_zeros(Bsz, H, P, N, dtype=dtype) if initial_state is None else initial_state.to(dtype)
        starts, ends = {0: h0}, {T - 1}
    else:
        bounds = doc_bounds(cu_seqlens, T, Bsz)
        check_initial_state(initial_state, (len(bounds), H, P, N))
        h0 = x.new_zeros(len(bounds), H, P, N, dtype=dtype) if initial_state is None else initial_state.to(dtype)
        starts = {s: h0[i : i + 1] for i, (s, _) in enumerate(bounds)}
        ends = {e - 1 for _, e in bounds}

    hs: list[torch.Tensor] = []
    finals: list[torch.Tensor] = []
    h = starts[0]
    for t in range(T):
        if t in starts:
            h = starts[t]
        h = decay[:, t, :, None, None] * h + inp[:, t]  # (B, H, P, N)
        hs.append(h)
        if t in ends:
            finals.append(h)
    y = (torch.stack(hs, dim=1) * Ch.unsqueeze(-2)).sum(-1)  # (B, T, H, P)
    if D is not None:
        y = y + xf * D.to(dtype)[:, None]
    return y.to(x.dtype), torch.cat(finals, dim=0) if return_final_state else None


def _ssd_chunked_dense(
    x: torch.Tensor,  # (B, T, H, P), compute dtype
    dt: torch.Tensor,  # (B, T, H)
    A: torch.Tensor,  # (H,)
    B: torch.Tensor,  # (B, T, G, N)
    C: torch.Tensor,  # (B, T, G, N)
    h0: torch.Tensor,  # (B, H, P, N)
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD of dense sequences; returns y without the D skip, (B, T, H, P), and the final state."""
    Bsz, T, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    R = H // G  # heads per group
    Q = min(chunk_size, T)
    nc = -(-T // Q)
    pad = nc * Q - T
    if pad:
        # dt = 0 on padding: decay exp(0) = 1 and no input, so the state passes through the padding unchanged.
        x, dt, B, C = (torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    x = x.view(Bsz, nc, Q, G, R, P)
    B, C = B.view(Bsz, nc, Q, G, N), C.view(Bsz, nc, Q, G, N)
    dt = dt.view(Bsz, nc, Q, H)
    cs = torch.cumsum(dt * A, dim=2)  # (B, c, Q, H) log-decay from the chunk start through token i

    # 1. Inside each chunk: y_i = Σ_{j≤i} (C_i·B_j) exp(cs_i - cs_j) dt_j x_j  (the "attention" form).
    cb = torch.einsum("bcign,bcjgn->bcgij", C, B)  # (B, c, G, Q, Q)
    csh = cs.permute(0, 1, 3, 2)  # (B, c, H, Q)
    seg = csh[..., :, None] - csh[..., None, :]  # (B, c, H, Q, Q): cs_i - cs_j
    causal = torch.ones(Q, Q, dtype=torch.bool, device=x.device).tril()
    # Mask before exp: above the diagonal cs_i - cs_j > 0 could overflow, and exp(-inf) = 0 has a zero gradient.
    L = torch.exp(torch.where(causal, seg, float("-inf"))).view(Bsz, nc, G, R, Q, Q)
    scores = cb.unsqueeze(3) * L * dt.permute(0, 1, 3, 2).reshape(Bsz, nc, G, R, 1, Q)  # (B, c, G, R, Q, Q)
    y = torch.einsum("bcgrij,bcjgrp->bcigrp", scores, x)  # (B, c, Q, G, R, P)

    # 2. Each chunk's own contribution to the state at its end: Σ_j exp(cs_last - cs_j) dt_j x_j B_jᵀ.
    w = (dt * torch.exp(cs[:, :, -1:] - cs)).view(Bsz, nc, Q, G, R, 1)
    states = torch.einsum("bcjgn,bcjgrp->bcgrpn", B, x * w).reshape(Bsz, nc, H, P, N)

    # 3. Pass the state from chunk to chunk (T/Q sequential steps, elementwise).
    chunk_decay = torch.exp(cs[:, :, -1])  # (B, c, H)
    prev: list[torch.Tensor] = []
    h = h0
    for c in range(nc):
        prev.append(h)  # the state entering chunk c
        h = chunk_decay[:, c, :, None, None] * h + states[:, c]
    h_in = torch.stack(prev, dim=1).view(Bsz, nc, G, R, P, N)

    # 4. Read the entering state: y_i += exp(cs_i) · h_in C_i.
    y_off = torch.einsum("bcign,bcgrpn->bcigrp", C, h_in)  # (B, c, Q, G, R, P)
    y = y + y_off * torch.exp(cs).view(Bsz, nc, Q, G, R, 1)
    return y.reshape(Bsz, nc * Q, H, P)[:, :T], h


def ssd_chunked(
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
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The chunked SSD algorithm (see the module docstring and :func:`archscale.kernels.ssd.ssd`)."""
    _check(x, dt, A, B, C)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    Bsz, T, H, P = x.shape
    N = B.shape[3]
    dtype = compute_dtype(x, dt, A, B, C)
    xf, dtf, Af, Bf, Cf = (t.to(dtype) for t in (x, dt, A, B, C))

    if cu_seqlens is None:
        check_initial_state(initial_state, (Bsz, H, P, N))
        h0 = x.new_zeros(Bsz, H, P, N, dtype=dtype) if initial_state is None else initial_state.to(dtype)
        y, final = _ssd_chunked_dense(xf, dtf, Af, Bf, Cf, h0, chunk_size)
    else:
        bounds = doc_bounds(cu_seqlens, T, Bsz)
        n_docs = len(bounds)
        check_initial_state(initial_state, (n_docs, H, P, N))
        # NaN-poisoned: a document the loop forgot would show up as NaN.
        y = x.new_full((1, T, H, P), float("nan"), dtype=dtype)
        final = x.new_full((n_docs, H, P, N), float("nan"), dtype=dtype)
        for i, (s, e) in enumerate(bounds):
            h0 = x.new_zeros(1, H, P, N, dtype=dtype) if initial_state is None else initial_state[i : i + 1].to(dtype)
            y_doc, h_doc = _ssd_chunked_dense(xf[:, s:e], dtf[:, s:e], Af, Bf[:, s:e], Cf[:, s:e], h0, chunk_size)
            y[:, s:e] = y_doc
            final[i] = h_doc[0]
    if D is not None:
        y = y + xf * D.to(dtype)[:, None]
    return y.to(x.dtype), final if return_final_state else None
