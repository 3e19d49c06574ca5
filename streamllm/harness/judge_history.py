"""The (b) absolute judge: a case's TPOT against this machine's run history (last K accepted runs,
same library versions), with the reference arm and the torch-only calibration arm telling a
machine that changed from a strategy that did (`history.RunHistory` holds the samples and the rule)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .history import HistoryError, Judgement, RunHistory
from .judge_lookup import relative
from .records import Check
from .verdicts import (
    ERROR,
    FAIL,
    HISTORY_CHECK,
    IMPROVEMENT,
    INCONCLUSIVE,
    MUST_CATCH,
    NOT_APPLICABLE,
    NOT_CHECKED,
    PASS,
    REGRESSION,
    UNCONFIRMED,
    robust_band,
)


@dataclass
class HistoryInputs:
    """What the absolute check knows beyond the case's samples: the machine's load, and the
    reference arm's samples (a move both arms share is the machine's, not the strategy's)."""

    busy: str | None = None  # why the CPU is oversubscribed, or None
    reference_case: str | None = None  # the reference arm's history entry
    reference_samples: Sequence[float] | None = None
    # The run's torch-only calibration arm (streamllm.calibration.CalibrationArm): when both arms moved,
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
                      "history": relative(history.directory), "record": {case: NOT_CHECKED}, "raw": NOT_CHECKED})
    # --nightly re-judges the previous run against its own baseline, so its band comes from that baseline too.
    judgement = history.check(case, samples, band=band, k=k, nightly=nightly, versions=versions,
                              band_of=lambda medians: robust_band(medians, fallback=floor).width)
    verdict = {REGRESSION: FAIL, IMPROVEMENT: FAIL, PASS: PASS, UNCONFIRMED: INCONCLUSIVE}.get(
        judgement.verdict, NOT_CHECKED)
    record = {case: judgement.raw}
    details = {**judgement.as_dict(), "raw": judgement.raw, "clock": clock, "history": relative(history.directory),
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
