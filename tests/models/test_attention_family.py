"""Differential attention, YOCO cross-attention, K,V sharing and the Gated Memory Unit against loop references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from archscale.models.api import CrossLayer, SeqInfo
from archscale.models.mixers.attention import AttentionConfig, CausalSelfAttention
from archscale.models.mixers.base import MixerContext
from archscale.models.mixers.cross_attention import CrossAttention, CrossAttentionConfig
from archscale.models.mixers.diff_attention import DiffAttention, DiffAttentionConfig, lambda_init_fn
from archscale.models.mixers.gmu import GatedMemoryUnit, GMUConfig
from archscale.models.rope import apply_rope, rope_cos_sin

D = 40


def ctx(layer_idx: int = 3, **kw: object) -> MixerContext:
    return MixerContext(d_model=D, layer_idx=layer_idx, n_layers=8, rope_base=300.0, **kw)


def randomize(module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.3)
    return module.double()


def loop_diff_attention(q, k, v, lam, lambda_init, gain, scale, allowed):
    """Ye et al. 2024 per pair of heads with an explicit softmax. q (B,T,H,K), k/v (B,S,Hkv,K), allowed (T,S)."""
    B, T, H, K = q.shape
    Hkv = k.shape[2]
    out = torch.zeros(B, T, H, K, dtype=q.dtype)
    for h in range(H // 2):
        g = h // (H // Hkv)  # KV pair of query pair h
        values = torch.cat((v[:, :, 2 * g], v[:, :, 2 * g + 1]), dim=-1)  # (B, S, 2K)
        maps = []
        for j in range(2):
            s = torch.einsum("btk,bsk->bts", q[:, :, 2 * h + j], k[:, :, 2 * g + j]) * scale
            maps.append(s.masked_fill(~allowed, float("-inf")).softmax(-1))
        a = torch.einsum("bts,bsv->btv", maps[0], values) - lam * torch.einsum("bts,bsv->btv", maps[1], values)
        a = a * torch.rsqrt(a.pow(2).mean(-1, keepdim=True) + 1e-5) * gain * (1 - lambda_init)
        out[:, :, 2 * h] = a[..., :K]
        out[:, :, 2 * h + 1] = a[..., K:]
    return out.reshape(B, T, H * K)


def causal_allowed(T: int, S: int, window: int | None = None) -> torch.Tensor:
    qi = torch.arange(T)[:, None] + (S - T)
    kj = torch.arange(S)[None, :]
    allowed = kj <= qi
    return allowed & (qi - kj < window) if window is not None else allowed


def test_lambda_init_schedule() -> None:
    assert lambda_init_fn(0) == pytest.approx(0.2)
    assert lambda_init_fn(5) == pytest.approx(0.8 - 0.6 * math.exp(-1.5))
    m = DiffAttention(ctx(layer_idx=5), DiffAttentionConfig(n_head=4, n_kv_head=2, head_dim=8))
    assert m.diff.lambda_init == pytest.approx(lambda_init_fn(5))
    torch.manual_seed(0)
    big = DiffAttention(ctx(), DiffAttentionConfig(n_head=4, head_dim=4000))
    assert big.diff.lambda_q1.shape == (4000,)
    assert big.diff.lambda_q1.std().item() == pytest.approx(0.1, rel=0.1)
    assert torch.equal(big.diff.subln.weight, torch.ones(8000))


@pytest.mark.parametrize(
    "params",
    [
        dict(n_head=4, n_kv_head=2, head_dim=8),
        dict(n_head=8, n_kv_head=2, head_dim=6, window=5),
        dict(n_head=4, n_kv_head=4, head_dim=8, positional="nope"),
        dict(n_head=2, n_kv_head=2, head_dim=10, qv_bias=True, o_bias=True),
    ],
)
def test_diff_attention_matches_loop_reference(params: dict) -> None:
    m = randomize(DiffAttention(ctx(), DiffAttentionConfig(**params)))
    T = 13
    x = torch.randn(2, T, D, dtype=torch.float64)
    y, _ = m(x, SeqInfo.dense(2, T))
    H, Hkv, K = m.n_head, m.n_kv_head, m.head_dim
    q, k, v = m.q_proj(x).view(2, T, H, K), m.k_proj(x).view(2, T, Hkv, K), m.v_proj(x).view(2, T, Hkv, K)
    if m.use_rope:
        cos, sin = rope_cos_sin(torch.arange(T).expand(2, T), K, 300.0)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    ref = loop_diff_attention(q, k, v, m.diff.lam(), m.diff.lambda_init, m.diff.subln.weight, K**-0.5,
                              causal_allowed(T, T, m.window))
    torch.testing.assert_close(y, m.o_proj(ref), rtol=1e-10, atol=1e-10)


def test_diff_attention_lambda_formula() -> None:
    m = randomize(DiffAttention(ctx(layer_idx=2), DiffAttentionConfig(n_head=2, head_dim=8)))
    d = m.diff
    expected = (torch.exp((d.lambda_q1 * d.lambda_k1).sum()) - torch.exp((d.lambda_q2 * d.lambda_k2).sum())
                + 0.8 - 0.6 * math.exp(-0.6))
    torch.testing.assert_close(d.lam(), expected)


def test_diff_attention_config_errors() -> None:
    with pytest.raises(ValidationError, match="even"):
        DiffAttentionConfig(n_head=3)
    with pytest.raises(ValidationError, match="even"):
        DiffAttentionConfig(n_head=6, n_kv_head=3)
    with pytest.raises(ValidationError, match="even"):
        CrossAttentionConfig(n_head=6, n_kv_head=3, differential=True)


@pytest.mark.parametrize("differential", [False, True])
@pytest.mark.parametrize("positional", ["rope", "nope"])
def test_cross_attention_on_shared_kv(differential: bool, positional: str) -> None:
    """F (share_kv) then X: X equals attention of its own queries on F's K,V, also chunk by chunk with F's cache."""
    cls, cfg_cls = (DiffAttention, DiffAttentionConfig) if differential else (CausalSelfAttention, AttentionConfig)
    heads = dict(n_head=4, n_kv_head=2, head_dim=8, positional=positional)
    f = randomize(cls(ctx(layer_idx=4), cfg_cls(**heads, share_kv=True)))
    x_layer = randomize(CrossAttention(ctx(layer_idx=7), CrossAttentionConfig(**heads, differential=differential)))
    T = 15
    hf, hx = torch.randn(2, T, D, dtype=torch.float64), torch.randn(2, T, D, dtype=torch.float64)
    shared = CrossLayer()
    f(hf, SeqInfo.dense(2, T), shared=shared)
    k, v = shared.kv
    assert k.shape == v.shape == (2, 2, T, 8)
    y, state = x_layer(hx, SeqInfo.dense(2, T), shared=shared)
    assert state is None

    q = x_layer.q_proj(hx).view(2, T, 4, 8)
    if positional == "rope":
        cos, sin = rope_cos_sin(torch.arange(T).expand(2, T), 8, 300.0)
        q = apply_rope(q, cos, sin)
    kk, vv = k.transpose(1, 2), v.transpose(1, 2)  # (B, S, Hkv, K)
    if differential:
        d = x_layer.diff
        ref = loop_diff_attention(q, kk, vv, d.lam(), d.lambda_init, d.subln.weight, 8**-0.5, causal_allowed(T, T))
    else:
        ref = torch.zeros(2, T, 4, 8, dtype=torch.float64)
        for h in range(4):
            s = torch.einsum("btk,bsk->bts", q[:, :, h], kk[:, :, h // 2]) * 8**-0.5
            s = s.masked_fill(~causal_allowed(T, T), float("-inf"))
            ref[:, :, h] = torch.einsum("bts,bsk->btk", s.softmax(-1), vv[:, :, h // 2])
        ref = ref.reshape(2, T, 32)
    torch.testing.assert_close(y, x_layer.o_proj(ref), rtol=1e-10, atol=1e-10)

    # Decoding: F keeps the cache and publishes cache + new keys; X's queries align to the last T positions.
    f_state, outs = None, []
    for a, b in [(0, 6), (6, 7), (7, 15)]:
        step = CrossLayer()
        _, f_state = f(hf[:, a:b], SeqInfo.dense(2, b - a, offset=a), f_state, shared=step)
        assert step.kv[0].shape[2] == b
        outs.append(x_layer(hx[:, a:b], SeqInfo.dense(2, b - a, offset=a), shared=step)[0])
    torch.testing.assert_close(torch.cat(outs, 1), y, rtol=1e-10, atol=1e-10)


def test_cross_attention_counts_only_wq_wo() -> None:
    c = CrossAttentionConfig(n_head=4, n_kv_head=2, head_dim=8)
    m = CrossAttention(ctx(), c)
    assert {n for n, _ in m.named_parameters()} == {"q_proj.weight", "o_proj.weight"}
    assert CrossAttention.count_params(ctx(), c) == {"matrix": 2 * D * 32, "vector": 0}
    dc = CrossAttentionConfig(n_head=4, n_kv_head=2, head_dim=8, differential=True, qv_bias=True, o_bias=True)
    assert CrossAttention.count_params(ctx(), dc) == {"matrix": 2 * D * 32, "vector": 32 + D + 6 * 8}


def test_cross_attention_errors() -> None:
    m = CrossAttention(ctx(), CrossAttentionConfig(n_head=4, n_kv_head=2, head_dim=8))
    x = torch.randn(1, 5, D)
    with pytest.raises(ValueError, match="share_kv"):
        m(x, SeqInfo.dense(1, 5), shared=CrossLayer())
    with pytest.raises(ValueError, match="do not fit"):
        bad = torch.randn(1, 4, 5, 8)
        m(x, SeqInfo.dense(1, 5), shared=CrossLayer(kv=(bad, bad)))
    f = CausalSelfAttention(ctx(), AttentionConfig(n_head=4, n_kv_head=2, head_dim=8, share_kv=True))
    with pytest.raises(ValueError, match="CrossLayer"):
        f(x, SeqInfo.dense(1, 5))


def test_share_kv_does_not_change_attention() -> None:
    plain = randomize(CausalSelfAttention(ctx(), AttentionConfig(n_head=4, n_kv_head=2, head_dim=8)))
    sharing = CausalSelfAttention(ctx(), AttentionConfig(n_head=4, n_kv_head=2, head_dim=8, share_kv=True)).double()
    sharing.load_state_dict(plain.state_dict())
    x = torch.randn(2, 9, D, dtype=torch.float64)
    torch.testing.assert_close(sharing(x, SeqInfo.dense(2, 9), shared=CrossLayer())[0],
                               plain(x, SeqInfo.dense(2, 9))[0])
    assert CausalSelfAttention.shared_writes(sharing.config) == {"kv"}
    assert CausalSelfAttention.shared_writes(plain.config) == set()


def test_attention_biases_counted_and_zero_initialised() -> None:
    c = AttentionConfig(n_head=4, n_kv_head=2, head_dim=8, qv_bias=True, o_bias=True)
    m = CausalSelfAttention(ctx(), c)
    m.reset_parameters()
    assert m.k_proj.bias is None and torch.count_nonzero(m.q_proj.bias) == 0
    assert CausalSelfAttention.count_params(ctx(), c)["vector"] == 32 + 16 + D
    assert m.param_roles()["q_proj.bias"] == "vector"


@pytest.mark.parametrize("normalize", [False, True])
def test_gmu_formula(normalize: bool) -> None:
    cfg = GMUConfig(d_mem=24, normalize=normalize, norm_groups=3 if normalize else 1)
    m = randomize(GatedMemoryUnit(ctx(), cfg))
    x, mem = torch.randn(2, 7, D, dtype=torch.float64), torch.randn(2, 7, 24, dtype=torch.float64)
    y, state = m(x, SeqInfo.dense(2, 7), shared=CrossLayer(memory=mem))
    assert state is None
    h = F.silu(x @ m.in_proj.weight.T) * mem
    if normalize:  # RMSNorm over each of 3 groups of 8, then the gain (ArchScale's RMSNormGated, gate before norm)
        g = h.view(2, 7, 3, 8)
        h = (g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + 1e-5)).view(2, 7, 24) * m.norm_weight
    torch.testing.assert_close(y, h @ m.out_proj.weight.T, rtol=1e-10, atol=1e-10)


def test_gmu_width_and_errors() -> None:
    assert GatedMemoryUnit(ctx(), GMUConfig()).d_mem == 2 * D  # Mamba-1 memory: d_inner = 2d
    assert GatedMemoryUnit(ctx(memory_dim=48), GMUConfig()).d_mem == 48  # the producer's width, from the spec
    with pytest.raises(ValueError, match="d_mem=24"):
        GatedMemoryUnit(ctx(memory_dim=48), GMUConfig(d_mem=24))
    with pytest.raises(ValidationError, match="norm_groups"):
        GMUConfig(d_mem=10, normalize=True, norm_groups=3)
    m = GatedMemoryUnit(ctx(), GMUConfig(d_mem=16))
    assert GatedMemoryUnit.count_params(ctx(), GMUConfig(d_mem=16)) == {"matrix": 2 * D * 16, "vector": 0}
    x = torch.randn(1, 3, D)
    with pytest.raises(ValueError, match="export_memory"):
        m(x, SeqInfo.dense(1, 3), shared=CrossLayer())
    with pytest.raises(ValueError, match="does not fit"):
        m(x, SeqInfo.dense(1, 3), shared=CrossLayer(memory=torch.randn(1, 3, 8)))


def test_windowed_yoco_pair_decodes_with_a_bounded_cache() -> None:
    """ArchScale's ``yoco_window``: F and X share a window W; F's cache keeps W-1 keys, X sees the same keys."""
    heads = dict(n_head=4, n_kv_head=2, head_dim=8, window=4)
    f = randomize(CausalSelfAttention(ctx(), AttentionConfig(**heads, share_kv=True)))
    x_layer = randomize(CrossAttention(ctx(), CrossAttentionConfig(**heads)))
    T = 12
    hf, hx = torch.randn(1, T, D, dtype=torch.float64), torch.randn(1, T, D, dtype=torch.float64)
    shared = CrossLayer()
    f(hf, SeqInfo.dense(1, T), shared=shared)
    full, _ = x_layer(hx, SeqInfo.dense(1, T), shared=shared)
    f_state, outs = None, []
    for t in range(T):
        step = CrossLayer()
        _, f_state = f(hf[:, t : t + 1], SeqInfo.dense(1, 1, offset=t), f_state, shared=step)
        assert f_state[0].shape[2] <= 3
        outs.append(x_layer(hx[:, t : t + 1], SeqInfo.dense(1, 1, offset=t), shared=step)[0])
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-10, atol=1e-10)
