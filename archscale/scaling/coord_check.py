"""Coordinate checks and learning-rate transfer: does a parametrization make training behave the same at every
width?

**Coordinate check** (Yang et al. 2021, "Tensor Programs V", §6): train a few steps at several widths with the
same base hyperparameters and record the mean |activation| (the size of a typical coordinate) of each layer
type: embedding output, token-mixer output, MLP output, logits. Under μP / μP++ these stay flat in width; under
SP they grow (the update ΔW·x of a fan-in-n matrix trained by Adam at a fixed LR grows ∝ n). :func:`coord_check`
returns the measurements and their log-log slopes against width; :meth:`CoordCheckResult.plot` draws them.

**LR transfer** (:func:`lr_transfer`): train each width over a grid of base learning rates and record the final
loss. Under μP / μP++ the best learning rate stays put as the model widens; under SP it drifts to smaller values.

Both use the library's own path: the recipe is resolved (per-role LR and weight decay of the parametrization),
the model is built by :func:`~archscale.scaling.parametrization.build_model_for` (init and forward multipliers)
and the optimizer comes from the recipe's registry entry through the role router. The loop itself is a plain
CPU-friendly one (constant LR after the recipe's warmup is ignored; no Fabric), fed with a fixed synthetic or
user-given token stream, so a check of a handful of tiny widths takes seconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from archscale.recipe import Recipe, apply_overrides, resolve
from archscale.scaling.parametrization import build_model_for

__all__ = [
    "CoordCheckResult",
    "LRTransferResult",
    "coord_check",
    "lr_transfer",
    "width_overrides",
    "counting_tokens",
]

LAYER_TYPES = ("embedding", "mixer", "mlp", "logits")
ROLES = ("embedding", "head", "matrix", "vector")


def width_overrides(recipe: Recipe, width: int) -> list[str]:
    """Overrides that set the model's width to ``width`` keeping its head size (heads = width / head_dim) and the
    query/KV head ratio; an explicit MLP width is scaled with it. The architecture must take ``n_embd`` and, for
    attention, ``head_dim`` and ``n_head`` (as ``transformer`` does)."""
    params = recipe.model.params
    fields = type(recipe.model.config()).model_fields
    if "n_embd" not in fields:
        raise ValueError(f"architecture '{recipe.model.name}' has no n_embd parameter: give width_fn explicitly")
    out = [f"model.params.n_embd={width}"]
    old = recipe.model.entry()(recipe.model.config()).n_embd
    if "head_dim" in fields and "n_head" in fields:
        head_dim = params.get("head_dim")
        if head_dim is None:
            raise ValueError("set model.params.head_dim so that the head size stays fixed while the width changes")
        if width % head_dim:
            raise ValueError(f"width {width} is not a multiple of head_dim {head_dim}")
        n_head = width // head_dim
        out.append(f"model.params.n_head={n_head}")
        if params.get("n_kv_head") is not None and params.get("n_head") is not None:
            ratio = max(1, params["n_head"] // params["n_kv_head"])
            out.append(f"model.params.n_kv_head={max(1, n_head // ratio)}")
    if params.get("mlp_hidden") is not None:
        out.append(f"model.params.mlp_hidden={params['mlp_hidden'] * width // old}")
    return out


def counting_tokens(vocab_size: int, batch: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """(batch, seq_len + 1) tokens counting upward from random starts (mod vocab): structured, easy to learn."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, vocab_size, (batch, 1), generator=g)
    return (starts + torch.arange(seq_len + 1)) % vocab_size


def _train_setup(recipe: Recipe, seed: int) -> tuple[Any, Any, dict[str, Any]]:
    """Model (built by the parametrization) and optimizer with the resolved per-role peak LR and weight decay."""
    from archscale.optim.routing import build_param_groups

    resolved = resolve(recipe)
    torch.manual_seed(seed)
    model = build_model_for(recipe)
    groups = build_param_groups(
        model,
        model.param_roles(),
        lr={r: float(resolved[f"lr_{r}"]) for r in ROLES},
        weight_decay={r: float(resolved[f"wd_{r}"]) for r in ROLES},
    )
    optimizer = recipe.optimizer.entry()(groups, recipe.optimizer.config())
    return model, optimizer, resolved.values


def _scheduler(recipe: Recipe, optimizer: Any, steps: int) -> Any:
    from archscale.optim.schedules import lr_multiplier, make_lr_scheduler

    s = recipe.schedule
    warmup = s.warmup_steps if s.warmup_steps is not None else round((s.warmup_fraction or 0.0) * steps)
    return make_lr_scheduler(optimizer, lr_multiplier(s.name, s.params, total_steps=steps, warmup_steps=warmup))


def _step(model: Any, optimizer: Any, batch: torch.Tensor, clip: float | None) -> float:
    loss = model(batch[:, :-1], targets=batch[:, 1:]).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return float(loss.detach())


# --------------------------------------------------------------------------------------------- coordinate check
@dataclass
class CoordCheckResult:
    """``stats[layer_type]`` is (len(widths), steps + 1): mean |activation| at each width after 0, 1, … steps."""

    widths: list[int]
    stats: dict[str, np.ndarray]
    parametrization: str
    losses: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (len(widths), steps)

    def slope(self, layer_type: str, step: int = -1) -> float:
        """Least-squares slope of log mean|activation| against log width after ``step`` steps (0 ≈ flat)."""
        y = np.log(self.stats[layer_type][:, step])
        x = np.log(np.asarray(self.widths, dtype=float))
        return float(np.polyfit(x, y, 1)[0])

    def slopes(self, step: int = -1) -> dict[str, float]:
        return {k: self.slope(k, step) for k in self.stats if np.all(self.stats[k][:, step] > 0)}

    def plot(self, path: str | Path, *, title: str = "") -> Path:
        """One panel per layer type: mean |activation| against width, one line per training step."""
        from archscale.plotting import pyplot, save_figure

        plt = pyplot()
        kinds = list(self.stats)
        fig, axes = plt.subplots(1, len(kinds), figsize=(3.2 * len(kinds), 3.2), squeeze=False)
        n_steps = next(iter(self.stats.values())).shape[1]
        colors = plt.get_cmap("viridis")
        handles = {}
        for ax, kind in zip(axes[0], kinds):
            for t in range(n_steps):
                ys = self.stats[kind][:, t]
                if np.all(ys > 0):  # a zero-initialised readout gives exactly zero logits at step 0
                    (line,) = ax.plot(self.widths, ys, marker="o", color=colors(t / max(1, n_steps - 1) * 0.9))
                    handles[t] = line
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(kind)
            ax.set_xlabel("width")
        axes[0][0].set_ylabel("mean |activation|")
        fig.legend([handles[t] for t in sorted(handles)], [f"after {t} steps" for t in sorted(handles)],
                   loc="center right", fontsize=8)
        fig.suptitle(title or f"coordinate check: {self.parametrization}")
        fig.tight_layout(rect=(0, 0, 0.9, 1))  # room for the legend on the right
        return save_figure(fig, path, dpi=110, layout=False)


def coord_check(
    recipe: Recipe,
    widths: Sequence[int],
    *,
    steps: int = 4,
    batch_size: int = 8,
    seed: int = 0,
    tokens: torch.Tensor | None = None,
    width_fn: Callable[[Recipe, int], list[str]] = width_overrides,
) -> CoordCheckResult:
    """Train ``steps`` steps at each width (same seed, same batch) and measure mean |activation| per layer type
    after every step (see the module docstring). ``tokens``: a (B, T+1) batch to train on; default: counting
    sequences of the recipe's seq_len. The recipe's budget, schedule and scaling law are not used beyond the
    per-role LR and weight decay they resolve to."""
    widths = sorted(int(w) for w in widths)
    if len(widths) < 2:
        raise ValueError("a coordinate check needs at least two widths")
    stats = {k: np.zeros((len(widths), steps + 1)) for k in LAYER_TYPES}
    losses = np.zeros((len(widths), steps))
    for i, w in enumerate(widths):
        r = apply_overrides(recipe, width_fn(recipe, w))
        model, optimizer, _ = _train_setup(r, seed)
        vocab = model.spec.vocab_size
        batch = tokens if tokens is not None else counting_tokens(vocab, batch_size, r.data.seq_len, seed)
        for t in range(steps + 1):
            for k, v in _measure(model, batch).items():
                stats[k][i, t] = v
            if t < steps:
                losses[i, t] = _step(model, optimizer, batch, r.optimizer.grad_clip)
    return CoordCheckResult(widths=widths, stats=stats, parametrization=recipe.parametrization.name, losses=losses)


@torch.no_grad()
def _measure(model: Any, batch: torch.Tensor) -> dict[str, float]:
    """Mean |activation| of the embedding output, every mixer output, every MLP output (averaged over blocks) and
    the logits, on one forward pass."""
    acc: dict[str, list[float]] = {k: [] for k in LAYER_TYPES}

    def hook(kind: str) -> Callable[..., None]:
        def fn(module: Any, inputs: Any, output: Any) -> None:
            y = output[0] if isinstance(output, tuple) else output
            acc[kind].append(float(y.detach().float().abs().mean()))

        return fn

    handles = [model.embed.register_forward_hook(hook("embedding"))]
    for block in model.blocks:
        handles.append(block.mixer.register_forward_hook(hook("mixer")))
        handles.append(block.mlp.register_forward_hook(hook("mlp")))
    was_training = model.training
    model.eval()
    try:
        logits = model(batch[:, :-1]).logits
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    acc["logits"].append(float(logits.abs().mean()))
    return {k: float(np.mean(v)) for k, v in acc.items()}


# --------------------------------------------------------------------------------------------- LR transfer
@dataclass
class LRTransferResult:
    """``losses`` is (len(widths), len(lrs)): final training loss (mean of the last steps; inf if diverged)."""

    widths: list[int]
    lrs: list[float]
    losses: np.ndarray
    parametrization: str

    def best_lr_index(self) -> list[int]:
        """Grid index of the best learning rate at each width."""
        return [int(np.argmin(np.where(np.isfinite(row), row, np.inf))) for row in self.losses]

    def best_lrs(self) -> list[float]:
        return [self.lrs[i] for i in self.best_lr_index()]

    def shift(self) -> int:
        """How many grid steps the best LR moves across the widths (max − min index)."""
        idx = self.best_lr_index()
        return max(idx) - min(idx)

    def plot(self, path: str | Path, *, title: str = "", ax: Any = None) -> Path | None:
        """Final loss against learning rate, one line per width, the best LR starred."""
        from archscale.plotting import pyplot, save_figure

        plt = pyplot()
        own = ax is None
        if own:
            fig, ax = plt.subplots(figsize=(5.0, 3.8))
        for i, w in enumerate(self.widths):
            ys = np.where(np.isfinite(self.losses[i]), self.losses[i], np.nan)
            (line,) = ax.plot(self.lrs, ys, marker="o", label=f"width {w}")
            j = self.best_lr_index()[i]
            ax.plot([self.lrs[j]], [ys[j]], marker="*", markersize=14, color=line.get_color())
        ax.set_xscale("log", base=2)
        ax.set_xlabel("base learning rate")
        ax.set_ylabel("final training loss")
        ax.set_title(title or f"{self.parametrization}: best LR shifts {self.shift()} grid step(s)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        if not own:
            return None
        return save_figure(fig, path)


def lr_transfer(
    recipe: Recipe,
    widths: Sequence[int],
    lrs: Sequence[float],
    *,
    steps: int = 100,
    batch_size: int = 16,
    seed: int = 0,
    tokens: torch.Tensor | None = None,
    average_last: int = 10,
    schedule: bool = True,
    width_fn: Callable[[Recipe, int], list[str]] = width_overrides,
) -> LRTransferResult:
    """Train each width at each base learning rate (``optimizer.lr``, or ``scaling.base.lr`` under a scaling
    law) for ``steps`` steps on random windows of ``tokens`` (a 1-D token stream; default: counting sequences)
    and record the mean training loss of the last ``average_last`` steps (inf when it diverges).

    ``schedule``: follow the recipe's LR schedule over ``steps`` (warmup from ``schedule.warmup_steps`` or
    ``warmup_fraction``); otherwise a constant LR."""
    widths = sorted(int(w) for w in widths)
    lrs = sorted(float(x) for x in lrs)
    key = "scaling.base.lr" if recipe.scaling.law is not None else "optimizer.lr"
    losses = np.full((len(widths), len(lrs)), np.inf)
    for i, w in enumerate(widths):
        base = apply_overrides(recipe, width_fn(recipe, w))
        seq = base.data.seq_len
        for j, lr in enumerate(lrs):
            r = apply_overrides(base, [f"{key}={lr!r}"])
            model, optimizer, _ = _train_setup(r, seed)
            scheduler = _scheduler(r, optimizer, steps) if schedule else None
            g = torch.Generator().manual_seed(seed + 1)
            history = []
            for _ in range(steps):
                if tokens is None:
                    batch = counting_tokens(model.spec.vocab_size, batch_size, seq, int(torch.randint(1 << 30, (1,), generator=g)))
                else:
                    starts = torch.randint(0, len(tokens) - seq - 1, (batch_size,), generator=g)
                    batch = torch.stack([tokens[s : s + seq + 1] for s in starts.tolist()]).long()
                loss = _step(model, optimizer, batch, r.optimizer.grad_clip)
                if not math.isfinite(loss):
                    break
                history.append(loss)
                if scheduler is not None:
                    scheduler.step()
            if len(history) == steps:
                losses[i, j] = float(np.mean(history[-average_last:]))
    return LRTransferResult(widths=widths, lrs=lrs, losses=losses, parametrization=recipe.parametrization.name)
