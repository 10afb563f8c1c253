"""TensorBoard and Weights & Biases logging through the Trainer.

Neither package is a dependency (they are large and W&B needs an account), so these tests install small stand-ins
for the two APIs the Trainer calls — ``torch.utils.tensorboard.SummaryWriter(log_dir).add_scalar(tag, value,
step) / close()`` and ``wandb.init(name, dir, config, resume) -> run; run.log(dict, step); run.finish()`` — and check
that every scalar of metrics.jsonl reaches them at its step, and that a missing package is reported by name before
training starts."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from archscale.train.metrics import read_metrics
from archscale.train.trainer import Trainer

from tiny_run import tiny_recipe  # type: ignore[import-not-found]


class FakeSummaryWriter:
    instances: list[FakeSummaryWriter] = []

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.scalars: list[tuple[str, float, int]] = []
        self.closed = False
        FakeSummaryWriter.instances.append(self)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def close(self) -> None:
        self.closed = True


class FakeWandbRun:
    def __init__(self, **kwargs: Any) -> None:
        self.init_kwargs = kwargs
        self.logged: list[tuple[dict[str, float], int]] = []
        self.finished = False

    def log(self, data: dict[str, float], step: int) -> None:
        self.logged.append((dict(data), step))

    def finish(self) -> None:
        self.finished = True


@pytest.fixture()
def fake_backends(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    FakeSummaryWriter.instances = []
    tb = types.ModuleType("torch.utils.tensorboard")
    tb.SummaryWriter = FakeSummaryWriter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", tb)
    runs: list[FakeWandbRun] = []
    wandb = types.ModuleType("wandb")

    def init(**kwargs: Any) -> FakeWandbRun:
        runs.append(FakeWandbRun(**kwargs))
        return runs[-1]

    wandb.init = init  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    return {"wandb_runs": runs}


def test_every_logged_scalar_reaches_tensorboard_and_wandb(
    pattern_data: Path, tmp_path: Path, fake_backends: dict[str, Any]
) -> None:
    out = tmp_path / "run"
    recipe = tiny_recipe(pattern_data, out, loggers=["tensorboard", "wandb"])
    Trainer(recipe).fit()

    expected = []  # (tag, value, step) for every numeric field of every metrics.jsonl record
    for record in read_metrics(out):
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                expected.append((key, value, record["step"]))
    assert any(tag == "loss" for tag, _, _ in expected) and any(tag == "val_loss" for tag, _, _ in expected)

    (writer,) = FakeSummaryWriter.instances
    assert Path(writer.log_dir) == out / "tensorboard"
    assert sorted(writer.scalars, key=repr) == sorted(expected, key=repr)
    assert writer.closed

    (run,) = fake_backends["wandb_runs"]
    assert run.init_kwargs["name"] == recipe.name and Path(run.init_kwargs["dir"]) == out
    assert run.init_kwargs["config"]["recipe"]["name"] == recipe.name  # the resolved recipe is the run's config
    flat = [(k, v, step) for data, step in run.logged for k, v in data.items()]
    assert sorted(flat, key=repr) == sorted(expected, key=repr)
    assert run.finished


@pytest.mark.parametrize("name, module", [("tensorboard", "torch.utils.tensorboard"), ("wandb", "wandb")])
def test_missing_logger_package_is_named_before_training(
    pattern_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, module: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    out = tmp_path / "run"
    with pytest.raises(ImportError, match=f"system.loggers has '{name}'.*pip install"):
        Trainer(tiny_recipe(pattern_data, out, loggers=[name])).fit()
    assert not (out / "metrics.jsonl").exists()  # nothing trained
