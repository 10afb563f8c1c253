"""The registered ``muon``: Muon on role-"matrix" groups and torch's AdamW (bit for bit) on the others, in one
optimizer; routing checks and overrides; the Muon step against a hand-written reference; stacked (3-D) weights as
batches of matrices; update scales; MuonH; state_dict round trips through ``torch.load(weights_only=True)``."""

from __future__ import annotations

import io
import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from archscale.optim.muon import Muon, MuonConfig, muon, update_scale_factor
from archscale.optim.newton_schulz import newton_schulz
from archscale.optim.optimizers import build_optimizer
from archscale.optim.routing import build_param_groups
from archscale.optim.schedules import lr_multiplier, make_lr_scheduler
from archscale.registry import optimizers

LR = {"embedding": 5e-3, "head": 4e-3, "matrix": 2e-2, "vector": 3e-3}
WD = {"embedding": 0.05, "head": 0.0, "matrix": 0.1, "vector": 0.0}
F32 = {"ns_dtype": "float32"}


class Toy(nn.Module):
    """Every role, two same-shape matrices (batched together), a tall and a wide one, a stack of matrices."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Parameter(torch.randn(11, 6))
        self.a = nn.Parameter(torch.randn(6, 6) / 3)
        self.b = nn.Parameter(torch.randn(6, 6) / 3)
        self.tall = nn.Parameter(torch.randn(10, 6) / 3)
        self.wide = nn.Parameter(torch.randn(6, 10) / 3)
        self.stack = nn.Parameter(torch.randn(3, 6, 4) / 3)
        self.gain = nn.Parameter(1 + 0.3 * torch.randn(6))
        self.head = nn.Parameter(torch.randn(5, 6) / 3)

    roles = {
        "embed": "embedding",
        "a": "matrix",
        "b": "matrix",
        "tall": "matrix",
        "wide": "matrix",
        "stack": "matrix",
        "gain": "vector",
        "head": "head",
    }


def make_toy(seed: int = 0) -> Toy:
    torch.manual_seed(seed)
    return Toy()


def set_grads(model: nn.Module, step: int) -> None:
    """Synthetic gradients that depend only on the step, so each parameter evolves on its own and an optimizer can
    be compared with a reference parameter by parameter."""
    gen = torch.Generator().manual_seed(1000 + step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)


def groups_of(model: nn.Module, **kw: object) -> list[dict]:
    return build_param_groups(model, Toy.roles, LR, WD, **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------- routing
def test_registered_with_config_and_mup_flag() -> None:
    assert optimizers.get("muon") is muon
    assert optimizers.config_model("muon") is MuonConfig
    assert muon.width_independent_matrix_lr is True  # type: ignore[attr-defined]
    with pytest.raises(ValidationError, match="ns_stepz"):
        build_optimizer("muon", groups_of(make_toy()), {"ns_stepz": 3})
    with pytest.raises(ValidationError, match="update_scale"):
        build_optimizer("muon", groups_of(make_toy()), {"update_scale": "huge"})
    with pytest.raises(ValidationError, match="ns_coefficients"):
        build_optimizer("muon", groups_of(make_toy()), {"ns_coefficients": [(1.0, 2.0)]})


def test_routes_matrices_to_muon_and_the_rest_to_adamw_each_param_once() -> None:
    model = make_toy()
    opt = build_optimizer("muon", groups_of(model))
    algo = {name: g["algorithm"] for g in opt.param_groups for name in g["param_names"]}
    assert algo == {n: ("muon" if r == "matrix" else "adamw") for n, r in Toy.roles.items()}
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each exactly once
    # The inner AdamW works on the very same group dicts (so LR schedules reach it).
    assert all(any(g is h for h in opt.param_groups) for g in opt._adamw.param_groups)  # type: ignore[union-attr]


def test_overrides_move_parameters_and_typos_fail() -> None:
    model = make_toy()
    opt = build_optimizer("muon", groups_of(model), {"overrides": [("tall", "adamw"), ("head", "muon")]})
    algo = {name: g["algorithm"] for g in opt.param_groups for name in g["param_names"]}
    assert algo["tall"] == "adamw" and algo["head"] == "muon" and algo["wide"] == "muon"
    moved = [g for g in opt.param_groups if g.get("algorithm_override")]
    assert {n for g in moved for n in g["param_names"]} == {"tall", "head"}
    assert next(g for g in moved if "tall" in g["param_names"])["lr"] == LR["matrix"]  # keeps its role's LR
    with pytest.raises(ValueError, match="match no parameter"):
        build_optimizer("muon", groups_of(model), {"overrides": [("blocks.*.attn", "adamw")]})
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        build_optimizer("muon", groups_of(model), {"overrides": [("gain", "muon")]})


def test_rejects_bad_groups() -> None:
    model = make_toy()
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        Muon([{"params": [model.gain], "lr": 0.1, "weight_decay": 0.0, "role": "matrix"}])
    with pytest.raises(ValueError, match="neither a 'role' nor an 'algorithm'"):
        Muon([{"params": [model.a], "lr": 0.1, "weight_decay": 0.0}])
    with pytest.raises(ValueError, match="has no lr"):
        Muon([{"params": [model.a], "weight_decay": 0.0, "role": "matrix"}])
    with pytest.raises(ValueError, match="two param groups"):
        Muon([
            {"params": [model.a], "lr": 0.1, "weight_decay": 0.0, "role": "matrix"},
            {"params": [model.a], "lr": 0.1, "weight_decay": 0.0, "algorithm": "adamw"},
        ])


# --------------------------------------------------------------------------------------------------- the update
def test_adamw_groups_equal_torch_adamw_bitwise() -> None:
    ours_model, ref_model = make_toy(), make_toy()
    opt = build_optimizer("muon", groups_of(ours_model), {"betas": (0.8, 0.9), "eps": 1e-7})
    by_role: dict[str, list[nn.Parameter]] = {}
    for name, p in ref_model.named_parameters():
        if Toy.roles[name] != "matrix":
            by_role.setdefault(Toy.roles[name], []).append(p)
    ref = torch.optim.AdamW(
        [{"params": ps, "lr": LR[r], "weight_decay": WD[r]} for r, ps in by_role.items()], betas=(0.8, 0.9), eps=1e-7
    )
    for step in range(5):
        set_grads(ours_model, step)
        set_grads(ref_model, step)
        opt.step()
        ref.step()
    for (name, a), b, start in zip(ours_model.named_parameters(), ref_model.parameters(), make_toy().parameters()):
        assert not torch.equal(a, start), name  # every parameter trained
        if Toy.roles[name] != "matrix":
            assert torch.equal(a, b), name


def reference_muon(
    W: torch.Tensor, grads: list[torch.Tensor], *, lr: float, wd: float, beta: float, nesterov: bool, scale: float
) -> torch.Tensor:
    """Muon written out plainly, one matrix (or stack) at a time."""
    W, M = W.clone(), torch.zeros_like(W)
    for G in grads:
        M = beta * M + (1 - beta) * G
        U = beta * M + (1 - beta) * G if nesterov else M
        O = torch.stack([newton_schulz(u, dtype=torch.float32) for u in U.reshape(-1, *U.shape[-2:])])
        W = W * (1 - lr * wd) - lr * scale * O.reshape(W.shape)
    return W


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("mode", ["archscale", "moonlight", "spectral", "none"])
def test_muon_step_matches_reference(nesterov: bool, mode: str) -> None:
    model = make_toy()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer("muon", groups_of(model), {**F32, "nesterov": nesterov, "update_scale": mode})
    grads: dict[str, list[torch.Tensor]] = {n: [] for n in start}
    for step in range(4):
        set_grads(model, step)
        for n, p in model.named_parameters():
            grads[n].append(p.grad.clone())  # type: ignore[union-attr]
        opt.step()
    for name, p in model.named_parameters():
        if Toy.roles[name] != "matrix":
            continue
        want = reference_muon(
            start[name], grads[name], lr=LR["matrix"], wd=WD["matrix"], beta=0.95, nesterov=nesterov,
            scale=update_scale_factor(p.shape, mode),  # type: ignore[arg-type]
        )
        torch.testing.assert_close(p.detach(), want, rtol=1e-5, atol=1e-6, msg=name)
        assert not torch.allclose(p.detach(), start[name])


def test_update_scales() -> None:
    assert update_scale_factor((8, 32), "archscale") == pytest.approx(0.4 * math.sqrt(32))
    assert update_scale_factor((32, 8), "moonlight") == pytest.approx(0.2 * math.sqrt(32))
    assert update_scale_factor((32, 8), "spectral") == pytest.approx(2.0)  # √(fan_out / fan_in)
    assert update_scale_factor((5, 8, 32), "spectral") == pytest.approx(0.5)  # a stack: per (m, n) matrix
    assert update_scale_factor((8, 32), "none") == 1.0
    with pytest.raises(ValueError, match="update_scale"):
        update_scale_factor((8, 32), "big")  # type: ignore[arg-type]


def test_stacked_weight_is_a_batch_of_matrices() -> None:
    """A (3, 6, 4) weight moves exactly as three separate (6, 4) weights would."""
    torch.manual_seed(0)
    stack = nn.Parameter(torch.randn(3, 6, 4))
    parts = [nn.Parameter(stack.detach()[i].clone()) for i in range(3)]
    opt_a = Muon([{"params": [stack], "lr": 0.05, "weight_decay": 0.1, "role": "matrix"}], ns_dtype="float32")
    opt_b = Muon([{"params": parts, "lr": 0.05, "weight_decay": 0.1, "role": "matrix"}], ns_dtype="float32")
    for step in range(3):
        g = torch.randn(3, 6, 4, generator=torch.Generator().manual_seed(step))
        stack.grad = g.clone()
        for i, p in enumerate(parts):
            p.grad = g[i].clone()
        opt_a.step()
        opt_b.step()
    torch.testing.assert_close(stack.detach(), torch.stack([p.detach() for p in parts]), rtol=1e-5, atol=1e-6)


def test_hyperball_keeps_each_matrix_on_its_sphere() -> None:
    model = make_toy()
    groups = build_param_groups(model, Toy.roles, LR, {r: 0.0 for r in WD})
    norms = {n: torch.linalg.matrix_norm(p.detach()) for n, p in model.named_parameters() if Toy.roles[n] == "matrix"}
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer("muon", groups, {**F32, "hyperball": True})
    for step in range(5):
        set_grads(model, step)
        opt.step()
    for name, p in model.named_parameters():
        if name in norms:
            torch.testing.assert_close(torch.linalg.matrix_norm(p.detach()), norms[name], rtol=1e-5, atol=0)
            # relative step lr per update: moved, but by about lr·‖W‖ per step, not more
            moved = torch.linalg.matrix_norm(p.detach() - start[name]) / norms[name]
            assert (moved > 0.2 * LR["matrix"]).all() and (moved < 5 * 1.5 * LR["matrix"]).all(), name


# --------------------------------------------------------------------------------------------------- state
def make_run(seed: int = 0) -> tuple[Toy, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    model = make_toy(seed)
    opt = build_optimizer("muon", groups_of(model), F32)
    sched = make_lr_scheduler(opt, lr_multiplier("cosine", None, total_steps=10, warmup_steps=2))
    return model, opt, sched


def run_steps(model: Toy, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LambdaLR, steps: range) -> None:
    for step in steps:
        set_grads(model, step)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()


def test_state_dict_round_trip_through_weights_only_load_continues_identically() -> None:
    model, opt, sched = make_run()
    run_steps(model, opt, sched, range(10))
    want = [p.detach().clone() for p in model.parameters()]

    model, opt, sched = make_run()
    run_steps(model, opt, sched, range(4))
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    assert {k for s in ckpt["opt"]["state"].values() for k in s} == {"momentum_buffer", "step", "exp_avg", "exp_avg_sq"}

    model, opt, sched = make_run(seed=123)  # fresh objects, other initial weights: everything must come from ckpt
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    sched.load_state_dict(ckpt["sched"])
    run_steps(model, opt, sched, range(4, 10))
    for a, b in zip(model.parameters(), want):
        assert torch.equal(a, b)
