"""The run history's records and the baseline they pool to (history.py stores them).

A run holds, per case, the per-round TPOT samples (ms) and an `accepted` flag fixed at write time
(per run, optionally overridden per case); no verdict is stored. The baseline of a case is the
pooled samples of the last K runs in which that case was accepted (`baseline_of`, pure: the
baseline a past run had is this over the runs before it), of one library version set.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .schema.history import HISTORY_SCHEMA, HistoryRunModel
from .schema.loader import validate_stored

SCHEMA = HISTORY_SCHEMA

# History entry of a case's reference arm: "<dataset>/<case>:reference".
REFERENCE_SUFFIX = ":reference"
# The run-level calibration arm (streamllm.calibration.CalibrationArm): torch alone, no library code.
CALIBRATION_CASE = "calibration:torch-only"


# The library versions a run's absolute TPOT depends on beyond the fingerprint id (which holds
# torch but not transformers: an upgrade moved CPU decode 2x). Runs are compared only within one
# version set; a run that did not store them is a version set of its own.
VERSION_FIELDS = ("torch", "transformers")

_STAMP = "%Y%m%dT%H%M%SZ"


def valid_samples(values: Any, where: str) -> tuple[float, ...]:
    """Per-round TPOT samples as floats; ValueError on anything else (NaN marks untimed steps)."""
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"{where} must be a non-empty list of per-round TPOT ms")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{where} holds {v!r}; samples must be finite positive ms")
        out.append(float(v))
    return tuple(out)


@dataclass(frozen=True)
class CaseRun:
    samples: tuple[float, ...]  # per-round TPOT (ms) of this case in this run
    accepted: bool | None = None  # None: the run's flag decides


@dataclass(frozen=True)
class Run:
    fingerprint_id: str
    number: int
    timestamp: str  # UTC, ISO 8601
    accepted: bool
    cases: dict[str, CaseRun]
    fingerprint: dict = field(default_factory=dict)  # the full hardware fingerprint, for people
    meta: dict = field(default_factory=dict)  # commit, command, ...: provenance, never read back

    def case_accepted(self, case: str) -> bool:
        """Whether `case`'s samples of this run may enter its baseline."""
        c = self.cases.get(case)
        return c is not None and (self.accepted if c.accepted is None else c.accepted)

    @property
    def filename(self) -> str:
        stamp = datetime.fromisoformat(self.timestamp).astimezone(timezone.utc).strftime(_STAMP)
        return f"{self.number:04d}-{stamp}.json"

    def to_json(self) -> dict:
        return {
            "schema": SCHEMA,
            "fingerprint_id": self.fingerprint_id,
            "number": self.number,
            "timestamp": self.timestamp,
            "accepted": self.accepted,
            "cases": {name: {"samples_ms": list(c.samples), "accepted": c.accepted}
                      for name, c in self.cases.items()},
            "fingerprint": self.fingerprint,
            "meta": self.meta,
        }

    @classmethod
    def from_model(cls, m: HistoryRunModel) -> Run:
        return cls(m.fingerprint_id, m.number, m.timestamp, m.accepted,
                   {name: CaseRun(tuple(c.samples_ms), c.accepted) for name, c in m.cases.items()},
                   m.fingerprint, m.meta)

    @classmethod
    def from_json(cls, obj: Any, source: Path | str = "history run") -> Run:
        """A parsed run file's JSON (HistoryRunModel); HistoryError naming `source` and the fix."""
        return cls.from_model(validate_stored(obj, HistoryRunModel, source))


def version_set(fingerprint: Mapping[str, Any] | None) -> tuple | None:
    """(torch, transformers) of a run's fingerprint; None when it did not store them all."""
    values = tuple((fingerprint or {}).get(f) for f in VERSION_FIELDS)
    return None if any(v is None for v in values) else tuple(str(v) for v in values)


@dataclass(frozen=True)
class Baseline:
    case: str
    samples: tuple[float, ...]  # pooled per-round samples of the runs below
    runs: tuple[int, ...]  # run numbers pooled, oldest first
    run_medians: tuple[float, ...]  # one per run: the spread between processes
    reason: str | None = None  # why it cannot be used; None = usable

    @property
    def ok(self) -> bool:
        return self.reason is None



def baseline_of(runs: Sequence[Run], case: str, k: int = 5, *, min_runs: int = 3,
                versions: Mapping[str, Any] | None = None, where: Path | str = "the history") -> Baseline:
    """Pooled samples of the last `k` of `runs` (oldest first) in which `case` was accepted; pure, so
    the baseline a past run had is this over the runs before it."""
    if k < 1 or not 1 <= min_runs <= k:
        raise ValueError(f"need k >= 1 and 1 <= min_runs <= k (got k={k}, min_runs={min_runs})")
    wanted = version_set(versions) if versions is not None else None
    same = [r for r in runs if versions is None or (wanted is not None and version_set(r.fingerprint) == wanted)]
    chosen = [r for r in same if r.case_accepted(case)][-k:]
    samples = tuple(s for r in chosen for s in r.cases[case].samples)
    medians = tuple(statistics.median(r.cases[case].samples) for r in chosen)
    numbers = tuple(r.number for r in chosen)
    reason = None
    if len(chosen) < min_runs:
        total = sum(case in r.cases for r in runs)
        scope = "" if versions is None else (
            f" of {', '.join(f'{f} {v}' for f, v in zip(VERSION_FIELDS, wanted or ('?',) * len(VERSION_FIELDS), strict=True))}"
            f" ({sum(case in r.cases for r in same)} such run(s))")
        reason = (f"{len(chosen)} accepted run(s) with {case!r}{scope} under {where} "
                  f"({total} run(s) in all), need {min_runs}: it is checked after {min_runs - len(chosen)} "
                  "more accepted run(s)")
    return Baseline(case, samples, numbers, medians, reason)
