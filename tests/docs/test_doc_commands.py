"""Every command in docs/*.md runs (tests/docs/doc_blocks.py states the convention).

One test per markdown file: its ```bash and ```python blocks run in order in a fresh working directory with the
repository's venv first on PATH, ``$REPO`` = the repository root and the session's corpus cache; blocks marked
``<!-- tested-by: ... -->`` must be contained in that test, blocks marked ``<!-- gpu-only -->`` must parse and
resolve. The tests at the bottom check that the checker itself fails when it should.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from doc_blocks import DOCS, ROOT, check_file, parse  # type: ignore[import-not-found]

DOC_FILES = sorted(DOCS.glob("*.md"))


def test_docs_exist() -> None:
    names = {p.name for p in DOC_FILES}
    assert {"tutorial.md", "scaling.md", "reference.md", "workflows.md"} <= names


@pytest.mark.parametrize("path", DOC_FILES, ids=[p.name for p in DOC_FILES])
def test_doc_commands_run(path: Path, tmp_path: Path, corpus_cache: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    errors = check_file(path, workdir, corpus_cache)
    assert not errors, "\n\n".join(errors)


# --------------------------------------------------------------------------------------------- the checker
def _check(text: str, tmp_path: Path) -> list[str]:
    workdir = tmp_path / "w"
    workdir.mkdir(exist_ok=True)
    return check_file(tmp_path / "doc.md", workdir, tmp_path / "cache", text=textwrap.dedent(text))


def test_blocks_share_a_working_directory_and_failures_are_reported(tmp_path: Path) -> None:
    ok = """
        ```bash
        echo hello > out.txt
        ```
        ```python
        from pathlib import Path
        assert Path("out.txt").read_text() == "hello\\n"
        ```
        ```text
        this is output, never run: exit 1
        ```
    """
    assert _check(ok, tmp_path) == []
    failing = """
        ```bash
        false
        echo never
        ```
    """
    (tmp_path / "x").mkdir()
    errors = _check(failing, tmp_path / "x")
    assert len(errors) == 1 and "block failed" in errors[0]


def test_unset_variables_and_pipes_fail(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    assert _check("```bash\necho $NOT_SET_ANYWHERE\n```\n", tmp_path / "a")
    (tmp_path / "b").mkdir()
    assert _check("```bash\nfalse | cat\n```\n", tmp_path / "b")
    (tmp_path / "c").mkdir()
    assert _check("```python\nraise SystemExit(3)\n```\n", tmp_path / "c")


def test_unlabelled_and_shell_fences_are_errors(tmp_path: Path) -> None:
    errors = _check("```\nls\n```\n\n```sh\nls\n```\n", tmp_path)
    assert len(errors) == 2 and all("use ```bash" in e for e in errors)


def test_tested_by_marker_needs_the_test_and_its_lines(tmp_path: Path) -> None:
    this = Path(__file__).relative_to(ROOT)
    good = f"<!-- tested-by: {this}::test_tested_by_marker_needs_the_test_and_its_lines -->\n```bash\n" \
           "archscale train --set budget.steps=100000 \\\n    --out /nonexistent\n```\n"
    # The two command lines appear in this very test's source, so the marker holds; nothing is run.
    assert _check(good, tmp_path) == []
    missing_test = good.replace("::test_tested_by_marker_needs", "::test_no_such")
    assert "has no function" in _check(missing_test, tmp_path)[0]
    other = "--out /else" + "where"  # split so that this source never contains the whole line
    missing_line = good.replace("--out /nonexistent", other)
    assert f"does not contain the line {other!r}" in _check(missing_line, tmp_path)[0]
    assert "no such test file" in _check(good.replace(str(this), "tests/nope.py"), tmp_path)[0]


def test_gpu_only_blocks_parse_and_resolve(tmp_path: Path) -> None:
    good = "<!-- gpu-only -->\n```bash\ntorchrun --nproc-per-node 8 -m archscale train archscale_v1 \\\n" \
           "    --set model.params.depth=8 --set system.num_devices=8\n" \
           "archscale resolve $REPO/examples/workflows.py:phi4_mini_flash --world-size 1024\n```\n"
    assert _check(good, tmp_path) == []
    typo = good.replace("model.params.depth=8", "model.params.depht=8")
    assert "does not resolve" in _check(typo, tmp_path)[0]
    bad_flag = good.replace("--world-size", "--world-sise")
    assert "does not parse" in _check(bad_flag, tmp_path)[0]
    assert "does not compile" in _check("<!-- gpu-only -->\n```python\ndef f(:\n```\n", tmp_path)[0]


def test_malformed_marker_and_unclosed_fence_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="malformed marker"):
        parse(tmp_path / "d.md", "<!-- tested-by tests/x.py -->\n```bash\nls\n```\n")
    with pytest.raises(ValueError, match="never closed"):
        parse(tmp_path / "d.md", "```bash\nls\n")
