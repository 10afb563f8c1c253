"""Sweeps: one recipe expanded over depths, learning rates, token budgets (or any recipe fields) into runs.

:func:`expand_sweep` turns a recipe and axes into :class:`SweepRun` s (each a recipe with ``--set``-style
overrides, its own name and run directory); :func:`launch_commands` prints them as ``archscale train`` commands for
a cluster; :func:`archscale.train.sweep.run_sweep` runs them one after another with the Trainer;
:func:`collect_results` reads every run directory back (final train and validation loss, N, tokens, FLOPs, LRs)
into rows for :func:`results_table`, :func:`write_csv` and :func:`plot_sweep`. The CSV is the input of
``archscale fit``.

Axis shortcuts (what they set depends on the recipe): ``depths`` → ``model.params.depth``; ``lrs`` →
``scaling.base.lr`` under a scaling law, else ``optimizer.lr``; ``tokens`` → ``scaling.base.tokens`` (t0) under a
scaling law, else ``budget.tokens``. :func:`depth_table` resolves a recipe at several depths into one table
(``archscale resolve RECIPE --depths 8,12,16``).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archscale.plotting import pyplot, save_figure
from archscale.recipe import Recipe, RecipeError, ResolvedRecipe, _fmt, apply_overrides, resolve

__all__ = [
    "SweepRun",
    "sweep_axes",
    "expand_sweep",
    "launch_commands",
    "collect_results",
    "results_table",
    "write_csv",
    "plot_sweep",
    "depth_table",
    "DEPTH_TABLE_KEYS",
]

_LABELS = {"model.params.depth": "d", "optimizer.lr": "lr", "scaling.base.lr": "lr", "budget.tokens": "tokens",
           "scaling.base.tokens": "tokens"}


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its name, the overrides that make it from the base recipe, and the result recipe."""

    name: str
    overrides: tuple[str, ...]
    values: dict[str, Any]  # axis label -> value
    recipe: Recipe = field(repr=False)

    @property
    def run_dir(self) -> Path:
        assert self.recipe.system.out_dir is not None
        return Path(self.recipe.system.out_dir)


def sweep_axes(
    recipe: Recipe,
    *,
    depths: Sequence[int] | None = None,
    lrs: Sequence[float] | None = None,
    tokens: Sequence[float] | None = None,
) -> dict[str, list[Any]]:
    """The recipe fields the shortcut axes set (see the module docstring)."""
    law = recipe.scaling.law is not None
    # A law with tokens="budget" takes the training length from the budget section, not from base.tokens.
    law_sets_tokens = False
    if recipe.scaling.law is not None:
        from archscale.registry import scaling_laws

        config = scaling_laws.config_model(recipe.scaling.law.name).model_validate(recipe.scaling.law.params)
        law_sets_tokens = getattr(config, "tokens", None) != "budget"
    axes: dict[str, list[Any]] = {}
    if depths:
        axes["model.params.depth"] = [int(d) for d in depths]
    if lrs:
        axes["scaling.base.lr" if law else "optimizer.lr"] = [float(x) for x in lrs]
    if tokens:
        if law_sets_tokens:
            axes["scaling.base.tokens"] = [float(t) for t in tokens]
        else:
            axes["budget.tokens"] = [int(t) for t in tokens]
    return axes


def _label(path: str) -> str:
    return _LABELS.get(path, path.rsplit(".", 1)[-1])


def _value_text(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def expand_sweep(
    recipe: Recipe,
    axes: Mapping[str, Sequence[Any]],
    *,
    out_dir: str | Path = "runs/sweep",
) -> list[SweepRun]:
    """The cartesian product of ``axes`` (recipe path -> values; a key ``"a,b"`` takes tuples and sets both
    paths together, e.g. ``{"model.params.n_embd,model.params.n_head": [(64, 4), (128, 8)]}``) as runs named
    ``<recipe>-<label><value>-...`` with run directories under ``out_dir``. Every run recipe is validated (and
    resolved, so that an impossible combination fails before anything runs)."""
    if not axes:
        raise RecipeError("a sweep needs at least one axis (e.g. depths, lrs, tokens)")
    keys = list(axes)
    runs: list[SweepRun] = []
    for combo in itertools.product(*(list(axes[k]) for k in keys)):
        overrides: list[str] = []
        values: dict[str, Any] = {}
        parts = [recipe.name]
        for key, value in zip(keys, combo):
            paths = key.split(",")
            vals = value if len(paths) > 1 else (value,)
            if len(vals) != len(paths):
                raise RecipeError(f"sweep axis {key!r}: value {value!r} does not give one value per path")
            for path, v in zip(paths, vals):
                overrides += _set(recipe, path.strip(), v)
                values[_label(path.strip())] = v
            parts.append("".join(f"{_label(p.strip())}{_value_text(v)}" for p, v in zip(paths, vals)))
        name = "-".join(parts)
        overrides += [f"name={name}", f"system.out_dir={Path(out_dir) / name}"]
        run_recipe = apply_overrides(recipe, overrides)
        resolve(run_recipe)  # fail now, not after hours of earlier runs
        runs.append(SweepRun(name=name, overrides=tuple(overrides), values=values, recipe=run_recipe))
    return runs


def _set(recipe: Recipe, path: str, value: Any) -> list[str]:
    """Overrides that set ``path`` to ``value`` (a budget length also clears the other two lengths)."""
    text = json.dumps(value) if not isinstance(value, str) else value
    out = [f"{path}={text}"]
    if path.startswith("budget.") and path.split(".")[-1] in ("tokens", "steps", "tokens_per_param"):
        out = [f"budget.{n}=null" for n in ("tokens", "steps", "tokens_per_param") if f"budget.{n}" != path] + out
    return out


def launch_commands(runs: Sequence[SweepRun], recipe_ref: str, base_overrides: Sequence[str] = ()) -> list[str]:
    """``archscale train`` command lines reproducing each run (for a cluster scheduler)."""
    lines = []
    for run in runs:
        args = ["archscale", "train", recipe_ref]
        for item in [*base_overrides, *run.overrides]:
            args += ["--set", item]
        lines.append(shlex.join(args))
    return lines


# --------------------------------------------------------------------------------------------- results
def _read_metrics(run_dir: Path) -> tuple[float | None, float | None, int | None]:
    """(final train loss, final validation loss, last step) from a run directory's metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None, None, None
    loss = val = step = None
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in rec:
            loss = float(rec["loss"])
        if "val_loss" in rec:
            val = float(rec["val_loss"])
        if "step" in rec:
            step = int(rec["step"])
    return loss, val, step


def collect_results(runs: Sequence[SweepRun], status: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per run: axis values, N (non-embedding and all), tokens, training FLOPs, peak matrix/vector LR,
    final train and validation loss and a status (done / incomplete / missing / what ``status`` says, e.g.
    diverged). Losses are NaN where absent."""
    rows = []
    for run in runs:
        r = resolve(run.recipe)
        loss, val, step = _read_metrics(run.run_dir)
        state = (status or {}).get(run.name)
        if state is None:
            state = "missing" if step is None else ("done" if step >= int(r["steps"]) else f"incomplete ({step})")
        if state == "diverged":
            loss = val = None
        rows.append({
            "run": run.name,
            **run.values,
            "N_non_embedding": int(r["N_non_embedding"]),
            "N_all": int(r["N_all"]),
            "tokens": int(r["tokens"]),
            "train_flops": float(r["train_flops"]),
            "lr_matrix": float(r["lr_matrix"]),
            "lr_vector": float(r["lr_vector"]),
            "final_loss": math.nan if loss is None else loss,
            "final_val_loss": math.nan if val is None else val,
            "status": state,
        })
    return rows


def results_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Aligned text table of :func:`collect_results` rows."""
    if not rows:
        return "(no runs)"
    cols = list(rows[0])
    cells = [[_cell(row.get(c)) for c in cols] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cols, widths)))]
    for r in cells:
        lines.append("  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return "" if v is None else str(v)


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write the rows as CSV (the columns of the first row)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["run"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_sweep(rows: Sequence[Mapping[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Final validation loss (train loss where no validation) against the learning rate when the sweep has an LR
    axis (one line per other combination), else against training FLOPs. Needs matplotlib."""
    plt = pyplot()
    use = "final_val_loss" if any(not math.isnan(r["final_val_loss"]) for r in rows) else "final_loss"
    x_key = "lr" if any("lr" in r for r in rows) else "train_flops"
    skip = {x_key, "run", "N_non_embedding", "N_all", "tokens", "train_flops", "lr_matrix", "lr_vector",
            "final_loss", "final_val_loss", "status"}
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        label = ", ".join(f"{k}={_value_text(v)}" for k, v in r.items() if k not in skip) or "runs"
        groups.setdefault(label, []).append(r)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for label, items in groups.items():
        items = sorted(items, key=lambda r: r[x_key])
        xs = [r[x_key] for r in items]
        ys = [r[use] if math.isfinite(r[use]) else math.nan for r in items]
        (line,) = ax.plot(xs, ys, marker="o", label=label)
        finite = [(x, y) for x, y in zip(xs, ys) if math.isfinite(y)]
        if x_key == "lr" and finite:
            bx, by = min(finite, key=lambda t: t[1])
            ax.plot([bx], [by], marker="*", markersize=14, color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("learning rate" if x_key == "lr" else "training FLOPs")
    ax.set_ylabel(use.replace("_", " "))
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------------- depth table
DEPTH_TABLE_KEYS = (
    "n_layer", "n_embd", "N_all", "N_non_embedding", "N_no_input_embedding", "tokens", "tokens_per_param", "steps",
    "global_batch_tokens", "grad_accum_steps", "warmup_steps", "train_flops", "lr", "lr_matrix", "lr_vector",
    "lr_embedding", "lr_head", "weight_decay", "wd_matrix", "wd_vector", "wd_embedding", "wd_head",
    "init_std_embedding", "init_std_matrix", "init_std_out_proj", "init_std_head", "logit_multiplier",
    "residual_multiplier", "attn_scale",
)


def resolve_depths(recipe: Recipe, depths: Sequence[int], world_size: int = 1) -> list[ResolvedRecipe]:
    """The recipe resolved at each depth (``model.params.depth`` overridden)."""
    return [resolve(apply_overrides(recipe, [f"model.params.depth={int(d)}"]), world_size=world_size) for d in depths]


def depth_table(recipe: Recipe, depths: Sequence[int], world_size: int = 1,
                keys: Sequence[str] = DEPTH_TABLE_KEYS) -> str:
    """One table: a row per derived quantity, a column per depth, and the rule (at the first depth)."""
    resolved = resolve_depths(recipe, depths, world_size)
    head = ["", *(f"d{d}" for d in depths), "rule"]
    rows = [head]
    for k in keys:
        if not any(k in r.values for r in resolved):
            continue
        rules = [r.values[k].rule for r in resolved if k in r.values]
        # Rules that differ by depth only in their numbers show the formula (the part before " = ").
        rule = rules[0] if len(set(rules)) == 1 else rules[0].split(" = ")[0]
        rows.append([k, *(_fmt(r.values[k].value) if k in r.values else "-" for r in resolved), rule])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
    return "\n".join(
        "  ".join([r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:-1], widths[1:])), r[-1]]) for r in rows
    )
