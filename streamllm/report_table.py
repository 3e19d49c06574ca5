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
    for col in ("strategy", "PPL", "ΔPPL vs dense", "TPOT ms (cycle mean)", "TPOT ms (median)", "p99 step ms",
                "prune step x", "speedup", "prunes", "max pos", "ΔNLL level", "ΔNLL spike", "runtime s"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for i, r in enumerate(results):
        delta = f"{100 * (r.ppl / dense.ppl - 1):+.1f}%" if dense else "-"
        # The spike is ΔNLL against dense on the same tokens (streamllm.spikes.summarize_delta): the
        # steady level after the first eviction and the event-aligned excess above it.
        spikes = r.delta_spikes or {}
        level = (spikes.get("level") or {}).get("estimate")
        excess = (spikes.get("excess") or {}).get("estimate")
        shape = r.step_shape or {}
        table.add_row(
            r.strategy + (" ⚠" if r.beyond_context else ""),
            _fmt(r.ppl, ".3f"), delta,
            _fmt(r.tpot_ms_cycle_mean, ".2f"), _fmt(r.tpot_ms_median, ".2f"),
            _fmt(shape.get("p99_ms"), ".2f"), _fmt(shape.get("prune_multiple"), ".2f"),
            _fmt(r.speedup, ".2f"), str(r.prune_events), str(r.max_position),
            _fmt(level, "+.3f"), _fmt(excess, "+.3f"), _fmt(runtimes[i] if runtimes else None, ".1f"),
        )
    return table
