"""Evaluation: generation, lm-eval adapter, long-context tests."""
