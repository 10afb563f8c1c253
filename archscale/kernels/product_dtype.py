"""The dtype a product of 16-bit operands runs in: their own on CUDA, float32 elsewhere.

A GPU's bf16 / fp16 GEMM forms exact products (two 16-bit numbers multiply exactly in float32), sums them in
float32 and rounds the output once. Off CUDA the same arithmetic is had by taking the 16-bit operands up to float32
and multiplying there, then rounding the result to the 16-bit dtype where the GPU's output is 16-bit. CPU runs and
tests then see the GPU's numerics, and on processors without bf16 instructions (AVX2, as on this project's CI) it
is also the fast way: PyTorch's CPU bf16 product with a row-major right operand runs a scalar loop there, 333 ms
against 2.6 ms in float32 for (128 × 2048)·(2048 × 512), and five bf16 Newton–Schulz steps on a 512 × 1536 matrix
took 6.9 s against 0.25 s (2026-12-08).
"""

from __future__ import annotations

import torch

__all__ = ["product_dtype"]


def product_dtype(t: torch.Tensor) -> torch.dtype:
    """float32 for a 16-bit ``t`` off CUDA; ``t.dtype`` otherwise (so that ``t.to(product_dtype(t))`` is free)."""
    if t.device.type != "cuda" and t.dtype in (torch.bfloat16, torch.float16):
        return torch.float32
    return t.dtype
