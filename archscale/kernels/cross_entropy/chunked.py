"""Linear cross-entropy chunk by chunk over tokens, with the gradients computed during the forward pass.

The naive head materialises the (N, V) logits and their gradient. Here the tokens are cut into chunks of C rows;
for each chunk

    logits = h_c @ Wᵀ                      (C, V) in the compute dtype (bf16 under autocast)
    lse, CE, and dL/dlogits in place       (rows_torch, or the Triton kernel on CUDA)
    grad_h[c] = dL/dlogits @ W             (C, d)
    grad_W   += (dL/dlogits)ᵀ @ h_c        (V, d), accumulated in the weight's own dtype

so only one chunk of logits is alive at a time. Because the loss is a scalar, its gradients are known up to the
upstream factor ``dL_total/dloss`` once the forward is done: the backward only multiplies (the "gradient in
forward" scheme of Liger-Kernel, Hsu et al. 2024, and of Wijmans et al. 2024, "Cut your losses"). The matmul
FLOPs equal the naive path's (2NVd forward, 4NVd backward), and no logits are recomputed.

Memory beyond the inputs and the returned gradients: one chunk of logits (C·V in the compute dtype), plus, for a
weight wider than the compute dtype on the torch path, the weight's copy in that dtype (the Triton path reads the
float32 weight and rounds it on chip instead: ``cast_in_product``). The weight
gradient is accumulated in place in the buffer that is returned, in the weight's dtype: float32 for the Trainer's
float32 weights under autocast; for 16-bit weights each chunk's product is computed in float32 (the GEMM's
accumulator) and added to the 16-bit sum, so the sum is rounded once per chunk (N/C times) instead of once as in
the naive path. A float32 accumulator would cost two bytes per weight more than the naive path itself keeps (the
(V, d) head: 1.5 GiB at V = 200 064, d = 2048), which is what issue #8's memory target forbids; the tests bound
the extra rounding error. The accumulator is read and written once per chunk, so chunks should not be small
(:func:`auto_chunk_size`).

This is eager code; :mod:`archscale.kernels.cross_entropy` wraps it in a ``torch.library`` custom op so that
``torch.compile`` sees one opaque call (no unrolled chunk loop, no graph break).
"""

from __future__ import annotations

import functools

import torch


def auto_chunk_size(grad_weight_dtype: torch.dtype) -> int:
    """Tokens per chunk: 512 per byte of the weight gradient's dtype (1 024 for bf16 weights, 2 048 for float32).

    Each chunk adds a (V, C) by (C, d) product to the (V, d) weight gradient: 2·V·d·C FLOPs for 2·V·d·b bytes read
    and written (b bytes per element), i.e. C/b FLOPs per byte. At C = 512·b that is 512, above the ~300 FLOPs per
    byte where an H100 (989 TFLOP/s bf16, 3.35 TB/s) stops being limited by memory, so the accumulation runs at
    GEMM speed; larger chunks only cost memory (C·V logits)."""
    return 512 * grad_weight_dtype.itemsize


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (the tests compare in double); everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@functools.cache
def _has_out_dtype_mm(device: str) -> bool:
    """Whether ``torch.mm/addmm(..., out_dtype=float32)`` works for bf16 inputs on this device (CUDA in recent
    torch): it writes/accumulates float32 results straight from the GEMM, without a bf16 temporary of (V, d)."""
    try:
        a = torch.ones(8, 16, device=device, dtype=torch.bfloat16)  # used transposed, as dlogits.t() is
        b = torch.ones(8, 32, device=device, dtype=torch.bfloat16)
        acc = torch.ones(16, 32, device=device)
        torch.addmm(acc, a.t(), b, out_dtype=torch.float32, out=acc)
        out = torch.empty(16, 32, device=device)
        torch.mm(a.t(), b, out_dtype=torch.float32, out=out)
        return bool((acc == 9).all()) and bool((out == 8).all())
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def _fast_mixed_mm(out: torch.Tensor, a: torch.Tensor) -> bool:
    return out.dtype != a.dtype and out.is_cuda and _has_out_dtype_mm(str(out.device))


def addmm_into(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc += a @ b, with acc possibly in a wider dtype than a and b."""
    if acc.dtype == a.dtype:
        acc.addmm_(a, b)
    elif _fast_mixed_mm(acc, a):
        torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
    else:
        acc.add_(a @ b)


def mm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """out[...] = a @ b, with out possibly in another dtype than a and b."""
    if out.dtype == a.dtype:
        torch.mm(a, b, out=out)
    elif _fast_mixed_mm(out, a):
        torch.mm(a, b, out_dtype=out.dtype, out=out)
    else:
        out.copy_(a @ b)


def rows_torch(
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
) -> torch.Tensor:
    """Per-row CE and lse of a (C, V) chunk into ``ce_out`` / ``lse_out`` (zeros on ignored rows); with
    ``with_grad`` returns dL/dlogits in the logits' dtype (see the Triton kernel for the formula)."""
    valid = targets != ignore_index
    x = logits.to(ce_out.dtype)  # fp32 (fp64) log-sum-exp
    if logit_multiplier != 1.0:
        x = x * logit_multiplier
    lse = torch.logsumexp(x, dim=-1)  # (C,)
    safe = torch.where(valid, targets, 0).unsqueeze(1)
    ce_out.copy_(torch.where(valid, lse - x.gather(1, safe).squeeze(1), 0))
    lse_out.copy_(torch.where(valid, lse, 0))
    if not with_grad:
        return logits
    # softmax · (1 + 2z·lse) − onehot, times scale (1/n_valid) and the chain-rule factor m; zero on ignored rows.
    coef = torch.where(valid, scale * (1 + 2 * z_loss * lse) * logit_multiplier, 0)
    hit = torch.where(valid, -scale * logit_multiplier, 0).to(x.dtype)
    # In place: the caller has no further use for the chunk's logits (x may be the logits tensor itself).
    grad = x.sub_(lse.unsqueeze(1)).exp_().mul_(coef.unsqueeze(1))
    grad.scatter_add_(1, safe, hit.unsqueeze(1))
    return grad.to(logits.dtype)


def chunked_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int,
    z_loss: float,
    logit_multiplier: float,
    chunk_size: int,
    compute_dtype: torch.dtype,
    mean: bool,
    with_grad: bool,
    use_triton: bool,
    cast_in_product: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(loss, cross_entropy, grad_hidden, grad_weight) for hidden (N, d), weight (V, d), targets (N,) (int64).

    loss = (Σ CE_i + z_loss · Σ lse_i²) · scale over valid rows, scale = 1/max(n_valid, 1) for a mean, else 1.
    The losses are float32 (float64 for a float64 compute dtype); the gradients are those of ``loss`` (in
    hidden's and weight's dtypes), or None without ``with_grad``.

    ``cast_in_product`` (Triton; a weight wider than the 16-bit compute dtype, i.e. float32 under autocast): the
    two products that read the weight round its tiles to the compute dtype as they load them
    (:mod:`.cast_matmul`) instead of reading a compute-dtype copy of the whole (V, d) head, which would otherwise
    be alive during the whole loss. Same rounding, same FLOPs; the weight gradient's product is unchanged."""
    n, _ = hidden.shape
    acc_dtype = accumulate_dtype(compute_dtype)
    valid = targets != ignore_index
    if mean:
        scale = 1.0 / valid.sum().clamp_min(1).to(acc_dtype)
    else:
        scale = torch.ones((), dtype=acc_dtype, device=hidden.device)
    if cast_in_product:
        from archscale.kernels.cross_entropy.cast_matmul import cast_matmul
        w = weight  # read in float32 by the products below, each tile rounded on chip
    else:
        w = weight.to(compute_dtype)  # (V, d); no copy when the dtypes agree
    row_ce = torch.empty(n, dtype=acc_dtype, device=hidden.device)
    row_lse = torch.empty(n, dtype=acc_dtype, device=hidden.device)
    grad_h = torch.empty_like(hidden) if with_grad else None
    grad_w = None
    if with_grad:  # the first chunk's product initialises it; with no tokens there is no chunk, and it is zero
        grad_w = torch.empty_like(weight) if n else torch.zeros_like(weight)
    if use_triton:
        from archscale.kernels.cross_entropy.triton import rows_triton as rows
    else:
        rows = rows_torch
    for start in range(0, n, chunk_size):
        end = min(start + chunk_size, n)
        h = hidden[start:end].to(compute_dtype)  # (C, d)
        if cast_in_product:  # (logits)ᵀ = W hᵀ: the converted float32 tiles are the first operand, which wgmma
            # can read from registers (so they need not go back through shared memory)
            logits = torch.empty(end - start, w.shape[0], device=h.device, dtype=compute_dtype)
            cast_matmul(w, h.t(), logits.t(), dot_dtype=compute_dtype)
        else:
            logits = h @ w.t()  # (C, V)
        dlogits = rows(
            logits, targets[start:end], row_ce[start:end], row_lse[start:end], scale,
            ignore_index=ignore_index, logit_multiplier=logit_multiplier, z_loss=z_loss, with_grad=with_grad,
        )
        del logits
        if with_grad:
            assert grad_h is not None and grad_w is not None
            if cast_in_product:
                # (grad_h)ᵀ = Wᵀ (dlogits)ᵀ, in one pass over V: with the default 128 x 256 tiles the whole sum
                # ran faster on the H100 than two halves added atomically (2.96 vs 3.16 ms at C 1 536).
                cast_matmul(w.t(), dlogits.t(), grad_h[start:end].t(), dot_dtype=compute_dtype)
            else:
                mm_into(grad_h[start:end], dlogits, w)
            if start == 0:
                mm_into(grad_w, dlogits.t(), h)
            else:
                addmm_into(grad_w, dlogits.t(), h)
        del dlogits
    ce_sum = row_ce.sum()
    loss_sum = ce_sum + z_loss * row_lse.square().sum() if z_loss > 0 else ce_sum
    return loss_sum * scale, ce_sum * scale, grad_h, grad_w
