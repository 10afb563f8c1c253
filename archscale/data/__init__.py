"""Data: packed pre-tokenized files, tokenizers, mixtures, varlen boundaries, the embedded default corpus."""
