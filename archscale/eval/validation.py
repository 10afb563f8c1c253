"""Length extrapolation: validation loss at 1×, 2×, ... the training context (REFERENCE §7).

A model trained on windows of ``seq_len`` tokens is scored on the run's own validation split cut into windows of
``k · seq_len`` tokens. The loss is averaged over every position of a window, so a model that degrades past its
training length (RoPE attention seeing unseen distances) shows a rising curve, while one that extrapolates (a
sliding window plus recurrence, as in Samba / SambaY; Ren et al. 2024, 2025) stays flat or improves with the
extra context. Every factor scores about the same number of tokens (``tokens_per_factor``), so the factors are
comparable. The data and tokenizer come from the run's saved recipe; nothing is inferred from names.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from archscale.train.run_dir import read_resolved


@torch.no_grad()
def length_extrapolation(
    run_dir: str | Path,
    factors: Sequence[int] = (1, 2, 3, 4),
    *,
    tokens_per_factor: int = 1 << 16,
    batch_size: int = 4,
    checkpoint: str | Path | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Mean validation loss at each ``factor × seq_len``. Returns ``{"run", "seq_len", "results": [{factor,
    context, loss, tokens}]}``. Windows are the run's validation windows (``FixedWindows``), the same on every
    call."""
    from archscale.data.pipeline import open_data
    from archscale.eval.loading import load_model_and_tokenizer

    run_dir = Path(run_dir)
    recipe = read_resolved(run_dir).recipe
    if any(int(f) < 1 for f in factors):
        raise ValueError(f"factors must be positive integers, got {list(factors)}")
    model, _ = load_model_and_tokenizer(run_dir, checkpoint=checkpoint, device=device)
    dev = next(model.parameters()).device
    base = recipe.data.seq_len
    results = []
    for factor in factors:
        seq_len = int(factor) * base
        cfg = recipe.data.model_copy(update={"seq_len": seq_len, "varlen": False})
        try:
            data = open_data(cfg, micro_batch_size=batch_size, seed=recipe.system.seed)
        except ValueError as exc:
            raise ValueError(f"length extrapolation at {factor}x ({seq_len} tokens): {exc}") from exc
        if data.val is None:
            raise ValueError(f"{run_dir}: the run has no validation data (data.val_fraction=0 and no "
                             "data.val_sources); length extrapolation scores the validation split")
        n_batches = max(1, min(math.ceil(tokens_per_factor / (batch_size * seq_len)),
                               math.ceil(data.val.num_windows / batch_size)))
        total, count = 0.0, 0
        for batch in data.val.batches(n_batches):
            batch = batch.to(dev)
            out = model(batch[:, :-1], targets=batch[:, 1:])
            loss = out.ce_loss if getattr(out, "ce_loss", None) is not None else out.loss  # without z-loss
            total += float(loss) * batch[:, 1:].numel()
            count += batch[:, 1:].numel()
        results.append({"factor": int(factor), "context": seq_len, "loss": total / count, "tokens": count})
    return {"run": str(run_dir), "name": recipe.name, "architecture": recipe.model.name, "seq_len": base,
            "results": results}


def comparison_table(reports: Sequence[dict[str, Any]]) -> str:
    """One row per run, one column per factor: validation loss (lower is better)."""
    factors = sorted({r["factor"] for rep in reports for r in rep["results"]})
    head = f"{'run':<28} {'arch':<14} {'train ctx':>9} " + " ".join(f"{str(f) + 'x':>8}" for f in factors)
    lines = [head, "-" * len(head)]
    for rep in reports:
        by = {r["factor"]: r["loss"] for r in rep["results"]}
        cells = " ".join(f"{by[f]:8.4f}" if f in by else f"{'-':>8}" for f in factors)
        lines.append(f"{Path(rep['run']).name[:28]:<28} {rep['architecture'][:14]:<14} {rep['seq_len']:>9} {cells}")
    return "\n".join(lines)


def write_report(reports: Sequence[dict[str, Any]], out_dir: str | Path) -> tuple[Path, Path | None]:
    """``length_extrapolation.json`` (every run) and, with matplotlib, ``length_extrapolation.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "length_extrapolation.json"
    json_path.write_text(json.dumps({"runs": list(reports), "table": comparison_table(reports)}, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return json_path, None
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for rep in reports:
        ax.plot([r["factor"] for r in rep["results"]], [r["loss"] for r in rep["results"]], marker="o",
                label=f"{Path(rep['run']).name} ({rep['architecture']})")
    ax.set_xlabel("evaluation context / training context")
    ax.set_ylabel("validation loss")
    ax.set_title("Length extrapolation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = out / "length_extrapolation.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return json_path, png
