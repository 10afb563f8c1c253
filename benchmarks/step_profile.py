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


def kernel_times(prof: torch.profiler.profile) -> dict[str, float]:
    """Total microseconds of each CUDA kernel name in a finished profile."""
    totals: dict[str, float] = defaultdict(float)
    for evt in prof.events():
        # record_function ranges ("Optimizer.step#AdamW.step") also appear on the GPU timeline, over kernels
        # already counted: skip them.
        if evt.device_type == torch.autograd.DeviceType.CUDA and not getattr(evt, "is_user_annotation", False):
            totals[evt.name] += evt.time_range.elapsed_us()
    return dict(totals)


def profile_steps(step: Callable[[int], object], steps: int) -> dict:
    """Run ``step(i)`` for ``steps`` steps under the profiler; per-step milliseconds by category and kernel."""
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for i in range(steps):
            step(i)
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - t0) * 1e3 / steps
    kernels = {k: v / 1e3 / steps for k, v in kernel_times(prof).items()}
    by_category: dict[str, float] = defaultdict(float)
    for name, ms in kernels.items():
        by_category[classify(name)] += ms
    busy = sum(kernels.values())
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:TOP_KERNELS_KEPT]
    return {
        "wall_ms": round(wall_ms, 2),
        "kernel_ms": round(busy, 2),
        "gap_ms": round(wall_ms - busy, 2),
        "categories_ms": {k: round(v, 2) for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])},
        "top_kernels_ms": [(name[:120], round(ms, 2)) for name, ms in top],
    }


def format_profile(model: str, prof: dict) -> str:
    wall = prof["wall_ms"]
    lines = [f"{model}: step {wall:.1f} ms wall, kernels {prof['kernel_ms']:.1f} ms, gap {prof['gap_ms']:.1f} ms "
             f"({prof['gap_ms'] / wall:.1%})"]
    for category, ms in prof["categories_ms"].items():
        lines.append(f"  {category:<18} {ms:8.2f} ms  {ms / wall:6.1%}")
    lines.append("  top kernels:")
    for name, ms in prof["top_kernels_ms"][:TOP_KERNELS_PRINTED]:
        lines.append(f"    {ms:8.2f} ms  {name}")
    return "\n".join(lines)
