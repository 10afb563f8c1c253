"""Decoding throughput: tokens/s and peak memory of cached generation, SambaY next to Transformer++ (CUDA).

Each model prefills a random prompt (default 2 048 tokens) in one forward with ``use_cache=True``, then decodes
``--gen`` tokens one at a time (greedy) from the carried per-layer state, exactly as
:func:`archscale.eval.generate.sample` does. Transformer++ keeps a KV cache that grows with every token in every
layer; SambaY keeps Mamba states, window-bounded SWA caches and one shared K,V cache for its cross-decoder half
(Ren et al. 2025, "Decoder-Hybrid-Decoder Architecture"), so its per-token cost and memory should grow more slowly
with length: the Phi4-mini-flash claim is up to 10× decoding throughput at 2K prompt / 32K generation.

    python benchmarks/decode_throughput.py                                   # d12, 2K prompt, 1K new, B 1,8,32
    python benchmarks/decode_throughput.py --depth 16 --gen 4096 --batches 1,16 --models transformer,sambay

Random weights (throughput does not depend on them), bf16 autocast, eager mode. Both models run in the same
process, one after the other, so their ratio is meaningful. Prints one JSON line per measurement and a table.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch


def build(family: str, depth: int, vocab: int, block_size: int) -> torch.nn.Module:
    from archscale.models.lm import build_model
    from archscale.registry import architectures

    config = architectures.config_model(family).model_validate(
        {"depth": depth, "vocab_size": vocab, "block_size": block_size})
    return build_model(architectures.get(family)(config))


def state_bytes(state: Any) -> int:
    """Bytes held by a (nested) decoding state: KV caches, recurrent states."""
    if torch.is_tensor(state):
        return state.numel() * state.element_size()
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(s) for s in state)
    if isinstance(state, dict):
        return sum(state_bytes(s) for s in state.values())
    if hasattr(state, "__dict__"):
        return sum(state_bytes(s) for s in vars(state).values())
    return 0


@torch.no_grad()
def measure(model: torch.nn.Module, batch: int, prompt: int, gen: int, vocab: int) -> dict[str, Any]:
    from archscale.models.api import SeqInfo

    dev = torch.device("cuda")
    ids = torch.randint(0, vocab, (batch, prompt), device=dev)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model(ids, SeqInfo.dense(batch, prompt, device=dev), use_cache=True)
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        state = out.state
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        for step in range(gen):
            out = model(nxt, SeqInfo.dense(batch, 1, device=dev, offset=prompt + step), state=state)
            state = out.state
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        torch.cuda.synchronize()
        t2 = time.perf_counter()
    return {
        "batch": batch, "prompt": prompt, "gen": gen,
        "prefill_s": t1 - t0, "decode_s": t2 - t1,
        "decode_tok_per_s": batch * gen / (t2 - t1),
        "ms_per_step": 1e3 * (t2 - t1) / gen,
        "peak_mem_gib": (torch.cuda.max_memory_allocated() - base) / 2**30,
        "state_gib": state_bytes(state) / 2**30,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="transformer,sambay", help="registered architecture families")
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--prompt", type=int, default=2048)
    ap.add_argument("--gen", type=int, default=1024, help="tokens generated after the prompt")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--warmup", type=int, default=16, help="decode steps of a warm-up run (kernels, allocator)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("decode_throughput.py needs a CUDA device")
    torch.manual_seed(0)
    rows = []
    for family in [m.strip() for m in args.models.split(",") if m.strip()]:
        model = build(family, args.depth, args.vocab, args.prompt + args.gen).cuda().eval()
        n_params = sum(p.numel() for p in model.parameters())
        measure(model, 1, min(args.prompt, 256), args.warmup, args.vocab)  # warm-up
        for b in (int(x) for x in args.batches.split(",")):
            row: dict[str, Any] = {"model": family, "depth": args.depth, "params_m": n_params / 1e6,
                                   "device": torch.cuda.get_device_name()}
            try:
                row.update(measure(model, b, args.prompt, args.gen, args.vocab))
            except torch.cuda.OutOfMemoryError:
                row.update({"batch": b, "error": "out of memory"})
                torch.cuda.empty_cache()
            print(json.dumps(row), flush=True)
            rows.append(row)
        del model
        torch.cuda.empty_cache()

    print(f"\nprompt {args.prompt} + {args.gen} generated, depth {args.depth}, bf16 autocast, eager, "
          f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    print(f"{'model':<12} {'params':>8} {'batch':>5} {'prefill s':>9} {'ms/step':>8} {'decode tok/s':>12} "
          f"{'state GiB':>9} {'peak GiB':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<12} {r['params_m']:>7.0f}M {r['batch']:>5} {r['error']}")
            continue
        print(f"{r['model']:<12} {r['params_m']:>7.0f}M {r['batch']:>5} {r['prefill_s']:>9.3f} {r['ms_per_step']:>8.2f} "
              f"{r['decode_tok_per_s']:>12,.0f} {r['state_gib']:>9.3f} {r['peak_mem_gib']:>8.2f}")
    by = {(r["model"], r["batch"]): r for r in rows if "error" not in r}
    for b in sorted({r["batch"] for r in rows}):
        if ("transformer", b) in by and ("sambay", b) in by:
            ratio = by[("sambay", b)]["decode_tok_per_s"] / by[("transformer", b)]["decode_tok_per_s"]
            print(f"batch {b}: sambay / transformer decode throughput = {ratio:.2f}x")


if __name__ == "__main__":
    main()
