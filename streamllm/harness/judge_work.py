"""The (b) work judge: a case's work counts per step against the counts stored under the same
counter key, exactly (`workrecord.compare_counts`), or across a software release through the
reference arm's counts (`workrecord.compare_across_software`)."""

from __future__ import annotations

from .judge_lookup import Lookup, relative
from .records import Check
from .schema.workrecord import WorkRecordError
from .verdicts import ERROR, FAIL, NOT_APPLICABLE, NOT_CHECKED, PASS, RECORDED, WORK_CHECK
from .work_compare import CountVerdict, compare_across_software, compare_counts
from .workrecord import CounterKey, WorkCounts


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
    file = relative(found.path)
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


def reference_counts_needed(measured: WorkCounts | None, found: Lookup, *, updating: bool) -> str | None:
    """Why the judge needs the reference arm's counts of this case, or None: a recording stores
    them, and a case whose counter key is not stored is compared across a release through them.
    A check that finds its key stored compares the case's counts alone."""
    if measured is None:
        return None
    if updating:
        return "a recording stores the reference arm's counts"
    stored = found.record.work_counts if found.record is not None else {}
    if measured.key is None or measured.key.id not in stored:
        return "no stored counts under this counter key: the reference arm's counts compare across the release"
    return None


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
