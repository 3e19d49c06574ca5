"""The GPU plan's state (`.device_state/state.json`, schema `streamllm.device-state/1`; written and
read by `scripts/device_plan.py`, which brings it back from each lease under --out).

It is not in git, and it is the only record of which steps an earlier lease finished: a file that
does not load is never overwritten, and the fix moves it aside and marks the finished steps by hand
(`--mark-done`, from the committed baselines/ and history/). A file of the unversioned layout the
plan wrote before this model (`{"done": ..., "tries": ...}`) is read as /1 (the same fields), so
nothing a lease recorded is lost; the next save writes /1.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from .loader import StoredFileError, StoredModel

DEVICE_STATE_SCHEMA = "streamllm.device-state/1"
_FIX = ("move it aside (`mv {path} {path}.broken`) and mark the steps the committed baselines/ and history/ show "
        "done with `python scripts/device_plan.py --mark-done STEP,...`")


class DeviceStateError(StoredFileError):
    """The plan's state cannot be read; the message names the file and the fix."""


class StepDone(BaseModel):
    """A step that ran to its end (or was marked done by hand)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    seconds: float | None  # None: marked, not run by this state's leases
    exit: int | None
    marked: bool = False  # --mark-done: an earlier lease did it (its records are committed)


class StepTry(BaseModel):
    """One attempt at a step, done or stopped at its box."""

    model_config = ConfigDict(extra="forbid", strict=True)
    step: str
    exit: int | None  # None: stopped at its box
    seconds: float
    done: bool
    summary: list[str] = Field(default_factory=list)  # the log's armed/time/rows lines


class DeviceState(StoredModel):
    KIND: ClassVar[str] = "device plan state"
    SCHEMA: ClassVar[str] = DEVICE_STATE_SCHEMA
    FIX_BROKEN: ClassVar[str] = _FIX
    FIX_SCHEMA: ClassVar[str] = _FIX
    ERROR: ClassVar[type[StoredFileError]] = DeviceStateError

    schema_version: Literal["streamllm.device-state/1"] = Field(DEVICE_STATE_SCHEMA, alias="schema")
    done: dict[str, StepDone] = Field(default_factory=dict)  # step name -> how it finished
    tries: list[StepTry] = Field(default_factory=list)  # every attempt, done or not

    @classmethod
    def canonical(cls, data: dict[str, Any]) -> dict[str, Any]:
        # the unversioned layout (leases before the model) has exactly /1's fields: read it as /1
        if "schema" not in data and set(data) == {"done", "tries"}:
            return {"schema": DEVICE_STATE_SCHEMA, **data}
        return data
