"""Cross-entropy of a linear LM head without materialising the logits, eager and inside ``torch.compile``.

Shapes: hidden (N, d), weight (V, d) (the head, or the tied embedding table), targets (N,) integer class ids, a
target equal to ``ignore_index`` (default -100) contributes nothing. The logits are
``logit_multiplier · hidden @ weightᵀ``; the objective is

    loss = mean_i CE_i + z_loss · mean_i lse_i²        (over the N_valid non-ignored tokens; "sum": no 1/N_valid)

with ``lse_i`` the log-sum-exp of row i in float32 and the z-loss of PaLM (Chowdhery et al. 2022). Both functions
return ``CrossEntropyOutput(loss, cross_entropy)``; ``cross_entropy`` is the first term alone, the number to log
so that runs with and without z-loss stay comparable. With every target ignored both return 0 (not NaN).

- :func:`linear_cross_entropy` (the fused path): chunks of tokens, gradients computed during the forward
  (:mod:`.chunked`); one chunk of logits alive at a time and no other workspace (the weight gradient accumulates
  in its own dtype, see there for the rounding); fp32 log-sum-exp; matmuls in the autocast dtype
  under autocast. On CUDA the per-row softmax/gradient is a Triton kernel (:mod:`.triton`), and a float32 head
  under 16-bit autocast is rounded tile by tile inside the Triton products of :mod:`.cast_matmul` rather than
  copied whole to the compute dtype. It is one
  ``torch.library`` custom op (``archscale::linear_cross_entropy``) with a registered autograd formula, so
  ``torch.compile(fullgraph=True)`` of a whole model traces it as a single opaque node: no graph break, no
  unrolled loop. Gradients flow to hidden and weight; ``logit_multiplier`` and ``z_loss`` are constants.
  The backward only scales the stored gradients, so it supports one backward per forward (no double backward).
- :func:`cross_entropy_reference` (the naive path): full logits and ``F.cross_entropy``; the specification.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
from torch.utils.flop_counter import register_flop_formula

from archscale.kernels.cross_entropy.chunked import accumulate_dtype, auto_chunk_size, chunked_linear_cross_entropy
from archscale.kernels.cross_entropy.reference import (
    CrossEntropyOutput,
    Reduction,
    check_args,
    cross_entropy_from_logits,
    cross_entropy_reference,
)
from archscale.kernels.varlen import fp32_region

__all__ = [
    "CrossEntropyOutput",
    "auto_chunk_size",
    "cross_entropy_from_logits",
    "cross_entropy_reference",
    "linear_cross_entropy",
]


# Whether impl="auto" on CUDA reads a float32 head in the Triton products of .cast_matmul, rounding each tile on
# chip, instead of making a compute-dtype copy of the whole (V, d) head for cuBLAS (0.76 GiB at V 200 064, d 2048:
# 12.5% of the naive head's peak memory, over issue #8's 10% budget by itself). Off: measured on the H100
# (benchmarks/RESULTS.md, 2026-12-07, fifth session) the loss then holds 9.6% of naive's peak at chunk 1 536 but
# takes 1.42x naive's time (1.25x and 12.8% at chunk 2 048), its products running at 55-70% of cuBLAS's. Set it
# where memory matters more than time; impl="triton" uses them regardless, and so do the tests.
CAST_IN_PRODUCT_ON_CUDA: bool = False


@functools.cache
def _triton_available() -> bool:
    try:
        import archscale.kernels.cross_entropy.triton  # noqa: F401
    except ImportError:
        return False
    return True


def _cast_matmul_supports(dtype: torch.dtype) -> bool:
    from archscale.kernels.cross_entropy.cast_matmul import supports

    return supports(dtype)


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype of the matmuls: the autocast dtype inside an autocast region (what ``F.linear`` would use), else
    the inputs' common dtype. float64 is never lowered (autocast leaves float64 alone too)."""
    dtype = torch.promote_types(hidden.dtype, weight.dtype)
    device = hidden.device.type
    if dtype != torch.float64 and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return dtype


# ---------------------------------------------------------------------------------------- the custom op
@torch.library.custom_op("archscale::linear_cross_entropy", mutates_args=())
def _linear_cross_entropy_op(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int,
    z_loss: float,
    logit_multiplier: float,
    chunk_size: int,
    compute_dtype: torch.dtype,
    mean: bool,
    with_grad: bool,
    impl: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, cross_entropy, grad_hidden, grad_weight); the gradients are empty (0,) tensors without
    ``with_grad`` (a custom op cannot return None)."""
    # Decided here, inside the opaque op, rather than by the caller: the cached import probe would otherwise be
    # traced by dynamo, which warns about every functools.cache'd function it meets.
    use_triton = impl == "triton" or (
        impl == "auto" and hidden.is_cuda and compute_dtype != torch.float64 and _triton_available()
    )
    cast_in_product = (
        use_triton and (impl == "triton" or CAST_IN_PRODUCT_ON_CUDA) and weight.dtype.itemsize > 2
        and _cast_matmul_supports(compute_dtype)
    )
    # The dtypes are explicit (compute_dtype was read from autocast by the caller); an autocast region still
    # active at run time (a compiled model called inside one) must not re-cast anything in here.
    with fp32_region(hidden):
        loss, ce, grad_h, grad_w = chunked_linear_cross_entropy(
            hidden, weight, targets, ignore_index=ignore_index, z_loss=z_loss, logit_multiplier=logit_multiplier,
            chunk_size=chunk_size, compute_dtype=compute_dtype, mean=mean, with_grad=with_grad,
            use_triton=use_triton, cast_in_product=cast_in_product,
        )
    if grad_h is None or grad_w is None:
        return loss, ce, hidden.new_empty(0), weight.new_empty(0)
    return loss, ce, grad_h, grad_w


@_linear_cross_entropy_op.register_fake
def _(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int,
    z_loss: float,
    logit_multiplier: float,
    chunk_size: int,
    compute_dtype: torch.dtype,
    mean: bool,
    with_grad: bool,
    impl: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    acc = accumulate_dtype(compute_dtype)
    loss, ce = hidden.new_empty((), dtype=acc), hidden.new_empty((), dtype=acc)
    if not with_grad:
        return loss, ce, hidden.new_empty(0), weight.new_empty(0)
    return loss, ce, torch.empty_like(hidden), torch.empty_like(weight)


def _setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: tuple) -> None:
    ctx.save_for_backward(output[2], output[3])


def _backward(
    ctx: torch.autograd.function.FunctionCtx, grad_loss: torch.Tensor, *_unused: torch.Tensor
) -> tuple[torch.Tensor | None, ...]:
    # The stored gradients are those of `loss`; the cross-entropy output and the gradient outputs themselves are
    # not differentiable (their upstream gradients are ignored; the wrapper detaches them).
    grad_h, grad_w = ctx.saved_tensors  # type: ignore[attr-defined]
    if grad_h.numel() == 0 and grad_w.numel() == 0:
        raise RuntimeError(
            "linear_cross_entropy ran without gradients (no input required grad, or grad mode was off); "
            "it cannot be differentiated afterwards"
        )
    g = grad_loss.to(grad_w.dtype)
    return (grad_h * g.to(grad_h.dtype), grad_w * g) + (None,) * 9


_linear_cross_entropy_op.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.archscale.linear_cross_entropy)
def _flops(hidden_shape: torch.Size, weight_shape: torch.Size, *args: object, **kwargs: object) -> int:
    """For ``FlopCounterMode`` (MFU): the naive head's matmul FLOPs, 2·N·V·d forward plus 4·N·V·d for the two
    gradient matmuls, all of which run inside this op's forward when gradients are needed (argument 9)."""
    n, d = hidden_shape
    with_grad = bool(args[7])
    return (6 if with_grad else 2) * n * weight_shape[0] * d


# ---------------------------------------------------------------------------------------- public function
def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    z_loss: float = 0.0,
    logit_multiplier: float = 1.0,
    chunk_size: int | None = None,
    reduction: Reduction = "mean",
    impl: Literal["auto", "torch", "triton"] = "auto",
) -> CrossEntropyOutput:
    """Fused linear cross-entropy (see the module docstring): hidden (N, d), weight (V, d), targets (N,).

    ``chunk_size``: tokens per chunk (None: :func:`auto_chunk_size`, 1 024 for 16-bit weights, 2 048 for float32).
    ``impl``: "auto" uses the Triton row kernel on CUDA when triton imports, else torch; "triton" forces it
    (also on CPU under ``TRITON_INTERPRET=1``, for tests) together with the Triton products that round a float32
    head on chip (:data:`CAST_IN_PRODUCT_ON_CUDA` says whether "auto" uses those)."""
    check_args(hidden, weight, targets, z_loss, reduction)
    if chunk_size is None:
        chunk_size = auto_chunk_size(weight.dtype)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (tokens per chunk) or None for automatic, got {chunk_size}")
    if impl not in ("auto", "torch", "triton"):
        raise ValueError(f"impl must be 'auto', 'torch' or 'triton', got {impl!r}")
    compute_dtype = _compute_dtype(hidden, weight)
    if impl == "triton" and compute_dtype == torch.float64:
        raise ValueError("impl='triton' computes in float32 at most; use impl='torch' for float64 inputs")
    with_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    loss, ce, _, _ = _linear_cross_entropy_op(
        hidden, weight, targets.long(), ignore_index, float(z_loss), float(logit_multiplier), int(chunk_size),
        compute_dtype, reduction == "mean", with_grad, impl,
    )
    return CrossEntropyOutput(loss, ce.detach())
