"""make_lr_scheduler: LRs follow peak × multiplier per group, and a resumed run continues bit for bit."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from archscale.optim.optimizers import build_optimizer
from archscale.optim.routing import build_param_groups
from archscale.optim.schedules import lr_multiplier, make_lr_scheduler

TOTAL, WARMUP = 12, 3
PEAK = {"matrix": 1e-2, "vector": 3e-3}
WD = {"matrix": 0.1, "vector": 0.0}


def make_run() -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    roles = {n: ("matrix" if p.ndim == 2 else "vector") for n, p in model.named_parameters()}
    opt = build_optimizer("adamw", build_param_groups(model, roles, PEAK, WD))
    multiplier = lr_multiplier("cosine", {"min_lr_ratio": 0.1}, total_steps=TOTAL, warmup_steps=WARMUP)
    sched = make_lr_scheduler(opt, multiplier)
    return model, opt, sched


def train_step(
    model: nn.Module, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LambdaLR, step: int
) -> list[float]:
    """One update; returns the LRs it used."""
    gen = torch.Generator().manual_seed(100 + step)
    x = torch.randn(8, 4, generator=gen)
    used = [g["lr"] for g in opt.param_groups]
    opt.zero_grad(set_to_none=True)
    model(x).square().mean().backward()
    opt.step()
    sched.step()
    return used


def test_lrs_are_peak_times_multiplier() -> None:
    model, opt, sched = make_run()
    f = lr_multiplier("cosine", {"min_lr_ratio": 0.1}, total_steps=TOTAL, warmup_steps=WARMUP)
    for step in range(TOTAL):
        used = train_step(model, opt, sched, step)
        assert [g["role"] for g in opt.param_groups] == ["matrix", "vector"]
        assert used == pytest.approx([PEAK["matrix"] * f(step), PEAK["vector"] * f(step)], rel=1e-12)
    assert [g["initial_lr"] for g in opt.param_groups] == [PEAK["matrix"], PEAK["vector"]]


def test_resume_gives_identical_lrs_and_params() -> None:
    model, opt, sched = make_run()
    straight = [train_step(model, opt, sched, s) for s in range(TOTAL)]
    final = [p.detach().clone() for p in model.parameters()]

    model, opt, sched = make_run()
    first = [train_step(model, opt, sched, s) for s in range(5)]
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
    buffer.seek(0)
    # weights_only=True (torch's default): the scheduler state must hold no pickled Python objects.
    ckpt = torch.load(buffer, weights_only=True)

    model, opt, sched = make_run()  # a fresh process: everything rebuilt from the recipe, then loaded
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    sched.load_state_dict(ckpt["sched"])
    rest = [train_step(model, opt, sched, s) for s in range(5, TOTAL)]

    assert first + rest == straight  # exact, not approximately
    for a, b in zip(model.parameters(), final):
        assert torch.equal(a, b)
