"""Gated delta rule: recurrence vs the paper's matrix form, chunked (WY) vs recurrent (values and gradients),
states, varlen, awkward sizes."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
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

from archscale.kernels.delta_rule import (
    gated_delta_rule,
    gated_delta_rule_chunked,
    gated_delta_rule_recurrent,
)
from archscale.kernels.delta_rule.state_pass import state_pass

H, K, V = 3, 4, 6


def make_inputs(Bsz: int, T: int, dtype: torch.dtype = torch.float64, decay: float = 1.0) -> dict[str, torch.Tensor]:
    return {
        "q": F.normalize(torch.randn(Bsz, T, H, K, dtype=dtype), dim=-1),
        "k": F.normalize(torch.randn(Bsz, T, H, K, dtype=dtype), dim=-1),
        "v": torch.randn(Bsz, T, H, V, dtype=dtype),
        "g": -torch.rand(Bsz, T, H, dtype=dtype) * decay,
        "beta": torch.rand(Bsz, T, H, dtype=dtype) * 2,  # (0, 2): negative eigenvalues allowed
    }


def paper_form(q, k, v, g, beta, scale=None, initial_state=None):  # noqa: ANN001, ANN201
    """S_t = α_t S_{t-1} (I - β_t k_t k_tᵀ) + β_t v_t k_tᵀ, o_t = S_t (scale·q_t), with S (V × K) written out as
    matrices per batch row and head (Yang, Kautz & Hatamizadeh 2024, eq. 10), float64."""
    Bsz, T = q.shape[:2]
    scale = K**-0.5 if scale is None else scale
    eye = torch.eye(K, dtype=q.dtype)
    out = torch.zeros(Bsz, T, H, V, dtype=q.dtype)
    finals = torch.zeros(Bsz, H, K, V, dtype=q.dtype)
    for b in range(Bsz):
        for h in range(H):
            S = torch.zeros(V, K, dtype=q.dtype) if initial_state is None else initial_state[b, h].T
            for t in range(T):
                kt, vt = k[b, t, h][:, None], v[b, t, h][:, None]  # columns
                S = torch.exp(g[b, t, h]) * S @ (eye - beta[b, t, h] * kt @ kt.T) + beta[b, t, h] * vt @ kt.T
                out[b, t, h] = S @ (scale * q[b, t, h])
            finals[b, h] = S.T
    return out, finals


@pytest.mark.parametrize("T", [1, 17, 63])
def test_recurrent_matches_paper_form(T: int) -> None:
    inp = make_inputs(2, T)
    h0 = torch.randn(2, H, K, V, dtype=torch.float64)
    o, final = gated_delta_rule_recurrent(**inp, initial_state=h0, return_final_state=True)
    o_ref, final_ref = paper_form(**inp, initial_state=h0)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, final_ref, rtol=1e-10, atol=1e-10)
    o2, _ = gated_delta_rule_recurrent(**inp, scale=0.7)
    torch.testing.assert_close(o2, paper_form(**inp, scale=0.7)[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("T", [1, 17, 63])
@pytest.mark.parametrize("chunk", [1, 4, 16, 64])
def test_chunked_matches_recurrent(T: int, chunk: int) -> None:
    inp = make_inputs(2, T)
    h0 = torch.randn(2, H, K, V, dtype=torch.float64)
    o, final = gated_delta_rule_chunked(**inp, chunk_size=chunk, initial_state=h0, return_final_state=True)
    o_ref, final_ref = gated_delta_rule_recurrent(**inp, initial_state=h0, return_final_state=True)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, final_ref, rtol=1e-10, atol=1e-10)


def test_strong_decay_stays_finite() -> None:
    inp = make_inputs(1, 40, decay=60.0)  # log-decays down to -60 per step
    o, final = gated_delta_rule_chunked(**inp, chunk_size=16, return_final_state=True)
    o_ref, final_ref = gated_delta_rule_recurrent(**inp, return_final_state=True)
    assert torch.isfinite(o).all() and torch.isfinite(final).all()
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    compare_grads(
        lambda **kw: gated_delta_rule_chunked(**kw, chunk_size=16),
        lambda **kw: gated_delta_rule_recurrent(**kw),
        inp,
        tol=1e-8,
    )


@pytest.mark.parametrize("impl", ["chunked", "recurrent"])
@pytest.mark.parametrize("split", [(1, 1), (7, 1, 12), (20, 43)])
def test_state_continuation(impl: str, split: tuple[int, ...]) -> None:
    check_state_continuation(
        lambda **kw: gated_delta_rule(**kw, chunk_size=8, impl=impl), make_inputs(2, sum(split)), split
    )


@pytest.mark.parametrize("impl", ["chunked", "recurrent"])
@pytest.mark.parametrize("with_state", [False, True])
def test_varlen_equals_documents(impl: str, with_state: bool) -> None:
    lengths = [5, 1, 13, 9]
    h0 = torch.randn(len(lengths), H, K, V, dtype=torch.float64) if with_state else None
    other = "recurrent" if impl == "chunked" else "chunked"
    check_varlen_equals_documents(
        lambda **kw: gated_delta_rule(**kw, chunk_size=4, impl=impl),
        lambda **kw: gated_delta_rule(**kw, chunk_size=4, impl=other),
        make_inputs(1, sum(lengths)), lengths, h0,
    )


@pytest.mark.parametrize("lengths", AWKWARD_LENGTHS, ids=str)
@pytest.mark.parametrize("with_state", [False, True])
def test_varlen_one_pass_matches_recurrent(lengths: tuple[int, ...], with_state: bool) -> None:
    # One-token documents from zero states never see their decay g (it multiplies a zero state): the gradient of g
    # would be zero and its comparison vacuous, so that layout always gets initial states.
    with_state = with_state or max(lengths) == 1
    h0 = torch.randn(len(lengths), H, K, V, dtype=torch.float64) if with_state else None
    check_varlen_matches_recurrent(
        gated_delta_rule_chunked, gated_delta_rule_recurrent, make_inputs(1, sum(lengths)), lengths, h0
    )


def test_varlen_one_pass_strong_decay() -> None:
    lengths = (3, 9, 1, 11)
    h0 = torch.randn(len(lengths), H, K, V, dtype=torch.float64)
    inp = make_inputs(1, sum(lengths), decay=60.0)
    check_varlen_matches_recurrent(
        gated_delta_rule_chunked, gated_delta_rule_recurrent, inp, lengths, h0, grad_tol=1e-8
    )


def test_state_pass_op_registration() -> None:
    # The chunk-to-chunk recursion is a custom op with a fake (meta) implementation and its own backward op:
    # opcheck runs the schema, fake-tensor, autograd-registration and AOT-dispatch checks of torch.library.
    B_, c, Q = 2, 3, 4
    args = (
        torch.randn(B_, H, c, Q, V, dtype=torch.float64, requires_grad=True),
        torch.randn(B_, H, c, Q, K, dtype=torch.float64, requires_grad=True),
        torch.randn(B_, H, c, Q, K, dtype=torch.float64, requires_grad=True),
        torch.rand(B_, H, c, dtype=torch.float64, requires_grad=True),
        torch.randn(B_, H, K, V, dtype=torch.float64, requires_grad=True),
        torch.randn(B_, H, c, K, V, dtype=torch.float64, requires_grad=True),
    )
    torch.library.opcheck(torch.ops.archscale.gated_delta_state_pass.default, args)
    assert torch.autograd.gradcheck(lambda *a: state_pass(*a), args)


def test_varlen_compiles_fullgraph() -> None:
    inp = make_inputs(1, 24, dtype=torch.float32)
    check_compiled_matches_eager(
        lambda **kw: gated_delta_rule_chunked(**kw, chunk_size=4, return_final_state=True), inp, "aot_eager", 1e-6
    )


@pytest.mark.slow
def test_varlen_compiles_fullgraph_inductor() -> None:
    inp = make_inputs(1, 24, dtype=torch.float32)
    check_compiled_matches_eager(
        lambda **kw: gated_delta_rule_chunked(**kw, chunk_size=4, return_final_state=True), inp, "inductor", 1e-4,
        layouts=((3, 9, 1, 11),),  # one layout: inductor's C++ codegen takes minutes on a small CPU
    )


@pytest.mark.parametrize("T", [1, 63])
def test_gradients_chunked_match_recurrent(T: int) -> None:
    inp = make_inputs(2, T)
    inp["initial_state"] = torch.randn(2, H, K, V, dtype=torch.float64)
    compare_grads(
        lambda **kw: gated_delta_rule_chunked(**kw, chunk_size=16, return_final_state=True),
        lambda **kw: gated_delta_rule_recurrent(**kw, return_final_state=True),
        inp,
        tol=1e-9,
    )


def test_gradients_varlen() -> None:
    lengths = [6, 1, 10]
    inp = make_inputs(1, sum(lengths))
    cu = split_cu(lengths)
    compare_grads(
        lambda **kw: gated_delta_rule_chunked(**kw, chunk_size=4, cu_seqlens=cu, return_final_state=True),
        lambda **kw: gated_delta_rule_recurrent(**kw, cu_seqlens=cu, return_final_state=True),
        inp,
        tol=1e-9,
    )


def test_low_precision_input_keeps_fp32_math() -> None:
    inp = make_inputs(2, 50, dtype=torch.float32)
    low = {name: t.bfloat16() for name, t in inp.items()}
    o, final = gated_delta_rule_chunked(**low, chunk_size=16, return_final_state=True)
    assert o.dtype == torch.bfloat16 and final.dtype == torch.float32
    o_ref, _ = gated_delta_rule_recurrent(**{name: t.double() for name, t in low.items()})
    assert rel_err(o, o_ref) < 1e-2


def test_errors() -> None:
    inp = make_inputs(2, 5)
    with pytest.raises(ValueError, match="shapes"):
        gated_delta_rule(**{**inp, "k": inp["k"][..., :2]})
    with pytest.raises(ValueError, match="initial_state"):
        gated_delta_rule(**inp, initial_state=torch.zeros(2, H, V, K, dtype=torch.float64))
    with pytest.raises(ValueError, match="batch size 1"):
        gated_delta_rule(**inp, cu_seqlens=split_cu([2, 3]))
    with pytest.raises(ValueError, match="cu_seqlens"):
        gated_delta_rule(**{n: t[:1] for n, t in inp.items()}, cu_seqlens=split_cu([2, 2]))  # ends at 4, not T = 5
    with pytest.raises(ValueError, match="impl"):
        gated_delta_rule(**inp, impl="triton")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="impl='fla' is not available: fla's kernels run on CUDA only"):
        gated_delta_rule(**inp, impl="fla")


def test_fla_refusal_is_a_constant_to_dynamo() -> None:
    """Compiled models ask fla_refusal while being traced: dynamo must take its answer as a constant, not trace
    the functools.cache'd probe behind it (which it warns about on every compile)."""
    from archscale.kernels.delta_rule.fla import fla_refusal

    def pick(x: torch.Tensor) -> torch.Tensor:
        return x + 1 if fla_refusal(x.device) is None else x - 1

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = torch.compile(pick, fullgraph=True, backend="eager")(torch.zeros(3))
    assert not [m for m in caught if "lru_cache" in str(m.message)], [str(m.message)[:120] for m in caught]
    assert torch.equal(out, pick(torch.zeros(3)))  # the answer on this device, as eager code gets it


def test_fp32_math_under_autocast() -> None:
    inp = make_inputs(2, 40, dtype=torch.float32)
    o_ref, _ = gated_delta_rule(**inp, chunk_size=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o, _ = gated_delta_rule(**inp, chunk_size=16)
    assert o.dtype == torch.float32 and rel_err(o, o_ref) < 1e-6


def _gpu_inputs(T: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    Hh, Kk, Vv = 4, 128, 256  # GDN's shapes at half its default head size (K 256, V 512)
    inp = {
        "q": F.normalize(torch.randn(1, T, Hh, Kk), dim=-1), "k": F.normalize(torch.randn(1, T, Hh, Kk), dim=-1),
        "v": torch.randn(1, T, Hh, Vv), "g": -torch.rand(1, T, Hh) * 0.2, "beta": torch.rand(1, T, Hh) * 2,
    }
    return {k: v.cuda().to(dtype) for k, v in inp.items()}


GPU_LENGTHS = (700, 1, 63, 65, 1219)  # T = 2048: chunk ± 1, a one-token document, documents across chunks


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_on_cuda_matches_recurrent(dtype: torch.dtype) -> None:
    # The compiled one-pass chunked form (what impl="auto" runs on CUDA where fla refuses).
    from archscale.kernels.varlen import compiled_call

    check_fast_path_on_gpu(
        lambda **kw: compiled_call(gated_delta_rule_chunked, **kw, chunk_size=64), gated_delta_rule_recurrent,
        _gpu_inputs(sum(GPU_LENGTHS), dtype), GPU_LENGTHS, tol=2e-3 if dtype == torch.float32 else 3e-2,
    )


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fla_matches_recurrent_where_allowed(dtype: torch.dtype) -> None:
    from archscale.kernels.delta_rule import fla_refusal

    reason = fla_refusal(torch.device("cuda"))
    if reason is not None:
        with pytest.raises(RuntimeError, match="impl='fla' is not available"):
            gated_delta_rule(**_gpu_inputs(64, dtype), impl="fla")
        pytest.skip(reason)
    check_fast_path_on_gpu(
        lambda **kw: gated_delta_rule(**kw, impl="fla"), gated_delta_rule_recurrent,
        _gpu_inputs(sum(GPU_LENGTHS), dtype), GPU_LENGTHS, tol=2e-3 if dtype == torch.float32 else 3e-2,
    )


@pytest.mark.parametrize("varlen", [False, True])
def test_compiled_layers_recompute_the_decay_tile(varlen: bool) -> None:
    """In a compiled model every layer but the first kept its float32 (B, H, c, Q, Q) decay tile Γ, before
    archscale.kernels.varlen.decay_tile checkpointed it."""
    torch.manual_seed(0)
    Q, T = 8, 72  # 9 chunks: no other axis of length Q
    cu = split_cu([20, 1, 51]) if varlen else None
    layers = []
    for _ in range(2):
        inp = make_inputs(1, T, dtype=torch.float32)
        del inp["v"]
        inp["q"], inp["k"] = inp["q"].bfloat16(), inp["k"].bfloat16()  # as the mixer passes them: conv outputs
        layers.append({name: t.requires_grad_() for name, t in inp.items()})
    v = torch.randn(1, T, H, V).bfloat16().requires_grad_()
    check_layers_keep_what_one_keeps(
        lambda v, **layer: gated_delta_rule_chunked(v=v, **layer, chunk_size=Q, cu_seqlens=cu)[0], v, layers, tile=Q
    )
