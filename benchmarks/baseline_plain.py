"""A plain Llama-style model in ~80 lines of PyTorch: the throughput floor archscale's models must match.

Same dimensions as archscale's Transformer++ (RMSNorm, RoPE, GQA, SwiGLU, no biases, untied head), written as
directly as possible: SDPA attention, bf16 autocast, fused AdamW, unfused cross-entropy, whole-model
torch.compile. ``benchmarks/train_throughput.py --model plain`` times it in the same loop as archscale's model so
that every reported number comes with a same-call ratio (see docs in ../shared/docs/GPU.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_tables(seq_len: int, head_dim: int, base: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    freqs = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)


class Block(nn.Module):
    def __init__(self, d: int, n_head: int, n_kv: int, head_dim: int, hidden: int) -> None:
        super().__init__()
        self.n_head, self.n_kv, self.hd = n_head, n_kv, head_dim
        self.norm1, self.norm2 = RMSNorm(d), RMSNorm(d)
        self.qkv = nn.Linear(d, (n_head + 2 * n_kv) * head_dim, bias=False)
        self.o = nn.Linear(n_head * head_dim, d, bias=False)
        self.gate_up = nn.Linear(d, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(
            [self.n_head * self.hd, self.n_kv * self.hd, self.n_kv * self.hd], dim=-1
        )
        q = apply_rope(q.view(B, T, self.n_head, self.hd).transpose(1, 2), cos, sin)  # (B, H, T, K)
        k = apply_rope(k.view(B, T, self.n_kv, self.hd).transpose(1, 2), cos, sin)
        v = v.view(B, T, self.n_kv, self.hd).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv != self.n_head)
        x = x + self.o(y.transpose(1, 2).reshape(B, T, -1))
        g, u = self.gate_up(self.norm2(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(g) * u)


class PlainLM(nn.Module):
    def __init__(self, vocab: int, d: int, n_layer: int, n_head: int, n_kv: int, head_dim: int, hidden: int,
                 rope_base: float = 10000.0) -> None:
        super().__init__()
        self.head_dim, self.rope_base = head_dim, rope_base
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, n_head, n_kv, head_dim, hidden) for _ in range(n_layer))
        self.norm = RMSNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        cos, sin = rope_tables(idx.shape[1], self.head_dim, self.rope_base, idx.device)
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.head(self.norm(x)).float()
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))
