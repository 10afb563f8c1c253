"""examples/workflows.py: every ArchScale workflow recipe resolves to ArchScale's numbers (REFERENCE §1, §4 and
the original README), and every tiny twin trains a few steps on the embedded corpus."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from archscale.cli import main
from archscale.recipe import resolve
from archscale.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
FILE = ROOT / "examples" / "workflows.py"
_spec = importlib.util.spec_from_file_location("archscale_example_workflows", FILE)
assert _spec is not None and _spec.loader is not None
workflows = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(workflows)

FULL = ["sambay_flops_scaling", "tfpp_data_scaling", "tfpp_lr_sweep_d8", "tfpp_long_context_32k", "phi4_mini_flash"]


@pytest.mark.parametrize("name", FULL + [f"{n}_tiny" for n in FULL])
def test_cli_resolves(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["resolve", f"{FILE}:{name}", "--json"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["values"]["steps"]["value"] > 0


def test_sambay_flops_scaling_transfers_from_d16() -> None:
    recipe = workflows.sambay_flops_scaling()
    assert recipe.model.name == "sambay" and recipe.parametrization.name == "mup++"
    d16 = resolve(recipe)
    d8 = resolve(recipe.model_copy(update={"model": recipe.model.model_copy(update={"params": {"depth": 8}})}))
    assert d16["tokens"] == pytest.approx(1e11, rel=1e-4)  # t0 at the base depth
    # T ∝ N (non-embedding): the d8 budget is t0 times the ratio of the two counts.
    assert d8["tokens"] == pytest.approx(1e11 * d8["N_non_embedding"] / d16["N_non_embedding"], rel=1e-4)
    assert d8["lr_matrix"] == pytest.approx(4e-4 * 2**1.5) and d8["lr_vector"] == pytest.approx(4e-4 * 2**0.5)


def test_data_scaling_takes_the_budget_and_ties() -> None:
    recipe = workflows.tfpp_data_scaling()
    assert recipe.model.params["tie_embeddings"] is True
    for tokens in (1e11, 6e11):
        r = resolve(recipe.model_copy(update={"budget": recipe.budget.model_copy(update={"tokens": int(tokens)})}))
        assert r["tokens"] == pytest.approx(tokens, rel=1e-4)
        assert r["lr_matrix"] == pytest.approx(4e-4) and r["global_batch_tokens"] == 2**21


def test_lr_sweep_at_d8_matches_reference_worked_values() -> None:
    r = resolve(workflows.tfpp_lr_sweep_d8())
    assert r["tokens"] == pytest.approx(12.5e9, rel=1e-3)  # REFERENCE §4: d8 trains 12.5B tokens
    assert r["lr_vector"] == pytest.approx(5.657e-4, rel=1e-3) and r["lr_matrix"] == pytest.approx(1.131e-3, rel=1e-3)


def test_long_context_recipe() -> None:
    recipe = workflows.tfpp_long_context_32k()
    assert recipe.data.varlen and recipe.data.seq_len == 32768
    assert recipe.model.params["rope_base"] == 640_000 and recipe.model.params["block_size"] == 32768
    r = resolve(recipe)
    assert r["tokens"] == pytest.approx(4e10, rel=1e-4) and r["micro_batch_size"] == 1


def test_phi4_mini_flash_recipe() -> None:
    r = resolve(workflows.phi4_mini_flash(), world_size=1024)
    assert r["N_all"] == pytest.approx(3.853e9, rel=1e-3)  # docs/architectures.md: 3.853B in all
    assert r["global_batch_tokens"] == 8_388_608 and r["grad_accum_steps"] == 1
    assert r["warmup_steps"] == 3000 and r["lr_matrix"] == pytest.approx(5e-4)
    assert r["tokens"] == pytest.approx(5e12, rel=1e-4) and r["seq_len"] == 8192


@pytest.fixture
def corpus_env(corpus_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The session's default-corpus cache, pointed at by ARCHSCALE_CACHE for one test (the Trainer reads it)."""
    monkeypatch.setenv("ARCHSCALE_CACHE", str(corpus_cache))
    return corpus_cache


@pytest.mark.parametrize("name", FULL)
def test_tiny_twin_trains(name: str, corpus_env: Path, tmp_path: Path) -> None:
    full, tiny = getattr(workflows, name)(), getattr(workflows, f"{name}_tiny")()
    # The twin keeps the choices that define the workflow.
    assert tiny.model.name == full.model.name and tiny.parametrization.name == full.parametrization.name
    assert tiny.data.varlen == full.data.varlen and (tiny.scaling.law is None) == (full.scaling.law is None)
    for key in ("tie_embeddings", "rope_base"):
        assert tiny.model.params.get(key) == full.model.params.get(key) or full.model.name == "phi4miniflash"
    out = tmp_path / "run"
    recipe = tiny.model_copy(update={"system": tiny.system.model_copy(update={"out_dir": str(out)})})
    Trainer(recipe).fit()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(losses) == recipe.budget.steps and all(math.isfinite(x) for x in losses)
    assert vals[-1] < vals[0]  # a few steps already beat the uniform guess ln(8192)
