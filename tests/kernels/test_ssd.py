"""Mamba-2 SSD: recurrence vs an independent quadratic form, chunked vs recurrent (values and gradients), states,
varlen, awkward sizes."""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import (
    AWKWARD_LENGTHS,
    check_compiled_matches_eager,
    check_fast_path_on_gpu,
    check_layers_keep_what_one_keeps,
    check_state_continuation,
    check_varlen_equals_documents,
    check_varlen_matches_recurrent,
    compare_grads,
    rel_err,
    split_cu,
)

from archscale.kernels.ssd import ssd, ssd_chunked, ssd_recurrent

H, P, G, N = 4, 3, 2, 5


def make_inputs(Bsz: int, T: int, dtype: torch.dtype = torch.float64, decay: float = 1.0) -> dict[str, torch.Tensor]:
    return {
        "x": torch.randn(Bsz, T, H, P, dtype=dtype),
        "dt": torch.rand(Bsz, T, H, dtype=dtype) * decay + 0.01,
        "A": -(torch.rand(H, dtype=dtype) * 2 + 0.1),
        "B": torch.randn(Bsz, T, G, N, dtype=dtype),
        "C": torch.randn(Bsz, T, G, N, dtype=dtype),
        "D": torch.randn(H, dtype=dtype),
    }


def quadratic_form(x, dt, A, B, C, D, h0=None):  # noqa: ANN001, ANN201
    """The SSD "attention" form over the whole sequence (float64): M_tj = (C_t·B_j) exp(A Σ_{j<s≤t} dt_s) dt_j for
    j ≤ t, y = M x + D x, plus the initial state read as C_t exp(A Σ_{s≤t} dt_s) h0, one head at a time."""
    Bsz, T = x.shape[:2]
    ys = []
    for h in range(H):
        g = h // (H // G)
        cum = torch.cumsum(dt[:, :, h] * A[h], dim=1)  # (B, T)
        seg = cum[:, :, None] - cum[:, None, :]  # (B, T, T)
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        M = (C[:, :, g] @ B[:, :, g].transpose(1, 2)) * torch.where(mask, seg, -torch.inf).exp() * dt[:, None, :, h]
        y = M @ x[:, :, h] + D[h] * x[:, :, h]  # (B, T, P)
        if h0 is not None:
            y = y + torch.exp(cum)[..., None] * (C[:, :, g] @ h0[:, h].transpose(1, 2))
        ys.append(y)
    return torch.stack(ys, dim=2)


@pytest.mark.parametrize("T", [1, 17, 63])
def test_recurrent_matches_quadratic_form(T: int) -> None:
    inp = make_inputs(2, T)
    h0 = torch.randn(2, H, P, N, dtype=torch.float64)
    y, final = ssd_recurrent(**inp, initial_state=h0, return_final_state=True)
    torch.testing.assert_close(y, quadratic_form(**inp, h0=h0), rtol=1e-10, atol=1e-10)
    assert final.shape == (2, H, P, N)


@pytest.mark.parametrize("T", [1, 17, 63])
@pytest.mark.parametrize("chunk", [1, 4, 16, 256])
def test_chunked_matches_recurrent(T: int, chunk: int) -> None:
    inp = make_inputs(2, T)
    h0 = torch.randn(2, H, P, N, dtype=torch.float64)
    y, final = ssd_chunked(**inp, chunk_size=chunk, initial_state=h0, return_final_state=True)
    y_ref, final_ref = ssd_recurrent(**inp, initial_state=h0, return_final_state=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, final_ref, rtol=1e-10, atol=1e-10)


def test_strong_decay_stays_finite() -> None:
    # dt·A down to about -60 per step: exp(cumsum) underflows inside a chunk; masked exps must not overflow.
    inp = make_inputs(1, 40, decay=30.0)
    y, final = ssd_chunked(**inp, chunk_size=16, return_final_state=True)
    y_ref, final_ref = ssd_recurrent(**inp, return_final_state=True)
    assert torch.isfinite(y).all() and torch.isfinite(final).all()
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    compare_grads(
        lambda **kw: ssd_chunked(**kw, chunk_size=16), lambda **kw: ssd_recurrent(**kw), inp, tol=1e-8
    )


@pytest.mark.parametrize("impl", ["chunked", "recurrent"])
@pytest.mark.parametrize("split", [(1, 1), (7, 1, 12), (20, 43)])
def test_state_continuation(impl: str, split: tuple[int, ...]) -> None:
    check_state_continuation(lambda **kw: ssd(**kw, chunk_size=8, impl=impl), make_inputs(2, sum(split)), split)


@pytest.mark.parametrize("impl", ["chunked", "recurrent"])
@pytest.mark.parametrize("with_state", [False, True])
def test_varlen_equals_documents(impl: str, with_state: bool) -> None:
    lengths = [5, 1, 13, 9]
    h0 = torch.randn(len(lengths), H, P, N, dtype=torch.float64) if with_state else None
    # Varlen of one form is checked against the other form run on each document alone.
    other = "recurrent" if impl == "chunked" else "chunked"
    check_varlen_equals_documents(
        lambda **kw: ssd(**kw, chunk_size=4, impl=impl), lambda **kw: ssd(**kw, chunk_size=4, impl=other),
        make_inputs(1, sum(lengths)), lengths, h0,
    )


@pytest.mark.parametrize("lengths", AWKWARD_LENGTHS, ids=str)
@pytest.mark.parametrize("with_state", [False, True])
def test_varlen_one_pass_matches_recurrent(lengths: tuple[int, ...], with_state: bool) -> None:
    # One-token documents from zero states never see their decay A (it multiplies a zero state): the gradient of A
    # would be zero and its comparison vacuous, so that layout always gets initial states.
    with_state = with_state or max(lengths) == 1
    h0 = torch.randn(len(lengths), H, P, N, dtype=torch.float64) if with_state else None
    check_varlen_matches_recurrent(ssd_chunked, ssd_recurrent, make_inputs(1, sum(lengths)), lengths, h0)


def test_varlen_one_pass_strong_decay() -> None:
    # Log-decays down to -60 per step across document boundaries: masked exps must neither overflow nor NaN.
    lengths = (3, 9, 1, 11)
    h0 = torch.randn(len(lengths), H, P, N, dtype=torch.float64)
    inp = make_inputs(1, sum(lengths), decay=30.0)
    check_varlen_matches_recurrent(ssd_chunked, ssd_recurrent, inp, lengths, h0, grad_tol=1e-8)


def test_varlen_compiles_fullgraph() -> None:
    # aot_eager: dynamo (no graph break, no host sync) and AOT autograd, without the minutes of C++ codegen.
    inp = make_inputs(1, 24, dtype=torch.float32)
    check_compiled_matches_eager(
        lambda **kw: ssd_chunked(**kw, chunk_size=4, return_final_state=True), inp, "aot_eager", 1e-6
    )


@pytest.mark.slow
def test_varlen_compiles_fullgraph_inductor() -> None:
    inp = make_inputs(1, 24, dtype=torch.float32)
    check_compiled_matches_eager(
        lambda **kw: ssd_chunked(**kw, chunk_size=4, return_final_state=True), inp, "inductor", 1e-4,
        layouts=((3, 9, 1, 11),),  # one layout: inductor's C++ codegen takes minutes on a small CPU
    )


@pytest.mark.parametrize("T", [1, 63])
def test_gradients_chunked_match_recurrent(T: int) -> None:
    inp = make_inputs(2, T)
    inp["initial_state"] = torch.randn(2, H, P, N, dtype=torch.float64)
    compare_grads(
        lambda **kw: ssd_chunked(**kw, chunk_size=16, return_final_state=True),
        lambda **kw: ssd_recurrent(**kw, return_final_state=True),
        inp,
        tol=1e-9,
    )


def test_gradients_varlen() -> None:
    lengths = [6, 1, 10]
    inp = make_inputs(1, sum(lengths))
    cu = split_cu(lengths)
    compare_grads(
        lambda **kw: ssd_chunked(**kw, chunk_size=4, cu_seqlens=cu, return_final_state=True),
        lambda **kw: ssd_recurrent(**kw, cu_seqlens=cu, return_final_state=True),
        inp,
        tol=1e-9,
    )


def test_low_precision_input_keeps_fp32_math() -> None:
    inp = make_inputs(2, 50, dtype=torch.float32)
    low = {k: v.bfloat16() for k, v in inp.items()}
    y, final = ssd_chunked(**low, chunk_size=16, return_final_state=True)
    assert y.dtype == torch.bfloat16 and final.dtype == torch.float32
    assert rel_err(y, quadratic_form(**{k: v.double() for k, v in low.items()})) < 1e-2


def test_errors() -> None:
    inp = make_inputs(2, 5)
    with pytest.raises(ValueError, match="shapes"):
        ssd(**{**inp, "B": inp["B"][:, :, :1].expand(2, 5, 3, N)})  # 3 groups do not divide 4 heads
    with pytest.raises(ValueError, match="initial_state"):
        ssd(**inp, initial_state=torch.zeros(2, H, N, P, dtype=torch.float64))
    with pytest.raises(ValueError, match="impl"):
        ssd(**inp, impl="triton")  # type: ignore[arg-type]


def test_fp32_math_under_autocast() -> None:
    inp = make_inputs(2, 40, dtype=torch.float32)
    y_ref, _ = ssd(**inp, chunk_size=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = ssd(**inp, chunk_size=16)
    assert y.dtype == torch.float32 and rel_err(y, y_ref) < 1e-6


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_auto_on_cuda_matches_recurrent(dtype: torch.dtype) -> None:
    # impl="auto" on CUDA: the one-pass chunked form compiled (fullgraph), at Mamba-2's default head sizes.
    Hh, Pp, Gg, Nn = 8, 64, 1, 128
    lengths = (700, 1, 255, 257, 835)  # T = 2048: chunk ± 1, a one-token document, documents across chunks
    T = sum(lengths)
    inp = {
        "x": torch.randn(1, T, Hh, Pp), "dt": torch.rand(1, T, Hh) * 0.1 + 0.001,
        "A": -(torch.rand(Hh) * 15 + 1), "B": torch.randn(1, T, Gg, Nn) / Nn**0.5,
        "C": torch.randn(1, T, Gg, Nn) / Nn**0.5, "D": torch.ones(Hh),
    }
    inp = {k: v.cuda().to(dtype) for k, v in inp.items()}
    check_fast_path_on_gpu(
        lambda **kw: ssd(**kw, chunk_size=256, impl="auto"), ssd_recurrent, inp, lengths,
        tol=2e-3 if dtype == torch.float32 else 3e-2,
    )


@pytest.mark.parametrize("varlen", [False, True])
def test_compiled_layers_recompute_the_decay_tile(varlen: bool) -> None:
    """In a compiled model every layer but the first kept its float32 (B, c, H, Q, Q) decay tile, before
    archscale.kernels.varlen.decay_tile checkpointed it."""
    torch.manual_seed(0)
    Q, T = 8, 72  # 9 chunks: no other axis of length Q
    cu = split_cu([20, 1, 51]) if varlen else None
    layers = []
    for _ in range(2):
        inp = make_inputs(1, T, dtype=torch.float32)
        del inp["x"]
        inp["B"], inp["C"] = inp["B"].bfloat16(), inp["C"].bfloat16()  # as the mixer passes them: conv outputs
        layers.append({k: v.requires_grad_() for k, v in inp.items()})
    x = torch.randn(1, T, H, P).bfloat16().requires_grad_()
    check_layers_keep_what_one_keeps(
        lambda x, **layer: ssd_chunked(x, **layer, chunk_size=Q, cu_seqlens=cu)[0], x, layers, tile=Q
    )
