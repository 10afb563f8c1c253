"""Generic token-mixer tests, parametrized over every entry of the ``mixers`` registry.

Registering a mixer enrols it here (timm's trick): it is built with ``cls.example_params(d_model)`` and checked
for document isolation in packed varlen batches, causality, state continuation, FLOPs and gradients. Mixers that
read cross-layer values (GMU memory, YOCO K,V) get random ones from ``cls.example_shared(...)``; by the contract
of :class:`~archscale.models.api.CrossLayer`, memory is per token and sliced like x, while K,V hold every key up
to the last token of the call (cached + new), so a chunk [a, b) sees K,V [0, b) and a document alone its own.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from archscale.models.api import CrossLayer, SeqInfo
from archscale.models.mixers.base import MixerContext
from archscale.registry import mixers

D = 32
MIXERS = mixers.names()


def make_mixer(name: str, n_layers: int = 4) -> torch.nn.Module:
    cls = mixers.get(name)
    config = mixers.config_model(name).model_validate(cls.example_params(D))
    mixer = cls(MixerContext(d_model=D, layer_idx=1, n_layers=n_layers), config)
    # Random non-trivial values everywhere (matrices and vectors alike), in float64 for tight comparisons.
    with torch.no_grad():
        for p in mixer.parameters():
            p.normal_(0.0, 0.3)
    return mixer.double()


def example_shared(mixer: Any, batch: int, seq_len: int, dtype: torch.dtype = torch.float64) -> CrossLayer | None:
    """Random shared values the mixer reads (None for mixers that read none)."""
    gen = torch.Generator().manual_seed(1234)
    return type(mixer).example_shared(mixer.ctx, mixer.config, batch, seq_len, generator=gen, dtype=dtype)


def window_of(shared: CrossLayer | None, start: int, stop: int, *, keys_from: int) -> CrossLayer | None:
    """The shared values seen by the tokens [start, stop): memory of those tokens, keys [keys_from, stop)."""
    if shared is None:
        return None
    memory = None if shared.memory is None else shared.memory[:, start:stop]
    kv = None if shared.kv is None else tuple(t[:, :, keys_from:stop] for t in shared.kv)
    return CrossLayer(memory=memory, kv=kv)


# Mixers that consume / produce cross-layer values (GMU and YOCO read them; memory and K,V producers write them):
# the shared-value tests apply only to these, so they are parametrized over them rather than skipped for others.
READERS = [n for n in MIXERS if example_shared(make_mixer(n), 2, 4) is not None]
WRITERS = [n for n in MIXERS if {"export_memory", "share_kv"} & set(mixers.config_model(n).model_fields)]


def test_shared_value_mixers_are_found() -> None:
    assert {"gmu", "yoco_cross"} <= set(READERS)
    assert {"attention", "mamba", "mamba2", "gdn"} <= set(WRITERS)


def test_registry_has_attention() -> None:
    assert {"attention", "diff_attention", "yoco_cross", "gmu"} <= set(MIXERS)


@pytest.mark.parametrize("name", MIXERS)
def test_varlen_equals_documents_alone(name: str) -> None:
    mixer = make_mixer(name)
    lengths = [5, 1, 13, 9]
    x = torch.randn(1, sum(lengths), D, dtype=torch.float64)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    shared = example_shared(mixer, 1, sum(lengths))
    packed, _ = mixer(x, SeqInfo.from_cu_seqlens(cu), shared=shared)
    start = 0
    for n in lengths:
        alone_shared = window_of(shared, start, start + n, keys_from=start)
        alone, _ = mixer(x[:, start : start + n], SeqInfo.dense(1, n), shared=alone_shared)
        torch.testing.assert_close(packed[:, start : start + n], alone, rtol=1e-10, atol=1e-10)
        start += n


@pytest.mark.parametrize("name", MIXERS)
@pytest.mark.parametrize("T", [1, 17, 63])
def test_causal(name: str, T: int) -> None:
    mixer = make_mixer(name)
    x = torch.randn(2, T, D, dtype=torch.float64)
    shared = example_shared(mixer, 2, T)
    y, _ = mixer(x, SeqInfo.dense(2, T), shared=shared)
    assert y.shape == x.shape
    t = T // 2
    x2 = x.clone()
    x2[:, t] += torch.randn(2, D, dtype=torch.float64)
    y2, _ = mixer(x2, SeqInfo.dense(2, T), shared=shared)
    torch.testing.assert_close(y2[:, :t], y[:, :t], rtol=1e-10, atol=1e-10)
    # x_t must matter, except for a query over a single shared key (softmax of one score is 1 whatever the query).
    if not (t == 0 and shared is not None and shared.kv is not None):
        assert not torch.allclose(y2[:, t], y[:, t])


@pytest.mark.parametrize("name", READERS)
def test_causal_in_shared_values(name: str) -> None:
    """Changing the shared values at position t changes no output before t (and the output at t)."""
    mixer = make_mixer(name)
    T, t = 17, 8
    shared = example_shared(mixer, 2, T)
    assert shared is not None
    x = torch.randn(2, T, D, dtype=torch.float64)
    y, _ = mixer(x, SeqInfo.dense(2, T), shared=shared)
    memory = None if shared.memory is None else shared.memory.clone()
    kv = None if shared.kv is None else tuple(v.clone() for v in shared.kv)
    if memory is not None:
        memory[:, t] += 1.0
    if kv is not None:
        for v in kv:
            v[:, :, t] += 1.0
    y2, _ = mixer(x, SeqInfo.dense(2, T), shared=CrossLayer(memory=memory, kv=kv))
    torch.testing.assert_close(y2[:, :t], y[:, :t], rtol=1e-10, atol=1e-10)
    assert not torch.allclose(y2[:, t], y[:, t])


@pytest.mark.parametrize("name", MIXERS)
@pytest.mark.parametrize("split", [(1, 1), (7, 1), (20, 43), (5, 6, 1, 9)])
def test_state_continuation(name: str, split: tuple[int, ...]) -> None:
    mixer = make_mixer(name)
    T = sum(split)
    x = torch.randn(2, T, D, dtype=torch.float64)
    shared = example_shared(mixer, 2, T)
    full, _ = mixer(x, SeqInfo.dense(2, T), shared=shared)
    state, start, pieces = None, 0, []
    for n in split:
        chunk_shared = window_of(shared, start, start + n, keys_from=0)
        y, state = mixer(x[:, start : start + n], SeqInfo.dense(2, n, offset=start), state, shared=chunk_shared)
        pieces.append(y)
        start += n
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", MIXERS)
@pytest.mark.parametrize("T", [16, 63])
def test_flops_match_flop_counter(name: str, T: int) -> None:
    # FlopCounterMode does not count the fused CPU attention kernel; under the math backend SDPA decomposes into
    # bmm calls and is counted as full (non-causal) T x T attention: the "dense" convention of flops_per_token.
    mixer = make_mixer(name).float()
    x = torch.randn(2, T, D)
    shared = example_shared(mixer, 2, T, dtype=torch.float32)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        mixer(x, SeqInfo.dense(2, T), shared=shared)
    measured = counter.get_total_flops() / (2 * T)
    assert mixer.flops_per_token(T) == pytest.approx(measured, rel=0.05)


@pytest.mark.parametrize("name", MIXERS)
@pytest.mark.parametrize("T", [1, 63])
def test_backward_finite(name: str, T: int) -> None:
    mixer = make_mixer(name).float()
    x = torch.randn(2, T, D, requires_grad=True)
    shared = example_shared(mixer, 2, T, dtype=torch.float32)
    leaves = []
    if shared is not None:  # shared values are activations of earlier layers: gradients must flow back to them
        if shared.memory is not None:
            shared.memory.requires_grad_(True)
            leaves.append(shared.memory)
        if shared.kv is not None:
            leaves.extend(v.requires_grad_(True) for v in shared.kv)
    y, _ = mixer(x, SeqInfo.dense(2, T), shared=shared)
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for leaf in leaves:
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
        assert T == 1 or leaf.grad.abs().sum() > 0  # one key: softmax is 1 and the keys get no gradient
    for pname, p in mixer.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"


@pytest.mark.parametrize("name", MIXERS)
def test_roles_cover_parameters(name: str) -> None:
    mixer = make_mixer(name)
    roles = mixer.param_roles()
    assert set(roles) == {n for n, _ in mixer.named_parameters()}
    assert set(roles.values()) <= {"embedding", "head", "matrix", "vector"}
    assert set(mixer.output_projections()) <= set(roles)
    cls = mixers.get(name)
    counted = cls.count_params(mixer.ctx, mixer.config)
    for role in ("embedding", "head", "matrix", "vector"):
        real = sum(p.numel() for n, p in mixer.named_parameters() if roles[n] == role)
        assert counted.get(role, 0) == real, role


@pytest.mark.parametrize("name", WRITERS)
def test_shared_writes(name: str) -> None:
    """A mixer that declares it writes shared values writes them, with the documented shapes."""
    cls = mixers.get(name)
    fields = mixers.config_model(name).model_fields
    flags = {f: True for f in ("export_memory", "share_kv") if f in fields}
    config = mixers.config_model(name).model_validate({**cls.example_params(D), **flags})
    ctx = MixerContext(d_model=D, layer_idx=1, n_layers=4)
    mixer = cls(ctx, config).double()
    writes = cls.shared_writes(config)
    assert writes == {"memory" if f == "export_memory" else "kv" for f in flags}
    T = 11
    x = torch.randn(2, T, D, dtype=torch.float64)
    shared = CrossLayer()
    first, state = mixer(x[:, :7], SeqInfo.dense(2, 7), shared=shared)
    if "memory" in writes:
        assert shared.memory is not None and shared.memory.shape == (2, 7, cls.memory_dim(ctx, config))
    if "kv" in writes:
        assert shared.kv is not None and shared.kv[0].shape[:3] == (2, shared.kv[0].shape[1], 7)
    # Continuing from the state: memory covers the new tokens only, K,V every token so far.
    shared = CrossLayer()
    mixer(x[:, 7:], SeqInfo.dense(2, 4, offset=7), state, shared=shared)
    if "memory" in writes:
        assert shared.memory.shape[:2] == (2, 4)
    if "kv" in writes:
        assert shared.kv[0].shape[2] == shared.kv[1].shape[2] == 11
