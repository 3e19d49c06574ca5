"""The report's figures, and the per-event data they draw: PPL against TPOT, per-token NLL and ΔNLL
against dense with prune events, event-aligned means, the sweep curves, the amortisation curve
(TPOT and p99 step against R), and the phase A diagnostics. Each returns the PNG it wrote, or
None when the run holds nothing to draw."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import spikes as spike_metrics
from ..steptime import split_step_times
from .report_runs import Run, _datasets, _fmt


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a CI runner
    import matplotlib.pyplot as plt

    return plt


def plot_ppl_vs_tpot(run: Run, path: Path) -> Path | None:
    """PPL against TPOT, one point per (case, dataset), each labelled with its case."""
    rows = [r for r in run.results if r.get("ppl") and r.get("tpot_ms_mean")]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 6))
    for marker, dataset in zip("os^Dv<>", sorted({r["dataset"] for r in rows}), strict=False):
        mine = [r for r in rows if r["dataset"] == dataset]
        ax.scatter([r["tpot_ms_mean"] for r in mine], [r["ppl"] for r in mine], marker=marker, label=dataset, s=40)
    ax.set_xlabel("TPOT, ms per token (whole-cycle mean, steady state)")
    ax.set_ylabel("PPL")
    ax.set_title(_title(run, "PPL vs TPOT"), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    label_points(ax, [(r["tpot_ms_mean"], r["ppl"], r["case"]) for r in rows])
    return _save(fig, path)


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


def _smooth(x: np.ndarray, k: int = 32) -> np.ndarray:
    if x.size < k:
        return x
    return np.convolve(x, np.ones(k) / k, mode="valid")


def _floats(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=float)


def _isolated(prunes: Sequence[int], min_gap: int = 8) -> bool:
    """Prune events far enough apart to look at one by one (lazy, refresh); every-step eviction
    (strict) has no isolated event to align on."""
    return len(prunes) >= 3 and int(np.diff(prunes).min()) >= min_gap


def plot_nll(run: Run, dataset: str, path: Path) -> Path | None:
    rows = [r for r in run.results if r["dataset"] == dataset and r.get("trace") and not r.get("skipped")]
    if not rows:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 1.5 + 1.3 * len(rows)), sharex=True, squeeze=False)
    for ax, r in zip(axes[:, 0], rows, strict=True):
        nll = _floats(r["trace"]["nll"])
        prunes = r["trace"].get("prune_steps") or []
        ax.plot(np.arange(nll.size), nll, color="0.8", lw=0.5)
        sm = _smooth(nll)
        ax.plot(np.arange(sm.size) + (nll.size - sm.size) // 2, sm, color="C0", lw=1.2)
        if 0 < len(prunes) <= 200:  # sparse (lazy) events as lines; every-step eviction as a band
            for p in prunes:
                ax.axvline(p, color="C3", lw=0.5, alpha=0.6)
        elif prunes:
            ax.axvspan(prunes[0], prunes[-1], color="C3", alpha=0.06)
        ax.set_ylabel("NLL", fontsize=8)
        ax.text(0.005, 0.95, f"{r['label']}  PPL {_fmt(r.get('ppl'), '.3f')}  prunes {len(prunes)}",
                transform=ax.transAxes, fontsize=8, va="top")
    axes[-1, 0].set_xlabel("decode step t (scores x_{t+1}); red: prune events (band: every step)")
    fig.suptitle(_title(run, f"per-token NLL, {dataset} (grey raw, blue 32-token mean)"), fontsize=9)
    return _save(fig, path, dpi=100)


def plot_nll_aligned(run: Run, dataset: str, path: Path, before: int = 16, after: int = 32) -> Path | None:
    """Mean NLL around prune events, aligned at the event (`spikes.aligned_mean`; the exploration
    log's phase A picture, docs/findings.md#spikes)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    drawn = 0
    for r in run.results:
        if r["dataset"] != dataset or not r.get("trace"):
            continue
        prunes = r["trace"].get("prune_steps") or []
        if not _isolated(prunes):
            continue
        nll = _floats(r["trace"]["nll"])
        curve = spike_metrics.aligned_mean(nll, prunes, before=before, after=after)
        if curve is None:
            continue
        events = sum(1 for e in prunes if e + 1 - before >= 0 and e + 1 + after <= nll.size)
        ax.plot(np.arange(-before, after), curve, label=f"{r['label']} ({events} events)")
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.axvline(0, color="C3", lw=0.8)
    ax.set_xlabel("steps after the prune event (0 = first prediction after eviction)")
    ax.set_ylabel("mean NLL over events")
    ax.set_title(_title(run, f"NLL around prune events, {dataset}"), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


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
    plt = _plt()
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
    top.set_title(_title(run, f"sweep {sweep}, {dataset}"), fontsize=9)
    return _save(fig, path)


def _dense_nll(run: Run, dataset: str) -> np.ndarray | None:
    for r in run.results:
        if r["dataset"] == dataset and r.get("case") == "dense" and (r.get("trace") or {}).get("nll"):
            return _floats(r["trace"]["nll"])
    return None


def delta_traces(run: Run, dataset: str) -> list[tuple[dict, np.ndarray, list[int]]]:
    """(result, ΔNLL against dense at the same tokens, prune steps) of every evicting result on a
    dataset; empty when the run has no dense trace there (ΔNLL needs it)."""
    dense = _dense_nll(run, dataset)
    if dense is None:
        return []
    out = []
    for r in run.results:
        trace = r.get("trace") or {}
        prunes = trace.get("prune_steps") or []
        if r["dataset"] != dataset or r.get("skipped") or r.get("case") == "dense" or not prunes:
            continue
        nll = _floats(trace.get("nll") or [])
        if nll.size == dense.size:
            out.append((r, spike_metrics.delta_nll(nll, dense), prunes))
    return out


def delta_diagnostics(run: Run) -> list[dict]:
    """ΔNLL spike summary (`spikes.summarize_delta`) per evicting result: summary.json and report.md."""
    out = []
    for dataset in _datasets(run):
        for r, delta, prunes in delta_traces(run, dataset):
            found = spike_metrics.summarize_delta(delta, prunes)
            out.append({"dataset": dataset, "case": r["case"], "label": r["label"], "prune_events": len(prunes),
                        "delta_spikes": found.to_dict() if found else None})
    return out


def _interval_text(value: dict | None, spec: str = "+.3f") -> str:
    if not value:
        return "-"
    return f"{value['estimate']:{spec}} ({value['low']:{spec}}..{value['high']:{spec}})"


def _delta_view(rows: list[dict]) -> list[dict]:
    view = []
    for d in rows:
        sp = d.get("delta_spikes") or {}
        view.append({"dataset": d["dataset"], "label": d["label"], "events": sp.get("events", 0),
                     "level": _interval_text(sp.get("level")), "excess": _interval_text(sp.get("excess")),
                     "aligned_peak": _interval_text(sp.get("aligned_peak"))})
    return view


def plot_nll_delta(run: Run, dataset: str, path: Path) -> Path | None:
    """Per-token ΔNLL against dense (the text's own difficulty removed), 32-token mean, events marked."""
    rows = delta_traces(run, dataset)
    if not rows:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 1.5 + 1.3 * len(rows)), sharex=True, squeeze=False)
    for ax, (r, delta, prunes) in zip(axes[:, 0], rows, strict=True):
        ax.plot(np.arange(delta.size), delta, color="0.8", lw=0.5)
        sm = _smooth(delta)
        ax.plot(np.arange(sm.size) + (delta.size - sm.size) // 2, sm, color="C0", lw=1.2)
        ax.axhline(0, color="k", lw=0.5)
        if len(prunes) <= 200:
            for p in prunes:
                ax.axvline(p, color="C3", lw=0.5, alpha=0.6)
        else:
            ax.axvspan(prunes[0], prunes[-1], color="C3", alpha=0.06)
        steady = delta[prunes[0] + 1:]
        ax.set_ylim(*np.nanpercentile(delta, [1, 99]) * 1.2)
        ax.set_ylabel("ΔNLL", fontsize=8)
        ax.text(0.005, 0.95, f"{r['label']}  mean ΔNLL after 1st prune {np.nanmean(steady):+.3f}  prunes {len(prunes)}",
                transform=ax.transAxes, fontsize=8, va="top")
    axes[-1, 0].set_xlabel("decode step t; red: prune events (band: every step)")
    fig.suptitle(_title(run, f"ΔNLL = NLL − NLL_dense per token, {dataset} (grey raw, blue 32-token mean)"),
                 fontsize=9)
    return _save(fig, path, dpi=100)


def plot_nll_delta_aligned(run: Run, dataset: str, path: Path, before: int = 16, after: int = 32) -> Path | None:
    """Mean ΔNLL around prune events, aligned at the event; every-step eviction (strict) as its
    level, the number that stands for it (`spikes.summarize_delta`)."""
    rows = delta_traces(run, dataset)
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    x = np.arange(-before, after)
    for i, (r, delta, prunes) in enumerate(rows):
        color = f"C{i % 10}"
        curve = spike_metrics.aligned_delta(delta, prunes, before=before, after=after) if _isolated(prunes) else None
        if curve is None:
            level = float(np.nanmean(delta[prunes[0] + 1:]))
            ax.plot(x, np.full(x.size, level), color=color, ls="--", label=f"{r['label']} (level: every step evicts)")
            continue
        events = sum(1 for e in prunes if e + 1 - before >= 0 and e + 1 + after <= delta.size)
        ax.plot(x, curve, color=color, label=f"{r['label']} ({events} events)")
    ax.axvline(0, color="C3", lw=0.8)
    ax.set_xlabel("steps after the prune event (0 = first prediction after eviction)")
    ax.set_ylabel("mean ΔNLL vs dense over events")
    ax.set_title(_title(run, f"ΔNLL around prune events, {dataset}"), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


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
    plt = _plt()
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
    top.set_title(_title(run, f"amortisation of the prune, sweep {sweep}, {dataset}"), fontsize=9)
    return _save(fig, path)


def diagnosed(run: Run, dataset: str) -> dict | None:
    """The result phase A diagnoses on a dataset: the first one with isolated prune events
    (lazy / refresh: every-step eviction has no event to look at)."""
    for r in run.results:
        prunes = (r.get("trace") or {}).get("prune_steps") or []
        if r["dataset"] == dataset and not r.get("skipped") and _isolated(prunes):
            return r
    return None


def event_spikes(r: dict) -> list[dict]:
    """Per-event spike metrics (streamllm.spikes) of one result's trace."""
    trace = r.get("trace") or {}
    return [dict(vars(s)) for s in spike_metrics.spikes(_floats(trace.get("nll") or []), trace.get("prune_steps") or [])]


def plot_diagnostics(run: Run, dataset: str, path: Path) -> Path | None:
    """Phase A for one run: per-token NLL, KV length and step time, prune events marked."""
    r = diagnosed(run, dataset)
    if r is None:
        return None
    trace = r["trace"]
    nll = _floats(trace["nll"])
    prunes = trace.get("prune_steps") or []
    kv = trace.get("kv_length") or []
    step_ms = _floats(trace.get("step_ms") or [])
    if not np.isfinite(step_ms).any() and r.get("timing_positions"):
        # parallel evaluator: no per-token times; the timed decode steps are at their text positions
        tx, ty = r["timing_positions"], _floats(r["timing_step_ms"])
    else:
        tx, ty = np.arange(step_ms.size), step_ms
    plt = _plt()
    fig, axes = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
    axes[0].plot(nll, color="0.75", lw=0.5)
    sm = _smooth(nll)
    axes[0].plot(np.arange(sm.size) + (nll.size - sm.size) // 2, sm, color="C0", lw=1.2)
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
    fig.suptitle(_title(run, f"phase A diagnostics: {r['label']} on {dataset}"), fontsize=9)
    return _save(fig, path, dpi=100)


def diagnostics(run: Run) -> list[dict]:
    """Aggregate spike metrics per result and per-event metrics of the diagnosed result."""
    out = []
    for dataset in _datasets(run):
        chosen = diagnosed(run, dataset)
        for r in run.results:
            if r["dataset"] != dataset or r.get("skipped") or not r.get("trace"):
                continue
            trace = r["trace"]
            kv = _floats(trace.get("kv_length") or [])
            prunes = trace.get("prune_steps") or []
            # KV drift (the exploration log's phase A, docs/findings.md#spikes): mean attended
            # length after the first eviction
            kv_mean = float(np.nanmean(kv[prunes[0]:])) if prunes and kv.size > prunes[0] else None
            evaluation = r.get("evaluation") or {}
            summary = evaluation.get("raw_nll_spikes", evaluation.get("spikes"))  # runs before the rename: "spikes"
            if summary is None and prunes:  # a run that did not store them: the same metrics, from spikes.py
                found = spike_metrics.summarize(_floats(trace.get("nll") or []), prunes)
                summary = found.to_dict() if found else None
            entry = {"dataset": dataset, "case": r["case"], "label": r["label"], "prune_events": len(prunes),
                     "kv_mean_after_first_prune": kv_mean, "spikes": summary}
            if r is chosen:
                entry["events"] = event_spikes(r)
            out.append(entry)
    return out


def _save(fig, path: Path, dpi: int = 110) -> Path:
    """Lay out, write and close one figure (closed: a report draws many, pyplot keeps them all)."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)
    return path


def _title(run: Run, what: str) -> str:
    m = run.data.get("model") or {}
    o = run.data.get("options") or {}
    return f"{what} — {m.get('name', '?')}, {o.get('device')} {o.get('dtype')}, {o.get('tokens')} tokens, " \
           f"S={o.get('sink')} W={o.get('window')}, {run.created}"

