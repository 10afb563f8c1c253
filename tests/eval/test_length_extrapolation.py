"""Length extrapolation: validation loss at 1x..4x the training context of tiny runs, and the comparison report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from archscale.eval.validation import (
    comparison_table,
    length_extrapolation,
    write_report,
)


def test_losses_at_each_factor(tiny_run: Path, tiny_sambay_run: Path, tmp_path: Path) -> None:
    reports = [length_extrapolation(run, (1, 2, 4), tokens_per_factor=256, batch_size=2, device="cpu")
               for run in (tiny_run, tiny_sambay_run)]
    for rep in reports:
        assert rep["seq_len"] == 32
        assert [r["context"] for r in rep["results"]] == [32, 64, 128]
        assert all(math.isfinite(r["loss"]) and 0 < r["loss"] < 10 for r in rep["results"])
        assert all(r["tokens"] >= 256 for r in rep["results"])
    assert reports[1]["architecture"] == "sambay"
    table = comparison_table(reports)
    assert "1x" in table and "4x" in table and "sambay" in table
    assert f"{reports[0]['results'][2]['loss']:8.4f}" in table
    json_path, png = write_report(reports, tmp_path)
    assert json.loads(json_path.read_text())["runs"][1]["results"] == reports[1]["results"]
    assert png is not None


def test_loss_at_1x_matches_direct_computation(tiny_run: Path) -> None:
    """The 1x number is the mean cross-entropy of the run's validation windows, computed independently."""
    from archscale.data.pipeline import open_data
    from archscale.eval.loading import load_model_and_tokenizer
    from archscale.train.run_dir import read_resolved

    rep = length_extrapolation(tiny_run, (1,), tokens_per_factor=64, batch_size=2, device="cpu")
    recipe = read_resolved(tiny_run).recipe
    model, _ = load_model_and_tokenizer(tiny_run, device="cpu")
    batch = next(open_data(recipe.data, micro_batch_size=2, seed=0).val.batches(1))
    with torch.no_grad():
        logits = model(batch[:, :-1]).logits
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
    assert rep["results"][0]["loss"] == pytest.approx(float(expected), rel=1e-5)


