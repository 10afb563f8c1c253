"""The registered ``adamw``: bitwise equal to torch.optim.AdamW with per-group lr / wd, and equal to the AdamW
update written out by hand (Loshchilov & Hutter 2019, decoupled decay) with ArchScale's β = (0.9, 0.95), ε = 1e-8."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from archscale.optim.optimizers import AdamWConfig, adamw, build_optimizer
from archscale.optim.routing import build_param_groups
from archscale.registry import UnknownEntryError, optimizers

LR = {"embedding": 5e-3, "matrix": 1e-2, "vector": 3e-3}
WD = {"embedding": 0.05, "matrix": 0.1, "vector": 0.0}
STEPS = 6


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.lin = nn.Linear(6, 6)
        self.norm = nn.LayerNorm(6)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(torch.tanh(self.lin(self.embed(tokens))))

    roles = {
        "embed.weight": "embedding",
        "lin.weight": "matrix",
        "lin.bias": "vector",
        "norm.weight": "vector",
        "norm.bias": "vector",
    }


def make_model() -> Small:
    torch.manual_seed(0)
    model = Small()
    with torch.no_grad():  # non-trivial norm params so that decay and updates show on every tensor
        for p in model.norm.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def loss_at(model: nn.Module, step: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(step)
    tokens = torch.randint(0, 10, (4, 5), generator=gen)
    target = torch.randn(4, 5, 6, generator=gen)
    return (model(tokens) - target).square().mean()


def run(model: nn.Module, opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss_at(model, step).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def test_bitwise_equal_to_torch_adamw() -> None:
    ours_model, ref_model = make_model(), make_model()
    ours = build_optimizer("adamw", build_param_groups(ours_model, Small.roles, LR, WD))
    by_role: dict[str, list[nn.Parameter]] = {}
    for name, p in ref_model.named_parameters():
        by_role.setdefault(Small.roles[name], []).append(p)
    ref = torch.optim.AdamW(
        [{"params": ps, "lr": LR[r], "weight_decay": WD[r]} for r, ps in by_role.items()],
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    start = [p.detach().clone() for p in ours_model.parameters()]
    got, want = run(ours_model, ours), run(ref_model, ref)
    for a, b, s in zip(got, want, start):
        assert torch.equal(a, b)
        assert not torch.equal(a, s)  # it did train


def test_matches_adamw_written_out() -> None:
    """Independent of torch's implementation: catches wrong betas/eps defaults or coupled (L2) decay."""
    model = make_model()
    opt = adamw(build_param_groups(model, Small.roles, LR, WD), AdamWConfig())
    shadow = make_model()  # same init; the float64 reference updates these values
    names = [n for n, _ in model.named_parameters()]
    ref = {n: p.detach().double().clone() for n, p in shadow.named_parameters()}
    m = {n: torch.zeros_like(v) for n, v in ref.items()}
    v = {n: torch.zeros_like(x) for n, x in ref.items()}
    b1, b2, eps = 0.9, 0.95, 1e-8
    for step in range(STEPS):
        with torch.no_grad():  # the shadow model computes the gradient at the reference's current point
            for n, p in shadow.named_parameters():
                p.copy_(ref[n].float())
        shadow.zero_grad(set_to_none=True)
        loss_at(shadow, step).backward()
        t = step + 1
        for n, p in shadow.named_parameters():
            role = Small.roles[n]
            lr, wd, g = LR[role], WD[role], p.grad.double()
            ref[n] *= 1 - lr * wd  # decoupled decay, applied to the weights, not added to the gradient
            m[n] = b1 * m[n] + (1 - b1) * g
            v[n] = b2 * v[n] + (1 - b2) * g * g
            mhat, vhat = m[n] / (1 - b1**t), v[n] / (1 - b2**t)
            ref[n] -= lr * mhat / (vhat.sqrt() + eps)
    got = run(model, opt)
    for n, a in zip(names, got):
        torch.testing.assert_close(a.double(), ref[n], rtol=1e-5, atol=2e-6, msg=n)


def test_groups_keep_their_lr_wd_and_role() -> None:
    opt = build_optimizer("adamw", build_param_groups(make_model(), Small.roles, LR, WD), {"betas": [0.8, 0.9]})
    assert [(g["role"], g["lr"], g["weight_decay"]) for g in opt.param_groups] == [
        ("embedding", 5e-3, 0.05),
        ("matrix", 1e-2, 0.1),
        ("vector", 3e-3, 0.0),
    ]
    assert all(g["betas"] == (0.8, 0.9) and g["eps"] == 1e-8 for g in opt.param_groups)


def test_group_without_lr_or_wd_is_refused() -> None:
    """torch would silently use lr=1e-3 / weight_decay=1e-2 for such a group."""
    p = nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="no weight_decay"):
        adamw([{"params": [p], "lr": 1e-3, "role": "vector"}], AdamWConfig())
    with pytest.raises(ValueError, match="no lr"):
        adamw([{"params": [p], "weight_decay": 0.0}], AdamWConfig())


def test_fused_default_on_cpu_is_not_fused() -> None:
    opt = build_optimizer("adamw", build_param_groups(make_model(), Small.roles, LR, WD))
    assert not opt.defaults["fused"]


def test_fused_true_is_passed_through() -> None:
    model, plain_model = make_model(), make_model()
    try:
        opt = build_optimizer("adamw", build_param_groups(model, Small.roles, LR, WD), {"fused": True})
    except RuntimeError as exc:  # a torch build without the CPU fused kernel
        pytest.skip(f"fused AdamW unavailable on CPU: {exc}")
    assert opt.defaults["fused"] is True
    plain = build_optimizer("adamw", build_param_groups(plain_model, Small.roles, LR, WD), {"fused": False})
    for a, b in zip(run(model, opt), run(plain_model, plain)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_registry_and_config_errors() -> None:
    assert optimizers.get("adamw") is adamw and optimizers.config_model("adamw") is AdamWConfig
    groups = build_param_groups(make_model(), Small.roles, LR, WD)
    with pytest.raises(UnknownEntryError, match="Unknown optimizer 'adam'.*Did you mean: adamw"):
        build_optimizer("adam", groups)
    for params, field in [
        ({"beta": (0.9, 0.95)}, "beta"),  # typo'd field
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"eps": 0.0}, "eps"),
        ({"weight_decay": 0.1}, "weight_decay"),  # per group from the router, not a global knob
    ]:
        with pytest.raises(ValidationError) as info:
            build_optimizer("adamw", groups, params)
        assert field in str(info.value)
