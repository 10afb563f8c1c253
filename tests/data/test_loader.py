"""open_data: exact resume, determinism per (seed, rank), mixture weights, validation split, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import write_source

from archscale.data.config import DataConfig
from archscale.data.packed import PackedFormatError
from archscale.data.pipeline import open_data

EOS = 0


@pytest.fixture
def arange_source(tmp_path: Path) -> str:
    """10 000 tokens 1, 2, 3, ... (int32) in files of 700 tokens: every window is a run of consecutive ids."""
    return write_source(tmp_path / "a", "seq", np.arange(1, 10_001), chunk_size=700, dtype=np.int32)


def _cfg(**kw) -> DataConfig:
    kw.setdefault("seq_len", 31)
    return DataConfig(**kw)


def test_batches_are_contiguous_windows_across_files(arange_source: str) -> None:
    b = open_data(_cfg(sources={arange_source: 1.0}, val_fraction=0.0), micro_batch_size=4, seed=0)
    for _ in range(50):
        x = b.train.next()
        assert x.shape == (4, 32) and x.dtype == torch.long
        assert torch.all(x[:, 1:] - x[:, :-1] == 1)  # consecutive tokens, also across the 700-token files
        assert int(x.min()) >= 1 and int(x.max()) <= 10_000
    assert b.val is None
    assert b.max_token_id == 10_000 and b.max_token_id_exact


def test_resume_gives_the_uninterrupted_batches(arange_source: str) -> None:
    cfg = _cfg(sources={arange_source: 1.0})
    straight = open_data(cfg, micro_batch_size=3, seed=7)
    expected = [straight.train.next() for _ in range(12)]

    first = open_data(cfg, micro_batch_size=3, seed=7)
    head = [first.train.next() for _ in range(5)]
    state = json.loads(json.dumps(first.train.state_dict()))  # plain Python: survives JSON
    resumed = open_data(cfg, micro_batch_size=3, seed=7)
    resumed.train.load_state_dict(state)
    tail = [resumed.train.next() for _ in range(7)]
    for a, b in zip(expected, head + tail):
        assert torch.equal(a, b)
    assert len(json.dumps(state)) < 500  # O(1) state


def test_resume_refuses_a_different_configuration(arange_source: str) -> None:
    a = open_data(_cfg(sources={arange_source: 1.0}), micro_batch_size=3, seed=7)
    a.train.next()
    state = a.train.state_dict()
    other = open_data(_cfg(sources={arange_source: 1.0}), micro_batch_size=3, seed=8)
    with pytest.raises(ValueError, match="seed: saved 7, now 8"):
        other.train.load_state_dict(state)
    other.train.load_state_dict(state, strict=False)
    assert other.train.batches_drawn == 1


def test_determinism_per_seed_and_rank(arange_source: str) -> None:
    cfg = _cfg(sources={arange_source: 1.0})

    def draw(seed: int, rank: int, world: int) -> torch.Tensor:
        b = open_data(cfg, micro_batch_size=4, seed=seed, rank=rank, world_size=world)
        return torch.stack([b.train.next() for _ in range(3)])

    assert torch.equal(draw(1, 0, 2), draw(1, 0, 2))
    assert torch.equal(draw(1, 1, 2), draw(1, 1, 2))
    assert not torch.equal(draw(1, 0, 2), draw(1, 1, 2))
    assert not torch.equal(draw(1, 0, 2), draw(2, 0, 2))


def test_mixture_weights_are_honoured(tmp_path: Path) -> None:
    # Three sources told apart by their id ranges; weights 0.6 / 0.3 / 0.1.
    srcs = {
        write_source(tmp_path / "m", "a", np.full(3000, 1), chunk_size=1000): 6.0,
        write_source(tmp_path / "m", "b", np.full(3000, 2), chunk_size=1000): 3.0,
        write_source(tmp_path / "m", "c", np.full(500, 3), chunk_size=1000): 1.0,
    }
    b = open_data(_cfg(seq_len=15, sources=srcs, val_fraction=0.0), micro_batch_size=16, seed=3)
    firsts = torch.cat([b.train.next()[:, 0] for _ in range(250)])  # 4000 samples
    n = firsts.numel()
    for value, p in ((1, 0.6), (2, 0.3), (3, 0.1)):
        frac = float((firsts == value).float().mean())
        assert abs(frac - p) < 5 * (p * (1 - p) / n) ** 0.5, (value, frac, p)


def test_validation_tail_is_held_out_and_fixed(tmp_path: Path) -> None:
    # 500 documents of 10 tokens: document k is nine copies of 10 + k, then EOS.
    docs = np.repeat(10 + np.arange(500), 10).reshape(500, 10)
    docs[:, -1] = EOS
    tok = {"file": None, "sha256": "x", "vocab_size": 600, "eos_id": EOS}
    src = write_source(tmp_path / "v", "docs", docs.reshape(-1), chunk_size=1024, tokenizer=tok)
    cfg = _cfg(seq_len=19, sources={src: 1.0}, val_fraction=0.051)  # cut at 4745, moved on to the boundary at 4750
    b = open_data(cfg, micro_batch_size=4, seed=0)
    assert b.eos_id == EOS and b.vocab_size == 600
    assert len(b.train._streams[0]) == 4750 and b.val.num_tokens == 250  # the last 25 whole documents
    first = list(b.val.batches(4))
    second = list(b.val.batches(4))
    assert len(first) == 4 and all(torch.equal(x, y) for x, y in zip(first, second))
    assert first[0].shape == (4, 20)
    assert not torch.equal(first[0], first[1])
    for x in first:  # only held-out documents, each window two whole documents
        assert torch.all(x[:, 0] >= 10 + 475) and torch.all(x[:, 9] == EOS) and torch.all(x[:, 19] == EOS)
    for _ in range(50):
        assert int(b.train.next().max()) < 10 + 475
    # Ranks see different validation windows; a rank the same ones whatever the training seed.
    def val(rank: int, seed: int) -> torch.Tensor:
        d = open_data(cfg, micro_batch_size=4, seed=seed, rank=rank, world_size=2)
        return torch.stack(list(d.val.batches(2)))

    assert torch.equal(val(0, 1), val(0, 2))
    assert not torch.equal(val(0, 1), val(1, 1))


def test_train_windows_never_touch_the_validation_tail(arange_source: str) -> None:
    b = open_data(_cfg(sources={arange_source: 1.0}, val_fraction=0.1), micro_batch_size=8, seed=0)
    cut = 9000  # no EOS in this data, so the cut is exact: the last 1 000 tokens are validation
    assert int(torch.stack([b.train.next() for _ in range(100)]).max()) <= cut
    assert int(next(b.val.batches(1)).min()) > cut


def test_explicit_val_sources(tmp_path: Path, arange_source: str) -> None:
    val = write_source(tmp_path / "val", "v", np.full(400, 5), chunk_size=512)
    b = open_data(_cfg(sources={arange_source: 1.0}, val_sources={val: 1.0}), micro_batch_size=2, seed=0)
    assert len(b.train._streams[0]) == 10_000  # nothing held out of training
    assert torch.all(next(b.val.batches(1)) == 5)


def test_empty_folder_and_corrupt_file(tmp_path: Path, arange_source: str) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="archscale data prepare"):
        open_data(_cfg(sources={str(tmp_path / "empty"): 1.0}), micro_batch_size=1, seed=0)
    bad = sorted(Path(arange_source).parent.glob("*.bin"))[3]
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(PackedFormatError, match=bad.name + ": truncated"):
        open_data(_cfg(sources={arange_source: 1.0}), micro_batch_size=1, seed=0)


def test_too_little_data_for_a_window(tmp_path: Path) -> None:
    src = write_source(tmp_path / "s", "tiny", np.arange(1, 20), chunk_size=64)
    with pytest.raises(ValueError, match="fewer than one window of 32 tokens"):
        open_data(_cfg(sources={src: 1.0}, val_fraction=0.0), micro_batch_size=1, seed=0)
    with pytest.raises(ValueError, match="val_fraction"):
        open_data(_cfg(seq_len=7, sources={src: 1.0}, val_fraction=0.1), micro_batch_size=1, seed=0)


def test_vocab_mismatch_from_manifest(tmp_path: Path) -> None:
    src = write_source(tmp_path / "v", "big", np.arange(0, 1000), chunk_size=512,
                       tokenizer={"file": None, "sha256": "abc", "vocab_size": 1000, "eos_id": 0})
    b = open_data(_cfg(sources={src: 1.0}, val_fraction=0.0), micro_batch_size=2, seed=0)
    b.check_vocab(1000)
    with pytest.raises(ValueError, match="has 1000 tokens but the model's vocabulary has 900"):
        b.check_vocab(900)


def test_vocab_mismatch_without_manifest_is_scanned_or_caught_per_batch(tmp_path: Path, monkeypatch) -> None:
    src = write_source(tmp_path / "v", "raw", np.arange(0, 1000), chunk_size=500, manifest=False)
    b = open_data(_cfg(sources={src: 1.0}, val_fraction=0.0), micro_batch_size=2, seed=0)
    assert b.vocab_size is None and b.max_token_id == 65_535 and not b.max_token_id_exact
    with pytest.raises(ValueError, match=r"raw_0000000001.bin.*token id 999.*vocab_size to at least 1000"):
        b.check_vocab(900)
    b.check_vocab(1000)
    assert b.max_token_id == 999 and b.max_token_id_exact
    # Too large to scan: every drawn batch is checked instead.
    import archscale.data.pipeline as pipeline

    monkeypatch.setattr(pipeline, "SCAN_LIMIT_TOKENS", 0)
    c = open_data(_cfg(sources={src: 1.0}, val_fraction=0.0), micro_batch_size=8, seed=0)
    c.check_vocab(10)
    with pytest.raises(ValueError, match=r"raw_000000000[01].bin \(token \d+\).*>= the model's vocabulary size 10"):
        c.train.next()


def test_mixed_tokenizers_and_wrong_tokenizer_are_refused(tmp_path: Path, bpe_tokenizer: Path) -> None:
    a = write_source(tmp_path / "x", "a", np.arange(100), chunk_size=128,
                     tokenizer={"file": None, "sha256": "aaa", "vocab_size": 100, "eos_id": 0})
    b = write_source(tmp_path / "x", "b", np.arange(100), chunk_size=128,
                     tokenizer={"file": None, "sha256": "bbb", "vocab_size": 200, "eos_id": 0})
    with pytest.raises(ValueError, match="different tokenizers"):
        open_data(_cfg(seq_len=7, sources={a: 1.0, b: 1.0}), micro_batch_size=1, seed=0)
    with pytest.raises(ValueError, match="is not the one the data was prepared with"):
        open_data(_cfg(seq_len=7, sources={a: 1.0}, tokenizer=str(bpe_tokenizer)), micro_batch_size=1, seed=0)


def test_varlen_needs_an_eos(arange_source: str) -> None:
    with pytest.raises(ValueError, match="varlen needs an end-of-document id"):
        open_data(_cfg(sources={arange_source: 1.0}, varlen=True), micro_batch_size=1, seed=0)
    b = open_data(_cfg(sources={arange_source: 1.0}, varlen=True, eos_id=3), micro_batch_size=1, seed=0)
    assert b.eos_id == 3


def test_config_validation() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="mixture weight must be a finite number > 0"):
        DataConfig(sources={"x": 0.0})
    with pytest.raises(ValidationError, match="seq_len"):
        DataConfig(seq_len=0)
    with pytest.raises(ValidationError, match="val_fraction"):
        DataConfig(val_fraction=1.0)
    with pytest.raises(ValidationError, match="Extra inputs"):
        DataConfig(seqlen=5)
    for name, f in DataConfig.model_fields.items():
        assert f.description, name


def test_default_corpus_batches(corpus) -> None:
    b = open_data(DataConfig(seq_len=64), micro_batch_size=2, seed=0)
    assert b.vocab_size == 8192 and b.eos_id == corpus.eos_id
    assert b.tokenizer_path == str(corpus.tokenizer_path)
    assert b.max_token_id < 8192 and b.max_token_id_exact
    b.check_vocab(8192)
    x = b.train.next()
    assert x.shape == (2, 65)
    text = b.load_tokenizer().decode(x[0].tolist())
    assert sum(w in text.split() for w in ("the", "of", "and", "to")) >= 1
    v = next(b.val.batches(1))
    assert v.shape == (2, 65)
    assert b.val.num_tokens == corpus.num_val_tokens  # whole held-out addresses, not a token fraction


def test_ranks_share_one_global_stream_independent_of_world_size(arange_source: str) -> None:
    """Rank r's i-th batch is global batch i·world + r: two ranks together see exactly what one process sees,
    so data-parallel runs reproduce single-process losses and can resume on another world size."""
    cfg = _cfg(sources={arange_source: 1.0})
    single = open_data(cfg, micro_batch_size=4, seed=5)
    one = [single.train.next() for _ in range(6)]
    r0 = open_data(cfg, micro_batch_size=4, seed=5, rank=0, world_size=2)
    r1 = open_data(cfg, micro_batch_size=4, seed=5, rank=1, world_size=2)
    for i in range(3):
        assert torch.equal(r0.train.next(), one[2 * i]) and torch.equal(r1.train.next(), one[2 * i + 1])
    # Two ranks drew 3 batches each = 6 global batches: a single process resumes at its 7th batch.
    resumed = open_data(cfg, micro_batch_size=4, seed=5)
    resumed.train.load_state_dict(r0.train.state_dict())
    assert resumed.train.batches_drawn == 6
    assert torch.equal(resumed.train.next(), single.train.next())
    three = open_data(cfg, micro_batch_size=4, seed=5, rank=0, world_size=4)
    with pytest.raises(ValueError, match="not divisible by the world size 4"):
        three.train.load_state_dict(r0.train.state_dict())
