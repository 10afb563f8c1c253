"""Recurrent token mixers on CUDA: forward+backward time and peak memory of Mamba-2 and Gated DeltaNet layers next to
an attention layer of the same width, in the same process.

    python benchmarks/recurrent_mixers_bench.py                      # both cases, a table at the end
    python benchmarks/recurrent_mixers_bench.py --cases varlen --iters 20 --mixers mamba2,gdn
    python benchmarks/recurrent_mixers_bench.py --mixers attention,gdn,gdn_loop   # GDN's state pass: Triton vs loop
    python benchmarks/recurrent_mixers_bench.py --mixers attention,gdn,gdn_truncated,gdn  # TF32 rounding's cost
    python benchmarks/recurrent_mixers_bench.py --mixers attention,mamba2,mamba2:chunk_size=128  # a config field

Layers come from the mixer registry with their default configs (REFERENCE §3) at SambaY / ArchScale d16 width,
d_model 2048: Mamba-2 (d_state 128, head_dim 64, expand 2: 64 heads, chunk 256), GDN (6 heads of K 256, V 512,
chunk 64), and the baseline ``attention`` (16 heads of 128, 4 KV heads, RoPE). Each layer is wrapped in
``torch.compile`` (as the Trainer compiles the whole model) and run under bf16 autocast with fp32 parameters.

Cases:
    dense   B4 T4096
    varlen  B1 T16384 packed from documents of 1-6K tokens (fixed seed), cu_seqlens passed through SeqInfo

fp32 products use TF32 (as in benchmarks/train_throughput.py) unless --no-tf32.

Time = median of --iters CUDA-event timings of forward + backward (upstream gradient fixed) after --warmup calls
(the first ones compile). Peak = torch.cuda.max_memory_allocated during one step minus what was allocated before
it (parameters, inputs). Each row also records which implementation the kernel dispatch picked (GDN: "fla" only
where fla allows it, else the compiled chunked form). Writes recurrent_mixers_bench.json to $OUT when set.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from archscale.models.api import SeqInfo
from archscale.models.mixers.base import MixerContext
from archscale.registry import mixers

D_MODEL = 2048
PARAMS: dict[str, dict[str, Any]] = {
    "attention": {"n_head": 16, "n_kv_head": 4, "head_dim": 128},
    "mamba2": {},
    "gdn": {},
}
# Variants measured next to the registered mixers: "gdn_loop" is GDN with the chunk-to-chunk state pass on the
# PyTorch loop instead of the Triton kernels (archscale/kernels/delta_rule/state_pass.py, TRITON_ON_CUDA);
# "gdn_truncated" has the kernels' TF32 products truncate their inputs as Triton alone does, instead of rounding
# them as cuBLAS does (state_pass_triton.ROUND_TO_TF32).
VARIANTS = {"gdn_loop": "gdn", "gdn_truncated": "gdn"}
# "name:field=value:field=value" sets fields of the mixer's config on top of PARAMS (e.g. mamba2:chunk_size=128).
OVERRIDE_SEP = ":"
CASES = {"dense": {"B": 4, "T": 4096, "varlen": False}, "varlen": {"B": 1, "T": 16384, "varlen": True}}


def doc_lengths(total: int, lo: int, hi: int, seed: int = 0) -> list[int]:
    """Document lengths uniform in [lo, hi] until ``total`` tokens; the last one takes the remainder."""
    rng = random.Random(seed)
    lengths: list[int] = []
    while sum(lengths) < total:
        lengths.append(min(rng.randint(lo, hi), total - sum(lengths)))
    return lengths


def mixer_spec(row_name: str) -> tuple[str, str, BaseModel]:
    """(variant, registered mixer, validated config) of a --mixers entry: a variant's base mixer, and its config
    from PARAMS with the fields set after ':' (values parsed as JSON when they parse, else kept as strings)."""
    variant, *fields = row_name.split(OVERRIDE_SEP)
    name = VARIANTS.get(variant, variant)
    if name not in PARAMS:
        raise SystemExit(f"--mixers: unknown mixer {variant!r}; choose from {', '.join([*PARAMS, *VARIANTS])}")
    config = dict(PARAMS[name])
    for field in fields:
        key, eq, value = field.partition("=")
        if not eq or not key:
            raise SystemExit(f"--mixers: {row_name!r}: write config fields as {variant}:field=value")
        try:
            config[key] = json.loads(value)
        except json.JSONDecodeError:
            config[key] = value
    try:
        validated = mixers.config_model(name).model_validate(config)  # a misspelt field or a bad value fails here
    except ValueError as e:  # pydantic's ValidationError names the field and what it accepts
        raise SystemExit(f"--mixers: {row_name!r}: {e}") from e
    return variant, name, validated


def build(name: str, config: BaseModel) -> torch.nn.Module:
    return mixers.get(name)(MixerContext(d_model=D_MODEL, layer_idx=0, n_layers=16), config).cuda()


def picked_impl(name: str) -> str:
    """What impl="auto" runs for the registered mixer ``name`` on this card."""
    if name == "gdn":
        from archscale.kernels.delta_rule import fla_refusal, state_pass

        reason = fla_refusal(torch.device("cuda"))
        if reason is None:
            return "fla"
        # The op's own dispatch, as run() has set TRITON_ON_CUDA for this row.
        triton_pass = state_pass._on_triton(torch.empty(0, device="cuda"))
        if not triton_pass:
            return "chunked (compiled; fla refused); loop pass"
        from archscale.kernels.delta_rule import state_pass_triton

        tf32 = "" if not torch.backends.cuda.matmul.allow_tf32 else (
            ", TF32 rounded" if state_pass_triton.ROUND_TO_TF32 else ", TF32 truncated")
        return f"chunked (compiled; fla refused); Triton pass{tf32}"
    if name == "mamba2":
        return "chunked (compiled)"
    return "auto"


def run(name: str, case: str, warmup: int, iters: int) -> dict[str, Any]:
    from archscale.kernels.delta_rule import state_pass

    variant, base, config = mixer_spec(name)
    state_pass.TRITON_ON_CUDA = False if variant == "gdn_loop" else None  # read at run time, not in the graph
    if state_pass._HAS_TRITON:
        from archscale.kernels.delta_rule import state_pass_triton

        state_pass_triton.ROUND_TO_TF32 = variant != "gdn_truncated"  # read at each launch
    c = CASES[case]
    B, T = c["B"], c["T"]
    torch.manual_seed(0)
    mixer = build(base, config)
    if c["varlen"]:
        lengths = doc_lengths(T, 1, 6144)
        seq = SeqInfo.from_cu_seqlens(
            torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
        )
    else:
        lengths = [T] * B
        seq = SeqInfo.dense(B, T, device="cuda")
    seq = dataclasses.replace(seq, return_state=False)  # as in training: the model drops the mixers' final states
    x = torch.randn(B, T, D_MODEL, device="cuda", requires_grad=True)
    grad = torch.randn(B, T, D_MODEL, device="cuda")
    compiled = torch.compile(mixer)
    row: dict[str, Any] = {"case": case, "mixer": name, "impl": picked_impl(base), "B": B, "T": T,
                           "docs": len(lengths) if c["varlen"] else None,
                           "params_M": sum(p.numel() for p in mixer.parameters()) / 1e6}

    def step() -> torch.Tensor:
        x.grad = None
        mixer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y, _ = compiled(x, seq)
        y.float().backward(grad)
        return y

    try:
        y = step()
        if not torch.isfinite(y).all():
            raise RuntimeError("non-finite output")
        for _ in range(warmup):
            step()
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        row["peak_gib"] = (torch.cuda.max_memory_allocated() - before) / 2**30
        times = []
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        row["ms"] = statistics.median(times)
        row["ktok_s"] = B * T / row["ms"]
    except Exception as e:  # noqa: BLE001 - a failing layer is a result, not a crash of the whole table
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="dense,varlen")
    parser.add_argument("--mixers", default="attention,mamba2,gdn",
                        help="attention first: it is the baseline; also gdn_loop (GDN's state pass as a PyTorch loop) "
                             "and gdn_truncated (its Triton kernels truncating TF32 inputs)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--no-tf32", action="store_true",
                        help="full-precision fp32 products (the chunked GDN and Mamba-2 forms compute in fp32)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("recurrent_mixers_bench needs a CUDA device")
    # As benchmarks/train_throughput.py: TF32 for fp32 products, which the Triton state pass follows too.
    torch.backends.cuda.matmul.allow_tf32 = not args.no_tf32
    print(f"# {torch.cuda.get_device_name()}  torch {torch.__version__}  tf32 {not args.no_tf32}", flush=True)
    for m in args.mixers.split(","):
        mixer_spec(m)  # every entry checked before the first one compiles
    rows = [run(m, case, args.warmup, args.iters) for case in args.cases.split(",") for m in args.mixers.split(",")]

    print(f"\n{'case':7} {'mixer':22} {'impl':58} {'ms':>8} {'x attn':>7} {'ktok/s':>8} {'peak GiB':>9}")
    for r in rows:
        base = next((b for b in rows if b["case"] == r["case"] and b["mixer"] == "attention" and "ms" in b), None)
        if "error" in r:
            print(f"{r['case']:7} {r['mixer']:22} {r['impl']:58} {r['error']}")
            continue
        ratio = f"{r['ms'] / base['ms']:.2f}" if base else "-"
        print(f"{r['case']:7} {r['mixer']:22} {r['impl']:58} {r['ms']:8.2f} {ratio:>7} {r['ktok_s']:8.0f} "
              f"{r['peak_gib']:9.2f}")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "recurrent_mixers_bench.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
