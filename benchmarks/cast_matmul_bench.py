"""The fused cross-entropy's products with a float32 head: cuBLAS on a bf16 copy vs ``cast_matmul`` (no copy).

Per chunk of C tokens, with the head W (V, d) in float32 as the Trainer keeps it and h the chunk's hidden states
in bf16, the fused loss runs

    G1  logits (C, V) = h @ Wᵀ                (bf16 out)
    G2  grad_h (C, d) = dlogits @ W           (float32 out)

cuBLAS needs W in bf16 first (a (V, d) copy, timed here as "cast"); :func:`cast_matmul` converts W tile by tile.
Both orientations of each product are timed ("W as a": the float32 tiles are the first operand, which Hopper's
wgmma can take from registers; "W as b"), for a few tile configurations. Prints ms, TFLOP/s and the error
against cuBLAS's result::

    python benchmarks/cast_matmul_bench.py --chunks 1024,1536,2048
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fused_ce_bench import rel_err  # noqa: E402
from selective_scan_bench import cuda_median  # noqa: E402

from archscale.kernels.cross_entropy.cast_matmul import Blocks, cast_matmul  # noqa: E402

CONFIGS = {
    "128x128x64 w8 s3": Blocks(128, 128, 64, 8, 8, 3),
    "128x256x64 w8 s3": Blocks(128, 256, 64, 8, 8, 3),
    "256x128x32 w8 s4": Blocks(256, 128, 32, 8, 8, 4),
    "128x128x64 w4 s4": Blocks(128, 128, 64, 8, 4, 4),
    "128x256x32 w8 s4": Blocks(128, 256, 32, 8, 8, 4),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=200_064)
    parser.add_argument("--d", type=int, default=2048)
    parser.add_argument("--chunks", type=lambda s: [int(x) for x in s.split(",")], default=[1024, 1536, 2048])
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names of CONFIGS")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    v, d = args.vocab, args.d
    w = torch.randn(v, d, device=dev) * d**-0.5
    w16 = w.to(torch.bfloat16)
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, V {v}, d {d}", flush=True)
    cast = cuda_median(lambda: w.to(torch.bfloat16), args.iters, args.warmup)
    print(json.dumps({"op": "cast W to bf16", "ms": round(cast, 3)}), flush=True)

    def report(op: str, c: int, impl: str, ms: float, err: float | None) -> None:
        tflops = 2 * c * v * d / ms / 1e9
        print(json.dumps({"op": op, "C": c, "impl": impl, "ms": round(ms, 3), "TFLOP/s": round(tflops, 1),
                          "rel_err_vs_cublas": None if err is None else float(f"{err:.2e}")}), flush=True)

    for c in args.chunks:
        h16 = torch.randn(c, d, device=dev, dtype=torch.bfloat16)
        dl = (torch.randn(c, v, device=dev) * 1e-3).to(torch.bfloat16)
        logits_ref = h16 @ w16.t()
        report("G1 logits", c, "cublas bf16 copy", cuda_median(lambda: h16 @ w16.t(), args.iters, args.warmup), None)
        gh_ref = torch.mm(dl, w16, out_dtype=torch.float32)
        report("G2 grad_h", c, "cublas bf16 copy",
               cuda_median(lambda: torch.mm(dl, w16, out_dtype=torch.float32), args.iters, args.warmup), None)
        gw = torch.zeros(v, d, device=dev)
        report("G3 grad_W +=", c, "cublas",
               cuda_median(lambda: torch.addmm(gw, dl.t(), h16, out_dtype=torch.float32, out=gw), args.iters,
                       args.warmup), None)
        del gw
        logits = torch.empty(c, v, device=dev, dtype=torch.bfloat16)
        gh = torch.empty(c, d, device=dev)
        for name in args.configs.split(","):
            blocks = CONFIGS[name]
            runs: dict[str, Callable[[], object]] = {
                "G1 logits|W as a": lambda: cast_matmul(w, h16.t(), logits.t(), blocks=blocks),
                "G1 logits|W as b": lambda: cast_matmul(h16, w.t(), logits, blocks=blocks),
            }
            for sk in (1, 2):
                runs[f"G2 grad_h|W as a, split {sk}"] = (
                    lambda sk=sk: cast_matmul(w.t(), dl.t(), gh.t(), split_k=sk, blocks=blocks))
                runs[f"G2 grad_h|W as b, split {sk}"] = (
                    lambda sk=sk: cast_matmul(dl, w, gh, split_k=sk, blocks=blocks))
            for key, fn in runs.items():
                op, impl = key.split("|")
                try:
                    ms = cuda_median(fn, args.iters, args.warmup)
                except Exception as exc:  # noqa: BLE001 - a config may not fit the card's shared memory
                    print(json.dumps({"op": op, "C": c, "impl": f"{impl}, {name}", "error": str(exc)[:160]}))
                    continue
                ref, got = (logits_ref, logits) if op.startswith("G1") else (gh_ref, gh)
                report(op, c, f"{impl}, {name}", ms, rel_err(got, ref))
        del h16, dl, logits, gh, logits_ref, gh_ref
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
