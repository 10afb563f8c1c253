"""Attention specifics: a loop reference for GQA / window / NoPE / scale, RoPE properties, windowed caches."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from archscale.models.api import SeqInfo
from archscale.models.mixers.attention import AttentionConfig, CausalSelfAttention
from archscale.models.mixers.base import MixerContext, attended_keys
from archscale.models.rope import apply_rope, rope_cos_sin

D = 48


def make(attn_scale: float | None = None, **params: object) -> CausalSelfAttention:
    ctx = MixerContext(d_model=D, layer_idx=0, n_layers=2, rope_base=500.0, attn_scale=attn_scale)
    mixer = CausalSelfAttention(ctx, AttentionConfig(**params))
    with torch.no_grad():
        for p in mixer.parameters():
            p.normal_(0.0, 0.2)
    return mixer.double()


def reference(mixer: CausalSelfAttention, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Per-head loops with an explicit softmax; positions (T,) of one dense row."""
    B, T, _ = x.shape
    H, Hkv, K = mixer.n_head, mixer.n_kv_head, mixer.head_dim
    q = mixer.q_proj(x).view(B, T, H, K)
    k = mixer.k_proj(x).view(B, T, Hkv, K)
    v = mixer.v_proj(x).view(B, T, Hkv, K)
    if mixer.use_rope:
        cos, sin = rope_cos_sin(positions.expand(B, T), K, mixer.rope_base)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    out = torch.zeros(B, T, H, K, dtype=x.dtype)
    for h in range(H):
        g = h // (H // Hkv)  # the KV head serving query head h
        scores = torch.einsum("btk,bsk->bts", q[:, :, h], k[:, :, g]) * mixer.scale
        i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
        allowed = j <= i
        if mixer.window is not None:
            allowed &= i - j < mixer.window
        scores = scores.masked_fill(~allowed, float("-inf"))
        out[:, :, h] = torch.einsum("bts,bsk->btk", scores.softmax(-1), v[:, :, g])
    return mixer.o_proj(out.reshape(B, T, H * K))


@pytest.mark.parametrize(
    "params",
    [
        dict(n_head=4, n_kv_head=2, head_dim=8),
        dict(n_head=4),  # MHA, head_dim = 48 // 4
        dict(n_head=6, n_kv_head=1, head_dim=10),  # MQA, heads·head_dim != d_model
        dict(n_head=4, n_kv_head=2, head_dim=8, window=5),
        dict(n_head=4, n_kv_head=4, head_dim=8, positional="nope"),
        dict(n_head=2, n_kv_head=1, head_dim=8, window=1),
        dict(n_head=4, n_kv_head=2, head_dim=8, qv_bias=True, o_bias=True),
    ],
)
def test_matches_loop_reference(params: dict) -> None:
    """Forward and the gradient of the input and of every parameter against the per-head loop reference."""
    mixer = make(**params)
    x = torch.randn(2, 19, D, dtype=torch.float64, requires_grad=True)
    y, _ = mixer(x, SeqInfo.dense(2, 19))
    expected = reference(mixer, x, torch.arange(19))
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)
    dy = torch.randn_like(y)
    inputs = [x, *mixer.parameters()]
    grads = torch.autograd.grad(y, inputs, dy)
    expected_grads = torch.autograd.grad(expected, inputs, dy)
    for name, g, e in zip(["x", *(n for n, _ in mixer.named_parameters())], grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10, msg=lambda m, name=name: f"d{name}: {m}")


def test_attn_scale_from_context() -> None:
    mixer = make(attn_scale=0.05, n_head=4, n_kv_head=2, head_dim=8)
    assert mixer.scale == 0.05
    assert make(n_head=4, n_kv_head=2, head_dim=8).scale == pytest.approx(1 / math.sqrt(8))
    x = torch.randn(1, 9, D, dtype=torch.float64)
    torch.testing.assert_close(mixer(x, SeqInfo.dense(1, 9))[0], reference(mixer, x, torch.arange(9)))


@pytest.mark.parametrize("window", [1, 3, 8])
def test_window_varlen_and_cache(window: int) -> None:
    mixer = make(n_head=4, n_kv_head=2, head_dim=8, window=window)
    x = torch.randn(1, 21, D, dtype=torch.float64)
    full, _ = mixer(x, SeqInfo.dense(1, 21))
    # Decoding one token at a time with a cache trimmed to window - 1 keys gives the same outputs.
    state, outs = None, []
    for t in range(21):
        y, state = mixer(x[:, t : t + 1], SeqInfo.dense(1, 1, offset=t), state)
        assert state[0].shape[2] <= max(window - 1, 0)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-10, atol=1e-10)
    # Packed documents restart their windows and positions.
    cu = torch.tensor([0, 4, 15, 21], dtype=torch.int32)
    packed, packed_state = mixer(x, SeqInfo.from_cu_seqlens(cu))
    assert packed_state is None
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        torch.testing.assert_close(packed[:, a:b], mixer(x[:, a:b], SeqInfo.dense(1, b - a))[0])


def test_rope_is_relative() -> None:
    """RoPE scores depend only on the position difference (Su et al. 2021), and position 0 is the identity."""
    q, k = torch.randn(1, 1, 1, 16, dtype=torch.float64), torch.randn(1, 1, 1, 16, dtype=torch.float64)

    def score(pq: int, pk: int) -> torch.Tensor:
        cq, sq = rope_cos_sin(torch.tensor([[pq]]), 16, 10000.0)
        ck, sk = rope_cos_sin(torch.tensor([[pk]]), 16, 10000.0)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    torch.testing.assert_close(score(7, 3), score(104, 100), rtol=1e-5, atol=1e-5)  # angles are float32
    c0, s0 = rope_cos_sin(torch.zeros(1, 1, dtype=torch.long), 16, 10000.0)
    torch.testing.assert_close(apply_rope(q, c0, s0), q)


def test_rope_table_is_one_opaque_op_with_the_published_angles() -> None:
    """The table is an opaque custom op (so a compiled model computes it once, not inlined into every head's
    rotation) whose values are cos/sin of pos · base^(-2i/K) with the halves repeated (rotate-half layout)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    pos = torch.tensor([[0, 5, 4095], [1, 2, 3]])
    torch.library.opcheck(torch.ops.archscale.rope_cos_sin.default, (pos, 8, 10000.0))
    cos, sin = rope_cos_sin(pos, 8, 10000.0)
    i = torch.arange(4, dtype=torch.float64)
    angles = pos.double()[..., None] * 10000.0 ** (-2 * i / 8)
    torch.testing.assert_close(cos, torch.cat((angles.cos(), angles.cos()), -1).float(), rtol=0, atol=2e-6)
    torch.testing.assert_close(sin, torch.cat((angles.sin(), angles.sin()), -1).float(), rtol=0, atol=2e-6)
    graph = make_fx(lambda p: rope_cos_sin(p, 8, 10000.0))(pos).graph
    targets = {str(n.target) for n in graph.nodes if n.op == "call_function"}
    assert "archscale.rope_cos_sin.default" in targets and "aten.cos.default" not in targets
    with pytest.raises(ValueError, match="even head_dim"):
        rope_cos_sin(pos, 7, 10000.0)


def test_nope_is_position_free() -> None:
    mixer = make(n_head=2, head_dim=8, positional="nope")
    x = torch.randn(1, 6, D, dtype=torch.float64)
    a, _ = mixer(x, SeqInfo.dense(1, 6))
    b, _ = mixer(x, SeqInfo.dense(1, 6, offset=50))
    torch.testing.assert_close(a, b)


def test_config_errors() -> None:
    with pytest.raises(ValidationError, match="n_kv_head"):
        AttentionConfig(n_head=6, n_kv_head=4)
    with pytest.raises(ValidationError):
        AttentionConfig(n_head=4, bogus=1)
    with pytest.raises(ValueError, match="head_dim"):
        CausalSelfAttention(MixerContext(d_model=50, layer_idx=0, n_layers=1), AttentionConfig(n_head=4))


def test_attended_keys_conventions() -> None:
    assert attended_keys(100, None, "dense") == 100
    assert attended_keys(100, None, "causal") == pytest.approx(50.5)
    assert attended_keys(100, 10, "dense") == 10
    assert attended_keys(100, 10, "causal") == pytest.approx((55 + 90 * 10) / 100)
    assert attended_keys(5, 10, "causal") == pytest.approx(3.0)


@pytest.mark.parametrize("compiled", [False, True])
def test_saved_tensors_do_not_keep_the_stacked_qkv_product_alive(compiled: bool) -> None:
    """q/k/v come out of one product; v must not stay a view of it, or attention's saved v holds the whole stack
    (H + 2·Hkv heads wide) until the backward. Checked on the storages autograd actually keeps."""
    torch.manual_seed(0)
    mixer = make(n_head=4, n_kv_head=1, head_dim=16).float()  # stack 96 wide; d_model 48, q 64, k/v 16
    B, T = 2, 9
    stack_bytes = B * T * (4 + 2 * 1) * 16 * 4
    x = torch.randn(B, T, D, requires_grad=True)
    run = torch.compile(mixer, backend="aot_eager") if compiled else mixer
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y, _ = run(x, SeqInfo.dense(B, T))
    assert kept and stack_bytes not in kept.values(), sorted(kept.values())
    y.sum().backward()  # and the gradients still flow through the copy
    assert x.grad is not None and mixer.v_proj.weight.grad is not None and mixer.v_proj.weight.grad.abs().sum() > 0
