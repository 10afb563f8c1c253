"""Attention kernels against a naive per-document, per-head loop with an explicit softmax.

CPU: the reference (SDPA + boolean mask), the "sdpa" path and the value slicing, forward and backward in float64;
FlexAttention's mask_mod (eager, forward only: FlexAttention has no CPU backward) and its block classes, checked
tile by tile against the dense mask; dispatch, errors, and fullgraph compilation of the attention mixers with no
recompilation across varlen batches. GPU (``-m gpu``): every CUDA path in bf16 against the fp32 reference, forward
and backward, and the compiled mixers with inductor.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F
from kernel_helpers import compare_grads, rel_err, split_cu
from torch._dynamo.testing import CompileCounterWithBackend

from archscale.kernels.attention import (
    attention,
    attention_mask,
    available_impls,
    select_impl,
)
from archscale.kernels.attention.flex import (
    block_classes,
    document_block_mask,
    flex_attention_blocks,
)
from archscale.kernels.attention.reference import document_ids
from archscale.models.api import CrossLayer, SeqInfo
from archscale.models.mixers.attention import AttentionConfig, CausalSelfAttention
from archscale.models.mixers.base import MixerContext
from archscale.models.mixers.cross_attention import CrossAttention, CrossAttentionConfig
from archscale.models.mixers.diff_attention import DiffAttention, DiffAttentionConfig


def naive_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    causal: bool = True,
    window: int | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """The specification, written out: every document of every row alone, every head alone, masked scores, softmax."""
    B, T, H, _ = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    out = torch.zeros(B, T, H, v.shape[-1], dtype=torch.float64)
    if cu_seqlens is None:
        spans = [(0, T)]
    else:
        cu = cu_seqlens.tolist()
        spans = list(itertools.pairwise(cu))
    for b in range(B):
        for s, e in spans:
            if cu_seqlens is None:  # the T queries are the last T of the S keys
                qd, kd, vd = q[b].double(), k[b].double(), v[b].double()
                qpos, kpos = torch.arange(T) + (S - T), torch.arange(S)
            else:
                qd, kd, vd = q[b, s:e].double(), k[b, s:e].double(), v[b, s:e].double()
                qpos = kpos = torch.arange(e - s)
            allowed = torch.ones(len(qpos), len(kpos), dtype=torch.bool)
            if causal:
                allowed &= kpos[None, :] <= qpos[:, None]
            if window is not None:
                allowed &= qpos[:, None] - kpos[None, :] < window
            for h in range(H):
                g = h // (H // Hkv)
                scores = (qd[:, h] @ kd[:, g].T) * scale
                probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
                out[b, s:e, h] = probs @ vd[:, g]
    return out.to(q.dtype)


def qkv(B: int, T: int, H: int, Hkv: int, K: int, V: int | None = None, S: int | None = None,
        dtype: torch.dtype = torch.float64, device: str = "cpu") -> dict[str, torch.Tensor]:
    S = T if S is None else S
    V = K if V is None else V
    return {
        "q": torch.randn(B, T, H, K, dtype=dtype, device=device),
        "k": torch.randn(B, S, Hkv, K, dtype=dtype, device=device),
        "v": torch.randn(B, S, Hkv, V, dtype=dtype, device=device),
    }


# (B, H, Hkv, K, V, window, document lengths or None, causal); W = 4 in the windowed varlen cases, so the
# lengths 1, W-1, W, W+1 and lengths that are no multiple of the flex test block (8) all occur.
CASES = [
    pytest.param(2, 4, 2, 8, 8, None, None, True, id="dense-gqa"),
    pytest.param(2, 4, 4, 8, 8, 5, None, True, id="dense-window"),
    pytest.param(1, 6, 1, 8, 8, 2, None, True, id="dense-mqa-window2"),  # window 1: dq = 0, vacuous
    pytest.param(1, 4, 2, 8, 8, None, [1, 3, 4, 5, 13, 11], True, id="varlen"),
    pytest.param(1, 4, 2, 8, 8, 4, [1, 3, 4, 5, 13, 11], True, id="varlen-window"),
    pytest.param(1, 2, 2, 8, 8, 100, [9, 28], True, id="varlen-window-wider-than-docs"),
    pytest.param(1, 4, 2, 8, 16, 4, [7, 1, 29], True, id="varlen-window-wide-values"),
    pytest.param(2, 4, 2, 8, 8, None, None, False, id="dense-noncausal"),
    pytest.param(1, 4, 2, 8, 8, None, [6, 1, 30], False, id="varlen-noncausal"),
]


def _case(B, H, Hkv, K, V, lengths, dtype=torch.float64, device="cpu"):
    T = 37 if lengths is None else sum(lengths)
    cu = None if lengths is None else split_cu(lengths).to(device)
    return qkv(B, T, H, Hkv, K, V, dtype=dtype, device=device), cu


# ----------------------------------------------------------------------------- reference (the CPU path)
@pytest.mark.parametrize("B,H,Hkv,K,V,window,lengths,causal", CASES)
def test_reference_matches_naive_forward_and_backward(B, H, Hkv, K, V, window, lengths, causal) -> None:
    inputs, cu = _case(B, H, Hkv, K, V, lengths)
    kw = {"scale": 0.37, "causal": causal, "window": window, "cu_seqlens": cu}
    y = attention(**inputs, **kw)
    assert select_impl(inputs["q"], inputs["k"], window=window, cu_seqlens=cu) == "reference"
    torch.testing.assert_close(y, naive_attention(**inputs, **kw), rtol=1e-10, atol=1e-10)
    compare_grads(
        lambda q, k, v: [attention(q, k, v, **kw)], lambda q, k, v: [naive_attention(q, k, v, **kw)], inputs, 1e-10
    )


@pytest.mark.parametrize("window", [None, 1, 3, 6])
@pytest.mark.parametrize("T", [1, 4])
def test_reference_with_cached_keys(window: int | None, T: int) -> None:
    inputs = qkv(2, T, 4, 2, 8, S=11)
    y = attention(**inputs, scale=0.4, window=window)
    torch.testing.assert_close(y, naive_attention(**inputs, scale=0.4, window=window), rtol=1e-10, atol=1e-10)


def test_default_scale_is_inverse_sqrt_head_dim() -> None:
    inputs = qkv(1, 9, 2, 2, 16)
    torch.testing.assert_close(attention(**inputs), naive_attention(**inputs, scale=0.25))


def test_mask_shapes_and_none() -> None:
    assert attention_mask(5, 5) is None  # is_causal is exact
    assert attention_mask(5, 5, causal=False) is None
    cu = split_cu([2, 3])
    mask = attention_mask(5, 5, cu_seqlens=cu, window=2)
    expected = torch.tensor(
        [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 1]], dtype=torch.bool
    )
    assert torch.equal(mask, expected)
    assert document_ids(cu, 5).tolist() == [0, 0, 1, 1, 1]


# ----------------------------------------------------------------------------- SDPA path and value slicing
@pytest.mark.parametrize("V", [8, 16, 11])
@pytest.mark.parametrize("causal", [True, False])
def test_sdpa_path_and_value_slices(V: int, causal: bool) -> None:
    # On CPU the "sdpa" path runs the same SDPA call as on CUDA (the backend priority only affects CUDA); V != K
    # exercises the K-wide slices as extra heads, with GQA (V = 11: one full slice and one zero-padded slice of 3).
    inputs = qkv(2, 13, 4, 2, 8, V)
    kw = {"scale": 0.3, "causal": causal}
    y = attention(**inputs, **kw, impl="sdpa")
    torch.testing.assert_close(y, naive_attention(**inputs, **kw), rtol=1e-10, atol=1e-10)
    compare_grads(
        lambda q, k, v: [attention(q, k, v, **kw, impl="sdpa")],
        lambda q, k, v: [naive_attention(q, k, v, **kw)],
        inputs,
        1e-10,
    )


def test_sdpa_path_with_wide_values_compiled() -> None:
    # The slices-as-heads reshapes under inductor (CPU): the same result and gradients as naive attention.
    inputs = qkv(2, 13, 4, 2, 8, 11)
    kw = {"scale": 0.3, "causal": True}
    torch._dynamo.reset()
    compiled = torch.compile(lambda q, k, v: attention(q, k, v, **kw, impl="sdpa"), fullgraph=True)
    torch.testing.assert_close(compiled(**inputs), naive_attention(**inputs, **kw), rtol=1e-10, atol=1e-10)
    compare_grads(lambda q, k, v: [compiled(q, k, v)], lambda q, k, v: [naive_attention(q, k, v, **kw)], inputs, 1e-10)


# ----------------------------------------------------------------------------- FlexAttention (mask and blocks)
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("B,H,Hkv,K,V,window,lengths,causal", CASES)
def test_flex_mask_mod_matches_naive(B, H, Hkv, K, V, window, lengths, causal) -> None:
    # Eager FlexAttention evaluates the mask_mod at every position (no block skipping): this checks the rule.
    inputs, cu = _case(B, H, Hkv, K, V, lengths, dtype=torch.float32)
    kw = {"scale": 0.37, "causal": causal, "window": window, "cu_seqlens": cu}
    with torch.no_grad():
        y = flex_attention_blocks(**inputs, **kw, block_size=8, compiled=False)
    assert rel_err(y, naive_attention(**inputs, **kw)) < 1e-5


BLOCK_CASES = [
    (37, True, None, None),
    (33, True, 4, None),  # a last tile of one token
    (33, True, None, [32, 1]),
    (37, True, 5, None),
    (64, True, 8, None),
    (64, True, 9, None),  # tiles two apart: nearest pair 9 apart, just outside
    (64, True, 15, None),  # adjacent tiles: farthest pair 15 apart, just outside (not full)
    (64, True, 16, None),  # ... just inside (full)
    (37, True, None, [1, 3, 4, 5, 13, 11]),
    (37, True, 4, [1, 3, 4, 5, 13, 11]),
    (48, True, 20, [16, 16, 16]),
    (45, False, None, [8, 1, 7, 29]),
    (40, False, None, None),
]


@pytest.mark.parametrize("T,causal,window,lengths", BLOCK_CASES)
def test_flex_block_classes_are_sound(T: int, causal: bool, window: int | None, lengths: Sequence[int] | None):
    """Every tile left out holds no allowed pair, every full tile only allowed pairs; without documents the
    classes are exact (a partial tile holds both)."""
    bs = 8
    cu = None if lengths is None else split_cu(lengths)
    doc = None if cu is None else document_ids(cu, T)
    partial, full = block_classes(T, causal=causal, window=window, doc=doc, block_size=bs, device=torch.device("cpu"))
    dense = attention_mask(T, T, causal=causal, window=window, cu_seqlens=cu)
    if dense is None:  # the cases SDPA covers without a mask
        dense = torch.ones(T, T, dtype=torch.bool)
        dense = dense.tril() if causal else dense
    nb = -(-T // bs)
    assert partial.shape == full.shape == (nb, nb)
    assert not (partial & full).any()
    for i in range(nb):
        for j in range(nb):
            tile = dense[i * bs : (i + 1) * bs, j * bs : (j + 1) * bs]
            if full[i, j]:
                assert tile.all() and tile.shape == (bs, bs), (i, j)
            elif not partial[i, j]:
                assert not tile.any(), (i, j)
            elif cu is None and tile.shape == (bs, bs):  # tiles cut by T are never full
                assert tile.any() and not tile.all(), (i, j)
    # The BlockMask encodes the same tiles (kv indices sorted per query tile, partial and full together).
    mask = document_block_mask(T, causal=causal, window=window, doc=doc, block_size=bs)
    assert torch.equal(mask.to_dense()[0, 0].bool(), partial | full)


def test_flex_block_mask_skips_across_documents() -> None:
    # Four 32-token documents in 8-token tiles: only the 4 diagonal 4x4 groups of tiles can hold pairs.
    T, bs = 128, 8
    doc = document_ids(split_cu([32] * 4), T)
    partial, full = block_classes(T, causal=True, window=None, doc=doc, block_size=bs, device=torch.device("cpu"))
    kept = int((partial | full).sum())
    assert kept == 4 * (4 * 5 // 2)  # per document: a causal 4x4 tile triangle
    assert int(partial.sum()) == 16  # the diagonal tiles


# ----------------------------------------------------------------------------- dispatch and errors
def test_dispatch_on_cpu() -> None:
    inputs = qkv(1, 8, 4, 2, 8, dtype=torch.float32)
    assert select_impl(inputs["q"], inputs["k"]) == "reference"
    assert select_impl(inputs["q"], inputs["k"], window=3, cu_seqlens=split_cu([3, 5])) == "reference"
    assert available_impls("cpu") == ["reference", "sdpa"]


def test_errors_name_the_problem() -> None:
    x = qkv(1, 8, 4, 2, 8)
    q, k, v = x["q"], x["k"], x["v"]
    with pytest.raises(ValueError, match="4-D"):
        attention(q[0], k, v)
    with pytest.raises(ValueError, match="multiple of 3 key/value heads"):
        attention(q, k.repeat(1, 1, 2, 1)[:, :, :3], v.repeat(1, 1, 2, 1)[:, :, :3])
    with pytest.raises(ValueError, match="window=4 needs causal=True"):
        attention(q, k, v, window=4, causal=False)
    with pytest.raises(ValueError, match="window=0"):
        attention(q, k, v, window=0)
    with pytest.raises(ValueError, match="B == 1"):
        attention(q.expand(2, -1, -1, -1), k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1), cu_seqlens=split_cu([8]))
    with pytest.raises(ValueError, match="S=4 keys cannot serve T=8"):
        attention(q, k[:, :4], v[:, :4])
    with pytest.raises(ValueError, match="impl must be"):
        attention(q, k, v, impl="cudnn")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="impl='sdpa' cannot run this case"):
        attention(q, k, v, window=3, impl="sdpa")
    with pytest.raises(ValueError, match="impl='flex' cannot run this case.*available on cpu: reference, sdpa"):
        attention(q, k, v, impl="flex")
    with pytest.raises(ValueError, match="no KV cache"):
        attention(q[:, :2], k, v, impl="sdpa")


# ----------------------------------------------------------------------------- the mixers under torch.compile
D = 32


def _mixer(name: str, d_model: int = D, head_dim: int = 8) -> torch.nn.Module:
    ctx = MixerContext(d_model=d_model, layer_idx=1, n_layers=2)
    heads = {"n_head": 4, "n_kv_head": 2, "head_dim": head_dim}
    if name == "attention":
        return CausalSelfAttention(ctx, AttentionConfig(**heads))
    if name == "swa":
        return CausalSelfAttention(ctx, AttentionConfig(**heads, window=5))
    if name == "diff":
        return DiffAttention(ctx, DiffAttentionConfig(**heads, window=6))
    return CrossAttention(ctx, CrossAttentionConfig(**heads, differential=True))


def _call(mixer: torch.nn.Module, x: torch.Tensor, seq: SeqInfo, kv: tuple | None) -> torch.Tensor:
    shared = CrossLayer(kv=kv) if kv is not None else None
    return mixer(x, seq, shared=shared)[0]


VARLEN_BATCHES = [[29], [3, 10, 16], [1, 5, 23], [2, 2, 2, 23], [10, 19]]


@pytest.mark.parametrize("name", ["attention", "swa", "diff", "cross"])
def test_mixer_compiles_fullgraph_without_recompiling(name: str) -> None:
    """fullgraph=True fails on any graph break; the frame counter shows that after the second varlen batch (when
    dynamo makes the number of documents and max_seqlen symbolic) new document boundaries reuse the graph."""
    mixer = _mixer(name)
    counter = CompileCounterWithBackend("aot_eager")
    torch._dynamo.reset()
    compiled = torch.compile(mixer, backend=counter, fullgraph=True)
    T = sum(VARLEN_BATCHES[0])
    frames = []
    for lengths in VARLEN_BATCHES:
        seq = SeqInfo.from_cu_seqlens(split_cu(lengths))
        x = torch.randn(1, T, D)
        kv = (torch.randn(1, 2, T, 8), torch.randn(1, 2, T, 8)) if name == "cross" else None
        torch.testing.assert_close(_call(compiled, x, seq, kv), _call(mixer, x, seq, kv))
        frames.append(counter.frame_count)
    assert frames[-1] == frames[1] <= 2, frames
    x = torch.randn(2, T, D)
    kv = (torch.randn(2, 2, T, 8), torch.randn(2, 2, T, 8)) if name == "cross" else None
    torch.testing.assert_close(_call(compiled, x, SeqInfo.dense(2, T), kv), _call(mixer, x, SeqInfo.dense(2, T), kv))


# ----------------------------------------------------------------------------- CUDA paths (run with -m gpu)
GPU_CASES = [
    pytest.param(2, 8, 2, 128, None, None, id="dense-causal-gqa-d128"),
    pytest.param(2, 8, 8, 64, 300, None, id="dense-window"),
    pytest.param(1, 8, 2, 128, None, [1, 255, 256, 257, 700, 3, 1000], id="varlen"),
    pytest.param(1, 8, 2, 64, 256, [1, 255, 256, 257, 700, 3, 1000], id="varlen-window"),
]


def _gpu_check(impl: str, B, H, Hkv, K, window, lengths, V: int | None = None, compiled: bool = False) -> None:
    torch.manual_seed(0)
    T = 1000 if lengths is None else sum(lengths)
    cu = None if lengths is None else split_cu(lengths).cuda()
    max_len = None if lengths is None else max(lengths)
    ref_in = qkv(B, T, H, Hkv, K, V, dtype=torch.float32, device="cuda")
    kw = {"scale": K**-0.5, "window": window, "cu_seqlens": cu}
    grad = torch.randn(B, T, H, ref_in["v"].shape[-1], device="cuda")

    def run(inputs: dict[str, torch.Tensor], **extra: object) -> tuple[torch.Tensor, ...]:
        leaves = {n: t.detach().clone().requires_grad_(True) for n, t in inputs.items()}
        fn = torch.compile(attention) if compiled and extra.get("impl") != "reference" else attention
        y = fn(**leaves, **kw, **extra)
        y.backward(grad.to(y.dtype))
        return (y, leaves["q"].grad, leaves["k"].grad, leaves["v"].grad)

    expected = run(ref_in, impl="reference")
    got = run({n: t.bfloat16() for n, t in ref_in.items()}, impl=impl, max_seqlen=max_len)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, expected):
        assert a.dtype == torch.bfloat16 and torch.isfinite(a).all(), name
        err = rel_err(a.float(), b)
        assert err <= 1e-2, f"{impl} {name}: relative error {err:.3g}"


def _skip_unless(impl: str, window: int | None, lengths: list | None) -> None:
    if impl not in available_impls("cuda", torch.bfloat16):
        pytest.skip(f"{impl} is not available here")
    if impl == "sdpa" and (window is not None or lengths is not None):
        pytest.skip("sdpa handles dense batches without a window only")


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["sdpa", "varlen", "flex"])
@pytest.mark.parametrize("B,H,Hkv,K,window,lengths", GPU_CASES)
def test_cuda_paths_bf16_match_fp32_reference(impl: str, B, H, Hkv, K, window, lengths) -> None:
    _skip_unless(impl, window, lengths)
    _gpu_check(impl, B, H, Hkv, K, window, lengths)


@pytest.mark.gpu
@pytest.mark.parametrize("B,H,Hkv,K,window,lengths", GPU_CASES)
def test_flash_attn_bf16_matches_fp32_reference(B, H, Hkv, K, window, lengths) -> None:
    pytest.importorskip("flash_attn")
    _gpu_check("flash", B, H, Hkv, K, window, lengths)


@pytest.mark.gpu
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("impl", ["sdpa", "varlen", "flex", "flash"])
def test_cuda_paths_wide_values(impl: str, compiled: bool) -> None:
    # Differential Attention's values are 2K wide: slices as extra heads for sdpa / varlen / flash, native in flex.
    # Compiled too: one SDPA call per slice gave wrong gradients under torch.compile with cuDNN (2026-12-06).
    window, lengths = (None, None) if impl == "sdpa" else (200, [17, 600, 383])
    _skip_unless(impl, window, lengths)
    _gpu_check(impl, 1, 8, 4, 64, window, lengths, V=128, compiled=compiled)


@pytest.mark.gpu
def test_cudnn_accepts_the_dense_call() -> None:
    # The "sdpa" path asks for cuDNN first; this proves cuDNN takes bf16 GQA D128 causal (it would raise otherwise).
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(2, 16, 512, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(2, 4, 512, 128, device="cuda", dtype=torch.bfloat16)
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        y = F.scaled_dot_product_attention(q, k, k, is_causal=True, enable_gqa=True)
    assert torch.isfinite(y).all()


@pytest.mark.gpu
def test_cuda_dispatch() -> None:
    x = qkv(1, 64, 4, 2, 64, dtype=torch.bfloat16, device="cuda")
    cu = split_cu([30, 34]).cuda()
    assert select_impl(x["q"], x["k"]) == "sdpa"
    assert select_impl(x["q"][:, :1], x["k"]) == "reference"  # decoding with a cache
    assert select_impl(x["q"], x["k"], cu_seqlens=cu) in ("flash", "varlen", "flex")
    assert select_impl(x["q"].float(), x["k"].float(), window=8) == "reference"  # fp32, eager: see test_cuda_flex_fp32


@pytest.mark.gpu
@pytest.mark.parametrize("window,lengths", [(None, [5, 700, 290]), (64, [1, 128, 129, 700, 42])])
def test_cuda_flex_fp32(window: int | None, lengths: list[int]) -> None:
    # fp32 on CUDA has no flash kernel. Eagerly, windows and documents take the reference (torch 2.11's inductor
    # cannot lower our stand-alone compiled FlexAttention helper in fp32); inside torch.compile they take
    # FlexAttention, which must stay fp32-accurate.
    # T = 995 and 1000 are no multiple of the 128-token block: the document ids are padded to whole tiles, which
    # torch 2.11's inductor failed to lower as an F.pad ("'int' object has no attribute 'free_symbols'", H200,
    # 2026-12-04; flex.document_block_mask now concatenates).
    inputs, cu = qkv(1, sum(lengths), 4, 2, 64, dtype=torch.float32, device="cuda"), split_cu(lengths).cuda()
    kw = {"scale": 0.125, "window": window, "cu_seqlens": cu}
    assert select_impl(inputs["q"], inputs["k"], window=window, cu_seqlens=cu) == "reference"
    compiled = torch.compile(lambda q, k, v, cu_seqlens: attention(q, k, v, scale=0.125, window=window,
                                                                   cu_seqlens=cu_seqlens), fullgraph=True)
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # a Trainer test may have allowed TF32 in this process
    try:
        err = rel_err(compiled(**inputs, cu_seqlens=cu), attention(**inputs, **kw, impl="reference"))
        assert err < 1e-5, f"forward: relative error {err:.3g}"
        compare_grads(
            lambda q, k, v: [compiled(q, k, v, cu)],
            lambda q, k, v: [attention(q, k, v, **kw, impl="reference")],
            inputs,
            1e-4,
        )
    finally:
        torch.set_float32_matmul_precision(precision)


@pytest.mark.gpu
@pytest.mark.parametrize("bf16", [True, False], ids=["bf16-autocast", "fp32"])
@pytest.mark.parametrize("name", ["attention", "swa", "diff", "cross"])
def test_cuda_mixer_compiled_fullgraph_varlen(name: str, bf16: bool) -> None:
    """The mixer compiled with inductor (fullgraph) on varlen batches matches eager and stops recompiling: bf16
    runs the flash kernels (torch varlen_attn), fp32 FlexAttention with its block mask built inside the graph."""
    torch.manual_seed(0)
    d_model, K = 256, 64  # head sizes the flash and flex kernels take
    mixer = _mixer(name, d_model, K).cuda()
    counter = CompileCounterWithBackend("inductor")
    torch._dynamo.reset()
    compiled = torch.compile(mixer, backend=counter, fullgraph=True)
    batches = [[512], [100, 300, 112], [1, 255, 256], [7, 500, 5], [256, 256]]
    T = 512
    frames = []
    for lengths in batches:
        seq = SeqInfo.from_cu_seqlens(split_cu(lengths).cuda())
        x = torch.randn(1, T, d_model, device="cuda")
        kv_dtype = torch.bfloat16 if bf16 else torch.float32
        kv = None
        if name == "cross":
            kv = tuple(torch.randn(1, 2, T, K, device="cuda", dtype=kv_dtype) for _ in range(2))
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            y = _call(compiled, x, seq, kv)
            y_ref = _call(mixer, x, seq, kv)
        assert rel_err(y.float(), y_ref.float()) < (2e-2 if bf16 else 1e-3)
        y.float().square().mean().backward()
        frames.append(counter.frame_count)
    assert frames[-1] == frames[1] <= 2, frames
