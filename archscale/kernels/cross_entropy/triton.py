"""Triton kernel for one chunk of the fused linear cross-entropy: per-row log-sum-exp and, in place, the gradient
of the objective with respect to the logits (imported lazily; needs ``triton``).

One program handles one row (token) of a (C, V) chunk of logits in bf16/fp16/fp32. Pass 1 streams the row once
with an online max / rescaled sum (Milakov & Gimelshein 2018, "Online normalizer calculation for softmax") to get
``lse = log Σ_v exp(m·x_v)`` in float32. Pass 2 streams it again and overwrites it with

    dL/dx_v = m · scale · ( softmax_v · (1 + 2·z·lse) − [v == target] )

(``m`` the logit multiplier, ``scale`` 1/n_valid for a mean, ``z`` the z-loss weight), or zeros for an ignored
row. The logits are read twice and written once in their own dtype: 6 bytes per element in bf16, instead of the
several float32 passes of ``log_softmax`` forward and backward. The torch version of the same math is
:func:`archscale.kernels.cross_entropy.chunked.rows_torch`, which the tests compare this kernel with (also under
``TRITON_INTERPRET=1`` on CPU).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _ce_rows_kernel(
    logits_ptr,
    stride_row,
    targets_ptr,
    ce_ptr,
    lse_ptr,
    scale_ptr,
    n_cols,
    ignore_index,
    multiplier,
    z_loss,
    WITH_GRAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_row
    target = tl.load(targets_ptr + row).to(tl.int64)
    valid = target != ignore_index
    offs = tl.arange(0, BLOCK)

    # Pass 1: running max and rescaled sum of exp over the row.
    run_max = tl.full((), float("-inf"), tl.float32)
    run_sum = tl.zeros((), tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + offs
        mask = cols < n_cols
        x = tl.load(base + cols, mask=mask, other=0.0).to(tl.float32) * multiplier
        x = tl.where(mask, x, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(x, axis=0))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(x - new_max), axis=0)
        run_max = new_max
    lse = run_max + tl.log(run_sum)

    safe_target = tl.where(valid, target, 0)
    x_target = tl.load(base + safe_target).to(tl.float32) * multiplier
    tl.store(ce_ptr + row, tl.where(valid, lse - x_target, 0.0))
    tl.store(lse_ptr + row, tl.where(valid, lse, 0.0))

    if WITH_GRAD:
        scale = tl.load(scale_ptr).to(tl.float32)
        coef = tl.where(valid, scale * (1.0 + 2.0 * z_loss * lse) * multiplier, 0.0)
        hit = tl.where(valid, scale * multiplier, 0.0)
        # Pass 2: overwrite the row with its gradient (each element is read before this program writes it).
        for start in range(0, n_cols, BLOCK):
            cols = start + offs
            mask = cols < n_cols
            x = tl.load(base + cols, mask=mask, other=0.0).to(tl.float32) * multiplier
            g = tl.exp(x - lse) * coef - tl.where(cols == safe_target, hit, 0.0)
            tl.store(base + cols, g.to(logits_ptr.dtype.element_ty), mask=mask)


def rows_triton(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ce_out: torch.Tensor,
    lse_out: torch.Tensor,
    scale: torch.Tensor,
    *,
    ignore_index: int,
    logit_multiplier: float,
    z_loss: float,
    with_grad: bool,
    block: int | None = None,
) -> torch.Tensor:
    """Fill ``ce_out`` / ``lse_out`` (float32, (C,)) for the rows of ``logits`` (C, V) and, with ``with_grad``,
    overwrite ``logits`` with the gradient of the objective (same dtype). Returns ``logits``. ``block``: columns
    per step (a power of two; default min(next_pow2(V), 4096)), small in tests to exercise the online pass."""
    if logits.stride(1) != 1:
        raise ValueError("rows_triton needs logits with contiguous rows (stride(1) == 1)")
    n_rows, n_cols = logits.shape
    if n_rows == 0:
        return logits
    if block is None:
        block = min(triton.next_power_of_2(n_cols), 4096)
    _ce_rows_kernel[(n_rows,)](
        logits,
        logits.stride(0),
        targets,
        ce_out,
        lse_out,
        scale,
        n_cols,
        ignore_index,
        float(logit_multiplier),
        float(z_loss),
        WITH_GRAD=with_grad,
        BLOCK=block,
        num_warps=8 if block >= 2048 else 4,
    )
    return logits
