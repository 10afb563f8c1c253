"""The hybrid families of ArchScale as registered layer patterns (REFERENCE §2; letters as there).

=============  =========================================================  ==========  =====
family         layers 0 … L−1 (d16)                                       positions   ar
=============  =========================================================  ==========  =====
samba          (M S2048) ×8                                               RoPE        122
sambay         (M S128) ×4, M*, F, (G X) ×3                               NoPE        124
sambayda       as sambay, every attention layer differential              NoPE        124
sambayoco      (M S128) ×4, M, F, X ×6                                    NoPE        126
swayoco        S128 ×9, F, X ×6                                           RoPE        130
mambay         M ×8, M*, F, (G X) ×3                                      NoPE        120
mambay2        M2 ×8, M2*, F, (nG X) ×3                                   NoPE        120
gdny           GDN ×8, GDN*, F, (nG X) ×3                                 NoPE        120
sgdny          (GDN S128) ×4, GDN*, F, (nG X) ×3                          NoPE        126
phi4miniflash  (M dS512) ×8, M*, dF, (G dX) ×7 (d32, fixed widths)        NoPE        —
=============  =========================================================  ==========  =====

The YOCO rule (Sun et al. 2024 "You Only Cache Once"; Ren et al. 2025 "Decoder-Hybrid-Decoder Architecture",
SambaY), with h = L/2 and L divisible by 4: layers i < h are the self-decoder; layer h is the memory producer
(``M*``: exports its un-gated scan output to ``shared.memory``); layer h+1 is full attention whose K,V are the
cross-decoder's only KV cache (``share_kv``); layers i ≥ h+2 alternate a Gated Memory Unit (even i) and
cross-attention on the shared K,V (odd i), or are all cross-attention without GMUs (YOCO). nGMU (normalised GMU)
reads Mamba-2 / GDN memory. Positions are the family's for every attention layer (ArchScale's ``nope`` flag is
model-wide). Heads are d of size 128 with d/4 KV heads in every family (ArchScale's configs); the aspect ratios
make the families match the Transformer in non-embedding parameters (docs/architectures.md).

``recurrent_params`` reach every recurrent layer (e.g. a small ``d_state`` for tests); the recurrent mixers
``mamba``, ``mamba2`` and ``gdn`` are registered by their own modules and export memory through their
``export_memory`` flag.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from archscale.models.archs import DepthConfig
from archscale.models.sharing import check_shared_flow
from archscale.models.spec import LayerSpec, LMSpec
from archscale.registry import architectures


class HybridConfig(DepthConfig):
    """Depth-sized hybrid: the base sizing plus the window, positions and recurrent-layer options."""

    window: int = Field(128, ge=1, description="Window of the sliding-window attention layers.")
    positional: Literal["rope", "nope"] = Field("nope", description="Positions of every attention layer.")
    recurrent_params: dict[str, Any] = Field(
        default_factory=dict, description="Extra params of every recurrent layer (mamba / mamba2 / gdn)."
    )
    attn_bias: bool = Field(False, description="Biases on the query, value and output projections of attention.")

    # ------------------------------------------------------------------ layer makers
    def attn(self, *, window: int | None = None, share_kv: bool = False, differential: bool = False) -> LayerSpec:
        params: dict[str, Any] = {**self.heads(), "positional": self.positional}
        if window is not None:
            params["window"] = window
        if share_kv:
            params["share_kv"] = True
        if self.attn_bias:
            params.update(qv_bias=True, o_bias=True)
        return LayerSpec(mixer="diff_attention" if differential else "attention", params=params)

    def cross(self, *, differential: bool = False) -> LayerSpec:
        params: dict[str, Any] = {**self.heads(), "positional": self.positional}
        if differential:
            params["differential"] = True
        if self.attn_bias:
            params.update(qv_bias=True, o_bias=True)
        return LayerSpec(mixer="yoco_cross", params=params)

    def recurrent(self, mixer: str, *, export_memory: bool = False) -> LayerSpec:
        params = dict(self.recurrent_params)
        if export_memory:
            params["export_memory"] = True
        return LayerSpec(mixer=mixer, params=params)

    @staticmethod
    def gmu(*, normalize: bool = False) -> LayerSpec:
        return LayerSpec(mixer="gmu", params={"normalize": True} if normalize else {})


def yoco_layers(
    n_layers: int,
    self_decoder: Callable[[int], LayerSpec],
    producer: LayerSpec,
    full: LayerSpec,
    cross: LayerSpec,
    gmu: LayerSpec | None,
) -> list[LayerSpec]:
    """The YOCO rule (module docstring): ``self_decoder(i)`` for i < h, then producer, full (sharing its K,V),
    then G (even i, if ``gmu``) / X (odd i)."""
    if n_layers % 4 or n_layers < 4:
        raise ValueError(
            f"a YOCO model needs a depth divisible by 4 (h = L/2 self-decoder layers, then the memory layer, the "
            f"full-attention layer and pairs of cross-decoder layers), got depth={n_layers}"
        )
    h = n_layers // 2
    layers = [self_decoder(i) for i in range(h)] + [producer, full]
    layers += [gmu if gmu is not None and i % 2 == 0 else cross for i in range(h + 2, n_layers)]
    return check_shared_flow(layers)


# ---------------------------------------------------------------------------------------------------- families


class SambaConfig(HybridConfig):
    aspect_ratio: int = Field(122, ge=1, description="n_embd = aspect_ratio · depth.")
    window: int = Field(2048, ge=1, description="Window of the sliding-window attention layers.")
    positional: Literal["rope", "nope"] = Field("rope", description="Positions of every attention layer.")


@architectures.register("samba", config=SambaConfig)
def samba(cfg: SambaConfig) -> LMSpec:
    """Samba (Ren et al. 2024): Mamba-1 and sliding-window attention alternating, (M S2048) × d/2, RoPE."""
    mamba, swa = cfg.recurrent("mamba"), cfg.attn(window=cfg.window)
    return cfg.spec([mamba if i % 2 == 0 else swa for i in range(cfg.depth)])


class SambaYConfig(HybridConfig):
    aspect_ratio: int = Field(124, ge=1, description="n_embd = aspect_ratio · depth.")


def _sambay(cfg: HybridConfig, differential: bool) -> LMSpec:
    mamba, swa = cfg.recurrent("mamba"), cfg.attn(window=cfg.window, differential=differential)
    return cfg.spec(yoco_layers(
        cfg.depth,
        lambda i: mamba if i % 2 == 0 else swa,
        producer=cfg.recurrent("mamba", export_memory=True),
        full=cfg.attn(share_kv=True, differential=differential),
        cross=cfg.cross(differential=differential),
        gmu=cfg.gmu(),
    ))


@architectures.register("sambay", config=SambaYConfig)
def sambay(cfg: SambaYConfig) -> LMSpec:
    """SambaY (Ren et al. 2025): Samba self-decoder with SWA 128, M*, F, then (G X); NoPE."""
    return _sambay(cfg, differential=False)


@architectures.register("sambayda", config=SambaYConfig)
def sambayda(cfg: SambaYConfig) -> LMSpec:
    """SambaY-DA: SambaY with Differential Attention (Ye et al. 2024) in every attention and cross layer."""
    return _sambay(cfg, differential=True)


class SambaYOCOConfig(HybridConfig):
    aspect_ratio: int = Field(126, ge=1, description="n_embd = aspect_ratio · depth.")


@architectures.register("sambayoco", config=SambaYOCOConfig)
def sambayoco(cfg: SambaYOCOConfig) -> LMSpec:
    """Samba+YOCO: Samba self-decoder, M (no memory export), F, then only cross-attention; NoPE."""
    mamba, swa = cfg.recurrent("mamba"), cfg.attn(window=cfg.window)
    return cfg.spec(yoco_layers(
        cfg.depth, lambda i: mamba if i % 2 == 0 else swa, producer=mamba,
        full=cfg.attn(share_kv=True), cross=cfg.cross(), gmu=None,
    ))


class SWAYOCOConfig(HybridConfig):
    aspect_ratio: int = Field(130, ge=1, description="n_embd = aspect_ratio · depth.")
    positional: Literal["rope", "nope"] = Field("rope", description="Positions of every attention layer.")


@architectures.register("swayoco", config=SWAYOCOConfig)
def swayoco(cfg: SWAYOCOConfig) -> LMSpec:
    """YOCO with a sliding-window self-decoder (Sun et al. 2024): S128 × (h+1), F, X; RoPE."""
    swa = cfg.attn(window=cfg.window)
    return cfg.spec(yoco_layers(
        cfg.depth, lambda i: swa, producer=swa, full=cfg.attn(share_kv=True), cross=cfg.cross(), gmu=None,
    ))


class MambaYConfig(HybridConfig):
    aspect_ratio: int = Field(120, ge=1, description="n_embd = aspect_ratio · depth.")


def _recurrent_y(cfg: HybridConfig, mixer: str, *, swa: bool, normalize: bool) -> LMSpec:
    rnn = cfg.recurrent(mixer)
    window = cfg.attn(window=cfg.window)
    return cfg.spec(yoco_layers(
        cfg.depth,
        (lambda i: rnn if i % 2 == 0 else window) if swa else (lambda i: rnn),
        producer=cfg.recurrent(mixer, export_memory=True),
        full=cfg.attn(share_kv=True),
        cross=cfg.cross(),
        gmu=cfg.gmu(normalize=normalize),
    ))


@architectures.register("mambay", config=MambaYConfig)
def mambay(cfg: MambaYConfig) -> LMSpec:
    """MambaY: Mamba-1 self-decoder (no attention), M*, F, (G X); NoPE."""
    return _recurrent_y(cfg, "mamba", swa=False, normalize=False)


@architectures.register("mambay2", config=MambaYConfig)
def mambay2(cfg: MambaYConfig) -> LMSpec:
    """Mamba2Y: Mamba-2 self-decoder, M2*, F, (nGMU X); NoPE."""
    return _recurrent_y(cfg, "mamba2", swa=False, normalize=True)


@architectures.register("gdny", config=MambaYConfig)
def gdny(cfg: MambaYConfig) -> LMSpec:
    """GDNY: Gated DeltaNet self-decoder, GDN*, F, (nGMU X); NoPE."""
    return _recurrent_y(cfg, "gdn", swa=False, normalize=True)


class SGDNYConfig(HybridConfig):
    aspect_ratio: int = Field(126, ge=1, description="n_embd = aspect_ratio · depth.")


@architectures.register("sgdny", config=SGDNYConfig)
def sgdny(cfg: SGDNYConfig) -> LMSpec:
    """S-GDNY: (GDN S128) self-decoder, GDN*, F, (nGMU X); NoPE."""
    return _recurrent_y(cfg, "gdn", swa=True, normalize=True)


class Phi4MiniFlashConfig(HybridConfig):
    """Phi-4-mini-flash-reasoning (Ren et al. 2025): SambaY-DA at d32 with fixed widths (every field can still be
    overridden, e.g. for a tiny test model)."""

    depth: int = Field(32, ge=1, description="Number of blocks.")
    aspect_ratio: int = Field(80, ge=1, description="n_embd = 80 · 32 = 2560.")
    n_head: int | None = Field(40, ge=1, description="Query heads.")
    head_dim: int | None = Field(64, ge=2, description="Head size.")
    n_kv_head: int | None = Field(20, ge=1, description="Key/value heads.")
    vocab_size: int = Field(200064, ge=1, description="The Phi-4 (o200k-based) vocabulary.")
    block_size: int = Field(8192, ge=1, description="Training context length.")
    tie_embeddings: bool = Field(True, description="Share the input embedding with the output head.")
    norm: Literal["rmsnorm", "layernorm"] = Field("layernorm", description="Pre-norms and final norm.")
    window: int = Field(512, ge=1, description="Window of the sliding-window attention layers.")
    attn_bias: bool = Field(True, description="Biases on the query, value and output projections.")


@architectures.register("phi4miniflash", config=Phi4MiniFlashConfig)
def phi4miniflash(cfg: Phi4MiniFlashConfig) -> LMSpec:
    """(M dS512) × 8, M*, dF, (G dX) × 7: SambaY-DA with LayerNorm, q/v/o biases, tied 200 064 vocabulary."""
    return _sambay(cfg, differential=True)
