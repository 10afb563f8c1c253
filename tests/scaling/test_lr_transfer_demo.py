"""The CPU demonstration of docs/scaling.md: under μP++ the best learning rate stays within one grid step as a tiny
Transformer++ widens 8×, while under SP it drifts to smaller values (examples/scaling/lr_transfer_demo.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "examples" / "scaling" / "lr_transfer_demo.py"


def load_demo():  # noqa: ANN201
    spec = importlib.util.spec_from_file_location("lr_transfer_demo", DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_mupp_keeps_the_best_lr_across_widths_while_sp_drifts(tmp_path: Path) -> None:
    demo = load_demo()
    results = demo.run()
    sp, mupp = results["sp"], results["mup++"]
    assert mupp.shift() <= 1, (mupp.best_lrs(), mupp.losses)
    assert sp.shift() >= 2, (sp.best_lrs(), sp.losses)
    idx = sp.best_lr_index()
    assert idx[-1] < idx[0]  # SP: the widest model wants a smaller LR than the narrowest
    assert all(row.min() < 2.6 for row in mupp.losses)  # every width learned more than byte frequencies
    path = demo.plot(results, tmp_path / "lr_transfer.png")
    assert path.stat().st_size > 20_000


def test_parallel_sweeps_match_serial() -> None:
    """The demo runs SP and μP++ in two processes; every loss must equal the in-process run's."""
    demo = load_demo()
    kwargs = {"widths": [32, 64], "lrs": [2.0**-8, 2.0**-6], "steps": 4}
    parallel, serial = demo.run(**kwargs, workers=2), demo.run(**kwargs, workers=1)
    for p in ("sp", "mup++"):
        assert parallel[p].losses.shape == (2, 2) and (parallel[p].losses == serial[p].losses).all(), p
