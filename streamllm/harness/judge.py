"""The judge: one pure function from a run's raw measurements to its verdicts.

    judge(run_raw, baselines, history) -> [CaseVerdicts per case]

`run_raw` is a `records.RawRun` (what a run measured, nothing judged); `baselines` the
`BaselineStore` to compare with; `history` the run-history root. The judge reads those stores and
never measures: where a check needs more interleaved pairs (an inconclusive ratio, or a recording
whose CI is too wide to be the centre of later bands) it returns a `RerunRequest`, the measuring
loop (bench/measuring.py `Measurements.judged`) reruns and calls the judge again with the extra rounds in the raw record.
A stored record that already holds its rerun rounds is judged exactly as the run judged it, so
`streamllm compare` reproduces the suite's verdicts.

It wraps today's judges, one module each (`judge_ppl.check_ppl`, `judge_work.check_work`,
`judge_ratio.check_ratio_vs_baseline`, `judge_history.check_history`,
`judge_device_time.check_device_time`; `judge_lookup.lookup` reads their baseline) through their
current signatures, and `run_outcome` is the one rule for a run's overall status, exit code and
the --nightly arming line (the terminal, the run record, `streamllm report`'s summary.json and
pytest's exit code all read it).

The eviction probe, the own-path agreement, the timed decode's agreement (`numerics.py`) and the
(c) findings (`findings.py`) are judged here too, from the raw record's `eviction`, `own_path`,
`own_path_nll_max_abs_diff` and `findings`; a record written before those were kept has none of
them, and the judge returns no such check for it (`streamllm compare` then shows what the run printed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .band_rows import device_time_group, store_group, store_records
from .baseline_record import BaselineKey
from .baselines import BaselineStore
from .findings import judge_finding
from .history import RunHistory
from .history_runs import CALIBRATION_CASE, REFERENCE_SUFFIX
from .judge_device_time import check_device_time
from .judge_history import HistoryInputs, check_history
from .judge_lookup import lookup
from .judge_ppl import check_ppl
from .judge_ratio import check_ratio_vs_baseline
from .judge_work import check_work, reference_counts_needed
from .numerics import agreement_check, eviction_check, own_path_check
from .records import RUN_FAIL, RUN_INCOMPLETE, RUN_PASS, Check, RawArm, RawCase, RawConditions, RawRun
from .table import armed_summary
from .verdicts import (
    FAILING,
    LIVE,
    NOT_CHECKED,
    RATIO_CHECK,
    RECORDING_HALF_WIDTH,
    WORK_CHECK,
    ratio_key,
    slice_tolerance,
)
from .workrecord import WorkCounts

GRAPH_RATIO_NA = ("a CUDA-graph step is device-bound, the eager reference host-bound: their ratio follows the host, "
                  "not the step (checked by work counts and device time)")
TPOT_NOT_MEASURED = "(b) TPOT"  # the one (b) check of a run that did not time


@dataclass(frozen=True)
class RerunRequest:
    """The judge needs more interleaved rounds of this case before it can decide: `half_width` is
    the relative CI half-width it needs (the band of an inconclusive check, or the recording limit)."""

    case: str
    dataset: str
    reason: str
    half_width: float | None = None


@dataclass
class CaseVerdicts:
    case: str
    dataset: str
    checks: list[Check] = field(default_factory=list)  # (a), then (b), then (c), in the suite's order
    rerun: RerunRequest | None = None
    # why the judge needs the reference arm's work counts, which the run did not count (None: it
    # does not): the measuring loop counts them and judges again, a stored run is judged as it is
    count_reference: str | None = None

    @property
    def ppl(self) -> list[Check]:
        return [c for c in self.checks if c.kind == "ppl"]

    @property
    def tpot(self) -> list[Check]:
        return [c for c in self.checks if c.kind == "tpot"]

    @property
    def findings(self) -> list[Check]:
        return [c for c in self.checks if c.kind == "finding"]


class _HistoryBefore(RunHistory):
    """A machine's history as it stood when the run began: a replay must not judge a run against
    itself (the run appended its own samples at its end)."""

    def __init__(self, root: Path, fingerprint_id: str, cutoff: datetime):
        super().__init__(root, fingerprint_id)
        self.cutoff = cutoff

    def runs(self):  # noqa: ANN201 - RunHistory's list of Run
        return [r for r in super().runs() if _utc(r.timestamp) < self.cutoff]


def _utc(stamp: str) -> datetime:
    """An ISO time; one without a zone is UTC (what every writer here means)."""
    t = datetime.fromisoformat(stamp)
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)


def history_as_of(root: Path | str, conditions: RawConditions) -> RunHistory:
    return _HistoryBefore(Path(root), conditions.fingerprint_id, _utc(conditions.started))


def _samples(arm: RawArm | None) -> list[float] | None:
    """The arm's clock: device time where CUDA events measured it, else wall time."""
    if arm is None:
        return None
    return list(arm.device_samples_ms or arm.samples_ms) or None


def judge_case(raw: RawCase, conditions: RawConditions, store: BaselineStore, history: RunHistory | None
               ) -> CaseVerdicts:
    """The checks of one case from its raw measurements (no verdict is stored in `raw`)."""
    out = CaseVerdicts(raw.case, raw.dataset)
    if raw.skipped or raw.ppl is None:
        return out
    what = f"{raw.label} on {raw.text}"
    found = lookup(store, BaselineKey(**raw.baseline_key))
    out.checks.append(check_ppl(raw.ppl, found, device_class=conditions.fingerprint["device_class"],
                                updating=conditions.updating, what=what))
    tolerance = slice_tolerance(conditions.dtype, conditions.device_type)
    numerics = (eviction_check(raw), own_path_check(raw, conditions.dtype, cap=tolerance),
                agreement_check(raw, tolerance))
    out.checks.extend(c for c in numerics if c is not None)
    _tpot(raw, conditions, store, history, found, what, out)
    out.checks.extend(judge_finding(f, raw.label) for f in raw.findings or [])
    return out


def _tpot(raw: RawCase, conditions: RawConditions, store: BaselineStore, history: RunHistory | None, found,
          what: str, out: CaseVerdicts) -> None:
    """(b): the work counts, the same-run ratio, a graph row's device time, the run history."""
    updating = conditions.updating
    if conditions.no_timing:
        out.checks.append(Check("tpot", TPOT_NOT_MEASURED, NOT_CHECKED,
                                f"{what}: TPOT not measured: {conditions.no_timing}",
                                {"not_measured": conditions.no_timing}))
        return
    if raw.timing is None:
        return
    work = WorkCounts.from_json(raw.work, source=f"{what} work") if raw.work else None
    reference_work = WorkCounts.from_json(raw.reference_work, source=f"{what} reference work") \
        if raw.reference_work else None
    if reference_work is None:
        out.count_reference = reference_counts_needed(work, found, updating=updating)
    out.checks.append(check_work(work, found, updating=updating, what=what, reference=reference_work))
    out.checks.append(_ratio(raw, conditions, store, found, what, out))
    device = list(raw.timing.device_samples_ms) or None
    if raw.graph:
        # A graph replay is device-bound by construction: its device time is checked against the
        # GPU model's stored processes from a machine's first run.
        key = work.key.kernel_id if work is not None and work.key is not None else None
        # the band pools the variance of every graph row of this GPU model and software (docs/bands.md)
        group = device_time_group(store_records(store), work.key.fields) if key else None
        out.checks.append(check_device_time(device, found, key=key, updating=updating, what=what,
                                            fallback=conditions.tpot_tolerance,
                                            prior=group.prior if group else None, rows=group.rows if group else None))
    name = f"{raw.dataset}/{raw.case}"
    if history is None:
        return
    out.checks.append(check_history(
        history, name, _samples(raw.timing), what=what, clock="device time (CUDA events)" if device else "wall time",
        floor=conditions.tpot_tolerance, k=conditions.history_k, nightly=conditions.nightly,
        versions=conditions.fingerprint,
        inputs=HistoryInputs(busy=raw.oversubscribed, reference_case=name + REFERENCE_SUFFIX,
                             reference_samples=_samples(raw.reference), calibration_case=CALIBRATION_CASE,
                             calibration_samples=conditions.calibration_ms or None)))


def _ratio(raw: RawCase, conditions: RawConditions, store: BaselineStore, found, what: str, out: CaseVerdicts) -> Check:
    timing, reference = raw.timing, raw.reference
    asked: list[bool] = []

    def rerun() -> tuple[list[float], list[float]]:
        # Not a measurement: the rounds the run already added, if any. A call with none stored
        # becomes a RerunRequest (the judge never calls back into measuring).
        asked.append(True)
        if timing.rerun_samples_ms and reference is not None and reference.rerun_samples_ms:
            return list(timing.rerun_samples_ms), list(reference.rerun_samples_ms)
        return [], []

    key = ratio_key(conditions.fingerprint, conditions.threads)
    # a row's band pools the variance of every row stored under its key and is corrected for as
    # many rows (docs/bands.md): read from the store, so every process (and a replay) agrees on it
    group = store_group(store, "tpot_ratio", key)
    check = check_ratio_vs_baseline(
        timing.samples_ms, reference.samples_ms if reference else None, found,
        key=key, updating=conditions.updating, what=what, prior=group.prior, rows=group.rows,
        tolerance=conditions.tpot_tolerance,
        # on a loaded machine more rounds measure the load, not the step: no rerun
        rerun=None if raw.oversubscribed else rerun,
        faults=(timing.faults_per_step, reference.faults_per_step) if reference else None,
        not_applicable=GRAPH_RATIO_NA if raw.graph else None)
    if asked and not timing.rerun_samples_ms:
        half = (RECORDING_HALF_WIDTH * conditions.tpot_tolerance if conditions.updating
                else check.details.get("band"))
        why = ("the recording's CI is wider than a band centre may be" if conditions.updating
               else f"{check.verdict}: the CI straddles the band edge")
        out.rerun = RerunRequest(raw.case, raw.dataset, why, half)
    return check


def judge(run_raw: RawRun, baselines: BaselineStore, history: Path | str | None) -> list[CaseVerdicts]:
    """Every case of a run, judged against `baselines` and the history root `history` as it stood
    when the run began (None: no history check); a case of a merged -n run under its own worker's
    conditions (its fingerprint's history, as it stood when that worker began)."""
    histories: dict[tuple[str, str], RunHistory] = {}

    def history_for(cond: RawConditions) -> RunHistory | None:
        if history is None:
            return None
        key = (cond.fingerprint_id, cond.started)
        if key not in histories:
            histories[key] = history_as_of(history, cond)
        return histories[key]

    # a merged -n run: each case under its own worker's conditions (RawRun.conditions_of)
    return [judge_case(c, cond, baselines, history_for(cond))
            for c in run_raw.cases for cond in (run_raw.conditions_of(c),)]


# -- the run's overall outcome ---------------------------------------------------------------------
@dataclass(frozen=True)
class RunOutcome:
    status: str  # RUN_PASS, RUN_FAIL or RUN_INCOMPLETE
    failing: tuple[str, ...]
    missing: tuple[str, ...]
    unarmed: str | None  # the --nightly line that fails the run, or None

    @property
    def exit_code(self) -> int:
        return 0 if self.status == RUN_PASS else 1


def check_failed(check: Mapping) -> bool:
    """Whether a check (as stored) fails its test: its own `failed` flag where it carries one."""
    return bool(check["failed"]) if "failed" in check else check.get("verdict") in FAILING


def nightly_unarmed(rows: Sequence[Mapping], options: Mapping) -> str | None:
    """Under --nightly: the line that fails the run when it cannot check every row, else None.

    A row fails the nightly when it is not armed on a device class that has baselines (some row's
    work counts or ratio were live), or when the run timed nothing (`no_timing`, e.g. -n on CPU):
    a nightly that measured no TPOT checked none."""
    if not options.get("nightly") or options.get("update_baselines"):
        return None
    fix = "record the missing baselines on this device class with `nox -s arm -- <this run's options>`"
    if options.get("no_timing"):
        return (f"streamllm: --nightly: TPOT not measured ({options['no_timing']}), so no row is armed; "
                "a nightly run checks every row: run it serially (without -n on CPU) and with timing")
    unarmed = [r for r in rows if r.get("armed") is False]
    has_baselines = any(c.get("name") in (WORK_CHECK, RATIO_CHECK) and c.get("verdict") in LIVE
                        for r in rows for c in r.get("checks") or [])
    if not unarmed or not has_baselines:
        return None
    return (f"streamllm: --nightly: {armed_summary(list(rows))}; a nightly run checks every row: {fix} "
            "(bench/README.md)")


def run_outcome(rows: Sequence[Mapping], options: Mapping) -> RunOutcome:
    """The run's word from its rows (each with its checks as dicts) and options: FAIL if a check
    failed or the nightly cannot check every row, else INCOMPLETE if a collected case has no
    result, else PASS. The exit code follows (0 only for PASS)."""
    failing = tuple(f"{r['label']} on {r['dataset']}: {c['name']}: {c['message']}"
                    for r in rows for c in r.get("checks") or [] if check_failed(c))
    missing = tuple(f"{r['label']} on {r['dataset']}" for r in rows if r.get("missing"))
    unarmed = nightly_unarmed(rows, options)
    status = RUN_FAIL if failing or unarmed else RUN_INCOMPLETE if missing else RUN_PASS
    return RunOutcome(status, failing, missing, unarmed)


__all__ = ["CaseVerdicts", "RerunRequest", "RunOutcome", "check_failed", "history_as_of", "judge", "judge_case", "nightly_unarmed",
           "run_outcome"]
