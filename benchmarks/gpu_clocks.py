"""The GPU's SM clock, power draw and temperature while a benchmark runs, sampled by ``nvidia-smi``.

An H100 SXM running dense bf16 products sits at its power limit and lowers its clock to stay there, so the same
cuBLAS kernel can take different times in two models of one process when one keeps the card busier with products
than the other. Throughput comparisons therefore report the clock and power they ran at. ``nvidia-smi`` is used
rather than NVML bindings (``torch.cuda.clock_rate`` needs pynvml, absent on the lent machine); where it is
missing, the summary is empty and the benchmark runs as before.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
from types import TracebackType

QUERY = "clocks.sm,power.draw,temperature.gpu"


def parse_samples(text: str) -> list[tuple[float, float, float]]:
    """(SM MHz, W, °C) per line of ``nvidia-smi --format=csv,noheader,nounits`` output; unreadable lines skipped."""
    samples = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        try:
            mhz, watts, celsius = (float(f) for f in fields)
        except ValueError:  # "[N/A]", a header, a partial last line
            continue
        samples.append((mhz, watts, celsius))
    return samples


def summarize(samples: list[tuple[float, float, float]]) -> dict[str, float]:
    if not samples:
        return {}
    mhz, watts, celsius = zip(*samples)
    return {"sm_clock_mhz": round(statistics.median(mhz)), "sm_clock_min_mhz": round(min(mhz)),
            "power_w": round(statistics.median(watts)), "temp_c": round(max(celsius)), "clock_samples": len(mhz)}


class ClockSampler:
    """``with ClockSampler() as c: ...`` then ``c.summary()``: median SM clock and power over the block."""

    def __init__(self, enabled: bool = True, period_ms: int = 100, device: int | str | None = None) -> None:
        self.period_ms = period_ms
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
        self.device = device if device is not None else (visible if visible.isdigit() else "0")
        self.enabled = enabled and shutil.which("nvidia-smi") is not None
        self._proc: subprocess.Popen[str] | None = None
        self._text = ""

    def __enter__(self) -> ClockSampler:
        if self.enabled:
            self._proc = subprocess.Popen(
                ["nvidia-smi", f"--query-gpu={QUERY}", "--format=csv,noheader,nounits", f"-lms={self.period_ms}",
                 f"--id={self.device}"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._text, _ = self._proc.communicate(timeout=10)
            self._proc = None

    def summary(self) -> dict[str, float]:
        return summarize(parse_samples(self._text))
