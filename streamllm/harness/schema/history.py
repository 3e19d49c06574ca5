"""Run history files' model (`history/<fingerprint_id>/<NNNN>-<stamp>.json`, schema
`streamllm.history/2`; the rules are `streamllm/harness/history.py`).

/2 against /1: a case holds its samples and its accepted flag only; /1 files also stored the
verdict the run got, which nothing read (the nightly rule re-judges a run from its samples).
`scripts/convert_stored_files.py` converts a /1 file.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .loader import StoredFileError, StoredModel

HISTORY_SCHEMA = "streamllm.history/2"

Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class HistoryError(StoredFileError):
    """A history file is malformed; the message names the file and the fix."""


class HistoryCase(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    samples_ms: list[Positive] = Field(min_length=1)  # per-round TPOT (ms) of the case in this run
    accepted: bool | None = None  # None: the run's flag decides


class HistoryRunModel(StoredModel):
    KIND: ClassVar[str] = "history run file"
    SCHEMA: ClassVar[str] = HISTORY_SCHEMA
    FIX_BROKEN: ClassVar[str] = ("history files are append-only and written atomically, so this one was edited or "
                                 "truncated: restore it with `git checkout -- {path}` or delete it (its run is then lost)")
    FIX_SCHEMA: ClassVar[str] = "convert it once with `python scripts/convert_stored_files.py {path}`"
    ERROR: ClassVar[type[StoredFileError]] = HistoryError

    schema_version: Literal["streamllm.history/2"] = Field(HISTORY_SCHEMA, alias="schema")
    fingerprint_id: str
    number: int = Field(ge=1)
    timestamp: str  # UTC, ISO 8601
    accepted: bool
    cases: dict[str, HistoryCase]
    fingerprint: dict[str, Any] = Field(default_factory=dict)  # the full hardware fingerprint (versions are read)
    meta: dict[str, Any] = Field(default_factory=dict)  # commit, command: provenance for people

    @field_validator("timestamp")
    @classmethod
    def _iso(cls, value: str) -> str:
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"timestamp {value!r} is not ISO 8601") from None
        return value


def convert_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A `streamllm.history/1` run's JSON as /2: each case's stored verdict dropped."""
    cases = {name: {k: v for k, v in case.items() if k != "verdict"} for name, case in data["cases"].items()}
    return {**data, "schema": HISTORY_SCHEMA, "cases": cases}
