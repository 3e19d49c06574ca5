"""NLL-spike metrics around prune events (docs/semantics.md#spike-metrics; the exploration log's
phase A diagnostics: docs/findings.md#spikes): on raw NLL (below; results and the report still
store them) and on ΔNLL against dense at the same tokens (`delta_spikes`, `summarize_delta`,
`cycle_excess`), the ones the findings use.

For an eviction at the end of step e, the first affected prediction is step e+1. Around it:
  baseline  median NLL of the `lookback` steps up to and including e (the local level)
  peak      max NLL over the `horizon` steps after e, minus the baseline
  area      sum over those steps of NLL above the baseline (nats x tokens)
  width     how many of those steps exceed baseline + peak/2 (full width at half maximum)
The horizon stops at the next event, so strict eviction (an event every step) gets width <= 1.

Per-token NLL is heavy-tailed, so the max over a horizon sits well above the median even with
no eviction. The summary therefore also measures the *event-aligned mean* curve (the mean over
events of the NLL around each, aligned at the event), where that noise averages out: its peak
over its own pre-event median is the number to compare between strategies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Spike:
    step: int
    baseline: float
    peak: float
    area: float
    width: int


@dataclass(frozen=True)
class SpikeSummary:
    events: int
    peak_mean: float
    peak_median: float
    area_mean: float
    width_mean: float
    aligned_peak: float | None  # metrics of the event-aligned mean curve (None: too few events)
    aligned_area: float | None
    aligned_width: int | None

    def to_dict(self) -> dict:
        return asdict(self)


def spikes(nll: np.ndarray, event_steps: list[int], lookback: int = 32, horizon: int = 32) -> list[Spike]:
    nll = np.asarray(nll, dtype=np.float64)
    out: list[Spike] = []
    for i, e in enumerate(event_steps):
        nxt = event_steps[i + 1] if i + 1 < len(event_steps) else len(nll) - 1
        end = min(e + horizon, nxt, len(nll) - 1)
        if e - lookback + 1 < 0 or end <= e:
            continue  # not enough context on either side to measure this event
        out.append(_measure(nll[e - lookback + 1 : e + 1], nll[e + 1 : end + 1], e))
    return out


def _measure(pre: np.ndarray, post: np.ndarray, step: int) -> Spike:
    base = float(np.median(pre))
    above = post - base
    peak = float(above.max())
    area = float(np.clip(above, 0, None).sum())
    width = int((above > peak / 2).sum()) if peak > 0 else 0
    return Spike(step=step, baseline=base, peak=peak, area=area, width=width)


def summarize(nll: np.ndarray, event_steps: list[int], lookback: int = 32, horizon: int = 32) -> SpikeSummary | None:
    found = spikes(nll, event_steps, lookback, horizon)
    if not found:
        return None
    peaks = np.array([s.peak for s in found])
    gaps = np.diff(event_steps)
    after = int(min(horizon, gaps.min())) if len(gaps) else horizon
    curve = aligned_mean(nll, event_steps, before=lookback, after=after)
    aligned = _measure(curve[:lookback], curve[lookback:], -1) if curve is not None else None
    return SpikeSummary(
        events=len(found),
        peak_mean=float(peaks.mean()),
        peak_median=float(np.median(peaks)),
        area_mean=float(np.mean([s.area for s in found])),
        width_mean=float(np.mean([s.width for s in found])),
        aligned_peak=aligned.peak if aligned else None,
        aligned_area=aligned.area if aligned else None,
        aligned_width=aligned.width if aligned else None,
    )


def aligned_mean(nll: np.ndarray, event_steps: list[int], before: int = 32, after: int = 64) -> np.ndarray | None:
    """Mean NLL over events, aligned so index `before` is the first step after the eviction."""
    nll = np.asarray(nll, dtype=np.float64)
    rows = [nll[e + 1 - before : e + 1 + after] for e in event_steps if e + 1 - before >= 0 and e + 1 + after <= len(nll)]
    return np.mean(rows, axis=0) if rows else None


# -- spikes on ΔNLL against dense at the same tokens ---------------------------------------------
# The metrics above measure the text's own difficulty along with the eviction: a hard token right
# after an event reads as a spike. Dense is evaluated on the same tokens in the same run, so
# ΔNLL_t = NLL_strategy,t - NLL_dense,t removes the text and leaves what the lost context costs.
# Its level just before an event is the steady cost of the context already gone; the spike is
# what the event adds on top. Strict evicts every step: there is no "before", the level is the
# number (docs/findings.md#spikes).

DELTA_LOOKBACK = 8  # steps up to and including e that set the pre-event level
DELTA_HORIZON = 8  # steps after e whose mean ΔNLL is the event's cost; 8 fits lazy c16's gaps
BOOTSTRAP_RESAMPLES = 4000
BOOTSTRAP_SEED = 0  # fixed: a summary is a pure function of its inputs


def delta_nll(nll: np.ndarray, dense_nll: np.ndarray) -> np.ndarray:
    """ΔNLL per token: the strategy's NLL minus dense's at the same scored token."""
    nll, dense_nll = np.asarray(nll, dtype=np.float64), np.asarray(dense_nll, dtype=np.float64)
    if nll.shape != dense_nll.shape:
        raise ValueError(f"ΔNLL needs both traces on the same tokens: {nll.shape[0]} vs {dense_nll.shape[0]} "
                         "scored tokens (run the strategy and dense on the same text and --tokens)")
    return nll - dense_nll


@dataclass(frozen=True)
class DeltaEvent:
    step: int  # eviction at the end of step e; e+1 is the first affected prediction
    level: float  # mean ΔNLL over the lookback steps up to and including e
    excess: float  # mean ΔNLL over the horizon after e, minus the level (nats per token)
    peak: float  # max ΔNLL over the horizon, minus the level
    area: float  # sum over the horizon of ΔNLL minus the level (nats x tokens)


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DeltaSpikeSummary:
    """ΔNLL around eviction events. `level` is over the steady state (after the first event) and
    always present; the event-aligned fields are None where events are too close to align
    (strict: every step) or too few. CIs: percentile bootstrap over events (cycles for `level`)."""

    events: int  # events with a full lookback and horizon
    lookback: int
    horizon: int
    level: Interval  # mean ΔNLL per token in steady state, the steady cost of the lost context
    excess: Interval | None  # event-aligned: mean over events of the horizon's mean ΔNLL above the pre-event level
    aligned_peak: Interval | None  # peak of the event-aligned mean ΔNLL curve above its pre-event level
    area: Interval | None  # event-aligned: mean over events of the horizon's summed ΔNLL above the level
    pre_level: float | None  # mean over events of the pre-event level

    def to_dict(self) -> dict:
        return asdict(self)


def delta_spikes(delta: np.ndarray, event_steps: list[int], lookback: int = DELTA_LOOKBACK,
                 horizon: int = DELTA_HORIZON) -> list[DeltaEvent]:
    """Per-event ΔNLL metrics; events without `lookback` steps before or `horizon` steps after
    (inside the text, and before the next event) are left out."""
    rows, kept = _aligned_rows(np.asarray(delta, dtype=np.float64), event_steps, lookback, horizon)
    out = []
    for e, row in zip(kept, rows, strict=True):
        level = float(row[:lookback].mean())
        above = row[lookback:] - level
        out.append(DeltaEvent(step=e, level=level, excess=float(above.mean()), peak=float(above.max()),
                              area=float(above.sum())))
    return out


def summarize_delta(delta: np.ndarray, event_steps: list[int], *, cycle: int | None = None,
                    lookback: int = DELTA_LOOKBACK, horizon: int = DELTA_HORIZON, confidence: float = 0.95,
                    min_events: int = 5) -> DeltaSpikeSummary | None:
    """ΔNLL level, event-aligned excess and peak, with bootstrap CIs; None: nothing evicted.

    `cycle`: steps per eviction cycle, the resampling unit of the level's CI (default: the
    median gap between events; strict's gap of 1 is raised to 32 steps, a block long enough to
    carry the tokens' serial correlation)."""
    delta = np.asarray(delta, dtype=np.float64)
    events = [e for e in event_steps if e < delta.size - 1]
    if not events:
        return None
    gaps = np.diff(events)
    if cycle is None:
        cycle = int(np.median(gaps)) if gaps.size else delta.size
    steady = delta[events[0] + 1:]
    level = _block_mean_ci(steady, max(cycle, 32 if cycle < 2 else cycle), confidence)
    aligned_ok = not gaps.size or int(gaps.min()) >= min(lookback, horizon)
    rows, _ = _aligned_rows(delta, events, lookback, horizon) if aligned_ok else (np.empty((0, 0)), [])
    if len(rows) < min_events:
        return DeltaSpikeSummary(len(rows), lookback, horizon, level, None, None, None, None)
    rows = np.asarray(rows)
    pre = rows[:, :lookback].mean(axis=1, keepdims=True)
    above = rows[:, lookback:] - pre
    per_event = above.mean(axis=1)

    def peak(idx: np.ndarray) -> np.ndarray:  # peak of the resampled aligned curve (rows = resamples)
        curves = rows[idx].mean(axis=1)
        return curves[:, lookback:].max(axis=1) - curves[:, :lookback].mean(axis=1)

    idx = _resample_indices(len(rows))
    aligned_peak = Interval(float(peak(np.arange(len(rows))[None, :])[0]), *_percentiles(peak(idx), confidence))
    return DeltaSpikeSummary(
        events=len(rows), lookback=lookback, horizon=horizon, level=level,
        excess=_mean_ci(per_event, confidence, idx), aligned_peak=aligned_peak,
        area=_mean_ci(above.sum(axis=1), confidence, idx), pre_level=float(pre.mean()),
    )


def aligned_delta(delta: np.ndarray, event_steps: list[int], before: int = 16, after: int = 32) -> np.ndarray | None:
    """Mean ΔNLL over events, aligned so index `before` is the first step after the eviction."""
    return aligned_mean(delta, event_steps, before=before, after=after)


def cycle_excess(nll: np.ndarray, other_nll: np.ndarray, event_steps: list[int], *,
                 confidence: float = 0.95) -> Interval:
    """Mean of NLL - other_NLL per token over the whole eviction cycles of `event_steps` (each
    cycle: the steps after one event up to and including the next), with a bootstrap CI over
    cycles. Dense cancels in the difference, so with other = strict at lazy's mean cache size
    this is ΔNLL_lazy - ΔNLL_strict: what lazy's hard events cost beyond holding, on average, the
    same number of tokens (the exploration log's phase A question, re-stated)."""
    diff = delta_nll(nll, other_nll)
    events = [e for e in event_steps if e < diff.size]
    if len(events) < 3:
        raise ValueError(f"{len(events)} eviction events: a cycle comparison needs >= 3 (2 whole cycles); "
                         "use more tokens")
    per_cycle = np.array([diff[a + 1 : b + 1].mean() for a, b in zip(events[:-1], events[1:], strict=True)])
    return _mean_ci(per_cycle, confidence, _resample_indices(per_cycle.size))


def _aligned_rows(delta: np.ndarray, event_steps: list[int], lookback: int, horizon: int) -> tuple[list, list[int]]:
    rows, kept = [], []
    for i, e in enumerate(event_steps):
        nxt = event_steps[i + 1] if i + 1 < len(event_steps) else delta.size - 1
        prev = event_steps[i - 1] if i > 0 else -1
        # the horizon must not run into the next event, the lookback not back past the previous one
        if e - lookback + 1 < 0 or e + horizon >= delta.size or e + horizon > nxt or e - lookback < prev:
            continue
        rows.append(delta[e - lookback + 1 : e + horizon + 1])
        kept.append(e)
    return rows, kept


def _resample_indices(n: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _mean_ci(values: np.ndarray, confidence: float, idx: np.ndarray) -> Interval:
    values = np.asarray(values, dtype=np.float64)
    return Interval(float(values.mean()), *_percentiles(values[idx].mean(axis=1), confidence))


def _block_mean_ci(values: np.ndarray, block: int, confidence: float) -> Interval:
    """Mean with a CI from resampling whole blocks (ΔNLL is serially correlated within a cycle)."""
    whole = values.size // block
    if whole < 2:  # too short to resample: the estimate with no interval around it
        mean = float(values.mean()) if values.size else float("nan")
        return Interval(mean, mean, mean) if whole else Interval(mean, float("nan"), float("nan"))
    blocks = values[: whole * block].reshape(whole, block).mean(axis=1)
    return Interval(float(values.mean()), *_percentiles(blocks[_resample_indices(whole)].mean(axis=1), confidence))


def delta_vs_dense(nll, dense_nll, prune_steps: list[int], cycle: int | None = None) -> dict | None:
    """The spike of one strategy: `summarize_delta` of its ΔNLL against dense on the same tokens,
    as a JSON-ready dict (level, excess, aligned_peak, area with CIs); None: nothing evicted."""
    summary = summarize_delta(delta_nll(np.asarray(nll), np.asarray(dense_nll)), prune_steps, cycle=cycle)
    return summary.to_dict() if summary is not None else None
