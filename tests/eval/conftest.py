"""Shared fixtures for the evaluation tests: one tiny tokenizer, packed data and two tiny trained runs per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from eval_helpers import prepare_text_data, train_tiny_run, train_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def eval_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("eval_tok"))


@pytest.fixture(scope="session")
def eval_data(tmp_path_factory: pytest.TempPathFactory, eval_tokenizer: Path) -> Path:
    return prepare_text_data(tmp_path_factory.mktemp("eval_data"), eval_tokenizer)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, eval_data: Path, eval_tokenizer: Path) -> Path:
    """A Transformer++ run directory (2 layers, width 32, context 32) trained for a few steps."""
    return train_tiny_run(eval_data, eval_tokenizer, tmp_path_factory.mktemp("runs") / "tfpp")


@pytest.fixture(scope="session")
def tiny_sambay_run(tmp_path_factory: pytest.TempPathFactory, eval_data: Path, eval_tokenizer: Path) -> Path:
    return train_tiny_run(eval_data, eval_tokenizer, tmp_path_factory.mktemp("runs") / "sambay", arch="sambay")
