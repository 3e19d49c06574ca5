"""The report's NLL figures: per-token NLL and ΔNLL against dense with the prune events marked,
their means aligned at the event, and phase A's diagnostics (NLL, KV length and step time of one
result). Each returns the PNG it wrote, or None when the run holds nothing to draw."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import spikes as spike_metrics
from .report_figure import draw_trace, finish_aligned, mark_prunes, pyplot, save, title
from .report_runs import Run, _fmt
from .report_spikes import delta_traces, diagnosed, floats, isolated


def plot_nll(run: Run, dataset: str, path: Path) -> Path | None:
    rows = [r for r in run.results if r["dataset"] == dataset and r.get("trace") and not r.get("skipped")]
    if not rows:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 1.5 + 1.3 * len(rows)), sharex=True, squeeze=False)
    for ax, r in zip(axes[:, 0], rows, strict=True):
        nll = floats(r["trace"]["nll"])
        prunes = r["trace"].get("prune_steps") or []
        draw_trace(ax, nll)
        mark_prunes(ax, prunes)
        ax.set_ylabel("NLL", fontsize=8)
        ax.text(0.005, 0.95, f"{r['label']}  PPL {_fmt(r.get('ppl'), '.3f')}  prunes {len(prunes)}",
                transform=ax.transAxes, fontsize=8, va="top")
    axes[-1, 0].set_xlabel("decode step t (scores x_{t+1}); red: prune events (band: every step)")
    fig.suptitle(title(run, f"per-token NLL, {dataset} (grey raw, blue 32-token mean)"), fontsize=9)
    return save(fig, path, dpi=100)


def plot_nll_aligned(run: Run, dataset: str, path: Path, before: int = 16, after: int = 32) -> Path | None:
    """Mean NLL around prune events, aligned at the event (`spikes.aligned_mean`; the exploration
    log's phase A picture, docs/findings.md#spikes)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    drawn = 0
    for r in run.results:
        if r["dataset"] != dataset or not r.get("trace"):
            continue
        prunes = r["trace"].get("prune_steps") or []
        if not isolated(prunes):
            continue
        nll = floats(r["trace"]["nll"])
        curve = spike_metrics.aligned_mean(nll, prunes, before=before, after=after)
        if curve is None:
            continue
        events = sum(1 for e in prunes if e + 1 - before >= 0 and e + 1 + after <= nll.size)
        ax.plot(np.arange(-before, after), curve, label=f"{r['label']} ({events} events)")
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    return finish_aligned(fig, ax, run, path, "mean NLL over events", f"NLL around prune events, {dataset}")


def plot_nll_delta(run: Run, dataset: str, path: Path) -> Path | None:
    """Per-token ΔNLL against dense (the text's own difficulty removed), 32-token mean, events marked."""
    rows = delta_traces(run, dataset)
    if not rows:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 1.5 + 1.3 * len(rows)), sharex=True, squeeze=False)
    for ax, (r, delta, prunes) in zip(axes[:, 0], rows, strict=True):
        draw_trace(ax, delta)
        ax.axhline(0, color="k", lw=0.5)
        mark_prunes(ax, prunes)  # never empty: delta_traces keeps evicting results only
        steady = delta[prunes[0] + 1:]
        ax.set_ylim(*np.nanpercentile(delta, [1, 99]) * 1.2)
        ax.set_ylabel("ΔNLL", fontsize=8)
        ax.text(0.005, 0.95, f"{r['label']}  mean ΔNLL after 1st prune {np.nanmean(steady):+.3f}  prunes {len(prunes)}",
                transform=ax.transAxes, fontsize=8, va="top")
    axes[-1, 0].set_xlabel("decode step t; red: prune events (band: every step)")
    fig.suptitle(title(run, f"ΔNLL = NLL − NLL_dense per token, {dataset} (grey raw, blue 32-token mean)"),
                 fontsize=9)
    return save(fig, path, dpi=100)


def plot_nll_delta_aligned(run: Run, dataset: str, path: Path, before: int = 16, after: int = 32) -> Path | None:
    """Mean ΔNLL around prune events, aligned at the event; every-step eviction (strict) as its
    level, the number that stands for it (`spikes.summarize_delta`)."""
    rows = delta_traces(run, dataset)
    if not rows:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    x = np.arange(-before, after)
    for i, (r, delta, prunes) in enumerate(rows):
        color = f"C{i % 10}"
        curve = spike_metrics.aligned_delta(delta, prunes, before=before, after=after) if isolated(prunes) else None
        if curve is None:
            level = float(np.nanmean(delta[prunes[0] + 1:]))
            ax.plot(x, np.full(x.size, level), color=color, ls="--", label=f"{r['label']} (level: every step evicts)")
            continue
        events = sum(1 for e in prunes if e + 1 - before >= 0 and e + 1 + after <= delta.size)
        ax.plot(x, curve, color=color, label=f"{r['label']} ({events} events)")
    return finish_aligned(fig, ax, run, path, "mean ΔNLL vs dense over events", f"ΔNLL around prune events, {dataset}")


def plot_diagnostics(run: Run, dataset: str, path: Path) -> Path | None:
    """Phase A for one run: per-token NLL, KV length and step time, prune events marked."""
    r = diagnosed(run, dataset)
    if r is None:
        return None
    trace = r["trace"]
    nll = floats(trace["nll"])
    prunes = trace.get("prune_steps") or []
    kv = trace.get("kv_length") or []
    step_ms = floats(trace.get("step_ms") or [])
    if not np.isfinite(step_ms).any() and r.get("timing_positions"):
        # parallel evaluator: no per-token times; the timed decode steps are at their text positions
        tx, ty = r["timing_positions"], floats(r["timing_step_ms"])
    else:
        tx, ty = np.arange(step_ms.size), step_ms
    plt = pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
    draw_trace(axes[0], nll, raw_color="0.75")
    axes[0].set_ylabel("NLL (grey raw, blue 32-mean)", fontsize=8)
    axes[1].plot(np.arange(len(kv)), kv, color="C2", lw=1)
    axes[1].set_ylabel("KV length |C_t|+1", fontsize=8)
    axes[2].plot(tx, ty, ".", ms=3, color="C1")
    axes[2].set_ylabel("step ms (timed steps)", fontsize=8)
    for ax in axes:
        for p in prunes:
            ax.axvline(p, color="C3", lw=0.4, alpha=0.5)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("decode step t; red: prune events")
    fig.suptitle(title(run, f"phase A diagnostics: {r['label']} on {dataset}"), fontsize=9)
    return save(fig, path, dpi=100)
