"""The Trainer end to end on CPU: run directory, loss falls, exact resume after a real kill, non-finite handling,
and recipes that fail before the first step."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from archscale.train.checkpoint import CheckpointError, latest_checkpoint, list_checkpoints
from archscale.train.metrics import read_metrics
from archscale.train.trainer import NonFiniteError, Trainer

from tiny_run import tiny_recipe  # type: ignore[import-not-found]

COMPARED = ("step", "tokens", "loss", "lr", "grad_norm", "val_loss")


def comparable(records: list[dict]) -> list[dict]:
    return [{k: r[k] for k in COMPARED if k in r} for r in records]


def test_trains_and_writes_the_run_directory(
    pattern_data: Path, tmp_path: Path, set_tf32: Callable[[bool], None]
) -> None:
    out = tmp_path / "run"
    set_tf32(False)
    result = Trainer(tiny_recipe(pattern_data, out)).fit()  # system.tf32 defaults to True
    assert torch.backends.cuda.matmul.allow_tf32 is False, "system.tf32 is for CUDA runs; a CPU run leaves it"
    assert result.steps == 12 and result.tokens == 12 * 256
    for name in ("recipe.resolved.json", "environment.json", "metrics.jsonl", "loss.png"):
        assert (out / name).is_file(), name
    env = json.loads((out / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and env["archscale"]
    records = read_metrics(out)
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 13))
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(vals) == 4  # step 0, 4, 8, 12
    assert vals[0] > math.log(64) - 0.5  # untrained ≈ uniform over the vocabulary
    assert vals[-1] < vals[0] - 1.0  # the counting pattern is being learned
    assert [s for s, _ in list_checkpoints(out)] == [8, 12]  # keep_checkpoints=2
    lrs = [r["lr"] for r in records if "lr" in r]
    assert lrs[0] == pytest.approx(1e-2 / 2) and lrs[1] == pytest.approx(1e-2)  # warmup (s+1)/2, then decay
    assert lrs[-1] == pytest.approx(1e-2 / 10)  # linear decay: last update at 1/(12-2) of peak


KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {tests_dir!r})
from pathlib import Path
from tiny_run import tiny_recipe
from archscale.train.trainer import Trainer
trainer = Trainer(tiny_recipe(Path({data!r}), Path({out!r})))
def hook(step):
    if step == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally blocks: as a real crash
trainer.after_step_hook = hook
trainer.fit()
"""


def test_resume_after_a_real_kill_matches_an_uninterrupted_run(pattern_data: Path, tmp_path: Path) -> None:
    reference = tmp_path / "uninterrupted"
    Trainer(tiny_recipe(pattern_data, reference)).fit()

    killed = tmp_path / "killed"
    script = KILL_SCRIPT.format(tests_dir=str(Path(__file__).parent), data=str(pattern_data), out=str(killed),
                                kill_at=6)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert latest_checkpoint(killed).name == "step-00000004.ckpt"
    assert max(r["step"] for r in read_metrics(killed)) == 6  # lines past the checkpoint exist before resuming

    result = Trainer(tiny_recipe(pattern_data, killed)).fit()  # resume="auto"
    assert result.steps == 12
    assert comparable(read_metrics(killed)) == comparable(read_metrics(reference))
    a = torch.load(latest_checkpoint(killed), weights_only=True)["model"]
    b = torch.load(latest_checkpoint(reference), weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    pattern_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "nan"
    trainer = Trainer(tiny_recipe(pattern_data, out, checkpoint_every=2))

    def poison(step: int) -> None:
        if step == 3:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))

    trainer.after_step_hook = poison
    with pytest.raises(NonFiniteError, match=r"Non-finite values at step 4 \(loss nan"):
        trainer.fit()
    assert latest_checkpoint(out).name == "step-00000002.ckpt"
    state = torch.load(latest_checkpoint(out), weights_only=True)
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_non_finite_gradient_can_skip_the_update(pattern_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "skip"
    trainer = Trainer(tiny_recipe(pattern_data, out, on_nonfinite="skip"))
    real_clip = trainer._clip
    calls = {"n": 0}
    snapshots: dict[int, torch.Tensor] = {}

    def clip(model, optimizer):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        norm = real_clip(model, optimizer)
        return torch.full_like(norm, float("inf")) if calls["n"] == 5 else norm

    def snapshot(step: int) -> None:
        snapshots[step] = next(trainer.model.parameters()).detach().clone()

    trainer._clip = clip  # type: ignore[method-assign]
    trainer.after_step_hook = snapshot
    result = trainer.fit()
    assert result.steps == 12
    assert torch.equal(snapshots[4], snapshots[5])  # step 5's update was skipped
    assert not torch.equal(snapshots[5], snapshots[6])  # training went on
    records = read_metrics(out)
    assert [r.get("skipped_steps", 0) for r in records if r["step"] in (4, 5)] == [0, 1]


def test_bad_recipe_fails_before_any_step_and_writes_nothing(pattern_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "bad"
    recipe = tiny_recipe(pattern_data, out)
    small_vocab = recipe.model.model_copy(update={"params": {**recipe.model.params, "vocab_size": 32}})
    with pytest.raises(ValueError, match="vocab"):
        Trainer(recipe.model_copy(update={"model": small_vocab})).fit()
    assert not out.exists()


def test_existing_run_is_never_overwritten(pattern_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    Trainer(tiny_recipe(pattern_data, out, checkpoint_every=12)).fit()
    with pytest.raises(CheckpointError, match="already has checkpoints"):
        Trainer(tiny_recipe(pattern_data, out, resume="never")).fit()
    other = tiny_recipe(pattern_data, out)
    other = other.model_copy(update={"optimizer": other.optimizer.model_copy(update={"lr": 5e-3})})
    with pytest.raises(Exception, match=r"different recipe \(differs in: optimizer.lr\)"):
        Trainer(other).fit()
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        Trainer(tiny_recipe(pattern_data, out, resume=str(out / "missing.ckpt"))).fit()


def test_cli_trains_on_the_embedded_corpus_and_generates(tmp_path: Path) -> None:
    """The README's main job, shortened: `archscale train` on the default corpus, then `archscale generate`."""
    env = dict(os.environ, ARCHSCALE_CACHE=str(tmp_path / "cache"))
    exe = [sys.executable, "-m", "archscale"]
    out = tmp_path / "run"
    proc = subprocess.run(
        exe + ["train", "smoke", "--out", str(out), "--set", "budget.steps=6", "--set", "system.val_every=3",
               "--set", "system.checkpoint_every=3"],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "default corpus" in proc.stdout + proc.stderr and "validation loss" in proc.stdout
    assert (out / "tokenizer.json").is_file() and (out / "loss.png").is_file()
    vals = [r["val_loss"] for r in read_metrics(out) if "val_loss" in r]
    assert vals[-1] < vals[0]
    proc = subprocess.run(
        exe + ["generate", str(out), "--prompt", "My fellow citizens", "--max-new-tokens", "8", "--temperature", "0"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("My fellow citizens") and len(proc.stdout.split("\n")[0]) > len("My fellow citizens")
