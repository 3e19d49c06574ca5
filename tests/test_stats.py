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

from streamllm.harness.findings import Finding, check_finding
from streamllm.harness.stats import (
    compare_ppl,
    mann_whitney,
    paired_block_bootstrap,
    ppl_ratio_ci,
)
from streamllm.harness.verdicts import FAIL, INCONCLUSIVE, PASS

REPS = 200
N_BOOT = 1000


def step_times(rng: np.random.Generator, n: int, *, sigma: float = 0.04, scale: float = 1.0) -> np.ndarray:
    """CPU-like decode step times in ms: lognormal around 80 ms with a few % noise, plus 3 % of
    steps hit by a 1.5x steal-time spike (the heavy tail the median must shrug off)."""
    x = scale * rng.lognormal(math.log(80.0), sigma, n)
    x[rng.random(n) < 0.03] *= 1.5
    return x



def binomial_bound(rate: float, reps: int, z: float = 2.0) -> float:
    """rate + z standard errors of a binomial proportion over `reps` repetitions."""
    return rate + z * math.sqrt(rate * (1 - rate) / reps)


# -- bootstrap ratio CI and Mann-Whitney -------------------------------------------------------



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

