"""archscale's Linear: autocast's forward, float32 weight gradients from the product itself.

On CUDA dL/dW is the float32 product of the bf16 operands (no bf16 rounding); off CUDA the backward computes the
same products from the bf16 operands taken up to float32. Both are told apart from autocast's rounded gradient by
their error against a float64 product of the same operands.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from archscale.models.lm import build_model
from archscale.models.linear import Linear, fused_projections, stacked_projection
from archscale.registry import architectures


def _pair(bias: bool, device: str = "cpu") -> tuple[nn.Linear, Linear]:
    torch.manual_seed(0)
    ref = nn.Linear(96, 40, bias=bias, device=device)  # awkward sizes: no multiple of 16 on the output side
    new = Linear(96, 40, bias=bias, device=device)
    new.load_state_dict(ref.state_dict())
    return ref, new


def _run(module: nn.Module, x: torch.Tensor, autocast: bool) -> tuple[torch.Tensor, ...]:
    x = x.detach().clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        y = module(x)
    torch.manual_seed(1)
    (y.float() * torch.randn(y.shape, device=x.device)).sum().backward()
    grads = [x.grad, module.weight.grad] + ([module.bias.grad] if module.bias is not None else [])
    return (y, *grads)


@pytest.mark.parametrize("bias", [False, True])
def test_cpu_autocast_forward_is_nn_linears_and_gradients_are_the_bf16_products(bias: bool) -> None:
    ref, new = _pair(bias)
    x = torch.randn(3, 7, 96)
    expected, got = _run(ref, x, autocast=True), _run(new, x, autocast=True)
    assert [g.dtype for g in got] == [e.dtype for e in expected]
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)  # the forward: autocast's, bitwise
    # dL/dx: the float32 product of the bf16 operands rounded to bf16, as the GPU's bf16 GEMM returns it.
    g_out = torch.randn(3, 7, 40, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    exact_dx = g_out.double() @ new.weight.to(torch.bfloat16).double()
    torch.testing.assert_close(got[1], exact_dx.to(torch.bfloat16).float(), rtol=2**-8, atol=1e-6)
    torch.testing.assert_close(got[1], expected[1], rtol=2**-7, atol=1e-5)
    assert got[2].dtype == torch.float32  # the parameter's dtype, as the optimizer expects
    if bias:  # summed in float32 here, in bf16 then cast by autocast: the float64 sum decides which is closer
        exact = g_out.double().sum((0, 1))
        assert got[3].dtype == torch.float32
        assert (got[3].double() - exact).abs().max() <= (expected[3].double() - exact).abs().max()


def test_without_autocast_it_is_f_linear() -> None:
    ref, new = _pair(bias=True)
    x = torch.randn(5, 96)
    for e, g in zip(_run(ref, x, autocast=False), _run(new, x, autocast=False)):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # inference under autocast: plain F.linear
        torch.testing.assert_close(new(x), ref(x), rtol=0, atol=0)


def test_compiled_matches_eager() -> None:
    _, new = _pair(bias=True)
    x = torch.randn(2, 9, 96)
    eager = _run(new, x, autocast=True)
    compiled = _run(torch.compile(new, fullgraph=True), x, autocast=True)
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c, e, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("biases", [(False, False, False), (True, False, True)])
def test_fused_projections_equal_separate_ones(autocast: bool, biases: tuple[bool, ...]) -> None:
    torch.manual_seed(0)
    projs = [Linear(48, n, bias=b) for n, b in zip((32, 8, 8), biases)]
    for p in projs:
        if p.bias is not None:
            nn.init.normal_(p.bias)
    x = torch.randn(2, 5, 48)
    outs = []
    for fused in (False, True):
        xx = x.clone().requires_grad_(True)
        for p in projs:
            p.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            ys = fused_projections(xx, *projs) if fused else tuple(p(xx) for p in projs)
        torch.manual_seed(1)
        sum((y.float() * torch.randn(y.shape)).sum() for y in ys).backward()
        outs.append((*ys, xx.grad, *(t.grad for p in projs for t in p.parameters())))
    assert [y.shape for y in outs[1][:3]] == [(2, 5, 32), (2, 5, 8), (2, 5, 8)]
    with torch.no_grad():  # separate products then: bitwise the modules' own outputs
        for y, p in zip(fused_projections(x, *projs), projs):
            torch.testing.assert_close(y, p(x), rtol=0, atol=0)
    tol = 2e-2 if autocast else 1e-5
    for sep, fus in zip(*outs):
        assert fus.dtype == sep.dtype
        torch.testing.assert_close(fus, sep, rtol=tol, atol=tol)


def test_stacked_projection_is_the_concatenation_with_and_without_gradients() -> None:
    torch.manual_seed(0)
    projs = [Linear(20, n, bias=b) for n, b in ((12, False), (5, True), (9, False))]
    x = torch.randn(3, 4, 20, requires_grad=True)
    want = torch.cat([p(x) for p in projs], dim=-1)
    got = stacked_projection(x, *projs)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    g = torch.randn(want.shape)
    grads = [torch.autograd.grad((y * g).sum(), [x, *(t for p in projs for t in p.parameters())])
             for y in (want, got)]
    for w, s in zip(*grads):
        torch.testing.assert_close(s, w, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the products run separately then: bitwise the concatenation of the modules' outputs
        torch.testing.assert_close(stacked_projection(x, *projs), torch.cat([p(x) for p in projs], -1),
                                   rtol=0, atol=0)


def test_every_projection_of_every_family_is_archscale_linear() -> None:
    """A model that built a plain nn.Linear would silently lose the float32 weight gradients."""
    for family in architectures.names():
        params = {"pattern": "mamba swa128 mamba* attn gmu yoco"} if family == "pattern" else {"depth": 8}
        config = architectures.config_model(family).model_validate({} if family == "phi4miniflash" else params)
        with torch.device("meta"):
            model = build_model(architectures.get(family)(config))
        plain = [name for name, mod in model.named_modules() if type(mod) is nn.Linear]
        assert not plain, f"{family}: {plain} are nn.Linear, not archscale.models.linear.Linear"
        assert any(isinstance(mod, Linear) for mod in model.modules())


@pytest.mark.parametrize(
    ("device", "compiled"),
    [("cpu", False), *(pytest.param("cuda", compiled, marks=pytest.mark.gpu) for compiled in (False, True))],
)
def test_weight_grad_is_the_float32_product(device: str, compiled: bool) -> None:
    """dL/dW = Σ_t g_t x_tᵀ of the bf16 operands, to float32 accuracy; autocast's nn.Linear rounds it to bf16."""
    torch.manual_seed(0)
    ref = nn.Linear(1000, 520, bias=True, device=device)
    new = Linear(1000, 520, bias=True, device=device)
    new.load_state_dict(ref.state_dict())
    x = torch.randn(4, 777, 1000, device=device)
    g = torch.randn(4, 777, 520, device=device).to(torch.bfloat16)

    def grads(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        module.zero_grad(set_to_none=True)
        xx = x.clone().requires_grad_(True)
        with torch.autocast(device, dtype=torch.bfloat16):
            y = module(xx)
        y.backward(g)
        return xx.grad, module.weight.grad, module.bias.grad

    run = torch.compile(new, fullgraph=True) if compiled else new
    dx_ref, dw_ref, db_ref = grads(ref)
    dx, dw, db = grads(run)
    xb = x.to(torch.bfloat16).double().flatten(0, 1)
    exact_dw = g.double().flatten(0, 1).t() @ xb
    err_new = ((dw.double() - exact_dw).abs().max() / exact_dw.abs().max()).item()
    err_ref = ((dw_ref.double() - exact_dw).abs().max() / exact_dw.abs().max()).item()
    assert dw.dtype == torch.float32
    assert err_new < 1e-5, err_new  # float32 accumulation of 3 108 products
    assert err_ref > 10 * err_new, (err_ref, err_new)  # the bf16-rounded gradient is measurably worse
    torch.testing.assert_close(dx, dx_ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(db, db_ref, rtol=2e-2, atol=2e-2)
