"""The (b) same-run ratio judge: a case's per-round TPOT ratios to its interleaved reference arm
against the per-process ratios stored for its key, inside the prediction band of `bands.py`
(docs/bands.md), or the named fallback band where a row has no spread to learn from."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .band_prior import Prior
from .band_rows import stored_runs
from .bands import band_verdict, guards, mde90, prediction_band
from .judge_lookup import Lookup, relative
from .ratio import RatioCI, RatioVerdict, check_ratio, ratio_ci
from .verdicts import (
    ERROR,
    FAIL,
    INCONCLUSIVE,
    MUST_CATCH,
    NOT_APPLICABLE,
    NOT_CHECKED,
    RATIO_CHECK,
    RECORDED,
    RECORDING_HALF_WIDTH,
    Check,
    aa_band,
    allocator_churn,
)


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
