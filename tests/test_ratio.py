"""Same-run ratio (streamllm.harness.judge_ratio) on synthetic interleaved rounds: a 15 % slowdown is caught,
an A/A run passes, machine drift cancels. (The suite's interleaving loop is
streamllm.measure.time_interleaved; the synthetic machine below alternates the arms the same way.)"""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamllm.harness.judge_ratio import (
    DEFAULT_PAIRS,
    RatioCI,
    check_ratio,
    pair_log_ratios,
    ratio_ci,
)

BAND = 0.10
NOISE = 0.05  # per-round lognormal noise of each arm


class Machine:
    """Synthetic rounds: each call's time = arm cost x machine speed now x 5 % noise. The speed
    drifts from call to call (shared by both arms), like a host whose load comes and goes."""

    def __init__(self, seed: int, drift: float = 0.0):
        self.rng = np.random.default_rng(seed)
        self.calls = 0
        self.drift = drift
        self.order: list[str] = []

    def arm(self, name: str, cost_ms: float):
        def run() -> float:
            self.calls += 1
            self.order.append(name)
            speed = 1.0 + self.drift * math.sin(self.calls / 7.0)  # slow swings of ±drift
            return cost_ms * speed * float(np.exp(self.rng.normal(0.0, NOISE)))

        return run


def alternate(run_a, run_b, rounds: int) -> tuple[list[float], list[float]]:
    """A B A B ...: what measure.time_interleaved does with the case and reference steps."""
    a, b = [], []
    for _ in range(rounds):
        a.append(run_a())
        b.append(run_b())
    return a, b


def measure(seed: int, slowdown: float, pairs: int = DEFAULT_PAIRS, drift: float = 0.0):
    m = Machine(seed, drift)
    a, b = alternate(m.arm("A", 40.0 * slowdown), m.arm("B", 40.0), pairs)
    return check_ratio(ratio_ci(a, b), stored_ratio=1.0, band=BAND)


def test_fifteen_percent_slowdown_fails():
    verdicts = [measure(seed, 1.15).verdict for seed in range(10)]
    assert verdicts.count("fail") >= 9, verdicts
    v = measure(0, 1.15)
    assert "slower than the band" in v.message and "16 pairs" in v.message


def test_a_a_passes():
    verdicts = [measure(seed, 1.0).verdict for seed in range(100, 200)]
    assert verdicts.count("pass") >= 99, [v for v in verdicts if v != "pass"]
    assert "fail" not in verdicts


def test_drift_cancels_in_pairs():
    """±30 % machine swings: the interleaved ratio still passes A/A and still catches 15 %."""
    aa = [measure(seed, 1.0, drift=0.3).verdict for seed in range(30)]
    assert aa.count("pass") >= 29 and "fail" not in aa
    slow = [measure(seed, 1.15, drift=0.3).verdict for seed in range(10)]
    assert slow.count("fail") >= 9


def test_check_ratio_verdicts():
    def ci(r, lo, hi, n=16):
        return RatioCI(r, lo, hi, n, 0.95, 0.07)

    assert check_ratio(ci(0.52, 0.50, 0.54), 0.5, BAND).verdict == "pass"  # e.g. strict vs dense
    assert check_ratio(ci(1.20, 1.12, 1.28), 1.0, BAND).verdict == "fail"
    faster = check_ratio(ci(0.80, 0.75, 0.85), 1.0, BAND)
    assert faster.verdict == "fail" and "improvement" in faster.message
    # Beyond the band but the CI holds the stored ratio: noise, not evidence.
    assert check_ratio(ci(1.15, 0.98, 1.35), 1.0, BAND).verdict == "inconclusive"
    # Straddles the band's edge.
    assert check_ratio(ci(1.05, 1.01, 1.12), 1.0, BAND).verdict == "inconclusive"
    # Beyond the edge, CI excluding the stored ratio: fails when the CI is narrower than the band...
    assert check_ratio(ci(1.13, 1.05, 1.21), 1.0, BAND).verdict == "fail"
    # ... but a CI wider than the band (a loaded machine) cannot resolve it: only a whole interval
    # beyond the edge fails.
    assert check_ratio(ci(1.06, 1.01, 1.11), 1.0, 0.03).verdict == "inconclusive"
    assert check_ratio(ci(1.10, 1.04, 1.16), 1.0, 0.03).verdict == "fail"
    assert check_ratio(ci(1.0, 0.99, 1.01, n=2), 1.0, BAND).verdict == "inconclusive"
    # Log-symmetric band: [1/1.1, 1.1].
    assert check_ratio(ci(0.92, 0.91, 0.93), 1.0, BAND).verdict == "pass"
    assert check_ratio(ci(0.905, 0.90, 0.91), 1.0, BAND).verdict != "pass"
    with pytest.raises(ValueError):
        check_ratio(ci(1, 1, 1), 0.0, BAND)


def test_ratio_ci_math():
    a, b = [2.0, 4.0, 8.0], [1.0, 2.0, 4.0]
    ci = ratio_ci(a, b)
    assert ci.ratio == pytest.approx(2.0) and ci.low == pytest.approx(2.0) and ci.high == pytest.approx(2.0)
    rng = np.random.default_rng(0)
    b = 40 * np.exp(rng.normal(0, 0.05, 200))
    a = 1.15 * b * np.exp(rng.normal(0, 0.05, 200))
    ci = ratio_ci(a, b)
    assert ci.low < 1.15 < ci.high and ci.sd_log == pytest.approx(0.05, rel=0.2)
    with pytest.raises(ValueError, match="differ in rounds"):
        pair_log_ratios([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="finite"):
        ratio_ci([1.0, float("nan")], [1.0, 1.0])
