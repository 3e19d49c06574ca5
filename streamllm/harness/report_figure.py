"""What every figure of the report shares: pyplot without a display, a figure's title (the run's
model, device and text), writing and closing a figure, labels that do not overlap, and the axes
drawing the NLL and ΔNLL figures have in common (a trace with its running mean and prune events,
an event-aligned curve's axes)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .report_runs import Run


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a CI runner
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path, dpi: int = 110) -> Path:
    """Lay out, write and close one figure (closed: a report draws many, pyplot keeps them all)."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def title(run: Run, what: str) -> str:
    m = run.data.get("model") or {}
    o = run.data.get("options") or {}
    return f"{what} — {m.get('name', '?')}, {o.get('device')} {o.get('dtype')}, {o.get('tokens')} tokens, " \
           f"S={o.get('sink')} W={o.get('window')}, {run.created}"


def label_points(ax, points: Sequence[tuple[float, float, str]], fontsize: int = 7) -> list:
    """Label each point so no two labels overlap. Cases often cluster (same cost, nearly the same
    PPL): adjustText moves the labels apart and off the markers, with a leader line back to their
    point (deterministic: it seeds its own jitter). Returns the Text artists."""
    from adjustText import adjust_text

    texts = [ax.text(x, y, label, fontsize=fontsize) for x, y, label in points]
    if texts:
        adjust_text(texts, x=[p[0] for p in points], y=[p[1] for p in points], ax=ax, expand=(1.3, 1.6),
                    arrowprops={"arrowstyle": "-", "color": "0.45", "lw": 0.5})
    return texts


def smooth(x: np.ndarray, k: int = 32) -> np.ndarray:
    if x.size < k:
        return x
    return np.convolve(x, np.ones(k) / k, mode="valid")


def draw_trace(ax, values: np.ndarray, raw_color: str = "0.8") -> None:
    """A per-token trace in grey and its 32-token running mean in blue, centred on its window."""
    ax.plot(np.arange(values.size), values, color=raw_color, lw=0.5)
    sm = smooth(values)
    ax.plot(np.arange(sm.size) + (values.size - sm.size) // 2, sm, color="C0", lw=1.2)


def mark_prunes(ax, prunes: Sequence[int]) -> None:
    """Sparse (lazy) prune events as red lines; every-step eviction as one red band."""
    if 0 < len(prunes) <= 200:
        for p in prunes:
            ax.axvline(p, color="C3", lw=0.5, alpha=0.6)
    elif prunes:
        ax.axvspan(prunes[0], prunes[-1], color="C3", alpha=0.06)


def finish_aligned(fig, ax, run: Run, path: Path, ylabel: str, what: str) -> Path:
    """The axes of a curve aligned at the prune event (0: the first prediction after eviction),
    titled and written."""
    ax.axvline(0, color="C3", lw=0.8)
    ax.set_xlabel("steps after the prune event (0 = first prediction after eviction)")
    ax.set_ylabel(ylabel)
    ax.set_title(title(run, what), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)
