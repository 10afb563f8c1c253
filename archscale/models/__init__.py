"""Model building blocks: the token-mixer contract, mixers, blocks, the language model, architectures."""
