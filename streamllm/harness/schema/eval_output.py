"""What `streamllm eval --per-token FILE` writes, as this project reads it back
(`scripts/phase_a_delta.py --per-token`), and phase A's cache of those traces.

The product writes the per-token file (`streamllm/results.py`, `EvalResult.per_token()`: one
trace, or `{"results": [...]}` for several strategies) and never imports the harness, so the
model of that output lives here, on the reading side, without a version field (`SCHEMA = None`);
tests/test_schema_files.py writes it through the product's own code and reads it back here, which
keeps the two in step. `streamllm eval --json` has no model: nothing in the project reads it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from .loader import StoredFileError, StoredModel

PHASE_A_SCHEMA = "streamllm.phase-a-traces/1"


class EvalOutputError(StoredFileError):
    """An eval output or trace cache that cannot be read; the message names the file and the fix."""


class PerTokenTrace(BaseModel):
    """One strategy's trace: per decode step t, every list has `tokens_scored` entries."""

    model_config = ConfigDict(extra="forbid", strict=True)
    strategy: str  # StrategySpec.label()
    tokens_scored: int = Field(ge=0)
    nll: list[float]
    step_ms: list[float | None]  # null: not timed (the parallel evaluator; NaN is stored as null)
    kv_length: list[int]
    position: list[int]
    prune_steps: list[int] = Field(default_factory=list)
    evicted: list[int] = Field(default_factory=list)


class EvalPerToken(StoredModel):
    KIND: ClassVar[str] = "`streamllm eval --per-token` file"
    SCHEMA: ClassVar[str | None] = None  # the product's output carries no version
    FIX_BROKEN: ClassVar[str] = "write it again with `streamllm eval ... --per-token {path}`"
    ERROR: ClassVar[type[StoredFileError]] = EvalOutputError

    results: list[PerTokenTrace]

    @classmethod
    def canonical(cls, data: dict[str, Any]) -> dict[str, Any]:
        # one strategy evaluated: the file is that trace itself
        return data if "results" in data else {"results": [data]}

    def by_label(self) -> dict[str, PerTokenTrace]:
        return {trace.strategy: trace for trace in self.results}


class CaseTrace(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    nll: list[float]
    prune_steps: list[int]


class PhaseATraces(StoredModel):
    """`scripts/phase_a_delta.py`'s cache (`<out>/<dataset>-<tokens>.json`): each case's per-token
    NLL and prune steps, from the parallel evaluator or a `--per-token` file."""

    KIND: ClassVar[str] = "phase A trace cache"
    SCHEMA: ClassVar[str] = PHASE_A_SCHEMA
    FIX_BROKEN: ClassVar[str] = ("delete it: it is a cache, and the next run recomputes it (from the evaluator or "
                                 "--per-token)")
    FIX_SCHEMA: ClassVar[str] = FIX_BROKEN
    ERROR: ClassVar[type[StoredFileError]] = EvalOutputError

    schema_version: Literal["streamllm.phase-a-traces/1"] = Field(PHASE_A_SCHEMA, alias="schema")
    traces: dict[str, CaseTrace]  # case name (dense, strict, lazy-c32, strict-w140, ...) -> its trace
