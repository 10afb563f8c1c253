"""What a run reports: ``metrics.jsonl``, the live progress line, optional loggers, and the loss-curve plot."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from archscale.plotting import pyplot, save_figure

METRICS_FILE = "metrics.jsonl"
LOSS_PLOT_FILE = "loss.png"

# Dense bf16 tensor-core peak (FLOP/s) by device-name substring, for MFU. Unknown devices report no MFU.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "4090": 165e12}


def peak_flops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_FLOPS.items():
        if key in device_name:
            return value
    return None


class MetricsLog:
    """Append-only JSON-lines log of metrics; on resume, lines after the resumed step are dropped so that a
    killed-and-resumed run leaves the same file as an uninterrupted one."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(self.path)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record, default=_jsonable) + "\n")

    def read(self) -> list[dict[str, Any]]:
        return read_metrics(self.path.parent)


def read_metrics(run_dir: Path | str) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    return str(x)


class ProgressLine:
    """One line per report: step, tokens, loss, tok/s, ETA. Rewritten in place on a terminal."""

    def __init__(self, total_steps: int, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.total = total_steps
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.t0 = time.perf_counter()
        self.start_step = 0

    def start(self, step: int) -> None:
        self.start_step = step
        self.t0 = time.perf_counter()

    def update(self, step: int, tokens: int, loss: float, tok_per_s: float, extra: str = "") -> None:
        if not self.enabled:
            return
        done = step - self.start_step
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / done * (self.total - step) if done > 0 else float("nan")
        width = len(str(self.total))
        line = (
            f"step {step:>{width}}/{self.total}  tokens {_si(tokens)}  loss {loss:.4f}  "
            f"{_si(tok_per_s)} tok/s  ETA {_duration(eta)}{extra}"
        )
        if self.tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line that must stay visible (validation, checkpoint, warnings)."""
        if not self.enabled:
            return
        self.stream.write(("\r\033[K" if self.tty else "") + text + "\n")
        self.stream.flush()


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def plot_loss_curve(run_dir: Path, title: str = "") -> Path | None:
    """Write ``loss.png`` (train and validation loss vs tokens) if matplotlib is installed; return its path."""
    try:
        plt = pyplot()
    except ImportError:
        return None
    records = read_metrics(run_dir)
    train = [(r["tokens"], r["loss"]) for r in records if "loss" in r]
    val = [(r["tokens"], r["val_loss"]) for r in records if "val_loss" in r]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", lw=1.5, ms=4)
    ax.set_xlabel("tokens")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, Path(run_dir) / LOSS_PLOT_FILE)


class ExternalLoggers:
    """TensorBoard and/or Weights & Biases, when the recipe asks for them (checked before training starts)."""

    def __init__(self, names: list[str], run_dir: Path, run_name: str, config: dict[str, Any], enabled: bool) -> None:
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        for name in names:
            if name == "tensorboard":
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError as exc:
                    raise ImportError("system.loggers has 'tensorboard' but it is not installed: pip install tensorboard") from exc
                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
            elif name == "wandb":
                try:
                    import wandb
                except ImportError as exc:
                    raise ImportError("system.loggers has 'wandb' but it is not installed: pip install wandb") from exc
                self._wandb = wandb.init(name=run_name, dir=str(run_dir), config=config, resume="allow")

    def log(self, record: dict[str, Any]) -> None:
        step = record["step"]
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
