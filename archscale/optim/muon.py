"""Muon on hidden matrices, AdamW on everything else: one ``torch.optim.Optimizer`` routed by parameter role.

Muon (Jordan et al. 2024, "Muon: an optimizer for hidden layers"; REFERENCE.md §5) for a weight W of shape
(m, n) = (fan_out, fan_in), gradient G, momentum β (0.95), learning rate η, decoupled weight decay λ::

    M ← β M + (1 − β) G                       (EMA momentum)
    U ← β M + (1 − β) G   (Nesterov)   or   U ← M
    O ← NewtonSchulz(U)                        (≈ the orthogonal polar factor of U; newton_schulz.py)
    W ← W (1 − η λ) − η · s(m, n) · O

Orthogonalisation is invariant to the scale of U, so the EMA form above and the "sum" form M ← β M + G give the
same update. The update scale s(m, n) (``update_scale``):

- ``"archscale"`` (v1 default): 0.4 · √max(m, n);
- ``"moonlight"``: 0.2 · √max(m, n), which makes the update's RMS match AdamW's typical 0.2–0.4, so AdamW's LR
  carries over (Liu et al. 2025, "Muon is Scalable for LLM Training");
- ``"spectral"`` (HEAD): √(fan_out / fan_in), the scale under which an orthogonal update has unit RMS→RMS operator
  norm (Bernstein & Newhouse 2024; Yang et al. 2023, "A spectral condition for feature learning");
- ``"none"``: 1.

Parameters with more than two dimensions (stacked weights such as MoE experts, shape (E, m, n)) are a batch of
matrices: each (m, n) slice is orthogonalised on its own and scaled by its own (m, n).

Routing. The optimizer receives the role groups of :func:`archscale.optim.routing.build_param_groups`: groups with
role ``"matrix"`` get Muon, every other role (embedding, head, vector) gets AdamW, computed by an inner
``torch.optim.AdamW`` over the same group dicts (so that path is torch's AdamW exactly, fused on CUDA). A group may
also name its algorithm explicitly (``"algorithm": "muon" | "adamw"``). ``overrides`` — ordered
``(fnmatch pattern on parameter names, algorithm)`` pairs, first match wins — move single parameters to the other
algorithm; they are an escape hatch for experiments, never the default. Every parameter ends up in exactly one
group (checked), and each group records its ``"algorithm"``, so logs and checkpoints say which is where.

MuonH (``hyperball=True``; REFERENCE.md §4, HEAD's HyperP): the Muon step keeps each matrix on the Frobenius
sphere it is on: with r = ‖W‖_F after decay, W ← W − η (r / ‖O‖_F) O, then W ← W · r / ‖W‖_F. η is then a relative
step size and ``update_scale`` is not used. With zero weight decay (HyperP) every matrix stays on the sphere of its
initialisation.

Distributed (FSDP2). A parameter that is a ``DTensor`` sharded along one of its two matrix dimensions has only a
slice of each matrix on every rank, but Newton–Schulz needs the whole matrix. The momentum update is elementwise and
runs on the local shards; then, with ``distributed="round_robin"`` (default), the k-th such matrix is gathered on
rank k mod W of the W ranks that shard it (FSDP2's mesh, or HSDP's shard dimension), that rank orthogonalises it
(so every rank does 1/W of the work), and scatters the result's shards back; with ``distributed="replicated"`` every rank all-gathers every matrix
(``DTensor.full_tensor()``), orthogonalises it and keeps its own shard (simplest, W× redundant work). Either way
each rank ends with its shard of exactly the update single-process Muon computes. Shards along a batch dimension of
a stacked (E, m, n) weight hold whole matrices and are orthogonalised locally. Plain tensors (single process, DDP)
are orthogonalised locally. The state (momentum buffers, AdamW moments) is made of tensors (DTensors under FSDP2)
and plain Python values, so a checkpoint loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch
import torch.distributed as dist
from pydantic import Field, field_validator

from archscale.optim.newton_schulz import CoefficientsName, coefficient_schedule, newton_schulz
from archscale.optim.optimizers import AdamWConfig, require_group_hparams
from archscale.registry import optimizers

__all__ = ["Muon", "MuonConfig", "UpdateScale", "muon", "update_scale_factor"]

Algorithm = Literal["muon", "adamw"]
UpdateScale = Literal["archscale", "moonlight", "spectral", "none"]
DistributedMode = Literal["round_robin", "replicated"]

_NS_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


# --------------------------------------------------------------------------------------------------- config
class MuonConfig(AdamWConfig):
    """Muon for role-"matrix" groups, AdamW (``betas``, ``eps``, ``fused``) for the other groups.

    Per-group LR and weight decay come from the router, as for ``adamw``."""

    momentum: float = Field(0.95, ge=0.0, lt=1.0, description="Muon momentum β (EMA of the gradient).")
    nesterov: bool = Field(True, description="Orthogonalise the Nesterov look-ahead β·M + (1 − β)·G instead of M.")
    ns_steps: int = Field(5, ge=1, le=20, description="Newton–Schulz iterations.")
    ns_coefficients: CoefficientsName | list[tuple[float, float, float]] = Field(
        "quintic",
        description=(
            "Newton–Schulz (a, b, c): 'quintic' = (3.4445, −4.7750, 2.0315) at every step (v1); 'head' = ArchScale "
            "HEAD's per-step schedule; or a list of triples, one per step (the last repeats)."
        ),
    )
    ns_dtype: Literal["bfloat16", "float32"] = Field(
        "bfloat16", description="Precision of the Newton–Schulz iteration (and of its communication under FSDP2)."
    )
    update_scale: UpdateScale = Field(
        "archscale",
        description=(
            "Multiplier of the orthogonalised update for an (m, n) matrix: 'archscale' 0.4·√max(m, n) (v1), "
            "'moonlight' 0.2·√max(m, n), 'spectral' √(m/n) (HEAD), 'none' 1. Ignored with hyperball."
        ),
    )
    hyperball: bool = Field(
        False, description="MuonH: keep each Muon matrix on its Frobenius sphere (HEAD's HyperP); LR is relative."
    )
    distributed: DistributedMode = Field(
        "round_robin",
        description=(
            "FSDP2 (DTensor) matrices: 'round_robin' = each matrix gathered on and orthogonalised by one rank in "
            "turn, shards scattered back; 'replicated' = every rank gathers and orthogonalises every matrix."
        ),
    )
    overrides: list[tuple[str, Algorithm]] = Field(
        default_factory=list,
        description=(
            "Escape hatch, not the default: ordered (fnmatch pattern on parameter names, 'muon' | 'adamw'); the "
            "first matching pattern decides a parameter's algorithm instead of its role."
        ),
    )

    @field_validator("ns_coefficients")
    @classmethod
    def _check_coefficients(cls, value: Any) -> Any:
        coefficient_schedule(value, 1)  # raises on a bad name or a non-triple
        return value


# --------------------------------------------------------------------------------------------------- helpers
def update_scale_factor(shape: Sequence[int], mode: UpdateScale) -> float:
    """s(m, n) for a weight of ``shape`` (..., m, n) = (..., fan_out, fan_in); see the module docstring."""
    m, n = int(shape[-2]), int(shape[-1])
    if mode == "archscale":
        return 0.4 * math.sqrt(max(m, n))
    if mode == "moonlight":
        return 0.2 * math.sqrt(max(m, n))
    if mode == "spectral":
        return math.sqrt(m / n)
    if mode == "none":
        return 1.0
    raise ValueError(f"Unknown update_scale {mode!r}; use archscale, moonlight, spectral or none")


def _is_dtensor(t: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return isinstance(t, DTensor)


def _local(t: torch.Tensor) -> torch.Tensor:
    """The tensor this rank holds (the shard of a DTensor; the tensor itself otherwise)."""
    return t.to_local() if _is_dtensor(t) else t


def _split_groups(param_groups: Iterable[dict[str, Any]], overrides: Sequence[tuple[str, Algorithm]]) -> list[dict]:
    """Give every group an ``"algorithm"`` (from the group, else its role), moving overridden parameters into
    groups of their own; check that every parameter is in exactly one group and Muon gets only matrices."""
    groups = list(param_groups)
    require_group_hparams(groups)
    used = [False] * len(overrides)
    out: list[dict[str, Any]] = []
    seen: dict[int, str] = {}
    for index, group in enumerate(groups):
        params = group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        label = group.get("role", f"#{index}")
        if "algorithm" in group:
            default: str = group["algorithm"]
        elif "role" in group:
            default = "muon" if group["role"] == "matrix" else "adamw"
        else:
            raise ValueError(
                f"Param group {label} has neither a 'role' nor an 'algorithm'; build groups with "
                "archscale.optim.routing.build_param_groups"
            )
        if default not in ("muon", "adamw"):
            raise ValueError(f"Param group {label}: unknown algorithm {default!r} (muon or adamw)")
        names = group.get("param_names")
        if overrides and names is None:
            raise ValueError("overrides match parameter names, but the param groups have no 'param_names'")
        names = list(names) if names is not None else [f"{label}[{i}]" for i in range(len(params))]
        if len(names) != len(params):
            raise ValueError(f"Param group {label}: {len(names)} param_names for {len(params)} params")
        chosen: dict[str, list[int]] = {"muon": [], "adamw": []}
        for i, (name, p) in enumerate(zip(names, params)):
            if id(p) in seen:
                raise ValueError(f"Parameter {name!r} is in two param groups (also as {seen[id(p)]!r})")
            seen[id(p)] = name
            algo = default
            for k, (pattern, target) in enumerate(overrides):
                if fnmatch.fnmatchcase(name, pattern):
                    algo, used[k] = target, True
                    break
            chosen[algo].append(i)
        for algo, idx in chosen.items():
            if not idx:
                continue
            new = {k: v for k, v in group.items() if k not in ("params", "param_names")}
            new["params"] = [params[i] for i in idx]
            if "param_names" in group:
                new["param_names"] = [names[i] for i in idx]
            new["algorithm"] = algo
            if algo != default:
                new["algorithm_override"] = True
            if algo == "muon":
                flat = [names[i] for i in idx if params[i].ndim < 2]
                if flat:
                    raise ValueError(
                        f"Muon orthogonalises matrices, but {', '.join(flat)} (group {label}) "
                        "has fewer than 2 dimensions; give it role 'vector' or route it to adamw"
                    )
            out.append(new)
    idle = [f"#{k} {overrides[k][0]!r}" for k in range(len(overrides)) if not used[k]]
    if idle:
        raise ValueError(f"Muon override(s) {', '.join(idle)} match no parameter (first match wins): a typo?")
    return out


def _orthogonalize_all(mats: list[torch.Tensor], steps: int, coefficients: Any, dtype: torch.dtype) -> list[torch.Tensor]:
    """newton_schulz on each tensor (..., m, n), batching tensors whose matrices have the same shape (after putting
    tall ones on their side) into one call: fewer, larger matmuls. Results come back in ``dtype``."""
    out: list[torch.Tensor | None] = [None] * len(mats)
    buckets: dict[tuple[Any, ...], list[int]] = {}
    for i, x in enumerate(mats):
        m, n = x.shape[-2:]
        buckets.setdefault((min(m, n), max(m, n), x.dtype, x.device), []).append(i)
    for (a, b, _, _), idx in buckets.items():
        views = []
        for i in idx:  # each as (k, a, b), a <= b, already in the iteration's dtype (halves the copy for bf16)
            x = mats[i].reshape(-1, *mats[i].shape[-2:])
            views.append((x.mT if x.shape[-2] > x.shape[-1] else x).to(dtype))
        batch = views[0] if len(views) == 1 else torch.cat(views)
        result = newton_schulz(batch, steps, coefficients, dtype=dtype)
        start = 0
        for i, v in zip(idx, views):
            r = result[start : start + v.shape[0]]
            start += v.shape[0]
            if mats[i].shape[-2] > mats[i].shape[-1]:
                r = r.mT
            out[i] = r.reshape(mats[i].shape)
    return out  # type: ignore[return-value]


def _chunk_sizes(size: int, parts: int) -> list[int]:
    """Sizes of ``torch.chunk(size, parts)`` padded with zeros to ``parts`` (DTensor Shard / FSDP2 layout)."""
    sizes = [c.numel() for c in torch.empty(size, device="meta").chunk(parts)]
    return sizes + [0] * (parts - len(sizes))


def _pad_to(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    if x.shape[dim] == size:
        return x.contiguous()
    shape = list(x.shape)
    shape[dim] = size
    out = x.new_zeros(shape)
    out.narrow(dim, 0, x.shape[dim]).copy_(x)
    return out


class _Job:
    """One Muon matrix (or stack of matrices) within a step."""

    __slots__ = ("param", "group", "u", "full", "result", "shard_dim", "mesh_dim", "owner", "work", "recv", "bufs")

    def __init__(self, param: torch.Tensor, group: dict[str, Any], u: torch.Tensor) -> None:
        self.param = param
        self.group = group
        self.u = u  # the local Nesterov/momentum update, to be orthogonalised
        self.full: torch.Tensor | None = None  # whole matrix this rank orthogonalises (None: another rank does)
        self.result: torch.Tensor | None = None  # orthogonalised local shard
        self.shard_dim: int | None = None  # tensor dim sharded across ranks; -1: any layout (all-gather)
        self.mesh_dim = 0  # the mesh dimension that shards it (round robin)
        self.owner = 0
        self.work: Any = None
        self.recv: torch.Tensor | None = None
        self.bufs: list[torch.Tensor] | None = None


# --------------------------------------------------------------------------------------------------- optimizer
class Muon(torch.optim.Optimizer):
    """Muon for ``"muon"`` groups and ``torch.optim.AdamW`` for ``"adamw"`` groups (see the module docstring).

    ``param_groups``: role groups (each with ``lr``, ``weight_decay`` and ``role`` or ``algorithm``). The keyword
    arguments are :class:`MuonConfig`'s fields and become defaults of every group.
    """

    def __init__(
        self,
        param_groups: Iterable[dict[str, Any]],
        *,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_coefficients: CoefficientsName | Sequence[Sequence[float]] = "quintic",
        ns_dtype: Literal["bfloat16", "float32"] = "bfloat16",
        update_scale: UpdateScale = "archscale",
        hyperball: bool = False,
        distributed: DistributedMode = "round_robin",
        overrides: Sequence[tuple[str, Algorithm]] = (),
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        fused: bool | None = None,
    ) -> None:
        groups = _split_groups(param_groups, list(overrides))
        coefficient_schedule(ns_coefficients, ns_steps)  # validate early
        if ns_dtype not in _NS_DTYPES:
            raise ValueError(f"ns_dtype must be one of {sorted(_NS_DTYPES)}, got {ns_dtype!r}")
        if distributed not in ("round_robin", "replicated"):
            raise ValueError(f"distributed must be 'round_robin' or 'replicated', got {distributed!r}")
        update_scale_factor((1, 1), update_scale)  # raises on an unknown mode
        coeffs = ns_coefficients if isinstance(ns_coefficients, str) else [tuple(map(float, t)) for t in ns_coefficients]
        defaults = dict(
            lr=groups[0]["lr"],  # never used: every group carries its own (require_group_hparams)
            weight_decay=groups[0]["weight_decay"],
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
            ns_coefficients=coeffs,
            ns_dtype=ns_dtype,
            update_scale=update_scale,
            hyperball=hyperball,
        )
        super().__init__(groups, defaults)
        self.distributed = distributed
        adamw_groups = [g for g in self.param_groups if g["algorithm"] == "adamw"]
        self._adamw: torch.optim.AdamW | None = None
        if adamw_groups:
            if fused is None:
                params = [p for g in adamw_groups for p in g["params"]]
                fused = True if all(p.device.type == "cuda" and torch.is_floating_point(p) for p in params) else None
            # The same dicts: LR schedules and load_state_dict act on them through this optimizer.
            self._adamw = torch.optim.AdamW(adamw_groups, lr=adamw_groups[0]["lr"], betas=betas, eps=eps, fused=fused)
            self._adamw.state = self.state

    # ----------------------------------------------------------------------------------------- state
    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # load_state_dict replaces param_groups and state with new objects: point the inner AdamW at them.
        inner = self.__dict__.get("_adamw")
        if inner is not None:
            inner.param_groups = [g for g in self.param_groups if g["algorithm"] == "adamw"]
            inner.state = self.state

    # ----------------------------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._adamw is not None:
            self._adamw.step()
        jobs = self._momentum([g for g in self.param_groups if g["algorithm"] == "muon"])
        if jobs:
            self._orthogonalize(jobs)
            self._apply(jobs)
        return loss

    def _momentum(self, groups: list[dict[str, Any]]) -> list[_Job]:
        """M ← lerp(M, G, 1 − β) and the Nesterov look-ahead U = lerp(G, M, β), on local shards (foreach kernels)."""
        jobs = []
        for group in groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(_local(state["momentum_buffer"]))
            grads = [_local(p.grad).to(b.dtype) for p, b in zip(params, bufs)]
            torch._foreach_lerp_(bufs, grads, 1.0 - group["momentum"])
            updates = torch._foreach_lerp(grads, bufs, group["momentum"]) if group["nesterov"] else bufs
            jobs.extend(_Job(p, group, u) for p, u in zip(params, updates))
        return jobs

    def _orthogonalize(self, jobs: list[_Job]) -> None:
        """Set ``job.result`` (the orthogonalised local shard) for every job, gathering sharded matrices."""
        gathered: list[_Job] = []
        for job in jobs:
            dtype = _NS_DTYPES[job.group["ns_dtype"]]
            p = job.param
            split = self._matrix_split(p)
            if split is None:  # whole matrices here (plain tensor, replicated, or sharded along a batch dim)
                job.full = job.u
            elif self.distributed == "round_robin" and split[0] >= 0:
                job.shard_dim, job.mesh_dim = split
                gathered.append(job)
            else:  # replicated: every rank all-gathers the whole matrix
                from torch.distributed.tensor import DTensor

                job.full = DTensor.from_local(
                    job.u.to(dtype), p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride()
                ).full_tensor()
                job.shard_dim = -1  # marks "take the local shard of the result"
        self._gather(gathered)

        by_config: dict[tuple[Any, ...], list[_Job]] = {}
        for job in jobs:
            if job.full is not None:
                g = job.group
                key = (g["ns_steps"], repr(g["ns_coefficients"]), g["ns_dtype"])
                by_config.setdefault(key, []).append(job)
        for batch in by_config.values():
            g = batch[0].group
            results = _orthogonalize_all(
                [j.full for j in batch], g["ns_steps"], g["ns_coefficients"], _NS_DTYPES[g["ns_dtype"]]
            )  # type: ignore[misc]
            for job, r in zip(batch, results):
                job.full = r
        self._scatter(gathered)

        for job in jobs:
            if job.shard_dim is None:
                job.result = job.full
            elif job.shard_dim == -1:
                from torch.distributed.tensor import distribute_tensor

                p = job.param
                job.result = distribute_tensor(job.full, p.device_mesh, p.placements, src_data_rank=None).to_local()
            job.full = None

    @staticmethod
    def _matrix_split(p: torch.Tensor) -> tuple[int, int] | None:
        """None if this rank holds whole matrices of ``p``. Else (tensor dim, mesh dim) of the split when ``p`` is a
        DTensor sharded (plain ``Shard``) along a matrix dim over exactly one mesh dimension — FSDP2, and HSDP where
        the other mesh dimension replicates — which round robin handles; (-1, -1) for any other layout that splits
        matrices (handled by all-gathering)."""
        if not _is_dtensor(p):
            return None
        from torch.distributed.tensor import Shard

        mesh, placements = p.device_mesh, p.placements
        splits = [
            (i, pl) for i, pl in enumerate(placements) if pl.is_shard() and mesh.size(i) > 1  # type: ignore[attr-defined]
        ]
        if all(pl.dim % p.ndim < p.ndim - 2 for _, pl in splits):  # type: ignore[attr-defined]
            return None
        if len(splits) == 1 and type(splits[0][1]) is Shard:
            return splits[0][1].dim % p.ndim, splits[0][0]  # type: ignore[attr-defined]
        return -1, -1

    def _gather(self, jobs: list[_Job]) -> None:
        """Round robin: the k-th matrix sharded over a process group is gathered on its rank k mod W (async, padded
        to equal shard sizes as gather needs)."""
        counters: dict[Any, int] = {}
        for job in jobs:
            p, d = job.param, job.shard_dim
            assert d is not None
            pg, world, rank = self._shard_group(job)
            job.owner = counters.get(pg, 0) % world
            counters[pg] = counters.get(pg, 0) + 1
            sizes = _chunk_sizes(p.shape[d], world)
            send = _pad_to(job.u.to(_NS_DTYPES[job.group["ns_dtype"]]), d, max(sizes))
            job.bufs = [torch.empty_like(send) for _ in range(world)] if rank == job.owner else None
            job.work = dist.gather(send, job.bufs, dst=dist.get_global_rank(pg, job.owner), group=pg, async_op=True)
        for job in jobs:
            job.work.wait()
            if job.bufs is not None:
                p, d = job.param, job.shard_dim
                sizes = _chunk_sizes(p.shape[d], len(job.bufs))  # type: ignore[arg-type]
                job.full = torch.cat([b.narrow(d, 0, s) for b, s in zip(job.bufs, sizes)], dim=d)  # type: ignore[arg-type]
            job.bufs = None

    def _scatter(self, jobs: list[_Job]) -> None:
        """Round robin, back: the owner sends each rank its shard of the orthogonalised matrix."""
        for job in jobs:
            p, d = job.param, job.shard_dim
            assert d is not None
            pg, world, rank = self._shard_group(job)
            sizes = _chunk_sizes(p.shape[d], world)
            width = max(sizes)
            shape = list(p.shape)
            shape[d] = width
            job.recv = torch.empty(shape, dtype=_NS_DTYPES[job.group["ns_dtype"]], device=job.u.device)
            chunks = None
            if rank == job.owner:
                assert job.full is not None
                full = job.full.to(job.recv.dtype)
                offsets = [sum(sizes[:i]) for i in range(world)]
                chunks = [_pad_to(full.narrow(d, o, s), d, width) for o, s in zip(offsets, sizes)]
            job.work = dist.scatter(job.recv, chunks, src=dist.get_global_rank(pg, job.owner), group=pg, async_op=True)
        for job in jobs:
            job.work.wait()
            p, d = job.param, job.shard_dim
            _, world, rank = self._shard_group(job)
            size = _chunk_sizes(p.shape[d], world)[rank]  # type: ignore[index]
            assert job.recv is not None
            job.result = job.recv.narrow(d, 0, size)  # type: ignore[arg-type]
            job.full = job.recv = job.work = None

    @staticmethod
    def _shard_group(job: _Job) -> tuple[Any, int, int]:
        """(process group, its size, this rank's index in it) of the mesh dimension that shards the job's matrix."""
        mesh, i = job.param.device_mesh, job.mesh_dim  # type: ignore[attr-defined]
        return mesh.get_group(i), mesh.size(i), mesh.get_local_rank(i)

    def _apply(self, jobs: list[_Job]) -> None:
        """W ← W (1 − η λ) − η s(m, n) O, with one foreach call per (group, scale); MuonH one matrix at a time."""
        batches: dict[tuple[int, float], list[_Job]] = {}
        for job in jobs:
            group = job.group
            if group["hyperball"]:
                self._apply_hyperball(job)
            else:
                scale = update_scale_factor(job.param.shape, group["update_scale"])
                batches.setdefault((id(group), scale), []).append(job)
        for (_, scale), batch in batches.items():
            group = batch[0].group
            lr, wd = group["lr"], group["weight_decay"]
            ws = [_local(j.param) for j in batch]
            os_ = [j.result.to(w.dtype) for j, w in zip(batch, ws)]  # type: ignore[union-attr]
            if wd != 0.0:
                torch._foreach_mul_(ws, 1.0 - lr * wd)
            torch._foreach_add_(ws, os_, alpha=-lr * scale)

    def _apply_hyperball(self, job: _Job) -> None:
        """MuonH: a step of relative size lr along O, then back onto the sphere of radius ‖W‖_F (norms over the
        whole matrix, i.e. summed over shards; each matrix of a stack on its own sphere)."""
        group, p = job.group, job.param
        lr, wd = group["lr"], group["weight_decay"]
        w = _local(p)
        assert job.result is not None
        o = job.result.to(w.dtype)
        if wd != 0.0:
            w.mul_(1.0 - lr * wd)
        eps = 1e-12
        r = self._frobenius(w, p).clamp_min(eps)
        u = self._frobenius(o, p).clamp_min(eps)
        w.sub_(o * (lr * r / u))
        w.mul_(r / self._frobenius(w, p).clamp_min(eps))

    @staticmethod
    def _frobenius(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """‖·‖_F of each whole matrix (..., m, n) of the local piece ``x`` of ``like``, summed across the ranks that
        shard it; shape (..., 1, 1) broadcastable against ``x``."""
        sq = x.float().square().sum(dim=(-2, -1), keepdim=True)
        if _is_dtensor(like):
            mesh = like.device_mesh
            for i, pl in enumerate(like.placements):
                if pl.is_shard() and mesh.size(i) > 1 and pl.dim % like.ndim >= like.ndim - 2:  # type: ignore[attr-defined]
                    dist.all_reduce(sq, group=mesh.get_group(i))
        return sq.sqrt()


# --------------------------------------------------------------------------------------------------- entry
@optimizers.register("muon", config=MuonConfig)
def muon(param_groups: list[dict[str, Any]], config: MuonConfig) -> Muon:
    """Muon on role-"matrix" groups, AdamW on the others (one optimizer; REFERENCE.md §5)."""
    require_group_hparams(param_groups)
    return Muon(param_groups, **config.model_dump())


# Read by the μP helper: under Muon the matrix LR does not shrink with width (REFERENCE.md §4.4, "with Muon
# matrices keep × 1"): the orthogonalised update already has the right spectral scale.
muon.width_independent_matrix_lr = True  # type: ignore[attr-defined]
