"""The judges: each compares what was measured with what is stored, given what is known about the
run (a loaded CPU, the reference arm's own history, page faults), and returns a `Check`. The words,
bands and confidence levels they use are `verdicts.py`'s."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .bands import Prior, band_verdict, guards, mde90, prediction_band, stored_runs
from .baselines import BaselineError, BaselineRecord, BaselineStore
from .history import HistoryError, Judgement, RunHistory
from .ratio import RatioCI, RatioVerdict, check_ratio, ratio_ci
from .schema.workrecord import WorkRecordError
from .stats import compare_ppl
from .verdicts import (
    DEVICE_TIME_CHECK,
    ERROR,
    FAIL,
    HISTORY_CHECK,
    IMPROVEMENT,
    INCONCLUSIVE,
    MUST_CATCH,
    NOT_APPLICABLE,
    NOT_CHECKED,
    PASS,
    PPL_CHECK,
    RATIO_CHECK,
    RECORDED,
    RECORDING_HALF_WIDTH,
    REGRESSION,
    UNCONFIRMED,
    WORK_CHECK,
    Check,
    aa_band,
    allocator_churn,
    ppl_tolerance,
    robust_band,
)
from .workrecord import CounterKey, CountVerdict, WorkCounts, compare_across_software, compare_counts


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@dataclass
class Lookup:
    """A baseline lookup's outcome: the record (or None), its file, or the error reading it."""

    record: BaselineRecord | None
    path: Path
    error: BaselineError | None = None


def lookup(store: BaselineStore, key) -> Lookup:
    path = store.path_for(key)
    try:
        return Lookup(store.lookup(key), path)
    except BaselineError as exc:
        return Lookup(None, path, exc)


def check_ppl(measured_ppl: float, found: Lookup, *, device_class: str, updating: bool, what: str) -> Check:
    """(a): `what` names the strategy and dataset in the message."""
    name = PPL_CHECK
    file = _relative(found.path)
    if found.error is not None:
        if updating:  # the update replaces the unreadable file (BaselineStore.update warns)
            return Check("ppl", name, RECORDED, f"{what}: {found.error}; recorded by this run (--update/--append-baselines)")
        return Check("ppl", name, ERROR, f"{what}: {found.error}", {"file": file})
    if found.record is None:
        verdict = RECORDED if updating else NOT_CHECKED
        text = "recorded, not checked" if updating else "no baseline: not checked"
        return Check("ppl", name, verdict, f"{what}: {text} (PPL {measured_ppl:.6g}; file {file})", {"file": file})
    tolerance = ppl_tolerance(found.record.ppl_device_class, device_class)
    verdict = compare_ppl(measured_ppl, found.record.ppl, tolerance=tolerance, source=file)
    details = {**verdict.as_dict(), "file": file, "stored_device_class": found.record.ppl_device_class,
               "device_class": device_class}
    message = f"{what}: {verdict.message}"
    if found.record.ppl_device_class != device_class:
        message += f" (stored on {found.record.ppl_device_class}, measured on {device_class}: cross-device tolerance)"
    if updating:
        return Check("ppl", name, RECORDED, message + "; recorded by this run (--update/--append-baselines)", details)
    return Check("ppl", name, verdict.verdict, message, details)


def check_work(measured: WorkCounts | None, found: Lookup, *, updating: bool, what: str,
               reference: WorkCounts | None = None) -> Check:
    """(b) work counts: exact, against the counts stored under the same counter key (software
    versions, device type, dtype, model config, strategy, decoder). Any difference fails and
    names the ops that changed (`+64 aten.cat per step`).

    Where only another torch / transformers release recorded this workload (a fresh install
    resolves the newest transformers), `reference` (the reference arm's counts, this process)
    and the stored reference counts compare the strategy's own work across the release
    (`streamllm.harness.workrecord.compare_across_software`)."""
    name = WORK_CHECK
    file = _relative(found.path)
    if measured is None:
        return Check("tpot", name, NOT_APPLICABLE, f"{what}: work not counted")
    details = {"file": file, "key": measured.key.to_json() if measured.key else None, "measured": measured.summary()}
    if found.error is not None:
        if updating:
            return Check("tpot", name, RECORDED, f"{what}: {found.error}; recorded by this run (--update/--append-baselines)", details)
        return Check("tpot", name, ERROR, f"{what}: {found.error}", details)
    stored_all = found.record.work_counts if found.record is not None else {}
    stored_json = stored_all.get(measured.key.id) if measured.key is not None else None
    if stored_json is None and measured.key is not None and not updating:
        other = _other_release(measured, found, file)
        if isinstance(other, Check):
            return other
        if other is not None:
            stored, stored_reference = other
            verdict = compare_across_software(measured, stored, measured_reference=reference,
                                              stored_reference=stored_reference, label=f"{what}: work per step",
                                              source=file)
            details["diff"] = verdict.lines
            details["across_software"] = "; ".join(measured.key.differences(stored.key))
            return Check("tpot", name, _count_verdict(verdict), verdict.message, details)
    if stored_json is None:
        others = sorted(stored_all)
        why = "no stored work counts" if not others else (
            f"no stored work counts for counter key {measured.key.id} (stored: {', '.join(others)}; "
            + "; ".join(_key_differences(measured, stored_all)) + ")")
        verdict = RECORDED if updating else NOT_CHECKED
        return Check("tpot", name, verdict, f"{what}: {why}: {RECORDED if updating else NOT_CHECKED} "
                     f"({measured.summary()}; file {file})", details)
    try:
        stored = WorkCounts.from_json(stored_json, source=f"{file} work_counts[{measured.key.id}]")
    except WorkRecordError as exc:
        return Check("tpot", name, ERROR, f"{what}: {exc}", details)
    verdict = compare_counts(measured, stored, label=f"{what}: work per step", source=file)
    details["diff"] = verdict.lines
    if updating:
        return Check("tpot", name, RECORDED, verdict.message + "; recorded by this run (--update/--append-baselines)", details)
    return Check("tpot", name, _count_verdict(verdict), verdict.message, details)


def _count_verdict(verdict: CountVerdict) -> str:
    """A counter comparison's verdict in the suite's words (anything but pass or fail: not checked)."""
    return PASS if verdict.passed else FAIL if verdict.verdict == FAIL else NOT_CHECKED


def _other_release(measured: WorkCounts, found: Lookup, file: str) -> tuple[WorkCounts, WorkCounts | None] | Check | None:
    """The counts of this workload stored under another software release, and that recording's
    reference-arm counts: the latest one that has reference counts, else the latest; None if none."""
    record = found.record
    references = record.reference_work_counts if record is not None else {}
    best = None
    for key_id, stored_json in (record.work_counts if record is not None else {}).items():
        try:
            stored = WorkCounts.from_json(stored_json, source=f"{file} work_counts[{key_id}]")
            if stored.key is None or stored.key.workload_id != measured.key.workload_id:
                continue
            reference = (WorkCounts.from_json(references[key_id], source=f"{file} reference_work_counts[{key_id}]")
                         if key_id in references else None)
        except WorkRecordError as exc:
            return Check("tpot", WORK_CHECK, ERROR, str(exc), {"file": file})
        if best is None or reference is not None or best[1] is None:
            best = (stored, reference)
    return best


def _key_differences(measured: WorkCounts, stored_all: dict) -> list[str]:
    out = []
    for stored_json in stored_all.values():
        key = stored_json.get("key") if isinstance(stored_json, dict) else None
        if isinstance(key, dict) and isinstance(key.get("fields"), dict) and measured.key is not None:
            out.append(", ".join(measured.key.differences(CounterKey(key["fields"]))) or "same fields")
    return out[:2]


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
    file = _relative(found.path)
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


@dataclass
class HistoryInputs:
    """What the absolute check knows beyond the case's samples: the machine's load, and the
    reference arm's samples (a move both arms share is the machine's, not the strategy's)."""

    busy: str | None = None  # why the CPU is oversubscribed, or None
    reference_case: str | None = None  # the reference arm's history entry
    reference_samples: Sequence[float] | None = None
    # The run's torch-only calibration arm (streamllm.measure.CalibrationArm): when both arms moved,
    # it tells the machine (it moved too) from code both arms run (it held still).
    calibration_case: str | None = None
    calibration_samples: Sequence[float] | None = None


def check_history(history: RunHistory, case: str, samples: list[float] | None, *, what: str, clock: str,
                  floor: float, k: int, nightly: bool, inputs: HistoryInputs | None = None,
                  versions: Mapping[str, Any] | None = None) -> Check:
    """(b) absolute TPOT against this machine's run history (last K accepted runs): a regression
    needs Mann-Whitney p < HISTORY_ALPHA and a median ratio beyond the band (streamllm.harness.history).

    `versions` (this run's fingerprint): only runs of the same library versions (history
    VERSION_FIELDS) make the baseline. The band is robust (`robust_band`: median/MAD of the runs'
    medians), so one disturbed run does not widen it; a band a MUST_CATCH-fold slowdown stays
    inside is NOT_CHECKED (the check could not fail).

    A fail is INCONCLUSIVE when the CPU is oversubscribed (time-slicing moves absolute TPOT by more
    than the band) or when the reference arm moved alike or has no history to tell the machine from
    the strategy; then both entries are recorded as NOT_CHECKED, so the run re-bases the history.
    `details["record"]` maps history entries to the raw verdicts that decide which of them enter their
    baseline (history.enters_baseline); the history stores the samples and that flag, no verdict."""
    name = HISTORY_CHECK
    inputs = inputs or HistoryInputs()
    if not samples:
        return Check("tpot", name, NOT_APPLICABLE, f"{what}: not timed")
    try:
        base = history.baseline(case, k, versions=versions)
    except HistoryError as exc:
        return Check("tpot", name, ERROR, f"{what}: {exc}")
    spread = robust_band(base.run_medians if base.ok else [], fallback=floor)
    band = spread.width
    if base.ok and 1.0 + band >= MUST_CATCH:
        return Check("tpot", name, NOT_CHECKED,
                     f"{what} ({clock}): history band {spread.source}: even a {MUST_CATCH:g}x slowdown would pass, "
                     "so this check cannot fail: not checked (its runs disagree too much: re-base on a quiet machine)",
                     {"band_runs": len(base.runs), "band": band, "band_source": spread.source, "clock": clock,
                      "history": _relative(history.directory), "record": {case: NOT_CHECKED}, "raw": NOT_CHECKED})
    # --nightly re-judges the previous run against its own baseline, so its band comes from that baseline too.
    judgement = history.check(case, samples, band=band, k=k, nightly=nightly, versions=versions,
                              band_of=lambda medians: robust_band(medians, fallback=floor).width)
    verdict = {REGRESSION: FAIL, IMPROVEMENT: FAIL, PASS: PASS, UNCONFIRMED: INCONCLUSIVE}.get(
        judgement.verdict, NOT_CHECKED)
    record = {case: judgement.raw}
    details = {**judgement.as_dict(), "raw": judgement.raw, "clock": clock, "history": _relative(history.directory),
               "runs": len(base.runs), "band_source": spread.source}
    message = f"{what} ({clock}): {judgement.message}"
    reference: Judgement | None = None
    if inputs.reference_case and inputs.reference_samples:
        reference = history.check(inputs.reference_case, list(inputs.reference_samples), band=band, k=k,
                                  versions=versions)
        record[inputs.reference_case] = reference.raw
    if verdict == FAIL and inputs.busy:
        verdict = INCONCLUSIVE
        message += f"; NOT FAILED: the machine is oversubscribed ({inputs.busy}), rerun on a quiet machine"
        details["oversubscribed"] = inputs.busy
    elif verdict == FAIL and reference is not None and reference.raw in (judgement.raw, NOT_CHECKED):
        calibration = None
        if inputs.calibration_case and inputs.calibration_samples:
            calibration = history.check(inputs.calibration_case, list(inputs.calibration_samples), band=band, k=k,
                                        versions=versions)
            record[inputs.calibration_case] = calibration.raw
            details["calibration_history"] = calibration.as_dict()
        details["reference_history"] = reference.as_dict()
        if reference.raw == judgement.raw and calibration is not None and calibration.raw == PASS:
            # Both arms moved alike while torch alone held still: code both arms run (our decode
            # glue, the model's forward in transformers) got slower: the strategy's ratio cannot see it.
            message += (f"; the reference arm moved too ({reference.ratio:.3g}x, p={reference.p_value:.2g}) while "
                        f"the torch-only calibration arm held still ({calibration.ratio:.3g}x): code both arms "
                        "run changed, not the machine")
        else:
            verdict = INCONCLUSIVE
            record = dict.fromkeys(record, NOT_CHECKED)
            if reference.raw != judgement.raw:
                why = "its reference arm has no history here yet to tell the machine from the strategy"
            elif calibration is None:
                why = (f"its reference arm moved alike ({reference.ratio:.3g}x, p={reference.p_value:.2g}) and no "
                       "calibration arm was timed")
            elif calibration.raw == NOT_CHECKED:
                why = (f"its reference arm moved alike ({reference.ratio:.3g}x) and the calibration arm has no "
                       "history here yet")
            else:
                why = (f"its reference arm moved alike ({reference.ratio:.3g}x, p={reference.p_value:.2g}) and so "
                       f"did the torch-only calibration arm ({calibration.ratio:.3g}x)")
            message += (f"; NOT FAILED: {why}: the machine changed, not this strategy (the same-run ratio checks "
                        "the strategy); this run re-bases the history")
    details["record"] = record
    return Check("tpot", name, verdict, message, details)


def check_device_time(samples: list[float] | None, found: Lookup, *, key: str | None, updating: bool, what: str,
                      fallback: float, prior: Prior | None = None, rows: int | None = None) -> Check:
    """(b) device time of a row captured in a CUDA graph, against the per-process device times
    stored for its GPU model and software (`key`: the kernel counts' key). A graph replay is
    device-bound by construction, so its device time reproduces across processes and machines of
    one GPU model and is checked from a machine's first run. The statistic is the ratio's: a
    t-interval on the log of the per-round device times against the stored geometric mean, judged
    by the same prediction band (`prior`: this key's graph rows; `rows`: rows a run judges); rows
    with no spread to learn from keep the named ±`fallback` band."""
    name = DEVICE_TIME_CHECK
    file = _relative(found.path)
    if not samples or key is None:
        return Check("tpot", name, NOT_APPLICABLE, f"{what}: no device time measured")
    ci = ratio_ci(samples, [1.0] * len(samples))  # geometric mean (ms) and its CI
    details = {"file": file, "key": key, "device_ms": ci.as_dict()}
    if found.error is not None:
        verdict = RECORDED if updating else ERROR
        return Check("tpot", name, verdict, f"{what}: {found.error}", details)
    runs = stored_runs(found.record, "device_time_ms", key).values if found.record is not None else []
    if not runs:
        verdict = RECORDED if updating else NOT_CHECKED
        return Check("tpot", name, verdict, f"{what}: device time {ci.ratio:.4g} ms [{ci.low:.4g}, {ci.high:.4g}]; "
                     f"no stored device time for this GPU model and software: {verdict} (file {file})", details)
    band = prediction_band(runs, prior, rows or 1)
    if band is None:
        stored = float(np.exp(np.mean(np.log(runs))))
        spread = aa_band([float(r) for r in runs], fallback=fallback)
        verdict = check_ratio(ci, stored, spread.width, label=f"{what}: device ms")
        source = spread.source + "; no stated false-alarm rate"
        details.update({"stored_ms": stored, "stored_runs": runs, "band": spread.width, "band_source": source})
    else:
        mde = mde90(band)
        source = band.source + f"; MDE90 {mde:.1%}" + (" (guards 5 %)" if guards(mde) else "")
        details.update({"stored_ms": band.centre, "stored_runs": runs, "band": band.width, "band_source": source,
                        "prediction": band.as_dict(), "mde90": mde, "guards_5pct": guards(mde)})
        if not band.can_fail:
            verdict_word = RECORDED if updating else NOT_CHECKED
            return Check("tpot", name, verdict_word, f"{what}: device time {ci.ratio:.4g} ms; band {source}: even a "
                         f"{MUST_CATCH:g}x slowdown would pass, so this check cannot fail: {verdict_word}", details)
        verdict = band_verdict(ci, band, label=f"{what}: device ms")
    message = f"{verdict.message} (band {source})"
    if updating:
        return Check("tpot", name, RECORDED, message + "; recorded by this run (--update/--append-baselines)", details)
    return Check("tpot", name, verdict.verdict, message, details)
