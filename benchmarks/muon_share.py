"""Muon's share of the training step: Transformer++ d16 on one GPU, the hybrid ``muon`` next to fused AdamW.

Both optimizers run in the same process on the same model (bf16 autocast, whole-model torch.compile, random tokens,
T = 4096, B = 4 by default). Per step, CUDA events time forward+backward and ``optimizer.step()``; for the hybrid,
the inner AdamW (embedding, head, norms) is also timed alone, and the Muon part is the difference. Medians over the
timed steps::

    python benchmarks/muon_share.py                  # d16, B 4, T 4096
    python benchmarks/muon_share.py --depth 8 --ns-coefficients head

Reported: step time = forward+backward + optimizer step (one micro-batch per step), the optimizer's and the Muon
part's share of it, and the same shares projected for gradient accumulation up to ArchScale's batch of 2^21 tokens
per optimizer step (the optimizer then runs once per ``accum`` micro-batches:
share = opt / (accum · fwd_bwd + opt)). Newton–Schulz costs ≈ 5 · (4 m² n + 2 m³) FLOPs for an (m, n) matrix,
m ≤ n, against 6 · m · n FLOPs per token for that matrix in the model: with few tokens per optimizer step the
orthogonalisation is a sizeable fraction of the step ((10/3)·(1 + m/2n)·m / tokens of that matrix's
forward+backward FLOPs), and it shrinks as 1/accum.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch


def build(depth: int, vocab: int, seq_len: int) -> tuple[torch.nn.Module, dict[str, str]]:
    from archscale.models.archs import TransformerConfig, transformer
    from archscale.models.lm import build_model

    model = build_model(transformer(TransformerConfig(depth=depth, vocab_size=vocab, block_size=seq_len)))
    return model, model.param_roles()


def ns_flops(model: torch.nn.Module, roles: dict[str, str], steps: int) -> float:
    total = 0.0
    for name, p in model.named_parameters():
        if roles.get(name) == "matrix":
            m, n = sorted(p.shape[-2:])
            batch = p.numel() // (m * n)
            total += batch * steps * (4 * m * m * n + 2 * m**3)
    return total


def measure(name: str, args: argparse.Namespace) -> dict:
    from archscale.optim.optimizers import build_optimizer
    from archscale.optim.routing import build_param_groups

    torch.manual_seed(0)
    dev = torch.device("cuda")
    model, roles = build(args.depth, args.vocab, args.seq_len)
    model.to(dev)
    roles_all = ("embedding", "head", "matrix", "vector")
    groups = build_param_groups(model, roles, {r: 1e-4 for r in roles_all}, {r: 0.1 for r in roles_all})
    config: dict = {}
    if name == "muon":
        config = {"ns_coefficients": args.ns_coefficients, "ns_dtype": args.ns_dtype, "ns_steps": args.ns_steps}
    opt = build_optimizer(name, groups, config)
    fwd = torch.compile(model) if not args.no_compile else model
    x = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1), device=dev)
    inputs, targets = x[:, :-1], x[:, 1:]

    def fwd_bwd() -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fwd(inputs, None, targets=targets).loss
        loss.backward()
        return loss

    times: dict[str, list[float]] = {"fwd_bwd": [], "opt": [], "inner_adamw": []}
    events = [torch.cuda.Event(enable_timing=True) for _ in range(5)]
    for i in range(args.warmup + args.steps):
        events[0].record()
        for _ in range(args.accum):  # gradient accumulation: the optimizer runs once per `accum` passes
            loss = fwd_bwd()
        events[1].record()
        opt.step()
        events[2].record()
        inner = getattr(opt, "_adamw", None)
        if inner is not None:  # the AdamW part of the hybrid on its own (an extra update; fine for timing)
            events[3].record()
            inner.step()
            events[4].record()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i >= args.warmup:
            times["fwd_bwd"].append(events[0].elapsed_time(events[1]))
            times["opt"].append(events[1].elapsed_time(events[2]))
            if inner is not None:
                times["inner_adamw"].append(events[3].elapsed_time(events[4]))
    med = {k: statistics.median(v) for k, v in times.items() if v}
    fb, o = med["fwd_bwd"], med["opt"]
    muon_ms = o - med["inner_adamw"] if "inner_adamw" in med else 0.0
    tokens = args.batch * args.seq_len * args.accum  # per optimizer step
    accum = max(1, args.projected_batch_tokens // tokens)
    out = {
        "optimizer": name,
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "depth": args.depth,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "accum": args.accum,
        "tokens_per_step": tokens,
        "params": sum(p.numel() for p in model.parameters()),
        "fwd_bwd_ms": round(fb, 2),
        "opt_ms": round(o, 2),
        "step_ms": round(fb + o, 2),
        "opt_share": round(o / (fb + o), 4),
        "muon_ms": round(muon_ms, 2),
        "muon_share": round(muon_ms / (fb + o), 4),
        "accum_for_projection": accum,
        "opt_share_projected": round(o / (accum * fb + o), 4),
        "muon_share_projected": round(muon_ms / (accum * fb + o), 4),
        "final_loss": round(float(loss.detach()), 4),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }
    if name == "muon":
        flops = ns_flops(model, roles, args.ns_steps)
        out["ns_tflop_per_step"] = round(flops / 1e12, 2)
        out["ns_tflops_in_muon_part"] = round(flops / (muon_ms / 1e3) / 1e12, 1) if muon_ms > 0 else None
        # Newton–Schulz alone (batched as the optimizer does), on the momentum buffers: the rest of the Muon part
        # is momentum, casts and the parameter update.
        from archscale.optim.muon import _orthogonalize_all

        bufs = [s["momentum_buffer"] for s in opt.state.values() if "momentum_buffer" in s]
        ns_times = []
        for _ in range(5):
            events[0].record()
            _orthogonalize_all(bufs, args.ns_steps, args.ns_coefficients, getattr(torch, args.ns_dtype))
            events[1].record()
            torch.cuda.synchronize()
            ns_times.append(events[0].elapsed_time(events[1]))
        ns_ms = statistics.median(ns_times[1:])
        out["ns_only_ms"] = round(ns_ms, 2)
        out["ns_only_tflops"] = round(flops / (ns_ms / 1e3) / 1e12, 1)
    del model, opt, fwd
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    torch._dynamo.reset()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--accum", type=int, default=1, help="micro-batches accumulated per optimizer step (measured)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--optimizers", default="adamw,muon")
    p.add_argument("--ns-coefficients", default="quintic", choices=["quintic", "head"])
    p.add_argument("--ns-dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--ns-steps", type=int, default=5)
    p.add_argument("--projected-batch-tokens", type=int, default=2**21, help="ArchScale's b0 (REFERENCE.md §4)")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--compile-ns", action="store_true", help="experiment: torch.compile the Newton–Schulz function")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("muon_share.py times CUDA kernels and needs a CUDA device (none is visible); run it on the GPU machine")
    if args.compile_ns:
        import archscale.optim.muon as muon_module

        muon_module.newton_schulz = torch.compile(muon_module.newton_schulz, dynamic=False)  # type: ignore[assignment]
    torch.backends.cuda.matmul.allow_tf32 = True
    results = []
    for name in args.optimizers.split(","):
        r = measure(name, args)
        print(json.dumps(r), flush=True)
        results.append(r)
    print(
        f"\n{'optimizer':<9} {'fwd+bwd ms':>10} {'opt ms':>8} {'opt share':>9} {'muon ms':>8} {'muon share':>10} "
        f"{'share @2^21 tok':>15}"
    )
    for r in results:
        print(
            f"{r['optimizer']:<9} {r['fwd_bwd_ms']:>10.1f} {r['opt_ms']:>8.1f} {r['opt_share']:>9.1%} "
            f"{r['muon_ms']:>8.1f} {r['muon_share']:>10.1%} {r['opt_share_projected']:>15.2%}"
        )


if __name__ == "__main__":
    main()
