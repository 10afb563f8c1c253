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

The chunk-to-chunk state pass is a loop of T/Q elementwise steps: under torch.compile it unrolls into pointwise
ops that fuse (no matmul, so the FLOP count above holds).

Varlen (cu_seqlens, B == 1): the recurrent form restarts the state at every document start; the chunked form runs
the packed stream in one pass (:func:`_ssd_chunked_onepass`): masks keep every token inside its document, a document
start inside a chunk cuts the carried state, and initial / final states are injected / read per document. No loop
over documents, no host sync, no shape that depends on cu_seqlens' values: it compiles with ``fullgraph=True``.
"""

from __future__ import annotations

import torch

from archscale.kernels.varlen import (
    ChunkLayout,
    check_cu_seqlens,
    check_initial_state,
    chunk_layout,
    compute_dtype,
    cumsum,
    decay_tile,
    doc_bounds,
)


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


def _ssd_chunked_onepass(
    x: torch.Tensor,  # (B, T, H, P), compute dtype
    dt: torch.Tensor,  # (B, T, H)
    A: torch.Tensor,  # (H,)
    B: torch.Tensor,  # (B, T, G, N)
    C: torch.Tensor,  # (B, T, G, N)
    h0: torch.Tensor | None,  # (B, H, P, N) dense, (N_docs, H, P, N) varlen, or None for zeros
    chunk_size: int,
    cu_seqlens: torch.Tensor | None,
    want_final: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked SSD over the whole (packed) stream; returns y without the D skip, (B, T, H, P), and the final states.

    Varlen runs in the same pass: a token only mixes with earlier tokens of its own document inside its chunk; it
    reads the state carried into the chunk only when its document started before the chunk; a chunk in which a
    document starts passes on no carried state (a reset). A document's initial state enters as its own term for
    the tokens of its first chunk and as an addition to that chunk's end state; its final state is read at its last
    token. No tensor depends on values of ``cu_seqlens`` through its shape: the pass compiles into one graph."""
    Bsz, T, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    R = H // G  # heads per group
    Q = min(chunk_size, T)
    nc = -(-T // Q)
    pad = nc * Q - T
    if pad:
        # dt = 0 on padding: decay exp(0) = 1 and no input, so the state passes through the padding unchanged.
        x, dt, B, C = (torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    lay = None if cu_seqlens is None else chunk_layout(cu_seqlens, T, Q)
    x = x.view(Bsz, nc, Q, G, R, P)
    B, C = B.view(Bsz, nc, Q, G, N), C.view(Bsz, nc, Q, G, N)
    dt = dt.view(Bsz, nc, Q, H)
    la = dt * A  # (B, c, Q, H) log-decay of each step
    cs = cumsum(la, dim=2)  # (B, c, Q, H) log-decay from the chunk start through token i

    # 1. Inside each chunk: y_i = Σ_{j≤i, same document} (C_i·B_j) exp(cs_i - cs_j) dt_j x_j ("attention" form).
    cb = torch.einsum("bcign,bcjgn->bcgij", C, B)  # (B, c, G, Q, Q)
    keep = torch.ones(Q, Q, dtype=torch.bool, device=x.device).tril()
    if lay is not None:
        keep = keep & (lay.doc[:, :, None] == lay.doc[:, None, :])[:, None]  # (c, 1, Q, Q)
    L = decay_tile(cs.permute(0, 1, 3, 2), keep).view(Bsz, nc, G, R, Q, Q)  # recomputed in the backward
    scores = cb.unsqueeze(3) * L * dt.permute(0, 1, 3, 2).reshape(Bsz, nc, G, R, 1, Q)  # (B, c, G, R, Q, Q)
    y = torch.einsum("bcgrij,bcjgrp->bcigrp", scores, x)  # (B, c, Q, G, R, P)

    # 2. Each chunk's own contribution to the state at its end (from tokens of the chunk's last document):
    #    Σ_j exp(cs_last - cs_j) dt_j x_j B_jᵀ.
    to_end = cs[:, :, -1:] - cs  # (B, c, Q, H)
    if lay is not None:
        to_end = torch.where((lay.doc == lay.doc[:, -1:])[None, :, :, None], to_end, float("-inf"))
    w = (dt * torch.exp(to_end)).view(Bsz, nc, Q, G, R, 1)
    states = torch.einsum("bcjgn,bcjgrp->bcgrpn", B, x * w).reshape(Bsz, nc, H, P, N)

    if lay is not None and h0 is not None:
        # Initial states, one per document, enter where the document starts (see _inject_initial_states).
        y, states = _inject_initial_states(y, states, C, cs, la, h0, lay)

    # 3. Pass the state from chunk to chunk (T/Q sequential steps, elementwise); a document start inside chunk c
    #    cuts the chain (its decay is zeroed), and chunk c's own state then holds only its last document.
    chunk_decay = torch.exp(cs[:, :, -1])  # (B, c, H)
    if lay is not None:
        chunk_decay = chunk_decay * lay.carry[None, :, -1, None]
    prev: list[torch.Tensor] = []
    h = h0 if lay is None and h0 is not None else x.new_zeros(Bsz, H, P, N)
    for c in range(nc):
        prev.append(h)  # the state entering chunk c
        h = chunk_decay[:, c, :, None, None] * h + states[:, c]
    h_in = torch.stack(prev, dim=1).view(Bsz, nc, G, R, P, N)

    # 4. Read the entering state: y_i += exp(cs_i) · h_in C_i, for tokens whose document was running already.
    read = torch.exp(cs)
    if lay is not None:
        read = read * lay.carry[None, :, :, None]
    y_off = torch.einsum("bcign,bcgrpn->bcigrp", C, h_in)  # (B, c, Q, G, R, P)
    y = y + y_off * read.view(Bsz, nc, Q, G, R, 1)
    y = y.reshape(Bsz, nc * Q, H, P)[:, :T]
    if not want_final:
        return y, None
    if lay is None:
        return y, h
    return y, _final_states(x, dt, B, cs, la, h_in.view(nc, H, P, N), h0, lay)


def _inject_initial_states(
    y: torch.Tensor,  # (1, c, Q, G, R, P)
    states: torch.Tensor,  # (1, c, H, P, N)
    C: torch.Tensor,  # (1, c, Q, G, N)
    cs: torch.Tensor,  # (1, c, Q, H)
    la: torch.Tensor,  # (1, c, Q, H)
    h0: torch.Tensor,  # (n_docs, H, P, N)
    lay: ChunkLayout,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add document d's initial state h0_d, entering at its start s_d in chunk c = s_d // Q: tokens i of d in chunk
    c read exp(cs_i - cs_{s_d - 1}) C_i h0_d; if d is still running at the end of c, chunk c's end state gains
    exp(cs_last - cs_{s_d - 1}) h0_d, and the carried-state pass takes it from there. Cost: one chunk per document."""
    _, nc, Q, G, R, P = y.shape
    n_docs, H, _, N = h0.shape
    docs = torch.arange(n_docs, device=y.device)
    c = lay.starts // Q  # (n_docs,) chunk of each start
    cs_flat, la_flat = cs.reshape(nc * Q, H), la.reshape(nc * Q, H)
    before = cs_flat[lay.starts] - la_flat[lay.starts]  # (n_docs, H): cumulated log-decay just before s_d
    rows = lay.doc[c] == docs[:, None]  # (n_docs, Q): the tokens of d in its first chunk
    coef = torch.exp(torch.where(rows[..., None], cs[0, c] - before[:, None], float("-inf")))  # (n_docs, Q, H)
    y0 = torch.einsum("dqgn,dgrpn->dqgrp", C[0, c], h0.view(n_docs, G, R, P, N))
    y = y.index_add(1, c, (y0 * coef.view(n_docs, Q, G, R, 1)).unsqueeze(0))
    runs_to_end = lay.doc[c, -1] == docs  # (n_docs,)
    w = torch.exp(torch.where(runs_to_end[:, None], cs[0, c, -1] - before, float("-inf")))  # (n_docs, H)
    states = states.index_add(1, c, (w[..., None, None] * h0).unsqueeze(0))
    return y, states


def _final_states(
    x: torch.Tensor,  # (1, c, Q, G, R, P)
    dt: torch.Tensor,  # (1, c, Q, H)
    B: torch.Tensor,  # (1, c, Q, G, N)
    cs: torch.Tensor,  # (1, c, Q, H)
    la: torch.Tensor,  # (1, c, Q, H)
    h_in: torch.Tensor,  # (c, H, P, N) states entering each chunk
    h0: torch.Tensor | None,  # (n_docs, H, P, N)
    lay: ChunkLayout,
) -> torch.Tensor:
    """The state after the last token e of every document d (chunk c = e // Q): the carried state decayed to e if
    d started before c, the chunk's own inputs of d up to e, and h0_d decayed from d's start if d started in c."""
    _, nc, Q, G, R, P = x.shape
    H, N = h_in.shape[1], h_in.shape[3]
    n_docs = lay.lasts.shape[0]
    docs = torch.arange(n_docs, device=x.device)
    c, i = lay.lasts // Q, lay.lasts % Q  # (n_docs,)
    cs_flat = cs.reshape(nc * Q, H)
    cs_e = cs_flat[lay.lasts]  # (n_docs, H)
    carry_e = lay.carry.reshape(-1)[lay.lasts]  # (n_docs,)
    final = torch.where(carry_e[:, None], torch.exp(cs_e), 0.0)[..., None, None] * h_in[c]
    rows = (lay.doc[c] == docs[:, None]) & (torch.arange(Q, device=x.device) <= i[:, None])  # (n_docs, Q)
    w = dt[0, c] * torch.exp(torch.where(rows[..., None], cs_e[:, None] - cs[0, c], float("-inf")))  # (n_docs, Q, H)
    own = torch.einsum("dqgn,dqgrp->dgrpn", B[0, c], x[0, c] * w.view(n_docs, Q, G, R, 1))
    final = final + own.reshape(n_docs, H, P, N)
    if h0 is not None:
        before = cs_flat[lay.starts] - la.reshape(nc * Q, H)[lay.starts]
        w0 = torch.exp(torch.where(carry_e[:, None], float("-inf"), cs_e - before))  # (n_docs, H)
        final = final + w0[..., None, None] * h0
    return final


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
    """The chunked SSD algorithm in one pass, varlen included (see the module docstring and
    :func:`archscale.kernels.ssd.ssd`). Free of host syncs and data-dependent shapes: compiles with fullgraph."""
    _check(x, dt, A, B, C)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    Bsz, T, H, P = x.shape
    N = B.shape[3]
    dtype = compute_dtype(x, dt, A, B, C)
    xf, dtf, Af, Bf, Cf = (t.to(dtype) for t in (x, dt, A, B, C))
    if cu_seqlens is None:
        check_initial_state(initial_state, (Bsz, H, P, N))
    else:
        check_cu_seqlens(cu_seqlens, T, Bsz)
        check_initial_state(initial_state, (cu_seqlens.shape[0] - 1, H, P, N))
    h0 = None if initial_state is None else initial_state.to(dtype)
    y, final = _ssd_chunked_onepass(xf, dtf, Af, Bf, Cf, h0, chunk_size, cu_seqlens, return_final_state)
    if D is not None:
        y = y + xf * D.to(dtype)[:, None]
    return y.to(x.dtype), final
