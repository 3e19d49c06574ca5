"""The report's cost figures: PPL against TPOT (one point per case), each sweep's PPL change and
speedup against dense along the swept parameter, and the compress sweep's amortisation curve
(TPOT, the p99 step and the prune step against R, from `streamllm.steptime`'s split). Each returns
the PNG it wrote, or None when the run holds nothing to draw."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..steptime import split_step_times
from .report_figure import label_points, pyplot, save, title
from .report_runs import Run


def plot_ppl_vs_tpot(run: Run, path: Path) -> Path | None:
    """PPL against TPOT, one point per (case, dataset), each labelled with its case."""
    rows = [r for r in run.results if r.get("ppl") and r.get("tpot_ms_mean")]
    if not rows:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 6))
    for marker, dataset in zip("os^Dv<>", sorted({r["dataset"] for r in rows}), strict=False):
        mine = [r for r in rows if r["dataset"] == dataset]
        ax.scatter([r["tpot_ms_mean"] for r in mine], [r["ppl"] for r in mine], marker=marker, label=dataset, s=40)
    ax.set_xlabel("TPOT, ms per token (whole-cycle mean, steady state)")
    ax.set_ylabel("PPL")
    ax.set_title(title(run, "PPL vs TPOT"), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    label_points(ax, [(r["tpot_ms_mean"], r["ppl"], r["case"]) for r in rows])
    return save(fig, path)


# The StrategySpec field a sweep varies: its points are drawn in that order (catalog order puts
# the default cases first, e.g. lazy-c128 before the sweep-only lazy-c64).
SWEEP_AXIS = {"window": "window", "sinks": "sink", "compress": "compress_every", "overlap": "overlap",
              "refresh": "refresh"}


def sweep_rows(run: Run, sweep: str, dataset: str) -> list[dict]:
    """The measured points of one sweep on one dataset, dense excluded, ordered along the swept
    parameter where there is one (else in run order)."""
    rows = [r for r in run.results if r["dataset"] == dataset and sweep in (r.get("sweeps") or [])
            and not r.get("skipped") and r.get("case") != "dense"]
    axis = SWEEP_AXIS.get(sweep)
    if axis:
        rows.sort(key=lambda r: (r.get("params") or {}).get(axis) or 0)  # stable: ties keep run order
    return rows


def plot_sweep(run: Run, sweep: str, dataset: str, path: Path) -> Path | None:
    """One sweep's curve: PPL change and speedup vs the dense baseline, one point per case."""
    rows = sweep_rows(run, sweep, dataset)
    if not rows:
        return None
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 1.1 * len(rows) + 2), 6), sharex=True)
    x = np.arange(len(rows))
    top.plot(x, [r.get("ppl_delta_vs_dense_pct") for r in rows], marker="o", color="C0")
    top.set_ylabel("ΔPPL % vs dense")
    bottom.plot(x, [r.get("speedup") for r in rows], marker="s", color="C1")
    bottom.set_ylabel("speedup vs dense (TPOT)")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    bottom.set_xticks(x)
    bottom.set_xticklabels([r["label"] for r in rows], rotation=30, ha="right", fontsize=7)
    top.set_title(title(run, f"sweep {sweep}, {dataset}"), fontsize=9)
    return save(fig, path)


def amortisation_rows(run: Run, dataset: str, sweep: str = "compress") -> list[dict]:
    """Per point of the compress sweep with timed steps: R and its step-time split (`steptime`)."""
    out = []
    for r in sweep_rows(run, sweep, dataset):
        times, flags = r.get("timing_step_ms"), r.get("timing_prune_flags")
        if not times or not flags or len(times) != len(flags) or any(t is None for t in times):
            continue
        cycle = int((r.get("params") or {}).get("compress_every") or 1)
        try:
            split = split_step_times(times, flags, cycle)
        except ValueError:  # fewer steps than one cycle: nothing to split
            continue
        out.append({"label": r["label"], "R": cycle, **split.to_dict()})
    return out


def plot_amortisation(run: Run, dataset: str, path: Path, sweep: str = "compress") -> Path | None:
    """The amortisation curve: TPOT, the p99 step and the prune step's own time against R (top),
    the prune step as a multiple of a normal step and its amortised share of TPOT (bottom)."""
    rows = amortisation_rows(run, dataset, sweep)
    if not rows:
        return None
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6.5), sharex=True)
    rs = np.array([row["R"] for row in rows], dtype=float)
    top.plot(rs, [row["mean_ms"] for row in rows], marker="o", label="TPOT (whole-cycle mean)")
    top.plot(rs, [row["p99_ms"] for row in rows], marker="^", label="p99 step")
    top.plot(rs, [row["median_ms"] for row in rows], marker=".", ls=":", label="median step")
    pr = [(row["R"], row["prune_ms"]) for row in rows if row["prune_ms"] is not None]
    if pr:
        top.plot(*zip(*pr, strict=True), marker="v", ls="--", label="prune step (mean)")
    dense = next((r for r in run.results if r["dataset"] == dataset and r.get("case") == "dense"
                  and r.get("tpot_ms_mean")), None)
    if dense is not None:
        top.axhline(dense["tpot_ms_mean"], color="0.5", lw=0.8, ls="--", label="dense TPOT")
    top.set_ylabel("ms per step")
    top.legend(fontsize=8)
    split = [row for row in rows if row["prune_multiple"] is not None]
    if split:
        xs = [row["R"] for row in split]
        bottom.plot(xs, [row["prune_multiple"] for row in split], marker="o", color="C3", label="prune / normal step")
        bottom.set_ylabel("prune step / normal step", color="C3")
        share = bottom.twinx()
        share.plot(xs, [100 * row["prune_share"] for row in split], marker="s", color="C2", label="prune share")
        share.set_ylabel("prune's amortised share of TPOT, %", color="C2")
    for ax in (top, bottom):
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    bottom.set_xticks(rs)
    bottom.set_xticklabels([str(int(r)) for r in rs])
    bottom.set_xlabel("R = compress_every (1 = strict)")
    top.set_title(title(run, f"amortisation of the prune, sweep {sweep}, {dataset}"), fontsize=9)
    return save(fig, path)
