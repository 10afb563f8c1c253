"""``nn.Linear`` whose weight gradient comes out of the matrix product in float32 under autocast.

Mixed precision keeps float32 master weights and runs the products in bf16 (Micikevicius et al. 2018). Under
``torch.autocast``, ``F.linear`` casts the weight to bf16, so autograd computes dL/dW as a bf16 product and then
casts it back to float32: the gradient is rounded to 8 mantissa bits before it reaches the optimizer, and the cast
is an extra pass over every weight gradient (write bf16, read it, write float32: on an H100 ~3 ms of a 231 ms
Transformer++ d16 step, benchmarks/RESULTS.md). Megatron-LM avoids both by having the weight-gradient GEMM write
float32 directly ("gradient accumulation fusion", Narayanan et al. 2021); cuBLAS accumulates in float32 anyway,
so this costs nothing. PyTorch exposes that product as ``torch.mm(a, b, out_dtype=torch.float32)`` on CUDA.

:class:`Linear` is a drop-in subclass of ``nn.Linear`` (same parameters, init, state dict, ``isinstance``): outside
autocast, or with non-float32 weights, it is ``F.linear``; inside, the forward is exactly autocast's (both operands
cast to the autocast dtype) and the backward returns dL/dW (and dL/db) in float32 from the product itself.

Off CUDA there is no float32-output bf16 product, so the backward's two products run in float32 on the bf16
operands (:func:`archscale.kernels.product_dtype.product_dtype`): the GPU's arithmetic, dL/dW unrounded and
dL/dx rounded to bf16 once, and on CPUs without bf16 instructions two orders of magnitude faster than
PyTorch's bf16 product.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from archscale.kernels.product_dtype import product_dtype

__all__ = ["Linear", "fused_projections", "stacked_projection"]


def _weight_grad(grad_out: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """dL/dW = grad_outᵀ · inputs over all leading dims, in float32: written so by the product on CUDA, computed
    from the operands taken up to float32 elsewhere (the same arithmetic)."""
    g = grad_out.reshape(-1, grad_out.shape[-1])
    x = inputs.reshape(-1, inputs.shape[-1])
    if g.is_cuda:
        return torch.mm(g.t(), x, out_dtype=torch.float32)
    return torch.mm(g.t().float(), x.float())


class _AutocastLinear(torch.autograd.Function):
    """y = x·Wᵀ + b computed in ``dtype``; dL/dW and dL/db returned in the parameters' float32."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype
    ) -> torch.Tensor:
        xc, wc = x.to(dtype), weight.to(dtype)
        ctx.save_for_backward(xc, wc)
        ctx.x_dtype = x.dtype
        return F.linear(xc, wc, None if bias is None else bias.to(dtype))

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        xc, wc = ctx.saved_tensors
        grad_out = grad_out.to(wc.dtype)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            work = product_dtype(wc)  # wc's own dtype on CUDA; rounded to it once either way
            dx = (grad_out.to(work) @ wc.to(work)).to(wc.dtype).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            dw = _weight_grad(grad_out, xc)
        if ctx.needs_input_grad[2]:  # False for an absent bias
            db = grad_out.reshape(-1, grad_out.shape[-1]).sum(0, dtype=torch.float32)
        return dx, dw, db, None


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    device = x.device.type
    if (weight.dtype == torch.float32 and torch.is_autocast_enabled(device)
            and torch.is_grad_enabled() and weight.requires_grad):
        dtype = torch.get_autocast_dtype(device)
        if dtype != torch.float32:
            # The function runs its own casts: without this, autocast would re-enter F.linear inside it.
            with torch.autocast(device, enabled=False):
                return _AutocastLinear.apply(x, weight, bias, dtype)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` with float32 weight gradients written by the product itself under autocast (see module)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _linear(x, self.weight, self.bias)


def stacked_projection(x: torch.Tensor, *projections: nn.Linear) -> torch.Tensor:
    """``torch.cat([p(x) for p in projections], -1)`` as one matrix product with the weights stacked along the
    outputs: the parameters stay separate matrices (their own μP roles and Muon updates) and the stack is rebuilt
    every call. Under ``torch.compile`` it fuses into the weight cast that autocast needs anyway, and the weight
    gradient is one float32 product whose row blocks are the parameters' gradients. Without gradients (evaluation,
    generation) stacking would copy the weights per call for nothing: the products then run separately and their
    outputs are concatenated."""
    if not torch.is_grad_enabled():
        return torch.cat([p(x) for p in projections], dim=-1)
    weight = torch.cat([p.weight for p in projections])
    biases = [p.bias for p in projections]
    bias = None
    if any(b is not None for b in biases):
        bias = torch.cat([b if b is not None else p.weight.new_zeros(p.out_features)
                          for b, p in zip(biases, projections)])
    return _linear(x, weight, bias)


def fused_projections(x: torch.Tensor, *projections: nn.Linear) -> tuple[torch.Tensor, ...]:
    """``tuple(p(x) for p in projections)`` as one matrix product (:func:`stacked_projection`), split.

    Attention's k and v projections are narrow (GQA: d → Hkv·K, e.g. 2048 → 512), and a narrow product keeps the
    GPU less busy than one wide one; stacked, q/k/v are one (d → (H + 2·Hkv)·K) product, forward and backward (as
    fused-QKV models do). Without gradients (evaluation, generation) the stack would be a copy of the weights per
    call for nothing: the projections then run separately.
    """
    if not torch.is_grad_enabled():
        return tuple(p(x) for p in projections)
    return stacked_projection(x, *projections).split([p.out_features for p in projections], dim=-1)
