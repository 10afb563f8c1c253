"""Test-suite wide settings: GPU tests are skipped without CUDA; no test touches the network or the user cache (nor
torch's compile cache: each session gets its own)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


# One thread per process: the tiny matmuls of the tests run 10-100x slower when two threads fight over the CI
# machine's two cores with the subprocesses some tests start (which inherit this setting).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# A fresh inductor cache for each test session (subprocesses share it): torch's on-disk cache does not key on a custom
# op's fake (register_fake), so graphs compiled against an earlier fake survive a change to it and fail inductor's
# stride checks (2026-12-07, the GDN state-pass op). Tests must not depend on what earlier runs left behind.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="archscale-tests-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)


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


@pytest.fixture
def set_tf32() -> Iterator[Callable[[bool], None]]:
    """A setter of PyTorch's TF32 flags (matrix products and cuDNN) for one test, restored afterwards. By hand, not
    monkeypatch: the flags are served by __getattr__, which monkeypatch's undo cannot restore."""
    import torch

    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32

    def set_flags(enabled: bool) -> None:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled

    yield set_flags
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


@pytest.fixture(scope="session")
def corpus_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ARCHSCALE_CACHE directory holding the default corpus (its BPE takes seconds), built once per session for
    every test that trains on it (data, docs, examples); tests point ARCHSCALE_CACHE at it themselves."""
    from archscale.data.corpus import default_corpus

    cache = tmp_path_factory.mktemp("archscale_cache")
    old = os.environ.get("ARCHSCALE_CACHE")
    os.environ["ARCHSCALE_CACHE"] = str(cache)
    try:
        default_corpus()
    finally:
        if old is None:
            del os.environ["ARCHSCALE_CACHE"]
        else:
            os.environ["ARCHSCALE_CACHE"] = old
    return cache
