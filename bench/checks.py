"""The three assertions every benchmark makes, as plain functions (tests/test_bench_glue.py calls
them directly).

(a) PPL against the stored baseline of this configuration: |Δ ln PPL| within the tolerance of
    the device class pair (`streamllm.baselines.ppl_tolerance`).
(b) TPOT against the stored baseline of this hardware fingerprint: `compare_timing` (bootstrap CI
    of the ratio + Mann-Whitney U); INCONCLUSIVE reruns once with more rounds, then is reported
    without failing.
(c) Findings: relations to a reference strategy measured in the same run (bench/findings.py).

How a missing baseline is reported (one mechanism, used everywhere): the check's verdict is
"not checked" (or "recorded, not checked" under --update-baselines), the test emits a
`BaselineNotChecked` warning naming the key and file, and the verdict table at the end of the
run lists it. The test itself does not fail on it, but it is never a silent pass: the warning
summary and the table say what was not checked (run with `-W error::bench.checks.BaselineNotChecked`
to make a missing baseline fail).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from streamllm.baselines import BaselineError, BaselineRecord, BaselineStore, ppl_tolerance
from streamllm.stats import FAIL, INCONCLUSIVE, PASS, compare_ppl, compare_timing, run_spread_tolerance

NOT_CHECKED = "not checked"
RECORDED = "recorded"
NOT_APPLICABLE = "n/a"
ERROR = "error"  # the baseline file is corrupt or mismatched: fails the test


class BaselineNotChecked(UserWarning):
    """A check had no stored baseline to compare against (see the module docstring)."""


class VerdictInconclusive(UserWarning):
    """A timing check stayed inconclusive after its rerun; reported, not failed."""


@dataclass
class Check:
    kind: str  # "ppl" | "tpot" | "finding"
    name: str  # what was checked, e.g. "(a) PPL vs baseline"
    verdict: str  # pass | fail | inconclusive | not checked | recorded | n/a | error
    message: str
    details: dict = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.verdict in (FAIL, ERROR)

    @property
    def unchecked(self) -> bool:
        return self.verdict in (NOT_CHECKED, RECORDED)

    def to_dict(self) -> dict:
        return asdict(self)


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
    name = "(a) PPL vs baseline"
    file = _relative(found.path)
    if found.error is not None:
        if updating:  # the update replaces the unreadable file (BaselineStore.update warns)
            return Check("ppl", name, RECORDED, f"{what}: {found.error}; re-recorded by --update-baselines")
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
        return Check("ppl", name, RECORDED, message + "; re-recorded by --update-baselines", details)
    return Check("ppl", name, verdict.verdict, message, details)


# A suite run makes ~14 TPOT checks: at 95 % per row a machine behaving exactly as recorded would
# still fail one row in about half of all runs; at 99 % in about one run in eight.
RUN_BAND_CONFIDENCE = 0.99


def check_tpot(
    samples: list[float] | None,
    found: Lookup,
    *,
    fingerprint_id: str,
    updating: bool,
    what: str,
    tolerance: float = 0.10,
    rerun: Callable[[], list[float]] | None = None,
) -> Check:
    """(b): `samples` are this run's per-cycle TPOT means (ms); `rerun` returns more of them.

    Timings are only ever compared with samples stored for the same hardware fingerprint; a
    record from other machines only is "no baseline for this fingerprint: not checked".
    """
    name = "(b) TPOT vs baseline"
    file = _relative(found.path)
    if not samples:
        return Check("tpot", name, NOT_APPLICABLE, f"{what}: not timed (benchmarks disabled?)")
    if found.error is not None:
        if updating:
            return Check("tpot", name, RECORDED, f"{what}: {found.error}; re-recorded by --update-baselines")
        return Check("tpot", name, ERROR, f"{what}: {found.error}", {"file": file})
    stored = BaselineStore.tpot_samples(found.record, fingerprint_id) if found.record is not None else None
    if stored is None:
        others = sorted(found.record.tpot_samples_ms) if found.record is not None else []
        why = (f"no baseline for hardware fingerprint {fingerprint_id} (stored: {', '.join(others)})"
               if others else "no baseline")
        verdict = RECORDED if updating else NOT_CHECKED
        text = "recorded, not checked" if updating else "not checked"
        return Check("tpot", name, verdict, f"{what}: {why}: {text} (file {file})",
                     {"file": file, "fingerprint": fingerprint_id, "stored_fingerprints": others})
    runs = BaselineStore.tpot_runs(found.record, fingerprint_id)
    band = run_spread_tolerance(runs, tolerance, confidence=RUN_BAND_CONFIDENCE)
    result = compare_timing(samples, stored, tolerance=band, source=file)
    attempts = [result.as_dict()]
    if result.verdict == INCONCLUSIVE and rerun is not None and not updating:
        samples = [*samples, *rerun()]  # design-notes §5: rerun once with more rounds, then report
        result = compare_timing(samples, stored, tolerance=band, source=file)
        attempts.append(result.as_dict())
    details = {**result.as_dict(), "file": file, "fingerprint": fingerprint_id, "attempts": attempts,
               "tolerance_floor": tolerance, "baseline_runs_ms": runs}
    message = f"{what}: {result.message}"
    if band > tolerance:
        message += (f" (band ±{band:.0%}, widened from ±{tolerance:.0%} by the run-to-run spread of the "
                    f"{len(runs)} stored runs: {min(runs):.3g}–{max(runs):.3g} ms)")
    if len(attempts) > 1:
        message += " (after one rerun with more rounds)"
    if updating:
        return Check("tpot", name, RECORDED, message + "; re-recorded by --update-baselines", details)
    return Check("tpot", name, result.verdict, message, details)


def summarize(checks: list[Check], kind: str) -> str:
    """One cell of the verdict table for checks of `kind`: worst verdict wins."""
    mine = [c for c in checks if c.kind == kind]
    if not mine:
        return "-"
    order = [ERROR, FAIL, INCONCLUSIVE, NOT_CHECKED, RECORDED, PASS, NOT_APPLICABLE]
    worst = min(mine, key=lambda c: order.index(c.verdict) if c.verdict in order else 0).verdict
    if kind == "finding":
        counted = [c for c in mine if c.verdict != NOT_APPLICABLE]
        if not counted:
            return NOT_APPLICABLE
        passed = sum(c.verdict == PASS for c in counted)
        return f"{worst} {passed}/{len(counted)}"
    return worst
