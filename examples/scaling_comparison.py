"""A depth sweep of two families on CPU, power-law fits and a comparison plot (docs/scaling_curves.md).

    python examples/scaling_comparison.py [--out runs/compare] [--depths 2,4,6,8] [--steps 40]

The same work as ``archscale sweep`` (once per family) followed by ``archscale fit``, in Python, built from the
same library functions: :func:`~archscale.scaling.sweep.expand_sweep` and
:func:`~archscale.train.sweep.run_sweep` train every depth of each family on the embedded corpus,
:func:`~archscale.scaling.fit.fit_power_law` fits L(C) = A·C^(−b) + C0 to (training FLOPs, final validation
loss) per family, :func:`~archscale.scaling.fit.compare_power_laws` prints the table and
:func:`~archscale.scaling.fit.plot_power_laws` writes ``OUT/curves.png``.

The families are Transformer++ and Samba (Mamba-1 / sliding-window attention), both sized ArchScale's way from the
depth alone (width = 16 · depth, heads of 16) and trained under μP++ with the hyperparameters of the base depth,
for the same number of steps. At these sizes (tens of thousands of parameters, a few thousand tokens) the points
show the mechanics, not a scientific result: ArchScale's own curves come from 8-24 layers and 10^19-10^21 FLOPs
(``archscale resolve examples/workflows.py:sambay_flops_scaling --depths 8,12,16,20,24``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from archscale import Recipe
from archscale.scaling.fit import PowerLawFit, compare_power_laws, fit_power_law, plot_power_laws
from archscale.scaling.sweep import expand_sweep, results_table, write_csv
from archscale.train.sweep import run_sweep

DEPTHS = [2, 4, 6, 8]
STEPS = 40


def _tiny(name: str, arch: str, **extra: object) -> Recipe:
    return Recipe(
        name=name,
        model={"name": arch, "params": {"depth": 4, "aspect_ratio": 16, "head_dim": 16, "vocab_size": 8192,
                                        "block_size": 64, **extra}},
        data={"seq_len": 64},  # no sources: the embedded corpus
        parametrization="mup++",
        optimizer={"name": "adamw", "lr": 4e-3},
        schedule={"name": "linear", "warmup_fraction": 0.1},
        budget={"steps": STEPS, "global_batch_tokens": 512, "micro_batch_size": 8},
        scaling={"base": {"depth": 4, "head_dim": 16}},  # μP++ anchors: η is tuned at d4, width 64
        system={"device": "cpu", "log_every": 10, "val_every": 1000, "val_batches": 4, "progress": False},
    )


def tfpp_tiny() -> Recipe:
    """Transformer++ at width 16 · depth (d4: 4 heads of 16, one KV head), μP++ anchored at d4."""
    return _tiny("tfpp", "transformer")


def samba_tiny() -> Recipe:
    """Samba, (Mamba-1, SWA-16) × depth/2, at width 16 · depth, μP++ anchored at d4."""
    return _tiny("samba", "samba", window=16, recurrent_params={"d_state": 4})


FAMILIES = {"Transformer++": tfpp_tiny, "Samba": samba_tiny}


def compare(out: Path, depths: list[int] = DEPTHS, steps: int = STEPS) -> dict[str, PowerLawFit]:
    """Train every family at every depth under ``out/<family>``, fit, print the comparison, plot
    ``out/curves.png``; return the fits."""
    points: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    fits: dict[str, PowerLawFit] = {}
    for label, make in FAMILIES.items():
        recipe = make()
        recipe = recipe.model_copy(update={"budget": recipe.budget.model_copy(update={"steps": steps})})
        runs = expand_sweep(recipe, {"model.params.depth": depths}, out_dir=out / recipe.name)
        rows = run_sweep(runs, on_start=lambda i, run: print(f"[{i + 1}/{len(runs)}] {run.name}", file=sys.stderr))
        print(results_table(rows))
        write_csv(rows, out / recipe.name / "sweep.csv")
        flops = np.array([r["train_flops"] for r in rows])
        loss = np.array([r["final_val_loss"] for r in rows])
        points[label] = (flops, loss)
        fits[label] = fit_power_law(flops, loss, label=label)
    print()
    print(compare_power_laws(fits))
    print(f"plot: {plot_power_laws(fits, out / 'curves.png', points=points, title='tiny depth sweep on CPU')}")
    return fits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/compare"))
    parser.add_argument("--depths", type=lambda t: [int(x) for x in t.split(",")], default=DEPTHS)
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args(argv)
    compare(args.out, args.depths, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
