"""Muon under FSDP2 (2 CPU processes, gloo) equals single-process Muon on the same global batch.

Each rank builds the same tiny archscale Transformer, shards it with ``fully_shard`` (per block, then the root), so
every parameter is a DTensor sharded along dim 0, and trains on its half of the global batch (FSDP2 averages the
gradients, so they equal the full-batch gradient). The single-process run trains an unsharded copy on the whole
batch. Newton–Schulz runs in float32 here so the two agree to float32 round-off. Both distributed modes are checked
(round robin: gather on one rank, orthogonalise, scatter; replicated: all-gather everywhere), plus a toy model with
an unevenly sharded matrix (5 rows over 2 ranks), a stacked (3, 6, 4) weight (sharded along its batch dimension, so
orthogonalised locally) and MuonH, whose norms must be summed across shards.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from archscale.models.archs import TransformerConfig, transformer
from archscale.models.lm import build_model
from archscale.optim.muon import Muon
from archscale.optim.routing import build_param_groups

WORLD = 2
STEPS = 3
ROLES = ("embedding", "head", "matrix", "vector")
LR = {"embedding": 3e-3, "head": 3e-3, "matrix": 2e-2, "vector": 3e-3}
WD = {"embedding": 0.0, "head": 0.0, "matrix": 0.1, "vector": 0.0}
VOCAB, B, T = 64, 4, 16
# (model, distributed mode, hyperball)
CASES = [
    ("transformer", "round_robin", False),
    ("transformer", "replicated", False),
    ("toy", "round_robin", False),
    ("toy", "replicated", False),
    ("toy", "round_robin", True),
]


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.uneven = nn.Parameter(torch.randn(5, 6) / 3)  # 5 rows over 2 ranks: shards of 3 and 2
        self.stack = nn.Parameter(torch.randn(3, 6, 4) / 3)  # shards of 2 and 1 whole matrices
        self.odd = nn.Parameter(torch.randn(7, 5) / 3)
        self.gain = nn.Parameter(1 + 0.1 * torch.randn(6))

    roles = {"uneven": "matrix", "stack": "matrix", "odd": "matrix", "gain": "vector"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (N, 6) -> loss
        x = x * self.gain
        y = torch.tanh(x @ self.uneven.T)  # (N, 5)
        z = torch.einsum("ni,eij->nej", x, self.stack)  # (N, 3, 4)
        w = torch.tanh(y @ self.odd.T)  # (N, 7)
        return (y - 0.5).square().mean() + (z.tanh() - 0.3).square().mean() + (w - 0.2).square().mean()


def build(kind: str) -> tuple[nn.Module, dict[str, str]]:
    torch.manual_seed(0)
    if kind == "toy":
        model: nn.Module = Toy()
        return model, Toy.roles
    cfg = TransformerConfig(depth=2, n_embd=32, n_head=2, head_dim=16, n_kv_head=1, vocab_size=VOCAB, block_size=T)
    model = build_model(transformer(cfg))
    return model, model.param_roles()


def batch(kind: str, step: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(step)
    if kind == "toy":
        return torch.randn(8, 6, generator=gen)
    return torch.randint(0, VOCAB, (B, T + 1), generator=gen)


def loss_of(kind: str, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if kind == "toy":
        return model(x)
    return model(x[:, :-1], targets=x[:, 1:]).loss


def train(kind: str, mode: str, hyperball: bool, rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
    model, roles = build(kind)
    if world > 1:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for block in getattr(model, "blocks", []):
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
    wd = {r: 0.0 for r in ROLES} if hyperball else WD
    opt = Muon(build_param_groups(model, roles, LR, wd), ns_dtype="float32", distributed=mode, hyperball=hyperball)
    for step in range(STEPS):
        x = batch(kind, step).chunk(world)[rank]  # this rank's part of the global batch
        loss_of(kind, model, x).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    out = {}
    for name, p in model.named_parameters():
        out[name] = (p.full_tensor() if world > 1 else p).detach().clone()
        if world > 1:
            assert type(p).__name__ == "DTensor", name  # really sharded
    return out


def _worker(rank: int, port: int, path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        results = {f"{k}/{m}/{h}": train(k, m, h, rank, WORLD) for k, m, h in CASES}
        if rank == 0:
            torch.save(results, path)
        # Both ranks leave together: tearing gloo down while the other rank still communicates can abort
        # ("terminate called without an active exception") on a loaded machine.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    path = Path(tmp_path_factory.mktemp("muon_fsdp")) / "params.pt"
    mp.spawn(_worker, args=(_free_port(), str(path)), nprocs=WORLD, join=True)
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_fsdp2_muon_equals_single_process(case: tuple[str, str, bool], distributed_results: dict[str, Any]) -> None:
    kind, mode, hyperball = case
    got = distributed_results[f"{kind}/{mode}/{hyperball}"]
    want = train(kind, mode, hyperball)
    start, _ = build(kind)
    assert got.keys() == want.keys()
    for name, p0 in start.named_parameters():
        a, b = got[name], want[name]
        assert not torch.allclose(b, p0.detach()), name  # the step moved it
        err = (a - b).norm() / b.norm()
        assert err < 1e-5, (name, float(err))
