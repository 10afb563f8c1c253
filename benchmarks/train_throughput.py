"""Training throughput: tok/s, MFU and peak memory of any registered architecture next to a plain PyTorch baseline.

Every model runs in the same loop (bf16 autocast, fused AdamW, whole-model torch.compile, random tokens), in the
same process, so the ratios between them are meaningful on a shared, noisy machine:

    python benchmarks/train_throughput.py --depth 16 --seq-len 4096 --batch 4 --models plain,transformer,sambay
    python benchmarks/train_throughput.py --depth 16 --seq-len 16384 --batch 1 --models transformer,sambay --varlen
    python benchmarks/train_throughput.py --models plain,transformer --profile 3   # + GPU time by kernel category

``plain`` is benchmarks/baseline_plain.py (a ~80-line Llama-style model with Transformer++'s dimensions); any other
name is an archscale architecture family built with ``depth``, ``vocab_size`` and ``block_size`` (``archscale`` is
an alias of ``transformer``). ``--varlen`` packs each row into documents (lengths uniform in [--doc-min, --doc-max],
a few different layouts cycled every step, as real packed data has) and passes their boundaries (SeqInfo
cu_seqlens, one row of B·T tokens), so attention and recurrent state stop at document ends.

MFU = model FLOPs · tok/s / peak. Model FLOPs per token = 3 × the model's own forward count with attention charged
causally and window-aware (``model.flops_per_token(T, attention="causal")``: 2·N for every matrix including the
head, plus QKᵀ and AV over the keys each query may see — for a window W, min(t, W) keys), which for Transformer++ is
exactly the 6·N + 6·L·d·T convention of ../shared/docs/GPU.md (N without the input embedding). For varlen batches the
attention part is charged per document. ``plain`` is counted with the same formula as ``transformer``. peak = the
card's dense bf16 FLOP/s (989 TFLOP/s for an H100 SXM). Prints one JSON line per measurement and a table at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baseline_plain import PlainLM  # noqa: E402
from gpu_clocks import ClockSampler  # noqa: E402

PEAK_BF16 = 989e12


def archscale_model(family: str, depth: int, vocab: int, seq_len: int, extra: dict[str, Any]) -> torch.nn.Module:
    from archscale.models.lm import build_model
    from archscale.registry import architectures

    family = "transformer" if family == "archscale" else family
    params = {"depth": depth, "vocab_size": vocab, "block_size": seq_len, **extra}
    config = architectures.config_model(family).model_validate(params)
    return build_model(architectures.get(family)(config))


class LossOf(torch.nn.Module):
    """One call for every model: (idx, targets, seq) -> loss."""

    def __init__(self, model: torch.nn.Module, plain: bool) -> None:
        super().__init__()
        self.inner, self.plain = model, plain

    def forward(self, idx: torch.Tensor, targets: torch.Tensor, seq: Any) -> torch.Tensor:
        if self.plain:
            return self.inner(idx, targets)
        return self.inner(idx, seq, targets=targets).loss


def doc_layouts(n_layouts: int, total: int, lo: int, hi: int, seed: int = 0) -> list[list[int]]:
    """``n_layouts`` packings of ``total`` tokens into documents of uniform random length in [lo, hi]."""
    g = torch.Generator().manual_seed(seed)
    layouts = []
    for _ in range(n_layouts):
        lengths, left = [], total
        while left > 0:
            n = min(left, int(torch.randint(lo, hi + 1, (1,), generator=g)))
            lengths.append(n)
            left -= n
        layouts.append(lengths)
    return layouts


def flops_per_step(model: torch.nn.Module, lengths: list[int]) -> float:
    """Training FLOPs (3 × forward) of one row made of documents of ``lengths`` (a dense row is one document)."""
    return sum(3.0 * model.flops_per_token(n, attention="causal") * n for n in lengths)


def measure(name: str, varlen: bool, args: argparse.Namespace) -> dict[str, Any]:
    from archscale.models.api import SeqInfo

    torch.manual_seed(0)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    depth, T = args.depth, args.seq_len
    extra = json.loads(args.arch_params) if args.arch_params else {}
    # FLOPs come from the archscale model of the same family; plain is counted as the transformer it mirrors.
    counter = archscale_model("transformer", depth, args.vocab, T, {}) if name == "plain" else \
        archscale_model(name, depth, args.vocab, T, extra)
    if name == "plain":
        d, n_head, n_kv, hd = 128 * depth, depth, max(1, depth // 4), 128
        model = LossOf(PlainLM(args.vocab, d, depth, n_head, n_kv, hd, 4 * d), plain=True).to(dev)
    else:
        model = LossOf(counter, plain=False).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    step_fn = torch.compile(model, mode=args.compile_mode) if not args.no_compile else model

    B = args.batch
    if varlen:
        if name == "plain":
            raise SystemExit("--varlen: the plain baseline has no document masking; leave it out of --models")
        layouts = doc_layouts(args.layouts, B * T, args.doc_min, args.doc_max)
        seqs = [SeqInfo.from_cu_seqlens(torch.tensor([0, *torch.tensor(l).cumsum(0).tolist()])).to(dev)
                for l in layouts]
        rows, row_len = 1, B * T
    else:
        layouts = [[T] * B]
        seqs = [SeqInfo.dense(B, T, device=dev)]
        rows, row_len = B, T
    step_flops = [flops_per_step(counter, l) for l in layouts]
    x = torch.randint(0, args.vocab, (rows, row_len + 1), device=dev)
    inputs, targets = x[:, :-1], x[:, 1:]

    def step(i: int) -> torch.Tensor:
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = step_fn(inputs, targets, seqs[i % len(seqs)])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t_compile = time.perf_counter()
    for i in range(max(args.warmup, 2 * len(seqs))):  # every layout seen (compiled) before timing
        step(i)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    t_compile = time.perf_counter() - t_compile
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with ClockSampler(enabled=cuda) as clocks:
        t0 = time.perf_counter()
        for i in range(args.steps):
            loss = step(i)
        sync()
        dt = time.perf_counter() - t0
    tok_s = B * T * args.steps / dt
    flops = sum(step_flops[i % len(step_flops)] for i in range(args.steps))
    out = {
        "model": name,
        "mode": "varlen" if varlen else "dense",
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "depth": depth,
        "params": n_params,
        "seq_len": T,
        "batch": B,
        "tok_per_s": round(tok_s),
        "mfu": round(flops / dt / PEAK_BF16, 4),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else 0.0,
        "final_loss": round(float(loss), 4),
        "warmup_s": round(t_compile, 1),
        "compile_mode": None if args.no_compile else (args.compile_mode or "default"),
        **clocks.summary(),  # the card's SM clock and power over the timed steps: a power-capped card slows down
    }
    if args.profile and cuda:
        from step_profile import profile_steps

        out["profile"] = profile_steps(step, args.profile)
    return out  # the caller frees memory and compiled graphs once this frame (model, optimizer) is gone


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--models", default="plain,transformer",
                   help="comma-separated: plain and/or archscale architecture families; the first is the baseline")
    p.add_argument("--arch-params", default="", help="JSON of extra architecture params for the archscale models")
    p.add_argument("--repeats", type=int, default=1, help="measure the list this many times (interleaved)")
    p.add_argument("--varlen", action="store_true", help="document-masked batches (see the module docstring)")
    p.add_argument("--modes", default="", help="comma-separated dense,varlen: measure each model in each mode "
                   "(overrides --varlen)")
    p.add_argument("--doc-min", type=int, default=1024)
    p.add_argument("--doc-max", type=int, default=6144)
    p.add_argument("--layouts", type=int, default=4, help="distinct document layouts cycled with --varlen")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--compile-mode", default=None, choices=["default", "reduce-overhead", "max-autotune",
                                                              "max-autotune-no-cudagraphs"],
                   help="torch.compile's mode (max-autotune: inductor benchmarks its matmul templates against cuBLAS)")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="after timing, profile this many steps and print GPU time by kernel category")
    p.add_argument("--device", default="cuda", help="cuda (what the numbers are for) or cpu (a smoke test only)")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("train_throughput.py: no CUDA device (use --device cpu for a smoke test)")
    if args.profile and args.device != "cuda":
        sys.exit("train_throughput.py: --profile reads CUDA kernel times; it needs --device cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    names = args.models.split(",")
    modes = args.modes.split(",") if args.modes else ["varlen" if args.varlen else "dense"]
    if set(modes) - {"dense", "varlen"}:
        sys.exit(f"--modes takes dense and/or varlen, got {args.modes!r}")
    runs = [(n, m) for n in names for m in modes if not (n == "plain" and m == "varlen")]
    results = []
    for _ in range(args.repeats):
        for name, mode in runs:
            r = measure(name, mode == "varlen", args)
            torch._dynamo.reset()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            print(json.dumps(r), flush=True)
            results.append(r)
    first = runs[0]
    base = [r["tok_per_s"] for r in results if (r["model"], r["mode"]) == first]
    print(f"\n{'model':<12} {'mode':>6} {'depth':>5} {'B×T':>10} {'tok/s':>10} {'MFU':>6} {'mem GiB':>8} "
          f"{'vs ' + '/'.join(first):>18} {'SM MHz':>7} {'W':>5}")
    for r in results:
        ratio = r["tok_per_s"] / (sum(base) / len(base))
        print(f"{r['model']:<12} {r['mode']:>6} {r['depth']:>5} {str(r['batch']) + '×' + str(r['seq_len']):>10} "
              f"{r['tok_per_s']:>10} {r['mfu']:>6.1%} {r['peak_mem_gib']:>8} {ratio:>18.3f} "
              f"{r.get('sm_clock_mhz') or '-':>7} {r.get('power_w') or '-':>5}")
    for r in results:
        if "profile" in r:
            from step_profile import format_profile

            print("\n" + format_profile(f"{r['model']} {r['mode']}", r["profile"]))


if __name__ == "__main__":
    main()
