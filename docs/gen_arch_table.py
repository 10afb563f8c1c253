"""Regenerate the parameter table of docs/architectures.md: ``python docs/gen_arch_table.py``.

Counts come from :func:`archscale.scaling.counting.count_params` (each mixer's own ``count_params``), nothing is
built. tests/models/test_archs.py fails when the table in the document is not what this script writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import ValidationError

from archscale.registry import architectures
from archscale.scaling.counting import count_params

DOC = Path(__file__).with_name("architectures.md")
BEGIN, END = "<!-- BEGIN PARAM TABLE (docs/gen_arch_table.py) -->", "<!-- END PARAM TABLE -->"
FAMILIES = ["transformer", "transformerls", "samba", "sambay", "sambayda", "sambayoco", "swayoco", "mambay",
            "mambay2", "gdny", "sgdny"]
DEPTHS = [8, 12, 16, 20, 24]


def non_embedding(family: str, **params: object) -> int:
    cfg = architectures.config_model(family).model_validate(params)
    return count_params(architectures.get(family)(cfg)).non_embedding


def render() -> str:
    """The table (markdown) between the markers: N non-embedding per family and depth, and the ratio to the
    Transformer++ of the same depth."""
    lines = ["| family | " + " | ".join(f"d{d}" for d in DEPTHS) + " |", "|---|" + "---|" * len(DEPTHS)]
    base = {d: non_embedding("transformer", depth=d) for d in DEPTHS}
    invalid: list[str] = []
    for family in FAMILIES:
        cells = []
        for d in DEPTHS:
            try:
                n = non_embedding(family, depth=d)
            except ValueError as err:  # e.g. differential attention needs an even number of KV heads (d/4)
                cells.append("—")
                msg = err.errors()[0]["msg"] if isinstance(err, ValidationError) else str(err)
                invalid.append(f"{family} d{d}: {msg}")
                continue
            cells.append(f"{n / 1e6:,.1f}M ({n / base[d]:.3f})")
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    phi = count_params(architectures.get("phi4miniflash")(architectures.config_model("phi4miniflash")()))
    lines.append("")
    lines += [f"—: no valid model; e.g. {invalid[0]}."] if invalid else []
    lines.append("")
    lines.append(f"phi4miniflash (d32, fixed widths): {phi.non_embedding / 1e9:.3f}B non-embedding, "
                 f"{phi.total / 1e9:.3f}B in all (tied 200 064 x 2560 table).")
    return "\n".join(lines)


def updated(text: str) -> str:
    """``text`` with the table between the markers replaced by :func:`render`."""
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{render()}\n{END}{tail}"


if __name__ == "__main__":
    new = updated(DOC.read_text())
    if "--check" in sys.argv:
        sys.exit(0 if new == DOC.read_text() else "docs/architectures.md is stale: run python docs/gen_arch_table.py")
    DOC.write_text(new)
