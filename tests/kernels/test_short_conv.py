"""Short causal depthwise conv1d: against F.conv1d, state continuation, varlen isolation, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_helpers import split_cu

from archscale.kernels.short_conv import short_conv

C = 6


def naive_conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, prev: torch.Tensor | None) -> torch.Tensor:
    """nn.Conv1d semantics: depthwise, W-1 inputs of left context (the state or zeros), then SiLU."""
    W = w.shape[-1]
    ctx = prev if prev is not None else x.new_zeros(x.shape[0], W - 1, x.shape[2])
    xc = torch.cat((ctx, x), dim=1).transpose(1, 2)  # (B, C, W-1+T)
    y = F.conv1d(xc, w.unsqueeze(1), b, groups=x.shape[2]).transpose(1, 2)
    return F.silu(y)


@pytest.mark.parametrize("W", [1, 2, 4])
@pytest.mark.parametrize("T", [1, 5, 63])
def test_matches_conv1d(W: int, T: int) -> None:
    x = torch.randn(2, T, C, dtype=torch.float64)
    w, b = torch.randn(C, W, dtype=torch.float64), torch.randn(C, dtype=torch.float64)
    prev = torch.randn(2, W - 1, C, dtype=torch.float64)
    for state in (None, prev):
        y, final = short_conv(x, w, b, initial_state=state, return_final_state=True)
        torch.testing.assert_close(y, naive_conv(x, w, b, state), rtol=1e-12, atol=1e-12)
        ctx = state if state is not None else torch.zeros(2, W - 1, C, dtype=torch.float64)
        torch.testing.assert_close(final, torch.cat((ctx, x), dim=1)[:, T:])  # the last W-1 inputs
    y, _ = short_conv(x, w, None, activation=None)
    y_ref = F.conv1d(F.pad(x.transpose(1, 2), (W - 1, 0)), w.unsqueeze(1), groups=C).transpose(1, 2)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("split", [(1, 1, 1, 7), (2, 30, 31), (63,)])
def test_state_continuation(split: tuple[int, ...]) -> None:
    T, W = sum(split), 4
    x = torch.randn(2, T, C, dtype=torch.float64)
    w, b = torch.randn(C, W, dtype=torch.float64), torch.randn(C, dtype=torch.float64)
    full, full_final = short_conv(x, w, b, return_final_state=True)
    state, start, pieces = None, 0, []
    for n in split:
        y, state = short_conv(x[:, start : start + n], w, b, initial_state=state, return_final_state=True)
        pieces.append(y)
        start += n
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, full_final)


@pytest.mark.parametrize("with_state", [False, True])
def test_varlen_equals_documents(with_state: bool) -> None:
    lengths, W = [1, 2, 7, 3, 13], 4  # documents shorter than W-1 keep the tail of their initial state
    x = torch.randn(1, sum(lengths), C, dtype=torch.float64)
    w, b = torch.randn(C, W, dtype=torch.float64), torch.randn(C, dtype=torch.float64)
    init = torch.randn(len(lengths), W - 1, C, dtype=torch.float64) if with_state else None
    y, final = short_conv(x, w, b, initial_state=init, cu_seqlens=split_cu(lengths), return_final_state=True)
    assert torch.isfinite(y).all() and torch.isfinite(final).all()
    start = 0
    for i, n in enumerate(lengths):
        s = None if init is None else init[i : i + 1]
        y_doc, f_doc = short_conv(x[:, start : start + n], w, b, initial_state=s, return_final_state=True)
        torch.testing.assert_close(y[:, start : start + n], y_doc, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(final[i : i + 1], f_doc)
        start += n


def test_gradients() -> None:
    x = torch.randn(1, 11, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    init = torch.randn(3, 3, 3, dtype=torch.float64, requires_grad=True)
    cu = split_cu([2, 4, 5])

    def fn(x, w, b, init):  # noqa: ANN001, ANN202
        return short_conv(x, w, b, initial_state=init, cu_seqlens=cu, return_final_state=True)

    assert torch.autograd.gradcheck(fn, (x, w, b, init))


def test_low_precision_input_keeps_fp32_math() -> None:
    x = torch.randn(2, 9, C)
    w, b = torch.randn(C, 4), torch.randn(C)
    y, _ = short_conv(x.bfloat16(), w.bfloat16(), b.bfloat16())
    assert y.dtype == torch.bfloat16
    ref = naive_conv(x.bfloat16().double(), w.bfloat16().double(), b.bfloat16().double(), None)
    torch.testing.assert_close(y.double(), ref, rtol=1e-2, atol=1e-2)


def test_errors() -> None:
    x = torch.randn(2, 5, C)
    w = torch.randn(C, 4)
    with pytest.raises(ValueError, match="initial_state"):
        short_conv(x, w, initial_state=torch.zeros(2, 2, C))
    with pytest.raises(ValueError, match="batch size 1"):
        short_conv(x, w, cu_seqlens=split_cu([2, 3]))
    with pytest.raises(ValueError, match="cu_seqlens"):
        short_conv(x[:1], w, cu_seqlens=split_cu([2, 2]))


def test_varlen_compiles_without_graph_break() -> None:
    """Document boundaries stay on the device: a compiled varlen call has no graph break (a host read of
    cu_seqlens would force one in every recurrent mixer) and matches eager for two document counts."""
    w, b = torch.randn(C, 4), torch.randn(C)
    fn = torch.compile(lambda x, cu: short_conv(x, w, b, cu_seqlens=cu), backend="aot_eager", fullgraph=True)
    for lengths in ([3, 1, 9], [5, 2, 2, 4]):
        x = torch.randn(1, sum(lengths), C)
        cu = split_cu(lengths)
        torch.testing.assert_close(fn(x, cu)[0], short_conv(x, w, b, cu_seqlens=cu)[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("varlen", [False, True])
def test_compiled_backward_keeps_the_bf16_input_not_a_float32_copy(varlen: bool) -> None:
    """In training (bf16 input, no state) the compiled backward keeps what it needs for the weight's gradient in
    the input's dtype: no saved float32 tensor of the input's size (inductor kept the float32 join of the zero
    state and the input, twice the bytes, before the join was built in bf16). Same numbers as eager float32 math:
    the output, and every gradient (the input's still accumulated over taps in float32, rounded once)."""
    torch.manual_seed(0)
    T, Cw = 96, 24
    x = torch.randn(1, T, Cw).bfloat16().requires_grad_()
    w, b = torch.randn(Cw, 4, requires_grad=True), torch.randn(Cw, requires_grad=True)
    cu = split_cu([40, 3, 53]) if varlen else None
    fn = torch.compile(lambda x, w, b: short_conv(x, w, b, cu_seqlens=cu)[0], backend="inductor", fullgraph=True)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = fn(x, w, b)
    big_fp32 = [tuple(t.shape) for t in saved if t.dtype == torch.float32 and t.numel() >= T * Cw]
    assert not big_fp32, f"float32 copies of the input kept for the backward: {big_fp32}"
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, w, b), gy)

    xr = x.detach().double().requires_grad_()
    wr, br = w.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    yr = short_conv(xr, wr, br, cu_seqlens=cu)[0]
    refs = torch.autograd.grad(yr, (xr, wr, br), gy.double())
    torch.testing.assert_close(y.double(), yr.bfloat16().double(), rtol=1e-2, atol=1e-2)
    for g, r in zip(grads, refs):
        # bf16 gradient of x: one rounding of the float32 sum (a bf16 sum over 4 taps would round up to 4 times)
        tol = 8e-3 if g.dtype == torch.bfloat16 else 1e-5
        torch.testing.assert_close(g.double(), r.to(g.dtype).double(), rtol=tol, atol=tol)
