"""SwiGLU with gate and up as one stacked product: the same function and gradients as three separate products."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from archscale.models.mlp import SwiGLU, _SwiGLUOfStacked


def _separate(m: SwiGLU, x: torch.Tensor) -> torch.Tensor:
    """The textbook SwiGLU (Shazeer 2020) from the module's own parameters, through autograd's own backward."""
    return F.linear(F.silu(F.linear(x, m.gate_proj.weight)) * F.linear(x, m.up_proj.weight), m.down_proj.weight)


def _grads(fn, m: SwiGLU, x: torch.Tensor, autocast: bool = False) -> list[torch.Tensor]:
    xx = x.detach().clone().requires_grad_(True)
    m.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = fn(m, xx)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (y * g.to(y.dtype)).float().sum().backward()
    return [y, xx.grad, m.gate_proj.weight.grad, m.up_proj.weight.grad, m.down_proj.weight.grad]


def test_stacked_backward_passes_gradcheck() -> None:
    h = torch.randn(3, 5, 2 * 7, dtype=torch.float64, requires_grad=True)  # hidden 7: no power of two
    assert torch.autograd.gradcheck(_SwiGLUOfStacked.apply, (h,))
    torch.testing.assert_close(_SwiGLUOfStacked.apply(h), F.silu(h[..., :7]) * h[..., 7:], rtol=0, atol=0)


def test_module_equals_separate_products_in_float64() -> None:
    torch.manual_seed(0)
    m = SwiGLU(24, 40).double()
    x = torch.randn(3, 7, 24, dtype=torch.float64)
    for got, want in zip(_grads(lambda m, x: m(x), m, x), _grads(_separate, m, x)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("compiled", [False, True])
def test_module_under_autocast_matches_separate_products(compiled: bool) -> None:
    torch.manual_seed(0)
    m = SwiGLU(48, 72)
    x = torch.randn(2, 9, 48)
    run = torch.compile(m, fullgraph=True) if compiled else m
    got = _grads(lambda _, x: run(x), m, x, autocast=True)
    want = _grads(_separate, m, x, autocast=True)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype or g.dtype == torch.float32  # weight gradients: float32 (archscale's Linear)
        torch.testing.assert_close(g.float(), w.float(), rtol=2e-2, atol=2e-2)


def test_without_gradients_the_products_run_separately() -> None:
    torch.manual_seed(0)
    m = SwiGLU(16, 24)
    x = torch.randn(4, 16)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _separate(m, x), rtol=0, atol=0)
