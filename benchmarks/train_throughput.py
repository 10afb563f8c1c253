"""Training throughput: tok/s, MFU and peak memory of archscale's Transformer++ next to a plain PyTorch baseline.

Both models run in the same loop (bf16 autocast, fused AdamW, whole-model torch.compile, random tokens), in the
same process, so the ratio between them is meaningful on a shared, noisy machine:

    python benchmarks/train_throughput.py --depth 16 --seq-len 4096 --batch 4 --models plain,archscale

MFU = (6·N + 6·L·d·T) · tok/s / peak, N = every parameter but the input embedding (the head counts), 6·L·d·T
the causal-attention matmuls forward+backward per token (the convention of ../shared/docs/GPU.md), peak = the
card's dense bf16 FLOP/s. Prints one JSON line per model and a table at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baseline_plain import PlainLM  # noqa: E402


def build(name: str, depth: int, vocab: int, seq_len: int) -> torch.nn.Module:
    d, n_head, n_kv, hd = 128 * depth, depth, max(1, depth // 4), 128
    if name == "plain":
        return PlainLM(vocab, d, depth, n_head, n_kv, hd, 4 * d)
    from archscale.models.archs import TransformerConfig, transformer
    from archscale.models.lm import build_model

    spec = transformer(TransformerConfig(depth=depth, vocab_size=vocab, block_size=seq_len))
    model = build_model(spec)

    class Wrapped(torch.nn.Module):  # same call as PlainLM: (idx, targets) -> loss
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return self.inner(idx, None, targets=targets).loss

    return Wrapped()


def measure(name: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = build(name, args.depth, args.vocab, args.seq_len).to(dev)
    n_all = sum(p.numel() for p in model.parameters())
    n_embed = args.vocab * 128 * args.depth
    n = n_all - n_embed
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    step_fn = torch.compile(model) if not args.no_compile else model
    x = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1), device=dev)
    inputs, targets = x[:, :-1], x[:, 1:]

    def step() -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_fn(inputs, targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t_compile = time.perf_counter()
    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    t_compile = time.perf_counter() - t_compile
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tok_s = args.batch * args.seq_len * args.steps / dt
    L, d, T = args.depth, 128 * args.depth, args.seq_len
    flops_tok = 6 * n + 6 * L * d * T
    peak = 989e12
    out = {
        "model": name,
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "depth": args.depth,
        "params": n_all,
        "seq_len": T,
        "batch": args.batch,
        "tok_per_s": round(tok_s),
        "mfu": round(flops_tok * tok_s / peak, 4),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "final_loss": round(float(loss), 4),
        "warmup_s": round(t_compile, 1),
    }
    del model, opt, step_fn
    torch.cuda.empty_cache()
    torch._dynamo.reset()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--models", default="plain,archscale")
    p.add_argument("--repeats", type=int, default=1, help="measure the list this many times (interleaved)")
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("train_throughput.py needs a CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = True
    results = []
    for _ in range(args.repeats):
        for name in args.models.split(","):
            r = measure(name, args)
            print(json.dumps(r), flush=True)
            results.append(r)
    base = [r["tok_per_s"] for r in results if r["model"] == "plain"]
    print(f"\n{'model':<10} {'depth':>5} {'tok/s':>10} {'MFU':>6} {'mem GiB':>8} {'vs plain':>8}")
    for r in results:
        ratio = r["tok_per_s"] / (sum(base) / len(base)) if base else float("nan")
        print(f"{r['model']:<10} {r['depth']:>5} {r['tok_per_s']:>10} {r['mfu']:>6.1%} {r['peak_mem_gib']:>8} {ratio:>8.3f}")


if __name__ == "__main__":
    main()
