"""Windowed and document-masked attention through FlexAttention (Dong et al. 2024, "Flex Attention").

FlexAttention compiles a fused attention kernel around a ``mask_mod(b, h, q_idx, kv_idx) -> bool`` and skips the
(q-block, kv-block) tiles a ``BlockMask`` declares empty; tiles declared *full* skip the mask_mod as well. It is
the portable fast path: fp32 as well as bf16, any head_dim the compiler handles, values wider than keys
(Differential Attention), and no extra package (docs GPU.md: compiled causal 297 TFLOP/s on the H100).

Block masks. ``create_block_mask`` evaluates the mask_mod on all T x T positions; here the block classes come
from block-level bounds instead, O((T/bs)²) work on tensors whose shapes depend only on T:

- a tile can hold an allowed pair only if some key is not in the future of every query (k_start <= q_end), the
  nearest pair is inside the window (q_start - k_end < W) and the two tiles' document ranges overlap;
- it is full when every pair is allowed: all keys precede all queries (k_end <= q_start), the farthest pair is
  inside the window (q_end - k_start < W), one single document spans both tiles, and neither tile is cut by T.

Document ids are computed from ``cu_seqlens`` with a fixed output shape (T,), so a new packing of the same T
(another batch) changes tensor values only: no recompilation, and nothing needs caching across steps. The mask
and block mask are built inside the same compiled function as the attention call (eagerly: a compiled helper;
inside ``torch.compile(model)``: traced into the model's graph), so they cost a handful of tiny fused kernels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from archscale.kernels.attention.reference import document_ids

BLOCK_SIZE = 128  # FlexAttention's default sparse block: its Triton tiles are 64 or 128 wide


def block_classes(
    T: int,
    *,
    causal: bool,
    window: int | None,
    doc: torch.Tensor | None,
    block_size: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(partial, full): (nb, nb) bool tile classes, nb = ceil(T / block_size), rows = query tiles.

    A tile in neither class holds no allowed (query, key) pair; a full tile holds only allowed pairs; a partial
    tile may hold both (the mask_mod decides). ``doc`` (T,) is the non-decreasing document id of every token.
    """
    if window is not None and not causal:
        raise ValueError("a sliding window is defined for causal attention only (causal=True)")
    nb = -(-T // block_size)
    start = torch.arange(nb, device=device) * block_size
    end = torch.clamp(start + block_size, max=T) - 1  # last real index of every tile
    qs, qe = start[:, None], end[:, None]  # query tile i: rows
    ks, ke = start[None, :], end[None, :]  # key tile j: columns
    nonempty = torch.ones(nb, nb, dtype=torch.bool, device=device)
    full = torch.ones(nb, nb, dtype=torch.bool, device=device)
    if causal:
        nonempty = nonempty & (ks <= qe)
        full = full & (ke <= qs)
    if window is not None:
        nonempty = nonempty & (qs - ke < window)
        full = full & (qe - ks < window)
    if doc is not None:
        lo, hi = doc[start], doc[end]  # document range of each tile (doc ids never decrease)
        nonempty = nonempty & (lo[None, :] <= hi[:, None]) & (lo[:, None] <= hi[None, :])
        single = lo == hi
        full = full & single[:, None] & single[None, :] & (lo[:, None] == lo[None, :])
    whole = (end - start + 1) == block_size
    full = full & nonempty & whole[:, None] & whole[None, :]
    return nonempty & ~full, full


def _mask_mod(causal: bool, window: int | None, doc: torch.Tensor | None) -> Callable[..., torch.Tensor]:
    """The element-level rule (the same as :func:`~archscale.kernels.attention.reference.attention_mask`).

    ``doc`` must cover every index a kernel tile can touch (padded to whole tiles), since the kernel may evaluate
    the rule past T before masking those positions out."""

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        allowed = kv_idx <= q_idx if causal else kv_idx >= 0
        if window is not None:
            allowed = allowed & (q_idx - kv_idx < window)
        if doc is not None:
            allowed = allowed & (doc[q_idx] == doc[kv_idx])
        return allowed

    return mask_mod


def _kv_blocks(cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BlockMask's (num_blocks (1, 1, nb), indices (1, 1, nb, nb)) of a (nb, nb) class: the member tiles of
    each row first, in column order (a stable sort of the non-members to the end)."""
    num = cls.sum(-1, dtype=torch.int32)
    idx = torch.argsort((~cls).to(torch.int32), dim=-1, stable=True).to(torch.int32)
    return num[None, None], idx[None, None]


def document_block_mask(
    T: int,
    *,
    causal: bool = True,
    window: int | None = None,
    doc: torch.Tensor | None = None,
    block_size: int = BLOCK_SIZE,
    device: torch.device | str = "cpu",
) -> BlockMask:
    """The BlockMask of causal / windowed / document-masked self-attention over T tokens (B and H broadcast)."""
    device = torch.device(device)
    partial, full = block_classes(T, causal=causal, window=window, doc=doc, block_size=block_size, device=device)
    padded = None
    if doc is not None:
        nb = partial.shape[0]
        # In-bounds reads for the last tile. A cat, not F.pad: torch 2.11's inductor cannot inline the pad's
        # bounds check into the fp32 FlexAttention template when T is no multiple of the block ("'int' object
        # has no attribute 'free_symbols'"; H200, 2026-12-04: cat and an index clamp lower, pad, where and
        # slice_scatter do not).
        padded = torch.cat((doc, doc.new_full((nb * block_size - T,), -1)))
    kv_num, kv_idx = _kv_blocks(partial)
    full_num, full_idx = _kv_blocks(full)
    return BlockMask.from_kv_blocks(
        kv_num,
        kv_idx,
        full_num,
        full_idx,
        BLOCK_SIZE=block_size,
        mask_mod=_mask_mod(causal, window, padded),
        seq_lengths=(T, T),
    )


def _flex_core(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    doc: torch.Tensor | None,
    scale: float,
    causal: bool,
    window: int | None,
    block_size: int,
) -> torch.Tensor:
    """q (B, H, T, K), k/v (B, Hkv, T, K|V) -> (B, H, T, V): block mask and attention in one traceable call."""
    T = q.shape[2]
    mask = document_block_mask(T, causal=causal, window=window, doc=doc, block_size=block_size, device=q.device)
    return flex_attention(q, k, v, block_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])


_compiled_core: Callable[..., torch.Tensor] | None = None


def _compiled() -> Callable[..., torch.Tensor]:
    # Created on first use: torch.compile is lazy, but building the wrapper at import would still import dynamo.
    global _compiled_core
    if _compiled_core is None:
        _compiled_core = torch.compile(_flex_core, dynamic=False)
    return _compiled_core


def flex_attention_blocks(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    causal: bool = True,
    window: int | None = None,
    cu_seqlens: torch.Tensor | None = None,
    block_size: int = BLOCK_SIZE,
    compiled: bool = True,
) -> torch.Tensor:
    """q (B, T, H, K), k (B, T, Hkv, K), v (B, T, Hkv, V) -> (B, T, H, V); B == 1 when ``cu_seqlens`` is given.

    ``compiled=False`` runs FlexAttention eagerly: an unfused O(T²) implementation that ignores the block
    classes, forward only on CPU; the tests use it to check the mask_mod. Inside ``torch.compile`` the call is
    traced into the caller's graph either way.
    """
    T = q.shape[1]
    doc = document_ids(cu_seqlens, T) if cu_seqlens is not None else None
    args = (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), doc, scale, causal, window, block_size)
    fn = _flex_core if (not compiled or torch.compiler.is_compiling()) else _compiled()
    return fn(*args).transpose(1, 2)
