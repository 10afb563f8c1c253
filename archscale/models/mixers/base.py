"""What every built-in token mixer shares: how it is constructed, counted and initialised.

Construction (uniform for every registry entry)::

    cls = mixers.get(name)                                  # a Mixer subclass
    config = mixers.config_model(name).model_validate(params)
    mixer = cls(ctx, config)                                # ctx: MixerContext (width, depth, model defaults)

:func:`build_mixer` does exactly that from a :class:`~archscale.models.spec.LayerSpec`. ``ctx`` carries what the
model knows and the layer does not choose: d_model, the layer index and count, and the model-wide defaults of
the spec (RoPE base, attention scale, norm eps, context).

Cross-layer sharing (YOCO K,V; GMU memory) flows through the :class:`~archscale.models.api.CrossLayer` object the
model creates per forward and passes to every mixer as ``shared=``, never through ``ctx`` or module attributes.
A mixer declares what it writes and reads there (``shared_writes`` / ``shared_reads``, class-level so that a spec
can be checked without building it). By convention a config field ``export_memory: bool`` means "writes
``shared.memory``" (then ``memory_dim`` gives its width d_m) and ``share_kv: bool`` means "writes ``shared.kv``";
the base class infers the writes from those fields. Consumers (GMU, YOCO cross-attention) override
``shared_reads`` and ``example_shared`` (random shared values of the right shapes for the generic tests).

Bookkeeping is class-level so that :mod:`archscale.scaling.counting` can count a spec without building it:
``count_params(ctx, config)`` and ``count_flops(ctx, config, seq_len, attention=...)``. The instance methods of
the :class:`~archscale.models.api.TokenMixer` contract (``flops_per_token``, ``param_roles``) delegate to them
or to the module structure. ``output_projections()`` names the parameters that write into the residual stream
(scaled-down init, REFERENCE §4.6), and ``reset_parameters()`` initialises parameters that are neither matrices
nor norms (e.g. Mamba's A_log); it must touch only the module's own special parameters, since the model applies
the parametrization's init to every matrix afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel
from torch import nn

from archscale.models.api import CrossLayer, ParamRole, SeqInfo
from archscale.models.spec import LayerSpec, LMSpec

SharedKind = Literal["memory", "kv"]
"""The fields of :class:`~archscale.models.api.CrossLayer` a mixer may write or read."""

AttentionFlops = Literal["dense", "causal"]
"""How attention FLOPs are counted (2 FLOPs per multiply-add, scores QKᵀ plus weighted values AV).

dense: every query is charged for every key a dense kernel visits: all T keys for full attention (the causal mask
    is ignored), min(T, W) keys for a sliding window of W. This is the PaLM / litgpt / nanochat convention
    ("12·L·H·K·T" for forward+backward) and what ``FlopCounterMode`` reports for SDPA (math backend).
causal: only the keys a query may see: on average (T+1)/2 for full attention, mean_t min(t, W) for a window.
    What a causal flash kernel actually computes; use it for MFU.
"""


@dataclass(frozen=True)
class MixerContext:
    """What a mixer is told about its place in the model (model-wide values come from the :class:`LMSpec`)."""

    d_model: int
    layer_idx: int
    n_layers: int
    rope_base: float = 10000.0
    attn_scale: float | None = None  # None = 1/√head_dim
    norm_eps: float = 1e-5
    block_size: int = 4096
    memory_dim: int | None = None  # width d_m of shared.memory at this layer (None: no earlier layer exports it)

    @staticmethod
    def from_spec(spec: LMSpec, layer_idx: int) -> MixerContext:
        return MixerContext(
            d_model=spec.n_embd,
            layer_idx=layer_idx,
            n_layers=spec.n_layers,
            rope_base=spec.rope_base,
            attn_scale=spec.attn_scale,
            norm_eps=spec.norm_eps,
            block_size=spec.block_size,
            memory_dim=shared_memory_dim(spec, layer_idx),
        )


def shared_memory_dim(spec: LMSpec, layer_idx: int) -> int | None:
    """Width of the memory a layer finds in ``shared.memory``: that of the nearest earlier layer whose params set
    ``export_memory`` (the convention of :meth:`Mixer.shared_writes`), from its class's ``memory_dim``."""
    for j in range(layer_idx - 1, -1, -1):
        layer = spec.layers[j]
        if not layer.params.get("export_memory", False):
            continue
        cls, config = resolve_mixer(layer)
        ctx = MixerContext(
            d_model=spec.n_embd, layer_idx=j, n_layers=spec.n_layers, rope_base=spec.rope_base,
            attn_scale=spec.attn_scale, norm_eps=spec.norm_eps, block_size=spec.block_size,
        )
        dim = cls.memory_dim(ctx, config) if hasattr(cls, "memory_dim") else None
        if dim is None:
            raise ValueError(
                f"layer {j} ('{layer.mixer}') sets export_memory but its mixer does not report memory_dim(ctx, "
                "config), the width of the memory it exports"
            )
        return int(dim)
    return None


def attended_keys(seq_len: int, window: int | None, attention: AttentionFlops) -> float:
    """Average number of keys charged per query at context ``seq_len`` (see :data:`AttentionFlops`)."""
    w = seq_len if window is None else min(window, seq_len)
    if attention == "dense":
        return float(w)
    if attention == "causal":
        # query t (1-based) sees min(t, w) keys: t for t <= w, then w.
        total = w * (w + 1) / 2 + (seq_len - w) * w
        return total / seq_len
    raise ValueError(f"attention must be 'dense' or 'causal', got {attention!r}")


class Mixer(nn.Module):
    """Base class of the built-in token mixers (third-party mixers may subclass it or implement the same API)."""

    Config: ClassVar[type[BaseModel]]

    def __init__(self, ctx: MixerContext, config: BaseModel) -> None:
        super().__init__()
        self.ctx = ctx
        self.config = config

    def forward(
        self, x: torch.Tensor, seq: SeqInfo, state: Any | None = None, shared: CrossLayer | None = None
    ) -> tuple[torch.Tensor, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ cross-layer values
    @classmethod
    def shared_writes(cls, config: BaseModel) -> frozenset[SharedKind]:
        """Fields of ``shared`` this layer writes. Default: from the ``export_memory`` / ``share_kv`` config flags."""
        writes: set[SharedKind] = set()
        if getattr(config, "export_memory", False):
            writes.add("memory")
        if getattr(config, "share_kv", False):
            writes.add("kv")
        return frozenset(writes)

    @classmethod
    def shared_reads(cls, config: BaseModel) -> frozenset[SharedKind]:
        """Fields of ``shared`` this layer reads (they must be written by an earlier layer). Default: none."""
        return frozenset()

    @classmethod
    def memory_dim(cls, ctx: MixerContext, config: BaseModel) -> int | None:
        """Width d_m of the memory this layer writes to ``shared.memory`` (B, T, d_m) when it exports memory;
        None when it cannot export memory. Memory producers (Mamba-1/2, GDN) override this."""
        return None

    @classmethod
    def example_shared(
        cls,
        ctx: MixerContext,
        config: BaseModel,
        batch: int,
        seq_len: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> CrossLayer | None:
        """Random shared values a consumer reads, for a dense (batch, seq_len) input (generic tests).

        Convention the tests rely on: ``memory`` is per token (B, T, d_m), sliced like x; ``kv`` is (k, v), each
        (B, H_kv, S, K) holding every key up to the last token of x (S = T here). Default: None (reads nothing).
        """
        return None

    # ------------------------------------------------------------------ class-level bookkeeping
    @classmethod
    def example_params(cls, d_model: int) -> dict[str, Any]:
        """Small, valid params at width ``d_model`` (used by the generic mixer tests)."""
        return {}

    @classmethod
    def count_params(cls, ctx: MixerContext, config: BaseModel) -> dict[ParamRole, int]:
        """Parameters per role. Default: build the mixer on the meta device (no memory) and count by role."""
        with torch.device("meta"):
            mixer = cls(ctx, config)
        counts: dict[ParamRole, int] = {}
        params = dict(mixer.named_parameters())
        for name, role in mixer.param_roles().items():
            counts[role] = counts.get(role, 0) + params[name].numel()
        return counts

    @classmethod
    def count_flops(
        cls, ctx: MixerContext, config: BaseModel, seq_len: int, attention: AttentionFlops = "dense"
    ) -> float:
        """Forward FLOPs per token at context ``seq_len`` (2 per multiply-add)."""
        raise NotImplementedError(f"{cls.__name__} does not report its FLOPs")

    # ------------------------------------------------------------------ the TokenMixer contract
    def flops_per_token(self, seq_len: int, attention: AttentionFlops = "dense") -> float:
        return type(self).count_flops(self.ctx, self.config, seq_len, attention)

    def param_roles(self) -> dict[str, ParamRole]:
        """Roles from module structure: weights of nn.Linear are matrices, nn.Embedding tables embeddings,
        everything else (norm gains, biases, raw parameters) vector-like. Override for special cases."""
        roles: dict[str, ParamRole] = {}
        for mod_name, mod in self.named_modules():
            prefix = f"{mod_name}." if mod_name else ""
            for p_name, p in mod.named_parameters(recurse=False):
                if isinstance(mod, nn.Linear) and p is mod.weight:
                    roles[prefix + p_name] = "matrix"
                elif isinstance(mod, nn.Embedding) and p is mod.weight:
                    roles[prefix + p_name] = "embedding"
                else:
                    roles[prefix + p_name] = "vector"
        return roles

    def output_projections(self) -> set[str]:
        """Names of parameters that write into the residual stream (init std / √(2L)). Default: none."""
        return set()

    def reset_parameters(self) -> None:
        """Initialise this mixer's special (non-matrix, non-norm) parameters. Default: nothing to do."""


def resolve_mixer(layer: LayerSpec) -> tuple[type[Any], BaseModel]:
    """The registered class of a layer's mixer and its validated config."""
    from archscale.registry import mixers

    cls = mixers.get(layer.mixer)
    config = mixers.config_model(layer.mixer).model_validate(layer.params)
    return cls, config


def build_mixer(layer: LayerSpec, ctx: MixerContext) -> nn.Module:
    """Instantiate the token mixer of one layer (see the module docstring for the convention)."""
    cls, config = resolve_mixer(layer)
    return cls(ctx, config)
