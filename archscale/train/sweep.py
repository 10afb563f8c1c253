"""Run a sweep's runs one after another with the Trainer (the expansion and the results table are in
:mod:`archscale.scaling.sweep`).

A run whose loss or gradient becomes non-finite (expected at the high end of a learning-rate sweep) is recorded
as ``diverged`` and the sweep goes on; any other error stops the sweep. Runs resume from their own run
directories (``system.resume="auto"``), so a sweep started again continues where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from archscale.scaling.sweep import SweepRun, collect_results
from archscale.train.trainer import NonFiniteError, Trainer

__all__ = ["run_sweep"]


def run_sweep(
    runs: Sequence[SweepRun], *, on_start: Callable[[int, SweepRun], None] | None = None
) -> list[dict[str, Any]]:
    """Train every run in order; return :func:`~archscale.scaling.sweep.collect_results` rows (status
    ``done`` or ``diverged``; a diverged run's losses are NaN)."""
    status: dict[str, str] = {}
    for i, run in enumerate(runs):
        if on_start is not None:
            on_start(i, run)
        try:
            Trainer(run.recipe).fit()
            status[run.name] = "done"
        except NonFiniteError:
            status[run.name] = "diverged"
    return collect_results(runs, status)
