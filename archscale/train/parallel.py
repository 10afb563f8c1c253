"""Data parallelism through Lightning Fabric: the strategy for a recipe, and FSDP2 sharding of our models.

Model code stays single-device (torchtitan's lesson): this module alone knows about process groups and sharding.
- ``ddp``: Fabric's DDPStrategy (gloo on CPU, NCCL on GPU); every rank holds the whole model and optimizer state.
- ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``) through Fabric's ModelParallelStrategy, one
  ``fully_shard`` per residual block then the root, so that one block's parameters are all-gathered at a time.
  Parameters, gradients and optimizer state are DTensors sharded along dim 0. Under bf16 precision a
  MixedPrecisionPolicy all-gathers and computes in bf16 and reduces gradients in fp32, while the shards (the
  optimizer's master weights) stay fp32. Checkpoints are distributed (one shard per rank) and reload on any
  world size.
- ``hsdp_replicas = R > 1`` (HSDP; hybrid sharding in Zhao et al. 2023, "PyTorch FSDP"): a 2-D (replicate,
  shard) mesh of R × W/R ranks, row-major, so each group of W/R consecutive ranks (the GPUs of a node, when W/R
  is the node size) shards the model and the R groups are replicas: all-gathers and reduce-scatters stay inside
  a group, only the gradient all-reduce crosses groups.
"""

from __future__ import annotations

import os
import signal
import sys
from datetime import timedelta
from functools import partial
from typing import Any

import torch
from torch import nn


def make_strategy(
    name: str, *, accelerator: str, world_size: int, precision: str, timeout_s: float, hsdp_replicas: int = 1
) -> Any:
    """The Fabric strategy object (or name) for ``system.strategy``."""
    from lightning_fabric.strategies import DDPStrategy, ModelParallelStrategy

    timeout = timedelta(seconds=timeout_s)
    backend = "nccl" if accelerator == "cuda" else "gloo"
    if name == "auto":
        name = "ddp" if world_size > 1 else "single"
    if hsdp_replicas > 1 and name != "fsdp":
        raise ValueError(
            f"system.hsdp_replicas={hsdp_replicas} needs system.strategy=fsdp (resolved to {name!r}): HSDP is FSDP2 "
            "over a (replicate, shard) mesh; set system.strategy=fsdp or leave hsdp_replicas at 1"
        )
    if name == "single":
        return "auto"
    if name == "ddp":
        return DDPStrategy(process_group_backend=backend, timeout=timeout)
    if name == "fsdp":
        if world_size % hsdp_replicas:
            raise ValueError(
                f"system.hsdp_replicas={hsdp_replicas} must divide the world size {world_size} "
                "(system.num_devices × system.num_nodes)"
            )
        bf16 = precision.startswith("bf16")
        return ModelParallelStrategy(
            parallelize_fn=partial(fsdp2_parallelize, bf16_params=bf16, hsdp_replicas=hsdp_replicas),
            data_parallel_size=world_size,
            tensor_parallel_size=1,
            save_distributed_checkpoint=True,
            process_group_backend=backend,
            timeout=timeout,
        )
    raise ValueError(f"system.strategy={name!r}: expected auto, ddp or fsdp")


def fsdp2_parallelize(model: nn.Module, device_mesh: Any, *, bf16_params: bool, hsdp_replicas: int = 1) -> nn.Module:
    """Shard each residual block, then the root (embedding, final norm, head), with FSDP2; over a
    (replicate, shard) mesh of ``hsdp_replicas`` rows when that is > 1 (HSDP)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = device_mesh["data_parallel"]
    if hsdp_replicas > 1:
        from torch.distributed.device_mesh import init_device_mesh

        shard = mesh.size() // hsdp_replicas
        mesh = init_device_mesh(
            mesh.device_type, (hsdp_replicas, shard), mesh_dim_names=("replicate", "shard")
        )
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16_params else None
    kwargs: dict[str, Any] = {"mesh": mesh}
    if policy is not None:
        kwargs["mp_policy"] = policy
    inner = getattr(model, "_orig_mod", model)  # a torch.compile wrapper shares the blocks
    for block in inner.blocks:
        fully_shard(block, **kwargs)
    fully_shard(inner, **kwargs)
    return model


def terminate_launched_children(fabric: Any) -> None:
    """After an exception on rank 0, kill the processes Fabric's launcher started, so that none of them waits
    forever in a collective for the dead rank (a failing child is already handled by Fabric's observer)."""
    launcher = getattr(getattr(fabric, "_strategy", None), "launcher", None)
    for proc in getattr(launcher, "procs", None) or []:
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGKILL)
            except OSError:
                pass


def report_rank_failure(rank: int, world_size: int, exc: BaseException) -> None:
    if world_size > 1:
        print(f"archscale: rank {rank}/{world_size} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ
