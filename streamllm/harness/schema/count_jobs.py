"""The counting runner's jobs file (`<record>.jobs.json`, schema `streamllm.count-jobs/1`): the cases
`countrunner.py` runs, written by this checkout (`countcases.run_runner`, for `streamllm count`,
`bisect` and `drift`) next to the record the runner writes.

The runner runs inside other trees and venvs and imports only the standard library, torch and the
target's product modules, never pydantic or the harness: it checks the `schema` string by hand
against its own copy of `COUNT_JOBS_SCHEMA` (tests/test_schema_files.py keeps the two equal) and
writes an error record on a mismatch. Everything else about a job is computed and validated here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from .loader import StoredFileError, StoredModel

COUNT_JOBS_SCHEMA = "streamllm.count-jobs/1"


class CountJobsError(StoredFileError):
    """A jobs file that cannot be read; the message names the file and the fix."""


class CountJob(BaseModel):
    """One case, flat (`countcases.CountCase.job()`): every derived number computed by this
    checkout, so the runner decides nothing."""

    model_config = ConfigDict(extra="forbid", strict=True)
    label: str
    case: dict[str, Any]  # CountCase.to_json(): model, dataset, tokens, dtype, device, fill, ...; echoed in the record
    strategy: str
    params: dict[str, Any]  # make_strategy's keywords
    fill_length: int = Field(ge=0)  # tokens in the cache before the warm-up
    cycle: int = Field(ge=1)
    warmup: int = Field(ge=0)
    steps: int = Field(ge=1)  # counted steps, whole cycles


class CountJobs(StoredModel):
    KIND: ClassVar[str] = "count jobs file"
    SCHEMA: ClassVar[str] = COUNT_JOBS_SCHEMA
    FIX_BROKEN: ClassVar[str] = ("it is written for one run of the runner: re-run the `streamllm count`, `bisect` or "
                                 "`drift` command that wrote it")
    FIX_SCHEMA: ClassVar[str] = FIX_BROKEN
    ERROR: ClassVar[type[StoredFileError]] = CountJobsError

    schema_version: Literal["streamllm.count-jobs/1"] = Field(COUNT_JOBS_SCHEMA, alias="schema")
    jobs: list[CountJob]

    @classmethod
    def of(cls, jobs: Iterable[dict[str, Any]]) -> CountJobs:
        return cls(jobs=[CountJob.model_validate(job) for job in jobs])

    def job_dicts(self) -> list[dict[str, Any]]:
        """What `countrunner.run_jobs` takes (the file's `jobs`)."""
        return self.to_json()["jobs"]
