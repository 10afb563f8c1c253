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

Varlen (cu_seqlens, B == 1): the recurrent form restarts the state at each document start; the chunked form runs
each document on its own (a loop over documents).
"""

from __future__ import annotations

import torch

from archscale.kernels.varlen import check_initial_state, compute_dtype, doc_bounds


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


def _chunked_dense(
    q: torch.Tensor,  # (B, T, H, K), compute dtype, already scaled
    k: torch.Tensor,  # (B, T, H, K)
    v: torch.Tensor,  # (B, T, H, V)
    g: torch.Tensor,  # (B, T, H)
    beta: torch.Tensor,  # (B, T, H)
    h0: torch.Tensor,  # (B, H, K, V)
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    Bsz, T, H, K = q.shape
    V = v.shape[-1]
    Q = min(chunk_size, T)
    nc = -(-T // Q)
    pad = nc * Q - T
    if pad:
        # g = 0, β = 0, k = 0 on padding: α = 1 and no update, so the state passes through unchanged.
        q, k, v = (torch.nn.functional.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v))
        g, beta = (torch.nn.functional.pad(t, (0, 0, 0, pad)) for t in (g, beta))
    # Heads before chunks so that every matmul is batched over (B, H, c).
    q, k, v = (t.view(Bsz, nc, Q, H, -1).permute(0, 3, 1, 2, 4) for t in (q, k, v))  # (B, H, c, Q, K or V)
    g, beta = (t.view(Bsz, nc, Q, H).permute(0, 3, 1, 2) for t in (g, beta))  # (B, H, c, Q)
    G = torch.cumsum(g, dim=-1)  # (B, H, c, Q) log-decay from the chunk start through token i

    idx = torch.arange(Q, device=q.device)
    incl = idx[:, None] >= idx[None, :]  # j <= i
    strict = idx[:, None] > idx[None, :]  # j < i
    # Γ_ij = exp(G_i - G_j) for j <= i; masked before exp (above the diagonal the exponent is positive).
    gamma = torch.exp(torch.where(incl, G[..., :, None] - G[..., None, :], float("-inf")))  # (B, H, c, Q, Q)

    kk = torch.einsum("bhcik,bhcjk->bhcij", k, k)  # (B, H, c, Q, Q)
    A = torch.where(strict, beta[..., :, None] * gamma * kk, 0.0)
    rhs = torch.cat((beta[..., None] * v, (beta * torch.exp(G))[..., None] * k), dim=-1)  # (B, H, c, Q, V+K)
    # The diagonal of A is zero; unitriangular=True reads I + A without forming it.
    UW = torch.linalg.solve_triangular(A, rhs, upper=False, unitriangular=True)
    U, W = UW[..., :V], UW[..., V:]  # (B, H, c, Q, V), (B, H, c, Q, K)

    attn = torch.einsum("bhcik,bhcjk->bhcij", q, k) * gamma  # (B, H, c, Q, Q), zero above the diagonal
    q_dec = q * torch.exp(G)[..., None]  # (B, H, c, Q, K)
    k_dec = k * torch.exp(G[..., -1:] - G)[..., None]  # decay from token j to the chunk end
    chunk_decay = torch.exp(G[..., -1])  # (B, H, c)

    outs: list[torch.Tensor] = []
    h = h0
    for c in range(nc):
        delta = U[:, :, c] - W[:, :, c] @ h  # (B, H, Q, V)
        outs.append(q_dec[:, :, c] @ h + attn[:, :, c] @ delta)  # (B, H, Q, V)
        h = chunk_decay[:, :, c, None, None] * h + k_dec[:, :, c].transpose(-1, -2) @ delta  # (B, H, K, V)
    o = torch.stack(outs, dim=2)  # (B, H, c, Q, V)
    o = o.permute(0, 2, 3, 1, 4).reshape(Bsz, nc * Q, H, V)[:, :T]  # (B, T, H, V)
    return o, h


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
    """The chunkwise WY form (see the module docstring and :func:`archscale.kernels.delta_rule.gated_delta_rule`)."""
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
        h0 = q.new_zeros(Bsz, H, K, V, dtype=dtype) if initial_state is None else initial_state.to(dtype)
        o, final = _chunked_dense(qf, kf, vf, gf, bf, h0, chunk_size)
    else:
        bounds = doc_bounds(cu_seqlens, T, Bsz)
        n_docs = len(bounds)
        check_initial_state(initial_state, (n_docs, H, K, V))
        # NaN-poisoned: a document the loop forgot would show up as NaN.
        o = q.new_full((1, T, H, V), float("nan"), dtype=dtype)
        final = q.new_full((n_docs, H, K, V), float("nan"), dtype=dtype)
        for i, (s, e) in enumerate(bounds):
            h0 = q.new_zeros(1, H, K, V, dtype=dtype) if initial_state is None else initial_state[i : i + 1].to(dtype)
            o_doc, h_doc = _chunked_dense(qf[:, s:e], kf[:, s:e], vf[:, s:e], gf[:, s:e], bf[:, s:e], h0, chunk_size)
            o[:, s:e] = o_doc
            final[i] = h_doc[0]
    return o.to(v.dtype), final if return_final_state else None
