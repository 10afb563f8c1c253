"""Windowed and document-masked attention on CUDA through PyTorch's ``torch.nn.attention.varlen.varlen_attn``.

``varlen_attn`` (PyTorch >= 2.10) runs the flash-attention kernels PyTorch bundles on packed ``(total_T, H, K)``
tensors with ``cu_seqlens`` boundaries, so a document mask costs nothing beyond the attention inside each document.
Its keyword arguments changed between releases: 2.10 has ``is_causal``; 2.11 replaced it with
``window_size=(left, right)`` (flash-attn's convention: query i sees keys i-left .. i+right, -1 = unbounded);
``enable_gqa`` and ``scale`` are read from the installed signature rather than assumed. Measured on the H100
(torch 2.11, docs GPU.md): matches per-document SDPA in bf16 (relative error 1.9e-3), 237 TFLOP/s fwd+bwd on
documents of 1-6K tokens; a 2048-token window took 3.10 ms against 4.19 ms causal.

Dense rows with a window reuse the same kernel: B rows of T tokens are B documents of a (B·T)-token pack.
The op is a ``torch.library.custom_op`` with a fake implementation, so it traces into ``torch.compile`` graphs.
"""

from __future__ import annotations

import inspect

import torch

_varlen_attn = None
# The kernels are CUDA-only, and importing the module loads dynamo (~1 s): skip it where no GPU can use it.
if torch.cuda.is_available():
    try:
        from torch.nn.attention.varlen import varlen_attn as _varlen_attn
    except ImportError:  # torch < 2.10
        pass

_PARAMS = inspect.signature(_varlen_attn).parameters if _varlen_attn is not None else {}
HAS_WINDOW = "window_size" in _PARAMS
HAS_GQA = "enable_gqa" in _PARAMS
# Without a ``scale`` argument μP's attention scale (ctx.attn_scale) could not be honoured: treat as absent.
AVAILABLE = _varlen_attn is not None and "scale" in _PARAMS


def varlen_attention(
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
        raise RuntimeError("torch.nn.attention.varlen.varlen_attn (with a scale argument) needs torch >= 2.10")
    B, T, H, K = q.shape
    Hkv = k.shape[2]
    if cu_seqlens is None:  # every row is one document
        cu = torch.arange(0, (B + 1) * T, T, device=q.device, dtype=torch.int32)
        max_len = T
    else:
        cu = cu_seqlens.to(torch.int32)
        max_len = T if max_seqlen is None else max_seqlen  # T bounds every document: safe when unknown
    kwargs: dict[str, object] = {"scale": scale}
    if HAS_WINDOW:
        # Window W: query i sees keys i-(W-1) .. i (itself included), flash-attn's (W-1, 0).
        left = -1 if window is None else window - 1
        kwargs["window_size"] = (left, 0) if causal else (-1, -1)
    elif window is not None:
        raise RuntimeError("this torch's varlen_attn has no window_size (torch 2.10); use impl='flex'")
    else:
        kwargs["is_causal"] = causal
    q3, k3, v3 = q.reshape(B * T, H, K), k.reshape(B * T, Hkv, K), v.reshape(B * T, Hkv, v.shape[-1])
    if Hkv != H:
        if HAS_GQA:
            kwargs["enable_gqa"] = True
        else:  # repeat each key/value head for the H/Hkv query heads it serves (GQA's grouping)
            k3, v3 = k3.repeat_interleave(H // Hkv, dim=1), v3.repeat_interleave(H // Hkv, dim=1)
    y = _varlen_attn(q3, k3, v3, cu, cu, max_len, max_len, **kwargs)
    return y.view(B, T, H, -1)
