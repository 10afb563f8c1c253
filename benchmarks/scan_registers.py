"""Registers and spills of the selective-scan kernels for an H100 (sm_90), without a GPU.

A kernel variant that spills registers runs much slower, and nothing else warns about it. On the H100 the
backward's dL/dh_T variant spilled and ran at 7.8-9.5 ms instead of 5.5 ms in SambaY (benchmarks/RESULTS.md,
2026-12-05). This script shows such a spill on a CPU machine, before any device time is spent. It calls the scan's
real launchers on CPU tensors shaped like the Mamba mixer's, with the Triton kernels swapped for recorders. Each
recorded launch is then compiled for sm_90 with the specialisations Triton would give it on the device: ints equal
to 1 become constants, pointers and ints divisible by 16 get that hint. ptxas (shipped with Triton) reports
registers and spill bytes for each launch::

    python benchmarks/scan_registers.py                       # the SambaY d16 layer: d_inner 3968, N 16
    python benchmarks/scan_registers.py --d-inner 4000 --json regs.json

Off CUDA the launchers run each sequence as one time chunk. The "time chunks" case asks for chunks explicitly, so
that the chunked variants and the summary kernel are compiled too. The numbers belong to the installed Triton:
on the lent card that is Triton 3.6 (../shared/docs/GPU.md), so check with the same version where it matters
(``pip install --target DIR triton==3.6.0`` and put DIR first on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import torch

FLAGS = ("VARLEN", "HAS_H0", "STATE_ONLY", "STORE_Y", "HAS_DY", "HAS_DHT", "NEED_DH0")
_PTR_TYPES = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32", torch.int32: "*i32",
              torch.int64: "*i64"}


class _Recorder:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](*args, **kwargs)`` records the call, launches nothing."""

    def __init__(self, fn: Any, calls: list) -> None:
        self.fn, self.calls = fn, calls

    def __getitem__(self, grid: Any) -> Any:
        return lambda *args, **kwargs: self.calls.append((self.fn, args, kwargs))


SCAN_KERNELS = ("_scan_fwd_kernel", "_scan_bwd_summary_kernel", "_scan_bwd_kernel")


@contextlib.contextmanager
def recording(module: Any = None, names: tuple[str, ...] = SCAN_KERNELS) -> Iterator[list]:
    """Within the block, the kernels ``names`` of ``module`` (default: the selective scan's) are recorders; yields
    the list of (kernel, args, kwargs) launches."""
    if module is None:
        from archscale.kernels.selective_scan import triton_scan as module
    saved = {n: getattr(module, n) for n in names}
    calls: list = []
    try:
        for n in names:
            setattr(module, n, _Recorder(saved[n], calls))
        yield calls
    finally:
        for n, fn in saved.items():
            setattr(module, n, fn)


def specialise(fn: Any, args: tuple, kwargs: dict) -> tuple[dict, dict, dict, int]:
    """(signature, constexprs, attrs, num_warps) of one launch, as Triton specialises it on the device."""
    kwargs = dict(kwargs)
    num_warps = kwargs.pop("num_warps", 4)
    signature: dict[str, str] = {}
    constexprs: dict[str, Any] = dict(kwargs)
    attrs: dict[tuple[int, ...], list] = {}
    for i, (param, value) in enumerate(zip(fn.params, args, strict=False)):
        name = param.name
        if isinstance(value, torch.Tensor):
            signature[name] = _PTR_TYPES[value.dtype]
            if value.data_ptr() % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{fn.__name__}: argument {name}={value!r} is neither a tensor nor an int")
        elif value == 1 and not param.do_not_specialize:
            signature[name] = "constexpr"
            constexprs[name] = 1
        else:
            signature[name] = "i64" if abs(value) >= 2**31 else "i32"
            if value % 16 == 0 and not param.do_not_specialize:
                attrs[(i,)] = [["tt.divisibility", 16]]
    for name in kwargs:
        signature[name] = "constexpr"
    return signature, constexprs, attrs, num_warps


def compile_for_sm(fn: Any, signature: dict, constexprs: dict, attrs: dict, num_warps: int,
                   num_stages: int | None = None, arch: int = 90) -> Any:
    """The kernel compiled for sm_``arch`` as the launch would be (``num_stages``: the launch's, else Triton's)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    options = {"num_warps": num_warps} if num_stages is None else {"num_warps": num_warps, "num_stages": num_stages}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def ptxas_usage(compiled: Any, arch: int = 90) -> dict:
    """ptxas' resource usage of a kernel from :func:`compile_for_sm`: {"registers", "spill_stores", "spill_loads"}."""
    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "kernel.ptx")
        with open(ptx, "w") as fh:
            fh.write(compiled.asm["ptx"])
        gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        res = subprocess.run([ptxas, "-v", f"--gpu-name={gpu}", ptx, "-o", os.path.join(tmp, "kernel.cubin")],
                             capture_output=True, text=True, check=True)
    regs = re.search(r"Used (\d+) registers", res.stderr)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", res.stderr)
    if regs is None or spills is None:
        raise RuntimeError(f"unexpected ptxas output for {compiled.name}:\n{res.stderr}")
    return {"registers": int(regs.group(1)), "spill_stores": int(spills.group(1)),
            "spill_loads": int(spills.group(2))}


def mixer_inputs(batch: int, seq_len: int, d_inner: int, d_state: int, dt_rank: int) -> dict[str, torch.Tensor]:
    """CPU tensors laid out as the Mamba mixer passes them: u and z halves of in_proj's output, B and C slices of
    x_proj's output, Δ from dt_proj (contiguous), fp32 A, D and Δ bias; bf16 activations."""
    bf = torch.bfloat16
    xz = torch.randn(batch, seq_len, 2 * d_inner, dtype=bf)
    u, z = xz.chunk(2, dim=-1)
    _, B, C = torch.randn(batch, seq_len, dt_rank + 2 * d_state, dtype=bf).split([dt_rank, d_state, d_state], -1)
    return {"u": u, "delta": torch.randn(batch, seq_len, d_inner, dtype=bf), "A": -torch.rand(d_inner, d_state),
            "B": B, "C": C, "D": torch.ones(d_inner), "z": z, "delta_bias": torch.zeros(d_inner)}


CASES: dict[str, dict[str, Any]] = {  # what a caller asks of the scan, by name
    "training": {},
    "memory layer (ungated output)": {"return_ungated": True},
    "final state with a gradient": {"return_final_state": True},
    "initial state with a gradient": {"initial_state": True, "return_final_state": True},
    "varlen": {"varlen": True},
    "time chunks": {"chunked": True},
}


def launches(case: dict[str, Any], inputs: dict[str, torch.Tensor]) -> list:
    """The kernel launches of one forward+backward of the scan for ``case``, recorded (nothing runs)."""
    from archscale.kernels.selective_scan.triton_scan import ScanConfig, selective_scan_triton

    leaves = {k: v.detach().requires_grad_(v.is_floating_point()) for k, v in inputs.items()}
    Bsz, T, Dch = leaves["u"].shape
    N = leaves["A"].shape[-1]
    kw: dict[str, Any] = {"return_final_state": case.get("return_final_state", False),
                          "return_ungated": case.get("return_ungated", False)}
    if case.get("initial_state"):
        kw["initial_state"] = torch.zeros(Bsz, Dch, N, requires_grad=True)
    if case.get("varlen"):
        flat = {k: (v.reshape(1, Bsz * T, -1) if v.dim() == 3 else v) for k, v in leaves.items()}
        leaves, Bsz, T = flat, 1, Bsz * T
        kw["cu_seqlens"] = torch.tensor([0, T // 3, T // 2, T], dtype=torch.int32)
    if case.get("chunked"):
        kw["config"] = ScanConfig(time_chunk_fwd=max(32, T // 4), time_chunk_bwd=max(32, T // 4))
    with recording() as calls:
        res = selective_scan_triton(**leaves, delta_softplus=True, **kw)
        outs = [res.out] + ([res.final_state] if kw["return_final_state"] else [])
        outs += [res.ungated] if kw["return_ungated"] else []
        grads_of = [t for t in (*leaves.values(), kw.get("initial_state")) if t is not None and t.requires_grad]
        torch.autograd.grad(outs, grads_of, [torch.ones_like(o) for o in outs])
    return calls


def usage_table(batch: int = 1, seq_len: int = 256, d_inner: int = 3968, d_state: int = 16, dt_rank: int = 124,
                cases: list[str] | None = None, progress: bool = False) -> list[dict[str, Any]]:
    """One row per distinct compiled variant over ``cases`` (default: all of CASES)."""
    torch.manual_seed(0)
    inputs = mixer_inputs(batch, seq_len, d_inner, d_state, dt_rank)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for name in cases or list(CASES):
        for fn, args, kwargs in launches(CASES[name], inputs):
            signature, constexprs, attrs, warps = specialise(fn, args, kwargs)
            key = repr((fn.__name__, sorted(signature.items()), sorted(constexprs.items()), sorted(attrs), warps))
            if key in seen:
                continue
            seen.add(key)
            row = {"case": name, "kernel": fn.__name__, "flags": [f for f in FLAGS if constexprs.get(f) is True],
                   "chunked": constexprs.get("N_CHUNKS") != 1, "num_warps": warps,
                   **ptxas_usage(compile_for_sm(fn, signature, constexprs, attrs, warps))}
            rows.append(row)
            if progress:
                print(format_row(row), flush=True)
    return rows


def format_row(row: dict[str, Any]) -> str:
    variant = "+".join(row["flags"] + (["chunks"] if row["chunked"] else [])) or "plain"
    spill = f"{row['spill_stores']} / {row['spill_loads']} bytes spilled (store / load)"
    return f"  {row['kernel']:<26} {variant:<28} {row['registers']:>3} registers, {spill}   [{row['case']}]"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq-len", type=int, default=256, help="only divisibility matters; small is quick")
    ap.add_argument("--d-inner", type=int, default=3968)
    ap.add_argument("--d-state", type=int, default=16)
    ap.add_argument("--dt-rank", type=int, default=124)
    ap.add_argument("--case", action="append", choices=list(CASES), help="repeatable; default: every case")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args(argv)
    import triton

    print(f"selective-scan kernels for sm_90, Triton {triton.__version__}: D {args.d_inner}, N {args.d_state}",
          flush=True)
    rows = usage_table(1, args.seq_len, args.d_inner, args.d_state, args.dt_rank, args.case, progress=True)
    spilling = [r for r in rows if r["spill_stores"] or r["spill_loads"]]
    print(f"{len(rows)} variants, {len(spilling)} spilling")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"triton": triton.__version__, "rows": rows}, fh, indent=1)
    return 1 if spilling else 0


if __name__ == "__main__":
    sys.exit(main())
