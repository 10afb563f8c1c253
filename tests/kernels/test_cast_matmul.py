"""``cast_matmul`` (archscale.kernels.cross_entropy.cast_matmul) against a float64 product of the operands rounded
to the dot dtype: float32 and 16-bit operands, transposed views (the layouts the fused cross-entropy passes),
sizes that cut every tile at the edge, split-K, 16-bit and float32 outputs, empty reductions.

The CPU cases run in one subprocess under ``TRITON_INTERPRET=1`` (this file as a script). Triton 3.8's interpreter
multiplies bf16 tiles wrongly (it reads their bits as another type), so there the dot dtype is fp16, the same
kernel with another constexpr; bf16, the dtype the loss uses, runs on CUDA under ``@pytest.mark.gpu``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # kernel_helpers, also when this file runs as a script
from kernel_helpers import case_results, interpreted_results, print_results, rel_err  # noqa: E402

HAS_TRITON = importlib.util.find_spec("triton") is not None
# (M, K, N): every dimension off the tile grid, one smaller than a tile, a reduction shorter than one block.
SHAPES = [(37, 50, 29), (16, 16, 16), (5, 70, 33), (40, 9, 18)]


def case_products(device: str, dot_dtype: torch.dtype, blocks_small: bool = True) -> dict[str, float]:
    """Largest relative error of each layout / dtype / split combination against float64."""
    from archscale.kernels.cross_entropy.cast_matmul import Blocks, cast_matmul

    blocks = Blocks(m=16, n=16, k=16, group_m=2, num_warps=4, num_stages=1) if blocks_small else None
    gen = torch.Generator().manual_seed(0)
    errs: dict[str, float] = {}
    for m, k, n in SHAPES:
        for a_dtype, b_dtype in ((torch.float32, dot_dtype), (dot_dtype, torch.float32)):
            a = torch.randn(m, k, generator=gen).to(device, a_dtype)
            b_t = torch.randn(n, k, generator=gen).to(device, b_dtype)  # b used as a transposed view, as Wᵀ is
            for layout, (x, y) in {"a @ bᵀ": (a, b_t.t()), "(b @ aᵀ)ᵀ": (b_t, a.t())}.items():
                want = x.to(dot_dtype).double() @ y.to(dot_dtype).double()
                for out_dtype, split in ((torch.float32, 1), (torch.float32, 2), (dot_dtype, 1)):
                    out = torch.full((want.shape[1], want.shape[0]), float("nan"), device=device, dtype=out_dtype).t()
                    cast_matmul(x, y, out, dot_dtype=dot_dtype, split_k=split, blocks=blocks)
                    key = f"{layout}, {str(a_dtype)[6:]} x {str(b_dtype)[6:]} -> {str(out_dtype)[6:]}, split {split}"
                    errs[key] = max(errs.get(key, 0.0), rel_err(out, want))
    return errs


# float32 results keep the float32 sum's error; a 16-bit result costs up to a bf16 half-ulp (the looser of the two).
TOL_FP32_OUT, TOL_16BIT_OUT = 1e-5, 1e-2


def check(errs: dict[str, float]) -> None:
    assert "exception" not in errs, errs.get("exception")
    bad = {}
    for key, err in errs.items():
        out_dtype = key.split("-> ")[1].split(",")[0]
        tol = TOL_FP32_OUT if out_dtype == "float32" else TOL_16BIT_OUT
        if not err < tol:
            bad[key] = err
    assert not bad, f"relative errors above tolerance: {bad}"


def _run_interpreted_cases() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    torch.set_num_threads(1)
    print_results(case_results({"fp16": functools.partial(case_products, "cpu", torch.float16)}))


@pytest.fixture(scope="module")
def interpreted() -> dict[str, dict]:
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    return interpreted_results(__file__, timeout=300)


def test_interpreted(interpreted: dict[str, dict]) -> None:
    check(dict(interpreted["fp16"]))


def test_readable_errors() -> None:
    pytest.importorskip("triton")
    from archscale.kernels.cross_entropy.cast_matmul import cast_matmul

    a, b = torch.zeros(4, 3), torch.zeros(3, 5)
    with pytest.raises(ValueError, match=r"\(4, 3\) @ \(3, 5\) do not give out \(5, 4\)"):
        cast_matmul(a, b, torch.zeros(5, 4))
    with pytest.raises(ValueError, match="split_k must be 1 or 2"):
        cast_matmul(a, b, torch.zeros(4, 5), split_k=4)
    with pytest.raises(ValueError, match="split_k=2 adds float32 partial sums"):
        cast_matmul(a, b, torch.zeros(4, 5, dtype=torch.bfloat16), split_k=2)
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        cast_matmul(a, b, torch.zeros(4, 5), dot_dtype=torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("dot_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("blocks_small", [True, False], ids=["small tiles", "default tiles"])
def test_on_cuda(dot_dtype: torch.dtype, blocks_small: bool) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    check(case_products("cuda", dot_dtype, blocks_small))


@pytest.mark.gpu
def test_on_cuda_at_the_loss_sizes() -> None:
    """The two products of one 1 536-token chunk at Phi-4-mini-flash's head size, float32 head, against cuBLAS on
    the head's bf16 copy (the path the copy replaces): the same rounding of the operands, so only the float32
    sums differ. Over the head's 200 064 rows those sums err by ~1e-4 (the first run on the H100 found split 2
    1.4e-4 from cuBLAS), so grad_h is held to float64 products of the same bf16 operands: no worse than cuBLAS."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from archscale.kernels.cross_entropy.cast_matmul import cast_matmul

    torch.manual_seed(0)
    c, v, d = 1536, 200_064, 2048
    w = torch.randn(v, d, device="cuda") * d**-0.5
    h = torch.randn(c, d, device="cuda", dtype=torch.bfloat16)
    logits = cast_matmul(w, h.t(), torch.empty(c, v, device="cuda", dtype=torch.bfloat16).t()).t()
    want = h @ w.to(torch.bfloat16).t()
    assert rel_err(logits, want) < 4e-3  # both rounded to bf16 once: within a bf16 half-ulp of each other
    dl = (torch.randn(c, v, device="cuda") * 1e-3).to(torch.bfloat16)
    exact = dl.double() @ w.to(torch.bfloat16).double()
    cublas_err = rel_err(torch.mm(dl, w.to(torch.bfloat16), out_dtype=torch.float32), exact)
    for split in (1, 2):
        grad_h = cast_matmul(w.t(), dl.t(), torch.empty(c, d, device="cuda").t(), split_k=split).t()
        err = rel_err(grad_h, exact)
        print(f"grad_h split {split}: {err:.2e} from float64 (cuBLAS on the bf16 copy: {cublas_err:.2e})")
        assert err <= 1.1 * cublas_err + 1e-6, (split, err, cublas_err)


if __name__ == "__main__":
    _run_interpreted_cases()
