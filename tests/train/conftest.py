"""Fixtures for trainer tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiny_run import write_pattern_data  # type: ignore[import-not-found]


@pytest.fixture(scope="session")
def pattern_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pattern_data(tmp_path_factory.mktemp("pattern"))
