"""The language model: embedding, a stack of residual blocks, final norm, head (tied or untied).

>>> from archscale.models.archs import TransformerConfig, transformer
>>> model = build_model(transformer(TransformerConfig(depth=2, n_embd=64, n_head=4, n_kv_head=2, vocab_size=512)))
>>> x = torch.randint(0, 512, (2, 16))
>>> model(x).logits.shape
torch.Size([2, 16, 512])
>>> out = model(x, targets=torch.randint(0, 512, (2, 16)))
>>> out.loss.ndim, out.logits is None
(0, True)

The trainer calls ``model(inputs, seq, targets=targets).loss``. With targets the loss comes, by default
(``spec.loss_impl == "fused"``), from :func:`archscale.kernels.cross_entropy.linear_cross_entropy`, which never
materialises the (B·T, V) logits: they are then not returned unless ``return_logits=True`` (which computes them
and takes the loss from them). Under ``torch.autocast`` the residual stream stays float32 (see
:mod:`archscale.models.block`) and logits are returned in float32.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from archscale.kernels.cross_entropy import cross_entropy_from_logits, linear_cross_entropy
from archscale.models.api import CrossLayer, ParamRole, SeqInfo
from archscale.models.block import Block, make_norm
from archscale.models.init import InitRule, standard_init
from archscale.models.linear import Linear
from archscale.models.mixers.base import AttentionFlops
from archscale.models.spec import LMSpec


@dataclass
class LMOutput:
    """What a forward returns.

    logits: float32 (B, T, V) without targets or with ``return_logits=True``; None when targets were given
    without it (the fused loss never builds them).
    loss: the training objective, mean cross-entropy over targets != -100 plus ``spec.z_loss · mean(lse²)``
    (0, not NaN, when every target is ignored); None without targets.
    ce_loss: the mean cross-entropy alone (no z-loss), detached: the number to log and to validate with, so
    that runs with and without z-loss compare; None without targets.
    state: per-layer mixer states (KV caches, ...) when a state was passed or ``use_cache`` was set, else None."""

    logits: torch.Tensor | None
    loss: torch.Tensor | None = None
    state: list[Any] | None = None
    ce_loss: torch.Tensor | None = None


class LanguageModel(nn.Module):
    """A decoder-only language model built from an :class:`LMSpec`."""

    def __init__(self, spec: LMSpec) -> None:
        super().__init__()
        self.spec = spec
        self.embed = nn.Embedding(spec.vocab_size, spec.n_embd)
        self.blocks = nn.ModuleList(Block(spec, i) for i in range(spec.n_layers))
        self.final_norm = make_norm(spec)
        # Tied: the head reuses the embedding table, so it is no separate parameter (and has no role of its own).
        self.head = None if spec.tie_embeddings else Linear(spec.n_embd, spec.vocab_size, bias=False)
        # Recompute every block in the backward pass instead of keeping its activations (Chen et al. 2016,
        # "Training deep nets with sublinear memory cost"): training only; the Trainer sets it from
        # recipe.system.activation_checkpointing.
        self.activation_checkpointing = False
        self.reset_parameters()

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        seq: SeqInfo | None = None,
        targets: torch.Tensor | None = None,
        state: list[Any] | None = None,
        use_cache: bool = False,
        return_logits: bool | None = None,
    ) -> LMOutput:
        """input_ids (B, T) -> logits (B, T, V). ``seq`` None means a dense causal batch starting at position 0;
        when continuing from ``state``, pass ``SeqInfo.dense(B, T, offset=<tokens already in the state>)``.
        ``targets`` (B, T), -100 = ignored, add the loss; ``return_logits`` (default: only without targets)
        also returns the logits then (see :class:`LMOutput`)."""
        B, T = input_ids.shape
        if seq is None:
            if state is not None:
                raise ValueError(
                    "continuing from a state needs positions: pass seq=SeqInfo.dense(B, T, offset=n_seen) "
                    "where n_seen is the number of tokens already in the state"
                )
            seq = SeqInfo.dense(B, T, device=input_ids.device)
        if seq.position_ids.device != input_ids.device:
            # Without this, the first mixer that mixes positions in (RoPE) fails deep inside with a device mismatch;
            # families without RoPE would run with host-side positions and only some paths would fail.
            raise ValueError(
                f"seq is on {seq.position_ids.device} but input_ids are on {input_ids.device}: build it there "
                "(SeqInfo.dense(B, T, device=...), SeqInfo.from_cu_seqlens(cu_seqlens on that device)) or move it "
                "with seq.to(input_ids.device)"
            )
        want_state = use_cache or state is not None
        if seq.return_state != want_state:
            seq = replace(seq, return_state=want_state)
        if state is not None and len(state) != len(self.blocks):
            raise ValueError(f"state has {len(state)} entries, the model has {len(self.blocks)} layers")

        x = self.embed(input_ids)  # (B, T, D), float32: the residual stream
        # Values layers hand to later layers in this call (YOCO K,V, GMU memory): created here, passed explicitly.
        shared = CrossLayer()
        new_state: list[Any] = []
        for i, block in enumerate(self.blocks):
            layer_in = None if state is None else state[i]
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x, layer_state = self._checkpointed_block(block, x, seq, layer_in, shared, want_state)
            else:
                x, layer_state = block(x, seq, layer_in, shared=shared, keep_state=want_state)
            if want_state:
                new_state.append(layer_state)
        x = self.final_norm(x)
        weight = self.embed.weight if self.head is None else self.head.weight
        if return_logits is None:
            return_logits = targets is None
        spec = self.spec
        logits = loss = ce_loss = None
        if return_logits or (targets is not None and spec.loss_impl == "naive"):
            logits = F.linear(x, weight).float()  # (B, T, V)
            if spec.logit_multiplier != 1.0:
                logits = logits * spec.logit_multiplier
        if targets is not None:
            if logits is not None:  # built anyway: the loss from them costs no more
                out = cross_entropy_from_logits(logits.flatten(0, 1), targets.flatten(), z_loss=spec.z_loss)
            else:
                out = linear_cross_entropy(
                    x.flatten(0, 1), weight, targets.flatten(), z_loss=spec.z_loss,
                    logit_multiplier=spec.logit_multiplier, chunk_size=spec.loss_chunk_size,
                )
            loss, ce_loss = out.loss, out.cross_entropy.detach()
        return LMOutput(
            logits=logits if return_logits else None,
            loss=loss,
            state=new_state if want_state else None,
            ce_loss=ce_loss,
        )

    @staticmethod
    def _checkpointed_block(
        block: Block, x: torch.Tensor, seq: SeqInfo, layer_in: Any, shared: CrossLayer, want_state: bool
    ) -> tuple[torch.Tensor, Any]:
        """One block under non-reentrant activation checkpointing. The block is recomputed during the backward
        pass, after later layers may have overwritten ``shared``: each run therefore reads a snapshot of the
        cross-layer values as they were at this layer in the forward pass, and the first run's writes are copied
        back to ``shared`` for the layers after it."""
        before = (shared.memory, shared.kv)
        runs: list[CrossLayer] = []

        def run(x: torch.Tensor) -> tuple[torch.Tensor, Any]:
            local = CrossLayer(memory=before[0], kv=before[1])
            runs.append(local)
            return block(x, seq, layer_in, shared=local, keep_state=want_state)

        out = checkpoint(run, x, use_reentrant=False)
        shared.memory, shared.kv = runs[0].memory, runs[0].kv
        return out

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
