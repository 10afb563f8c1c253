"""Gated delta rule (Yang, Kautz & Hatamizadeh 2024, "Gated Delta Networks", ICLR 2025): recurrent and chunked.

The paper writes the state as S_t ∈ R^{d_v × d_k}:

    S_t = α_t S_{t-1} (I - β_t k_t k_tᵀ) + β_t v_t k_tᵀ,        o_t = S_t q_t

i.e. decay the memory by α_t = exp(g_t), then make one delta-rule (online regression) step: replace the value
currently stored under key k_t, S_{t-1}k_t, by v_t, with learning rate β_t (β ∈ (0, 2) allows the negative
eigenvalues of I - βkkᵀ of Grazzi et al. 2024). We store the transpose, h = Sᵀ of shape (K, V), fla's layout:

    h_t = α_t h_{t-1} + k_t ⊗ β_t (v_t - α_t h_{t-1}ᵀ k_t),     o_t = scale · h_tᵀ q_t       (scale = K^-1/2)

- :func:`gated_delta_rule_recurrent`: one step per token (elementwise and reductions only). The specification.
- :func:`gated_delta_rule_chunked`: the chunkwise WY form (Yang et al. 2024, "Parallelizing Linear Transformers
  with the Delta Rule over Sequence Length", extended with the gate). Inside a chunk with entering state h_0 and
  cumulative log-decay G_i = Σ_{s≤i} g_s, the state updates δ_i = β_i (v_i - α_i h_{i-1}ᵀ k_i) solve the unit
  lower-triangular system (I + A) Δ = diag(β) V - diag(β e^G) K h_0 with A_ij = β_i e^{G_i - G_j} k_iᵀk_j (j < i),
  so Δ = U - W h_0 with U = (I+A)⁻¹ diag(β) V, W = (I+A)⁻¹ diag(β e^G) K (one triangular solve per chunk). Then
  O = diag(e^G) Q h_0 + (Q Kᵀ ∘ Γ) Δ and h_Q = e^{G_Q} h_0 + (diag(e^{G_Q - G}) K)ᵀ Δ with Γ_ij = e^{G_i - G_j}, j ≤ i.

Matmul FLOPs of the chunked form (2 per multiply-add, per token and head, Q = min(chunk_size, T), last chunk
padded): 2·Q·K (K Kᵀ) + 2·Q·K (Q Kᵀ) + 2·Q·V (scores · Δ) + 3 · 2·K·V (W h_0, Q h_0, Kᵀ Δ). The triangular solve
(≈ Q·(K+V) per token and head; ``FlopCounterMode`` does not count it), decays and masks are not counted.

The chunk-to-chunk recursion (Δ needs the entering state) is the one sequential step; it is a custom op
(:mod:`archscale.kernels.delta_rule.state_pass`) so that torch.compile does not unroll it T/Q times.

Varlen (cu_seqlens, B == 1): the recurrent form restarts the state at each document start; the chunked form runs
the packed stream in one pass (:func:`_chunked_onepass`): Γ and A pair tokens of one document only, a document start
inside a chunk cuts the carried state, and initial / final states are injected / read per document. No loop over
documents, no host sync, no shape that depends on cu_seqlens' values: it compiles with ``fullgraph=True``.
"""

from __future__ import annotations

import torch

from archscale.kernels.delta_rule.state_pass import state_pass
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


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor) -> None:
    Bsz, T, H, K = q.shape
    if k.shape != q.shape or v.shape[:3] != (Bsz, T, H) or g.shape != (Bsz, T, H) or beta.shape != g.shape:
        raise ValueError(
            "gated_delta_rule shapes: q, k (B, T, H, K); v (B, T, H, V); g, beta (B, T, H); got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, g {tuple(g.shape)}, "
            f"beta {tuple(beta.shape)}"
        )


def gated_delta_rule_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The gated delta rule, one step per token (see the module docstring and
    :func:`archscale.kernels.delta_rule.gated_delta_rule`)."""
    _check(q, k, v, g, beta)
    Bsz, T, H, K = q.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    dtype = compute_dtype(q, k, v, g, beta)
    qf, kf, vf, bf = (t.to(dtype) for t in (q, k, v, beta))
    alpha = torch.exp(g.to(dtype))  # (B, T, H)

    if cu_seqlens is None:
        check_initial_state(initial_state, (Bsz, H, K, V))
        h0 = q.new_zeros(Bsz, H, K, V, dtype=dtype) if initial_state is None else initial_state.to(dtype)
        starts, ends = {0: h0}, {T - 1}
    else:
        bounds = doc_bounds(cu_seqlens, T, Bsz)
        check_initial_state(initial_state, (len(bounds), H, K, V))
        h0 = q.new_zeros(len(bounds), H, K, V, dtype=dtype) if initial_state is None else initial_state.to(dtype)
        starts = {s: h0[i : i + 1] for i, (s, _) in enumerate(bounds)}
        ends = {e - 1 for _, e in bounds}

    outs: list[torch.Tensor] = []
    finals: list[torch.Tensor] = []
    h = starts[0]
    for t in range(T):
        if t in starts:
            h = starts[t]
        kt = kf[:, t].unsqueeze(-1)  # (B, H, K, 1)
        h = alpha[:, t, :, None, None] * h  # decay first: the delta step reads α h_{t-1}
        delta = bf[:, t, :, None] * (vf[:, t] - (kt * h).sum(-2))  # (B, H, V)
        h = h + kt * delta.unsqueeze(-2)  # (B, H, K, V)
        outs.append(scale * (qf[:, t].unsqueeze(-1) * h).sum(-2))  # (B, H, V)
        if t in ends:
            finals.append(h)
    o = torch.stack(outs, dim=1)  # (B, T, H, V)
    return o.to(v.dtype), torch.cat(finals, dim=0) if return_final_state else None


def _chunked_onepass(
    q: torch.Tensor,  # (B, T, H, K), compute dtype, already scaled
    k: torch.Tensor,  # (B, T, H, K)
    v: torch.Tensor,  # (B, T, H, V)
    g: torch.Tensor,  # (B, T, H)
    beta: torch.Tensor,  # (B, T, H)
    h0: torch.Tensor | None,  # (B, H, K, V) dense, (N_docs, H, K, V) varlen, or None for zeros
    chunk_size: int,
    cu_seqlens: torch.Tensor | None,
    want_final: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked WY form over the whole (packed) stream; returns o (B, T, H, V) and the final states.

    Varlen runs in the same pass (as in :func:`archscale.kernels.ssd.reference._ssd_chunked_onepass`): the masks
    Γ and A only pair tokens of one document, so (I + A) is block-diagonal per document and one triangular solve
    serves every document of a chunk; W's rows are taken relative to each token's entering state (the carried state
    for a document that started before the chunk, its initial state for one that started inside it); a chunk in
    which a document starts passes on no carried state. The chunk-to-chunk loop is the only sequential part (Δ
    depends on the entering state); it has no data-dependent shapes, so the pass compiles into one graph."""
    Bsz, T, H, K = q.shape
    V = v.shape[-1]
    Q = min(chunk_size, T)
    nc = -(-T // Q)
    pad = nc * Q - T
    if pad:
        # g = 0, β = 0, k = 0 on padding: α = 1 and no update, so the state passes through unchanged.
        q, k, v = (torch.nn.functional.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v))
        g, beta = (torch.nn.functional.pad(t, (0, 0, 0, pad)) for t in (g, beta))
    lay = None if cu_seqlens is None else chunk_layout(cu_seqlens, T, Q)
    # Heads before chunks so that every matmul is batched over (B, H, c).
    q, k, v = (t.view(Bsz, nc, Q, H, -1).permute(0, 3, 1, 2, 4) for t in (q, k, v))  # (B, H, c, Q, K or V)
    g, beta = (t.view(Bsz, nc, Q, H).permute(0, 3, 1, 2) for t in (g, beta))  # (B, H, c, Q)
    G = cumsum(g, dim=-1)  # (B, H, c, Q) log-decay from the chunk start through token i

    idx = torch.arange(Q, device=q.device)
    incl = idx[:, None] >= idx[None, :]  # j <= i
    strict = idx[:, None] > idx[None, :]  # j < i
    to_end = G[..., -1:] - G  # decay from token j to the chunk end
    ref: torch.Tensor | float = 0.0  # log-decay at which each token's entering state is taken
    if lay is not None:
        same = lay.doc[:, :, None] == lay.doc[:, None, :]  # (c, Q, Q)
        incl, strict = incl & same, strict & same
        to_end = torch.where(lay.doc == lay.doc[:, -1:], to_end, float("-inf"))  # the chunk's last document only
        # A document starting at s inside the chunk enters from its initial state at G_{s-1} = G_s - g_s.
        ref = torch.where(lay.carry, 0.0, (G - g).gather(-1, lay.start_local.expand(Bsz, H, nc, Q)))
    gamma = decay_tile(G, incl)  # (B, H, c, Q, Q): Γ_ij = exp(G_i - G_j) for j <= i; recomputed in the backward

    kk = torch.einsum("bhcik,bhcjk->bhcij", k, k)  # (B, H, c, Q, Q)
    A = torch.where(strict, beta[..., :, None] * gamma * kk, 0.0)
    rhs = torch.cat((beta[..., None] * v, (beta * torch.exp(G - ref))[..., None] * k), dim=-1)  # (B, H, c, Q, V+K)
    # The diagonal of A is zero; unitriangular=True reads I + A without forming it.
    UW = torch.linalg.solve_triangular(A, rhs, upper=False, unitriangular=True)
    U, W = UW[..., :V], UW[..., V:]  # (B, H, c, Q, V), (B, H, c, Q, K)

    attn = torch.einsum("bhcik,bhcjk->bhcij", q, k) * gamma  # (B, H, c, Q, Q), zero above the diagonal
    q_dec = q * torch.exp(G)[..., None]  # (B, H, c, Q, K)
    k_dec = k * torch.exp(to_end)[..., None]
    chunk_decay = torch.exp(G[..., -1])  # (B, H, c)
    W_carry = W
    o_extra = inject = None
    if lay is not None:
        # Only tokens whose document was running before the chunk read the carried state; a document start in the
        # chunk cuts the carried chain.
        W_carry, q_dec = W * lay.carry[..., None], q_dec * lay.carry[..., None]
        chunk_decay = chunk_decay * lay.carry[:, -1]
        if h0 is not None:
            U, o_extra, inject = _initial_state_terms(q, G, g, U, W, h0, lay)

    # The chunk-to-chunk recursion, the only sequential step: one custom op (see state_pass.py).
    h_start = h0 if lay is None and h0 is not None else q.new_zeros(Bsz, H, K, V)
    h_in, dlt, h = state_pass(U, W_carry, k_dec, chunk_decay, h_start, inject)  # (B, H, c, K, V), (B, H, c, Q, V)
    o = q_dec @ h_in + attn @ dlt  # (B, H, c, Q, V)
    if o_extra is not None:
        o = o + o_extra
    o = o.permute(0, 2, 3, 1, 4).reshape(Bsz, nc * Q, H, V)[:, :T]  # (B, T, H, V)
    if not want_final:
        return o, None
    if lay is None:
        return o, h
    return o, _final_states(k, g, G, h_in, dlt, h0, lay)


def _initial_state_terms(
    q: torch.Tensor,  # (1, H, c, Q, K)
    G: torch.Tensor,  # (1, H, c, Q)
    g: torch.Tensor,  # (1, H, c, Q)
    U: torch.Tensor,  # (1, H, c, Q, V)
    W: torch.Tensor,  # (1, H, c, Q, K)
    h0: torch.Tensor,  # (n_docs, H, K, V)
    lay: ChunkLayout,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Document d's initial state h0_d enters at its start s_d in chunk c = s_d // Q: its tokens there get
    Δ -= W h0_d and o += exp(G_i - G_{s_d-1}) q_i h0_d, and if d runs to the end of c, c's end state gains
    exp(G_last - G_{s_d-1}) h0_d. Returns (U - W h0, the extra output, the per-chunk state injection)."""
    _, H, nc, Q, _ = q.shape
    n_docs = h0.shape[0]
    docs = torch.arange(n_docs, device=q.device)
    c = lay.starts // Q  # (n_docs,)
    before = (G - g).reshape(H, nc * Q)[:, lay.starts]  # (H, n_docs): log-decay just before s_d
    rows = lay.doc[c] == docs[:, None]  # (n_docs, Q): d's tokens in its first chunk
    hT = h0.transpose(0, 1)  # (H, n_docs, K, V)
    corr = (W[0, :, c] * rows[..., None]) @ hT  # (H, n_docs, Q, V)
    U = U.index_add(2, c, -corr.unsqueeze(0))
    read = torch.exp(torch.where(rows, G[0, :, c] - before[..., None], float("-inf")))  # (H, n_docs, Q)
    o_extra = torch.zeros_like(U).index_add(2, c, ((q[0, :, c] * read[..., None]) @ hT).unsqueeze(0))
    runs_to_end = lay.doc[c, -1] == docs  # (n_docs,)
    w = torch.exp(torch.where(runs_to_end, G[0, :, c, -1] - before, float("-inf")))  # (H, n_docs)
    inject = h0.new_zeros(1, H, nc, *h0.shape[2:]).index_add(2, c, (w[..., None, None] * hT).unsqueeze(0))
    return U, o_extra, inject


def _final_states(
    k: torch.Tensor,  # (1, H, c, Q, K)
    g: torch.Tensor,  # (1, H, c, Q)
    G: torch.Tensor,  # (1, H, c, Q)
    h_in: torch.Tensor,  # (1, H, c, K, V) states entering each chunk
    delta: torch.Tensor,  # (1, H, c, Q, V) state updates Δ
    h0: torch.Tensor | None,  # (n_docs, H, K, V)
    lay: ChunkLayout,
) -> torch.Tensor:
    """The state after the last token e of every document d (chunk c = e // Q): the carried state decayed to e if
    d started before c, d's updates in c up to e, and h0_d decayed from d's start if d started in c."""
    _, H, nc, Q, _ = k.shape
    n_docs = lay.lasts.shape[0]
    docs = torch.arange(n_docs, device=k.device)
    c, i = lay.lasts // Q, lay.lasts % Q  # (n_docs,)
    G_flat = G.reshape(H, nc * Q)
    G_e = G_flat[:, lay.lasts]  # (H, n_docs)
    carry_e = lay.carry.reshape(-1)[lay.lasts]  # (n_docs,)
    final = torch.where(carry_e, torch.exp(G_e), 0.0)[..., None, None] * h_in[0, :, c]  # (H, n_docs, K, V)
    rows = (lay.doc[c] == docs[:, None]) & (torch.arange(Q, device=k.device) <= i[:, None])  # (n_docs, Q)
    w = torch.exp(torch.where(rows, G_e[..., None] - G[0, :, c], float("-inf")))  # (H, n_docs, Q)
    final = final + (k[0, :, c] * w[..., None]).transpose(-1, -2) @ delta[0, :, c]
    if h0 is not None:
        before = (G - g).reshape(H, nc * Q)[:, lay.starts]
        w0 = torch.exp(torch.where(carry_e, float("-inf"), G_e - before))  # (H, n_docs)
        final = final + w0[..., None, None] * h0.transpose(0, 1)
    return final.transpose(0, 1)  # (n_docs, H, K, V)


def gated_delta_rule_chunked(
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
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The chunkwise WY form in one pass, varlen included (see the module docstring and
    :func:`archscale.kernels.delta_rule.gated_delta_rule`). Free of host syncs and data-dependent shapes."""
    _check(q, k, v, g, beta)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    Bsz, T, H, K = q.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    dtype = compute_dtype(q, k, v, g, beta)
    qf, kf, vf, gf, bf = (t.to(dtype) for t in (q, k, v, g, beta))
    qf = qf * scale
    if cu_seqlens is None:
        check_initial_state(initial_state, (Bsz, H, K, V))
    else:
        check_cu_seqlens(cu_seqlens, T, Bsz)
        check_initial_state(initial_state, (cu_seqlens.shape[0] - 1, H, K, V))
    h0 = None if initial_state is None else initial_state.to(dtype)
    o, final = _chunked_onepass(qf, kf, vf, gf, bf, h0, chunk_size, cu_seqlens, return_final_state)
    return o.to(v.dtype), final
