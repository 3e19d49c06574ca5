"""The per-event numbers the report shows and summary.json keeps: ΔNLL against dense per evicting
result (`delta_traces`, `delta_diagnostics`), and phase A's diagnostics (aggregate spike metrics per
result, per-event metrics of the one result it diagnoses on a dataset). The metrics are
`streamllm.spikes`'; this module picks the traces and shapes the rows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import spikes as spike_metrics
from .report_runs import Run, _datasets


def floats(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=float)


def isolated(prunes: Sequence[int], min_gap: int = 8) -> bool:
    """Prune events far enough apart to look at one by one (lazy, refresh); every-step eviction
    (strict) has no isolated event to align on."""
    return len(prunes) >= 3 and int(np.diff(prunes).min()) >= min_gap


def dense_nll(run: Run, dataset: str) -> np.ndarray | None:
    for r in run.results:
        if r["dataset"] == dataset and r.get("case") == "dense" and (r.get("trace") or {}).get("nll"):
            return floats(r["trace"]["nll"])
    return None


def delta_traces(run: Run, dataset: str) -> list[tuple[dict, np.ndarray, list[int]]]:
    """(result, ΔNLL against dense at the same tokens, prune steps) of every evicting result on a
    dataset; empty when the run has no dense trace there (ΔNLL needs it)."""
    dense = dense_nll(run, dataset)
    if dense is None:
        return []
    out = []
    for r in run.results:
        trace = r.get("trace") or {}
        prunes = trace.get("prune_steps") or []
        if r["dataset"] != dataset or r.get("skipped") or r.get("case") == "dense" or not prunes:
            continue
        nll = floats(trace.get("nll") or [])
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


def diagnosed(run: Run, dataset: str) -> dict | None:
    """The result phase A diagnoses on a dataset: the first one with isolated prune events
    (lazy / refresh: every-step eviction has no event to look at)."""
    for r in run.results:
        prunes = (r.get("trace") or {}).get("prune_steps") or []
        if r["dataset"] == dataset and not r.get("skipped") and isolated(prunes):
            return r
    return None


def event_spikes(r: dict) -> list[dict]:
    """Per-event spike metrics (streamllm.spikes) of one result's trace."""
    trace = r.get("trace") or {}
    return [dict(vars(s)) for s in spike_metrics.spikes(floats(trace.get("nll") or []), trace.get("prune_steps") or [])]


def diagnostics(run: Run) -> list[dict]:
    """Aggregate spike metrics per result and per-event metrics of the diagnosed result."""
    out = []
    for dataset in _datasets(run):
        chosen = diagnosed(run, dataset)
        for r in run.results:
            if r["dataset"] != dataset or r.get("skipped") or not r.get("trace"):
                continue
            trace = r["trace"]
            kv = floats(trace.get("kv_length") or [])
            prunes = trace.get("prune_steps") or []
            # KV drift (the exploration log's phase A, docs/findings.md#spikes): mean attended
            # length after the first eviction
            kv_mean = float(np.nanmean(kv[prunes[0]:])) if prunes and kv.size > prunes[0] else None
            evaluation = r.get("evaluation") or {}
            summary = evaluation.get("raw_nll_spikes", evaluation.get("spikes"))  # runs before the rename: "spikes"
            if summary is None and prunes:  # a run that did not store them: the same metrics, from spikes.py
                found = spike_metrics.summarize(floats(trace.get("nll") or []), prunes)
                summary = found.to_dict() if found else None
            entry = {"dataset": dataset, "case": r["case"], "label": r["label"], "prune_events": len(prunes),
                     "kv_mean_after_first_prune": kv_mean, "spikes": summary}
            if r is chosen:
                entry["events"] = event_spikes(r)
            out.append(entry)
    return out
