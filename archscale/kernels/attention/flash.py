"""Attention through flash-attn (Dao 2023, "FlashAttention-2") when the package is importable.

flash-attn has no wheels for our CUDA/torch pairs (docs GPU.md: it needs a long CUDA build), so it is an optional
backend: used first for windowed and document-masked attention whenever ``import flash_attn`` works, never a
dependency. Layout (B, T, H, K) and ``cu_seqlens`` packing are flash-attn's own, so no copies are needed; GQA is
native (key/value heads may divide the query heads); ``window_size=(W-1, 0)`` with ``causal=True`` lets query i
see keys i-W+1 .. i.
"""

from __future__ import annotations

import torch

flash_attn_func = flash_attn_varlen_func = None
AVAILABLE = False
if torch.cuda.is_available():  # CUDA-only kernels; a CPU machine never pays for importing them
    try:
        from flash_attn import flash_attn_func, flash_attn_varlen_func

        AVAILABLE = True
    except (ImportError, OSError, RuntimeError):  # absent, or built against another torch/CUDA (undefined symbols)
        pass


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    causal: bool = True,
    window: int | None = None,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
) -> torch.Tensor:
    """q (B, T, H, K), k/v (B, T, Hkv, K) -> (B, T, H, K); B == 1 when ``cu_seqlens`` is given."""
    if not AVAILABLE:
        raise RuntimeError("flash-attn is not importable; install the 'flash' extra or use another impl")
    window_size = (-1, -1) if window is None else (window - 1, 0)
    if cu_seqlens is None:
        return flash_attn_func(q, k, v, softmax_scale=scale, causal=causal, window_size=window_size)
    T = q.shape[1]
    cu = cu_seqlens.to(torch.int32)
    max_len = T if max_seqlen is None else max_seqlen
    y = flash_attn_varlen_func(
        q[0], k[0], v[0], cu, cu, max_len, max_len, softmax_scale=scale, causal=causal, window_size=window_size
    )
    return y.unsqueeze(0)
