"""Rich tables of evaluation results for the terminal."""

from __future__ import annotations

import math

from rich.table import Table

from .results import EvalResult


def _fmt(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def results_table(results: list[EvalResult], runtimes: list[float] | None = None) -> Table:
    dense = next((r for r in results if r.params.get("name") == "dense"), None)
    table = Table(title=f"{results[0].model} | {results[0].dataset} | {results[0].tokens_scored} scored tokens"
                  f" | {results[0].device} {results[0].dtype} | evaluator: {results[0].evaluator}")
    for col in ("strategy", "PPL", "ΔPPL vs dense", "TPOT ms (cycle mean)", "TPOT ms (median)", "speedup",
                "prunes", "max pos", "spike peak", "runtime s"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for i, r in enumerate(results):
        delta = f"{100 * (r.ppl / dense.ppl - 1):+.1f}%" if dense else "-"
        spike = r.spikes.get("aligned_peak") if r.spikes else None
        table.add_row(
            r.strategy + (" ⚠" if r.beyond_context else ""),
            _fmt(r.ppl, ".3f"), delta,
            _fmt(r.tpot_ms_cycle_mean, ".2f"), _fmt(r.tpot_ms_median, ".2f"),
            _fmt(r.speedup, ".2f"), str(r.prune_events), str(r.max_position),
            _fmt(spike, ".2f"), _fmt(runtimes[i] if runtimes else None, ".1f"),
        )
    return table
