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

from .verdicts import FAIL, PASS

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



def _pct(x: float) -> str:
    return f"{100.0 * x:.3g}%"



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
