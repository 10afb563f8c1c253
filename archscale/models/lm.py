"""The language model: embedding, a stack of residual blocks, final norm, head (tied or untied).

>>> from archscale.models.archs import TransformerConfig, transformer
>>> model = build_model(transformer(TransformerConfig(depth=2, n_embd=64, n_head=4, n_kv_head=2, vocab_size=512)))
>>> out = model(torch.randint(0, 512, (2, 16)), targets=torch.randint(0, 512, (2, 16)))
>>> out.logits.shape, out.loss.ndim
(torch.Size([2, 16, 512]), 0)

The trainer calls ``model(inputs, seq, targets=targets).loss``. Under ``torch.autocast`` the residual stream stays
float32 (see :mod:`archscale.models.block`) and logits are returned in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from archscale.models.api import CrossLayer, ParamRole, SeqInfo
from archscale.models.block import Block, make_norm
from archscale.models.init import InitRule, standard_init
from archscale.models.mixers.base import AttentionFlops
from archscale.models.spec import LMSpec


@dataclass
class LMOutput:
    """logits: float32 (B, T, V). loss: mean cross-entropy over targets != -100, or None without targets.
    state: per-layer mixer states (KV caches, ...) when a state was passed or ``use_cache`` was set, else None."""

    logits: torch.Tensor | None
    loss: torch.Tensor | None = None
    state: list[Any] | None = None


class LanguageModel(nn.Module):
    """A decoder-only language model built from an :class:`LMSpec`."""

    def __init__(self, spec: LMSpec) -> None:
        super().__init__()
        self.spec = spec
        self.embed = nn.Embedding(spec.vocab_size, spec.n_embd)
        self.blocks = nn.ModuleList(Block(spec, i) for i in range(spec.n_layers))
        self.final_norm = make_norm(spec)
        # Tied: the head reuses the embedding table, so it is no separate parameter (and has no role of its own).
        self.head = None if spec.tie_embeddings else nn.Linear(spec.n_embd, spec.vocab_size, bias=False)
        self.reset_parameters()

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        seq: SeqInfo | None = None,
        targets: torch.Tensor | None = None,
        state: list[Any] | None = None,
        use_cache: bool = False,
    ) -> LMOutput:
        """input_ids (B, T) -> logits (B, T, V). ``seq`` None means a dense causal batch starting at position 0;
        when continuing from ``state``, pass ``SeqInfo.dense(B, T, offset=<tokens already in the state>)``."""
        B, T = input_ids.shape
        if seq is None:
            if state is not None:
                raise ValueError(
                    "continuing from a state needs positions: pass seq=SeqInfo.dense(B, T, offset=n_seen) "
                    "where n_seen is the number of tokens already in the state"
                )
            seq = SeqInfo.dense(B, T, device=input_ids.device)
        want_state = use_cache or state is not None
        if state is not None and len(state) != len(self.blocks):
            raise ValueError(f"state has {len(state)} entries, the model has {len(self.blocks)} layers")

        x = self.embed(input_ids)  # (B, T, D), float32: the residual stream
        # Values layers hand to later layers in this call (YOCO K,V, GMU memory): created here, passed explicitly.
        shared = CrossLayer()
        new_state: list[Any] = []
        for i, block in enumerate(self.blocks):
            x, layer_state = block(x, seq, None if state is None else state[i], shared=shared)
            if want_state:
                new_state.append(layer_state)
        x = self.final_norm(x)
        weight = self.embed.weight if self.head is None else self.head.weight
        logits = F.linear(x, weight).float()  # (B, T, V)
        if self.spec.logit_multiplier != 1.0:
            logits = logits * self.spec.logit_multiplier

        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        return LMOutput(logits=logits, loss=loss, state=new_state if want_state else None)

    # ------------------------------------------------------------------ init
    def reset_parameters(self, rule: InitRule | None = None) -> None:
        """Initialise every parameter: first each submodule's own ``reset_parameters`` (norms to 1, special
        mixer parameters), then ``rule`` on every parameter (default: SP, N(0, init_std) with output
        projections / √(2L))."""
        # Children before parents (reversed pre-order), so that a mixer's own init of a child's parameter
        # (a zero bias, Mamba's dt bias) is not overwritten by the child's default (nn.Linear's uniform bias).
        for module in reversed(list(self.modules())):
            if module is not self and callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
        rule = rule or standard_init(self.spec.init_std, self.spec.n_layers)
        params = dict(self.named_parameters())
        outputs = self.output_projections()
        for name, role in self.param_roles().items():
            rule(name, params[name], role, name in outputs)

    # ------------------------------------------------------------------ bookkeeping
    def param_roles(self) -> dict[str, ParamRole]:
        """Role of every parameter, each exactly once, composed from each module's own report."""
        roles: dict[str, ParamRole] = {"embed.weight": "embedding"}
        roles.update({f"final_norm.{n}": "vector" for n, _ in self.final_norm.named_parameters()})
        for i, block in enumerate(self.blocks):
            roles.update({f"blocks.{i}.{n}": r for n, r in block.param_roles().items()})
        if self.head is not None:
            roles["head.weight"] = "head"
        return roles

    def output_projections(self) -> set[str]:
        """Parameters that write into the residual stream (attention o_proj, MLP down_proj, ...)."""
        return {f"blocks.{i}.{n}" for i, block in enumerate(self.blocks) for n in block.output_projections()}

    def flops_per_token(self, seq_len: int, attention: AttentionFlops = "dense") -> float:
        """Forward FLOPs per token, summed over modules (mixers, MLPs, head); see
        :func:`archscale.scaling.counting.forward_flops_per_token` for the conventions."""
        head = 2.0 * self.spec.n_embd * self.spec.vocab_size
        return head + sum(block.flops_per_token(seq_len, attention) for block in self.blocks)


def build_model(spec: LMSpec, *, device: torch.device | str | None = None) -> LanguageModel:
    """Build (and SP-initialise) the model of ``spec``; ``device="meta"`` builds without allocating memory.

    Checks that the parameter roles cover every parameter exactly once (a mixer that forgets one fails here)."""
    if device is not None:
        with torch.device(device):
            model = LanguageModel(spec)
    else:
        model = LanguageModel(spec)
    check_param_roles(model)
    return model


def check_param_roles(model: LanguageModel) -> None:
    """Raise if ``model.param_roles()`` misses a parameter or names one that does not exist."""
    roles = model.param_roles()
    names = {n for n, _ in model.named_parameters()}
    missing, extra = names - roles.keys(), roles.keys() - names
    if missing or extra:
        raise RuntimeError(
            f"param_roles() must cover every parameter exactly once; missing: {sorted(missing)}, "
            f"unknown: {sorted(extra)}"
        )
