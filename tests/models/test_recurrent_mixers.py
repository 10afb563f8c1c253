"""Mamba-1, Mamba-2 and Gated DeltaNet specifics: REFERENCE §3 defaults and inits, parameter roles and counts,
the memory they export for SambaY's GMU, varlen/state rules, and their place in a built model. (The generic
contract — varlen isolation, causality, state continuation, FLOPs, gradients — is in test_mixers.py.)"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from archscale.models.api import CrossLayer, SeqInfo
from archscale.models.lm import build_model
from archscale.models.mixers.base import MixerContext
from archscale.models.mixers.gated_deltanet import GatedDeltaNet, GatedDeltaNetConfig
from archscale.models.mixers.mamba import Mamba, MambaConfig
from archscale.models.mixers.mamba2 import Mamba2, Mamba2Config
from archscale.models.spec import LayerSpec, LMSpec
from archscale.registry import mixers
from archscale.scaling.counting import count_params, forward_flops_per_token

RECURRENT = ["mamba", "mamba2", "gdn"]
D = 32


def make(name: str, d: int = D, **params: object) -> torch.nn.Module:
    cls = mixers.get(name)
    config = mixers.config_model(name).model_validate({**cls.example_params(d), **params})
    return cls(MixerContext(d_model=d, layer_idx=0, n_layers=2), config)


def ctx(d: int) -> MixerContext:
    return MixerContext(d_model=d, layer_idx=0, n_layers=2)


# ---------------------------------------------------------------------- defaults and inits (REFERENCE §3)
def test_mamba_defaults_and_init() -> None:
    m = Mamba(ctx(256), MambaConfig())
    assert (m.d_inner, m.dt_rank) == (512, 16)  # expand 2, dt_rank ⌈256/16⌉
    assert m.A_log.shape == (512, 16) and m.conv1d.weight.shape == (512, 1, 4) and m.conv1d.bias is not None
    assert all(lin.bias is None for lin in (m.in_proj, m.x_proj, m.dt_proj, m.out_proj))
    torch.testing.assert_close(-torch.exp(m.A_log), -torch.arange(1.0, 17.0).expand(512, 16))  # S4D-real
    torch.testing.assert_close(m.D, torch.ones(512))
    dt = F.softplus(m.dt_bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    # Log-uniform: about half the step sizes below the geometric mean 0.01.
    assert 0.3 < (dt < 0.01).float().mean() < 0.7
    assert Mamba(ctx(100), MambaConfig()).dt_rank == 7  # ⌈100/16⌉


def test_mamba2_defaults_and_init() -> None:
    m = Mamba2(ctx(256), Mamba2Config())
    assert (m.d_inner, m.n_head) == (512, 8)  # head_dim 64
    assert m.config.d_state == 128 and m.config.n_groups == 1 and m.config.chunk_size == 256
    assert m.in_proj.weight.shape == (2 * 512 + 2 * 128 + 8, 256)
    assert m.norm.group_size == 512 and not m.norm.norm_before_gate
    A = torch.exp(m.A_log)
    assert A.min() >= 1.0 - 1e-5 and A.max() <= 16.0 + 1e-5
    torch.testing.assert_close(m.D, torch.ones(8))
    dt = F.softplus(m.dt_bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    with pytest.raises(ValueError, match="head_dim"):
        Mamba2(ctx(48), Mamba2Config())  # d_inner 96 is not a multiple of 64


def test_gdn_defaults_and_init() -> None:
    m = GatedDeltaNet(ctx(1024), GatedDeltaNetConfig())
    assert (m.n_head, m.head_k, m.head_v) == (3, 256, 512)  # ⌈0.75·1024/256⌉ heads, expand_v 2
    assert GatedDeltaNet(ctx(2048), GatedDeltaNetConfig()).n_head == 6
    assert m.conv1d.weight.shape == (2 * 3 * 256 + 3 * 512, 1, 4) and m.conv1d.bias is None
    assert m.config.allow_neg_eigval and m.o_norm.norm_before_gate and m.o_norm.weight.shape == (512,)
    A = torch.exp(m.A_log)
    assert A.min() > 0 and A.max() <= 16.0 + 1e-5
    dt = F.softplus(m.dt_bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)


def test_gdn_beta_range_follows_allow_neg_eigval() -> None:
    # β = 2·sigmoid(·) with negative eigenvalues allowed: some β > 1 for large inputs; never with the flag off.
    seen = {}
    for flag in (True, False):
        m = make("gdn", allow_neg_eigval=flag)
        with torch.no_grad():
            m.b_proj.weight.normal_(0, 3.0)
        captured = {}

        def hook(module, inputs, output):  # noqa: ANN001, ANN202
            captured["b"] = output

        m.b_proj.register_forward_hook(hook)
        m(torch.randn(2, 9, D), SeqInfo.dense(2, 9))
        beta = torch.sigmoid(captured["b"]) * (2.0 if flag else 1.0)
        seen[flag] = float(beta.detach().max())
    assert seen[True] > 1.0 >= seen[False]


# ---------------------------------------------------------------------- roles and counts
EXPECTED_VECTORS = {
    "mamba": {"conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D"},
    "mamba2": {"conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D", "norm.weight"},
    "gdn": {"conv1d.weight", "A_log", "dt_bias", "o_norm.weight"},
}
OUTPUT = {"mamba": "out_proj.weight", "mamba2": "out_proj.weight", "gdn": "o_proj.weight"}


@pytest.mark.parametrize("name", RECURRENT)
def test_param_roles(name: str) -> None:
    roles = make(name).param_roles()
    assert {n for n, r in roles.items() if r == "vector"} == EXPECTED_VECTORS[name]
    assert all(r in ("matrix", "vector") for r in roles.values())
    assert make(name).output_projections() == {OUTPUT[name]}


@pytest.mark.parametrize(
    "name, d, params",
    [("mamba", 256, {}), ("mamba2", 256, {}), ("mamba2", 128, {"n_groups": 2, "head_dim": 32}),
     ("gdn", 512, {}), ("gdn", 256, {"conv_bias": True, "expand_v": 1.5})],
)
def test_count_params_at_reference_sizes(name: str, d: int, params: dict) -> None:
    cls = mixers.get(name)
    config = mixers.config_model(name).model_validate(params)
    with torch.device("meta"):
        mixer = cls(ctx(d), config)
    roles = mixer.param_roles()
    real: dict[str, int] = {}
    for n, p in mixer.named_parameters():
        real[roles[n]] = real.get(roles[n], 0) + p.numel()
    assert cls.count_params(ctx(d), config) == real


@pytest.mark.parametrize("name", RECURRENT)
def test_flop_conventions(name: str) -> None:
    m = make(name)
    for T in (1, 8, 50, 1000):
        assert 0 < m.flops_per_token(T, "causal") <= m.flops_per_token(T, "dense")
    proj = 2.0 * type(m).count_params(m.ctx, m.config)["matrix"]
    if name == "mamba":  # elementwise scan: projections only, at every length
        assert m.flops_per_token(1000) == m.flops_per_token(1) == proj
    else:  # the chunked scan adds a cost that saturates once T exceeds the chunk
        assert m.flops_per_token(1) < m.flops_per_token(8) == m.flops_per_token(800) > proj


def test_mamba2_flops_formula_at_reference_size() -> None:
    # d 2048: d_inner 4096, 64 heads of 64, N 128, one group, chunk 256, T 4096 (16 full chunks).
    c = Mamba2Config()
    flops = Mamba2.count_flops(ctx(2048), c, 4096)
    proj = 2 * (2048 * (2 * 4096 + 2 * 128 + 64) + 4096 * 2048)
    scan = 256 * (2 * 128 + 2 * 64 * 64) + 4 * 128 * 64 * 64
    assert flops == proj + scan
    causal = Mamba2.count_flops(ctx(2048), c, 4096, "causal")
    assert causal == proj + (257 / 2) * (2 * 128 + 2 * 64 * 64) + 4 * 128 * 64 * 64


# ---------------------------------------------------------------------- memory for the GMU
def reconstruct(name: str, m: torch.nn.Module, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """The mixer's output recomputed from the exported memory: proves it is the pre-gate signal."""
    if name == "mamba":
        z = m.in_proj(x)[..., m.d_inner :]
        return m.out_proj(memory * F.silu(z))
    if name == "mamba2":
        z = m.in_proj(x)[..., : m.d_inner]
        return m.out_proj(m.norm(memory, z))
    B, T, _ = x.shape
    o = memory.view(B, T, m.n_head, m.head_v)
    gate = m.g_proj(x).view(B, T, m.n_head, m.head_v)
    return m.o_proj(m.o_norm(o, gate).reshape(B, T, -1))


@pytest.mark.parametrize("name", RECURRENT)
def test_memory_is_the_ungated_output(name: str) -> None:
    m = make(name, export_memory=True).double()
    x = torch.randn(2, 13, D, dtype=torch.float64)
    shared = CrossLayer()
    y, _ = m(x, SeqInfo.dense(2, 13), shared=shared)
    assert shared.memory is not None and shared.memory.shape == (2, 13, type(m).memory_dim(m.ctx, m.config))
    torch.testing.assert_close(reconstruct(name, m, x, shared.memory), y, rtol=1e-10, atol=1e-10)
    # Without the flag, or without a shared object, nothing is written and the output is the same.
    quiet = CrossLayer()
    m.config = m.config.model_copy(update={"export_memory": False})
    y2, _ = m(x, SeqInfo.dense(2, 13), shared=quiet)
    assert quiet.memory is None
    torch.testing.assert_close(y2, y)


def test_mamba_memory_is_scan_plus_skip() -> None:
    """Mamba-1's memory is y = SSM(u') + D ⊙ u': doubling D adds exactly D ⊙ u' once more."""
    m = make("mamba", export_memory=True).double()
    x = torch.randn(1, 7, D, dtype=torch.float64)
    a, b = CrossLayer(), CrossLayer()
    m(x, SeqInfo.dense(1, 7), shared=a)
    u = F.silu(m.conv1d(F.pad(m.in_proj(x)[..., : m.d_inner].transpose(1, 2), (3, 0))).transpose(1, 2))
    with torch.no_grad():
        m.D.mul_(2)
    m(x, SeqInfo.dense(1, 7), shared=b)
    torch.testing.assert_close(b.memory - a.memory, u * m.D / 2, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", RECURRENT)
def test_memory_when_decoding_and_varlen(name: str) -> None:
    m = make(name, export_memory=True).double()
    T = 10
    x = torch.randn(2, T, D, dtype=torch.float64)
    full = CrossLayer()
    m(x, SeqInfo.dense(2, T), shared=full)
    # Prefill 6 tokens, then decode one token at a time: each step exports that token's memory.
    shared = CrossLayer()
    _, state = m(x[:, :6], SeqInfo.dense(2, 6), shared=shared)
    pieces = [shared.memory]
    for t in range(6, T):
        shared = CrossLayer()
        _, state = m(x[:, t : t + 1], SeqInfo.dense(2, 1, offset=t), state, shared=shared)
        assert shared.memory.shape[:2] == (2, 1)
        pieces.append(shared.memory)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full.memory, rtol=1e-9, atol=1e-10)
    # Packed documents: each document's memory equals that of the document alone.
    lengths = [4, 1, 6]
    xp = torch.randn(1, sum(lengths), D, dtype=torch.float64)
    cu = torch.tensor([0, 4, 5, 11], dtype=torch.int32)
    packed = CrossLayer()
    _, none_state = m(xp, SeqInfo.from_cu_seqlens(cu), shared=packed)
    assert none_state is None
    start = 0
    for n in lengths:
        alone = CrossLayer()
        m(xp[:, start : start + n], SeqInfo.dense(1, n), shared=alone)
        torch.testing.assert_close(packed.memory[:, start : start + n], alone.memory, rtol=1e-10, atol=1e-10)
        start += n


@pytest.mark.parametrize("name", RECURRENT)
def test_state_with_varlen_raises(name: str) -> None:
    m = make(name)
    _, state = m(torch.randn(1, 5, D), SeqInfo.dense(1, 5))
    with pytest.raises(ValueError, match="varlen"):
        m(torch.randn(1, 5, D), SeqInfo.from_cu_seqlens(torch.tensor([0, 2, 5])), state)


@pytest.mark.parametrize("name", RECURRENT)
def test_state_layout(name: str) -> None:
    m = make(name)
    _, state = m(torch.randn(3, 5, D), SeqInfo.dense(3, 5))
    conv, ssm = state
    assert conv.shape == (3, m.config.d_conv - 1, m.conv1d.weight.shape[0])
    if name == "mamba":
        assert ssm.shape == (3, m.d_inner, m.config.d_state)  # (B, D, N)
    elif name == "mamba2":
        assert ssm.shape == (3, m.n_head, m.config.head_dim, m.config.d_state)  # (B, H, P, N)
    else:
        assert ssm.shape == (3, m.n_head, m.head_k, m.head_v)  # (B, H, K, V)
    assert ssm.dtype == torch.float32


@pytest.mark.parametrize("name", RECURRENT)
def test_bf16_forward_close_to_fp32(name: str) -> None:
    m = make(name)
    x = torch.randn(2, 21, D)
    with torch.no_grad():
        y32, _ = m(x, SeqInfo.dense(2, 21))
    with torch.no_grad():
        y16, _ = m.to(torch.bfloat16)(x.bfloat16(), SeqInfo.dense(2, 21))
    assert y16.dtype == torch.bfloat16 and torch.isfinite(y16).all()
    err = float((y16.float() - y32).norm() / y32.norm())
    assert err < 5e-2, err


def test_mamba2_compiled_backward_keeps_the_gate_in_bf16() -> None:
    """Under bf16 autocast the gate z leaves the input projection in bf16; the compiled backward keeps that, not a
    float32 copy (twice the bytes). The partitioner does not recompute a cast that comes long after its input in
    the forward, so the mixer slices z from the projection only where the norm uses it, after the scan."""
    T = 32
    m = make("mamba2")
    x = torch.randn(1, T, D, requires_grad=True)
    seq = dataclasses.replace(SeqInfo.dense(1, T), return_state=False)  # as in training
    fn = torch.compile(lambda x: m(x, seq)[0], backend="aot_eager_decomp_partition", fullgraph=True)
    saved: list[torch.Tensor] = []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            fn(x)
    gate_sized = [t.dtype for t in saved if tuple(t.shape) == (1, T, m.d_inner)]
    assert torch.bfloat16 in gate_sized and torch.float32 not in gate_sized, gate_sized


# ---------------------------------------------------------------------- inside a model
def recurrent_spec() -> LMSpec:
    layers = [
        LayerSpec(mixer="mamba", params={"d_state": 4}),
        LayerSpec(mixer="mamba2", params={"d_state": 8, "head_dim": 16, "chunk_size": 8}),
        LayerSpec(mixer="gdn", params={"head_dim": 8, "n_heads": 2, "chunk_size": 8}),
    ]
    return LMSpec(vocab_size=64, n_embd=32, layers=layers, mlp_hidden=64, block_size=64)


def test_model_init_keeps_special_parameters() -> None:
    """The model resets every submodule, then applies the init rule to matrices: the SSM inits must survive."""
    model = build_model(recurrent_spec())
    mamba, mamba2, gdn = (block.mixer for block in model.blocks)
    torch.testing.assert_close(torch.exp(mamba.A_log), torch.arange(1.0, 5.0).expand(64, 4))
    for m in (mamba, mamba2):
        torch.testing.assert_close(m.D, torch.ones_like(m.D))
    for m in (mamba, mamba2, gdn):
        dt = F.softplus(m.dt_bias)
        assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    torch.testing.assert_close(mamba2.norm.weight, torch.ones(64))
    torch.testing.assert_close(gdn.o_norm.weight, torch.ones(16))
    # Matrices got the SP init (std 0.02; output projections 0.02/√(2L)).
    assert abs(float(mamba.in_proj.weight.detach().std()) - 0.02) < 0.003
    assert float(gdn.o_proj.weight.detach().std()) < 0.02 / math.sqrt(2 * 3) * 1.3


def test_model_counts_forward_and_decoding() -> None:
    spec = recurrent_spec()
    model = build_model(spec)
    counts = count_params(spec)
    assert counts.total == sum(p.numel() for p in model.parameters())
    assert forward_flops_per_token(spec, 48) == pytest.approx(model.flops_per_token(48))
    tokens = torch.randint(0, 64, (2, 12))
    full = model(tokens, SeqInfo.dense(2, 12)).logits
    out = model(tokens[:, :7], SeqInfo.dense(2, 7), use_cache=True)
    logits = [out.logits]
    for t in range(7, 12):
        out = model(tokens[:, t : t + 1], SeqInfo.dense(2, 1, offset=t), state=out.state)
        logits.append(out.logits)
    torch.testing.assert_close(torch.cat(logits, dim=1), full, rtol=1e-4, atol=1e-4)
