"""docs/reference.md is what docs/gen_reference.py writes from the registries (regenerate it after adding,
removing or documenting a registry entry or one of its params)."""

from __future__ import annotations

import subprocess
import sys

from doc_blocks import ROOT  # type: ignore[import-not-found]


def test_reference_page_is_current() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "gen_reference.py"), "--check"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:] + "\nRun: python docs/gen_reference.py"


def test_markdown_lists_every_entry_with_its_params() -> None:
    from archscale.cli import registry_markdown
    from archscale.registry import ALL_REGISTRIES, mixers

    text = registry_markdown(list(ALL_REGISTRIES))
    for kind, registry in ALL_REGISTRIES.items():
        assert f"## {kind}\n" in text
        for name in registry.names():
            assert f"### `{name}`\n" in text
    # A params row carries the type, the default and the field's description.
    field = mixers.config_model("mamba").model_fields["d_state"]
    assert f"| `d_state` | `int` | `{field.default}` | {field.description} |" in text
