"""The multi-node launch commands of docs/distributed.md, run for real: two ``torchrun --nnodes=2`` launchers on
this machine (one process each, gloo), as two nodes would run them, with the environment variables the docs ask
for. Both rendezvous styles are checked (c10d: an endpoint and a job id; static: a master address and explicit node
ranks). The two-"node" FSDP2 run must reproduce the single-process losses, and each rank writes its shard of the
checkpoint. The command strings below are the docs' lines verbatim (tests/docs checks that); only a shorter budget
is appended.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from archscale.train.checkpoint import list_checkpoints
from archscale.train.metrics import read_metrics

pytestmark = pytest.mark.slow  # two launchers, two workers and a reference run: ~20–40 s on a 2-core machine

TRAIN_DIR = Path(__file__).resolve().parent
STEPS = " --set budget.steps=8"

C10D_LAUNCH = """\
torchrun --nnodes=2 --nproc-per-node=1 --rdzv-backend=c10d --rdzv-endpoint=$MASTER_ADDR:$MASTER_PORT --rdzv-id=$JOB_ID \\
  -m archscale train tiny.py:tiny --out runs/two-nodes \\
  --set system.num_nodes=2 --set system.num_devices=1 --set system.strategy=fsdp"""

STATIC_LAUNCH = """\
torchrun --nnodes=2 --nproc-per-node=1 --node-rank=$NODE_RANK --master-addr=$MASTER_ADDR --master-port=$MASTER_PORT \\
  -m archscale train tiny.py:tiny --out runs/two-nodes-static \\
  --set system.num_nodes=2 --set system.num_devices=1 --set system.strategy=fsdp"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bash_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # torchrun, archscale
    return env


@pytest.fixture(scope="module")
def workdir(pattern_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding tiny.py (the tiny trainer recipe on the pattern data) and a single-process run of it."""
    cwd = tmp_path_factory.mktemp("nodes")
    (cwd / "tiny.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(TRAIN_DIR)!r})\n"
        "from pathlib import Path\n"
        "from tiny_run import tiny_recipe\n"
        f"def tiny():\n    return tiny_recipe(Path({str(pattern_data)!r}), Path('runs/tiny'))\n"
    )
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "archscale train tiny.py:tiny --out runs/one" + STEPS],
        cwd=cwd, env=bash_env(), capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd


def launch_two_nodes(command: str, cwd: Path) -> None:
    """Start the command twice, as node 0 and node 1 would, and wait for both launchers."""
    env = bash_env() | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "JOB_ID": f"test{os.getpid()}"}
    procs = [
        subprocess.Popen(["bash", "-euo", "pipefail", "-c", command], cwd=cwd, env=env | {"NODE_RANK": str(rank)},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=300))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (p, (_, err)) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"node {rank}:\n{err[-3000:]}"


def check_matches_one_process(cwd: Path, run: str) -> None:
    def losses(run_dir: Path) -> list[float]:
        return [r["loss"] for r in read_metrics(run_dir) if "loss" in r]

    expected = losses(cwd / "runs/one")
    got = losses(cwd / run)
    assert len(got) == len(expected) == 8
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert '"world_size": 2' in (cwd / run / "recipe.resolved.json").read_text()
    last = list_checkpoints(cwd / run)[-1][1]
    assert sorted(f.name for f in last.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]  # one shard per node


def test_two_node_launch_c10d_rendezvous(workdir: Path) -> None:
    launch_two_nodes(C10D_LAUNCH + STEPS, workdir)
    check_matches_one_process(workdir, "runs/two-nodes")


def test_two_node_launch_static_rendezvous(workdir: Path) -> None:
    launch_two_nodes(STATIC_LAUNCH + STEPS, workdir)
    check_matches_one_process(workdir, "runs/two-nodes-static")
