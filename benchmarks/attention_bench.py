"""Attention kernels on CUDA: forward+backward TFLOP/s of every backend of archscale.kernels.attention.

    python benchmarks/attention_bench.py                 # all cases below, a table at the end
    python benchmarks/attention_bench.py --cases varlen --iters 50

Cases (bf16, head_dim 128, no GQA unless named; ../shared/docs/GPU.md has the ceilings these compare to):
    causal      B4 H16 T4096, full causal
    causal-gqa  B4 H16 (4 KV heads) T4096, Transformer++'s grouping
    window      B4 H16 T4096, sliding window 2048
    varlen      B1 H16, documents of 1-6K tokens totalling 16K (fixed seed), causal inside each document
    wide-v      B4 H16 T4096, K 64, V 128 (Differential Attention's values): sliced vs native widths

FLOPs. P = the (query, key) pairs a kernel must visit per head: causal T(T+1)/2 (about half of dense T²), window W:
Σ_t min(t+1, W), varlen: the causal count of every document. Forward = 2·P·(K + V) per head (QKᵀ and AV),
backward = 2.5 x forward (FlashAttention-2's convention: dV, dP, dQ, dK plus recomputing QKᵀ), so
fwd+bwd = 3.5 · 2·P·(K + V) · B · H, the same convention as GPU.md's 404 TFLOP/s for cuDNN causal.

Every backend runs in the same process on the same inputs: its forward output is checked against the fp32
reference (relative error by norm) before it is timed; time = median of --iters CUDA-event timings of
forward + backward after --warmup calls (the first calls compile FlexAttention). Rows: ``auto`` is what the
dispatch picks; ``sdpa[X]`` forces SDPA backend X alone; ``reference`` is the masked SDPA the mixers used before
(a boolean T x T mask for windows and documents). Writes attention_bench.json to $OUT when set.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from archscale.kernels.attention import attention, available_impls, select_impl


def doc_lengths(total: int, lo: int, hi: int, seed: int = 0) -> list[int]:
    """Document lengths uniform in [lo, hi] until ``total`` tokens; the last one takes the remainder."""
    rng = random.Random(seed)
    lengths: list[int] = []
    while sum(lengths) < total:
        lengths.append(min(rng.randint(lo, hi), total - sum(lengths)))
    return lengths


def visited_pairs(lengths: list[int], window: int | None) -> int:
    """(query, key) pairs a causal (windowed) kernel visits over documents of these lengths."""
    pairs = 0
    for n in lengths:
        if window is None or window >= n:
            pairs += n * (n + 1) // 2
        else:  # the first W queries see 1..W keys, the rest W each
            pairs += window * (window + 1) // 2 + (n - window) * window
    return pairs


def time_fwd_bwd(fn: Callable[[], torch.Tensor], grad: torch.Tensor, leaves: list[torch.Tensor], warmup: int,
                 iters: int) -> float:
    """Median milliseconds of forward + backward."""
    def step() -> None:
        for t in leaves:
            t.grad = None
        fn().backward(grad)

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def sdpa_only(backend: SDPBackend, q, k, v, scale: float) -> torch.Tensor:
    """SDPA restricted to one backend (raises when that backend refuses the call)."""
    with sdpa_kernel(backend):
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                           scale=scale, enable_gqa=q.shape[2] != k.shape[2])
    return y.transpose(1, 2)


def sdpa_unsliced(q, k, v, scale: float) -> torch.Tensor:
    """SDPA with cuDNN first on values wider than keys, without archscale's K-wide slicing (whatever PyTorch picks)."""
    from archscale.kernels.attention.sdpa import PRIORITY

    with sdpa_kernel(PRIORITY, set_priority=True):
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                           scale=scale, enable_gqa=q.shape[2] != k.shape[2])
    return y.transpose(1, 2)


CASES: dict[str, dict] = {
    "causal": {"B": 4, "H": 16, "Hkv": 16, "T": 4096, "K": 128, "V": 128, "window": None, "varlen": False},
    "causal-gqa": {"B": 4, "H": 16, "Hkv": 4, "T": 4096, "K": 128, "V": 128, "window": None, "varlen": False},
    "window": {"B": 4, "H": 16, "Hkv": 16, "T": 4096, "K": 128, "V": 128, "window": 2048, "varlen": False},
    "varlen": {"B": 1, "H": 16, "Hkv": 16, "T": 16384, "K": 128, "V": 128, "window": None, "varlen": True},
    "wide-v": {"B": 4, "H": 16, "Hkv": 16, "T": 4096, "K": 64, "V": 128, "window": None, "varlen": False},
}


def run_case(name: str, c: dict, warmup: int, iters: int) -> list[dict]:
    torch.manual_seed(0)
    B, H, Hkv, T, K, V, window = c["B"], c["H"], c["Hkv"], c["T"], c["K"], c["V"], c["window"]
    lengths = doc_lengths(T, 1024, 6144) if c["varlen"] else [T] * B
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    kw = {"window": window, "cu_seqlens": cu if c["varlen"] else None, "max_seqlen": max(lengths) if c["varlen"] else None}
    scale = K**-0.5
    q32 = torch.randn(B, T, H, K, device="cuda")
    k32, v32 = torch.randn(B, T, Hkv, K, device="cuda"), torch.randn(B, T, Hkv, V, device="cuda")
    with torch.no_grad():
        ref = attention(q32, k32, v32, scale=scale, impl="reference", window=window, cu_seqlens=kw["cu_seqlens"])
    q, k, v = (t.bfloat16().requires_grad_(True) for t in (q32, k32, v32))
    grad = torch.randn(B, T, H, V, device="cuda", dtype=torch.bfloat16)
    flops = 3.5 * 2 * visited_pairs(lengths, window) * (K + V) * H  # lengths: every row or document
    auto = select_impl(q, k, window=window, cu_seqlens=kw["cu_seqlens"])

    rows: dict[str, Callable[[], torch.Tensor]] = {}
    for impl in available_impls("cuda", torch.bfloat16):
        if impl == "sdpa" and (window is not None or c["varlen"]):
            continue
        label = f"{impl} (auto)" if impl == auto else impl
        rows[label] = lambda impl=impl: attention(q, k, v, scale=scale, impl=impl, **kw)  # type: ignore[misc]
    if window is None and not c["varlen"]:
        for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
            rows[f"sdpa[{backend.name.lower()}]"] = lambda b=backend: sdpa_only(b, q, k, v, scale)  # type: ignore[misc]
        if V != K:
            rows["sdpa unsliced"] = lambda: sdpa_unsliced(q, k, v, scale)

    results = []
    for label, fn in rows.items():
        row = {"case": name, "impl": label, "B": B, "H": H, "Hkv": Hkv, "T": T, "K": K, "V": V, "window": window,
               "docs": len(lengths) if c["varlen"] else None, "gflop": flops / 1e9}
        try:
            with torch.no_grad():
                row["rel_err"] = float((fn().float() - ref).norm() / ref.norm())
            ms = time_fwd_bwd(fn, grad, [q, k, v], warmup, iters)
            row.update(ms=ms, tflops=flops / (ms * 1e-3) / 1e12)
        except Exception as e:  # noqa: BLE001 (a backend refusing this shape is a result, not a crash)
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        print(json.dumps(row), flush=True)
        results.append(row)
        torch.cuda.empty_cache()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("attention_bench needs a CUDA device")
    print(f"# {torch.cuda.get_device_name()}  torch {torch.__version__}  cuDNN {torch.backends.cudnn.version()}")
    results = []
    for name in args.cases.split(","):
        if name not in CASES:
            raise SystemExit(f"unknown case {name!r}; choose from {', '.join(CASES)}")
        results += run_case(name, CASES[name], args.warmup, args.iters)
    print(f"\n{'case':<11} {'impl':<22} {'ms':>8} {'TFLOP/s':>8} {'rel err':>9}")
    for r in results:
        if "error" in r:
            print(f"{r['case']:<11} {r['impl']:<22} {'-':>8} {'-':>8} {'-':>9}  {r['error']}")
        else:
            print(f"{r['case']:<11} {r['impl']:<22} {r['ms']:8.2f} {r['tflops']:8.1f} {r['rel_err']:9.2e}")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "attention_bench.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
