"""Fixtures for the scaling tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from scaling_helpers import write_counting_data  # type: ignore[import-not-found]


@pytest.fixture(scope="session")
def counting_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_counting_data(tmp_path_factory.mktemp("counting"))
