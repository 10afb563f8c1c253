"""The docs-command convention, as code (a uniquely named module: the tests import it, never ``conftest``).

Every fenced block in docs/*.md has a language. ```bash and ```python blocks are executed, each file's in order
in one fresh working directory (bash with ``-euo pipefail``; python as a script), unless the block is preceded by
one marker line:

- ``<!-- tested-by: tests/path/test_file.py::test_name -->``: that test exists and its source contains every
  command line of the block (so the same command runs there, maybe with smaller overrides appended);
- ``<!-- gpu-only -->``: the block needs hardware CI lacks. Each ``archscale ...`` command in it (also after
  ``torchrun ... -m archscale``) must parse with the CLI's argparse and the recipe it names must resolve; python
  blocks must compile.

```text blocks (output shown to the reader) and other languages are not executed; ```sh/```shell/```console
and unlabelled fences are errors, so that no command hides from the test.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EXECUTED = ("bash", "python")
FORBIDDEN = ("", "sh", "shell", "console", "zsh")
MARKER = re.compile(r"^<!--\s*(tested-by:\s*(?P<test>\S+)|(?P<gpu>gpu-only))\s*-->$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: str | None  # "gpu-only", "tested-by:<nodeid>" or None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path}:{self.line}"


def parse(path: Path, text: str | None = None) -> list[Block]:
    """Fenced blocks of a markdown file, with the marker line (if any) right before each. Raises ValueError for a
    fence that is never closed or a marker-looking comment that does not follow the convention."""
    lines = (path.read_text() if text is None else text).splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(```+)(.*)$", lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(2), m.group(3).strip()
        start = i
        j = i + 1
        while j < len(lines) and not re.match(rf"^\s*{fence}\s*$", lines[j]):
            j += 1
        if j == len(lines):
            raise ValueError(f"{path}:{start + 1}: fenced block is never closed")
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = None
        prev = lines[k].strip() if k >= 0 else ""
        if prev.startswith("<!--") and ("tested-by" in prev or "gpu-only" in prev):
            mm = MARKER.match(prev)
            if mm is None:
                raise ValueError(f"{path}:{k + 1}: malformed marker {prev!r}; use <!-- tested-by: "
                                 "tests/path/test_file.py::test_name --> or <!-- gpu-only -->")
            marker = "gpu-only" if mm.group("gpu") else f"tested-by:{mm.group('test')}"
        code = "\n".join(line[len(m.group(1)):] if line.startswith(m.group(1)) else line
                         for line in lines[start + 1 : j])
        blocks.append(Block(path, start + 1, lang.split()[0] if lang else "", code + "\n", marker))
        i = j + 1
    return blocks


def convention_errors(blocks: list[Block]) -> list[str]:
    """Fences without a language or with a shell language other than bash; markers on blocks never executed."""
    errors = []
    for b in blocks:
        if b.lang in FORBIDDEN:
            errors.append(f"{b.where}: fenced block with language {b.lang or '(none)'!r}: use ```bash for "
                          "commands the docs test runs, ```python for Python, ```text for output")
        elif b.marker and b.lang not in EXECUTED:
            errors.append(f"{b.where}: marker {b.marker!r} on a ```{b.lang} block, which is never executed")
    return errors


def command_lines(code: str) -> list[str]:
    """Non-empty, non-comment lines, backslash continuations kept as separate lines (without the backslash)."""
    out = []
    for line in code.splitlines():
        s = line.strip()
        if s.endswith("\\"):
            s = s[:-1].rstrip()
        if s and not s.startswith("#"):
            out.append(s)
    return out


def joined_commands(code: str) -> list[str]:
    """Shell commands with backslash continuations joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", code)
    return [s.strip() for s in text.splitlines() if s.strip() and not s.strip().startswith("#")]


# --------------------------------------------------------------------------------------------- markers
def tested_by_errors(block: Block) -> list[str]:
    """The test named by a tested-by marker exists and contains every command line of the block."""
    assert block.marker is not None and block.marker.startswith("tested-by:")
    nodeid = block.marker.split(":", 1)[1]
    file_part, _, test = nodeid.partition("::")
    test = test.split("[", 1)[0]
    path = ROOT / file_part
    if not path.is_file() or not test:
        return [f"{block.where}: tested-by {nodeid}: no such test file {file_part} (or no ::test_name)"]
    source = path.read_text()
    if not re.search(rf"^\s*(async\s+)?def {re.escape(test)}\(", source, flags=re.M):
        return [f"{block.where}: tested-by {nodeid}: {file_part} has no function {test}"]
    return [f"{block.where}: tested-by {nodeid}: the test's source does not contain the line {line!r}"
            for line in command_lines(block.code) if line not in source]


def _archscale_argv(command: str) -> list[str] | None:
    """The argv after ``archscale`` (or ``... -m archscale``) in a shell command, $REPO expanded; None if the
    command does not run archscale."""
    try:
        tokens = shlex.split(command.replace("$REPO", str(ROOT)).replace("${REPO}", str(ROOT)))
    except ValueError:
        return None
    for i, tok in enumerate(tokens):
        if tok == "archscale" or tok.endswith("/archscale"):
            return tokens[i + 1 :]
        if tok == "-m" and i + 1 < len(tokens) and tokens[i + 1] == "archscale":
            return tokens[i + 2 :]
    return None


def gpu_only_errors(block: Block) -> list[str]:
    """A gpu-only python block compiles; every archscale command in a gpu-only bash block parses and its recipe
    resolves (nothing is trained)."""
    if block.lang == "python":
        try:
            compile(block.code, block.where, "exec")
        except SyntaxError as exc:
            return [f"{block.where}: gpu-only python block does not compile: {exc}"]
        return []
    from archscale.cli import build_parser, load_recipe
    from archscale.recipe import resolve

    errors = []
    parser = build_parser()
    for command in joined_commands(block.code):
        argv = _archscale_argv(command)
        if argv is None:
            continue
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            errors.append(f"{block.where}: does not parse: {command}")
            continue
        if hasattr(args, "recipe") and hasattr(args, "set"):
            try:
                recipe = load_recipe(args.recipe, args.set)
                resolve(recipe, world_size=getattr(args, "world_size", 1) or 1)
            except Exception as exc:  # noqa: BLE001 - reported with the command
                errors.append(f"{block.where}: recipe does not resolve ({type(exc).__name__}: {exc}): {command}")
    return errors


# --------------------------------------------------------------------------------------------- running
def doc_env(workdir: Path, cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        REPO=str(ROOT),
        ARCHSCALE_CACHE=str(cache),
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        MPLBACKEND="Agg",
        PWD=str(workdir),
    )
    env.pop("ARCHSCALE_DISABLE_PLUGIN_AUTOLOAD", None)
    return env


def run_block(block: Block, workdir: Path, env: dict[str, str], timeout: float = 600) -> str | None:
    """Run one executable block in ``workdir``; None on success, else a report with the output's tail."""
    if block.lang == "bash":
        argv = ["bash", "-euo", "pipefail", "-c", block.code]
    else:  # -c: the working directory is first on sys.path, as for a script the reader saves there
        argv = [sys.executable, "-c", block.code]
    try:
        proc = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"{block.where}: ```{block.lang} block timed out after {timeout:.0f} s"
    if proc.returncode != 0:
        tail = (proc.stdout[-1500:] + "\n" + proc.stderr[-3000:]).strip()
        return f"{block.where}: ```{block.lang} block failed (exit {proc.returncode}):\n{block.code}\n---\n{tail}"
    return None


def check_file(path: Path, workdir: Path, cache: Path, text: str | None = None) -> list[str]:
    """Every error of one markdown file under the convention; executable blocks run in order in ``workdir``
    (the first failure stops the file, since later blocks may need its outputs)."""
    blocks = parse(path, text)
    errors = convention_errors(blocks)
    env = doc_env(workdir, cache)
    for block in blocks:
        if block.lang not in EXECUTED or block.lang in FORBIDDEN:
            continue
        if block.marker == "gpu-only":
            errors += gpu_only_errors(block)
        elif block.marker is not None:
            errors += tested_by_errors(block)
        else:
            failure = run_block(block, workdir, env)
            if failure:
                errors.append(failure)
                break
    return errors
