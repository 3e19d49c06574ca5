"""The TPOT trend: each row of the run history drawn relative to its own baseline, with the band the
absolute check applies to it.

It reads the history the absolute check reads (`history/<fingerprint>/`, streamllm.harness.history)
and nothing else, and rebuilds for every past run the baseline and band `judge_history.check_history`
used when that run was judged: the last K accepted runs before it *of the same library versions*
(history_runs.VERSION_FIELDS), pooled; the band `verdicts.robust_band` of their run medians (median/MAD,
floored); a point's ratio is its median over the pooled baseline's median, as the check's. A band
a MUST_CATCH-fold slowdown stays inside is "not checked" (the check could not fail): such points
are drawn without a band and the panel says so.

One small panel per row, each on its own y-scale around its baseline (1.0), spanning its band and
its points, so a 10 % step shows on a quiet row however wide another row's band is. A point far
outside its row's window (a disturbed run, a 3x regression) is drawn at the panel's edge as a
triangle and labelled with its value, so it cannot flatten the rest of the row.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from .history import RunHistory
from .history_runs import REFERENCE_SUFFIX, Run, version_set
from .history_verdict import judge
from .verdicts import (
    FALLBACK_BAND,
    HISTORY_RUNS_NEEDED,
    IMPROVEMENT,
    MUST_CATCH,
    NOT_CHECKED,
    REGRESSION,
    robust_band,
)

# A panel's window: at least ±MIN_HALF_SPAN around the baseline, else twice the widest band it
# draws; points beyond it are clamped to its edge (and labelled). A row without a checked band
# is shown up to MUST_CATCH.
MIN_HALF_SPAN = 0.25
PAD = 0.06  # of the span, above and below


@dataclass(frozen=True)
class TrendPoint:
    run: int
    ratio: float | None  # median / pooled baseline median (None: no baseline of these versions yet)
    band: float  # relative half-width of the check's band (robust_band of the baseline's run medians)
    flagged: bool  # re-judged against this baseline and band: a regression or an improvement
    accepted: bool
    checked: bool = True  # False: the band lets a MUST_CATCH-fold slowdown pass (the check said "not checked")
    baseline_runs: tuple[int, ...] = ()
    versions: tuple | None = None  # (torch, transformers) of the run; None: not stored

    @property
    def low(self) -> float:
        return 1.0 / (1.0 + self.band)

    @property
    def high(self) -> float:
        return 1.0 + self.band


def trend(runs: list[Run], case: str, k: int = 5, floor: float = FALLBACK_BAND) -> list[TrendPoint]:
    """The row's points, oldest first. A point's baseline and band are the ones `check_history`
    applied to that run: the last `k` accepted runs before it with the same library versions
    (at least HISTORY_RUNS_NEEDED, else no ratio), `robust_band` of their medians with `floor` as
    the fallback (the run's --tpot-tolerance)."""
    points: list[TrendPoint] = []
    for i, run in enumerate(runs):
        entry = run.cases.get(case)
        if entry is None or not entry.samples:
            continue
        versions = version_set(run.fingerprint)
        same = [r for r in runs[:i] if versions is not None and version_set(r.fingerprint) == versions
                and r.case_accepted(case)][-k:]
        flagged = False
        numbers = tuple(r.number for r in same)
        if len(same) < HISTORY_RUNS_NEEDED:
            points.append(TrendPoint(run.number, None, floor, flagged, run.case_accepted(case), True, numbers,
                                     versions))
            continue
        medians = [statistics.median(r.cases[case].samples) for r in same]
        pooled = [s for r in same for s in r.cases[case].samples]
        band = robust_band(medians, fallback=floor).width
        ratio = statistics.median(entry.samples) / statistics.median(pooled)
        # the history stores no verdicts: a point is flagged by judging its samples as the check did
        flagged = judge(entry.samples, pooled, band, case=case).raw in (REGRESSION, IMPROVEMENT)
        points.append(TrendPoint(run.number, ratio, band, flagged, run.case_accepted(case),
                                 1.0 + band < MUST_CATCH, numbers, versions))
    return points


def rows(runs: list[Run]) -> list[str]:
    return sorted({c for r in runs for c in r.cases if not c.endswith(REFERENCE_SUFFIX)})


@dataclass(frozen=True)
class Panel:
    """What one row's panel shows: its y-limits, the window points are clamped to, its title."""

    ylim: tuple[float, float]
    window: tuple[float, float]
    title: str
    checked: bool  # the latest point's band is a check


def panel(name: str, points: list[TrendPoint]) -> Panel:
    """The row's own scale: the band of every checked point, 1.0, and every point within the
    window (twice the widest band drawn, at least ±MIN_HALF_SPAN; MUST_CATCH for a row without a
    checked band), padded."""
    shown = [p for p in points if p.ratio is not None]
    bands = [p.band for p in shown if p.checked]
    half = max(MIN_HALF_SPAN, 2.0 * max(bands)) if bands else MUST_CATCH - 1.0
    window = (1.0 / (1.0 + half), 1.0 + half)
    values = [1.0, *(min(max(p.ratio, window[0]), window[1]) for p in shown)]
    values += [edge for p in shown if p.checked for edge in (p.low, p.high)]
    lo, hi = min(values), max(values)
    pad = PAD * max(hi - lo, 0.02)
    last = shown[-1] if shown else None
    latest = points[-1] if points else None
    if latest is not None and latest.ratio is None:  # the latest run had no baseline of its versions
        title = (f"{name}\nhistory building ({len(latest.baseline_runs)}/{HISTORY_RUNS_NEEDED} accepted runs "
                 "of its versions)")
    elif last is None:
        title = f"{name}\nhistory building"
    elif last.checked:
        title = f"{name}\n{last.ratio - 1:+.1%} (band ±{last.band:.1%})"
    else:
        title = f"{name}\n{last.ratio - 1:+.1%}, {NOT_CHECKED} (band ±{last.band:.0%}: {MUST_CATCH:g}x would pass)"
    return Panel((lo - pad, hi + pad), window, title, last is not None and last.checked)


def draw_trend(runs: list[Run], fingerprint_id: str, k: int = 5, floor: float = FALLBACK_BAND):
    """The figure of small multiples (one per row, own y-scale); None without rows."""
    names = rows(runs)
    if not names:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(names))
    nrows = -(-len(names) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 2.5 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        points = trend(runs, name, k, floor)
        _draw_row(ax, name, points)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.supylabel("median TPOT / baseline median (each row its own scale)", fontsize=8)
    fig.supxlabel(f"history run ({fingerprint_id}); grey: the history check's band (median/MAD of the last {k} "
                  f"accepted runs of the same versions); x: flagged; hollow: kept out of the baseline; "
                  f"dotted: library versions changed", fontsize=7)
    fig.tight_layout()
    return fig


def _draw_row(ax, name: str, points: list[TrendPoint]) -> None:
    shown = [p for p in points if p.ratio is not None]
    view = panel(name, points)
    for prev, p in zip(points, points[1:], strict=False):  # a version change re-bases the baseline
        if p.versions != prev.versions:
            ax.axvline(p.run - 0.5, color="0.4", lw=0.7, ls=":")
    if shown:
        x = [p.run for p in shown]
        checked = [p.checked for p in shown]
        ax.fill_between(x, [p.low for p in shown], [p.high for p in shown], where=checked, step="mid",
                        color="0.85", label="band", interpolate=False)
        lo, hi = view.window
        y = [min(max(p.ratio, lo), hi) for p in shown]
        ax.plot(x, y, "-", color="0.5", lw=0.8)
        previous = None
        for p, yy in zip(shown, y, strict=True):
            clamped = yy != p.ratio
            marker = ("^" if p.ratio > hi else "v") if clamped else ("x" if p.flagged else "o")
            color = "tab:red" if p.flagged else "tab:blue" if p.checked else "0.55"
            ax.plot(p.run, yy, marker, color=color, ms=5 if (p.flagged or clamped) else 3,
                    mfc="none" if not p.accepted else None)
            if clamped and previous != yy:  # one label per stretch at an edge: its first value
                ax.annotate(f"{p.ratio:.2f}x", (p.run, yy), fontsize=6, ha="center",
                            va="top" if p.ratio > hi else "bottom", xytext=(0, -4 if p.ratio > hi else 4),
                            textcoords="offset points")
            previous = yy if clamped else None
        if not view.checked:
            ax.text(0.02, 0.95, f"{NOT_CHECKED}: band ±{shown[-1].band:.0%} lets {MUST_CATCH:g}x pass",
                    transform=ax.transAxes, fontsize=7, va="top", color="tab:red")
    ax.axhline(1.0, color="k", lw=0.5)
    ax.set_ylim(*view.ylim)
    ax.set_title(view.title, fontsize=7)
    ax.tick_params(labelsize=7)
    ax.yaxis.set_major_formatter(_ratio_formatter())


def _ratio_formatter():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _: f"{v:.2f}" if math.isfinite(v) else "")


def plot_trend(history_root: str | Path, fingerprint_id: str, path: Path, k: int = 5,
               floor: float = FALLBACK_BAND) -> Path | None:
    """Small multiples of every row's trend in this machine's history; None if it has no runs."""
    runs = RunHistory(history_root, fingerprint_id).runs()
    fig = draw_trend(runs, fingerprint_id, k, floor)
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
