"""The (a) judge: a case's PPL against its stored PPL, with the cross-device tolerance of
`verdicts.ppl_tolerance` (the statistic is `stats.compare_ppl`)."""

from __future__ import annotations

from .judge_lookup import Lookup, relative
from .records import Check
from .stats import compare_ppl
from .verdicts import ERROR, NOT_CHECKED, PPL_CHECK, RECORDED, ppl_tolerance


def check_ppl(measured_ppl: float, found: Lookup, *, device_class: str, updating: bool, what: str) -> Check:
    """(a): `what` names the strategy and dataset in the message."""
    name = PPL_CHECK
    file = relative(found.path)
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
