"""The (b) same-run ratio judge, whole: a case's per-round TPOT ratios to its interleaved reference
arm, their t-interval, and its verdict against the per-process ratios stored for its key, inside
the prediction band of `bands.py` (docs/bands.md), or the named fallback band where a row has no
spread to learn from. The statistic and the judge are one module because one TPOT sample passes
through both (docs/architecture.md, "The route of one TPOT sample"); `bands.py` computes the band
from stored values only and never sees a sample.

Absolute TPOT moves with the machine (another CPU model, a loaded host, a GPU whose eager decode
is host-bound and lands at another level in every process). The ratio of two arms timed in the
same process, step for step, does not: whatever slows the machine during a round slows both
arms. `streamllm.measure.time_interleaved` times the case and its reference alternately; here
their per-round times become a ratio with a confidence interval and a verdict:

- The statistic is the per-round log ratio d_i = ln(a_i / b_i); its mean estimates the log of
  the geometric-mean ratio, and the CI is a Student-t interval on the d_i. Chosen over a
  bootstrap because (1) it needs no RNG, so a verdict is a pure function of the timings;
  (2) timing noise is multiplicative, so log ratios are close to symmetric and the t interval
  holds its coverage at 4-30 rounds, where a percentile bootstrap under-covers; (3) it fails safe
  under outliers: a lone slow round raises the mean by s/n but the half-width by ~t*s/n, so it
  widens the CI toward "inconclusive" and can never produce a fail alone.
- `band_verdict`: the CI against a prediction band (`bands.prediction_band`); `check_ratio`: the
  CI against a stored ratio ± a named band (the fallback, and the device-time judge): pass when the CI lies inside the band; fail when the estimate lies outside the band AND
  the CI excludes the stored ratio (the change is real and its best estimate is beyond the band);
  otherwise inconclusive (rerun with more rounds). The band is symmetric in log space:
  [stored / (1 + band), stored * (1 + band)].

On synthetic rounds with 5 % noise per round and 16 rounds, an A/A run passes in 99.9 % of runs
and a 15 % slowdown fails in 99.5 % (2000 seeds; tests/test_ratio.py checks 100 and 10).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as _sps

from .band_prior import Prior
from .band_rows import stored_runs
from .bands import PredictionBand, guards, mde90, prediction_band
from .judge_lookup import Lookup, relative
from .records import Check
from .verdicts import (
    ERROR,
    FAIL,
    INCONCLUSIVE,
    MUST_CATCH,
    NOT_APPLICABLE,
    NOT_CHECKED,
    PASS,
    RATIO_CHECK,
    RATIO_CONFIDENCE,
    RECORDED,
    RECORDING_HALF_WIDTH,
    aa_band,
    allocator_churn,
)

# -- the statistic: per-round log ratios and their t-interval ------------------------------------
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


def band_verdict(ci: RatioCI, band: PredictionBand, *, label: str = "TPOT ratio") -> RatioVerdict:
    """pass / fail / inconclusive of one process's value (its CI) against a prediction band.

    FAIL: the estimate lies outside the band and the CI excludes the stored mean; a CI wider than
    the band (a loaded machine, whose noise the stored processes did not have) fails only when it
    lies wholly beyond an edge. PASS: the estimate is inside and the CI resolves the band.
    Otherwise INCONCLUSIVE (the caller reruns once with more rounds)."""
    centre, lo_edge, hi_edge = band.centre, band.low, band.high
    head = (f"{label} {ci.ratio:.3f} ({100 * ci.confidence:.3g}% CI {ci.low:.3f}–{ci.high:.3f}, {ci.pairs} pairs) "
            f"vs stored {centre:.3f} ±{100 * band.width:.3g}% [{lo_edge:.3f}, {hi_edge:.3f}]")
    ci_half = 0.5 * math.log(ci.high / ci.low) if ci.low > 0 and math.isfinite(ci.high) else math.inf
    outside = abs(math.log(ci.ratio / centre)) > band.log_half
    excludes = not ci.low <= centre <= ci.high
    resolves = ci_half < band.log_half
    wholly_beyond = ci.low > hi_edge or ci.high < lo_edge
    if ci.pairs < MIN_PAIRS:
        verdict, why = INCONCLUSIVE, f"too few pairs (need >= {MIN_PAIRS}); rerun with more rounds"
    elif outside and excludes and (resolves or wholly_beyond):
        side = "slower" if ci.ratio > centre else "faster"
        verdict, why = FAIL, f"{side} than the band and the CI excludes the stored value"
        if side == "faster":
            why += " (an improvement: re-record on purpose)"
    elif not outside and resolves:
        verdict, why = PASS, "inside the band"
    elif outside:
        verdict, why = INCONCLUSIVE, "outside the band but the CI includes the stored value; rerun with more pairs"
    else:
        verdict, why = INCONCLUSIVE, "the CI is wider than the band (a loaded machine?); rerun with more pairs"
    return RatioVerdict(verdict, f"{head}: {verdict}, {why}", ci.ratio, ci.low, ci.high, centre, band.width)


# -- the judge: this run's CI against the ratios stored for its key ------------------------------------
def _half_width(low: float, high: float) -> float:
    """Relative half-width of a CI that is symmetric in log space: sqrt(high / low) - 1."""
    return math.sqrt(high / low) - 1.0


def check_ratio_vs_baseline(
    samples: list[float] | None,
    reference: list[float] | None,
    found: Lookup,
    *,
    key: str,
    updating: bool,
    what: str,
    tolerance: float = 0.10,
    rerun: Callable[[], tuple[list[float], list[float]]] | None = None,
    not_applicable: str | None = None,
    faults: tuple[float | None, float | None] | None = None,
    prior: Prior | None = None,
    rows: int | None = None,
) -> Check:
    """(b) same-run relative TPOT: per-round case / reference ratios (interleaved in this process)
    against the per-process ratios stored for this key (CPU model and threads, or GPU model).

    Band: the prediction interval of `streamllm.harness.bands` (docs/bands.md): the row's variance
    moderated by `prior` (its key's rows; None: unpooled), Šidák-corrected for `rows` rows a run
    (None: 1). FAIL needs the estimate outside it and the CI excluding the stored mean; an
    INCONCLUSIVE is rerun once with more rounds. A band a MUST_CATCH-fold slowdown passes is NOT
    CHECKED. Rows without a spread to learn from (one stored process and no prior) keep the named
    ±`tolerance` fallback, widened by a noisy recording's CI (no stated false-alarm rate).
    `faults`: minor page faults per step of the case and the reference arm; a slower ratio with the
    case arm faulting far more (`allocator_churn`) is INCONCLUSIVE, not FAIL."""
    name = RATIO_CHECK
    file = relative(found.path)
    if not_applicable:
        ci = ratio_ci(samples, reference) if samples and reference else None
        return Check("tpot", name, NOT_APPLICABLE, f"{what}: n/a: {not_applicable}",
                     {"ratio": ci.as_dict() if ci else None})
    if not samples or not reference:
        return Check("tpot", name, NOT_APPLICABLE, f"{what}: not timed (benchmarks disabled?)")
    ci = ratio_ci(samples, reference)
    if updating and rerun is not None and _half_width(ci.low, ci.high) > RECORDING_HALF_WIDTH * tolerance:
        # A recording is the centre of every later check's band, so a noisy one moves the centre
        # (a process's first case pays one-time costs). It is re-timed once with more rounds and
        # recorded from all its rounds.
        more, more_ref = rerun()
        if more and more_ref:
            ci = ratio_ci([*samples, *more], [*reference, *more_ref])
    details = {"file": file, "key": key, "ratio": ci.as_dict()}
    if found.error is not None:
        if updating:
            return Check("tpot", name, RECORDED, f"{what}: {found.error}; recorded by this run (--update/--append-baselines)", details)
        return Check("tpot", name, ERROR, f"{what}: {found.error}", details)
    stored_all = found.record.tpot_ratio if found.record is not None else {}
    got = stored_runs(found.record, "tpot_ratio", key)
    runs = got.values
    legacy = f"; {got.note}" if got.note else ""
    if got.note:
        details["legacy_key"] = got.note
    if not runs:
        why = "no stored ratio" if not stored_all else f"no stored ratio for {key} (stored: {', '.join(sorted(stored_all))})"
        verdict = RECORDED if updating else NOT_CHECKED
        return Check("tpot", name, verdict, f"{what}: ratio {ci.ratio:.3f} [{ci.low:.3f}, {ci.high:.3f}]; {why}: "
                     f"{RECORDED if updating else NOT_CHECKED}{legacy} (file {file})", details)
    band = prediction_band(runs, prior, rows or 1)
    label = f"{what}: TPOT / reference"
    if band is None:
        return _ratio_fallback((samples, reference), runs, found, key=key, updating=updating, what=what,
                               tolerance=tolerance, rerun=rerun, faults=faults, details=details, legacy=legacy)
    mde = mde90(band, _ci_half(found, key))
    details.update({"stored_ratio": band.centre, "stored_runs": runs, "band": band.width, "band_source": band.source,
                    "band_runs": band.n, "band_sd": band.s_tilde, "prediction": band.as_dict(), "mde90": mde,
                    "guards_5pct": guards(mde)})
    power = f"; MDE90 {mde:.1%}" + (" (guards 5 %)" if guards(mde) else "")
    if not band.can_fail:
        verdict = RECORDED if updating else NOT_CHECKED
        return Check("tpot", name, verdict, f"{what}: ratio {ci.ratio:.3f}; band {band.source}: even a {MUST_CATCH:g}x "
                     f"slowdown would pass, so this check cannot fail: {verdict}{legacy}", details)
    verdict = band_verdict(ci, band, label=label)
    attempts = [verdict.as_dict()]
    if verdict.verdict == INCONCLUSIVE and rerun is not None and not updating:
        more, more_ref = rerun()  # one rerun with more rounds, then report
        if more and more_ref:
            ci = ratio_ci([*samples, *more], [*reference, *more_ref])
            verdict = band_verdict(ci, band, label=label)
            attempts.append(verdict.as_dict())
    details.update({"ratio": ci.as_dict(), "attempts": attempts,
                    "page_faults_per_step": list(faults) if faults else None})
    message = (verdict.message + f" (band {band.source}{power})" + (" (after one rerun)" if len(attempts) > 1 else "")
               + legacy)
    return _ratio_final(verdict, message, details, faults=faults, updating=updating)


def _ci_half(found: Lookup, key: str) -> float:
    """The median recorded process's CI half-width (ln): how well one process resolves the row."""
    cis = stored_runs(found.record, "tpot_ratio_ci", key).values if found.record is not None else []
    halves = [0.5 * math.log(hi / lo) for lo, hi in cis if lo > 0 and hi > lo]
    return float(np.median(halves)) if halves else 0.0


def _ratio_final(verdict: RatioVerdict, message: str, details: dict, *, faults, updating: bool) -> Check:
    churn = allocator_churn(faults)
    final = verdict.verdict
    if churn and final == FAIL and verdict.ratio > verdict.stored and not updating:
        final = INCONCLUSIVE
        message += f"; NOT FAILED: {churn}"
    if updating:
        # The recording is the centre of later bands: one made while the heap grew says so.
        warn = f"; recorded while {churn}" if churn else ""
        return Check("tpot", RATIO_CHECK, RECORDED, message + "; recorded by this run (--update/--append-baselines)" + warn, details)
    return Check("tpot", RATIO_CHECK, final, message, details)


def _ratio_fallback(arms: tuple[list[float], list[float]], runs: list[float], found: Lookup, *, key: str,
                    updating: bool, what: str, tolerance: float, rerun, faults, details: dict, legacy: str) -> Check:
    """A row with no spread to learn from: the named ±tolerance band around its one stored value."""
    samples, reference = arms
    ci = RatioCI(**details["ratio"])
    stored = float(np.exp(np.mean(np.log(runs))))
    spread = aa_band([float(r) for r in runs], fallback=tolerance)
    band = spread.width
    # The stored ratio is one estimate: where its recording run's CI was wider than the band (a
    # noisy recording, e.g. eager dense on a GPU), the band takes that on too.
    cis = stored_runs(found.record, "tpot_ratio_ci", key).values
    recorded = [_half_width(lo, hi) for lo, hi in cis if lo > 0]
    if recorded:
        band = max(band, (1.0 + tolerance) * (1.0 + min(recorded)) - 1.0)
    label = f"{what}: TPOT / reference"
    verdict = check_ratio(ci, stored, band, label=label)
    attempts = [verdict.as_dict()]
    if verdict.verdict == INCONCLUSIVE and rerun is not None and not updating:
        more, more_ref = rerun()
        if more and more_ref:
            ci = ratio_ci([*samples, *more], [*reference, *more_ref])
            verdict = check_ratio(ci, stored, band, label=label)
            attempts.append(verdict.as_dict())
    details.update({"ratio": ci.as_dict(), "stored_ratio": stored, "stored_runs": runs, "band": band,
                    "band_source": spread.source + "; no stated false-alarm rate", "band_runs": spread.runs,
                    "band_sd": spread.sd, "attempts": attempts, "page_faults_per_step": list(faults) if faults else None})
    message = verdict.message + f" (band {spread.source}; no stated false-alarm rate)" + legacy
    return _ratio_final(verdict, message, details, faults=faults, updating=updating)
