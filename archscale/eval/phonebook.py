"""Phonebook lookup (Jelassi et al. 2024, "Repeat After Me"; REFERENCE §7): can the model copy one number out of
a long context?

A phone book is a list of lines ``First Last: NNNNNNNNNN`` (unique names; 10 digits, the first 6-9). The prompt is
the book, a blank line, two example lookups copied from the book (same format) and the name of a third entry
followed by ``:``; the model decodes greedily (up to 20 tokens, stopping at a newline) and is right when the
number it writes is exactly that entry's number. Recurrent models with a fixed-size state forget most of a long
book, attention copies it: accuracy against book length separates the two (1 850 entries ≈ 32K tokens with the
Llama-2 tokenizer).

    >>> book = make_phonebook(3, seed=0)
    >>> len(book.entries), book.entries[0].number[0] in "6789"
    (3, True)
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from archscale.eval.generate import TextTokenizer, generate_batch

# Common given names and surnames (public statistics); 64 × 64 = 4 096 unique full names.
FIRST_NAMES = ["James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda", "William", "Elizabeth", "David", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah", "Charles", "Karen", "Daniel", "Nancy", "Matthew", "Lisa", "Anthony", "Betty", "Mark", "Margaret", "Donald", "Sandra", "Steven", "Ashley", "Paul", "Kimberly", "Andrew", "Emily", "Joshua", "Donna", "Kenneth", "Michelle", "Kevin", "Dorothy", "Brian", "Carol", "George", "Amanda", "Edward", "Melissa", "Ronald", "Deborah", "Timothy", "Stephanie", "Jason", "Rebecca", "Jeffrey", "Sharon", "Ryan", "Laura", "Jacob", "Cynthia", "Gary", "Kathleen", "Nicholas", "Amy"]
LAST_NAMES = ["Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright", "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green", "Adams", "Nelson", "Baker", "Hall", "Rivera", "Campbell", "Mitchell", "Carter", "Roberts", "Gomez", "Phillips", "Evans", "Turner", "Diaz", "Parker", "Cruz", "Edwards", "Collins", "Reyes", "Stewart", "Morris", "Morales", "Murphy"]
MAX_ENTRIES = len(FIRST_NAMES) * len(LAST_NAMES)
NUMBER_RE = re.compile(r"\s*(\d+)")
MAX_NEW_TOKENS = 20


@dataclass(frozen=True)
class Entry:
    name: str
    number: str

    def line(self) -> str:
        return f"{self.name}: {self.number}"


@dataclass(frozen=True)
class Phonebook:
    entries: tuple[Entry, ...]

    def text(self) -> str:
        return "\n".join(e.line() for e in self.entries)


@dataclass(frozen=True)
class Query:
    """One lookup: the prompt, the expected number, and where in the book the asked entry sits (0 = first)."""

    prompt: str
    answer: str
    name: str
    position: int
    num_entries: int


def phone_number(rng: random.Random) -> str:
    """Ten digits, the first 6-9 (so numbers never look like a year or start with 0)."""
    return str(rng.randint(6, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(9))


def make_phonebook(num_entries: int, seed: int = 0) -> Phonebook:
    """``num_entries`` entries with unique names and unique numbers, in random order."""
    if not 3 <= num_entries <= MAX_ENTRIES:
        raise ValueError(f"num_entries must be in [3, {MAX_ENTRIES}] (two examples and a query), got {num_entries}")
    rng = random.Random(seed)
    names = rng.sample([f"{f} {last}" for f in FIRST_NAMES for last in LAST_NAMES], num_entries)
    numbers: set[str] = set()
    while len(numbers) < num_entries:
        numbers.add(phone_number(rng))
    return Phonebook(tuple(Entry(n, num) for n, num in zip(names, rng.sample(sorted(numbers), num_entries))))


def make_query(book: Phonebook, target: int, rng: random.Random) -> Query:
    """The prompt asking for entry ``target``: the book, a blank line, two other entries as example lookups, then
    the target's name and a colon."""
    others = [i for i in range(len(book.entries)) if i != target]
    examples = [book.entries[i] for i in rng.sample(others, 2)]
    entry = book.entries[target]
    lookups = "\n".join(e.line() for e in examples)
    prompt = f"{book.text()}\n\n{lookups}\n{entry.name}:"
    return Query(prompt=prompt, answer=entry.number, name=entry.name, position=target,
                 num_entries=len(book.entries))


def make_queries(num_entries: int, num_queries: int, seed: int = 0) -> list[Query]:
    """``num_queries`` lookups into one book of ``num_entries``, targets spread evenly over the book."""
    book = make_phonebook(num_entries, seed)
    rng = random.Random(seed + 1)
    n = min(num_queries, num_entries)
    targets = sorted({round(i * (num_entries - 1) / max(n - 1, 1)) for i in range(n)})
    return [make_query(book, t, rng) for t in targets]


def extract_number(generation: str) -> str | None:
    """The run of digits the generation starts with (leading whitespace skipped), or None."""
    m = NUMBER_RE.match(generation)
    return m.group(1) if m else None


def is_correct(generation: str, answer: str) -> bool:
    """Exact match: the digits the model wrote first are the number, no more and no fewer."""
    return extract_number(generation) == answer


def entries_for_tokens(tokenizer: TextTokenizer, target_tokens: int, seed: int = 0) -> int:
    """How many entries make a prompt of about ``target_tokens`` tokens with this tokenizer."""
    probe = make_queries(64, 1, seed)[0]
    per_entry = len(tokenizer.encode(probe.prompt)) / 64
    return max(3, min(MAX_ENTRIES, int(target_tokens / per_entry)))


def evaluate_phonebook(
    model: Any,
    tokenizer: TextTokenizer,
    num_entries: Sequence[int],
    *,
    num_queries: int = 20,
    seed: int = 0,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Accuracy per book size. Returns ``{"task", "results": [{num_entries, tokens, accuracy, n}], "samples"}``."""
    results, samples = [], []
    for n in num_entries:
        queries = make_queries(n, num_queries, seed)
        outputs = generate_batch(model, tokenizer, [q.prompt for q in queries], max_new_tokens=MAX_NEW_TOKENS,
                                 temperature=0.0, stop=["\n"], batch_size=batch_size)
        correct = [is_correct(o, q.answer) for o, q in zip(outputs, queries)]
        tokens = sum(len(tokenizer.encode(q.prompt)) for q in queries) / len(queries)
        results.append({"num_entries": n, "tokens": round(tokens, 1), "accuracy": sum(correct) / len(correct),
                        "n": len(correct)})
        samples += [{**{k: v for k, v in asdict(q).items() if k != "prompt"}, "output": o, "correct": c}
                    for q, o, c in zip(queries, outputs, correct)]
    return {"task": "phonebook", "seed": seed, "results": results, "samples": samples}


def write_report(report: dict[str, Any], out_dir: str | Path, *, label: str = "") -> tuple[Path, Path | None]:
    """``phonebook.json`` and, when matplotlib is installed, ``phonebook.png`` (accuracy vs prompt tokens)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "phonebook.json"
    json_path.write_text(json.dumps(report, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return json_path, None
    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = [r["tokens"] for r in report["results"]]
    ax.plot(xs, [r["accuracy"] for r in report["results"]], marker="o", label=label or None)
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("exact-match accuracy")
    ax.set_title("Phonebook lookup")
    if label:
        ax.legend()
    fig.tight_layout()
    png = out / "phonebook.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return json_path, png
