"""Mamba-1 selective scan: our Triton kernels against the memory floor, the reference, and mamba-ssm when installed.

The scan is elementwise over (t, d, n) with N = 16 states per channel and no matrix product, so its floor is
memory traffic: every input, output and gradient of forward+backward moved once through HBM, at the device-to-device copy bandwidth
measured in the same process (a large ``copy_``, counting its read and its write). Mixer options as in the Mamba
layer: z gate, D, delta_bias, softplus. Timings are medians of CUDA-event timings::

    python benchmarks/selective_scan_bench.py                     # B4 T4096 D4096 N16 bf16
    python benchmarks/selective_scan_bench.py --sweep             # also time other tile shapes (ScanConfig)
    python benchmarks/selective_scan_bench.py --batch 1 --seq-len 16384 --varlen 8

Reported: forward and forward+backward time, the floor and the ratio (issue #8's target: fwd+bwd within 4x of the
floor), peak memory above the inputs, the reference's time at a small size (a loop over t) next to ours at the same
size, and relative errors ||a - b|| / ||b|| against the reference in fp32 at a moderate size for every output and
gradient. ``--help`` works without a GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable

import torch

ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(Bsz: int, T: int, Dch: int, N: int, dtype: torch.dtype, device: str = "cuda") -> dict:
    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    return {
        "u": rnd(Bsz, T, Dch), "delta": rnd(Bsz, T, Dch, scale=0.5),
        "A": -torch.exp(torch.rand(Dch, N, generator=g) * 4.4 - 2.3).to(device),  # fp32 like the mixer's A
        "B": rnd(Bsz, T, N), "C": rnd(Bsz, T, N),
        "D": torch.ones(Dch, device=device), "z": rnd(Bsz, T, Dch),
        "delta_bias": (torch.rand(Dch, generator=g) * 4 - 6).to(device),  # softplus^-1 of dt in [2e-3, 0.1]
    }


def cuda_median(fn: Callable[[], object], iters: int, warmup: int = 3) -> float:
    """Median milliseconds of ``fn`` over ``iters`` runs, each timed with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth(gib: float = 2.0) -> float:
    """Bytes per second of a device-to-device ``copy_`` (read + write counted)."""
    n = int(gib * 2**30) // 2
    src, dst = torch.empty(n, dtype=torch.bfloat16, device="cuda"), torch.empty(n, dtype=torch.bfloat16, device="cuda")
    src.normal_()
    ms = cuda_median(lambda: dst.copy_(src), iters=20)
    return 2 * n * 2 / (ms * 1e-3)


def floor_bytes(inp: dict) -> tuple[int, int]:
    """(forward, forward+backward) bytes if every tensor were moved once: the inputs and the output; then also the
    output gradient read and every input gradient written (dA, dD, d delta_bias are per-sequence partials: tiny)."""
    size = {k: v.numel() * v.element_size() for k, v in inp.items()}
    out = size["u"]
    fwd = sum(size.values()) + out
    return fwd, fwd + out + sum(size.values())


def scan_fn(impl: str, inp: dict, cu: torch.Tensor | None, config: object = None) -> Callable[..., torch.Tensor]:
    from archscale.kernels.selective_scan import selective_scan
    from archscale.kernels.selective_scan.triton_scan import selective_scan_triton

    def run(**kw: torch.Tensor) -> torch.Tensor:
        if impl == "triton" and config is not None:
            return selective_scan_triton(**kw, cu_seqlens=cu, config=config).out
        return selective_scan(**kw, cu_seqlens=cu, impl=impl).out

    return run


def time_fwd_bwd(fn: Callable[..., torch.Tensor], inp: dict, iters: int) -> tuple[float, float, float]:
    """(forward ms, forward+backward ms, peak GiB allocated above the inputs during forward+backward)."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inp.items()}
    dout = torch.randn_like(leaves["u"])
    with torch.no_grad():
        fwd = cuda_median(lambda: fn(**leaves), iters)

    def step() -> None:
        torch.autograd.grad(fn(**leaves), list(leaves.values()), dout)

    step()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fwd_bwd = cuda_median(step, iters)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    return fwd, fwd_bwd, peak


def time_with_final_state(inp: dict, cu: torch.Tensor | None, iters: int) -> float:
    """Forward+backward ms when the final state is returned and receives a gradient too (state carried across
    chunks of a long sequence): the backward kernel variant that starts from dL/dh_T."""
    from archscale.kernels.selective_scan.triton_scan import selective_scan_triton

    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inp.items()}
    res = selective_scan_triton(**leaves, cu_seqlens=cu, return_final_state=True)
    dout, dhT = torch.randn_like(res.out), torch.randn_like(res.final_state)

    def step() -> None:
        r = selective_scan_triton(**leaves, cu_seqlens=cu, return_final_state=True)
        torch.autograd.grad((r.out, r.final_state), list(leaves.values()), (dout, dhT))

    return cuda_median(step, iters)


FLAGS = ("VARLEN", "HAS_H0", "STATE_ONLY", "STORE_Y", "HAS_DY", "HAS_DHT", "NEED_DH0")


def kernel_variants() -> list[dict]:
    """Registers and spills of every scan kernel variant compiled so far in this process (ptxas' numbers as the
    driver reports them): a variant that spills is the first suspect when in-model times exceed the isolated ones."""
    from archscale.kernels.selective_scan import triton_scan as ts

    rows = []
    for fn in (ts._scan_fwd_kernel, ts._scan_bwd_summary_kernel, ts._scan_bwd_kernel):
        for caches in fn.device_caches.values():
            for compiled in caches[0].values():
                compiled._init_handles()  # n_regs / n_spills are read when the binary is loaded
                consts = getattr(getattr(compiled, "src", None), "constants", {}) or {}
                named = {fn.arg_names[k[0]] if isinstance(k, tuple) else k: v for k, v in consts.items()}
                rows.append({"kernel": fn.__name__, "flags": [f for f in FLAGS if named.get(f) is True],
                             "registers": compiled.n_regs, "spills": compiled.n_spills})
    return rows


def errors_vs_reference(Bsz: int, T: int, Dch: int, N: int, cu: torch.Tensor | None) -> dict[str, float]:
    """Relative errors of the output and every gradient, Triton vs the reference, fp32, same upstream gradient."""
    from archscale.kernels.selective_scan import selective_scan

    inp = make_inputs(Bsz, T, Dch, N, torch.float32)
    dout = torch.randn(Bsz, T, Dch, device="cuda")
    res = []
    for impl in ("reference", "triton"):
        leaves = {k: v.clone().requires_grad_(True) for k, v in inp.items()}
        out = selective_scan(**leaves, cu_seqlens=cu, impl=impl).out
        grads = torch.autograd.grad(out, list(leaves.values()), dout)
        res.append([out.detach(), *grads])
    return {
        name: float((a.double() - b.double()).norm() / b.double().norm())
        for name, a, b in zip(("out", *(f"d{k}" for k in ARGS)), res[1], res[0])
    }


def cu_for(Bsz: int, T: int, n_docs: int) -> tuple[int, int, torch.Tensor | None]:
    """Varlen: B*T tokens packed into one row of n_docs documents of uneven lengths (fixed seed)."""
    if n_docs <= 0:
        return Bsz, T, None
    g = torch.Generator().manual_seed(0)
    w = torch.rand(n_docs, generator=g) + 0.2
    total = Bsz * T
    lengths = (w / w.sum() * total).floor().long().clamp_min(1)
    lengths[-1] += total - lengths.sum()
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).to(torch.int32).cuda()
    return 1, total, cu


SWEEP: list[dict[str, int]] = [  # ScanConfig fields that differ from the defaults (time chunks 0: automatic)
    {"time_chunk_fwd": 1 << 30, "time_chunk_bwd": 1 << 30},  # one chunk per sequence: no time parallelism
    {"time_chunk_fwd": 128, "time_chunk_bwd": 128},
    {"time_chunk_fwd": 256, "time_chunk_bwd": 256},
    {"time_chunk_fwd": 512, "time_chunk_bwd": 512},
    {"time_chunk_fwd": 1024, "time_chunk_bwd": 1024},
    {"prefetch": 2},
    {"prefetch": 1, "substeps": 1},
    {"prefetch": 2, "substeps": 1},
    {"block_d_fwd": 16, "prefetch": 2},
    {"block_d_fwd": 16, "prefetch": 1},
    {"block_d_bwd": 8},
    {"block_d_bwd": 8, "prefetch": 2, "substeps": 1},
    {"block_d_fwd": 16, "block_d_bwd": 8, "prefetch": 2, "time_chunk_fwd": 128, "time_chunk_bwd": 128},
    {"block_d_bwd": 32},
]


class _Rows(list):
    """Result rows, each printed as soon as it is added (a long sweep shows its progress)."""

    def append(self, row: tuple[str, str]) -> None:
        super().append(row)
        print(f"  {row[0]:<36}  {row[1]}", flush=True)

    def extend(self, rows: list[tuple[str, str]]) -> None:  # type: ignore[override]
        for row in rows:
            self.append(row)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--d-inner", type=int, default=4096, help="channels D (d_inner = expand * d_model)")
    ap.add_argument("--d-state", type=int, default=16)
    ap.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    ap.add_argument("--varlen", type=int, default=0, help="pack the batch into one row of this many documents")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--ref-size", type=int, nargs=4, default=(1, 512, 1024, 16), metavar=("B", "T", "D", "N"),
                    help="size at which the reference (a Python loop over t) is timed next to ours")
    ap.add_argument("--err-size", type=int, nargs=4, default=(2, 1024, 512, 16), metavar=("B", "T", "D", "N"))
    ap.add_argument("--sweep", action="store_true", help="also time the launch shapes in SWEEP (ScanConfig)")
    ap.add_argument("--chunk-sweep", action="store_true",
                    help="also time time chunks of 1/2, 2 and 4 times the automatic ones, and none")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("selective_scan_bench: needs a CUDA device", file=sys.stderr)
        return 1

    import triton

    from archscale.kernels.selective_scan.triton_scan import ScanConfig

    dtype = getattr(torch, args.dtype)
    Bsz, T, cu = cu_for(args.batch, args.seq_len, args.varlen)
    Dch, N = args.d_inner, args.d_state
    rows = _Rows()
    print(f"selective scan on {torch.cuda.get_device_name()} (torch {torch.__version__}, triton {triton.__version__})",
          flush=True)
    result: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                    "shape": [Bsz, T, Dch, N], "dtype": args.dtype, "docs": args.varlen or None}

    bw = copy_bandwidth()
    inp = make_inputs(Bsz, T, Dch, N, dtype)
    fwd_bytes, all_bytes = floor_bytes(inp)
    floor_fwd, floor_all = fwd_bytes / bw * 1e3, all_bytes / bw * 1e3
    cfg = ScanConfig()
    ck_every = cfg.ckpt_every
    ck_gib = (Bsz * -(-T // ck_every) if cu is None else args.varlen + T // ck_every) * Dch * N * 4 / 2**30
    fwd, fwd_bwd, peak = time_fwd_bwd(scan_fn("triton", inp, cu), inp, args.iters)
    result.update(copy_gbps=bw / 1e9, floor_fwd_ms=floor_fwd, floor_fwd_bwd_ms=floor_all, triton_fwd_ms=fwd,
                  triton_fwd_bwd_ms=fwd_bwd, ratio_fwd_bwd=fwd_bwd / floor_all, peak_gib=peak, saved_states_gib=ck_gib)
    shape = f"B{Bsz} T{T} D{Dch} N{N} {args.dtype}" + (f", {args.varlen} docs" if cu is not None else "")
    from archscale.kernels.selective_scan.triton_scan import _block_d, _time_chunk

    chunks = [_time_chunk(0, T, Bsz, triton.cdiv(Dch, _block_d(Dch, bd)), w, ck_every, inp["u"].device)
              for bd, w in ((cfg.block_d_fwd, cfg.warps_fwd), (cfg.block_d_bwd, cfg.warps_bwd))]
    result.update(time_chunk_fwd=chunks[0], time_chunk_bwd=chunks[1])
    rows.extend([
        ("shape", shape),
        ("time chunk fwd / bwd (automatic)", f"{chunks[0]} / {chunks[1]} steps"),
        ("copy bandwidth (read+write)", f"{bw / 1e9:,.0f} GB/s"),
        ("memory floor fwd / fwd+bwd", f"{floor_fwd:.3f} / {floor_all:.3f} ms ({all_bytes / 2**30:.2f} GiB moved)"),
        ("triton fwd", f"{fwd:.3f} ms  ({fwd / floor_fwd:.2f}x floor)"),
        ("triton fwd+bwd", f"{fwd_bwd:.3f} ms  ({fwd_bwd / floor_all:.2f}x floor; target <= 4x)"),
        ("peak memory fwd+bwd", f"{peak:.2f} GiB above inputs (saved states {ck_gib:.3f} GiB)"),
    ])
    with_state = time_with_final_state(inp, cu, args.iters)
    result.update(triton_fwd_bwd_final_state_ms=with_state)
    rows.append(("triton fwd+bwd, final state too", f"{with_state:.3f} ms  ({with_state / fwd_bwd:.2f}x without)"))
    variants = kernel_variants()
    result["kernel_variants"] = variants
    rows.extend((f"{v['kernel']} {'+'.join(v['flags']) or 'plain'}", f"{v['registers']} registers, {v['spills']} "
                 "spilled") for v in variants)

    from archscale.kernels.selective_scan import _HAS_MAMBA_SSM, _load_mamba_ssm

    if cu is None and _HAS_MAMBA_SSM and not isinstance(_load_mamba_ssm(), Exception):
        m_fwd, m_fwd_bwd, m_peak = time_fwd_bwd(scan_fn("mamba_ssm", inp, None), inp, args.iters)
        result.update(mamba_ssm_fwd_ms=m_fwd, mamba_ssm_fwd_bwd_ms=m_fwd_bwd)
        rows.append(("mamba-ssm fwd / fwd+bwd", f"{m_fwd:.3f} / {m_fwd_bwd:.3f} ms  (peak {m_peak:.2f} GiB)"))
    del inp

    rB, rT, rD, rN = args.ref_size
    small = make_inputs(rB, rT, rD, rN, torch.float32)
    _, ref_ms, _ = time_fwd_bwd(scan_fn("reference", small, None), small, iters=3)
    _, tri_ms, _ = time_fwd_bwd(scan_fn("triton", small, None), small, iters=args.iters)
    result.update(reference_small_fwd_bwd_ms=ref_ms, triton_small_fwd_bwd_ms=tri_ms)
    rows.append((f"B{rB} T{rT} D{rD} N{rN} fp32 fwd+bwd",
                 f"reference {ref_ms:.1f} ms, triton {tri_ms:.3f} ms ({ref_ms / tri_ms:,.1f}x)"))
    del small

    eB, eT, eD, eN = args.err_size
    errs = errors_vs_reference(eB, eT, eD, eN, None)
    lengths_cu = cu_for(eB, eT, 5)[2]
    errs_v = errors_vs_reference(1, eB * eT, eD, eN, lengths_cu)
    result.update(errors_dense=errs, errors_varlen=errs_v)
    worst, worst_v = max(errs, key=errs.get), max(errs_v, key=errs_v.get)
    rows.append((f"max rel err fp32 B{eB} T{eT} D{eD}",
                 f"dense {errs[worst]:.1e} ({worst}), varlen {errs_v[worst_v]:.1e} ({worst_v})"))

    sweep = list(SWEEP) if args.sweep else []
    if args.chunk_sweep:
        sweep += [{"time_chunk_fwd": max(ck_every, int(chunks[0] * f)),
                   "time_chunk_bwd": max(ck_every, int(chunks[1] * f))} for f in (0.5, 2, 4)]
        sweep.append({"time_chunk_fwd": 1 << 30, "time_chunk_bwd": 1 << 30})  # no time chunks
    if sweep:
        result["sweep"] = []
        inp = make_inputs(Bsz, T, Dch, N, dtype)
        for c in sweep:
            conf = ScanConfig(**c)
            try:
                f, fb, pk = time_fwd_bwd(scan_fn("triton", inp, cu, conf), inp, args.iters)
            except Exception as e:  # noqa: BLE001 - e.g. out of shared memory for one shape: report, go on
                rows.append((f"sweep {c}", f"failed: {type(e).__name__}: {str(e)[:80]}"))
                continue
            result["sweep"].append({"config": conf._asdict(), "fwd_ms": f, "fwd_bwd_ms": fb, "peak_gib": pk})
            rows.append((f"sweep {c}",
                         f"fwd {f:.3f} ms, fwd+bwd {fb:.3f} ms ({fb / floor_all:.2f}x floor), peak {pk:.2f} GiB"))

    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
