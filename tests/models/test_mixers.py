"""Generic token-mixer tests, parametrized over every entry of the ``mixers`` registry.

Registering a mixer enrols it here (timm's trick): it is built with ``cls.example_params(d_model)`` and checked
for document isolation in packed varlen batches, causality, state continuation, FLOPs and gradients.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from archscale.models.api import SeqInfo
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


def test_registry_has_attention() -> None:
    assert "attention" in MIXERS


@pytest.mark.parametrize("name", MIXERS)
def test_varlen_equals_documents_alone(name: str) -> None:
    mixer = make_mixer(name)
    lengths = [5, 1, 13, 9]
    x = torch.randn(1, sum(lengths), D, dtype=torch.float64)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    packed, _ = mixer(x, SeqInfo.from_cu_seqlens(cu))
    start = 0
    for n in lengths:
        alone, _ = mixer(x[:, start : start + n], SeqInfo.dense(1, n))
        torch.testing.assert_close(packed[:, start : start + n], alone, rtol=1e-10, atol=1e-10)
        start += n


@pytest.mark.parametrize("name", MIXERS)
@pytest.mark.parametrize("T", [1, 17, 63])
def test_causal(name: str, T: int) -> None:
    mixer = make_mixer(name)
    x = torch.randn(2, T, D, dtype=torch.float64)
    y, _ = mixer(x, SeqInfo.dense(2, T))
    assert y.shape == x.shape
    t = T // 2
    x2 = x.clone()
    x2[:, t] += torch.randn(2, D, dtype=torch.float64)
    y2, _ = mixer(x2, SeqInfo.dense(2, T))
    torch.testing.assert_close(y2[:, :t], y[:, :t], rtol=1e-10, atol=1e-10)
    assert not torch.allclose(y2[:, t], y[:, t])


@pytest.mark.parametrize("name", MIXERS)
@pytest.mark.parametrize("split", [(1, 1), (7, 1), (20, 43), (5, 6, 1, 9)])
def test_state_continuation(name: str, split: tuple[int, ...]) -> None:
    mixer = make_mixer(name)
    T = sum(split)
    x = torch.randn(2, T, D, dtype=torch.float64)
    full, _ = mixer(x, SeqInfo.dense(2, T))
    state, start, pieces = None, 0, []
    for n in split:
        y, state = mixer(x[:, start : start + n], SeqInfo.dense(2, n, offset=start), state)
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
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        mixer(x, SeqInfo.dense(2, T))
    measured = counter.get_total_flops() / (2 * T)
    assert mixer.flops_per_token(T) == pytest.approx(measured, rel=0.05)


@pytest.mark.parametrize("name", MIXERS)
@pytest.mark.parametrize("T", [1, 63])
def test_backward_finite(name: str, T: int) -> None:
    mixer = make_mixer(name).float()
    x = torch.randn(2, T, D, requires_grad=True)
    y, _ = mixer(x, SeqInfo.dense(2, T))
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
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
