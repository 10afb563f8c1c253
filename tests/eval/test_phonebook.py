"""Phonebook: generator format, prompt layout, exact-match scoring, and an end-to-end run on a tiny trained model."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from archscale.eval.phonebook import (
    entries_for_tokens,
    evaluate_phonebook,
    extract_number,
    is_correct,
    make_phonebook,
    make_queries,
    make_query,
    write_report,
)

LINE = re.compile(r"^[A-Z][a-z]+ [A-Z][a-z]+: [6-9]\d{9}$")


def test_generator_format() -> None:
    book = make_phonebook(300, seed=3)
    lines = book.text().split("\n")
    assert len(lines) == 300
    assert all(LINE.match(line) for line in lines), [x for x in lines if not LINE.match(x)][:3]
    assert len({e.name for e in book.entries}) == 300 and len({e.number for e in book.entries}) == 300
    firsts = {e.number[0] for e in book.entries}
    assert firsts == set("6789")  # every allowed first digit occurs, and only those
    assert make_phonebook(300, seed=3) == book and make_phonebook(300, seed=4) != book
    with pytest.raises(ValueError, match="num_entries"):
        make_phonebook(2)


def test_prompt_layout() -> None:
    book = make_phonebook(10, seed=0)
    q = make_query(book, 4, random.Random(0))
    head, tail = q.prompt.split("\n\n")
    assert head == book.text()
    ex1, ex2, query = tail.split("\n")
    assert LINE.match(ex1) and LINE.match(ex2)  # two example lookups copied from the book
    assert ex1 in head.split("\n") and ex2 in head.split("\n") and ex1 != ex2
    target = book.entries[4]
    assert query == f"{target.name}:" and target.name not in (ex1.split(":")[0], ex2.split(":")[0])
    assert q.answer == target.number and q.prompt.endswith(f"\n{target.name}:")


def test_queries_spread_over_the_book() -> None:
    qs = make_queries(50, 5, seed=1)
    assert [q.position for q in qs] == [0, 12, 24, 37, 49]
    assert len(make_queries(4, 10)) == 4


@pytest.mark.parametrize(
    ("generation", "answer", "expected"),
    [
        (" 6123456789", "6123456789", True),
        ("6123456789\nJohn Smith: 7", "6123456789", True),
        (" 6123456789 is the number", "6123456789", True),
        (" 61234567890", "6123456789", False),  # one digit too many
        (" 612345678", "6123456789", False),  # one too few
        (" 612-345-6789", "6123456789", False),
        ("The number is 6123456789", "6123456789", False),  # must answer directly
        ("", "6123456789", False),
        (" 7123456789", "6123456789", False),
    ],
)
def test_exact_match(generation: str, answer: str, expected: bool) -> None:
    assert is_correct(generation, answer) is expected


def test_extract_number() -> None:
    assert extract_number("  0042x") == "0042" and extract_number("x1") is None


def test_end_to_end_on_tiny_run(tiny_run: Path, tmp_path: Path) -> None:
    from archscale.eval.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(tiny_run, device="cpu")
    n = entries_for_tokens(tok, 200)
    assert 3 <= n < 200
    report = evaluate_phonebook(model, tok, [3, 6], num_queries=3, seed=0)
    assert [r["num_entries"] for r in report["results"]] == [3, 6]
    for r in report["results"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["n"] == 3 and r["tokens"] > 20
    assert len(report["samples"]) == 6
    s = report["samples"][0]
    assert s["correct"] == is_correct(s["output"], s["answer"]) and "\n" not in s["output"]
    json_path, png = write_report(report, tmp_path, label="tiny")
    assert json.loads(json_path.read_text())["results"] == report["results"]
    assert png is not None and png.stat().st_size > 1000
