"""The Trainer: runs a resolved recipe on Lightning Fabric.

Everything that can be wrong with a recipe (unknown names, bad params, data/vocabulary mismatch, an incompatible
run directory, a missing logger) is checked before the first step. During training each optimizer step
accumulates ``grad_accum_steps`` micro-batches, clips the global gradient norm, and steps AdamW (per-role groups)
and the LR schedule. A non-finite loss or gradient norm stops the run naming the step, or skips that update when
``system.on_nonfinite="skip"``; either way no checkpoint is written from a bad state. Checkpoints hold model,
optimizer, scheduler, data-loader and RNG states, so a killed run resumes exactly (same losses as uninterrupted).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning_fabric import Fabric

from archscale.recipe import Recipe, ResolvedRecipe, resolve
from archscale.train import checkpoint as ckpt
from archscale.train.parallel import make_strategy, report_rank_failure, terminate_launched_children
from archscale.train.metrics import ExternalLoggers, MetricsLog, ProgressLine, peak_flops, plot_loss_curve
from archscale.train.run_dir import check_compatible, default_run_dir, write_run_files

ROLES = ("embedding", "head", "matrix", "vector")


class NonFiniteError(FloatingPointError):
    pass


@dataclass
class FitResult:
    run_dir: Path
    steps: int
    tokens: int
    final_loss: float | None
    final_val_loss: float | None
    global_rank: int = 0  # every process returns a result; only rank 0 should report it


class Trainer:
    """Train the model a :class:`Recipe` describes. ``Trainer(recipe).fit()``; see the module docstring."""

    def __init__(self, recipe: Recipe, *, run_dir: str | Path | None = None, fabric: Fabric | None = None) -> None:
        self.recipe = recipe
        self.run_dir = Path(run_dir) if run_dir is not None else default_run_dir(recipe)
        self.fabric = fabric or _make_fabric(recipe)
        # Test hook: called as hook(step) after each optimizer step (e.g. to simulate a kill).
        self.after_step_hook: Any = None

    # ----------------------------------------------------------------------------------------- setup
    def fit(self) -> FitResult:
        """Train to the end of the budget (resuming from the latest checkpoint when there is one)."""
        self.fabric.launch()
        try:
            return self._fit()
        except BaseException as exc:
            # One failing rank must end the whole job, with the rank named, rather than leave others waiting.
            report_rank_failure(self.fabric.global_rank, self.fabric.world_size, exc)
            terminate_launched_children(self.fabric)
            raise

    def _fit(self) -> FitResult:
        fabric = self.fabric
        recipe = self.recipe
        sysc = recipe.system
        resolved = resolve(recipe, world_size=fabric.world_size)
        self.resolved = resolved
        steps = int(resolved["steps"])
        accum = int(resolved["grad_accum_steps"])
        rank0 = fabric.is_global_zero

        # Data first: a vocabulary mismatch must fail before any model is built or file written.
        from archscale.data.pipeline import open_data
        from archscale.data.varlen import seq_info_from_eos

        data = open_data(
            recipe.data,
            micro_batch_size=recipe.budget.micro_batch_size,
            seed=sysc.seed,
            rank=fabric.global_rank,
            world_size=fabric.world_size,
        )
        vocab = int(resolved["vocab_size"])
        data.check_vocab(vocab)
        if recipe.data.varlen and data.eos_id is None:
            raise ValueError("data.varlen=True needs an EOS id: set data.eos_id or use a tokenizer that defines one")

        # Run directory: refuse to mix experiments; refuse to overwrite checkpoints unless resuming.
        resume_from = self._find_resume(resolved)
        if rank0:
            write_run_files(self.run_dir, resolved, _device_names(fabric), data.tokenizer_path)
        loggers = ExternalLoggers(sysc.loggers, self.run_dir, recipe.name, resolved.model_dump(mode="json"), rank0)

        # Model and optimizer.
        from archscale.scaling.parametrization import build_model_for
        from archscale.optim.routing import build_param_groups
        from archscale.optim.schedules import lr_multiplier, make_lr_scheduler

        fabric.seed_everything(sysc.seed)
        if fabric.device.type == "cuda":
            _use_tf32(sysc.tf32)
        if sysc.strategy == "fsdp":
            model = build_model_for(recipe)  # same initial weights on every rank, then sharded by setup_module
        else:
            with fabric.init_module():
                model = build_model_for(recipe)  # init and multipliers of the parametrization
        roles = model.param_roles()
        model.activation_checkpointing = sysc.activation_checkpointing
        self.model = model
        compile_model = sysc.compile if sysc.compile is not None else fabric.device.type == "cuda"
        fmodel = fabric.setup_module(torch.compile(model) if compile_model else model)
        # The optimizer is built after sharding: under FSDP2 the parameters are then DTensors (same names).
        groups = build_param_groups(
            model,
            roles,
            lr={r: float(resolved[f"lr_{r}"]) for r in ROLES},
            weight_decay={r: float(resolved[f"wd_{r}"]) for r in ROLES},
        )
        optimizer = recipe.optimizer.entry()(groups, recipe.optimizer.config())
        schedule = lr_multiplier(
            recipe.schedule.name,
            recipe.schedule.params,
            total_steps=steps,
            warmup_steps=int(resolved["warmup_steps"]),
        )
        scheduler = make_lr_scheduler(optimizer, schedule)
        optimizer = fabric.setup_optimizers(optimizer)

        state: dict[str, Any] = {
            "model": model,
            "optimizer": optimizer,
            "scheduler": {},  # plain state (Fabric's sharded save restores only modules and optimizers)
            "step": 0,
            "tokens": 0,
            "data": {},
            "rng": {},
        }
        start_step = 0
        metrics = MetricsLog(self.run_dir, enabled=rank0)
        if resume_from is not None:
            ckpt.load_checkpoint(fabric, resume_from, state)
            scheduler.load_state_dict(state["scheduler"])
            data.train.load_state_dict(state["data"])
            _set_rng_state(state["rng"])
            start_step = int(state["step"])
            metrics.truncate_after(start_step)
            if rank0:
                print(f"resumed from {resume_from} at step {start_step}")
        elif rank0:
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)

        # ----------------------------------------------------------------------------------- loop
        tokens_per_step = int(resolved["global_batch_tokens"])
        flops_per_token = float(resolved["train_flops_per_token"])
        peak = peak_flops(torch.cuda.get_device_name(fabric.device)) if fabric.device.type == "cuda" else None
        progress = ProgressLine(steps, enabled=rank0 and sysc.progress)
        progress.start(start_step)
        if rank0:
            n = resolved["N_no_input_embedding"]
            progress.message(
                f"training {recipe.model.name} ({n / 1e6:.2f}M params) for {steps} steps × {tokens_per_step} tokens "
                f"on {fabric.world_size}× {fabric.device.type} → {self.run_dir}"
            )
        device = fabric.device
        last_loss: float | None = None
        last_val: float | None = None
        t_last = time.perf_counter()
        excluded = 0.0  # seconds spent validating and saving since t_last: tok/s measures training only
        tokens_since = 0
        skipped = 0
        step = start_step
        fmodel.train()
        if start_step == 0 and data.val is not None:  # the curve starts at the untrained model
            initial_val = self._validate(fmodel, data, seq_info_from_eos)
            initial = {"step": 0, "tokens": 0, "val_loss": initial_val}
            metrics.write(initial)
            loggers.log(initial)
            progress.message(f"step 0: validation loss {initial_val:.4f}")
        try:
            for step in range(start_step, steps):
                loss_sum = torch.zeros((), device=device)
                for micro in range(accum):
                    batch = next(data.train).to(device, non_blocking=True)
                    inputs, targets = batch[:, :-1], batch[:, 1:]
                    seq = seq_info_from_eos(inputs, data.eos_id) if recipe.data.varlen else None
                    if seq is not None:
                        targets = targets.reshape(1, -1)
                        inputs = inputs.reshape(1, -1)
                    with fabric.no_backward_sync(fmodel, enabled=micro < accum - 1):
                        out = fmodel(inputs, seq, targets=targets)
                        fabric.backward(out.loss / accum)  # the objective: cross-entropy (+ z-loss if set)
                    loss_sum += out.ce_loss.detach()  # reported: the cross-entropy alone, comparable across runs
                loss_mean = fabric.all_reduce(loss_sum / accum, reduce_op="mean")
                grad_norm = self._clip(fmodel, optimizer)
                lr_used = {g.get("role", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)}
                finite = bool(torch.isfinite(loss_mean)) and bool(torch.isfinite(grad_norm))
                if not finite:
                    what = f"loss {float(loss_mean):.4g}, grad norm {float(grad_norm):.4g}"
                    if sysc.on_nonfinite == "stop":
                        raise NonFiniteError(
                            f"Non-finite values at step {step + 1} ({what}); stopped without checkpointing this "
                            f"state. Lower optimizer.lr, check the data, or set system.on_nonfinite='skip'."
                        )
                    skipped += 1
                    optimizer.zero_grad(set_to_none=True)
                    progress.message(f"step {step + 1}: skipped update ({what})")
                else:
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                state["step"] = step + 1
                state["tokens"] += tokens_per_step
                tokens_since += tokens_per_step
                last_loss = float(loss_mean)
                done = step + 1

                record: dict[str, Any] | None = None
                if done % sysc.log_every == 0 or done == steps:
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    now = time.perf_counter()
                    tok_s = tokens_since / max(now - t_last - excluded, 1e-9)
                    t_last, tokens_since, excluded = now, 0, 0.0
                    record = {
                        "step": done,
                        "tokens": state["tokens"],
                        "loss": last_loss,
                        "lr": lr_used.get("matrix", next(iter(lr_used.values()))),
                        "lr_by_role": lr_used,
                        "grad_norm": float(grad_norm),
                        "tok_per_s": tok_s,
                    }
                    if peak:
                        record["mfu"] = flops_per_token * tok_s / (peak * fabric.world_size)
                    if device.type == "cuda":
                        record["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                    if skipped:
                        record["skipped_steps"] = skipped
                    progress.update(done, state["tokens"], last_loss, tok_s)
                if data.val is not None and (done % sysc.val_every == 0 or done == steps):
                    t_val = time.perf_counter()
                    last_val = self._validate(fmodel, data, seq_info_from_eos)
                    excluded += time.perf_counter() - t_val
                    record = record or {"step": done, "tokens": state["tokens"]}
                    record["val_loss"] = last_val
                    progress.message(f"step {done}: validation loss {last_val:.4f}")
                if record is not None:
                    metrics.write(record)
                    loggers.log(record)
                if done % sysc.checkpoint_every == 0 or (done == steps and sysc.save_final_checkpoint):
                    state["scheduler"] = scheduler.state_dict()
                    state["data"] = data.train.state_dict()
                    state["rng"] = _get_rng_state()
                    t_save = time.perf_counter()
                    ckpt.save_checkpoint(fabric, self.run_dir, done, state, keep=sysc.keep_checkpoints)
                    excluded += time.perf_counter() - t_save
                if self.after_step_hook is not None:
                    self.after_step_hook(done)
        finally:
            loggers.close()
        if rank0:
            plot = plot_loss_curve(self.run_dir, title=f"{recipe.name}: {recipe.model.name}")
            summary = f"done: {steps} steps, {state['tokens']:,} tokens, final train loss {last_loss:.4f}"
            if last_val is not None:
                summary += f", validation loss {last_val:.4f}"
            progress.message(summary + (f"; loss curve {plot}" if plot else ""))
        return FitResult(self.run_dir, steps, int(state["tokens"]), last_loss, last_val, fabric.global_rank)

    # ----------------------------------------------------------------------------------------- helpers
    def _find_resume(self, resolved: ResolvedRecipe) -> Path | None:
        resume = self.recipe.system.resume
        existing = ckpt.latest_checkpoint(self.run_dir)
        if resume == "never":
            if existing is not None:
                raise ckpt.CheckpointError(
                    f"{self.run_dir} already has checkpoints (latest {existing.name}) and system.resume='never'. "
                    "Choose another --out directory, delete the old run, or resume with system.resume=auto."
                )
            check_compatible(self.run_dir, resolved)
            return None
        check_compatible(self.run_dir, resolved)
        if resume == "auto":
            return existing
        path = Path(resume)
        if not path.exists():
            raise ckpt.CheckpointError(f"system.resume={resume!r}: no such checkpoint file")
        return path

    def _clip(self, model: Any, optimizer: Any) -> torch.Tensor:
        """Clip to optimizer.grad_clip and return the global gradient norm (over all shards and ranks);
        without clipping an infinite threshold still measures the norm the same way."""
        clip = self.recipe.optimizer.grad_clip
        max_norm = float("inf") if clip is None else clip
        norm = self.fabric.clip_gradients(model, optimizer, max_norm=max_norm, error_if_nonfinite=False)
        assert norm is not None
        norm = norm.detach()
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    @torch.no_grad()
    def _validate(self, model: Any, data: Any, seq_info_from_eos: Any) -> float:
        model.eval()
        total = torch.zeros((), device=self.fabric.device)
        count = 0
        for batch in data.val.batches(self.recipe.system.val_batches):
            batch = batch.to(self.fabric.device)
            inputs, targets = batch[:, :-1], batch[:, 1:]
            seq = None
            if self.recipe.data.varlen:
                seq = seq_info_from_eos(inputs, data.eos_id)
                inputs, targets = inputs.reshape(1, -1), targets.reshape(1, -1)
            total += model(inputs, seq, targets=targets).ce_loss.float()
            count += 1
        model.train()
        return float(self.fabric.all_reduce(total / max(count, 1), reduce_op="mean"))


def _use_tf32(enabled: bool) -> None:
    """Whether float32 products on CUDA may use TF32 (matrix products and cuDNN convolutions). Set in each process
    (the flags are per process). The benchmarks measure with TF32 on (benchmarks/train_throughput.py), and GDN's
    Triton state pass runs only where it is on (archscale/kernels/delta_rule/state_pass.py)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def _make_fabric(recipe: Recipe) -> Fabric:
    s = recipe.system
    if s.device == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        accelerator = s.device
    if accelerator == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("system.device='cuda' but no CUDA device is visible; use system.device=cpu or auto")
    precision = s.precision
    if precision == "auto":
        precision = "bf16-mixed" if accelerator == "cuda" else "32-true"
    # Under fsdp, bf16-mixed keeps Fabric's autocast and adds FSDP2's MixedPrecisionPolicy (bf16 all-gathers and
    # compute, fp32 reduction); the sharded parameters, which the optimizer updates, stay fp32. ("bf16-true" would
    # make Fabric cast the whole model to bf16 first, leaving no fp32 master weights.)
    world = s.num_devices * s.num_nodes
    strategy = make_strategy(
        s.strategy, accelerator=accelerator, world_size=world, precision=precision, timeout_s=s.dist_timeout_s,
        hsdp_replicas=s.hsdp_replicas,
    )
    return Fabric(
        accelerator=accelerator, devices=s.num_devices, num_nodes=s.num_nodes, strategy=strategy, precision=precision
    )


def _device_names(fabric: Fabric) -> list[str]:
    if fabric.device.type == "cuda":
        return [torch.cuda.get_device_name(fabric.device)] * fabric.world_size
    return [f"cpu ({torch.get_num_threads()} threads)"] * fabric.world_size


def _get_rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "numpy": np.random.get_state()[1].tolist(),
        "numpy_pos": int(np.random.get_state()[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    if not state:
        return
    random.setstate((state["python_version"], tuple(state["python"]), None))
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

