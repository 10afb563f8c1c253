"""A matrix product that casts its operands to the compute dtype tile by tile (imported lazily; needs ``triton``).

Why: under autocast the Trainer's LM head is a float32 (V, d) weight that the products read in bf16. cuBLAS only
multiplies operands of one dtype, so the fused cross-entropy used to make a bf16 copy of the whole head
(0.76 GiB at V = 200 064, d = 2048), alive for the whole loss: 12.5% of the naive head's peak memory, more than
issue #8's 10% budget on its own. Here each tile of the float32 operand is converted in registers right after it
is loaded, so no copy exists; the extra cost is reading 4 bytes per weight instead of 2 and converting in
registers. Measured on the H100 (benchmarks/RESULTS.md, 2026-12-07, fifth session) the products run at 55-70% of
cuBLAS's speed on the bf16 copy, so the fused loss uses them only where memory matters more than time
(``CAST_IN_PRODUCT_ON_CUDA``).

``cast_matmul(a, b, out)`` computes ``out = a @ b`` for a (M, K), b (K, N), out (M, N), any strides (so
transposed views cost nothing), operands of any float dtype rounded to ``dot_dtype`` (bf16 or fp16), float32
accumulation, the result rounded once to ``out``'s dtype. ``split_k`` > 1 cuts the reduction into parts that
are added into a zeroed ``out`` with atomics (float32 ``out`` only); with 2 parts the sum is still deterministic
(0 + a + b equals 0 + b + a in floating point), which is why no more parts are offered.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

_TL_DTYPES = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


class Blocks(NamedTuple):
    """Tile sizes and launch parameters. The defaults were the fastest of ``benchmarks/cast_matmul_bench.py``'s
    five configurations on the H100 for both of the fused loss's products, the float32 head as the first operand
    (benchmarks/RESULTS.md, 2026-12-07, fifth session): 530 TFLOP/s for the logits at C 1 536, against 373 for
    128 x 128 x 64 tiles and 782 for cuBLAS on a bf16 copy."""

    m: int = 128
    n: int = 256
    k: int = 64
    group_m: int = 8
    num_warps: int = 8
    num_stages: int = 3


@triton.jit
def _cast_matmul_kernel(
    a_ptr, b_ptr, out_ptr,
    M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_om, stride_on,
    DOT_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, SPLIT_K: tl.constexpr,
):
    # Grouped tile order (as in Triton's matmul tutorial): GROUP_M row blocks share each column block while it is
    # in L2, so the float32 operand is read from memory about once.
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * grid_n
    group = pid // width
    first_m = group * GROUP_M
    group_size = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % group_size
    pid_n = (pid % width) // group_size

    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)
    mask_m = offs_m < M
    mask_n = offs_n < N
    k_per_split = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K) * BLOCK_K
    k_begin = pid_k * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        ks = k0 + offs_k
        mask_k = ks < k_end
        a = tl.load(a_ptr + offs_m[:, None] * stride_am + ks[None, :] * stride_ak,
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        b = tl.load(b_ptr + ks[:, None] * stride_bk + offs_n[None, :] * stride_bn,
                    mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE), acc)

    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    mask = mask_m[:, None] & mask_n[None, :]
    if SPLIT_K == 1:
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(out_ptrs, acc, mask=mask)


# Triton's interpreter (TRITON_INTERPRET=1, the CPU tests) multiplies bf16 tiles wrongly in Triton 3.8: it reads
# their bits as another type. fp16 interprets correctly.
INTERPRETED: bool = type(_cast_matmul_kernel).__name__ == "InterpretedFunction"


def supports(dot_dtype: torch.dtype) -> bool:
    """Whether :func:`cast_matmul` computes in ``dot_dtype`` here (bf16 not under the interpreter)."""
    return dot_dtype in _TL_DTYPES and not (INTERPRETED and dot_dtype == torch.bfloat16)


def cast_matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    out: torch.Tensor,
    *,
    dot_dtype: torch.dtype = torch.bfloat16,
    split_k: int = 1,
    blocks: Blocks | None = None,
) -> torch.Tensor:
    """``out = a @ b`` with both operands rounded to ``dot_dtype`` tile by tile (see the module docstring).

    a (M, K), b (K, N), out (M, N) on one device, any strides. ``split_k`` ∈ {1, 2}; 2 needs a float32 ``out``
    and zeroes it first. Returns ``out``."""
    if a.dim() != 2 or b.dim() != 2 or out.dim() != 2:
        raise ValueError(f"cast_matmul multiplies matrices, got shapes {tuple(a.shape)}, {tuple(b.shape)}, "
                         f"out {tuple(out.shape)}")
    (m, k), (k2, n) = a.shape, b.shape
    if k2 != k or tuple(out.shape) != (m, n):
        raise ValueError(f"cast_matmul: shapes {tuple(a.shape)} @ {tuple(b.shape)} do not give out "
                         f"{tuple(out.shape)}")
    if dot_dtype not in _TL_DTYPES:
        raise ValueError(f"cast_matmul multiplies in bfloat16 or float16, not {dot_dtype}")
    if not supports(dot_dtype):
        raise ValueError("cast_matmul: Triton's interpreter multiplies bfloat16 tiles wrongly; test with "
                         "dot_dtype=torch.float16 under TRITON_INTERPRET=1, or run on a GPU")
    if split_k not in (1, 2):
        raise ValueError(f"split_k must be 1 or 2 (2 parts still add deterministically), got {split_k}")
    if split_k == 2 and out.dtype != torch.float32:
        raise ValueError(f"split_k=2 adds float32 partial sums into out; out is {out.dtype}")
    blocks = blocks or Blocks()
    if split_k == 2:
        out.zero_()
    if m == 0 or n == 0:
        return out
    if k == 0:
        return out.zero_()
    grid = (triton.cdiv(m, blocks.m) * triton.cdiv(n, blocks.n), split_k)
    _cast_matmul_kernel[grid](
        a, b, out, m, n, k,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
        DOT_DTYPE=_TL_DTYPES[dot_dtype],
        BLOCK_M=blocks.m, BLOCK_N=blocks.n, BLOCK_K=blocks.k, GROUP_M=blocks.group_m, SPLIT_K=split_k,
        num_warps=blocks.num_warps, num_stages=blocks.num_stages,
    )
    return out
