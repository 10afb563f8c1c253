"""``open_data``: from a :class:`DataConfig` to the training and validation batches a trainer consumes.

It resolves sources (or builds/loads the default corpus), works out the tokenizer, vocabulary and EOS from the
config and the data manifests (refusing data prepared with different tokenizers), carves the validation split,
and builds the rank's loaders. Opening reads only headers and manifests; tokens are memory-mapped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from archscale.data.config import DataConfig
from archscale.data.loader import FixedWindows, RandomWindows
from archscale.data.sources import Source, TokenStream, resolve_source, tokenizer_file

if TYPE_CHECKING:  # pragma: no cover
    from archscale.data.tokenizers import Tokenizer

SCAN_LIMIT_TOKENS = 1 << 28
"""check_vocab reads sources without a manifest up to this many tokens to find their largest id (about a second
per 10^9 bytes); larger ones are checked batch by batch as they are drawn."""


@dataclass
class DataBundle:
    """What a trainer needs from the data layer for one rank."""

    train: RandomWindows
    val: FixedWindows | None
    vocab_size: int | None
    eos_id: int | None
    tokenizer_path: str | None
    max_token_id: int
    seq_len: int = 0
    max_token_id_exact: bool = False
    train_sources: list[Source] = field(default_factory=list, repr=False)
    val_sources: list[Source] = field(default_factory=list, repr=False)
    notes: list[str] = field(default_factory=list)

    def check_vocab(self, model_vocab_size: int) -> None:
        """Raise ValueError if the tokenizer or any token id does not fit a model with ``model_vocab_size`` ids.

        Sources with a manifest are checked from it (free); others are scanned when small enough, and in any case
        every batch drawn afterwards is checked against ``model_vocab_size``.
        """
        if self.vocab_size is not None and self.vocab_size > model_vocab_size:
            raise ValueError(
                f"tokenizer {self.tokenizer_path or '(from the data manifest)'} has {self.vocab_size} tokens but the "
                f"model's vocabulary has {model_vocab_size}: set the model's vocab_size to at least "
                f"{self.vocab_size}, or prepare the data with a tokenizer of at most {model_vocab_size} tokens"
            )
        seen: set[int] = set()
        for s in self.train_sources + self.val_sources:
            if id(s) in seen:
                continue
            seen.add(id(s))
            if s.max_token_id is None and s.num_tokens <= SCAN_LIMIT_TOKENS:
                s.max_token_id = _scan_max(s.stream)
            if s.max_token_id is not None and s.max_token_id >= model_vocab_size:
                pos = s.stream.find(s.max_token_id, 0, s.num_tokens) if s.num_tokens <= SCAN_LIMIT_TOKENS else None
                where = f" (first at {s.stream.locate(pos)[0]})" if pos is not None else ""
                tok = f" with tokenizer {self.tokenizer_path}" if self.tokenizer_path else ""
                raise ValueError(
                    f"data source {s.name!r}{where} contains token id {s.max_token_id} but the model's vocabulary "
                    f"has {model_vocab_size} ids: the data was prepared{tok} for a larger vocabulary; set the "
                    f"model's vocab_size to at least {s.max_token_id + 1} or re-prepare the data with the model's "
                    "tokenizer (archscale data prepare --tokenizer ...)"
                )
        if all(s.max_token_id is not None for s in self.train_sources + self.val_sources):
            self.max_token_id = max(int(s.max_token_id) for s in self.train_sources + self.val_sources)  # type: ignore[arg-type]
            self.max_token_id_exact = True
        self.train.vocab_limit = model_vocab_size
        if self.val is not None:
            self.val.vocab_limit = model_vocab_size

    def load_tokenizer(self) -> Tokenizer | None:
        """The tokenizer (for decoding samples, evaluation); None when the data does not say which."""
        if self.tokenizer_path is None:
            return None
        from archscale.data.tokenizers import load_tokenizer

        return load_tokenizer(self.tokenizer_path)

    def describe(self) -> str:
        """One line per source for the run log."""
        lines = [f"seq_len={self.seq_len} vocab_size={self.vocab_size} eos_id={self.eos_id} "
                 f"tokenizer={self.tokenizer_path} max_token_id={self.max_token_id}"
                 f"{'' if self.max_token_id_exact else ' (dtype bound)'}"]
        for name, w, n in self.train.mixture():
            lines.append(f"train {name}: weight {w:.4g}, {n:,} tokens")
        if self.val is not None:
            lines.append(f"val: {self.val.num_tokens:,} tokens, {self.val.num_windows:,} windows")
        return "\n".join(lines + self.notes)


def _scan_max(stream: TokenStream) -> int:
    m, step = -1, 1 << 22
    for s in range(0, len(stream), step):
        m = max(m, int(stream.read(s, min(step, len(stream) - s)).max()))
    return m


def _identity(sources: list[Source]) -> dict[str, Any] | None:
    """The single tokenizer the sources were prepared with (None if no manifest names one)."""
    found = [(s.name, s.tokenizer) for s in sources if s.tokenizer]
    if not found:
        return None
    name0, tok0 = found[0]
    for name, tok in found[1:]:
        if tok.get("sha256") != tok0.get("sha256"):
            raise ValueError(
                f"data sources {name0!r} and {name!r} were prepared with different tokenizers "
                f"({tok0.get('vocab_size')} vs {tok.get('vocab_size')} tokens, sha256 {tok0.get('sha256', '?')[:12]} "
                f"vs {tok.get('sha256', '?')[:12]}); a mixture must share one tokenizer: re-prepare one of them"
            )
    return tok0


def open_data(cfg: DataConfig, *, micro_batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> DataBundle:
    """Open the training (and validation) data of ``cfg`` for one rank.

    ``seed`` fixes the training windows together with ``rank`` and ``world_size``; validation windows depend
    only on rank and world size. Raises FileNotFoundError / ValueError / PackedFormatError with the source, the
    file and the fix when data is missing, corrupt or inconsistent with the tokenizer.
    """
    window = cfg.seq_len + 1
    notes: list[str] = []
    default_val: str | None = None
    if cfg.sources:
        train_spec = dict(cfg.sources)
    else:
        from archscale.data.corpus import default_corpus

        corpus = default_corpus()
        train_spec = {corpus.train_source: 1.0}
        default_val = corpus.val_source
        notes.append(f"default corpus: {corpus.num_documents} State of the Union addresses in {corpus.data_dir}")

    train_sources = [resolve_source(name) for name in train_spec]
    val_spec = dict(cfg.val_sources)
    if not val_spec and default_val is not None and cfg.val_fraction > 0:
        val_spec = {default_val: 1.0}
    val_sources = [resolve_source(name) for name in val_spec]

    # Tokenizer, vocabulary and EOS: the config wins, and must agree with what the data was prepared with.
    recorded = _identity(train_sources + val_sources)
    tokenizer_path: str | None = None
    vocab_size: int | None = None
    eos_id: int | None = None
    if cfg.tokenizer is not None:
        from archscale.data.tokenizers import load_tokenizer

        tok = load_tokenizer(cfg.tokenizer)
        if recorded is not None and recorded.get("sha256") and tok.sha256() != recorded["sha256"]:
            raise ValueError(
                f"tokenizer {cfg.tokenizer} ({tok.vocab_size} tokens) is not the one the data was prepared with "
                f"(recorded in {recorded['_manifest']}: {recorded.get('vocab_size')} tokens, sha256 "
                f"{recorded['sha256'][:12]}); use that tokenizer ({tokenizer_file(recorded) or recorded.get('file')}) "
                "or re-prepare the data with this one"
            )
        tokenizer_path, vocab_size, eos_id = str(tok.path), tok.vocab_size, tok.eos_id
    elif recorded is not None:
        tokenizer_path = tokenizer_file(recorded)
        vocab_size, eos_id = recorded.get("vocab_size"), recorded.get("eos_id")
    if cfg.eos_id is not None:
        eos_id = cfg.eos_id
    if cfg.varlen and eos_id is None:
        raise ValueError(
            "data.varlen needs an end-of-document id and none is known: set data.eos_id or data.tokenizer "
            "(or prepare the data with archscale data prepare, which records it)"
        )

    # Validation split: given sources, the default corpus's held-out addresses, or the tail of each source.
    train_streams = [s.stream for s in train_sources]
    val_streams: list[TokenStream] = [s.stream for s in val_sources]
    val_weights = list(val_spec.values())
    val_names = list(val_spec)
    if not val_spec and cfg.val_fraction > 0:
        train_streams, val_streams = [], []
        for s in train_sources:
            cut = _split_point(s, cfg.val_fraction, window, eos_id, cfg.split_search_tokens)
            train_streams.append(s.stream.view(0, cut))
            val_streams.append(s.stream.view(cut, s.num_tokens))
        val_weights = list(train_spec.values())
        val_names = [f"{n} (last {cfg.val_fraction:g})" for n in train_spec]

    train = RandomWindows(train_streams, list(train_spec.values()), list(train_spec), batch_size=micro_batch_size,
                          window=window, seed=seed, rank=rank, world_size=world_size)
    val = None
    if val_streams:
        val = FixedWindows(val_streams, val_weights, val_names, batch_size=micro_batch_size, window=window,
                           rank=rank, world_size=world_size)

    everything = train_sources + val_sources
    exact = all(s.max_token_id is not None for s in everything)
    max_id = max((s.max_token_id if exact else s.dtype_max) for s in everything)  # type: ignore[type-var]
    return DataBundle(
        train=train, val=val, vocab_size=vocab_size, eos_id=eos_id, tokenizer_path=tokenizer_path,
        max_token_id=int(max_id), seq_len=cfg.seq_len, max_token_id_exact=exact,
        train_sources=train_sources, val_sources=val_sources, notes=notes,
    )


def _split_point(s: Source, fraction: float, window: int, eos_id: int | None, search: int) -> int:
    """Where the validation tail of ``s`` starts: ``fraction`` from the end, moved forward past the next EOS."""
    n = s.num_tokens
    cut = n - math.ceil(fraction * n)
    if eos_id is not None and search > 0 and 0 < cut < n:
        hit = s.stream.find(eos_id, cut - 1, search)  # the token before the cut may already end a document
        if hit is not None and hit + 1 < n:
            cut = hit + 1
    if n - cut < window or cut < window:
        raise ValueError(
            f"data source {s.name!r} has {n:,} tokens: holding out val_fraction={fraction:g} leaves "
            f"{cut:,} training and {n - cut:,} validation tokens, and each needs at least one window of {window} "
            "tokens (seq_len + 1); lower seq_len, change val_fraction, give val_sources, or set val_fraction=0"
        )
    return cut


__all__ = ["DataBundle", "open_data"]
