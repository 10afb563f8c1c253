"""The scaling verbs: `resolve --depths`, `sweep` (run, --emit, --collect), `fit` on CSV files, `coord-check`."""

from __future__ import annotations

import csv
import json
import math
import shlex
import textwrap
from pathlib import Path

import numpy as np
import pytest

from archscale.cli import main
from archscale.scaling.sweep import expand_sweep, sweep_axes
from test_fit import CHINCHILLA, V1_CURVES  # type: ignore[import-not-found]


@pytest.mark.parametrize("verb", ["sweep", "fit", "coord-check"])
def test_help(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([verb, "--help"])
    assert exc.value.code == 0 and "usage: archscale " + verb in capsys.readouterr().out


def test_resolve_depths_prints_one_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["resolve", "archscale_v1", "--depths", "8,12,16,20,24"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[1].split()
    assert header == ["d8", "d12", "d16", "d20", "d24", "rule"]
    rows = {line.split()[0]: line for line in lines[2:]}
    for key in ("N_all", "N_non_embedding", "N_no_input_embedding", "tokens", "steps", "global_batch_tokens",
                "lr_matrix", "lr_vector", "lr_embedding", "lr_head", "wd_matrix", "wd_vector", "init_std_embedding",
                "init_std_matrix", "logit_multiplier", "residual_multiplier", "attn_scale"):
        assert key in rows, key
    assert rows["tokens"].split()[1] == "12,501,123,072"
    assert rows["lr_vector"].split()[1:4] == ["0.0005657", "0.0004619", "0.0004"]
    assert rows["lr_matrix"].split()[1] == "0.001131" and "√(d0/d) · n0/n" in rows["lr_matrix"]
    assert main(["resolve", "archscale_v1", "--depths", "8,16", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["values"]["n_layer"]["value"] for d in data] == [8, 16]


RECIPE_FILE = """
from archscale.recipe import Recipe

def tiny():
    return Recipe(
        name="sw",
        model={{"name": "transformer", "params": {{"depth": 1, "n_embd": 32, "n_head": 2, "head_dim": 16,
                                                 "n_kv_head": 1, "vocab_size": 64, "block_size": 32}}}},
        data={{"seq_len": 32, "sources": {{{data!r}: 1.0}}, "eos_id": 0, "val_fraction": 0.1}},
        parametrization="mup++",
        optimizer={{"lr": 1e-2}},
        schedule={{"name": "linear", "warmup_steps": 1}},
        budget={{"steps": 3, "global_batch_tokens": 128, "micro_batch_size": 4}},
        scaling={{"base": {{"depth": 1, "width": 32, "head_dim": 16}}}},
        system={{"device": "cpu", "val_every": 3, "val_batches": 1, "checkpoint_every": 3, "progress": False}},
    )
"""


def test_sweep_runs_collects_emits_and_fits(counting_data: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "exp.py"
    f.write_text(textwrap.dedent(RECIPE_FILE.format(data=str(counting_data))))
    out = tmp_path / "sweep"
    args = ["sweep", f"{f}:tiny", "--depths", "1,2", "--lrs", "1e-2,1e30", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [r["run"] for r in rows] == ["sw-d1-lr0.01", "sw-d1-lr1e+30", "sw-d2-lr0.01", "sw-d2-lr1e+30"]
    status = {r["run"]: r["status"] for r in rows}
    assert status["sw-d1-lr0.01"] == "done" and status["sw-d2-lr1e+30"] == "diverged"
    good = [r for r in rows if r["status"] == "done"]
    assert all(math.isfinite(float(r["final_val_loss"])) for r in good)
    assert float(rows[2]["N_non_embedding"]) > float(rows[0]["N_non_embedding"])
    assert (out / "sweep.png").stat().st_size > 5000 and "sw-d2-lr0.01" in text
    assert (out / "sw-d2-lr0.01" / "recipe.resolved.json").is_file()

    # Collecting the same run directories gives the same losses (diverged runs keep nothing: NaN).
    assert main([*args, "--collect", "--no-plot"]) == 0
    collected = list(csv.DictReader((out / "sweep.csv").open()))
    assert [r["final_val_loss"] for r in collected if r["status"] == "done"] == [r["final_val_loss"] for r in good]

    # --emit prints commands that rebuild exactly the same run recipes.
    capsys.readouterr()
    assert main([*args, "--emit"]) == 0
    commands = capsys.readouterr().out.strip().splitlines()
    assert len(commands) == 4 and all(c.startswith("archscale train ") for c in commands)
    argv = shlex.split(commands[2])[1:]
    assert main(["resolve", *argv[1:], "--json"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["recipe"]["name"] == "sw-d2-lr0.01" and resolved["values"]["n_layer"]["value"] == 2


def test_sweep_axes_follow_the_recipe() -> None:
    from archscale.recipes import archscale_v1, default

    assert set(sweep_axes(default(), lrs=[1e-3], tokens=[1e6])) == {"optimizer.lr", "budget.tokens"}
    assert set(sweep_axes(archscale_v1(), lrs=[1e-3], tokens=[1e9])) == {"scaling.base.lr", "scaling.base.tokens"}
    # A law that takes its length from the budget section: the token axis must set the budget, not base.tokens.
    from_budget = archscale_v1().model_copy(deep=True)
    from_budget.scaling.law.params["tokens"] = "budget"
    assert sweep_axes(from_budget, tokens=[1e6]) == {"budget.tokens": [1000000]}
    runs = expand_sweep(default(), sweep_axes(default(), tokens=[1e6, 2e6]), out_dir="x")
    assert [r.recipe.budget.tokens for r in runs] == [1_000_000, 2_000_000]
    assert all(r.recipe.budget.steps is None for r in runs)
    zipped = expand_sweep(default(), {"model.params.n_embd,model.params.n_head": [(64, 2), (256, 8)]}, out_dir="x")
    assert [r.name for r in zipped] == ["default-n_embd64n_head2", "default-n_embd256n_head8"]
    assert zipped[1].recipe.model.params["n_head"] == 8 and zipped[1].run_dir == Path("x/default-n_embd256n_head8")


def test_sweep_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "default"]) == 2
    assert "give at least one of --depths" in capsys.readouterr().err
    assert main(["sweep", "default", "--grid", "model.params.depht=2,3", "--emit"]) == 2
    assert "did you mean depth" in capsys.readouterr().err


def test_fit_cli_power_law_families(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = []
    flops = np.logspace(18.9, 21.9, 6)
    for name in ("Transformer++ μP++", "SambaY μP++"):
        A, b, C0 = V1_CURVES[name]
        path = tmp_path / f"{name.split()[0]}.csv"
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["run", "train_flops", "final_val_loss"])
            for i, c in enumerate(flops):
                w.writerow([f"r{i}", c, A * c**-b + C0])
        files.append(str(path))
    plot = tmp_path / "fit.png"
    assert main(["fit", *files, "--target-loss", "2.0", "--plot", str(plot), "--json"]) == 0
    out = capsys.readouterr().out
    assert "Transformer++: A = 49.64, b = 0.0745, C0 = 0.64" in out
    assert "SambaY: A = 39.79, b = 0.069, C0 = 0.58" in out
    assert "C for L=2" in out and plot.stat().st_size > 10_000


def test_fit_cli_parametric_on_chinchilla(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", str(CHINCHILLA), "--law", "parametric", "--n-col", "Model Size", "--flops-col",
                 "Training FLOP", "--tokens-from-flops", "--drop-highest-loss", "5", "--starts", "16", "--json"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out[out.index("{"):])
    assert data["E"] == pytest.approx(1.82, abs=0.02) and data["alpha"] == pytest.approx(0.348, abs=0.01)


def test_fit_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", str(tmp_path / "none.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["fit", str(CHINCHILLA)]) == 2
    assert "no flops column among train_flops, flops, C" in capsys.readouterr().err


def test_coord_check_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    args = ["coord-check", "default", "--widths", "32,64", "--steps", "1", "--set", "model.params.head_dim=16",
            "--set", "model.params.vocab_size=128", "--set", "data.seq_len=16", "--set", "parametrization.name=mup++",
            "--set", "scaling.base.width=32", "--plot", str(tmp_path / "cc.png")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "slope" in out and "mixer" in out and (tmp_path / "cc.png").is_file()
