"""Matplotlib, imported on demand with the non-interactive Agg backend (plots are files, runs are often headless).

Only plotting needs matplotlib (the ``plot`` extra); everything else in archscale runs without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend; a clear ImportError naming the extra when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install 'archscale[plot]'") from exc
    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 120, layout: bool = True) -> Path:
    """Lay out (unless ``layout=False``: the caller did), write (creating parent folders) and close ``fig``;
    returns the path written."""
    plt = pyplot()
    if layout:
        fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
