"""Triton selective scan (archscale.kernels.selective_scan.triton_scan) against the sequential reference: every
output and every input gradient, dense and varlen, every option, awkward sizes; dispatch and its errors.

Interpreter cases. Triton decides when a kernel module is imported whether its ``@triton.jit`` functions compile
for the GPU or run in the interpreter (``TRITON_INTERPRET=1``), for the whole process. Setting the variable in this
process would turn the GPU tests of a later module into interpreter runs, so the CPU cases run in one subprocess:
this file run as a script with ``TRITON_INTERPRET=1``, which prints every case's relative errors as JSON. One test
per case then checks them (below 1e-4 in fp32; each gradient is checked to be non-zero in the reference, so the
comparison is not vacuous). The whole subprocess takes ~30 s on a 2-core CPU.

GPU cases (``@pytest.mark.gpu``) compare at realistic sizes in fp32 (1e-4) and bf16 (1e-2), poison the allocator
with NaN first so that an unwritten output element fails, and check that ``torch.compile(fullgraph=True)`` of a
function using the scan traces without a graph break.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))  # kernel_helpers, also when this file runs as a script
from kernel_helpers import case_results, interpreted_results, print_results, rel_err, split_cu  # noqa: E402

from archscale.kernels.selective_scan import selective_scan, selective_scan_reference  # noqa: E402

TOL_FP32 = 1e-4
TOL_BF16 = 1e-2
HAS_TRITON = importlib.util.find_spec("triton") is not None

# Tiny tiles for the interpreter: a saved state every 4 steps, 2 recomputed states in registers, 4 (forward) / 2
# (backward) channels per program, so that a few dozen steps cross many segment and piece boundaries and several
# channel blocks.
SMALL = {"block_d_fwd": 4, "block_d_bwd": 2, "warps_fwd": 1, "warps_bwd": 1, "prefetch": 2, "ckpt_every": 4,
         "substeps": 2}


# ------------------------------------------------------------------------------------------- shared case builders
def make_inputs(
    Bsz: int, T: int, Dch: int, N: int, *, z: bool = True, D: bool = True, bias: bool = True, h0: int | None = None,
    device: str = "cpu", dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Random inputs in the ranges a Mamba layer sees (A = -exp(A_log) in [-8, -0.1], Δ around softplus(0))."""
    inp = {
        "u": torch.randn(Bsz, T, Dch),
        "delta": torch.randn(Bsz, T, Dch) * 0.5,
        "A": -torch.exp(torch.rand(Dch, N) * 4.4 - 2.3),
        "B": torch.randn(Bsz, T, N),
        "C": torch.randn(Bsz, T, N),
    }
    if z:
        inp["z"] = torch.randn(Bsz, T, Dch)
    if D:
        inp["D"] = torch.randn(Dch)
    if bias:
        inp["delta_bias"] = torch.randn(Dch) * 0.5
    if h0 is not None:
        inp["initial_state"] = torch.randn(h0, Dch, N)
    return {k: v.to(device=device, dtype=dtype) for k, v in inp.items()}


def compare(
    fast: Callable[..., tuple],
    inputs: dict[str, torch.Tensor],
    reference: Callable[..., tuple] = selective_scan_reference,
    upcast: bool = False,
    **kwargs: object,
) -> dict[str, float]:
    """Relative error of every output and every input gradient of ``fast`` vs ``reference``, with the same random
    upstream gradient for every output. ``upcast``: the reference runs in fp32 on the same (rounded) values."""
    results: list[tuple[list[torch.Tensor], dict[str, torch.Tensor | None]]] = []
    upstream: list[torch.Tensor | None] | None = None
    for fn in (reference, fast):
        leaves = {
            k: (v.float() if upcast and fn is reference else v).detach().clone().requires_grad_(True)
            for k, v in inputs.items()
        }
        outs = list(fn(**leaves, **kwargs))
        if upstream is None:
            upstream = [torch.randn_like(o, dtype=torch.float32) if o is not None else None for o in outs]
        assert [o is None for o in outs] == [g is None for g in upstream], "outputs differ in which are returned"
        pairs = [(o, g.to(o.dtype)) for o, g in zip(outs, upstream) if o is not None and g is not None]
        torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        results.append(([o.detach() for o, _ in pairs], {k: v.grad for k, v in leaves.items()}))
    (ref_outs, ref_grads), (outs, grads) = results
    errs = {f"out{i}": rel_err(a.float(), b.float()) for i, (a, b) in enumerate(zip(outs, ref_outs))}
    for name, g_ref in ref_grads.items():
        g = grads[name]
        if g is None or g_ref is None or not torch.isfinite(g).all() or g_ref.abs().sum() == 0:
            errs[f"d{name}"] = float("inf")  # missing, non-finite, or a vacuous (all-zero) comparison
        else:
            errs[f"d{name}"] = rel_err(g.float(), g_ref.float())
    return errs


# ------------------------------------------------------------------------------------------- interpreter cases
def _triton(**cfg: int) -> Callable[..., tuple]:
    from archscale.kernels.selective_scan.triton_scan import (
        ScanConfig,
        selective_scan_triton,
    )

    def run(**kw: object) -> tuple:
        return selective_scan_triton(**kw, config=ScanConfig(**cfg))

    return run


def _public(**kw: object) -> tuple:
    return selective_scan(**kw, impl="triton")


def case_dense_all_options() -> dict[str, float]:
    # D = 6 and N = 3 leave channel blocks and the padded state partly empty; T = 30 spans 8 segments (the last
    # one partial).
    inp = make_inputs(2, 30, 6, 3, h0=2)
    return compare(_triton(**SMALL), inp, return_final_state=True, return_ungated=True)


def case_dense_minimal() -> dict[str, float]:
    # No z, D, bias or initial state; Δ given directly (no softplus); a whole segment recomputed in registers.
    inp = make_inputs(2, 17, 8, 4, z=False, D=False, bias=False)
    inp["delta"] = F.softplus(inp["delta"])
    cfg = {**SMALL, "prefetch": 4, "ckpt_every": 8, "substeps": 8, "block_d_fwd": 8, "block_d_bwd": 4}
    return compare(_triton(**cfg), inp, delta_softplus=False, return_final_state=True)


def case_dense_time_chunks() -> dict[str, float]:
    # Time cut into chunks (forward 8 steps, backward 4, the last partial): the first passes' chunk summaries are
    # folded into each chunk's entering state and carry, and dA, dD, d bias are summed over chunks.
    inp = make_inputs(2, 30, 6, 3, h0=2)
    cfg = {**SMALL, "time_chunk_fwd": 8, "time_chunk_bwd": 4}
    return compare(_triton(**cfg), inp, return_final_state=True, return_ungated=True)


def case_dense_minimal_time_chunks() -> dict[str, float]:
    # No z, D, bias, initial state or final-state gradient, with chunks: T = 17 over chunks of 8 and 16.
    inp = make_inputs(2, 17, 8, 4, z=False, D=False, bias=False)
    inp["delta"] = F.softplus(inp["delta"])
    cfg = {**SMALL, "prefetch": 4, "ckpt_every": 8, "substeps": 8, "time_chunk_fwd": 16, "time_chunk_bwd": 8}
    return compare(_triton(**cfg), inp, delta_softplus=False)


def case_varlen_time_chunks() -> dict[str, float]:
    # Documents of 1, 9, 3, 17, 2 and 6 tokens over chunks of 4 (forward) and 8 (backward) steps: documents of one
    # chunk and of several, chunk slots between documents that no program owns, a one-token document.
    lengths = [1, 9, 3, 17, 2, 6]
    inp = make_inputs(1, sum(lengths), 6, 3, h0=len(lengths))
    cfg = {**SMALL, "time_chunk_fwd": 4, "time_chunk_bwd": 8}
    return compare(_triton(**cfg), inp, cu_seqlens=split_cu(lengths), return_final_state=True,
                   return_ungated=True)


def case_dense_length_one() -> dict[str, float]:
    inp = make_inputs(1, 1, 3, 2, h0=1)
    return compare(_triton(**SMALL), inp, return_final_state=True, return_ungated=True)


def case_public_default_tiles() -> dict[str, float]:
    # Through selective_scan(impl="triton") with the default tiles and N = 16 (the Mamba default).
    inp = make_inputs(2, 21, 5, 16)
    return compare(_public, inp, return_ungated=True)


def case_strided_inputs() -> dict[str, float]:
    # Views as the mixer makes them: u, z = in_proj(x).chunk(2, -1); B, C split from x_proj(u) (batch and time
    # strides, no copy); plus a delta and an A whose last stride is not 1 (copied).
    Bsz, T, Dch, N = 2, 23, 6, 4
    inp = make_inputs(Bsz, T, Dch, N, z=False, h0=Bsz)
    inp["uz"] = torch.randn(Bsz, T, 2 * Dch)
    inp["xp"] = torch.randn(Bsz, T, 3 + 2 * N)
    inp["delta"] = inp["delta"].transpose(1, 2).contiguous()  # (B, D, T): used as delta.transpose(1, 2)
    inp["A"] = inp["A"].t().contiguous()  # (N, D): used as A.t()
    del inp["u"], inp["B"], inp["C"]

    def views(fn: Callable[..., tuple]) -> Callable[..., tuple]:
        def run(uz: torch.Tensor, xp: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, **kw: object) -> tuple:
            v = {"u": uz[..., :Dch], "z": uz[..., Dch:], "B": xp[..., 3 : 3 + N], "C": xp[..., 3 + N :],
                 "delta": delta.transpose(1, 2), "A": A.t()}
            assert not any(t.is_contiguous() for t in v.values())
            return fn(**v, **kw)

        return run

    return compare(views(_triton(**SMALL)), inp, reference=views(selective_scan_reference),
                   return_final_state=True, return_ungated=True)


def case_varlen_all_options() -> dict[str, float]:
    # Documents of 1, 9, 3, 17 and 2 tokens: starts off segment boundaries, 9 and 17 cross several segments (S = 4).
    lengths = [1, 9, 3, 17, 2]
    inp = make_inputs(1, sum(lengths), 6, 3, h0=len(lengths))
    return compare(_triton(**SMALL), inp, cu_seqlens=split_cu(lengths), return_final_state=True,
                   return_ungated=True)


def case_varlen_public() -> dict[str, float]:
    lengths = [5, 1, 12, 16]
    inp = make_inputs(1, sum(lengths), 8, 4, D=False)
    return compare(_public, inp, cu_seqlens=split_cu(lengths), return_final_state=True)


def case_compile_fullgraph() -> dict[str, float]:
    """torch.compile(fullgraph=True) (AOTAutograd, eager kernels: CPU-cheap) of a function around the scan:
    no graph break, and the same outputs and gradients as the eager call."""
    inp = make_inputs(2, 12, 4, 2)
    cu = None

    def f(u, delta, A, B, C, D, z, delta_bias):  # noqa: ANN001, ANN202
        r = selective_scan(u * 2, delta, A, B, C, D, z, delta_bias, cu_seqlens=cu, return_final_state=True,
                           impl="triton")
        return r.out.sin(), r.final_state

    explain = torch._dynamo.explain(f)(**inp)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    errs = {}
    results = []
    for fn in (f, compiled):
        leaves = {k: v.clone().requires_grad_(True) for k, v in inp.items()}
        out, final = fn(**leaves)
        (out.square().sum() + final.sum()).backward()
        results.append([out, final, *(leaves[k].grad for k in inp)])
    for name, a, b in zip(["out", "final", *inp], *results):
        errs[name] = rel_err(b.detach(), a.detach())
    errs["graph_breaks"] = float(explain.graph_break_count)
    return errs


def errors_interpreted() -> dict[str, str]:
    """Error messages that need the interpreter to get past the device check."""
    inp = make_inputs(1, 5, 3, 2)
    msgs = {}
    for name, call in {
        "float64": lambda: selective_scan(**{k: v.double() for k, v in inp.items()}, impl="triton"),
        "config": lambda: _triton(**{**SMALL, "prefetch": 3})(**inp),
        "varlen_batch": lambda: selective_scan(**make_inputs(2, 5, 3, 2), cu_seqlens=split_cu([2, 3]),
                                               impl="triton"),
        "cu_seqlens_values": lambda: selective_scan(**inp, cu_seqlens=split_cu([2, 2]), impl="triton"),
    }.items():
        try:
            call()
            msgs[name] = "no error"
        except ValueError as e:
            msgs[name] = str(e)
    return msgs


CASES: dict[str, Callable[[], dict[str, float]]] = {
    "dense_all_options": case_dense_all_options,
    "dense_minimal": case_dense_minimal,
    "dense_time_chunks": case_dense_time_chunks,
    "dense_minimal_time_chunks": case_dense_minimal_time_chunks,
    "varlen_time_chunks": case_varlen_time_chunks,
    "dense_length_one": case_dense_length_one,
    "public_default_tiles": case_public_default_tiles,
    "strided_inputs": case_strided_inputs,
    "varlen_all_options": case_varlen_all_options,
    "varlen_public": case_varlen_public,
    "compile_fullgraph": case_compile_fullgraph,
}


def _run_interpreted_cases() -> None:
    """Script entry (``TRITON_INTERPRET=1``): every case's errors as one JSON line."""
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    torch.set_num_threads(1)
    results = case_results(CASES)
    results["_errors"] = errors_interpreted()
    print_results(results)


@pytest.fixture(scope="module")
def interpreted() -> dict[str, dict]:
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    return interpreted_results(__file__, timeout=900)


@pytest.mark.parametrize("case", list(CASES))
def test_interpreted_matches_reference(interpreted: dict[str, dict], case: str) -> None:
    errs = interpreted[case]
    assert "exception" not in errs, errs.get("exception")
    assert any(k.startswith("d") for k in errs), "no gradient was compared"
    bad = {k: v for k, v in errs.items() if not v <= TOL_FP32}
    assert not bad, f"{case}: relative errors above {TOL_FP32}: {bad} (all: {errs})"


def test_interpreted_errors(interpreted: dict[str, dict]) -> None:
    msgs = interpreted["_errors"]
    assert "float64" in msgs["float64"] and "impl='reference'" in msgs["float64"], msgs["float64"]
    assert "ScanConfig.prefetch" in msgs["config"], msgs["config"]
    assert "batch size 1" in msgs["varlen_batch"], msgs["varlen_batch"]
    assert "cu_seqlens" in msgs["cu_seqlens_values"], msgs["cu_seqlens_values"]


# ------------------------------------------------------------------------------------------- dispatch (in process)
def test_auto_on_cpu_is_the_reference() -> None:
    inp = make_inputs(2, 9, 4, 3, h0=2)
    auto = selective_scan(**inp, return_final_state=True, return_ungated=True)
    ref = selective_scan_reference(**inp, return_final_state=True, return_ungated=True)
    for a, b in zip(auto, ref):
        assert torch.equal(a, b)


def test_dispatch_errors() -> None:
    inp = make_inputs(1, 5, 3, 2)
    with pytest.raises(ValueError, match="impl must be one of"):
        selective_scan(**inp, impl="cuda")  # type: ignore[arg-type]
    # Limits of mamba-ssm's interface are reported before trying to import it.
    with pytest.raises(ValueError, match="varlen"):
        selective_scan(**inp, cu_seqlens=split_cu([2, 3]), impl="mamba_ssm")
    with pytest.raises(ValueError, match="initial_state"):
        selective_scan(**inp, initial_state=torch.zeros(1, 3, 2), impl="mamba_ssm")
    with pytest.raises(ValueError, match="ungated"):
        selective_scan(**inp, return_ungated=True, impl="mamba_ssm")


@pytest.mark.skipif(importlib.util.find_spec("mamba_ssm") is not None, reason="mamba-ssm is installed")
def test_mamba_ssm_missing_is_a_clear_error() -> None:
    inp = make_inputs(1, 5, 3, 2)
    with pytest.raises(ValueError, match=r"needs mamba-ssm .*archscale\[mamba\]"):
        selective_scan(**inp, impl="mamba_ssm")


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_on_cpu_without_interpreter_is_a_clear_error() -> None:
    from archscale.kernels.selective_scan import triton_scan

    if triton_scan.INTERPRETED:
        pytest.skip("this process runs Triton in the interpreter (TRITON_INTERPRET=1)")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        selective_scan(**make_inputs(1, 5, 3, 2), impl="triton")


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_config_segment_shorter_than_its_pieces_is_refused() -> None:
    """ScanConfig is checked before any launch: the saved-state interval must hold whole prefetch groups and whole
    backward pieces."""
    from archscale.kernels.selective_scan.triton_scan import ScanConfig, selective_scan_triton

    for bad, name in ((ScanConfig(ckpt_every=2, substeps=4), "substeps (4)"),
                      (ScanConfig(ckpt_every=2, prefetch=4, substeps=2), "prefetch (4)")):
        with pytest.raises(ValueError, match=r"ScanConfig.ckpt_every \(2\) must be a multiple") as err:
            selective_scan_triton(**make_inputs(1, 5, 3, 2), config=bad)
        assert name in str(err.value), str(err.value)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_config_time_chunk_is_checked() -> None:
    """A time chunk must be 0 (automatic) or a power-of-two multiple of the saved-state interval."""
    from archscale.kernels.selective_scan.triton_scan import ScanConfig, selective_scan_triton

    with pytest.raises(ValueError, match=r"ScanConfig.time_chunk_fwd \(16\) must be 0 \(automatic\) or a multiple "
                                         r"of ckpt_every \(32\)"):
        selective_scan_triton(**make_inputs(1, 5, 3, 2), config=ScanConfig(time_chunk_fwd=16))
    with pytest.raises(ValueError, match=r"ScanConfig.time_chunk_bwd must be a power of two, got 48"):
        selective_scan_triton(**make_inputs(1, 5, 3, 2), config=ScanConfig(time_chunk_bwd=48))


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_time_chunk_fills_the_gpu_and_stays_whole_off_it() -> None:
    """The automatic chunk length: no chunks when the (row, channel block) programs fill a quarter of the SMs'
    resident slots (WARPS_PER_SM = 8 each); else chunks for CHUNK_WAVES (8) waves, at least ckpt_every steps, at
    most MAX_TIME_CHUNKS chunks; one chunk per sequence off CUDA."""
    from unittest import mock

    from archscale.kernels.selective_scan import triton_scan as ts

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert ts._time_chunk(0, 4096, 1, 128, 1, 32, cpu) == 4096
    assert ts._time_chunk(0, 1000, 1, 128, 1, 32, cpu) == 1024
    assert ts._time_chunk(64, 4096, 4, 128, 1, 32, cpu) == 64
    with mock.patch.object(ts, "_sm_count", lambda device: 132):  # 1056 resident one-warp programs
        # B1 T16384, 128 channel blocks: 16384·128 / (8·1056) = 248.2 -> 256 steps, 64 chunks, 8192 programs.
        assert ts._time_chunk(0, 16384, 1, 128, 1, 32, cuda) == 256
        assert ts._time_chunk(0, 16384, 1, 128, 2, 32, cuda) == 512  # two warps per program: half the slots
        assert ts._time_chunk(0, 16384, 1, 256, 1, 32, cuda) == 512  # 256 programs: under a quarter of the slots
        assert ts._time_chunk(0, 4096, 1, 264, 1, 32, cuda) == 4096  # 264: a quarter of the slots, no split
        assert ts._time_chunk(0, 4096, 4, 128, 1, 32, cuda) == 4096  # B4 D4096 forward: 512 programs
        assert ts._time_chunk(0, 1 << 20, 1, 1, 1, 32, cuda) == (1 << 20) // ts.MAX_TIME_CHUNKS
        assert ts._time_chunk(0, 100, 1, 1, 1, 32, cuda) == 32  # never below ckpt_every


# ------------------------------------------------------------------------------------------- GPU
def _poison_cuda_allocator() -> None:
    """Fill 1 GiB of the caching allocator with NaN and free it: outputs allocated next reuse that memory, so an
    element the kernel never writes shows up as NaN in the comparison."""
    x = torch.full((256 * 2**20,), float("nan"), device="cuda")
    del x


def _gpu_case(varlen: bool, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    Dch, N = 320, 16  # 320: a partial channel block
    if varlen:
        lengths = [1, 300, 17, 700, 63, 64, 2]  # T = 1147; starts off chunk boundaries, a one-token document
        inp = make_inputs(1, sum(lengths), Dch, N, h0=len(lengths), device="cuda", dtype=dtype)
        return inp, {"cu_seqlens": split_cu(lengths).cuda()}
    return make_inputs(2, 1029, Dch, N, h0=2, device="cuda", dtype=dtype), {}


@pytest.mark.gpu
@pytest.mark.parametrize("varlen", [False, True], ids=["dense", "varlen"])
def test_gpu_fp32_matches_reference(varlen: bool) -> None:
    torch.manual_seed(0)
    inp, kw = _gpu_case(varlen, torch.float32)
    _poison_cuda_allocator()
    errs = compare(_public, inp, return_final_state=True, return_ungated=True, **kw)
    bad = {k: v for k, v in errs.items() if not v <= TOL_FP32}
    assert not bad, f"relative errors above {TOL_FP32}: {bad} (all: {errs})"


@pytest.mark.gpu
@pytest.mark.parametrize("varlen", [False, True], ids=["dense", "varlen"])
def test_gpu_bf16_matches_fp32_reference(varlen: bool) -> None:
    torch.manual_seed(0)
    inp, kw = _gpu_case(varlen, torch.bfloat16)
    _poison_cuda_allocator()
    errs = compare(_public, inp, upcast=True, return_final_state=True, return_ungated=True, **kw)
    bad = {k: v for k, v in errs.items() if not v <= TOL_BF16}
    assert not bad, f"relative errors above {TOL_BF16}: {bad} (all: {errs})"


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", [{"ckpt_every": 8, "substeps": 1, "prefetch": 1},
                                 {"block_d_fwd": 64, "block_d_bwd": 16, "prefetch": 4, "substeps": 4, "ckpt_every": 64},
                                 {"time_chunk_fwd": 1 << 30, "time_chunk_bwd": 1 << 30},
                                 {"time_chunk_fwd": 64, "time_chunk_bwd": 256, "block_d_fwd": 16, "block_d_bwd": 8,
                                  "prefetch": 2, "substeps": 1}],
                         ids=["short_segments", "wide_blocks", "whole_sequences", "mixed_chunks"])
def test_gpu_other_tiles(cfg: dict[str, int]) -> None:
    """The launch shapes the benchmark sweeps are correct too (the default, automatic time chunks of 32 steps at
    this size, is covered above)."""
    torch.manual_seed(0)
    inp, kw = _gpu_case(True, torch.float32)
    errs = compare(_triton(**cfg), inp, return_final_state=True, return_ungated=True, **kw)
    bad = {k: v for k, v in errs.items() if not v <= TOL_FP32}
    assert not bad, f"relative errors above {TOL_FP32}: {bad} (all: {errs})"


@pytest.mark.gpu
@pytest.mark.parametrize("Bsz,T,Dch,N,lengths", [(1, 1, 32, 1, None), (3, 1, 32, 2, None), (1, 3, 32, 1, [1, 1, 1]),
                                                  (1, 70, 32, 5, [64, 1, 5])])
def test_gpu_degenerate_sizes(Bsz: int, T: int, Dch: int, N: int, lengths: list[int] | None) -> None:
    """Triton compiles integer arguments equal to 1 as constants (T, N, strides): a path the interpreter does
    not take."""
    torch.manual_seed(0)
    inp = make_inputs(Bsz, T, Dch, N, h0=Bsz if lengths is None else len(lengths), device="cuda")
    kw = {} if lengths is None else {"cu_seqlens": split_cu(lengths).cuda()}
    errs = compare(_public, inp, return_final_state=True, return_ungated=True, **kw)
    bad = {k: v for k, v in errs.items() if not v <= TOL_FP32}
    assert not bad, f"relative errors above {TOL_FP32}: {bad} (all: {errs})"


@pytest.mark.gpu
@pytest.mark.parametrize("Bsz,T,Dch,N", [(1, 70, 3, 5), (1, 70, 16, 5), (2, 300, 16, 16), (1, 300, 5, 3)])
def test_gpu_few_channels(Bsz: int, T: int, Dch: int, N: int) -> None:
    """Fewer channels than one block: the first (chunked) kernel gave wrong gradients here on the H100 (D < 32 over
    more than one chunk), so it was fenced off; the sequential kernel must match the reference at any D."""
    torch.manual_seed(0)
    inp = make_inputs(Bsz, T, Dch, N, h0=Bsz, device="cuda")
    errs = compare(_public, inp, return_final_state=True, return_ungated=True)
    bad = {k: v for k, v in errs.items() if not v <= TOL_FP32}
    assert not bad, f"relative errors above {TOL_FP32}: {bad} (all: {errs})"


@pytest.mark.gpu
def test_gpu_auto_uses_a_fast_path() -> None:
    inp = make_inputs(2, 64, 32, 16, device="cuda")
    auto = selective_scan(**inp).out
    fast = "mamba_ssm" if importlib.util.find_spec("mamba_ssm") is not None else "triton"
    assert torch.equal(auto, selective_scan(**inp, impl=fast).out)


@pytest.mark.gpu
def test_gpu_compile_fullgraph_no_graph_break() -> None:
    """A small Mamba-like function around the scan compiles with inductor in one graph, and matches eager."""
    torch.manual_seed(0)
    Dm, Dch, N, T = 64, 128, 16, 256
    W = (torch.randn(Dm, 2 * Dch, device="cuda") / Dm**0.5).requires_grad_(True)
    Wx = (torch.randn(Dch, 1 + 2 * N, device="cuda") / Dch**0.5).requires_grad_(True)
    A = (-torch.exp(torch.rand(Dch, N, device="cuda"))).requires_grad_(True)
    x = torch.randn(2, T, Dm, device="cuda")

    def f(x: torch.Tensor) -> torch.Tensor:
        u, z = (x @ W).chunk(2, dim=-1)
        dt, B, C = (u @ Wx).split([1, N, N], dim=-1)
        return selective_scan(u, dt.expand_as(u), A, B, C, z=z, impl="triton").out.square().mean()

    explain = torch._dynamo.explain(f)(x)
    assert explain.graph_break_count == 0, explain.break_reasons
    grads = []
    for fn in (f, torch.compile(f, fullgraph=True)):
        for p in (W, Wx, A):
            p.grad = None
        loss = fn(x)
        loss.backward()
        grads.append([loss.detach(), *(p.grad.clone() for p in (W, Wx, A))])
    for a, b in zip(*grads):
        assert rel_err(b, a) < TOL_FP32


@pytest.mark.gpu
def test_gpu_mamba_ssm_matches_reference() -> None:
    pytest.importorskip("mamba_ssm")
    inp = make_inputs(2, 1029, 320, 16, device="cuda")

    def mamba(**kw: object) -> tuple:
        return selective_scan(**kw, impl="mamba_ssm")

    errs = compare(mamba, inp, return_final_state=True)
    bad = {k: v for k, v in errs.items() if not v <= TOL_FP32}
    assert not bad, f"relative errors above {TOL_FP32}: {bad} (all: {errs})"


if __name__ == "__main__":
    _run_interpreted_cases()
