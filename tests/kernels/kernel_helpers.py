"""Helpers shared by the kernel tests (imported as a plain module: tests/kernels is on sys.path under pytest)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a - b‖ / ‖b‖ (max with a tiny floor so that two zero tensors compare equal)."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def split_cu(lengths: Sequence[int]) -> torch.Tensor:
    """cu_seqlens (int32) of documents of the given lengths."""
    return torch.tensor([0, *torch.tensor(list(lengths)).cumsum(0).tolist()], dtype=torch.int32)


def compare_grads(
    fn_a: Callable[..., Sequence[torch.Tensor]],
    fn_b: Callable[..., Sequence[torch.Tensor]],
    inputs: dict[str, torch.Tensor],
    tol: float,
) -> None:
    """Run both functions on leaf copies of ``inputs``, back-propagate the same random upstream gradients through
    every output, and compare the gradient of each input by name (relative error below ``tol``)."""
    grads = []
    upstream: list[torch.Tensor] | None = None
    for fn in (fn_a, fn_b):
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
        outs = [o for o in fn(**leaves) if o is not None]
        if upstream is None:
            upstream = [torch.randn_like(o) for o in outs]
        torch.autograd.backward(outs, upstream)
        grads.append({k: v.grad for k, v in leaves.items()})
    for name in inputs:
        ga, gb = grads[0][name], grads[1][name]
        assert ga is not None and gb is not None, f"no gradient for {name}"
        assert torch.isfinite(ga).all(), f"non-finite gradient for {name}"
        assert gb.abs().sum() > 0, f"zero gradient for {name}: the comparison would be vacuous"
        err = rel_err(ga, gb)
        assert err < tol, f"gradient of {name}: relative error {err:.3g} >= {tol}"
