"""``archscale data``: prepare packed data, train a tokenizer, inspect packed files.

The verbs are thin: they parse arguments, call :func:`archscale.data.prepare.prepare`,
:func:`archscale.data.tokenizers.train_bpe_tokenizer` or read headers/manifests, and print. The lead's
``archscale/cli.py`` calls :func:`add_subparser`; :func:`main` runs the ``data`` verb alone (tests, ``python -m``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from archscale.data.packed import PackedFormatError

_EXPECTED = (ValueError, FileNotFoundError, ImportError, PackedFormatError)


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data`` with sub-verbs ``prepare``, ``train-tokenizer`` and ``inspect`` (each sets ``func``)."""
    data = subparsers.add_parser(
        "data", help="prepare, inspect and tokenize training data",
        description="Packed LITPKDS data (LitGPT/TinyLlama/ArchScale format): tokenize raw text, train a "
                    "tokenizer, inspect packed files.")
    verbs = data.add_subparsers(dest="data_command", metavar="{prepare,train-tokenizer,inspect}")
    verbs.required = True

    p = verbs.add_parser(
        "prepare", help="tokenize .txt/.jsonl/.parquet files into packed files (parallel, resumable)",
        description="Tokenize raw text into packed files, one EOS after every document. Interrupted runs resume "
                    "where they stopped when rerun with the same arguments.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files or directories (searched recursively)")
    p.add_argument("--output", "-o", required=True, help="output directory")
    p.add_argument("--tokenizer", help="tokenizer.json, SentencePiece .model or .tiktoken file "
                                       "(default: the default-corpus 8192-token BPE)")
    p.add_argument("--prefix", default="train", help="file-name prefix; DIR/PREFIX is the data source (default: train)")
    p.add_argument("--chunk-size", type=int, default=None, help="tokens per file (default: 2049*1024)")
    p.add_argument("--dtype", choices=["auto", "uint16", "int32"], default="auto",
                   help="token dtype on disk (auto: uint16 for vocabularies below 65 500)")
    p.add_argument("--text-key", default="text", help="JSONL field / parquet column holding the text")
    p.add_argument("--txt-mode", choices=["file", "line"], default="file",
                   help=".txt documents: a whole file (default) or every non-empty line")
    p.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    p.add_argument("--unit-mb", type=float, default=64.0, help="raw MB per resumable work unit (default: 64)")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="refuse token ids >= this (the model's vocabulary size)")
    p.add_argument("--eos-id", type=int, default=None, help="EOS id if the tokenizer has none")
    p.add_argument("--overwrite", action="store_true", help="delete earlier output of this prefix and start over")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_prepare)

    t = verbs.add_parser(
        "train-tokenizer", help="train a byte-level BPE tokenizer (tokenizer.json) on text files",
        description="Train a byte-level BPE with the `tokenizers` library; EOS is a special token with id 0.")
    t.add_argument("inputs", nargs="+", metavar="INPUT", help="files or directories (.txt, .jsonl, .parquet)")
    t.add_argument("--output", "-o", required=True, help="path of the tokenizer.json to write")
    t.add_argument("--vocab-size", type=int, default=8192, help="vocabulary size including EOS (default: 8192)")
    t.add_argument("--eos-token", default="<|endoftext|>", help="EOS token text (default: <|endoftext|>)")
    t.add_argument("--min-frequency", type=int, default=2, help="minimum pair count for a merge (default: 2)")
    t.add_argument("--text-key", default="text", help="JSONL field / parquet column holding the text")
    t.add_argument("--txt-mode", choices=["file", "line"], default="file", help=".txt documents: file or line")
    t.set_defaults(func=_train_tokenizer)

    i = verbs.add_parser(
        "inspect", help="describe packed data: header, dtype, chunk size, files, tokens",
        description="Describe packed data: a directory, a DIR/PREFIX source, or one .bin file.")
    i.add_argument("paths", nargs="+", metavar="PATH", help="directory, DIR/PREFIX or .bin file")
    i.add_argument("--files", action="store_true", help="list every file")
    i.add_argument("--decode", type=int, default=0, metavar="N", help="decode the first N tokens")
    i.add_argument("--tokenizer", help="tokenizer for --decode (default: the one recorded with the data)")
    i.set_defaults(func=_inspect)


def _fail(verb: str, e: BaseException) -> int:
    print(f"archscale data {verb}: error: {e}", file=sys.stderr)
    return 1


def _prepare(args: argparse.Namespace) -> int:
    from archscale.data.prepare import DEFAULT_CHUNK_SIZE, prepare

    try:
        summary = prepare(
            args.inputs, args.output, tokenizer=args.tokenizer, prefix=args.prefix,
            chunk_size=args.chunk_size or DEFAULT_CHUNK_SIZE, dtype=args.dtype, text_key=args.text_key,
            txt_mode=args.txt_mode, workers=args.workers, unit_bytes=max(1, int(args.unit_mb * 2**20)),
            vocab_limit=args.vocab_size, eos_id=args.eos_id, overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except _EXPECTED as e:
        return _fail("prepare", e)
    print(summary)
    return 0


def _train_tokenizer(args: argparse.Namespace) -> int:
    from archscale.data.prepare import find_inputs, iter_documents, plan_units
    from archscale.data.tokenizers import train_bpe_tokenizer

    try:
        t0 = time.perf_counter()
        units = plan_units(find_inputs(args.inputs), txt_mode=args.txt_mode, unit_bytes=1 << 62)
        docs = (d for u in units for it in u.items for d in iter_documents(it, args.text_key) if d.strip())
        tok = train_bpe_tokenizer(docs, args.vocab_size, args.output, eos_token=args.eos_token,
                                  min_frequency=args.min_frequency)
    except _EXPECTED as e:
        return _fail("train-tokenizer", e)
    print(f"wrote {tok.path}: byte-level BPE, vocab {tok.vocab_size:,}, eos {args.eos_token!r} = id {tok.eos_id} "
          f"({time.perf_counter() - t0:.1f} s)")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from archscale.data.packed import read_header
    from archscale.data.sources import resolve_source, tokenizer_file

    try:
        for raw in args.paths:
            path = Path(raw)
            if path.is_file():
                h = read_header(path)
                print(f"{path}: LITPKDS version {h.version}, dtype {h.dtype} (code {h.dtype_code}), "
                      f"chunk size {h.chunk_size:,} tokens, {h.file_size:,} bytes")
                continue
            s = resolve_source(raw)
            files = s.stream.files
            dtypes = sorted({str(f.header.dtype) for f in files})
            chunks = sorted({f.header.chunk_size for f in files})
            capacity = sum(f.header.chunk_size for f in files)
            print(f"{raw}: {len(files):,} files, LITPKDS version {files[0].header.version}, dtype "
                  f"{'/'.join(dtypes)}, chunk size {'/'.join(f'{c:,}' for c in chunks)}")
            print(f"  tokens: {s.num_tokens:,}" + (f" ({capacity - s.num_tokens:,} padding)" if capacity > s.num_tokens
                                                   else ""))
            if s.max_token_id is not None:
                print(f"  max token id: {s.max_token_id}")
            for m in s.manifests:
                print(f"  manifest: {m}")
            if s.tokenizer:
                t = s.tokenizer
                print(f"  tokenizer: {tokenizer_file(t) or t.get('file')} (vocab {t.get('vocab_size')}, eos "
                      f"{t.get('eos_id')}, sha256 {str(t.get('sha256'))[:12]})")
                docs = _manifest_docs(s)
                if docs is not None:
                    print(f"  documents: {docs:,}")
            if args.files:
                for f in files:
                    print(f"    {f.path.name}: {f.num_tokens:,} / {f.header.chunk_size:,} tokens")
            if args.decode:
                from archscale.data.tokenizers import load_tokenizer

                tpath = args.tokenizer or (tokenizer_file(s.tokenizer) if s.tokenizer else None)
                if tpath is None:
                    raise ValueError("--decode needs --tokenizer (no tokenizer is recorded with this data)")
                n = min(args.decode, s.num_tokens)
                ids = s.stream.read(0, n).tolist()
                print(f"  first {n} tokens: {ids[:32]}{' ...' if n > 32 else ''}")
                print("  decoded: " + repr(load_tokenizer(tpath).decode(ids)))
    except _EXPECTED as e:
        return _fail("inspect", e)
    return 0


def _manifest_docs(s) -> int | None:
    import json

    total = 0
    for m in s.manifests:
        try:
            total += int(json.loads(Path(m).read_text()).get("num_documents", 0))
        except (OSError, ValueError):
            return None
    return total if s.manifests else None


def build_parser() -> argparse.ArgumentParser:
    """A parser with only the ``data`` verb (what ``archscale data ...`` parses)."""
    parser = argparse.ArgumentParser(prog="archscale")
    sub = parser.add_subparsers(dest="command")
    sub.required = True
    add_subparser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``archscale data ...`` (argv starts with ``data``), returning the exit code."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main(["data", *sys.argv[1:]]))
