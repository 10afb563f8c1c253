"""Kernels: each op has a pure-PyTorch reference and optional fast paths."""
