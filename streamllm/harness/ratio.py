"""Same-run relative TPOT: a case against a reference arm, timed alternately in one process.

Absolute TPOT moves with the machine (another CPU model, a loaded host, a GPU whose eager decode
is host-bound and lands at another level in every process). The ratio of two arms timed in the
same process, step for step, does not: whatever slows the machine during a round slows both
arms. `streamllm.measure.time_interleaved` times the case and its reference alternately; this
module turns their per-round times into a ratio with a confidence interval and a verdict against
a stored ratio.

- The statistic is the per-round log ratio d_i = ln(a_i / b_i); its mean estimates the log of
  the geometric-mean ratio, and the CI is a Student-t interval on the d_i. Chosen over a
  bootstrap because (1) it needs no RNG, so a verdict is a pure function of the timings;
  (2) timing noise is multiplicative, so log ratios are close to symmetric and the t interval
  holds its coverage at 4-30 rounds, where a percentile bootstrap under-covers; (3) it fails safe
  under outliers: a lone slow round raises the mean by s/n but the half-width by ~t*s/n, so it
  widens the CI toward "inconclusive" and can never produce a fail alone.
- `check_ratio`: pass when the CI lies inside the band around the stored ratio; fail when the
  estimate lies outside the band AND the CI excludes the stored ratio (the change is real and
  its best estimate is beyond the band); otherwise inconclusive (rerun with more rounds). The
  band is symmetric in log space: [stored / (1 + band), stored * (1 + band)].

On synthetic rounds with 5 % noise per round and 16 rounds, an A/A run passes in 99.9 % of runs
and a 15 % slowdown fails in 99.5 % (2000 seeds; tests/test_ratio.py checks 100 and 10).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as _sps

from .verdicts import FAIL, INCONCLUSIVE, PASS, RATIO_CONFIDENCE

DEFAULT_PAIRS = 16
DEFAULT_CONFIDENCE = RATIO_CONFIDENCE
MIN_PAIRS = 3


@dataclass(frozen=True)
class RatioCI:
    ratio: float  # geometric mean of a_i / b_i
    low: float
    high: float
    pairs: int
    confidence: float
    sd_log: float  # sd of the per-pair log ratios: the noise that sets the pairs needed

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RatioVerdict:
    verdict: str  # "pass" | "fail" | "inconclusive"
    message: str
    ratio: float
    low: float
    high: float
    stored: float
    band: float

    @property
    def passed(self) -> bool:
        return self.verdict == PASS

    def as_dict(self) -> dict:
        return asdict(self)


def pair_log_ratios(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    """ln(a_i / b_i) of each pair; a and b are the per-round times of the two arms, pair by pair."""
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if x.size != y.size:
        raise ValueError(f"arms differ in rounds: {x.size} vs {y.size} (pass the pairs of one interleaved run)")
    if x.size == 0:
        raise ValueError("no pairs")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y)) and np.all(x > 0) and np.all(y > 0)):
        raise ValueError("round times must be finite and > 0")
    return np.log(x) - np.log(y)


def ratio_ci(a: Sequence[float], b: Sequence[float], *, confidence: float = DEFAULT_CONFIDENCE) -> RatioCI:
    """Geometric-mean ratio a/b over the pairs and its Student-t CI (on the log ratios)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    d = pair_log_ratios(a, b)
    n = d.size
    mean = float(d.mean())
    if n < 2:
        return RatioCI(math.exp(mean), 0.0, math.inf, n, confidence, math.nan)
    sd = float(d.std(ddof=1))
    half = float(_sps.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return RatioCI(math.exp(mean), math.exp(mean - half), math.exp(mean + half), n, confidence, sd)


def check_ratio(ci: RatioCI, stored_ratio: float, band: float, *, label: str = "TPOT ratio") -> RatioVerdict:
    """pass / fail / inconclusive of a measured ratio CI against `stored_ratio` ± `band`."""
    if not (stored_ratio > 0 and math.isfinite(stored_ratio)):
        raise ValueError(f"stored ratio must be finite and > 0, got {stored_ratio}")
    if band < 0:
        raise ValueError(f"band must be >= 0, got {band}")
    lo_edge, hi_edge = stored_ratio / (1 + band), stored_ratio * (1 + band)
    head = (f"{label} {ci.ratio:.3f} ({100 * ci.confidence:.3g}% CI {ci.low:.3f}–{ci.high:.3f}, {ci.pairs} pairs) "
            f"vs stored {stored_ratio:.3f} ±{100 * band:.3g}% [{lo_edge:.3f}, {hi_edge:.3f}]")
    resolves = math.sqrt(ci.high / ci.low) - 1.0 < band  # the CI's half-width is narrower than the band
    if ci.pairs < MIN_PAIRS:
        verdict, why = INCONCLUSIVE, f"too few pairs (need >= {MIN_PAIRS}); rerun with more rounds"
    elif lo_edge <= ci.low and ci.high <= hi_edge:
        verdict, why = PASS, "inside the band"
    elif ci.low > hi_edge or ci.high < lo_edge or (
            resolves and (ci.ratio > hi_edge or ci.ratio < lo_edge) and not ci.low <= stored_ratio <= ci.high):
        # A CI narrower than the band resolves it: an estimate beyond the edge whose CI excludes
        # the stored ratio fails. A wider CI (a loaded machine) cannot: only a whole interval
        # beyond the edge fails, so noise that widens the CI does not raise false alarms.
        side = "slower" if ci.ratio > hi_edge else "faster"
        verdict = FAIL
        why = f"{side} than the band and the CI excludes the stored ratio"
        if side == "faster":
            why += " (an improvement: re-record the ratio on purpose)"
    else:
        verdict, why = INCONCLUSIVE, "the CI reaches beyond the band; rerun with more pairs"
    return RatioVerdict(verdict, f"{head}: {verdict}, {why}", ci.ratio, ci.low, ci.high, stored_ratio, band)
