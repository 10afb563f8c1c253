"""Registry: registering, lookup errors, lazy entry-point plugins from real distributions, broken plugins."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from archscale.registry import (
    DISABLE_AUTOLOAD_ENV,
    DuplicateEntryError,
    EmptyConfig,
    PluginLoadError,
    Registry,
    UnknownEntryError,
)


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = 4


def test_register_and_get() -> None:
    r: Registry = Registry("widgets_a", label="widget")

    @r.register("plain")
    def plain() -> str:
        return "plain"

    @r.register("configured", config=_Cfg)
    def configured(cfg: _Cfg) -> int:
        return cfg.width

    assert r.get("plain") is plain
    assert r.get("configured")(_Cfg(width=3)) == 3
    assert r.config_model("configured") is _Cfg
    assert r.config_model("plain") is EmptyConfig
    assert r.names() == ["configured", "plain"]
    assert "plain" in r and "other" not in r
    assert r.entry("plain").origin.endswith("test_register_and_get.<locals>.plain")


def test_config_attribute_is_used_when_no_explicit_config() -> None:
    r: Registry = Registry("widgets_b")

    @r.register("cls")
    class Thing:
        Config = _Cfg

    assert r.config_model("cls") is _Cfg


def test_duplicate_name_names_both_origins() -> None:
    r: Registry = Registry("widgets_c", label="widget")

    @r.register("x")
    def first() -> None: ...

    with pytest.raises(DuplicateEntryError) as err:

        @r.register("x")
        def second() -> None: ...

    msg = str(err.value)
    assert "Duplicate widget name 'x'" in msg
    assert "first" in msg and "second" in msg
    assert r.get("x") is first  # the original survives


def test_unknown_name_lists_close_matches_and_everything_available() -> None:
    r: Registry = Registry("mixers_t", label="token mixer")
    for name in ("mamba1", "mamba2", "attention", "gdn"):
        r.register(name)(lambda: None)
    with pytest.raises(UnknownEntryError) as err:
        r.get("mamba")
    msg = str(err.value)
    assert msg.startswith("Unknown token mixer 'mamba'. Did you mean: ")
    assert "mamba1" in msg.split("Available:")[0] and "mamba2" in msg.split("Available:")[0]
    assert msg.endswith("Available: attention, gdn, mamba1, mamba2")
    with pytest.raises(UnknownEntryError, match="Unknown token mixer 'zzz'. Available: attention"):
        r.get("zzz")


def test_unregister_allows_deliberate_replacement() -> None:
    r: Registry = Registry("widgets_d")
    r.register("x")(lambda: 1)
    r.unregister("x")
    r.register("x")(lambda: 2)
    assert r.get("x")() == 2


def test_invalid_names_are_refused() -> None:
    r: Registry = Registry("widgets_e")
    for bad in ("", " padded "):
        with pytest.raises(ValueError):
            r.register(bad)


def test_lazy_string_entry_imported_on_first_use() -> None:
    r: Registry = Registry("widgets_f")
    r.register_lazy("joiner", "os.path:join")
    entry = r.entry("joiner")
    assert not entry.loaded
    assert r.get("joiner")("a", "b") == "a/b" or r.get("joiner")("a", "b") == "a\\b"
    assert entry.loaded


# ------------------------------------------------------------------------------ entry points
def make_distribution(site: Path, dist: str, group: str, entries: dict[str, str], modules: dict[str, str]) -> None:
    """Write a minimal installed distribution (dist-info with entry points) plus its modules into ``site``."""
    info = site / f"{dist.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    lines = [f"[{group}]"] + [f"{k} = {v}" for k, v in entries.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for name, source in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    return site


def test_entry_point_plugin_is_discovered_lazily(plugin_site: Path) -> None:
    make_distribution(
        plugin_site,
        "widget-plugin",
        "archscale.widgets_g",
        {"fancy": "widget_plugin_mod:Fancy"},
        {
            "widget_plugin_mod": """
                from pydantic import BaseModel
                LOADED = True
                class FancyConfig(BaseModel):
                    size: int = 2
                class Fancy:
                    Config = FancyConfig
            """
        },
    )
    import sys

    sys.modules.pop("widget_plugin_mod", None)
    r: Registry = Registry("widgets_g")
    assert "fancy" in r.names()
    entry = r.entry("fancy")
    assert entry.origin == "plugin widget-plugin (widget_plugin_mod:Fancy)"
    assert not entry.loaded and "widget_plugin_mod" not in sys.modules  # listed without importing
    assert r.get("fancy").__name__ == "Fancy"
    assert r.config_model("fancy").__name__ == "FancyConfig"


def test_broken_plugin_fails_only_when_used_and_names_its_distribution(plugin_site: Path) -> None:
    make_distribution(
        plugin_site,
        "broken-widgets",
        "archscale.widgets_h",
        {"bad": "broken_widgets_mod:Thing", "missing": "no_such_module_xyz:Thing"},
        {"broken_widgets_mod": "raise RuntimeError('boom at import')\n"},
    )
    r: Registry = Registry("widgets_h")

    @r.register("good")
    def good() -> str:
        return "ok"

    assert r.names() == ["bad", "good", "missing"]  # listing works
    assert r.get("good")() == "ok"
    with pytest.raises(PluginLoadError, match=r"broken-widgets.*RuntimeError: boom at import"):
        r.get("bad")
    with pytest.raises(PluginLoadError, match="broken-widgets"):  # remembered, same error again
        r.get("bad")
    with pytest.raises(PluginLoadError, match="ModuleNotFoundError"):
        r.get("missing")


def test_plugin_clashing_with_builtin_is_reported_on_use(plugin_site: Path) -> None:
    make_distribution(plugin_site, "clash-plugin", "archscale.widgets_i", {"same": "os.path:join"}, {})
    r: Registry = Registry("widgets_i")

    @r.register("same")
    def same() -> None: ...

    @r.register("other")
    def other() -> int:
        return 1

    # Discovery (on first lookup) finds the plugin's 'same': using that name is ambiguous and says why,
    # while every other entry keeps working.
    with pytest.raises(DuplicateEntryError, match=r"already registered by .*same.*clash-plugin"):
        r.get("same")
    assert r.get("other")() == 1


def test_autoload_can_be_disabled(plugin_site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_distribution(plugin_site, "quiet-plugin", "archscale.widgets_j", {"q": "os.path:join"}, {})
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    r: Registry = Registry("widgets_j")
    assert r.names() == []
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "0")
    r.rediscover()
    assert r.names() == ["q"]


def test_import_archscale_is_cheap() -> None:
    """`import archscale` pulls in neither torch nor any optional extra (the public names load lazily)."""
    import subprocess
    import sys

    code = (
        "import sys, archscale\n"
        "heavy = [m for m in ('torch', 'numpy', 'tokenizers', 'lightning_fabric', 'matplotlib') if m in sys.modules]\n"
        "print(heavy)\n"
        "assert archscale.Recipe.__name__ == 'Recipe'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
