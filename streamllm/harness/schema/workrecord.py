"""The work-record file (schema `streamllm.work-record/2`): what `countrunner.py` writes (and
`streamllm count --json`, bisect and drift keep), as pydantic v2 models; `WorkRecord` is a
`StoredModel` read through the one loader (`loader.load_stored`).

A record holds raw histograms only: per case the op counts, bytes, syncs and (on CUDA) kernels of
`steps` decode steps (`RawCounts`, the dict `opcount.count_work` returns), or the wall ms of plain
steps (`--mode time`), or the error that stopped the case. No verdict: every comparison is made by
this checkout (`countcases.compare_records`, `bisect.py`, `drift.py`).

`StoredCounts` is the same histograms as stored inside baselines and run records
(`workrecord.WorkCounts.to_json`: a `schema` tag `streamllm.workcounts/1` and the counter key); that
form is unchanged, so the committed baselines read as before.

`load_work_record(path)` reads a file or raises `WorkRecordError`, one line naming the file and
the fix, and never writes to it. Versions: /2 is this layout. /1 is the same layout under an integer
key (`"schema_version": 1`, before the record joined the loader): read as /2, nothing lost, since
such a file may be the only record of an old commit's or release's counts. Files written before
the layout was versioned (neither key, each case's counts in the stored form with a `status` word)
are refused with the fix (re-record with `streamllm count --json`); no such file is committed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from .loader import StoredFileError, StoredModel, first_problem, load_stored, validate_stored

# countrunner.py writes this string by hand (it may not import the harness); a test pins the two equal
WORK_RECORD_SCHEMA = "streamllm.work-record/2"
COUNTS_SCHEMA = "streamllm.workcounts/1"  # the stored form inside baselines and run records

Count = Annotated[StrictInt, Field(ge=0)]
FIX = "re-record it: `streamllm count --json FILE` (bisect and drift write it with --keep / --json)"


class WorkRecordError(StoredFileError):
    """A work record (or stored counts) that cannot be read; the message names the source and the fix."""


class RawCounts(BaseModel):
    """Totals over `steps` decode steps, as counted (no key, no verdict)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: Annotated[StrictInt, Field(ge=1)]
    ops: dict[str, Count]
    bytes_read: Count
    bytes_written: Count
    syncs: dict[str, Count] = {}
    kernels: Count | None = None
    memcpys: Count | None = None
    graph_replays: Count | None = None
    kernel_names: dict[str, Count] | None = None
    device_busy_us: float | None = None  # measured, not counted: never compared
    notes: list[str] = []


class StoredKey(BaseModel):
    model_config = ConfigDict(extra="allow")

    fields: dict[str, Any]
    id: str | None = None


class StoredCounts(RawCounts):
    """`WorkCounts.to_json()`: the raw counts with their schema tag and counter key."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    schema_tag: Literal["streamllm.workcounts/1"] = Field(alias="schema")
    key: StoredKey | None = None


class CaseResult(BaseModel):
    """One case in one target: its histograms (count mode), its step times (time mode), or its error."""

    model_config = ConfigDict(extra="forbid")

    label: str
    case: dict[str, Any]
    counts: RawCounts | None = None
    step_ms: list[float] | None = None
    error: str | None = None
    traceback: str | None = None
    load_s: float | None = None
    fill_s: float | None = None
    filled_by: str | None = None
    seconds: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class WorkRecord(StoredModel):
    """What one run of the runner wrote: the target's library and software, and one result per case."""

    KIND: ClassVar[str] = "work record"
    SCHEMA: ClassVar[str] = WORK_RECORD_SCHEMA
    FIX_BROKEN: ClassVar[str] = FIX
    FIX_SCHEMA: ClassVar[str] = ("re-record it with this checkout: `streamllm count --json FILE` (bisect and drift "
                                 "write it with --keep / --json)")
    ERROR: ClassVar[type[StoredFileError]] = WorkRecordError

    schema_version: Literal["streamllm.work-record/2"] = Field(WORK_RECORD_SCHEMA, alias="schema")
    mode: Literal["count", "time"] = "count"
    python: str | None = None
    torch: str | None = None
    transformers: str | None = None
    library: str | None = None
    api: str | None = None
    compat: str | None = None
    error: str | None = None  # the library did not load: no case ran
    seconds: float | None = None
    results: list[CaseResult] = []

    @property
    def ok(self) -> bool:
        """Every case ran (and at least one was asked for)."""
        return self.error is None and bool(self.results) and all(r.ok for r in self.results)

    def why_not(self) -> str:
        if self.error:
            return self.error
        return "; ".join(f"{r.label}: {r.error}" for r in self.results if not r.ok) or "no case ran"

    def entry(self, label: str) -> CaseResult | None:
        return next((r for r in self.results if r.label == label), None)

    @classmethod
    def canonical(cls, data: dict[str, Any]) -> dict[str, Any]:
        # /1 is /2's layout under the integer key: read it as /2 (a kept record may be the only one
        # of an old commit's counts). `type is int`: a JSON `true` equals 1 but is no version.
        version = data.get("schema_version")
        if "schema" not in data and type(version) is int and version == 1:
            return {"schema": WORK_RECORD_SCHEMA, **{k: v for k, v in data.items() if k != "schema_version"}}
        return data


def parse_stored_counts(obj: Any, source: str) -> StoredCounts:
    """Validate the stored form (baselines, run records); WorkRecordError names `source` and the fix."""
    fix = "counts are generated, never edited: restore the file from git or re-record the counts"
    if isinstance(obj, dict) and obj.get("schema") != COUNTS_SCHEMA:
        raise WorkRecordError(f"{source}: schema is {obj.get('schema')!r}, expected {COUNTS_SCHEMA!r}; {fix}")
    try:
        return StoredCounts.model_validate(obj)
    except ValidationError as exc:
        raise WorkRecordError(f"{source}: {first_problem(exc)}; {fix}") from None


def parse_work_record(obj: Any, source: str) -> WorkRecord:
    """`obj` (a record's parsed JSON, or the runner's dict in process) as a WorkRecord; WorkRecordError
    names `source` and the fix."""
    return validate_stored(obj, WorkRecord, source)


def load_work_record(path: str | Path) -> WorkRecord:
    """Read a work-record file (/2, or /1 read as /2); never writes to it."""
    return load_stored(path, WorkRecord)
