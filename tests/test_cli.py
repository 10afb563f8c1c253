"""The `archscale` console script: verbs, --help, --set, recipe files, clear errors with exit code 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from archscale.cli import main

ARCHSCALE = shutil.which("archscale", path=str(Path(sys.executable).parent)) or "archscale"


def test_console_script_is_installed_and_lists_every_registry() -> None:
    proc = subprocess.run([ARCHSCALE, "list"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for kind in ("architectures:", "mixers:", "parametrizations:", "scaling_laws:", "optimizers:", "schedules:",
                 "recipes:"):
        assert kind in proc.stdout
    assert "transformer" in proc.stdout and "archscale.models.archs" in proc.stdout


@pytest.mark.parametrize("verb", ["train", "resolve", "list", "generate", "data"])
def test_help_for_every_verb(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([verb, "--help"])
    assert exc.value.code == 0
    assert "usage: archscale " + verb in capsys.readouterr().out


def test_resolve_default_with_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["resolve", "--set", "optimizer.lr=1e-3", "--set", "budget.steps=7", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["recipe"]["optimizer"]["lr"] == 1e-3
    assert data["values"]["steps"]["value"] == 7
    assert main(["resolve", "default", "--world-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "world size: 2" in out and "grad_accum_steps" in out and "lr_matrix" in out


def test_recipe_from_python_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "exp.py"
    f.write_text(textwrap.dedent(
        """
        from archscale.recipes import default
        def wide():
            r = default()
            return r.model_copy(update={"name": "wide", "model": {**r.model.model_dump(),
                                 "params": {**r.model.params, "n_embd": 192}}})
        """
    ))
    assert main(["resolve", f"{f}:wide"]) == 0
    out = capsys.readouterr().out
    assert "recipe: wide" in out and "192" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["resolve", "defualt"], "Unknown recipe 'defualt'. Did you mean: default?"),
        (["resolve", "--set", "optimizer.learning_rate=1"], "optimizer has no field 'learning_rate'"),
        (["resolve", "--set", "model.name=transfomer"], "Unknown architecture 'transfomer'. Did you mean: transformer"),
        (["resolve", "--set", "budget.steps=-3"], "budget.steps: Input should be greater than 0"),
        (["resolve", "nope.py:f"], "Recipe file not found: nope.py"),
        (["list", "widgets"], "Unknown registry 'widgets'"),
    ],
)
def test_errors_are_clear_and_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err


def test_missing_function_in_recipe_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "exp.py"
    f.write_text("def good():\n    pass\n")
    assert main(["resolve", f"{f}:bad"]) == 2
    assert "has no function 'bad'. Functions there: good" in capsys.readouterr().err


def test_python_dash_m_archscale() -> None:
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "archscale", "--version"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stdout.startswith("archscale ")
