"""Test-suite wide settings: GPU tests are skipped without CUDA; no test touches the network or the user cache."""

from __future__ import annotations

import os

import pytest


# One thread per process: the tiny matmuls of the tests run 10-100x slower when two threads fight over the CI
# machine's two cores with the subprocesses some tests start (which inherit this setting).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def pytest_configure(config: pytest.Config) -> None:
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run on the GPU machine: benchmarks/gpu_suite.sh)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
