"""Mamba-1 selective scan: the sequential reference against an independent closed form, states, varlen, grads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_helpers import compare_grads, rel_err, split_cu

from archscale.kernels.selective_scan import selective_scan

Dch, N = 5, 3


def make_inputs(Bsz: int, T: int, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    return {
        "u": torch.randn(Bsz, T, Dch, dtype=dtype),
        "delta": torch.randn(Bsz, T, Dch, dtype=dtype),
        "A": -torch.rand(Dch, N, dtype=dtype) * 2 - 0.1,
        "B": torch.randn(Bsz, T, N, dtype=dtype),
        "C": torch.randn(Bsz, T, N, dtype=dtype),
        "D": torch.randn(Dch, dtype=dtype),
        "z": torch.randn(Bsz, T, Dch, dtype=dtype),
        "delta_bias": torch.randn(Dch, dtype=dtype) * 0.5,
    }


def closed_form(u, delta, A, B, C, D, z, delta_bias, h0=None):  # noqa: ANN001, ANN201
    """y_t = Σ_{j≤t} exp(A·(Σ_{j<s≤t} Δ_s)) Δ_j B_j u_j · C_t + exp(A·Σ_{s≤t} Δ_s) h0 · C_t + D u_t, gated by
    SiLU(z): the recurrence unrolled, written with cumulative sums instead of a state (float64)."""
    dt = F.softplus(delta + delta_bias)  # (B, T, D)
    cum = torch.cumsum(dt, dim=1)  # (B, T, D)
    T = u.shape[1]
    ys = []
    for t in range(T):
        span = cum[:, t : t + 1] - cum[:, : t + 1]  # (B, j, D): Σ_{j<s≤t} Δ_s
        decay = torch.exp(span.unsqueeze(-1) * A)  # (B, j, D, N)
        contrib = decay * (dt[:, : t + 1] * u[:, : t + 1]).unsqueeze(-1) * B[:, : t + 1, None, :]
        h = contrib.sum(1)  # (B, D, N)
        if h0 is not None:
            h = h + torch.exp(cum[:, t].unsqueeze(-1) * A) * h0
        ys.append((h * C[:, t, None, :]).sum(-1) + D * u[:, t])
    y = torch.stack(ys, dim=1)
    return y * F.silu(z), y


@pytest.mark.parametrize("T", [1, 17, 63])
def test_matches_closed_form(T: int) -> None:
    inp = make_inputs(2, T)
    h0 = torch.randn(2, Dch, N, dtype=torch.float64)
    out, final, ungated = selective_scan(**inp, initial_state=h0, return_final_state=True, return_ungated=True)
    ref_out, ref_y = closed_form(**inp, h0=h0)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ungated, ref_y, rtol=1e-10, atol=1e-10)
    assert final.shape == (2, Dch, N)


def test_options() -> None:
    inp = make_inputs(2, 9)
    # No gate: out is the un-gated y; without softplus, delta is the step size itself.
    y, _, ungated = selective_scan(**{**inp, "z": None}, return_ungated=True)
    torch.testing.assert_close(y, ungated)
    out, _, _ = selective_scan(**inp)
    torch.testing.assert_close(out, y * F.silu(inp["z"]))
    pos = F.softplus(inp["delta"] + inp["delta_bias"])
    y2, _, _ = selective_scan(**{**inp, "z": None, "delta": pos, "delta_bias": None}, delta_softplus=False)
    torch.testing.assert_close(y2, y)
    # D = None drops the skip connection.
    y3, _, _ = selective_scan(**{**inp, "z": None, "D": None})
    torch.testing.assert_close(y3 + inp["u"] * inp["D"], y)


@pytest.mark.parametrize("split", [(1, 1), (7, 1, 12), (20, 43)])
def test_state_continuation(split: tuple[int, ...]) -> None:
    T = sum(split)
    inp = make_inputs(2, T)
    full, full_final, _ = selective_scan(**inp, return_final_state=True)
    state, start, pieces = None, 0, []
    for n in split:
        part = {k: (v[:, start : start + n] if v.dim() == 3 else v) for k, v in inp.items()}
        y, state, _ = selective_scan(**part, initial_state=state, return_final_state=True)
        pieces.append(y)
        start += n
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, full_final, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("with_state", [False, True])
def test_varlen_equals_documents(with_state: bool) -> None:
    lengths = [5, 1, 13, 9]
    inp = make_inputs(1, sum(lengths))
    h0 = torch.randn(len(lengths), Dch, N, dtype=torch.float64) if with_state else None
    out, final, ungated = selective_scan(
        **inp, initial_state=h0, cu_seqlens=split_cu(lengths), return_final_state=True, return_ungated=True
    )
    start = 0
    for i, n in enumerate(lengths):
        part = {k: (v[:, start : start + n] if v.dim() == 3 else v) for k, v in inp.items()}
        s = None if h0 is None else h0[i : i + 1]
        o_doc, f_doc, u_doc = selective_scan(**part, initial_state=s, return_final_state=True, return_ungated=True)
        torch.testing.assert_close(out[:, start : start + n], o_doc, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ungated[:, start : start + n], u_doc, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(final[i : i + 1], f_doc, rtol=1e-12, atol=1e-12)
        start += n


def test_gradients_match_closed_form() -> None:
    inp = make_inputs(2, 13)
    inp["h0"] = torch.randn(2, Dch, N, dtype=torch.float64)

    def scan(h0, **kw):  # noqa: ANN001, ANN003, ANN202
        r = selective_scan(**kw, initial_state=h0, return_ungated=True)
        return r.out, r.ungated

    compare_grads(scan, closed_form, inp, tol=1e-9)


def test_low_precision_input_keeps_fp32_math() -> None:
    inp = make_inputs(2, 40, dtype=torch.float32)
    low = {k: v.bfloat16() for k, v in inp.items()}
    out, final, _ = selective_scan(**low, return_final_state=True)
    assert out.dtype == torch.bfloat16 and final.dtype == torch.float32
    ref, _ = closed_form(**{k: v.double() for k, v in low.items()})
    assert rel_err(out, ref) < 1e-2


def test_errors() -> None:
    inp = make_inputs(2, 5)
    with pytest.raises(ValueError, match="initial_state"):
        selective_scan(**inp, initial_state=torch.zeros(2, Dch, N + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="batch size 1"):
        selective_scan(**inp, cu_seqlens=split_cu([2, 3]))
    with pytest.raises(ValueError, match="shapes"):
        selective_scan(**{**inp, "A": inp["A"][:, :2]})
