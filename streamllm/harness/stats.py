"""Statistics behind the regression suite's verdicts (docs/semantics.md#statistics).

Three kinds of comparison, each returning pass / fail / inconclusive with a message a human can
act on:

- TPOT against a stored baseline of the same hardware fingerprint: percentile-bootstrap CI of the
  ratio candidate/baseline, confirmed by a Mann-Whitney U test (`compare_timing`).
- PPL against a stored baseline: numerics are deterministic for a fixed device class and dtype,
  so a plain tolerance on |Δ ln PPL| (`compare_ppl`).
- Findings, i.e. relations between a strategy and the reference measured in the same run: a
  paired block bootstrap over per-token ΔNLL (`paired_block_bootstrap`) or a ratio CI on TPOT,
  checked against a declared band (`check_finding`).

Only numpy and scipy; every random function takes a seed or a `numpy.random.Generator`, so a
verdict is a pure function of its inputs (no global RNG state).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as _sps

from .verdicts import FAIL, INCONCLUSIVE, PASS

# Bootstrap resamples are drawn in chunks of at most this many elements, so a long per-step
# sample (thousands of steps) cannot blow up memory while short samples stay one numpy call.
_CHUNK_ELEMENTS = 2_000_000

SeedLike = int | np.random.Generator


def _rng(seed: SeedLike) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _as_sample(values: Sequence[float], what: str, *, positive: bool = False) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError(f"{what}: empty sample")
    if not np.all(np.isfinite(arr)):
        # NaN marks untimed steps (TokenTrace.step_ms); the caller must pick steady-state steps.
        raise ValueError(f"{what}: sample has {int(np.sum(~np.isfinite(arr)))} non-finite values; pass only timed steps")
    if positive and np.any(arr <= 0):
        raise ValueError(f"{what}: timings must be > 0 (got min {arr.min():g})")
    return arr


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _stat_rows(x: np.ndarray, stat: str) -> np.ndarray:
    """stat over the last axis; median via partition (O(n), ~3x faster than np.median)."""
    if stat == "mean":
        return x.mean(axis=-1)
    n = x.shape[-1]
    if n % 2:
        return np.partition(x, n // 2, axis=-1)[..., n // 2]
    part = np.partition(x, (n // 2 - 1, n // 2), axis=-1)
    return 0.5 * (part[..., n // 2 - 1] + part[..., n // 2])


def _check_stat(stat: str) -> None:
    if stat not in ("median", "mean"):
        raise ValueError(f"stat must be 'median' or 'mean', got {stat!r}")


def _bootstrap_stat(x: np.ndarray, stat: str, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """n_boot resampled statistics of x (resampling with replacement, same size)."""
    n = x.size
    out = np.empty(n_boot)
    rows = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        out[start:stop] = _stat_rows(x[rng.integers(0, n, size=(stop - start, n))], stat)
    return out


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = 100.0 * (1.0 - confidence) / 2.0
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)


def bootstrap_ratio_ci(
    candidate: Sequence[float],
    baseline: Sequence[float],
    *,
    stat: str = "median",
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: SeedLike = 0,
) -> tuple[float, float, float]:
    """(ratio, ci_low, ci_high) of stat(candidate) / stat(baseline).

    Percentile bootstrap, the two samples resampled independently (they are separate runs, not
    paired observations). `stat="median"` is robust to the CPU's steal-time spikes;
    `stat="mean"` is for lazy strategies, whose pruning cost a median would hide (pass per-cycle
    means, see `measure.whole_cycles`).
    """
    _check_stat(stat)
    _check_confidence(confidence)
    if n_boot < 100:
        raise ValueError(f"n_boot must be >= 100 for a usable percentile CI, got {n_boot}")
    cand = _as_sample(candidate, "candidate", positive=True)
    base = _as_sample(baseline, "baseline", positive=True)
    rng = _rng(seed)
    ratio = float(_stat_rows(cand, stat) / _stat_rows(base, stat))
    boot = _bootstrap_stat(cand, stat, n_boot, rng) / _bootstrap_stat(base, stat, n_boot, rng)
    lo, hi = _percentiles(boot, confidence)
    return ratio, lo, hi


def mann_whitney(candidate: Sequence[float], baseline: Sequence[float]) -> float:
    """Two-sided Mann-Whitney U p-value: do the two samples come from the same distribution?"""
    cand = _as_sample(candidate, "candidate")
    base = _as_sample(baseline, "baseline")
    if np.ptp(np.concatenate([cand, base])) == 0.0:
        return 1.0  # all values equal: no evidence of a difference (scipy may warn here)
    p = float(_sps.mannwhitneyu(cand, base, alternative="two-sided").pvalue)
    return 1.0 if math.isnan(p) else p


# --------------------------------------------------------------------------------------------
# TPOT against a stored baseline


@dataclass(frozen=True)
class TimingVerdict:
    verdict: str  # "pass" | "fail" | "inconclusive"
    ratio: float  # stat(candidate) / stat(baseline)
    ci_low: float
    ci_high: float
    p_value: float  # two-sided Mann-Whitney U
    tolerance: float  # band is [1 - tolerance, 1 + tolerance]
    message: str
    stat: str = "median"
    confidence: float = 0.95
    n_candidate: int = 0
    n_baseline: int = 0

    @property
    def passed(self) -> bool:
        return self.verdict == PASS

    def as_dict(self) -> dict:
        return asdict(self)


def _pct(x: float) -> str:
    return f"{100.0 * x:.3g}%"


def compare_timing(
    candidate: Sequence[float],
    baseline: Sequence[float],
    *,
    tolerance: float = 0.10,
    stat: str = "median",
    confidence: float = 0.95,
    alpha: float = 0.05,
    seed: SeedLike = 0,
    n_boot: int = 2000,
    min_samples: int = 5,
    label: str = "TPOT",
    source: str | None = None,
) -> TimingVerdict:
    """Verdict on candidate timings against baseline timings (docs/semantics.md#tpot-evidence).

    PASS: the CI of the ratio lies inside [1 - tolerance, 1 + tolerance].
    FAIL: the CI lies entirely outside the band AND Mann-Whitney p < alpha. Both are required so
    that a bootstrap artefact alone cannot fail a run (false alarms cost more than a rerun). A
    speed-up beyond the band fails too: the stored number no longer describes the code, so it
    must be re-recorded on purpose.
    INCONCLUSIVE: anything else (CI straddles an edge, or outside but not confirmed, or fewer
    than `min_samples` per side); the caller reruns with more rounds, then reports.
    `source` (e.g. the baseline file) is named in the message.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    cand = _as_sample(candidate, "candidate", positive=True)
    base = _as_sample(baseline, "baseline", positive=True)
    ratio, lo, hi = bootstrap_ratio_ci(cand, base, stat=stat, confidence=confidence, n_boot=n_boot, seed=seed)
    p = mann_whitney(cand, base)
    low_edge, high_edge = 1.0 - tolerance, 1.0 + tolerance
    band = f"±{_pct(tolerance)}"
    head = (
        f"{label} {ratio:.3f}x baseline ({_pct(confidence)} CI {lo:.3f}–{hi:.3f}, p={p:.3g}, "
        f"{stat} of {cand.size} vs {base.size} samples)"
    )
    if cand.size < min_samples or base.size < min_samples:
        verdict = INCONCLUSIVE
        why = f"too few samples for a verdict (need >= {min_samples} per side); rerun with more rounds"
    elif low_edge <= lo and hi <= high_edge:
        verdict, why = PASS, f"inside {band}"
    elif hi < low_edge or lo > high_edge:
        direction = "slower than" if lo > high_edge else "faster than"
        if p < alpha:
            verdict = FAIL
            why = f"outside {band}: {direction} the band"
            if direction == "faster than":
                why += " (an improvement: re-record the baseline on purpose with --update-baselines)"
        else:
            verdict = INCONCLUSIVE
            why = f"CI outside {band} ({direction}) but not confirmed by Mann-Whitney (p >= {alpha:g}); rerun with more rounds"
    else:
        verdict = INCONCLUSIVE
        why = f"CI straddles the edge of {band}; rerun with more rounds"
    message = f"{head} {why}"
    if source:
        message += f" [baseline: {source}]"
    return TimingVerdict(
        verdict=verdict,
        ratio=ratio,
        ci_low=lo,
        ci_high=hi,
        p_value=p,
        tolerance=tolerance,
        message=message,
        stat=stat,
        confidence=confidence,
        n_candidate=int(cand.size),
        n_baseline=int(base.size),
    )


# --------------------------------------------------------------------------------------------
# PPL against a stored baseline


@dataclass(frozen=True)
class PplVerdict:
    verdict: str  # "pass" | "fail"
    measured: float
    stored: float
    delta_ln: float  # ln(measured / stored)
    tolerance: float  # on |delta_ln|
    message: str

    @property
    def passed(self) -> bool:
        return self.verdict == PASS

    def as_dict(self) -> dict:
        return asdict(self)


def compare_ppl(measured: float, stored: float, *, tolerance: float = 0.002, source: str | None = None) -> PplVerdict:
    """|ln(measured / stored)| <= tolerance passes, anything else fails.

    No statistics: for a fixed device class and dtype the evaluation is deterministic, so any
    drift beyond float noise is a real change. Non-finite or non-positive PPL fails.
    `source` (e.g. the baseline file) is named in the message.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    measured, stored = float(measured), float(stored)
    where = f" [baseline: {source}]" if source else ""
    if not (math.isfinite(measured) and math.isfinite(stored) and measured > 0 and stored > 0):
        message = f"PPL {measured:.6g} vs stored {stored:.6g}: not a finite positive perplexity{where}"
        return PplVerdict(FAIL, measured, stored, float("nan"), tolerance, message)
    delta = math.log(measured / stored)
    # A hair of slack so that a value recorded exactly at the edge is not failed by rounding.
    verdict = PASS if abs(delta) <= tolerance * (1 + 1e-9) + 1e-15 else FAIL
    where_band = "within" if verdict == PASS else "outside"
    message = (
        f"PPL {measured:.6g} vs stored {stored:.6g}: Δ ln PPL = {delta:+.5f} ({math.expm1(delta) * 100:+.3f}%) "
        f"{where_band} tolerance ±{tolerance:g} (±{_pct(tolerance)}){where}"
    )
    return PplVerdict(verdict, measured, stored, delta, tolerance, message)


# --------------------------------------------------------------------------------------------
# Findings: strategy vs reference in the same run


def paired_block_bootstrap(
    nll_strategy: Sequence[float],
    nll_reference: Sequence[float],
    *,
    block: int = 256,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: SeedLike = 0,
) -> tuple[float, float, float]:
    """(estimate, ci_low, ci_high) of ln(PPL_s / PPL_ref) = mean(NLL_s - NLL_ref).

    Both NLLs score the same tokens, so the pair difference removes the text's difficulty. Per
    token differences are autocorrelated (a hard passage is hard for both and a damaged cache
    stays damaged for a while), so an i.i.d. bootstrap would give CIs several times too narrow:
    we resample contiguous blocks (circular block bootstrap) of the difference series.
    `block` is capped at n // 2 so at least two blocks exist (one block would be a rotation of
    the whole series, a zero-width CI).
    """
    _check_confidence(confidence)
    s = _as_sample(nll_strategy, "nll_strategy")
    r = _as_sample(nll_reference, "nll_reference")
    if s.size != r.size:
        raise ValueError(f"paired samples differ in length: {s.size} vs {r.size} (they must score the same tokens)")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    d = s - r
    n = d.size
    estimate = float(d.mean())
    if n < 2:
        return estimate, estimate, estimate
    block = min(block, max(1, n // 2))
    k = -(-n // block)  # blocks per resample; the last one is cut to make exactly n tokens
    last = n - (k - 1) * block
    # Prefix sums over the circularly extended series turn each block sum into one subtraction,
    # so a resample costs O(k) instead of O(n).
    ext = np.concatenate([d, d[:block]])
    csum = np.concatenate([[0.0], np.cumsum(ext)])
    rng = _rng(seed)
    starts = rng.integers(0, n, size=(n_boot, k))
    full = csum[starts[:, :-1] + block] - csum[starts[:, :-1]]
    tail = csum[starts[:, -1] + last] - csum[starts[:, -1]]
    boot = (full.sum(axis=1) + tail) / n
    lo, hi = _percentiles(boot, confidence)
    return estimate, lo, hi


def ppl_ratio_ci(
    nll_strategy: Sequence[float],
    nll_reference: Sequence[float],
    *,
    block: int = 256,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: SeedLike = 0,
) -> tuple[float, float, float]:
    """`paired_block_bootstrap` mapped to the ratio PPL_s / PPL_ref (what `check_finding` takes)."""
    est, lo, hi = paired_block_bootstrap(
        nll_strategy, nll_reference, block=block, confidence=confidence, n_boot=n_boot, seed=seed
    )
    return math.exp(est), math.exp(lo), math.exp(hi)
