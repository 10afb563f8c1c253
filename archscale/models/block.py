"""One pre-norm residual block: x + m·mixer(norm(x)), then x + m·mlp(norm(x)).

Pre-norm RMSNorm (Zhang & Sennrich 2019) as in Llama / Transformer++, or LayerNorm (``LMSpec.norm``; Phi-4-mini-
flash). The block hands the model's per-forward :class:`~archscale.models.api.CrossLayer` to its mixer
(``shared=``): that is how YOCO K,V and GMU memory reach later layers. The residual stream x keeps the dtype of
the embedding (float32 parameters): under bf16 autocast the branch outputs are bf16 and adding them to the fp32
stream promotes the sum to fp32, so the stream never rounds to bf16 (ArchScale keeps its residual in fp32, too).
m is ``LMSpec.residual_multiplier`` (1 under SP; Depth-μP's 1/√(2L), Yang et al. 2023, under μP++).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from archscale.models.api import CrossLayer, ParamRole, SeqInfo
from archscale.models.mixers.base import AttentionFlops, MixerContext, build_mixer
from archscale.models.mlp import SwiGLU
from archscale.models.spec import LMSpec


def make_norm(spec: LMSpec) -> nn.Module:
    """The norm of ``spec`` at width n_embd: RMSNorm (gain) or LayerNorm (gain and bias)."""
    if spec.norm == "layernorm":
        return nn.LayerNorm(spec.n_embd, eps=spec.norm_eps)
    return nn.RMSNorm(spec.n_embd, eps=spec.norm_eps)


class Block(nn.Module):
    """Residual block ``layer_idx`` of ``spec``: token mixer then SwiGLU MLP, each behind its own RMSNorm."""

    def __init__(self, spec: LMSpec, layer_idx: int) -> None:
        super().__init__()
        d = spec.n_embd
        self.mixer_norm = make_norm(spec)
        self.mixer = build_mixer(spec.layers[layer_idx], MixerContext.from_spec(spec, layer_idx))
        self.mlp_norm = make_norm(spec)
        self.mlp = SwiGLU(d, spec.mlp_hidden)
        self.residual_multiplier = spec.residual_multiplier

    def forward(
        self,
        x: torch.Tensor,
        seq: SeqInfo,
        state: Any | None = None,
        shared: CrossLayer | None = None,
        keep_state: bool = True,
    ) -> tuple[torch.Tensor, Any]:
        """``keep_state=False`` (training) drops the mixer's new state: it is not returned out of the block, so a
        wrapper that hooks every output tensor (FSDP2) sees only the residual stream, not KV-cache views."""
        y, state = self.mixer(self.mixer_norm(x), seq, state, shared=shared)
        x = x + self._scale(y)
        x = x + self._scale(self.mlp(self.mlp_norm(x)))
        return x, (state if keep_state else None)

    def _scale(self, y: torch.Tensor) -> torch.Tensor:
        # A Python-constant branch: no data-dependent control flow under torch.compile.
        return y if self.residual_multiplier == 1.0 else y * self.residual_multiplier

    # ------------------------------------------------------------------ bookkeeping
    def flops_per_token(self, seq_len: int, attention: AttentionFlops = "dense") -> float:
        """Matmul FLOPs of the mixer and the MLP (norms and adds are not counted)."""
        # The TokenMixer contract only promises flops_per_token(seq_len): pass the convention only if not default.
        if attention == "dense":
            mixer_flops = self.mixer.flops_per_token(seq_len)
        else:
            mixer_flops = self.mixer.flops_per_token(seq_len, attention)
        return mixer_flops + self.mlp.flops_per_token(seq_len)

    def param_roles(self) -> dict[str, ParamRole]:
        roles: dict[str, ParamRole] = {f"{norm}.{n}": "vector" for norm in ("mixer_norm", "mlp_norm")
                                       for n, _ in getattr(self, norm).named_parameters()}
        roles.update({f"mixer.{n}": r for n, r in self.mixer.param_roles().items()})
        roles.update({f"mlp.{n}": r for n, r in self.mlp.param_roles().items()})
        return roles

    def output_projections(self) -> set[str]:
        names = {f"mixer.{n}" for n in getattr(self.mixer, "output_projections", set)()}
        return names | {f"mlp.{n}" for n in self.mlp.output_projections()}
