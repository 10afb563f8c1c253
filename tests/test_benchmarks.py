"""The benchmark scripts (their numbers come from the GPU machine, benchmarks/RESULTS.md): every one starts and
parses its arguments without a GPU, the throughput script's FLOP count matches the formula of ../shared/docs/GPU.md,
and its measurement loop runs end to end on the CPU for dense and varlen batches; scan_registers.py records the scan's
real launches and finds no spilling backward variant (ptxas for sm_90, no GPU needed)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py") if not p.name.startswith("_")))
def test_script_starts_without_a_gpu(script: str) -> None:
    proc = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_throughput_flops_match_the_gpu_md_formula() -> None:
    """Training FLOPs per token of Transformer++ = 6·N + 6·L·d·(T+1) with N every weight matrix but the input
    embedding (the head counts) and causal attention charging (T+1)/2 keys per query on average. (GPU.md's N also
    counts the norm gains, which do no matmul: 0.01% of N at d16.)"""
    from train_throughput import archscale_model, flops_per_step

    depth, vocab, T = 2, 1000, 256
    model = archscale_model("transformer", depth, vocab, T, {})
    d = 128 * depth
    n = sum(p.numel() for p in model.parameters() if p.ndim == 2) - vocab * d
    assert flops_per_step(model, [T]) / T == pytest.approx(6 * n + 6 * depth * d * (T + 1), rel=1e-12)
    # Documents: attention charged per document, so two halves cost less than one sequence of both.
    assert flops_per_step(model, [T // 2, T // 2]) < flops_per_step(model, [T])


def test_throughput_loop_runs_on_cpu_dense_and_varlen() -> None:
    cmd = [sys.executable, str(BENCH / "train_throughput.py"), "--device", "cpu", "--no-compile", "--depth", "4",
           "--seq-len", "64", "--batch", "2", "--vocab", "256", "--steps", "1", "--warmup", "1", "--layouts", "2",
           "--doc-min", "8", "--doc-max", "40", "--models", "transformer,sambay", "--modes", "dense,varlen"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [(r["model"], r["mode"]) for r in rows] == [
        ("transformer", "dense"), ("transformer", "varlen"), ("sambay", "dense"), ("sambay", "varlen")]
    assert all(r["tok_per_s"] > 0 and r["final_loss"] > 0 for r in rows)
    assert "vs transformer/dense" in proc.stdout  # the ratio table against the first model and mode


def test_step_profile_classifies_kernel_names() -> None:
    """Kernel names as torch 2.11 / triton 3.6 print them on an H100, each to the category it belongs to."""
    from step_profile import classify, format_profile

    names = {
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1": "matmul",
        "nvjet_tst_192x192_64x3_2x1_v_bz_coopB_TNN": "matmul",
        "triton_tem_fused_mm_3": "matmul",
        "triton_tem_fused_flex_attention_0": "attention",
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x128_4x1x1_kernel0_0": "attention",
        "triton_poi_fused__scaled_dot_product_cudnn_attention_add_mul_7": "fused elementwise",
        "triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_2": "fused elementwise",
        "_scan_fwd_kernel": "selective scan",
        "_scan_bwd_summary_kernel": "selective scan",
        "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4>, true>": "attention",
        "void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits>": "attention",
        "_ce_rows_kernel": "cross-entropy",
        "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>": "optimizer",
        "Memcpy DtoD (Device -> Device)": "copy / fill",
        "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>": "copy / fill",
        "some_other_kernel": "other",
    }
    assert {n: classify(n) for n in names} == names
    text = format_profile("m dense", {"wall_ms": 10.0, "kernel_ms": 9.0, "gap_ms": 1.0, "launches": 7,
                                      "idle_short_ms": 0.25, "idle_long_ms": 0.5,
                                      "categories_ms": {"matmul": 6.0, "attention": 3.0},
                                      "top_kernels_ms": [("gemm", 6.0)],
                                      "matmul_by_shape": [{"op": "aten::mm", "a": [4096, 2048], "b": [2048, 512],
                                                           "calls": 16.0, "ms": 3.5, "tflops": 615,
                                                           "kernel": "nvjet"}]})
    assert "3.50 ms  aten::mm [4096, 2048] x [2048, 512]  x16  615 TFLOP/s  nvjet" in text
    assert "gap 1.0 ms (10.0%)" in text and "matmul" in text and "60.0%" in text
    assert "7 kernel launches" in text and "0.2 ms in gaps < 20" in text and "0.5 ms in longer" in text


def test_step_profile_idle_gaps_split_short_from_long_and_count_overlap_once() -> None:
    from step_profile import idle_gaps

    # kernels at [0, 10], [12, 20] (gap 2), [15, 30] overlapping, [100, 110] (gap 70), [105, 108] inside it
    spans = [(100.0, 110.0), (0.0, 10.0), (15.0, 30.0), (12.0, 20.0), (105.0, 108.0)]
    assert idle_gaps(spans) == (2.0, 70.0)
    assert idle_gaps(spans, short_us=100.0) == (72.0, 0.0)
    assert idle_gaps([]) == (0.0, 0.0)


def test_throughput_profile_off_cuda_is_refused_with_the_reason() -> None:
    cmd = [sys.executable, str(BENCH / "train_throughput.py"), "--device", "cpu", "--profile", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "--profile" in proc.stderr and "--device cuda" in proc.stderr, proc.stderr[-2000:]


def _scan_kernels_compiled_for_gpu() -> bool:
    from archscale.kernels.selective_scan.triton_scan import INTERPRETED

    return not INTERPRETED


def _skip_unless_ptxas_compiles_for_sm90() -> None:
    """Skip where kernels cannot be compiled for sm_90 offline: under the interpreter, or without Triton's ptxas."""
    import triton

    if not _scan_kernels_compiled_for_gpu():
        pytest.skip("this process runs Triton in the interpreter (TRITON_INTERPRET=1)")
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip(f"Triton {triton.__version__} ships no ptxas here")


def _compile_recorded_for_sm90(calls: list) -> list[tuple[Any, dict, dict, Any]]:
    """Each launch recorded by scan_registers.recording, compiled for sm_90 as it would launch (its own
    ``num_stages``): (kernel, launch kwargs, signature, compiled kernel)."""
    from scan_registers import compile_for_sm, specialise

    out = []
    for fn, args, kwargs in calls:
        kwargs = dict(kwargs)
        stages = kwargs.pop("num_stages")
        signature, constexprs, attrs, warps = specialise(fn, args, kwargs)
        out.append((fn, kwargs, signature, compile_for_sm(fn, signature, constexprs, attrs, warps, num_stages=stages)))
    return out


def test_scan_registers_records_launches_with_triton_specialisations() -> None:
    """The launches scan_registers.py compiles are the real launchers' (nothing runs), specialised as on the device:
    an int equal to 1 becomes a constant, ``do_not_specialize`` ints stay plain, aligned pointers get the
    divisibility hint; training asks for no dL/dh_T, a final state's gradient does."""
    if not _scan_kernels_compiled_for_gpu():
        pytest.skip("this process runs Triton in the interpreter (TRITON_INTERPRET=1)")
    from scan_registers import CASES, launches, mixer_inputs, specialise

    inputs = mixer_inputs(1, 64, 48, 4, 3)
    (fwd, fwd_args, fwd_kw), (bwd, bwd_args, bwd_kw) = launches(CASES["training"], inputs)
    assert (fwd.__name__, bwd.__name__) == ("_scan_fwd_kernel", "_scan_bwd_kernel")
    assert bwd_kw["HAS_DHT"] is False and fwd_kw["STORE_Y"] is False
    signature, constexprs, attrs, warps = specialise(bwd, bwd_args, bwd_kw)
    names = [p.name for p in bwd.params]
    assert signature["u_ptr"] == "*bf16" and signature["At_ptr"] == "*fp32"
    assert signature["N_CHUNKS"] == "constexpr" and constexprs["N_CHUNKS"] == 1  # one chunk off CUDA
    assert signature["DCH"] == "i32" and (names.index("DCH"),) in attrs  # 48: divisible by 16
    assert signature["s_nd"] == "i32" and (names.index("s_nd"),) not in attrs  # do_not_specialize
    assert (names.index("N"),) not in attrs and warps == bwd_kw["num_warps"]  # N = 4
    (_, _, _), (_, args, kw) = launches(CASES["final state with a gradient"], inputs)
    assert kw["HAS_DHT"] is True
    dhT = args[names.index("dhT_ptr")]
    assert dhT.shape == (1, 4, 48) and dhT.is_contiguous()  # (nseq, N, D): the state tiles' layout


def test_scan_backward_variants_do_not_spill_registers() -> None:
    """ptxas for sm_90 (no GPU needed) on the backward variants a model uses: none spills. The dL/dh_T variant did
    (loaded as (D, N)), and measured about 1.5x slower in SambaY on the H100 (benchmarks/RESULTS.md, 2026-12-05)."""
    import triton

    _skip_unless_ptxas_compiles_for_sm90()
    from scan_registers import usage_table

    rows = usage_table(cases=["training", "memory layer (ungated output)", "final state with a gradient"])
    backward = {"+".join(r["flags"]) or "plain": r for r in rows if r["kernel"] == "_scan_bwd_kernel"}
    assert set(backward) == {"plain", "HAS_DY", "HAS_DHT"}
    for variant, r in backward.items():
        assert r["spill_stores"] == r["spill_loads"] == 0, f"{variant}: {r} (Triton {triton.__version__})"
        assert 0 < r["registers"] <= 255


def test_clock_samples_parse_and_summarize() -> None:
    from gpu_clocks import ClockSampler, parse_samples, summarize

    text = "1980, 650.12, 61\n1755, 699.50, 67\n[N/A], 10, 3\n1830, 690.00, 66\n17"
    samples = parse_samples(text)
    assert samples == [(1980.0, 650.12, 61.0), (1755.0, 699.5, 67.0), (1830.0, 690.0, 66.0)]
    assert summarize(samples) == {"sm_clock_mhz": 1830, "sm_clock_min_mhz": 1755, "power_w": 690, "temp_c": 67,
                                  "clock_samples": 3}
    assert summarize([]) == {}
    with ClockSampler(enabled=False) as c:  # off (no GPU): nothing started, an empty summary
        pass
    assert c.summary() == {}


def test_matmul_by_shape_reads_the_operands_of_mm_out_and_addmm() -> None:
    """Inductor calls mm with out= (the output's shape comes last) and addmm with the added input first."""
    from types import SimpleNamespace as NS

    from step_profile import matmul_by_shape

    kern = lambda us: NS(name="nvjet_sm90_tst_256x128", duration=us)  # noqa: E731
    events = [
        NS(name="aten::mm", input_shapes=[[4096, 2048], [2048, 512], [4096, 512]], kernels=[kern(100.0)]),
        NS(name="aten::mm", input_shapes=[[4096, 2048], [2048, 512], [4096, 512]], kernels=[kern(300.0)]),
        NS(name="aten::addmm", input_shapes=[[512], [64, 32], [32, 16], [], []], kernels=[kern(1.0)]),
        NS(name="aten::mm", input_shapes=[[8, 8], [8, 8]], kernels=[]),  # launched nothing itself
        NS(name="aten::add", input_shapes=[[8], [8]], kernels=[kern(5.0)]),  # not a product
    ]
    rows = matmul_by_shape(NS(events=lambda: events), steps=2)
    assert [(r["op"], r["a"], r["b"]) for r in rows] == [("aten::mm", [4096, 2048], [2048, 512]),
                                                         ("aten::addmm", [64, 32], [32, 16])]
    mm = rows[0]
    assert mm["calls"] == 1 and mm["ms"] == 0.2  # 400 µs over 2 steps
    assert mm["tflops"] == round(2 * 2 * 4096 * 2048 * 512 / 400e-6 / 1e12)


def test_cast_matmul_launches_of_the_loss_fit_an_h100() -> None:
    """The fused loss's two ``cast_matmul`` launches (float32 head as the first operand, bf16, default tiles),
    compiled for sm_90 without a GPU: Hopper's wgmma with the converted tiles in registers, shared memory within
    the H100's 227 KiB a block, no register spills. Triton's version here may not be the card's (GPU.md)."""
    _skip_unless_ptxas_compiles_for_sm90()
    from scan_registers import ptxas_usage, recording

    import torch

    from archscale.kernels.cross_entropy import cast_matmul as cm

    with recording(cm, ("_cast_matmul_kernel",)) as calls:
        c, v, d = 64, 4096, 256
        w, h = torch.empty(v, d), torch.empty(c, d, dtype=torch.bfloat16)
        dl = torch.empty(c, v, dtype=torch.bfloat16)
        cm.cast_matmul(w, h.t(), torch.empty(c, v, dtype=torch.bfloat16).t())  # logitsᵀ = W hᵀ
        cm.cast_matmul(w.t(), dl.t(), torch.empty(c, d).t())  # grad_hᵀ = Wᵀ dlogitsᵀ
    assert len(calls) == 2
    for _, _, signature, compiled in _compile_recorded_for_sm90(calls):
        assert signature["a_ptr"] == "*fp32"  # the head's float32 tiles are the first operand
        assert "constexpr" in (signature["stride_am"], signature["stride_ak"])  # a unit stride, specialised
        assert "wgmma.mma_async" in compiled.asm["ptx"], "not compiled to Hopper's wgmma"
        assert compiled.metadata.shared <= 227 * 1024, compiled.metadata.shared
        usage = ptxas_usage(compiled)
        assert usage["spill_stores"] == usage["spill_loads"] == 0, usage


def _state_pass_launches_for_sm90(round_to_tf32: bool) -> dict[str, tuple[str, dict]]:
    """GDN's state-pass kernels at GDN's sizes with TF32 allowed, launched through their real launchers (nothing
    runs) and compiled for sm_90: {kernel name: (ptx, ptxas usage)}."""
    from scan_registers import ptxas_usage, recording

    import torch

    from archscale.kernels.delta_rule import state_pass_triton as sp

    B, H, nc, Q, K, V = 1, 2, 3, 64, 256, 512  # chunk 64, key head 256, value head 512 (REFERENCE §3)
    saved_round = sp.ROUND_TO_TF32
    sp.ROUND_TO_TF32 = round_to_tf32
    try:
        with recording(sp, ("_state_pass_fwd_kernel", "_state_pass_bwd_kernel")) as calls:
            UW = torch.empty(B, H, nc, V + K, Q).transpose(-1, -2)  # the solve's column-major output, as in the model
            U, W, k_dec = UW[..., :V], UW[..., V:], torch.empty(B, H, nc, Q, K)
            decay, h0 = torch.empty(B, H, nc), torch.empty(B, H, K, V)
            sp.state_pass_fwd_triton(U, W, k_dec, decay, h0, torch.empty(B, H, nc, K, V))
            sp.state_pass_bwd_triton(torch.empty(B, H, nc, K, V), torch.empty(B, H, nc, Q, V), h0, W, k_dec, decay)
    finally:
        sp.ROUND_TO_TF32 = saved_round
    assert len(calls) == 2
    out = {}
    for fn, kwargs, _, compiled in _compile_recorded_for_sm90(calls):
        assert kwargs["PRECISION"] == "tf32" and kwargs["ROUND"] == round_to_tf32
        assert re.search(r"\.tf32", compiled.asm["ptx"]), f"{fn.__name__}: no TF32 product"
        out[fn.__name__] = (compiled.asm["ptx"], ptxas_usage(compiled))
    return out


def test_state_pass_kernels_round_tf32_inputs_on_an_h100(set_tf32: Callable[[bool], None]) -> None:
    """With TF32 allowed, GDN's state-pass kernels compiled for sm_90 round the state operand of each of their four
    products to TF32 in registers (the ``& -8192`` that clears the dropped bits; Triton alone truncates, and the
    kernels then erred ~8x more than PyTorch's TF32 loop on the H100), and not with ``ROUND_TO_TF32`` off. The
    rounding may cost registers, not more than 128 bytes of spills per thread beyond the truncating kernels' own
    (Triton 3.8 here; the card's Triton may differ, GPU.md)."""
    _skip_unless_ptxas_compiles_for_sm90()
    set_tf32(True)
    rounded, truncated = _state_pass_launches_for_sm90(True), _state_pass_launches_for_sm90(False)
    mask = re.compile(r"and\.b32\s+%r\d+, %r\d+, -8192;")
    for name, (ptx, usage) in rounded.items():
        assert len(mask.findall(ptx)) >= 4, f"{name}: the state operands are not rounded"
        assert not mask.findall(truncated[name][0]), f"{name}: rounds with ROUND_TO_TF32 off"
        assert usage["spill_stores"] <= truncated[name][1]["spill_stores"] + 128, (name, usage, truncated[name][1])


def test_recurrent_bench_sets_config_fields_by_name_and_refuses_misspelt_ones() -> None:
    """`--mixers mamba2:chunk_size=128` measures Mamba-2 with chunks of 128: the field reaches the built mixer's
    config (parsed as a number), a variant keeps its base mixer, and a field the config lacks stops the run."""
    from recurrent_mixers_bench import PARAMS, mixer_spec

    from archscale.models.mixers.base import MixerContext
    from archscale.registry import mixers

    variant, name, config = mixer_spec("mamba2:chunk_size=128")
    assert (variant, name, config.chunk_size) == ("mamba2", "mamba2", 128)
    built = mixers.get(name)(MixerContext(d_model=64, layer_idx=0, n_layers=2),
                             mixers.config_model(name).model_validate({**config.model_dump(), "d_state": 8,
                                                                       "head_dim": 16}))
    assert built.config.chunk_size == 128
    assert mixer_spec("gdn_loop:chunk_size=32")[:2] == ("gdn_loop", "gdn")
    assert mixer_spec("attention") == ("attention", "attention",
                                       mixers.config_model("attention").model_validate(PARAMS["attention"]))
    for bad in ("mamba2:chunk_sise=128", "mamba2:chunk_size=0", "mamba2:chunk_size", "mamba3"):
        with pytest.raises(SystemExit, match=r"chunk_sise|chunk_size|mamba3"):
            mixer_spec(bad)
