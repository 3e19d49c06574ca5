"""The per-step time split (streamllm/steptime.py) on synthetic step times with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from streamllm.measure import TimingRun, tpot_ms
from streamllm.steptime import split_step_times, split_timing_run


def sawtooth(cycle: int, cycles: int, normal: float, prune: float, noise: float = 0.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    flags = np.zeros(cycle * cycles, dtype=bool)
    flags[cycle - 1 :: cycle] = True  # the prune ends the cycle, as lazy's does
    times = np.where(flags, prune, normal) * (1 + noise * rng.standard_normal(flags.size))
    return times.tolist(), flags.tolist()


def test_exact_sawtooth():
    times, flags = sawtooth(32, 10, normal=10.0, prune=42.0)
    s = split_step_times(times, flags, 32)
    assert s.prune_ms == pytest.approx(42.0) and s.normal_ms == pytest.approx(10.0)
    assert s.prune_multiple == pytest.approx(4.2)
    tpot = (31 * 10 + 42) / 32
    assert s.mean_ms == pytest.approx(tpot)
    assert s.prune_share == pytest.approx((42 - 10) / 32 / tpot)
    assert s.p99_ms == pytest.approx(np.percentile(times, 99))
    assert s.prune_steps == 10 and s.steps == 320
    assert s.prune_multiple_ci == pytest.approx((4.2, 4.2)) and s.prune_share_ci[0] == pytest.approx(s.prune_share)


def test_noisy_sawtooth_ci_covers_the_truth():
    times, flags = sawtooth(16, 40, normal=20.0, prune=50.0, noise=0.1, seed=1)
    s = split_step_times(times, flags, 16)
    lo, hi = s.prune_multiple_ci
    assert lo < 2.5 < hi and hi - lo < 0.5
    truth = (50 - 20) / 16 / ((15 * 20 + 50) / 16)
    assert s.prune_share_ci[0] < truth < s.prune_share_ci[1]
    assert s.mean_ms == pytest.approx(tpot_ms(times, 16))


def test_partial_cycles_are_left_out_like_tpot():
    times, flags = sawtooth(8, 4, normal=1.0, prune=9.0)
    s = split_step_times(times + [100.0] * 5, flags + [False] * 5, 8)
    assert s.steps == 32 and s.p99_ms <= 9.0


def test_strict_and_dense_are_degenerate_not_made_up():
    strict = split_step_times([5.0] * 20, [True] * 20, 1)
    assert strict.prune_ms == 5.0 and strict.normal_ms is None and strict.prune_multiple is None
    dense = split_step_times([5.0] * 20, [False] * 20, 1)
    assert dense.prune_ms is None and dense.prune_share is None and dense.mean_ms == 5.0


def test_bad_inputs_say_why():
    with pytest.raises(ValueError, match="same steps"):
        split_step_times([1.0, 2.0], [True], 1)
    with pytest.raises(ValueError, match="whole cycle"):
        split_step_times([1.0] * 10, [False] * 10, 32)
    with pytest.raises(ValueError, match="not timed"):
        split_step_times([float("nan")] * 4, [False, False, False, True], 4)


def test_timing_run_adapter():
    times, flags = sawtooth(4, 6, normal=2.0, prune=6.0)
    run = TimingRun(steps_per_round=8, cycle=4, rounds=3, warmup_rounds=1, step_ms=times, device_ms=[],
                    prune_flags=flags, positions=list(range(24)), nll=[], kv_length_max=0, fill_s=0.0,
                    fill_mode="random", warmup_ms=0.0)
    assert split_timing_run(run).prune_multiple == pytest.approx(3.0)
