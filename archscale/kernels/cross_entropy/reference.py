"""Cross-entropy of a linear head, the naive way: full logits, then ``F.cross_entropy`` (pure PyTorch reference).

This is the specification the fused path (:mod:`archscale.kernels.cross_entropy.chunked`) is tested against, and
the ``loss.impl="naive"`` path of the language model. It materialises the (N, V) logits, in float32 (float64 for
float64 inputs): at V = 200 064 and 16 K tokens that is 13 GB plus as much again for their gradient.

The objective is ``mean_i CE_i + z_loss · mean_i lse_i²`` over the tokens whose target is not ``ignore_index``,
where ``lse_i = logsumexp_v(logits_iv)``; the second term is PaLM's auxiliary z-loss (Chowdhery et al. 2022,
weight 1e-4 on log²Z), which pulls the softmax normaliser Z towards 1 and keeps the logits from drifting.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

from archscale.kernels.varlen import compute_dtype

Reduction = Literal["mean", "sum"]


class CrossEntropyOutput(NamedTuple):
    """loss: the objective to back-propagate (cross-entropy plus z-loss). cross_entropy: the cross-entropy alone,
    for logging (detached in the fused path); equal to ``loss`` when z_loss is 0."""

    loss: torch.Tensor
    cross_entropy: torch.Tensor


def check_args(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, z_loss: float, reduction: str
) -> None:
    """Readable errors for the shapes and options both paths accept."""
    if hidden.ndim != 2 or weight.ndim != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"hidden must be (N, d) and weight (V, d) with the same d, got hidden {tuple(hidden.shape)} and weight "
            f"{tuple(weight.shape)}; flatten the batch first (hidden.flatten(0, 1))"
        )
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets must have shape ({hidden.shape[0]},) to match hidden, got {tuple(targets.shape)}")
    if targets.dtype.is_floating_point:
        raise ValueError(f"targets must be integer class indices, got dtype {targets.dtype}")
    if z_loss < 0:
        raise ValueError(f"z_loss must be >= 0 (PaLM uses 1e-4), got {z_loss}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def cross_entropy_from_logits(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    z_loss: float = 0.0,
    reduction: Reduction = "mean",
) -> CrossEntropyOutput:
    """The objective from already computed logits (N, V) (fp32 or fp64). With every target ignored the mean is 0,
    not ``F.cross_entropy``'s NaN (0/0): a fully padded micro-batch then adds nothing instead of poisoning the
    accumulated gradients."""
    valid = targets != ignore_index
    ce = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
    loss = ce
    if z_loss > 0:
        lse = torch.logsumexp(logits, dim=-1)
        loss = ce + z_loss * torch.where(valid, lse.square(), 0).sum()
    if reduction == "mean":
        n_valid = valid.sum().clamp_min(1).to(logits.dtype)
        ce, loss = ce / n_valid, loss / n_valid
    return CrossEntropyOutput(loss, ce)


def cross_entropy_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    z_loss: float = 0.0,
    logit_multiplier: float = 1.0,
    reduction: Reduction = "mean",
) -> CrossEntropyOutput:
    """hidden (N, d), weight (V, d), targets (N,) → the objective through the full (N, V) logits
    ``logit_multiplier · hidden @ weightᵀ`` (see the module docstring). Under autocast the matmul runs in the
    autocast dtype and everything after it in float32."""
    check_args(hidden, weight, targets, z_loss, reduction)
    logits = F.linear(hidden, weight).to(compute_dtype(hidden, weight))  # (N, V)
    if logit_multiplier != 1.0:
        logits = logits * logit_multiplier
    return cross_entropy_from_logits(logits, targets, ignore_index=ignore_index, z_loss=z_loss, reduction=reduction)
