"""NLL-spike metrics around prune events (docs/semantics.md#spike-metrics; the exploration log's
phase A diagnostics: docs/findings.md#spikes).

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
