"""Tokenizer loading (HF tokenizer.json, SentencePiece, tiktoken) and BPE training."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from data_helpers import SAMPLE_DOCS

from archscale.data.tokenizers import (
    HFTokenizer,
    SentencePieceTokenizer,
    TiktokenTokenizer,
    load_tokenizer,
    train_bpe_tokenizer,
)

TEXT = "Ünïcödé — “quotes”, emoji 😀, tabs\tand\nnewlines in the Union."


def test_trained_bpe_round_trips(bpe_tokenizer: Path) -> None:
    tok = load_tokenizer(bpe_tokenizer)
    assert isinstance(tok, HFTokenizer)
    assert tok.vocab_size == 512 and tok.eos_id == 0
    ids = tok.encode(TEXT)
    assert ids and max(ids) < 512 and tok.eos_id not in ids
    assert tok.decode(ids) == TEXT  # byte-level: lossless on any text
    assert tok.encode_batch([TEXT, "the"]) == [ids, tok.encode("the")]
    # Common words got merged, so the BPE actually learned something.
    assert len(tok.encode("the Union")) < len(b"the Union")


def test_text_never_becomes_eos(bpe_tokenizer: Path) -> None:
    tok = load_tokenizer(bpe_tokenizer)
    ids = tok.encode("before <|endoftext|> after")
    assert tok.eos_id not in ids
    assert tok.decode(ids) == "before <|endoftext|> after"


def test_train_from_files_and_directory_lookup(tmp_path: Path) -> None:
    f = tmp_path / "doc.txt"
    f.write_text("\n".join(SAMPLE_DOCS))
    out = tmp_path / "model" / "tokenizer.json"
    tok = train_bpe_tokenizer([f], 300, out, eos_token="</s>")
    assert tok.vocab_size == 300 and tok.eos_id == 0
    assert tok.decode(tok.encode(TEXT)) == TEXT
    again = load_tokenizer(out.parent)  # a model directory holding tokenizer.json
    assert again.vocab_size == 300 and again.eos_id == 0
    with pytest.raises(ValueError, match="257"):
        train_bpe_tokenizer(["x"], 100, tmp_path / "small.json")


def test_sentencepiece_model(tmp_path: Path) -> None:
    import sentencepiece as spm

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(SAMPLE_DOCS))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=400,
                                   model_type="bpe", character_coverage=1.0, byte_fallback=True,
                                   minloglevel=2)
    tok = load_tokenizer(tmp_path / "sp.model")
    assert isinstance(tok, SentencePieceTokenizer)
    assert tok.vocab_size == 400 and tok.eos_id == 2  # SentencePiece's defaults: unk 0, bos 1, eos 2
    ids = tok.encode("the state of the Union")
    assert ids and 1 not in ids and 2 not in ids  # no BOS/EOS added by encode
    assert tok.decode(ids) == "the state of the Union"
    assert 2 not in tok.encode("a </s> inside text")


def _rank_file(path: Path, merges: list[bytes]) -> Path:
    ranks = [bytes([b]) for b in range(256)] + merges
    path.write_text("".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(ranks)))
    return path


def test_tiktoken_rank_file(tmp_path: Path) -> None:
    p = _rank_file(tmp_path / "tiny.tiktoken", [b"th", b"the", b" the"])
    tok = load_tokenizer(p)
    assert isinstance(tok, TiktokenTokenizer)
    assert tok.encode("the") == [257]
    assert tok.encode(" the") == [258]
    assert tok.eos_id == 259 and tok.vocab_size == 260  # <|endoftext|> after the last rank
    assert tok.decode(tok.encode(TEXT)) == TEXT
    assert tok.eos_id not in tok.encode("x <|endoftext|> y")
    assert tok.encode_batch(["the", " the"]) == [[257], [258]]


def test_tiktoken_known_encoding_specials_offline() -> None:
    from archscale.data.tokenizers import _openai_spec

    spec = _openai_spec("gpt2")  # from tiktoken's own definition, without downloading the ranks
    assert spec is not None and spec["special_tokens"]["<|endoftext|>"] == 50256
    assert _openai_spec("not-an-encoding") is None


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "vocab.txt"
    bad.write_text("x")
    with pytest.raises(ValueError, match="unknown tokenizer type '.txt'"):
        load_tokenizer(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: not a valid Hugging Face tokenizer.json"):
        load_tokenizer(broken)
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
