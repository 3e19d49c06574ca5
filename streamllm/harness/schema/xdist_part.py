"""`pytest bench -n N` worker parts' model (`<parts dir>/<slot>-<worker>.json`, schema
`streamllm.bench-part/2`; written by each worker, `bench/xdist_parts.py`, and merged by the
controller, `bench/xdist_merge.py`).

/2 against /1: a baseline record is stored as the baseline file's own models (header + record),
not as a dataclass dump with an untyped `extra`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..records import RunModel
from .baseline import BaselineHeader, BaselineRecordModel
from .loader import StoredFileError, StoredModel

PART_SCHEMA = "streamllm.bench-part/2"


class XdistPartError(StoredFileError):
    """A worker's part cannot be merged; the message names the file."""


class PartPinning(BaseModel):
    """bench.pinning.Pinning: the worker slot's GPU and cores."""

    model_config = ConfigDict(extra="forbid", strict=True)
    slot: int = Field(ge=0)
    workers: int = Field(ge=1)
    gpu: str | None
    cores: list[int]
    shared: bool = False


class PartRecord(BaseModel):
    """One baseline record of the worker's run, with the header of the file it belongs in."""

    model_config = ConfigDict(extra="forbid", strict=True)
    header: BaselineHeader
    record: BaselineRecordModel


class PartHistory(BaseModel):
    """The worker's run-history samples: case -> per-round TPOT, case -> enters its baseline."""

    model_config = ConfigDict(extra="forbid", strict=True)
    samples: dict[str, list[float]]
    accepted: dict[str, bool]
    fingerprint: dict[str, Any]


class XdistPart(StoredModel):
    KIND: ClassVar[str] = "xdist worker part"
    SCHEMA: ClassVar[str] = PART_SCHEMA
    FIX_BROKEN: ClassVar[str] = ("parts are written atomically by this checkout's workers, so this one was edited or "
                                 "written by another checkout: re-run `pytest bench -n N`")
    FIX_SCHEMA: ClassVar[str] = FIX_BROKEN
    ERROR: ClassVar[type[StoredFileError]] = XdistPartError

    schema_version: Literal["streamllm.bench-part/2"] = Field(PART_SCHEMA, alias="schema")
    worker: str
    pid: int
    pinning: PartPinning
    visible: dict[str, Any] = Field(default_factory=dict)  # what the worker saw after pinning: for people
    cells: dict[str, dict[str, str]] = Field(default_factory=dict)  # nodeid -> {case, dataset, label}
    complete: bool = False
    notes: list[str] = Field(default_factory=list)
    run: RunModel | None = None  # the worker's run record so far (the run record's own model)
    records: list[PartRecord] = Field(default_factory=list)
    history: PartHistory | None = None
