"""The example plugin package (examples/plugin), installed for real with pip into a temporary directory, is
seen by `archscale list` and by Recipe validation in a fresh process; a broken plugin breaks neither."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "plugin"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("plugin_site")
    source = tmp_path_factory.mktemp("plugin_src") / "plugin"
    shutil.copytree(PLUGIN, source)  # building writes build/ and *.egg-info next to the sources: not in the repo
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(source)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(site.glob("archscale_example_plugin-*.dist-info/entry_points.txt"))
    return site


def run(code_or_args: list[str], site: Path, *extra_paths: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("ARCHSCALE_DISABLE_PLUGIN_AUTOLOAD", None)
    env["PYTHONPATH"] = os.pathsep.join([str(site), *map(str, extra_paths), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, *code_or_args], capture_output=True, text=True, env=env, timeout=300)


def test_archscale_list_shows_plugin_entries_with_origin(plugin_site: Path) -> None:
    proc = run(["-m", "archscale", "list"], plugin_site)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    # Names are padded to the longest name of their registry.
    assert re.search(r"token_shift +plugin archscale-example-plugin \(archscale_example_plugin\.mixer:TokenShift\)", out)
    assert "signum" in out and "plugin archscale-example-plugin (archscale_example_plugin.optim:signum)" in out
    assert "attention" in out and "adamw" in out  # built-ins still there


def test_recipe_validation_uses_plugin_config_models(plugin_site: Path) -> None:
    code = textwrap.dedent(
        """
        from pydantic import ValidationError
        from archscale.recipe import Recipe, resolve
        from archscale.recipes import default
        from archscale.registry import mixers
        base = default()
        r = Recipe.model_validate({**base.model_dump(), "optimizer": {"name": "signum", "params": {"momentum": 0.8}}})
        print("OK", r.optimizer.config())
        try:
            Recipe.model_validate({**base.model_dump(), "optimizer": {"name": "signum", "params": {"momentun": 0.8}}})
        except ValidationError as e:
            print("ERR", e)
        print("MIXER", mixers.config_model("token_shift").__name__)
        """
    )
    proc = run(["-c", code], plugin_site)
    assert proc.returncode == 0, proc.stderr
    assert "OK momentum=0.8" in proc.stdout
    assert "params.momentun: unknown field; did you mean momentum?" in proc.stdout
    assert "MIXER TokenShiftConfig" in proc.stdout


def test_plugin_mixer_trains_in_a_hybrid_model(plugin_site: Path) -> None:
    code = textwrap.dedent(
        """
        import torch
        from archscale.models.lm import build_model
        from archscale.models.spec import LMSpec, LayerSpec
        spec = LMSpec(vocab_size=64, n_embd=32, mlp_hidden=64, block_size=16,
                      layers=[LayerSpec(mixer="token_shift"), LayerSpec(mixer="attention",
                              params={"n_head": 2, "n_kv_head": 1, "head_dim": 16})])
        model = build_model(spec)
        x = torch.randint(0, 64, (2, 17))
        out = model(x[:, :-1], None, targets=x[:, 1:])
        out.loss.backward()
        roles = model.param_roles()
        assert set(roles) == {n for n, _ in model.named_parameters()}
        print("LOSS", float(out.loss))
        """
    )
    proc = run(["-c", code], plugin_site)
    assert proc.returncode == 0, proc.stderr
    assert "LOSS" in proc.stdout


def test_broken_plugin_breaks_neither_import_nor_list(plugin_site: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    info = broken / "broken_archscale_plugin-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-archscale-plugin\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[archscale.mixers]\nkaput = broken_archscale_mod:Kaput\n")
    (broken / "broken_archscale_mod.py").write_text("raise ImportError('this plugin is broken on purpose')\n")
    proc = run(["-m", "archscale", "list", "mixers", "--all"], plugin_site, broken)
    assert proc.returncode == 0, proc.stderr
    assert "kaput" in proc.stdout and "BROKEN" in proc.stdout and "broken-archscale-plugin" in proc.stdout
    assert "token_shift" in proc.stdout
    code = (
        "from archscale.registry import mixers\n"
        "try:\n    mixers.get('kaput')\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
    )
    proc = run(["-c", code], plugin_site, broken)
    assert "PluginLoadError" in proc.stdout and "broken-archscale-plugin" in proc.stdout
    assert "this plugin is broken on purpose" in proc.stdout
    proc = run(["-m", "archscale", "list", "mixers"], plugin_site, broken)  # without --all nothing is imported
    assert proc.returncode == 0 and "kaput" in proc.stdout


def test_autoload_switch_hides_plugins(plugin_site: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(plugin_site), ARCHSCALE_DISABLE_PLUGIN_AUTOLOAD="1")
    proc = subprocess.run([sys.executable, "-m", "archscale", "list", "mixers"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and "token_shift" not in proc.stdout and "attention" in proc.stdout
