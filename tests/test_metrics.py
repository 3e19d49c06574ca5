"""Spike metrics and steady-state timing on synthetic data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from streamllm.evaluate import steady_state_timing
from streamllm.measure import tpot_ms, whole_cycles
from streamllm.spikes import aligned_mean, spikes, summarize


def test_planted_spikes_are_measured():
    rng = np.random.default_rng(0)
    nll = 2.0 + 0.01 * rng.standard_normal(400)
    events = [99, 199, 299]
    for e in events:
        nll[e + 1 : e + 4] += 3.0  # a 3-token spike of height 3 right after each eviction
    found = spikes(nll, events)
    assert [s.step for s in found] == events
    for s in found:
        assert s.peak == pytest.approx(3.0, abs=0.05)
        assert s.width == 3
        assert s.area == pytest.approx(9.0, abs=0.5)
    summary = summarize(nll, events)
    assert summary.events == 3 and summary.aligned_peak == pytest.approx(3.0, abs=0.05)
    assert summary.aligned_width == 3
    curve = aligned_mean(nll, events, before=32, after=8)
    assert curve[32:35].min() > 4.9 and curve[:32].max() < 2.1


def test_no_spike_without_planting():
    rng = np.random.default_rng(1)
    nll = 2.0 + 0.01 * rng.standard_normal(400)
    summary = summarize(nll, [99, 199, 299])
    assert summary.aligned_peak < 0.05


def test_horizon_stops_at_next_event():
    # A lasting rise right after three back-to-back events (strict eviction's pattern): each
    # event's horizon ends at the next event, so only the last one sees the whole rise. Without
    # the stop, every event would claim the same 32 steps (width 32 each).
    nll = np.zeros(100)
    nll[41:80] = 1.0
    found = spikes(nll, [40, 41, 42], horizon=32)
    assert [s.step for s in found] == [40, 41, 42]
    assert [s.width for s in found] == [1, 1, 32]
    assert [s.area for s in found] == [1.0, 1.0, 32.0]


def test_cycle_mean_counts_pruning_cost_that_median_hides():
    step_ms = np.full(200, 10.0)
    prunes = list(range(39, 200, 16))  # lazy R=16: every 16th step pays for the eviction
    step_ms[prunes] = 90.0
    timing = steady_state_timing(step_ms, prunes, warmup_steps=8)
    assert timing.median_ms == pytest.approx(10.0)
    assert timing.cycle_mean_ms == pytest.approx(10.0 + 80.0 / 16)
    assert timing.steady_from == 40
    assert timing.total_s == pytest.approx(step_ms[8:].sum() / 1e3)
    assert timing.warmup_s == pytest.approx(step_ms[:8].sum() / 1e3)


def test_untimed_runs_report_nan():
    timing = steady_state_timing(np.full(10, np.nan), [], warmup_steps=2)
    assert np.isnan(timing.median_ms) and np.isnan(timing.total_s)


def test_tpot_is_the_mean_over_whole_cycles():
    steps = [1.0, 1.0, 1.0, 5.0] * 3 + [1.0, 1.0]  # R=4 with one slow prune step; partial tail
    assert whole_cycles(steps, 4).mean(axis=1).tolist() == [2.0, 2.0, 2.0]
    assert tpot_ms(steps, 4) == 2.0  # the cut tail (two fast steps) would pull it to 1.86
    assert tpot_ms(steps, 1) == pytest.approx(np.mean(steps))
    assert np.isnan(tpot_ms([1.0, 2.0], 4))  # not one whole cycle: no TPOT
