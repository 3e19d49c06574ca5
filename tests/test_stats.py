"""The statistics behind the verdicts, on synthetic data with fixed seeds (issue #3, docs/semantics.md#statistics).

Rates are measured over many repetitions and asserted against explicit bounds. Each repetition
uses its own seed, so every number here is deterministic: a changed rate means changed code.
Repetition tests use n_boot=1000 (half the default) to keep the file under a few seconds on two
shared cores; the percentile CI's endpoints barely move between 1000 and 2000 resamples.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.signal import lfilter

from bench.findings import Finding, check_finding
from streamllm.harness.stats import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    bootstrap_ratio_ci,
    compare_ppl,
    compare_timing,
    mann_whitney,
    paired_block_bootstrap,
    ppl_ratio_ci,
)

REPS = 200
N_BOOT = 1000


def step_times(rng: np.random.Generator, n: int, *, sigma: float = 0.04, scale: float = 1.0) -> np.ndarray:
    """CPU-like decode step times in ms: lognormal around 80 ms with a few % noise, plus 3 % of
    steps hit by a 1.5x steal-time spike (the heavy tail the median must shrug off)."""
    x = scale * rng.lognormal(math.log(80.0), sigma, n)
    x[rng.random(n) < 0.03] *= 1.5
    return x


def verdict_counts(*, n: int, slowdown: float, tolerance: float, sigma: float = 0.04, reps: int = REPS, seed: int = 0):
    rng = np.random.default_rng(seed)
    counts = {PASS: 0, FAIL: 0, INCONCLUSIVE: 0}
    for i in range(reps):
        candidate = step_times(rng, n, sigma=sigma, scale=slowdown)
        baseline = step_times(rng, n, sigma=sigma)
        counts[compare_timing(candidate, baseline, tolerance=tolerance, seed=i, n_boot=N_BOOT).verdict] += 1
    return counts


def binomial_bound(rate: float, reps: int, z: float = 2.0) -> float:
    """rate + z standard errors of a binomial proportion over `reps` repetitions."""
    return rate + z * math.sqrt(rate * (1 - rate) / reps)


# -- bootstrap ratio CI and Mann-Whitney -------------------------------------------------------


def test_ratio_ci_brackets_the_point_estimate_and_is_reproducible():
    rng = np.random.default_rng(1)
    cand, base = step_times(rng, 120, scale=1.2), step_times(rng, 120)
    r, lo, hi = bootstrap_ratio_ci(cand, base, seed=7)
    assert lo < r < hi
    assert 1.1 < r < 1.3
    assert bootstrap_ratio_ci(cand, base, seed=7) == (r, lo, hi)  # same seed, same CI
    r_mean, lo_mean, hi_mean = bootstrap_ratio_ci(cand, base, stat="mean", seed=7)
    assert lo_mean < r_mean < hi_mean
    assert r_mean == pytest.approx(cand.mean() / base.mean())


def test_ratio_ci_median_handles_even_and_odd_sizes():
    r, lo, hi = bootstrap_ratio_ci([2.0, 2.0, 2.0, 2.0], [1.0, 1.0, 1.0], seed=0, n_boot=200)
    assert (r, lo, hi) == (2.0, 2.0, 2.0)
    r, _, _ = bootstrap_ratio_ci([1.0, 3.0], [1.0, 1.0, 4.0], seed=0, n_boot=200)
    assert r == 2.0  # median(1, 3) / median(1, 1, 4)


@pytest.mark.parametrize(
    ("candidate", "baseline", "kwargs", "match"),
    [
        ([], [1.0], {}, "empty"),
        ([1.0, float("nan")], [1.0], {}, "non-finite"),
        ([1.0, 0.0], [1.0], {}, "> 0"),
        ([1.0], [1.0], {"stat": "mode"}, "median"),
        ([1.0], [1.0], {"confidence": 1.0}, "confidence"),
    ],
)
def test_ratio_ci_rejects_bad_input(candidate, baseline, kwargs, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_ratio_ci(candidate, baseline, **kwargs)


def test_mann_whitney():
    rng = np.random.default_rng(2)
    assert mann_whitney(step_times(rng, 100, scale=1.1), step_times(rng, 100)) < 1e-6
    assert mann_whitney([5.0] * 10, [5.0] * 10) == 1.0  # identical constants: no evidence
    # Exact two-sided p: U = 0 for 3 vs 3 is 2 of the C(6, 3) = 20 equally likely orderings.
    # A one-sided p (0.05) or its complement (0.95 / 0.9) would be a different test.
    assert mann_whitney([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.1)
    assert mann_whitney([4.0, 5.0, 6.0], [1.0, 2.0, 3.0]) == pytest.approx(0.1)  # two-sided: symmetric


def test_mann_whitney_p_is_uniform_under_the_null():
    # A/A: p-values spread evenly over [0, 1], so p < alpha happens in about alpha of the
    # repetitions. That rate is the false-alarm rate compare_timing's confirmation relies on.
    p = np.array([mann_whitney(step_times(np.random.default_rng(s), 50), step_times(np.random.default_rng(10_000 + s), 50))
                  for s in range(REPS)])
    assert (p < 0.05).mean() <= binomial_bound(0.05, REPS)  # measured 10/200
    assert (p < 0.5).mean() == pytest.approx(0.5, abs=0.1)  # measured 0.555
    assert p.mean() == pytest.approx(0.5, abs=0.05)  # measured 0.491


# -- TPOT verdicts: false alarms and detection --------------------------------------------------


def test_aa_within_10pct_band_passes_and_never_fails():
    # Same distribution, band ±10 %, noise a few %: the CI (about ±2 %) sits well inside the band.
    counts = verdict_counts(n=100, slowdown=1.0, tolerance=0.10, seed=10)
    assert counts[FAIL] <= binomial_bound(0.05, REPS) * REPS  # false-alarm bound: 5 % + 2 binomial SE
    assert counts[FAIL] == 0  # measured: 0/200 (CI entirely outside ±10 % never happens here)
    assert counts[PASS] >= 0.95 * REPS  # measured: 200/200 pass


def test_aa_false_alarm_rate_is_at_most_alpha_with_zero_band():
    # With a zero-width band every CI that excludes 1.0 and has p < alpha fails: this is the
    # test's raw false-alarm rate under the null, which must stay at about alpha = 5 %.
    counts = verdict_counts(n=100, slowdown=1.0, tolerance=0.0, reps=300, seed=11)
    rate = counts[FAIL] / 300
    assert rate <= binomial_bound(0.05, 300)  # <= 5 % + 2 binomial SE (7.5 %); measured 4/300


def test_injected_10pct_slowdown_fails_with_5pct_band():
    # 8 % step noise plus spikes, 200 steps a side; with 150 steps the rate drops to ~95 %.
    counts = verdict_counts(n=200, slowdown=1.10, tolerance=0.05, sigma=0.08, seed=12)
    assert counts[FAIL] >= 0.95 * REPS  # measured 200/200
    assert counts[PASS] == 0


def test_small_slowdown_inside_band_is_not_a_failure():
    counts = verdict_counts(n=100, slowdown=1.02, tolerance=0.10, reps=50, seed=13)
    assert counts[FAIL] == 0 and counts[PASS] >= 45


def test_speedup_beyond_band_fails_too():
    rng = np.random.default_rng(3)
    v = compare_timing(step_times(rng, 100, scale=0.8), step_times(rng, 100), tolerance=0.10, seed=0)
    assert v.verdict == FAIL
    assert "faster than" in v.message and "--update-baselines" in v.message


def test_timing_message_names_ratio_ci_p_band_and_source():
    rng = np.random.default_rng(4)
    v = compare_timing(step_times(rng, 100, scale=1.3), step_times(rng, 100), seed=0, source="baselines/x.json")
    assert v.verdict == FAIL and not v.passed
    assert v.ratio == pytest.approx(1.3, abs=0.05)
    assert v.ci_low < v.ratio < v.ci_high and v.p_value < 1e-6
    for piece in (f"{v.ratio:.3f}x baseline", "95% CI", f"p={v.p_value:.3g}", "outside ±10%", "baselines/x.json"):
        assert piece in v.message, (piece, v.message)


def test_straddling_or_unconfirmed_is_inconclusive():
    rng = np.random.default_rng(5)
    # Ratio ~1.10 right on the edge of ±10 %: the CI straddles it.
    v = compare_timing(step_times(rng, 60, scale=1.10), step_times(rng, 60), tolerance=0.10, seed=0)
    assert v.verdict == INCONCLUSIVE and "straddles" in v.message
    # Too few samples never gives a verdict, however clear the ratio.
    v = compare_timing([100.0, 101.0, 99.0], [80.0, 81.0, 79.0], seed=0)
    assert v.verdict == INCONCLUSIVE and "too few samples" in v.message


# -- PPL -----------------------------------------------------------------------------------------


def test_ppl_shift_of_1pct_fails_and_01pct_passes():
    stored = 17.3
    bad = compare_ppl(stored * 1.01, stored, tolerance=0.002, source="baselines/m/book-1024-float32.json")
    assert bad.verdict == FAIL and not bad.passed
    assert bad.delta_ln == pytest.approx(math.log(1.01))
    for piece in (f"{stored * 1.01:.6g}", f"{stored:.6g}", "±0.002", "baselines/m/book-1024-float32.json"):
        assert piece in bad.message, (piece, bad.message)
    assert compare_ppl(stored * 1.001, stored, tolerance=0.002).verdict == PASS
    assert compare_ppl(stored / 1.01, stored, tolerance=0.002).verdict == FAIL  # better is a change too
    assert compare_ppl(stored * math.exp(0.002), stored, tolerance=0.002).verdict == PASS  # edge is inside


@pytest.mark.parametrize("measured", [float("nan"), float("inf"), 0.0])
def test_ppl_non_finite_fails(measured):
    v = compare_ppl(measured, 10.0)
    assert v.verdict == FAIL and "finite" in v.message


# -- paired block bootstrap ----------------------------------------------------------------------


def ar1(rng: np.random.Generator, reps: int, n: int, phi: float = 0.9, sd: float = 0.3) -> np.ndarray:
    """AR(1) noise: per-token NLL differences are strongly correlated along the text."""
    return lfilter([1.0], [1.0, -phi], rng.normal(0.0, sd, (reps, n)), axis=1)


def test_block_bootstrap_covers_true_shift_on_ar1():
    rng = np.random.default_rng(20)
    shift, n = 0.05, 4096
    noise = ar1(rng, REPS, n)
    reference = rng.gamma(2.0, 1.0, n)  # any common per-token difficulty cancels in the pairing
    covered = 0
    for i in range(REPS):
        est, lo, hi = paired_block_bootstrap(reference + shift + noise[i], reference, block=256, seed=i)
        assert lo <= est <= hi
        covered += lo <= shift <= hi
    assert covered / REPS >= 0.85  # nominal 95 %; measured 92.5 % (16 blocks of a phi=0.9 series)


def test_iid_bootstrap_undercovers_on_ar1():
    # Why blocks: resampling single tokens ignores the correlation and the CI is far too narrow.
    rng = np.random.default_rng(21)
    noise = ar1(rng, 60, 1024)
    covered = sum(
        lo <= 0.05 <= hi
        for i in range(60)
        for _, lo, hi in [paired_block_bootstrap(0.05 + noise[i], np.zeros(1024), block=1, n_boot=500, seed=i)]
    )
    assert covered / 60 < 0.6  # measured 19/60


def test_block_bootstrap_zero_shift_contains_zero():
    rng = np.random.default_rng(22)
    noise = ar1(rng, 100, 4096)
    reference = rng.gamma(2.0, 1.0, 4096)
    results = [paired_block_bootstrap(reference + noise[i], reference, seed=i) for i in range(100)]
    est, lo, hi = results[0]
    assert lo <= 0.0 <= hi
    assert sum(lo <= 0.0 <= hi for _, lo, hi in results) >= 85  # measured 91/100


def test_block_bootstrap_exact_cases_and_errors():
    nll = np.linspace(1.0, 3.0, 1000)
    assert paired_block_bootstrap(nll, nll) == (0.0, 0.0, 0.0)
    est, lo, hi = paired_block_bootstrap(nll + 0.1, nll)
    assert est == pytest.approx(0.1) and lo == pytest.approx(0.1) and hi == pytest.approx(0.1)
    r, rlo, rhi = ppl_ratio_ci(nll + 0.1, nll)
    assert r == pytest.approx(math.exp(0.1)) and rlo <= r <= rhi
    with pytest.raises(ValueError, match="same tokens"):
        paired_block_bootstrap(nll, nll[:-1])


# -- findings -------------------------------------------------------------------------------------

REFRESH = Finding("refresh >= +20% PPL", "ratio_ppl", 1.20, None, "docs/findings.md#overlap-and-refresh, Pythia-2.8b")
LAZY = Finding("lazy c32 within +2% PPL", "ratio_ppl", 1.0, 1.02, "measured here, embedded default")
INT8 = Finding("INT8 v2 not faster", "ratio_tpot", 0.95, None, "docs/findings.md#int8, torchao 0.18 eager")


@pytest.mark.parametrize(
    ("finding", "ci", "verdict"),
    [
        (REFRESH, (1.35, 1.30, 1.41), PASS),
        (REFRESH, (1.05, 1.02, 1.08), FAIL),
        (REFRESH, (1.21, 1.15, 1.27), INCONCLUSIVE),
        (LAZY, (1.01, 1.005, 1.015), PASS),
        (LAZY, (1.05, 1.04, 1.06), FAIL),  # worse than the band
        (LAZY, (0.97, 0.96, 0.98), FAIL),  # an improvement beyond the band fails too
        (LAZY, (1.02, 1.01, 1.03), INCONCLUSIVE),
        (INT8, (1.30, 1.25, 1.35), PASS),
        (INT8, (0.80, 0.78, 0.82), FAIL),
    ],
)
def test_check_finding(finding, ci, verdict):
    got, message = check_finding(finding, *ci)
    assert got == verdict, message
    assert finding.name in message and finding.provenance in message
    assert f"{ci[0]:.4g}" in message and f"{ci[1]:.4g}" in message and f"{ci[2]:.4g}" in message


def test_finding_messages_say_which_side():
    _, msg = check_finding(LAZY, 0.97, 0.96, 0.98)
    assert "below the band" in msg and "lower PPL" in msg
    _, msg = check_finding(INT8, 0.80, 0.78, 0.82)
    assert "faster" in msg
    assert "[0.95, +∞]" in INT8.band_text()


def test_finding_validation_and_non_finite():
    with pytest.raises(ValueError, match="relation"):
        Finding("x", "ratio_speed", 1.0, 2.0, "here")
    with pytest.raises(ValueError, match="low"):
        Finding("x", "ratio_ppl", 2.0, 1.0, "here")
    assert check_finding(REFRESH, float("nan"), float("nan"), float("nan"))[0] == FAIL

