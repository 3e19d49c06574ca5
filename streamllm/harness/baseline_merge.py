"""How two baseline records of one key combine: `append_run` (`--append-baselines`: one more run's
timing, the PPL must agree) and `merge_records` (`--update-baselines`: the new record, keeping
other machines' timings and other keys' sections). Used by `BaselineStore.update` (baselines.py)."""

from __future__ import annotations

import math

from .baseline_record import BaselineRecord
from .schema.baseline import APPENDED_SECTIONS, KEYED_SECTIONS
from .verdicts import ppl_tolerance


def append_run(old: BaselineRecord, new: BaselineRecord, fingerprint_id: str) -> BaselineRecord:
    """`old` with `new`'s timing for one fingerprint added as more runs (`--append-baselines`).

    What is appended is timing only: the stored PPL, provenance and other machines' timings stay.
    The PPL must agree (same key, same numbers), else the code changed and appending would mix
    two versions: that is a re-record (`--update-baselines`), not a new run.
    """
    if old.key != new.key:
        raise ValueError(f"cannot append {new.key.id()} to {old.key.id()}: different key")
    tol = ppl_tolerance(old.ppl_device_class, new.ppl_device_class)
    if abs(math.log(new.ppl / old.ppl)) > tol:
        raise ValueError(
            f"{old.key.id()}: PPL {new.ppl:.6g} differs from the stored {old.ppl:.6g} beyond ±{tol:g} in ln PPL; "
            "the code changed: re-record with --update-baselines instead of appending"
        )
    fid = fingerprint_id
    if not new.tpot_runs_ms.get(fid):
        return old
    provenance = dict(old.provenance)
    provenance["appended_dates"] = [*provenance.get("appended_dates", []), new.provenance.get("date")]
    return old.model_copy(update=dict(
        tpot_runs_ms={**old.tpot_runs_ms, fid: [*old.tpot_runs_ms.get(fid, []), *new.tpot_runs_ms[fid]]},
        fingerprints={**old.fingerprints, **new.fingerprints},
        runs_averaged=old.runs_averaged + new.runs_averaged,
        provenance=provenance,
        **merge_sections(old, new, append=True),
    ))


def merge_sections(old: BaselineRecord, new: BaselineRecord, append: bool) -> dict[str, dict]:
    """The keyed sections of `old` updated with `new`'s keys: replaced, or (append, for the sections
    holding one entry per run) extended by this run's entries."""
    out = {}
    for section in KEYED_SECTIONS:
        mine, theirs = dict(getattr(old, section)), getattr(new, section)
        for key, value in theirs.items():
            if append and section in APPENDED_SECTIONS and key in mine:
                mine[key] = [*mine[key], *value]
            else:
                mine[key] = value
        out[section] = mine
    return out


def merge_records(old: BaselineRecord, new: BaselineRecord) -> BaselineRecord:
    """`new` (a re-record, --update-baselines) keeping `old`'s TPOT runs and fingerprints of other
    machines and its keyed sections' other keys."""
    return new.model_copy(update=dict(
        tpot_runs_ms={**old.tpot_runs_ms, **new.tpot_runs_ms},
        fingerprints={**old.fingerprints, **new.fingerprints},
        **merge_sections(old, new, append=False),
    ))
