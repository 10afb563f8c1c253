"""Helpers shared by the data tests (imported as a plain module: tests/data is on sys.path under pytest)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_DOCS = [
    "Fellow-Citizens of the Senate and House of Representatives: the state of the Union is strong.",
    "We the People of the United States, in Order to form a more perfect Union, establish Justice.",
    "Ünïcödé text — with dashes, quotes “like these”, and emoji 😀 must survive a round trip.",
    "Numbers 1790, 2024 and 3.14159 appear; so do tabs\tand\nnewlines.",
    "A literal <|endoftext|> inside a document is text, not the end of the document.",
] * 20



def write_source(directory: Path, prefix: str, tokens: np.ndarray, *, chunk_size: int, dtype=np.uint16,
                 pad_id: int = 0, eos_id: int | None = None, tokenizer: dict | None = None,
                 manifest: bool = True) -> str:
    """Write ``tokens`` as packed files ``{prefix}_*.bin`` (plus a manifest) and return the source string."""
    from archscale.data.packed import PackedWriter
    from archscale.data.sources import make_manifest, manifest_path, write_manifest

    directory.mkdir(parents=True, exist_ok=True)
    with PackedWriter(directory, prefix, chunk_size=chunk_size, dtype=dtype, pad_id=pad_id, eos_id=eos_id) as w:
        w.write(tokens)
    if manifest:
        write_manifest(manifest_path(directory, prefix), make_manifest(
            prefix=prefix, files=w.files, tokenizer=tokenizer, dtype=np.dtype(dtype).name, chunk_size=chunk_size))
    return str(directory / prefix)
