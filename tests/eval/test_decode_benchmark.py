"""benchmarks/decode_throughput.py runs end to end at tiny sizes (GPU) and its state accounting is right (CPU)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "decode_throughput.py"


def test_state_bytes() -> None:
    sys.path.insert(0, str(BENCH.parent))
    try:
        from decode_throughput import state_bytes
    finally:
        sys.path.remove(str(BENCH.parent))
    k = torch.zeros(2, 3, 5, dtype=torch.bfloat16)
    assert state_bytes([None, (k, k), [torch.zeros(4)]]) == 2 * 30 * 2 + 16


@pytest.mark.gpu
def test_decode_benchmark_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--depth", "4", "--vocab", "512", "--prompt", "64", "--gen", "8",
         "--batches", "1,2", "--warmup", "2"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    assert "sambay / transformer decode throughput" in out
    assert out.count('"decode_tok_per_s"') == 4
