"""Data parallelism on CPU with gloo, 2 processes: DDP and FSDP2 reproduce single-process losses at the same
global batch; a sharded checkpoint resumes on 1 and 2 processes; a failing rank ends the whole job, named."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_run import tiny_recipe  # type: ignore[import-not-found]

from archscale.models.lm import build_model
from archscale.train.checkpoint import consolidate_checkpoint, list_checkpoints, read_model_weights
from archscale.train.metrics import read_metrics

SCRIPT = Path(__file__).resolve().parent / "dist_run.py"


def run(data: Path, out: Path, strategy: str, devices: int, steps: int = 8, fail: tuple[int, int] | None = None,
        timeout: float = 400, arch: str = "transformer") -> subprocess.CompletedProcess[str]:
    args = [sys.executable, str(SCRIPT), str(data), str(out), arch, strategy, str(devices), str(steps)]
    if fail:
        args += [str(fail[0]), str(fail[1])]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(out) if "loss" in r]


@pytest.fixture(scope="module")
def single_losses(pattern_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[float]]:
    out = {}
    for arch in ("transformer", "sambay"):
        run_dir = tmp_path_factory.mktemp("single") / arch
        proc = run(pattern_data, run_dir, "auto", 1, arch=arch)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[arch] = losses(run_dir)
    return out


@pytest.mark.parametrize("arch", ["transformer", "sambay"])
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one(
    strategy: str, arch: str, pattern_data: Path, tmp_path: Path, single_losses: dict[str, list[float]]
) -> None:
    out = tmp_path / strategy
    proc = run(pattern_data, out, strategy, 2, arch=arch)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = losses(out)
    assert len(got) == len(single_losses[arch]) == 8
    assert got == pytest.approx(single_losses[arch], rel=1e-5, abs=1e-6)
    assert got[-1] < got[0]
    resolved = (out / "recipe.resolved.json").read_text()
    assert '"world_size": 2' in resolved


def test_sharded_checkpoint_resumes_on_one_and_two_processes(pattern_data: Path, tmp_path: Path) -> None:
    full = tmp_path / "two"
    proc = run(pattern_data, full, "fsdp", 2)  # 8 steps, checkpoints at 4 and 8
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpts = list_checkpoints(full)
    assert [s for s, _ in ckpts] == [4, 8]
    assert ckpts[0][1].is_dir(), "FSDP2 writes a distributed (one shard per rank) checkpoint directory"
    reference = losses(full)

    # Consolidation into one file: full (unsharded) weights that load into a single-process model.
    single = consolidate_checkpoint(ckpts[1][1], tmp_path / "full.ckpt")
    state = torch.load(single, weights_only=True)
    assert state["step"] == 8 and state["data"]["global_batches_drawn"] == 16
    recipe = tiny_recipe(pattern_data, tmp_path)
    model = build_model(recipe.model.entry()(recipe.model.config()))
    model.load_state_dict(state["model"])  # strict: every parameter present with its full shape
    assert torch.equal(read_model_weights(ckpts[1][1])["embed.weight"], state["model"]["embed.weight"])

    for devices in (2, 1):
        out = tmp_path / f"resume{devices}"
        shutil.copytree(full, out)
        shutil.rmtree(out / ckpts[1][1].relative_to(full))  # as if killed after step 4
        proc = run(pattern_data, out, "fsdp", devices)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "resumed from" in proc.stdout and "step-00000004" in proc.stdout
        got = losses(out)
        assert got[:4] == reference[:4]  # kept from before the resume
        assert got[4:] == pytest.approx(reference[4:], rel=1e-5, abs=1e-6), devices


def test_failure_on_one_rank_ends_the_job_and_names_the_rank(pattern_data: Path, tmp_path: Path) -> None:
    for rank in (1, 0):
        t0 = time.monotonic()
        proc = run(pattern_data, tmp_path / f"fail{rank}", "ddp", 2, steps=8, fail=(rank, 3), timeout=300)
        elapsed = time.monotonic() - t0
        assert proc.returncode != 0
        assert f"rank {rank}/2 failed: RuntimeError: injected failure at step 3" in proc.stderr
        assert elapsed < 100, f"the job took {elapsed:.0f} s to end: a surviving rank waited"


def test_torchrun_launch_of_the_cli_matches_one_process(
    pattern_data: Path, tmp_path: Path, single_losses: dict[str, list[float]]
) -> None:
    """`torchrun ... -m archscale train` (the cluster launch path): Fabric joins the processes torchrun started."""
    recipe_file = tmp_path / "recipe.py"
    recipe_file.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(SCRIPT.parent)!r})\n"
        "from pathlib import Path\n"
        "from tiny_run import tiny_recipe\n"
        f"def tiny():\n    return tiny_recipe(Path({str(pattern_data)!r}), Path({str(tmp_path / 'run')!r}))\n"
    )
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run(
        [str(torchrun), "--nproc-per-node", "2", "-m", "archscale", "train", f"{recipe_file}:tiny",
         "--set", "system.num_devices=2", "--set", "system.strategy=ddp", "--set", "budget.steps=8"],
        capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert losses(tmp_path / "run") == pytest.approx(single_losses["transformer"], rel=1e-5, abs=1e-6)
