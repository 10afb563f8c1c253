"""``archscale sweep``, ``archscale fit`` and ``archscale coord-check``: thin verbs over :mod:`archscale.scaling`.

    archscale sweep RECIPE [--depths 8,12] [--lrs 1e-3,2e-3] [--tokens 1e9,2e9] [--grid KEY=V1,V2 ...]
                    [--out runs/sweep] [--emit | --collect] [--set KEY=VALUE ...]
    archscale fit FILE.csv [FILE.csv ...] [--law power|parametric] [--flops-col C] [--loss-col L]
                  [--n-col N] [--tokens-col D | --tokens-from-flops] [--drop-highest-loss K]
                  [--bootstrap K] [--target-loss L] [--plot out.png]
    archscale coord-check RECIPE --widths 32,64,128,256 [--steps 4] [--plot out.png] [--set ...]

The lead's ``archscale/cli.py`` calls :func:`add_subparser` (and ``archscale resolve --depths`` calls
:func:`archscale.scaling.sweep.depth_table`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_subparser"]


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``sweep``, ``fit`` and ``coord-check`` verbs (each sets ``func``)."""
    from archscale.cli import _add_recipe_args

    p = subparsers.add_parser(
        "sweep", help="expand a recipe over depths, learning rates or token budgets; run, emit or collect",
        description="Expand a recipe into runs over depths, learning rates (scaling.base.lr under a scaling law, "
                    "else optimizer.lr), token budgets (scaling.base.tokens under a law, else budget.tokens) or any "
                    "--grid field; run them one after another (default), print launch commands (--emit), or "
                    "collect finished run directories (--collect). Writes sweep.csv and sweep.png under --out.")
    _add_recipe_args(p)
    p.add_argument("--depths", type=_ints, default=None, help="e.g. 8,12,16")
    p.add_argument("--lrs", type=_floats, default=None, help="base learning rates, e.g. 1e-3,2e-3,4e-3")
    p.add_argument("--tokens", type=_floats, default=None, help="token budgets, e.g. 1e9,2e9")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="any recipe field over values, e.g. --grid model.params.n_embd=64,128 (repeatable)")
    p.add_argument("--out", default="runs/sweep", help="directory of the run directories and results")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--emit", action="store_true", help="print one `archscale train` command per run, run nothing")
    mode.add_argument("--collect", action="store_true", help="collect results of runs trained elsewhere")
    p.add_argument("--no-plot", action="store_true", help="do not write sweep.png")
    p.set_defaults(func=_sweep)

    f = subparsers.add_parser(
        "fit", help="fit scaling laws to CSV files and compare them",
        description="Fit L(C) = A·C^(-b) + C0 (--law power, one fit per file = family) or L(N, D) = E + A/N^alpha "
                    "+ B/D^beta (--law parametric; Huber on log-loss, L-BFGS from a grid) to CSV points, with "
                    "bootstrap intervals; compare families and plot. Column names default to those of "
                    "`archscale sweep` (train_flops, final_val_loss, N_non_embedding, tokens).")
    f.add_argument("files", nargs="+", metavar="FILE.csv", help="one CSV per family (power law) or points")
    f.add_argument("--law", choices=["power", "parametric"], default="power")
    f.add_argument("--label", action="append", default=[], help="family name per file (default: file stem)")
    f.add_argument("--flops-col", default=None, help="FLOPs column (default: train_flops, flops or C)")
    f.add_argument("--loss-col", default=None, help="loss column (default: final_val_loss, val_loss or loss)")
    f.add_argument("--n-col", default=None, help="parameter-count column (default: N_non_embedding, N or n_params)")
    f.add_argument("--tokens-col", default=None, help="token column (default: tokens, D or n_tokens)")
    f.add_argument("--tokens-from-flops", action="store_true", help="D = FLOPs / (6 N) instead of a token column")
    f.add_argument("--drop-highest-loss", type=int, default=0, metavar="K", help="leave out the K highest losses")
    f.add_argument("--bootstrap", type=int, default=0, metavar="K", help="bootstrap resamples for intervals")
    f.add_argument("--starts", default="64", help="parametric: grid starts for L-BFGS (a number or 'all')")
    f.add_argument("--target-loss", type=float, default=None, help="also report the compute to reach this loss")
    f.add_argument("--reference", default=None, help="family the compute ratios refer to (default: the first)")
    f.add_argument("--plot", default=None, help="write a plot here")
    f.add_argument("--json", action="store_true", help="print the fitted values as JSON")
    f.set_defaults(func=_fit)

    c = subparsers.add_parser(
        "coord-check", help="mean |activation| per layer type against width after a few steps",
        description="Coordinate check: train a few steps at several widths with the recipe's parametrization and "
                    "print the log-log slope of mean |activation| against width per layer type (≈0 under "
                    "μP/μP++, > 0 under SP). The recipe must set model.params.head_dim.")
    _add_recipe_args(c)
    c.add_argument("--widths", type=_ints, required=True, help="e.g. 32,64,128,256")
    c.add_argument("--steps", type=int, default=4)
    c.add_argument("--plot", default=None, help="write the plot here")
    c.set_defaults(func=_coord_check)


# --------------------------------------------------------------------------------------------- sweep
def _sweep(args: argparse.Namespace) -> int:
    from archscale.cli import CLIError, load_recipe
    from archscale.scaling.sweep import (
        collect_results,
        expand_sweep,
        launch_commands,
        plot_sweep,
        results_table,
        sweep_axes,
        write_csv,
    )

    recipe = load_recipe(args.recipe, args.set)
    axes: dict[str, Any] = sweep_axes(recipe, depths=args.depths, lrs=args.lrs, tokens=args.tokens)
    for item in args.grid:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise CLIError(f"--grid {item!r} is not of the form key.path=v1,v2")
        axes[key.strip()] = [json.loads(v) if _is_json(v) else v for v in values.split(",")]
    if not axes:
        raise CLIError("give at least one of --depths, --lrs, --tokens, --grid")
    runs = expand_sweep(recipe, axes, out_dir=args.out)
    if args.emit:
        print("\n".join(launch_commands(runs, args.recipe or "default", args.set)))
        return 0
    if args.collect:
        rows = collect_results(runs)
    else:
        from archscale.train.sweep import run_sweep

        def announce(i: int, run: Any) -> None:
            print(f"[{i + 1}/{len(runs)}] {run.name}", file=sys.stderr, flush=True)

        rows = run_sweep(runs, on_start=announce)
    out = Path(args.out)
    print(results_table(rows))
    print(f"results: {write_csv(rows, out / 'sweep.csv')}")
    if not args.no_plot:
        try:
            print(f"plot: {plot_sweep(rows, out / 'sweep.png', title=recipe.name)}")
        except ImportError as exc:
            print(f"(no plot: {exc})", file=sys.stderr)
    return 0


def _is_json(v: str) -> bool:
    try:
        json.loads(v)
        return True
    except json.JSONDecodeError:
        return False


# --------------------------------------------------------------------------------------------- fit
def _pick(header: list[str], given: str | None, candidates: tuple[str, ...], what: str, path: str) -> str:
    from archscale.cli import CLIError

    if given is not None:
        return given
    for c in candidates:
        if c in header:
            return c
    raise CLIError(f"{path}: no {what} column among {', '.join(candidates)}; columns: {', '.join(header)}. "
                   f"Name it with --{what}-col")


def _fit(args: argparse.Namespace) -> int:
    import csv

    import numpy as np

    from archscale.cli import CLIError
    from archscale.scaling.fit import (
        compare_power_laws,
        fit_parametric,
        fit_power_law,
        plot_parametric,
        plot_power_laws,
        read_csv_columns,
    )

    if args.label and len(args.label) != len(args.files):
        raise CLIError(f"give one --label per file ({len(args.files)} files, {len(args.label)} labels)")
    data: dict[str, dict[str, np.ndarray]] = {}
    for i, path in enumerate(args.files):
        if not Path(path).is_file():
            raise CLIError(f"no such file: {path}")
        with open(path, newline="") as fh:
            header = next(csv.reader(fh), [])
        label = args.label[i] if args.label else Path(path).stem
        loss = _pick(header, args.loss_col, ("final_val_loss", "val_loss", "loss"), "loss", path)
        if args.law == "power":
            flops = _pick(header, args.flops_col, ("train_flops", "flops", "C"), "flops", path)
            cols = read_csv_columns(path, [flops, loss])
            values = {"flops": cols[flops], "loss": cols[loss]}
        else:
            n = _pick(header, args.n_col, ("N_non_embedding", "N", "n_params"), "n", path)
            if args.tokens_from_flops:
                flops = _pick(header, args.flops_col, ("train_flops", "flops", "C"), "flops", path)
                cols = read_csv_columns(path, [n, flops, loss])
                tokens = cols[flops] / (6 * cols[n])
            else:
                tok = _pick(header, args.tokens_col, ("tokens", "D", "n_tokens"), "tokens", path)
                cols = read_csv_columns(path, [n, tok, loss])
                tokens = cols[tok]
            values = {"n": cols[n], "tokens": tokens, "loss": cols[loss]}
        if args.drop_highest_loss:
            keep = np.argsort(values["loss"], kind="stable")[: len(values["loss"]) - args.drop_highest_loss]
            values = {k: v[keep] for k, v in values.items()}
        data[label] = values

    try:
        if args.law == "power":
            fits = {k: fit_power_law(v["flops"], v["loss"], bootstrap=args.bootstrap, label=k) for k, v in data.items()}
            for f in fits.values():
                print(f)
            print()
            print(compare_power_laws(fits, target_loss=args.target_loss, reference=args.reference))
            if args.json:
                print(json.dumps({k: {**f.params, "ci": f.ci} for k, f in fits.items()}, indent=1))
            if args.plot:
                pts = {k: (v["flops"], v["loss"]) for k, v in data.items()}
                print(f"plot: {plot_power_laws(fits, args.plot, points=pts, target_loss=args.target_loss)}")
        else:
            starts: int | str = args.starts if args.starts == "all" else int(args.starts)
            for k, v in data.items():
                fit = fit_parametric(v["n"], v["tokens"], v["loss"], bootstrap=args.bootstrap, starts=starts, label=k)
                print(fit)
                if args.json:
                    print(json.dumps({**fit.params, "ci": fit.ci}, indent=1))
                if args.plot:
                    path = args.plot if len(data) == 1 else str(Path(args.plot).with_stem(f"{Path(args.plot).stem}_{k}"))
                    print(f"plot: {plot_parametric(fit, path, n_params=v['n'], n_tokens=v['tokens'], loss=v['loss'])}")
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    return 0


# --------------------------------------------------------------------------------------------- coord check
def _coord_check(args: argparse.Namespace) -> int:
    from archscale.cli import CLIError, load_recipe
    from archscale.scaling.coord_check import coord_check

    recipe = load_recipe(args.recipe, args.set)
    try:
        result = coord_check(recipe, args.widths, steps=args.steps)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    print(f"parametrization {recipe.parametrization.name}; mean |activation| after {args.steps} steps")
    print("width      " + "  ".join(f"{k:>10}" for k in result.stats))
    for i, w in enumerate(result.widths):
        print(f"{w:<10} " + "  ".join(f"{result.stats[k][i, -1]:>10.4g}" for k in result.stats))
    slopes = result.slopes()
    print("slope      " + "  ".join(f"{slopes.get(k, math.nan):>10.3f}" for k in result.stats))
    if args.plot:
        print(f"plot: {result.plot(args.plot)}")
    return 0
