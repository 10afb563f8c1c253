"""examples/scaling_comparison.py: sweeps two families on CPU, fits a power law per family and plots them
(the command docs/scaling_curves.md shows)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_script_sweeps_fits_and_plots(tmp_path: Path) -> None:
    command = "python $REPO/examples/scaling_comparison.py --out runs/compare --depths 2,4,6 --steps 8"
    env = dict(os.environ, REPO=str(ROOT), ARCHSCALE_CACHE=str(tmp_path / "cache"), MPLBACKEND="Agg",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", command + " --steps 4"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "runs" / "compare"
    assert (out / "curves.png").stat().st_size > 10_000
    for family in ("tfpp", "samba"):
        rows = list(csv.DictReader((out / family / "sweep.csv").open()))
        assert [int(r["d"]) for r in rows] == [2, 4, 6] and all(r["status"] == "done" for r in rows)
        flops = [float(r["train_flops"]) for r in rows]
        assert flops == sorted(flops)  # deeper (and wider) models cost more per token
    assert "Transformer++" in proc.stdout and "Samba" in proc.stdout and "C0 (irreducible)" in proc.stdout
