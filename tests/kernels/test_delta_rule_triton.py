"""Triton kernels of the gated delta rule's chunk-to-chunk recursion (archscale.kernels.delta_rule.state_pass_triton)
against the PyTorch loop in float64, and the whole chunked gated delta rule running on them against the float64
recurrent specification: outputs and every input gradient, dense and varlen, initial and final states, awkward sizes
(chunk, key and value widths not powers of two, value blocks cut at the edge), U and W as the column-major slices
the triangular solve returns.

As in test_selective_scan_triton.py, the CPU cases run in one subprocess under ``TRITON_INTERPRET=1`` (this file as
a script, printing every case's errors as JSON); the same cases run on CUDA under ``@pytest.mark.gpu``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))  # kernel_helpers, also when this file runs as a script
from kernel_helpers import case_results, interpreted_results, print_results, rel_err, split_cu  # noqa: E402

from archscale.kernels.delta_rule import state_pass as state_pass_module  # noqa: E402
from archscale.kernels.delta_rule.reference import (  # noqa: E402
    gated_delta_rule_chunked,
    gated_delta_rule_recurrent,
)

TOL = 1e-4  # fp32 against float64
HAS_TRITON = importlib.util.find_spec("triton") is not None
# (B, H, chunks, Q, K, V, with inject): awkward widths, one chunk, value blocks cut at the edge, GDN's K 2x V.
KERNEL_SHAPES = [(2, 3, 5, 4, 4, 6, False), (1, 2, 7, 5, 3, 20, True), (1, 1, 1, 16, 16, 16, False),
                 (2, 1, 3, 64, 32, 70, True)]
# GDN's own sizes (chunk 64, key head 256, value head 512: REFERENCE §3), too slow for the interpreter: on CUDA the
# kernels hold a (64, 256) tile of W and of K̃ on chip there, the case most likely to run out of resources.
MODEL_SHAPES = [(1, 2, 6, 64, 256, 512, False), (2, 1, 3, 64, 256, 512, True)]


def case_kernels(device: str, shapes: list[tuple] = KERNEL_SHAPES, loop_only: bool = False,
                 refs: tuple[Callable, Callable] | None = None) -> dict[str, float]:
    """Forward and adjoint kernels against the loop in float64: the largest relative error of each output.
    ``loop_only``: the loop in the inputs' dtype in place of the kernels (the error the loop itself makes).
    ``refs``: other float64 references (forward, adjoint) in place of the loops."""
    from archscale.kernels.delta_rule.state_pass_triton import state_pass_bwd_triton, state_pass_fwd_triton

    errs: dict[str, float] = {}
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).to(device)

    for B, H, nc, Q, K, V, with_inject in shapes:
        # U and W as slices of one column-major (Q, V + K) buffer, the layout of the solve's output.
        UW = rand(B, H, nc, V + K, Q, scale=0.5).transpose(-1, -2)
        U, W, k_dec = UW[..., :V], UW[..., V:], rand(B, H, nc, Q, K, scale=0.3)
        decay, h0 = torch.rand(B, H, nc, generator=gen).to(device), rand(B, H, K, V)
        inject = rand(B, H, nc, K, V) if with_inject else None
        d_h_in, d_delta, d_final = rand(B, H, nc, K, V), rand(B, H, nc, Q, V), rand(B, H, K, V)
        fwd_in = (U, W, k_dec, decay, h0, inject)
        bwd_in = (d_h_in, d_delta, d_final, W, k_dec, decay)
        for kind, fast, loop, args, names in (
            ("fwd", state_pass_fwd_triton, state_pass_module.state_pass_fwd_loop, fwd_in, ("h_in", "delta", "final")),
            ("bwd", state_pass_bwd_triton, state_pass_module.state_pass_bwd_loop, bwd_in, ("dU", "dh_out", "dh0")),
        ):
            got = (loop if loop_only else fast)(*args)
            ref = loop if refs is None else refs[kind == "bwd"]
            want = ref(*(None if t is None else t.double() for t in args))
            for name, g, w in zip(names, got, want):
                assert loop_only or g.is_contiguous(), f"{kind} {name} is not contiguous"
                errs[f"{kind} {name}"] = max(errs.get(f"{kind} {name}", 0.0), rel_err(g.double(), w))
    return errs


def _rounded_loops(round_: Callable[[torch.Tensor], torch.Tensor]) -> tuple[Callable, Callable]:
    """The state pass's two loops (state_pass.py) in float64 with every product's operands rounded by ``round_``
    and the state held in fp32, as the kernels hold it: what the kernels compute with TF32 rounding, exactly
    multiplied."""
    def fp32(x: torch.Tensor) -> torch.Tensor:
        return x.float().double()

    def fwd(U, W, k_dec, decay, h0, inject):  # noqa: ANN001, ANN202
        h, h_in, delta = fp32(h0), [], []
        for c in range(U.shape[2]):
            h_in.append(h)
            d = fp32(U[:, :, c] - round_(W[:, :, c]) @ round_(h))
            delta.append(d)
            h = decay[:, :, c, None, None] * h + round_(k_dec[:, :, c]).transpose(-1, -2) @ round_(d)
            h = fp32(h if inject is None else h + inject[:, :, c])
        return torch.stack(h_in, 2), torch.stack(delta, 2), h

    def bwd(d_h_in, d_delta, d_final, W, k_dec, decay):  # noqa: ANN001, ANN202
        dh, dh_out, dU = fp32(d_final), [], []
        for c in reversed(range(W.shape[2])):
            dh_out.insert(0, dh)
            dd = fp32(d_delta[:, :, c] + round_(k_dec[:, :, c]) @ round_(dh))
            dU.insert(0, dd)
            dh = fp32(d_h_in[:, :, c] + decay[:, :, c, None, None] * dh - round_(W[:, :, c]).transpose(-1, -2)
                      @ round_(dd))
        return torch.stack(dU, 2), torch.stack(dh_out, 2), dh

    return fwd, bwd


def case_kernels_tf32_rounding(device: str) -> dict[str, float]:
    """The kernels with TF32 rounding on (``ROUND``) but exact products ("ieee"; the interpreter has no TF32):
    against the loops with every operand rounded to TF32 ("vs rounded"), which they must match, and against the
    exact loops ("vs exact"), from which they must differ by TF32's rounding (the rounding took place)."""
    from archscale.kernels.delta_rule import state_pass_triton as sp

    def tf32(x: torch.Tensor) -> torch.Tensor:
        return sp.round_to_tf32(x.float()).double()

    rounded_fwd, rounded_bwd = _rounded_loops(tf32)
    exact_fwd, exact_bwd = _rounded_loops(lambda x: x)
    saved = sp._precision
    sp._precision = lambda: {"PRECISION": "ieee", "ROUND": True}
    try:
        errs: dict[str, float] = {}
        for name, refs in (("rounded", (rounded_fwd, rounded_bwd)), ("exact", (exact_fwd, exact_bwd))):
            errs.update({f"{k} vs {name}": v for k, v in case_kernels(device, refs=refs).items()})
        # A NaN in the state (CUDA's own, all bits set) must reach Δ, not be rounded into a zero.
        B, H, nc, Q, K, V, _ = KERNEL_SHAPES[0]
        h0 = torch.zeros(B, H, K, V, device=device)
        h0.view(torch.int32)[0, 0, 0, 0] = 0x7FFFFFFF
        ones = torch.ones(B, H, nc, Q, K, device=device)
        _, delta, _ = sp.state_pass_fwd_triton(torch.zeros(B, H, nc, Q, V, device=device), ones, ones,
                                               torch.ones(B, H, nc, device=device), h0, None)
        errs["rows of Δ that lost the state's NaN"] = float((~delta[0, 0, 0, :, 0].isnan()).sum())
    finally:
        sp._precision = saved
    return errs


VARLEN_DOCS = [7, 1, 30, 12]
H, K, V = 3, 12, 20


def _inputs(B: int, T: int, n_states: int, device: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    inp = {
        "q": F.normalize(rand(B, T, H, K), dim=-1),
        "k": F.normalize(rand(B, T, H, K), dim=-1),
        "v": rand(B, T, H, V),
        "g": -torch.rand(B, T, H, generator=gen, dtype=torch.float64) * 0.5,
        "beta": torch.rand(B, T, H, generator=gen, dtype=torch.float64) * 2,
        "initial_state": rand(n_states, H, K, V),
    }
    return {k: v.to(device) for k, v in inp.items()}


def case_gated_delta_rule(device: str, varlen: bool) -> dict[str, float]:
    """The chunked form in fp32 (the state pass on the Triton kernels) against the float64 recurrent form: output,
    final states and the gradient of every input; also counts the kernel launches, so a silent fallback fails."""
    from archscale.kernels.delta_rule import state_pass_triton

    cu = split_cu(VARLEN_DOCS).to(device) if varlen else None
    inp = _inputs(1, sum(VARLEN_DOCS), len(VARLEN_DOCS), device) if varlen else _inputs(2, 37, 2, device)
    calls = {"fwd": 0, "bwd": 0}
    originals = (state_pass_triton.state_pass_fwd_triton, state_pass_triton.state_pass_bwd_triton)

    def counted(kind: str, fn: Callable) -> Callable:
        def wrapper(*args):  # noqa: ANN002, ANN202
            calls[kind] += 1
            return fn(*args)
        return wrapper

    state_pass_triton.state_pass_fwd_triton = counted("fwd", originals[0])
    state_pass_triton.state_pass_bwd_triton = counted("bwd", originals[1])
    try:
        results = []
        for fn, dtype in ((gated_delta_rule_chunked, torch.float32), (gated_delta_rule_recurrent, torch.float64)):
            leaves = {k: v.to(dtype).requires_grad_(True) for k, v in inp.items()}
            kw = {"chunk_size": 8} if fn is gated_delta_rule_chunked else {}
            out, final = fn(**leaves, cu_seqlens=cu, return_final_state=True, **kw)
            gen = torch.Generator().manual_seed(2)
            up_o = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(device)
            up_f = torch.randn(final.shape, generator=gen, dtype=torch.float64).to(device)
            ((out.double() * up_o).sum() + (final.double() * up_f).sum()).backward()
            results.append({"out": out, "final": final, **{f"d{k}": v.grad for k, v in leaves.items()}})
    finally:
        state_pass_triton.state_pass_fwd_triton, state_pass_triton.state_pass_bwd_triton = originals
    errs = {name: rel_err(results[0][name].detach().double(), results[1][name].detach()) for name in results[1]}
    errs["triton forward calls"], errs["triton backward calls"] = float(calls["fwd"]), float(calls["bwd"])
    return errs


CASES: dict[str, Callable[[str], dict[str, float]]] = {
    "kernels": case_kernels,
    "kernels_tf32_rounding": case_kernels_tf32_rounding,
    "dense": lambda device: case_gated_delta_rule(device, varlen=False),
    "varlen": lambda device: case_gated_delta_rule(device, varlen=True),
}


def check(name: str, errs: dict[str, float]) -> None:
    assert "exception" not in errs, errs.get("exception")
    if name == "kernels_tf32_rounding":  # TF32's unit roundoff is 2**-11 ≈ 4.9e-4: far above TOL
        unrounded = {k: v for k, v in errs.items() if k.endswith("vs exact") and not v > 2 * TOL}
        assert not unrounded, f"the kernels' operands were not rounded to TF32: {unrounded}"
        errs = {k: v for k, v in errs.items() if not k.endswith("vs exact")}
    elif name != "kernels":
        assert errs.pop("triton forward calls") == 1 and errs.pop("triton backward calls") == 1, "Triton not used"
    bad = {k: v for k, v in errs.items() if not v < TOL}
    assert not bad, f"{name}: relative errors above {TOL}: {bad}"


def _run_interpreted_cases() -> None:
    """Script entry (``TRITON_INTERPRET=1``): every case's errors as one JSON line."""
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    torch.set_num_threads(1)
    print_results(case_results({name: functools.partial(case, "cpu") for name, case in CASES.items()}))


@pytest.fixture(scope="module")
def interpreted() -> dict[str, dict]:
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    return interpreted_results(__file__, timeout=600)


@pytest.mark.parametrize("name", CASES)
def test_interpreted(interpreted: dict[str, dict], name: str) -> None:
    check(name, dict(interpreted[name]))


@pytest.fixture
def cuda_fp32(monkeypatch: pytest.MonkeyPatch, set_tf32: Callable[[bool], None]) -> None:
    """A CUDA device, full fp32 products (the kernels follow PyTorch's TF32 flag) and the kernels switched on."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    monkeypatch.setattr(state_pass_module, "TRITON_ON_CUDA", True)  # the kernels even without TF32
    set_tf32(False)


@pytest.mark.gpu
@pytest.mark.parametrize("name", CASES)
def test_on_cuda(name: str, cuda_fp32: None) -> None:
    check(name, CASES[name]("cuda"))


@pytest.mark.gpu
def test_kernels_at_model_dims_on_cuda(cuda_fp32: None) -> None:
    check("kernels", case_kernels("cuda", MODEL_SHAPES))


def test_round_to_tf32_rounds_to_nearest_with_ties_away() -> None:
    """TF32 keeps 10 mantissa bits: in [1, 2) its step is 2**-10. Halfway cases round away from zero (PTX's
    cvt.rna), a carry moves into the exponent, and infinities and zeros stay."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    from archscale.kernels.delta_rule.state_pass_triton import round_to_tf32

    step = 2.0**-10
    cases = {1 + step / 2: 1 + step, 1 + step / 2 - 2.0**-23: 1.0, 1 + step / 4: 1.0, 1 + 1.5 * step: 1 + 2 * step,
             -(1 + step / 2): -(1 + step), 2 - 2.0**-23: 2.0, 3 * 2.0**-130: 3 * 2.0**-130, 0.0: 0.0,
             float("inf"): float("inf"), float("-inf"): float("-inf")}
    x = torch.tensor(list(cases), dtype=torch.float32)
    assert round_to_tf32(x).tolist() == list(cases.values())
    assert x.tolist() == list(cases)  # the input is left alone
    # NaNs stay NaN: CUDA's (all bits set, either sign), one with only low payload bits, PyTorch's quiet NaN.
    nans = torch.tensor([0x7FFFFFFF, -1, 0x7F800001, 0x7FC00000], dtype=torch.int32).view(torch.float32)
    assert round_to_tf32(nans).isnan().all()


def test_dispatch_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the interpreter, CPU tensors take the loop; float64 never takes the kernels."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not state_pass_module._on_triton(torch.zeros(1))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert state_pass_module._on_triton(torch.zeros(1)) == HAS_TRITON
    assert not state_pass_module._on_triton(torch.zeros(1, dtype=torch.float64))


@pytest.mark.parametrize("setting, tf32, expected", [(None, True, True), (None, False, False), (True, False, True),
                                                     (False, True, False)])
def test_dispatch_on_cuda(monkeypatch: pytest.MonkeyPatch, set_tf32: Callable[[bool], None], setting: bool | None,
                          tf32: bool, expected: bool) -> None:
    """On CUDA the kernels run where TF32 is allowed (they lose to the loop in full fp32 on the H100), unless
    TRITON_ON_CUDA forces a path. A stand-in tensor: only .is_cuda and .dtype are read."""
    monkeypatch.setattr(state_pass_module, "TRITON_ON_CUDA", setting)
    set_tf32(tf32)
    on_cuda = SimpleNamespace(is_cuda=True, dtype=torch.float32)
    assert state_pass_module._on_triton(on_cuda) == (expected and HAS_TRITON)  # type: ignore[arg-type]


@pytest.mark.gpu
def test_kernels_with_tf32_err_like_the_loop_with_tf32(set_tf32: Callable[[bool], None]) -> None:
    """With TF32 allowed (the Trainer's default, under which CUDA runs the kernels) the kernels' products round
    their inputs to TF32 as PyTorch's do in the loop: at GDN's sizes their error against float64 is within 2x of
    the loop's own error under the same flag, and that error is TF32's, not fp32's (the flag took effect)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    set_tf32(True)
    kernels = case_kernels("cuda", MODEL_SHAPES)
    loop = case_kernels("cuda", MODEL_SHAPES, loop_only=True)
    assert max(loop.values()) > 1e-5, f"the loop's products did not use TF32: {loop}"
    worse = {k: (kernels[k], loop[k]) for k in loop if not kernels[k] <= 2 * loop[k]}
    assert not worse, f"kernel error vs loop error (both TF32), above 2x: {worse}"


if __name__ == "__main__":
    _run_interpreted_cases()
