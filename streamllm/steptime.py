"""Per-step decode time split into the prune steps and the others (docs/findings.md#step-time).

TPOT (`measure.tpot_ms`) is the mean over whole eviction cycles: right for throughput, but a
serving system with a latency SLO feels the prune step itself. Lazy eviction with period R pays
its prune once per R steps; this module says what that step costs on its own, as a multiple of a
normal step, what the p99 step is, and which share of TPOT the prune amortises to:

  prune_ms        mean time of the steps whose end evicted
  normal_ms       mean time of the other steps
  prune_multiple  prune_ms / normal_ms
  prune_share     (prune_ms - normal_ms) x prunes / sum of all step times: the part of TPOT that
                  is the prune's extra work, amortised over its cycle
  mean_ms         TPOT (whole cycles), p99_ms the 99th percentile step

The CIs resample whole cycles (each holds one prune step and R-1 normal ones), so a noisy
stretch of steps moves both the prune and its neighbours, as it does on the machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .measure import TimingRun, tpot_ms, whole_cycles

RESAMPLES = 4000
SEED = 0  # fixed: a split is a pure function of its inputs


@dataclass(frozen=True)
class StepTimeSplit:
    cycle: int  # steps per eviction cycle (R)
    steps: int  # steps in whole cycles, the ones measured here
    prune_steps: int
    mean_ms: float  # TPOT: mean over whole cycles
    median_ms: float
    p99_ms: float
    normal_ms: float | None  # None: every step prunes (strict) or there are no normal steps
    prune_ms: float | None  # None: no step pruned (dense)
    prune_multiple: float | None  # prune_ms / normal_ms
    prune_share: float | None  # amortised extra cost of the prune steps / total step time (0..1)
    prune_multiple_ci: tuple[float, float] | None  # bootstrap over cycles
    prune_share_ci: tuple[float, float] | None

    def to_dict(self) -> dict:
        return asdict(self)


def split_step_times(step_ms: Sequence[float], prune_flags: Sequence[bool], cycle: int = 1, *,
                     confidence: float = 0.95) -> StepTimeSplit:
    """The split of one timed run (measure.TimingRun: `step_ms`, `prune_flags`, `cycle`).

    Only whole cycles count, as for TPOT, so each prune is counted once per cycle."""
    times = np.asarray(step_ms, dtype=np.float64)
    flags = np.asarray(prune_flags, dtype=bool)
    if times.shape != flags.shape:
        raise ValueError(f"step_ms has {times.size} steps but prune_flags {flags.size}: they must describe the same steps")
    if cycle < 1:
        raise ValueError(f"cycle must be >= 1 (got {cycle})")
    rows_t, rows_f = whole_cycles(times, cycle), whole_cycles(flags, cycle).astype(bool)
    if rows_t.size == 0:
        raise ValueError(f"{times.size} steps hold no whole cycle of {cycle}: time more steps")
    if not np.all(np.isfinite(rows_t)):
        raise ValueError("step times contain NaN: this run was not timed (parallel evaluator without --timing)")
    flat_t, flat_f = rows_t.ravel(), rows_f.ravel()
    pruned, normal = flat_t[flat_f], flat_t[~flat_f]
    prune_ms = float(pruned.mean()) if pruned.size else None
    normal_ms = float(normal.mean()) if normal.size else None
    multiple = share = None
    multiple_ci = share_ci = None
    if prune_ms is not None and normal_ms is not None:
        multiple = prune_ms / normal_ms
        share = _share(flat_t, flat_f)
        if rows_t.shape[0] >= 2:
            idx = np.random.default_rng(SEED).integers(0, rows_t.shape[0], size=(RESAMPLES, rows_t.shape[0]))
            t, f = rows_t[idx].reshape(RESAMPLES, -1), rows_f[idx].reshape(RESAMPLES, -1)
            p_sum, p_n = (t * f).sum(axis=1), f.sum(axis=1)
            n_sum, n_n = (t * ~f).sum(axis=1), (~f).sum(axis=1)
            ok = (p_n > 0) & (n_n > 0)  # a resample of only one kind of step has no ratio
            p_mean, n_mean = p_sum[ok] / p_n[ok], n_sum[ok] / n_n[ok]
            multiple_ci = _percentiles(p_mean / n_mean, confidence)
            share_ci = _percentiles((p_mean - n_mean) * p_n[ok] / t[ok].sum(axis=1), confidence)
    return StepTimeSplit(
        cycle=cycle, steps=int(flat_t.size), prune_steps=int(flat_f.sum()), mean_ms=tpot_ms(flat_t, cycle),
        median_ms=float(np.median(flat_t)), p99_ms=float(np.percentile(flat_t, 99)), normal_ms=normal_ms,
        prune_ms=prune_ms, prune_multiple=multiple, prune_share=share, prune_multiple_ci=multiple_ci,
        prune_share_ci=share_ci,
    )


def _share(times: np.ndarray, flags: np.ndarray) -> float:
    extra = (times[flags].mean() - times[~flags].mean()) * flags.sum()
    return float(extra / times.sum())


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def split_timing_run(run: TimingRun) -> StepTimeSplit:
    """`split_step_times` of a measure.TimingRun (its own cycle)."""
    return split_step_times(run.step_ms, run.prune_flags, run.cycle)


def step_shape(step_ms: Sequence[float], prune_flags: Sequence[bool], cycle: int = 1, start: int = 0) -> dict | None:
    """`split_step_times` of the steps from `start` on (the steady state), as a JSON-ready dict: what
    `streamllm eval` reports beside TPOT. None when those steps were not timed or hold no whole cycle."""
    try:
        return split_step_times(list(step_ms)[start:], list(prune_flags)[start:], cycle).to_dict()
    except ValueError:
        return None
