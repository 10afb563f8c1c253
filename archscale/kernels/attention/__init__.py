"""Softmax attention for every mixer: one entry point, dispatching to the fastest kernel that fits the case.

Layout (flash-attn / fla, time-major, what the q/k/v projections produce without a transpose):

    q           (B, T, H, K)     H query heads
    k           (B, S, Hkv, K)   Hkv key/value heads (GQA, Ainslie et al. 2023): query head h reads h // (H/Hkv)
    v           (B, S, Hkv, V)   V may differ from K (Differential Attention's values are 2K wide)
    cu_seqlens  (N + 1,) int     packed documents with B == 1 (starts at 0, ends at T); no token attends across
                                 a boundary; ``max_seqlen`` (Python int) the longest document, or None
    returns     (B, T, H, V)     in q's dtype

The T queries are the last T of the S key positions (S > T: cached keys first, when decoding). ``causal``: query
t sees keys up to its own position (``causal=False``: every key of its row or document); ``window`` W (causal
only; Samba, Ren et al. 2024): the W most recent keys, itself included. ``scale``: the softmax temperature (μP
sets it; default 1/√K).

Dispatch (``impl="auto"``); every path computes exactly :func:`attention_reference`'s function:

    CPU, or S != T (cached decoding)         reference: SDPA with a boolean mask (O(T·S) mask; fine at these sizes)
    CUDA, dense, no window                   "sdpa": SDPA with cuDNN first (404 TFLOP/s fwd+bwd on the H100),
                                             PyTorch falling back to flash / efficient / math where cuDNN refuses
    CUDA, window and/or documents            first of :data:`WINDOW_VARLEN_ORDER` that fits: flash-attn when
                                             importable, torch's ``varlen_attn`` (both fp16/bf16 only, head_dim a
                                             multiple of 8 up to 256), compiled FlexAttention (fp16/bf16; fp32
                                             only inside torch.compile), else the reference

Backends whose kernels need V == K ("sdpa", "varlen", "flash") get values of width V = n·K as n times the heads:
each K-wide slice of a key/value head becomes a head of its own, with the key (and each query) repeated per slice,
and one kernel call attends over them all. Attention is linear in V, so the result is exact and costs one more
score computation per slice. (One call per slice computed the same, but under ``torch.compile`` with cuDNN its q,
k and v gradients came out wrong on the H100 with torch 2.11, while eager was right: tests/gpu/
test_mixers_on_cuda.py, 2026-12-06. The single call hands the kernel the layouts ordinary attention does.)

Everything is decided from shapes, dtypes, devices and Python values, never tensor contents, so the dispatch adds
no graph break to ``torch.compile(model)`` and varlen batches with new boundaries reuse the graph (the second
layout seen costs one recompilation, when dynamo makes the number of documents and ``max_seqlen`` symbolic).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from archscale.kernels.attention import flash as _flash
from archscale.kernels.attention import torch_varlen as _torch_varlen
from archscale.kernels.attention.reference import (
    attention_mask,
    attention_reference,
    document_ids,
)
from archscale.kernels.attention.sdpa import sdpa_attention

__all__ = [
    "Impl",
    "attention",
    "attention_mask",
    "attention_reference",
    "available_impls",
    "document_ids",
    "select_impl",
]

Impl = Literal["auto", "reference", "sdpa", "varlen", "flex", "flash"]
IMPLS: tuple[str, ...] = ("reference", "sdpa", "varlen", "flex", "flash")

WINDOW_VARLEN_ORDER: tuple[str, ...] = ("flash", "varlen", "flex")
"""Preference for windowed / document-masked attention on CUDA. flash-attn first when installed; then torch's
varlen_attn (the same flash kernels, 237 TFLOP/s on packed documents, docs GPU.md); FlexAttention last (297 TFLOP/s
dense causal, but a compiled kernel per shape). ``benchmarks/attention_bench.py`` measures all three."""


def available_impls(device: torch.device | str, dtype: torch.dtype = torch.bfloat16) -> list[str]:
    """The implementations that can run on ``device`` for inputs of ``dtype`` (windows and documents included,
    except "sdpa": dense batches only)."""
    device = torch.device(device)
    if device.type != "cuda":
        # SDPA runs everywhere; FlexAttention on CPU is eager-only and forward-only (torch 2.14's inductor found
        # no CPU kernel for it), which training cannot use.
        return ["reference", "sdpa"]
    found = ["reference", "sdpa", "flex"]
    half = dtype in (torch.float16, torch.bfloat16)
    if half and _torch_varlen.AVAILABLE:
        found.append("varlen")
    if half and _flash.AVAILABLE:
        found.append("flash")
    return found


def _fits(impl: str, q: torch.Tensor, window: int | None, cu_seqlens: torch.Tensor | None) -> bool:
    """Whether ``impl`` handles this self-attention case (T == S); the reference handles every case."""
    if impl == "reference":
        return True
    if impl == "sdpa":
        return window is None and cu_seqlens is None
    if q.device.type != "cuda":
        return False
    if impl == "flex":
        # fp32 FlexAttention through our stand-alone compiled helper fails to lower in torch 2.11's inductor
        # ("'function' object has no attribute 'graph'", H100, 2026-11-25) while the same call traced inside a
        # compiled model works: outside torch.compile, fp32 goes to the reference.
        return q.dtype in (torch.float16, torch.bfloat16) or torch.compiler.is_compiling()
    half = q.dtype in (torch.float16, torch.bfloat16)
    K = q.shape[-1]
    flash_shape = half and K % 8 == 0 and K <= 256  # the flash kernels' head sizes and dtypes
    if impl == "flash":
        return flash_shape and _flash.AVAILABLE
    if impl == "varlen":
        return flash_shape and _torch_varlen.AVAILABLE and (window is None or _torch_varlen.HAS_WINDOW)
    return False


def select_impl(
    q: torch.Tensor, k: torch.Tensor, *, window: int | None = None, cu_seqlens: torch.Tensor | None = None
) -> str:
    """The implementation ``impl="auto"`` runs for these inputs (see the module docstring)."""
    if q.device.type != "cuda" or q.shape[1] != k.shape[1]:
        return "reference"
    if window is None and cu_seqlens is None:
        return "sdpa"
    for impl in WINDOW_VARLEN_ORDER:
        if _fits(impl, q, window, cu_seqlens):
            return impl
    return "reference"


def _check(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    window: int | None,
    cu_seqlens: torch.Tensor | None,
) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"attention: q, k, v must be 4-D (B, T, H, K), got shapes {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}"
        )
    B, T, H, K = q.shape
    if k.shape[0] != B or v.shape[0] != B or k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise ValueError(
            f"attention: k {tuple(k.shape)} and v {tuple(v.shape)} must share (B, S, Hkv) with q's B={B}"
        )
    if k.shape[3] != K:
        raise ValueError(f"attention: q and k need the same head size, got K={K} and {k.shape[3]}")
    Hkv, S = k.shape[2], k.shape[1]
    if H % Hkv:
        raise ValueError(f"attention: {H} query heads are not a multiple of {Hkv} key/value heads (GQA)")
    if S < T:
        raise ValueError(f"attention: S={S} keys cannot serve T={T} queries (the queries are the last T keys)")
    if window is not None and (window < 1 or not causal):
        raise ValueError(f"attention: window={window} needs causal=True and window >= 1")
    if cu_seqlens is not None and (B != 1 or S != T):
        raise ValueError(
            f"attention: packed varlen input (cu_seqlens given) needs B == 1 and no cached keys, got B={B}, "
            f"T={T}, S={S}"
        )


def _values_as_heads(fn: Callable[..., torch.Tensor], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     **kwargs: object) -> torch.Tensor:
    """``fn`` (a kernel that needs V == K) on values V wide: the n = ⌈V/K⌉ K-wide slices of every key/value head
    (the last zero-padded) are n heads, the keys and queries repeated to match, all in one call (module docstring).

    Key/value head g becomes heads g·n + i (slice i); GQA maps query head h to h // (H'/Hkv'), so query head
    g·R + r (R = H/Hkv) is repeated at (g·n + i)·R + r, which the kernel pairs with head g·n + i as required."""
    B, T, H, K = q.shape
    S, Hkv, V = k.shape[1], k.shape[2], v.shape[-1]
    if V == K:
        return fn(q, k, v, **kwargs)
    n, R = -(-V // K), H // Hkv
    if V % K:
        v = torch.nn.functional.pad(v, (0, n * K - V))
    v_heads = v.reshape(B, S, Hkv * n, K)  # slice i of head g is head g·n + i
    k_heads = k.unsqueeze(3).expand(B, S, Hkv, n, K).reshape(B, S, Hkv * n, K)
    q_heads = q.reshape(B, T, Hkv, 1, R, K).expand(B, T, Hkv, n, R, K).reshape(B, T, Hkv * n * R, K)
    out = fn(q_heads, k_heads, v_heads, **kwargs)  # (B, T, Hkv·n·R, K)
    out = out.reshape(B, T, Hkv, n, R, K).transpose(3, 4).reshape(B, T, H, n * K)
    return out[..., :V]


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    causal: bool = True,
    window: int | None = None,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    impl: Impl = "auto",
) -> torch.Tensor:
    """Softmax attention (see the module docstring): q (B, T, H, K), k (B, S, Hkv, K), v (B, S, Hkv, V) ->
    (B, T, H, V). ``impl`` forces one implementation; it raises when that one cannot run this case."""
    _check(q, k, v, causal, window, cu_seqlens)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if window is not None and window >= k.shape[1]:
        window = None  # a window covering every key is plain causal attention: take the dense kernels
    if impl == "auto":
        impl = select_impl(q, k, window=window, cu_seqlens=cu_seqlens)  # type: ignore[assignment]
    elif impl not in IMPLS:
        raise ValueError(f"attention: impl must be 'auto' or one of {', '.join(IMPLS)}; got {impl!r}")
    elif impl != "reference":
        if q.shape[1] != k.shape[1]:
            raise ValueError(f"attention: impl={impl!r} handles T == S only (no KV cache); use 'reference'")
        if not _fits(impl, q, window, cu_seqlens):
            raise ValueError(
                f"attention: impl={impl!r} cannot run this case (dtype={q.dtype}, head_dim={q.shape[-1]}, "
                f"window={window}, varlen={cu_seqlens is not None}); available on {q.device.type}: "
                f"{', '.join(available_impls(q.device, q.dtype))}"
            )
    if impl == "reference":
        return attention_reference(q, k, v, scale=scale, causal=causal, window=window, cu_seqlens=cu_seqlens)
    if impl == "flex":
        # Imported here: torch's flex_attention module pulls in dynamo (~1 s), which CPU-only use never needs.
        from archscale.kernels.attention.flex import flex_attention_blocks

        return flex_attention_blocks(q, k, v, scale=scale, causal=causal, window=window, cu_seqlens=cu_seqlens)
    if impl == "sdpa":
        return _values_as_heads(sdpa_attention, q, k, v, scale=scale, causal=causal)
    fn = _flash.flash_attention if impl == "flash" else _torch_varlen.varlen_attention
    return _values_as_heads(
        fn, q, k, v, scale=scale, causal=causal, window=window, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen
    )
