"""Same-run relative TPOT (issue #11 item 2): a case against a reference arm, interleaved.

Absolute TPOT moves with the machine (another CPU model, a loaded host, a GPU whose eager decode
is host-bound and lands at another level in every process). The ratio of two arms timed in the
same process, round for round, does not: whatever slows the machine during a pair slows both of
its rounds. So each case is timed in rounds interleaved with a reference arm, and the ratio is
asserted against a stored ratio band on any machine of the device class.

Design:
- `interleave(run_a, run_b, pairs)` times A and B alternately, the order flipping every pair
  (A B, B A, A B, ...): a drift within a pair (warming, throttling, a neighbour's load ramp)
  then biases neither arm, and effects of "who ran last" (caches, clocks) cancel over pairs.
- The statistic is the per-pair log ratio d_i = ln(a_i / b_i); its mean estimates the log of
  the geometric-mean ratio, and the CI is a Student-t interval on the d_i. Chosen over a
  bootstrap over pairs because (1) it needs no RNG, so a verdict is a pure function of the
  timings; (2) timing noise is multiplicative, so log ratios are close to symmetric and the
  t interval holds its coverage at 10-30 pairs, where a percentile bootstrap under-covers;
  (3) it fails safe under outliers: a lone slow round raises the mean by s/n but the half-width
  by ~t*s/n, so it widens the CI toward "inconclusive" and can never produce a fail alone.
- `check_ratio`: pass when the CI lies inside the band around the stored ratio; fail when the
  estimate lies outside the band AND the CI excludes the stored ratio (the change is real and
  its best estimate is beyond the band); otherwise inconclusive (rerun with more pairs). The
  band is symmetric in log space: [stored / (1 + band), stored * (1 + band)].

Recommended: 16 pairs (`DEFAULT_PAIRS`) for a ±10 % band at 5 % per-round noise (per-pair log
ratio sd ~0.07): an A/A run passes in 99.9 % of runs (never fails) and a 15 % slowdown fails in 99.5 %
(2000 synthetic seeds; tests/test_ratio.py checks 100 and 10). `pairs_needed` gives the count for the
noise a machine shows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as _sps

from .stats import FAIL, INCONCLUSIVE, PASS

DEFAULT_PAIRS = 16
DEFAULT_CONFIDENCE = 0.95
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
    if ci.pairs < MIN_PAIRS:
        verdict, why = INCONCLUSIVE, f"too few pairs (need >= {MIN_PAIRS}); rerun with more rounds"
    elif lo_edge <= ci.low and ci.high <= hi_edge:
        verdict, why = PASS, "inside the band"
    elif (ci.ratio > hi_edge or ci.ratio < lo_edge) and not ci.low <= stored_ratio <= ci.high:
        side = "slower" if ci.ratio > hi_edge else "faster"
        verdict = FAIL
        why = f"{side} than the band and the CI excludes the stored ratio"
        if side == "faster":
            why += " (an improvement: re-record the ratio on purpose)"
    else:
        verdict, why = INCONCLUSIVE, "the CI reaches beyond the band; rerun with more pairs"
    return RatioVerdict(verdict, f"{head}: {verdict}, {why}", ci.ratio, ci.low, ci.high, stored_ratio, band)


def interleave(
    run_a: Callable[[], float],
    run_b: Callable[[], float],
    rounds: int = DEFAULT_PAIRS,
    *,
    warmup: int = 1,
) -> tuple[list[float], list[float]]:
    """Call the round-callables alternately and return their per-round results (a, b).

    Each callable runs one timed round and returns its time (ms; e.g. the round's mean TPOT over
    whole eviction cycles). `rounds` pairs are recorded after `warmup` unrecorded pairs; pair i
    runs A then B when i is even and B then A when odd (A B B A A B ...), so drift within a pair
    and order effects cancel.
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1 and warmup >= 0 (got {rounds}, {warmup})")
    a: list[float] = []
    b: list[float] = []
    for i in range(warmup + rounds):
        first, second = (run_a, run_b) if i % 2 == 0 else (run_b, run_a)
        x, y = float(first()), float(second())
        if i < warmup:
            continue
        ta, tb = (x, y) if i % 2 == 0 else (y, x)
        a.append(ta)
        b.append(tb)
    return a, b


def timed_round(fn: Callable[[], object], sync: Callable[[], None] = lambda: None) -> Callable[[], float]:
    """A round-callable for `interleave`: wall time of `fn()` in ms, `sync()` before each clock read
    (pass torch.cuda.synchronize on CUDA). For per-step TPOT, divide by the round's steps."""

    def run() -> float:
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return (time.perf_counter() - start) * 1e3

    return run


def pairs_needed(sd_log: float, band: float, *, confidence: float = DEFAULT_CONFIDENCE,
                 aa_pass: float = 0.99, max_pairs: int = 1000) -> int:
    """Smallest number of pairs at which an A/A run (true ratio = stored) passes with probability
    `aa_pass`: the CI half-width plus the estimate's own spread must fit in the band,
    (t_{n-1} + z) * sd / sqrt(n) <= ln(1 + band). A slowdown of band + a few sd/sqrt(n) is then
    detected with about the same probability. `sd_log`: RatioCI.sd_log of a first run."""
    if band <= 0 or sd_log < 0:
        raise ValueError("need band > 0 and sd_log >= 0")
    z = float(_sps.norm.ppf(0.5 + aa_pass / 2))
    edge = math.log1p(band)
    for n in range(MIN_PAIRS, max_pairs + 1):
        t = float(_sps.t.ppf(0.5 + confidence / 2, n - 1))
        if (t + z) * sd_log / math.sqrt(n) <= edge:
            return n
    return max_pairs
