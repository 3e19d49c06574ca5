"""The TPOT trend: each row of the run history drawn relative to its own baseline, with its band.

It reads the history the absolute check reads (`history/<fingerprint>/`, streamllm.harness.history)
and nothing else. For every run, a row's point is its median over the median of the accepted runs
before it (the last K, as the check pools them), and the shaded band is that baseline's A/A band
(`verdicts.aa_band`). One small panel per row, on one ratio scale, so a reader sees at a glance
which row moved and by how much against its own noise.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from .history import REFERENCE_SUFFIX, Run, RunHistory, judge
from .verdicts import FALLBACK_BAND, IMPROVEMENT, MIN_AA_RUNS, REGRESSION, aa_band


@dataclass(frozen=True)
class TrendPoint:
    run: int
    ratio: float | None  # median / baseline median (None: no baseline yet)
    band: float
    flagged: bool  # re-judged against this baseline and band: a regression or an improvement
    accepted: bool


def trend(runs: list[Run], case: str, k: int = 5) -> list[TrendPoint]:
    """The row's points, oldest first; a point's baseline is the last `k` accepted runs before it.
    The history stores no verdicts, so a point is flagged by judging its samples against the pooled
    samples of that baseline with the band drawn (history.judge)."""
    points: list[TrendPoint] = []
    accepted: list[tuple[float, ...]] = []  # samples of each accepted run, oldest first
    for run in runs:
        entry = run.cases.get(case)
        if entry is None or not entry.samples:
            continue
        median = statistics.median(entry.samples)
        base = accepted[-k:]
        medians = [statistics.median(b) for b in base]
        band = aa_band(medians, fallback=FALLBACK_BAND).width
        ratio, flagged = None, False
        if len(base) >= MIN_AA_RUNS:
            ratio = median / statistics.median(medians)
            flagged = judge(entry.samples, [s for b in base for s in b], band, case=case).raw in (REGRESSION,
                                                                                                IMPROVEMENT)
        points.append(TrendPoint(run.number, ratio, band, flagged, run.case_accepted(case)))
        if run.case_accepted(case):
            accepted.append(entry.samples)
    return points


def rows(runs: list[Run]) -> list[str]:
    return sorted({c for r in runs for c in r.cases if not c.endswith(REFERENCE_SUFFIX)})


def plot_trend(history_root: str | Path, fingerprint_id: str, path: Path, k: int = 5) -> Path | None:
    """Small multiples of every row's trend in this machine's history; None if it has no runs."""
    runs = RunHistory(history_root, fingerprint_id).runs()
    names = rows(runs)
    if not names:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(names))
    nrows = -(-len(names) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.2 * nrows), sharey=True, squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        points = [p for p in trend(runs, name, k) if p.ratio is not None]
        if points:
            x = [p.run for p in points]
            hi = [1 + p.band for p in points]
            ax.fill_between(x, [1 / h for h in hi], hi, step="mid", color="0.85", label="band")
            ax.plot(x, [p.ratio for p in points], "-", color="0.5", lw=0.8)
            for p in points:
                ax.plot(p.run, p.ratio, "x" if p.flagged else "o", color="tab:red" if p.flagged else "tab:blue",
                        ms=5 if p.flagged else 3, mfc="none" if not p.accepted else None)
            last = points[-1]
            ax.set_title(f"{name}: {last.ratio - 1:+.1%} (band ±{last.band:.0%})", fontsize=8)
        else:
            ax.set_title(f"{name}: history building", fontsize=8)
        ax.axhline(1.0, color="k", lw=0.5)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.supylabel("median TPOT / baseline median", fontsize=8)
    fig.supxlabel(f"history run ({fingerprint_id}); x: flagged, hollow: kept out of the baseline", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
