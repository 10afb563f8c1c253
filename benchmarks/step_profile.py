"""Where a training step's GPU time goes: CUDA kernel time by category, from ``torch.profiler``.

Used by ``train_throughput.py --profile``: after the timed steps it profiles a few more and prints, per step, the
kernel time of each category (matrix products, attention, the selective scan, the fused cross-entropy,
inductor's fused elementwise kernels, the optimizer, copies) and the gap between the step's wall time and the sum
of its kernels (launch gaps, host work the GPU waits for). Kernels are classified by name; ``classify`` is the
single place that knows the names.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import torch

TOP_KERNELS_KEPT = 40  # in the JSON: enough to see where the elementwise time goes
TOP_KERNELS_PRINTED = 12  # in the table

# (category, substrings of the kernel name), first match wins; matched case-insensitively.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # our Triton kernels carry a "_scan_" prefix: a bare "_fwd_kernel" would also match flash_fwd_kernel
    ("selective scan", ("_scan_fwd_kernel", "_scan_bwd_kernel", "_scan_bwd_summary_kernel")),
    ("cross-entropy", ("_ce_rows_kernel",)),
    ("attention", ("flex_attention", "flex_decoding")),  # inductor templates, named after the op
    ("matmul", ("triton_tem",)),  # inductor's other templates are GEMMs; before its fused kernels
    # inductor names its fused kernels after the ops inside ("..._cudnn_attention_..."): its prefixes come first
    ("fused elementwise", ("triton_poi", "triton_red", "triton_per")),
    ("attention", ("cudnn", "fmha", "flash", "attn", "attention", "flex")),
    ("matmul", ("gemm", "xmma", "cutlass", "nvjet", "cublas", "splitk")),
    ("optimizer", ("multi_tensor", "adam", "foreach")),
    ("copy / fill", ("memcpy", "memset", "copy", "fill")),
)


def classify(kernel_name: str) -> str:
    name = kernel_name.lower()
    for category, keys in CATEGORIES:
        if any(k in name for k in keys):
            return category
    return "other"


def gpu_kernels(prof: torch.profiler.profile) -> list:
    """The CUDA kernel events of a finished profile (record_function ranges such as "Optimizer.step#AdamW.step"
    also appear on the GPU timeline, over kernels already counted: left out)."""
    return [evt for evt in prof.events()
            if evt.device_type == torch.autograd.DeviceType.CUDA and not getattr(evt, "is_user_annotation", False)]


def kernel_times(kernels: list) -> dict[str, float]:
    """Total microseconds of each CUDA kernel name among ``gpu_kernels(prof)``."""
    totals: dict[str, float] = defaultdict(float)
    for evt in kernels:
        totals[evt.name] += evt.time_range.elapsed_us()
    return dict(totals)


def idle_gaps(spans: list[tuple[float, float]], short_us: float = 20.0) -> tuple[float, float]:
    """Microseconds no kernel ran between the first start and the last end of (start, end) spans in µs, split into
    short gaps (< ``short_us``: launch latency between queued kernels) and long ones (the GPU waiting for the host:
    a synchronisation, host work between graphs). Overlapping kernels (several streams) count once."""
    spans = sorted(spans)
    short = long = 0.0
    reach = spans[0][1] if spans else 0.0
    for start, end in spans[1:]:
        gap = start - reach
        if gap > 0:
            if gap < short_us:
                short += gap
            else:
                long += gap
        reach = max(reach, end)
    return short, long


MATMUL_OPS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::_addmm_activation")
_WITH_INPUT_FIRST = ("aten::addmm", "aten::baddbmm", "aten::_addmm_activation")  # (input, mat1, mat2, ...)


def matmul_by_shape(prof: torch.profiler.profile, steps: int) -> list[dict]:
    """GPU time of the matrix products per (op, operand shapes, kernel), with the FLOP/s each achieved: which
    product is slow, not just which kernel (cuBLAS kernel names do not say which layer's product they ran).
    Needs a profile taken with ``record_shapes=True``; the kernels are those each aten op launched itself.
    Operands are the op's first two matrices (after the added input of addmm): inductor calls the ``out=``
    overloads, whose output comes last."""
    rows: dict[tuple, list[float]] = {}
    for evt in prof.events():
        if evt.name not in MATMUL_OPS or not evt.kernels:
            continue
        shapes = [tuple(s) for s in evt.input_shapes]
        a, b = shapes[1:3] if evt.name in _WITH_INPUT_FIRST else shapes[0:2]
        if len(a) not in (2, 3) or len(b) != len(a):
            continue
        (*batch, m, k), n = a, b[-1]
        flops = 2.0 * m * k * n * (batch[0] if batch else 1)
        for kern in evt.kernels:
            row = rows.setdefault((evt.name, a, b, kern.name[:60]), [0.0, 0.0, 0])
            row[0] += kern.duration
            row[1] += flops
            row[2] += 1
    out = [{"op": op, "a": list(a), "b": list(b), "kernel": kern, "calls": round(n / steps, 1),
            "ms": round(us / 1e3 / steps, 2), "tflops": round(fl / (us * 1e-6) / 1e12) if us else 0}
           for (op, a, b, kern), (us, fl, n) in rows.items()]
    return sorted(out, key=lambda r: -r["ms"])


def profile_steps(step: Callable[[int], object], steps: int) -> dict:
    """Run ``step(i)`` for ``steps`` steps under the profiler; per-step milliseconds by category and kernel."""
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
        t0 = time.perf_counter()
        for i in range(steps):
            step(i)
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - t0) * 1e3 / steps
    launched = gpu_kernels(prof)  # one pass over the profile's events; the numbers below all read this list
    kernels = {k: v / 1e3 / steps for k, v in kernel_times(launched).items()}
    short_gaps, long_gaps = idle_gaps([(e.time_range.start, e.time_range.end) for e in launched])
    by_category: dict[str, float] = defaultdict(float)
    for name, ms in kernels.items():
        by_category[classify(name)] += ms
    busy = sum(kernels.values())
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:TOP_KERNELS_KEPT]
    return {
        "wall_ms": round(wall_ms, 2),
        "kernel_ms": round(busy, 2),
        "gap_ms": round(wall_ms - busy, 2),
        "launches": round(len(launched) / steps),
        "idle_short_ms": round(short_gaps / 1e3 / steps, 2),  # between queued kernels (< 20 µs each)
        "idle_long_ms": round(long_gaps / 1e3 / steps, 2),
        "categories_ms": {k: round(v, 2) for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])},
        "top_kernels_ms": [(name[:120], round(ms, 2)) for name, ms in top],
        "matmul_by_shape": matmul_by_shape(prof, steps)[:TOP_KERNELS_KEPT],
    }


def format_profile(model: str, prof: dict) -> str:
    wall = prof["wall_ms"]
    lines = [f"{model}: step {wall:.1f} ms wall, kernels {prof['kernel_ms']:.1f} ms, gap {prof['gap_ms']:.1f} ms "
             f"({prof['gap_ms'] / wall:.1%}); {prof['launches']} kernel launches, GPU idle "
             f"{prof['idle_short_ms']:.1f} ms in gaps < 20 µs, {prof['idle_long_ms']:.1f} ms in longer ones"]
    for category, ms in prof["categories_ms"].items():
        lines.append(f"  {category:<18} {ms:8.2f} ms  {ms / wall:6.1%}")
    lines.append("  top kernels:")
    for name, ms in prof["top_kernels_ms"][:TOP_KERNELS_PRINTED]:
        lines.append(f"    {ms:8.2f} ms  {name}")
    if prof.get("matmul_by_shape"):
        lines.append("  matrix products by shape (calls per step, TFLOP/s):")
        for r in prof["matmul_by_shape"][:TOP_KERNELS_PRINTED]:
            lines.append(f"    {r['ms']:8.2f} ms  {r['op']} {r['a']} x {r['b']}  x{r['calls']:g}  "
                         f"{r['tflops']} TFLOP/s  {r['kernel']}")
    return "\n".join(lines)
