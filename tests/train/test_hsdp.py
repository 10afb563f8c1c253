"""HSDP on CPU with gloo, 4 processes as 2 replicas × 2 shards (``system.hsdp_replicas=2``): every parameter lives
on a 2-D (replicate, shard) device mesh, placements (Replicate, Shard(0)), and training reproduces the
single-process losses at the same global batch (with AdamW and with Muon, whose round robin then gathers matrices
within each shard group only). Its checkpoint resumes on 2 processes without replication."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from archscale.train.checkpoint import list_checkpoints
from archscale.train.metrics import read_metrics
from archscale.train.parallel import make_strategy

SCRIPT = Path(__file__).resolve().parent / "dist_run.py"
# 256 tokens per step = 8 windows of 32: one micro-batch of 2 per rank on 4 ranks, 4 accumulated on one process.
# (The window order depends on the micro-batch size, so every run here uses the same one.)
BATCH = ("budget.micro_batch_size=2",)
HSDP = ("system.hsdp_replicas=2", *BATCH)
MUON = ("optimizer.name=muon", "optimizer.params.ns_dtype=float32")

# 4 processes on a 2-core machine: each process test takes 15–50 s there (marked slow).


def run(data: Path, out: Path, strategy: str, devices: int, overrides: Sequence[str]) -> list[float]:
    args = [sys.executable, str(SCRIPT), str(data), str(out), "transformer", strategy, str(devices), "8", *overrides]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=400, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [r["loss"] for r in read_metrics(out) if "loss" in r]


@pytest.fixture(scope="module")
def hsdp_run(pattern_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hsdp") / "run"
    run(pattern_data, out, "fsdp", 4, [*HSDP, "report_mesh=1"])
    return out


@pytest.mark.slow
def test_hsdp_is_a_2x2_mesh_and_matches_one_process(hsdp_run: Path, pattern_data: Path, tmp_path: Path) -> None:
    expected = run(pattern_data, tmp_path / "one", "auto", 1, BATCH)
    got = [r["loss"] for r in read_metrics(hsdp_run) if "loss" in r]
    assert len(got) == len(expected) == 8
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert got[-1] < got[0]

    coordinates = []
    for rank in range(4):
        report = json.loads((hsdp_run / f"mesh-rank{rank}.json").read_text())
        assert report["world_size"] == 4
        for name, rows in (("embed.weight", 64), ("blocks.0.mixer.q_proj.weight", 32)):
            p = report[name]
            assert p["type"] == "DTensor", name
            assert p["mesh_shape"] == [2, 2] and p["mesh_dim_names"] == ["replicate", "shard"], (rank, p)
            assert p["placements"] == ["Replicate()", "Shard(dim=0)"], (rank, p)
            assert p["shape"][0] == rows and p["local_shape"][0] == rows // 2, (rank, p)
        coordinates.append(tuple(report["embed.weight"]["coordinate"]))
    # Row-major: consecutive ranks form a shard group (on a cluster, the GPUs of one node); replicas across them.
    assert coordinates == [(0, 0), (0, 1), (1, 0), (1, 1)]


@pytest.mark.slow
def test_hsdp_checkpoint_resumes_on_two_processes(hsdp_run: Path, pattern_data: Path, tmp_path: Path) -> None:
    reference = [r["loss"] for r in read_metrics(hsdp_run) if "loss" in r]
    ckpts = list_checkpoints(hsdp_run)
    assert [s for s, _ in ckpts] == [4, 8]
    out = tmp_path / "resume"
    shutil.copytree(hsdp_run, out)
    shutil.rmtree(out / ckpts[1][1].relative_to(hsdp_run))  # as if killed after step 4
    got = run(pattern_data, out, "fsdp", 2, BATCH)  # plain FSDP2 over 2 ranks, 2 micro-batches accumulated
    assert got[:4] == reference[:4]
    assert got[4:] == pytest.approx(reference[4:], rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_hsdp_with_muon_matches_one_process(pattern_data: Path, tmp_path: Path) -> None:
    expected = run(pattern_data, tmp_path / "one", "auto", 1, [*BATCH, *MUON])
    got = run(pattern_data, tmp_path / "hsdp", "fsdp", 4, [*HSDP, *MUON])
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert got[-1] < got[0]


@pytest.mark.parametrize(("strategy", "world", "replicas", "message"), [
    ("ddp", 4, 2, "needs system.strategy=fsdp"),
    ("auto", 4, 2, "needs system.strategy=fsdp"),
    ("fsdp", 4, 3, "must divide the world size 4"),
])
def test_hsdp_settings_that_cannot_work_fail_naming_the_field(strategy: str, world: int, replicas: int,
                                                                message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        make_strategy(strategy, accelerator="cpu", world_size=world, precision="32-true", timeout_s=60,
                      hsdp_replicas=replicas)
    assert f"system.hsdp_replicas={replicas}" in str(info.value)
