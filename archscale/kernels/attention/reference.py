"""Softmax attention with causal, sliding-window and document masks: the specification and the CPU path.

Everything is expressed as one boolean (T, S) mask handed to ``F.scaled_dot_product_attention`` (or no mask when
``is_causal`` is exact), so the reference costs O(T·S) memory for the mask; fast paths
(:mod:`archscale.kernels.attention`) never build it. Layout and semantics are those of
:func:`archscale.kernels.attention.attention`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def document_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """(total,) int64 index of the document each token of a packed batch belongs to.

    ``searchsorted`` over the document ends instead of ``repeat_interleave`` of the lengths: its output shape is
    ``total`` whatever the number of documents, so a compiled graph never depends on the lengths' values.
    """
    idx = torch.arange(total, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens[1:].long(), idx, right=True)


def attention_mask(
    T: int,
    S: int,
    *,
    causal: bool = True,
    window: int | None = None,
    cu_seqlens: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor | None:
    """Boolean (T, S) mask, True = may attend, for T queries against S keys whose last T are the queries' own
    positions (cached keys first). None when no mask is needed: ``is_causal`` is exact (T == S, causal, no
    window, no documents) or nothing is masked (non-causal, no documents)."""
    if cu_seqlens is not None:
        if S != T:
            raise ValueError(
                f"attention: a packed varlen batch (cu_seqlens given) cannot attend to cached keys, got T={T} "
                f"queries and S={S} keys; decode documents as separate dense rows"
            )
        doc = document_ids(cu_seqlens, T)
        idx = torch.arange(T, device=cu_seqlens.device)
        allowed = doc[:, None] == doc[None, :]
        if causal:
            allowed = allowed & (idx[None, :] <= idx[:, None])
        if window is not None:
            allowed = allowed & (idx[:, None] - idx[None, :] < window)
        return allowed
    if not causal:
        return None
    if S == T and window is None:
        return None
    # Query t sits at index S - T + t of the key sequence (cached keys first); keys are contiguous.
    qi = torch.arange(T, device=device)[:, None] + (S - T)
    kj = torch.arange(S, device=device)[None, :]
    allowed = kj <= qi
    if window is not None:
        allowed = allowed & (qi - kj < window)
    return allowed


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    causal: bool = True,
    window: int | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """q (B, T, H, K), k (B, S, Hkv, K), v (B, S, Hkv, V) -> (B, T, H, V); see
    :func:`archscale.kernels.attention.attention`."""
    T, S = q.shape[1], k.shape[1]
    mask = attention_mask(T, S, causal=causal, window=window, cu_seqlens=cu_seqlens, device=q.device)
    is_causal = mask is None and causal
    y = F.scaled_dot_product_attention(
        q.transpose(1, 2),  # (B, H, T, K): SDPA's layout, a view
        k.transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=mask,
        is_causal=is_causal,
        scale=scale,
        enable_gqa=q.shape[2] != k.shape[2],
    )
    return y.transpose(1, 2)  # (B, T, H, V)
