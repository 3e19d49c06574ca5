"""The suite's run record: one format, owned by the library (bench writes it, `streamllm report` reads it).

A run record is the JSON that `pytest bench` writes under `<report dir>/runs/` (schema
`streamllm.bench-run/2`): the run's options, machine fingerprint and provenance, and one entry
per (case, dataset) with its PPL, TPOT, same-run ratio, work counts and checks. The schema is
defined once, here, as pydantic models; `validate_run` / `load_raw` check a file on read and name
the file and the fix when it does not match.

`RawRun` is the record's *raw* part (`run["raw"]`): what was measured and under which conditions,
and no verdict. `streamllm.harness.judge.judge` turns it into checks; `streamllm compare` re-judges
a stored run from it alone. The judged fields beside it (`results[].checks`, `verdicts`) are what the
run printed, kept for the report until it renders the judge's output directly. `Check` is the
record of one check (what the judges return and the run file keeps under `results[].checks`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

if TYPE_CHECKING:  # the product's timing run, read by RawArm.from_timing (a type only: no torch at import)
    from streamllm.measure import TimingRun

# Generated output (run JSONs, the rendered report) goes under this ignored folder; the run history
# that the TPOT check reads is tracked, apart from it, under history/.
DEFAULT_REPORT_DIR = "out"
DEFAULT_HISTORY_DIR = "history"

RUN_SCHEMA = "streamllm.bench-run/2"
READABLE_SCHEMAS = ("streamllm.bench-run/1", RUN_SCHEMA)  # /1: before (b) held ratio and work counts

# The verdict words are verdicts.py's; the check record that carries one is defined here, with the
# raw record it is judged from, so a TPOT sample's route from raw record to verdict reads verdicts.py
# but passes through no function of it (docs/architecture.md, "The route of one TPOT sample").
from .verdicts import FAILING, LIVE, NOT_CHECKED, RECORDED, VerdictWord  # noqa: E402


class Check(BaseModel):
    """One assertion of one case: what was checked, the verdict, and the numbers behind it."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["ppl", "tpot", "finding"]
    name: str
    verdict: VerdictWord
    message: str
    details: dict[str, Any] = Field(default_factory=dict)

    def __init__(self, kind: str, name: str, verdict: str, message: str, details: dict | None = None, **kw: Any):
        super().__init__(kind=kind, name=name, verdict=verdict, message=message, details=details or {}, **kw)

    @property
    def failed(self) -> bool:
        return self.verdict in FAILING

    @property
    def unchecked(self) -> bool:
        return self.verdict in (NOT_CHECKED, RECORDED)

    @property
    def live(self) -> bool:
        return self.verdict in LIVE

    def to_dict(self) -> dict:
        return self.model_dump()


class CaseModel(BaseModel):
    """One (case, dataset) of a run; fields a report reads are typed, the rest pass through."""

    model_config = ConfigDict(extra="allow")
    dataset: str
    case: str
    label: str
    ppl: float | None = None
    ppl_delta_vs_dense_pct: float | None = None
    tpot_ms_mean: float | None = None
    tpot_ms_median: float | None = None
    speedup: float | None = None
    verdicts: dict[str, str] = Field(default_factory=dict)
    skipped: str | None = None
    transform: str | None = None
    sweeps: list[str] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)
    seconds: float = 0.0
    evaluation: dict[str, Any] | None = None
    timing: dict[str, Any] | None = None
    reference_timing: dict[str, Any] | None = None
    ratio: dict[str, Any] | None = None
    work: dict[str, Any] | None = None
    checks: list[Check] = Field(default_factory=list)
    missing: bool = False  # collected but no result came back: the run is incomplete, not passed


# A run's overall word: FAIL if a check failed, else INCOMPLETE if a collected case has no result,
# else PASS (a run missing a case cannot have passed it).
RUN_PASS, RUN_FAIL, RUN_INCOMPLETE = "PASS", "FAIL", "INCOMPLETE"


def run_status(failing: list, missing: list) -> str:
    """The overall word of a run with these failing checks and these cases that have no result."""
    return RUN_FAIL if failing else RUN_INCOMPLETE if missing else RUN_PASS



# -- the raw part: measurements only ---------------------------------------------------------------
RAW_SCHEMA = "streamllm.bench-raw/1"


class RawArm(BaseModel):
    """One arm's timing: per-round TPOT samples (ms), the rerun's rounds apart, CUDA device time."""

    model_config = ConfigDict(extra="forbid")
    samples_ms: list[float] = Field(default_factory=list)
    rerun_samples_ms: list[float] = Field(default_factory=list)  # rounds added after an inconclusive first look
    device_samples_ms: list[float] = Field(default_factory=list)  # CUDA events; empty on CPU
    faults_per_step: float | None = None  # minor page faults per measured step
    tpot_ms_mean: float | None = None  # over whole eviction cycles (the table's TPOT columns)
    tpot_ms_median: float | None = None

    @classmethod
    def from_timing(cls, timing: TimingRun) -> RawArm:
        """The arm as the judge reads it, from the measured run (streamllm.measure.TimingRun): built
        here, beside its definition, so a TPOT sample goes from the timing run into the raw record
        in one step (docs/architecture.md, "The route of one TPOT sample")."""
        return cls(samples_ms=timing.samples, rerun_samples_ms=list(timing.rerun_samples),
                   device_samples_ms=timing.device_samples if timing.device_ms else [],
                   faults_per_step=timing.faults_per_step, tpot_ms_mean=timing.mean_ms,
                   tpot_ms_median=timing.median_ms)


class RawNll(BaseModel):
    """The per-token NLL the PPL came from, summarized (the full trace stays in `results[]`)."""

    model_config = ConfigDict(extra="forbid")
    count: int
    mean: float
    max: float | None = None
    p99: float | None = None


class RawHolding(BaseModel):
    """After decode step `step`: the token ids the cache's tensors hold (read from layer 0's values,
    streamllm.ownpath.held_tokens) and the ids the closed-form schedule says it holds, both sorted."""

    model_config = ConfigDict(extra="forbid")
    step: int
    held: list[int]
    expected: list[int]


class RawEviction(BaseModel):
    """What the eviction check reads: the strategy's parameters (the schedule is computed from them
    alone), the evaluation's prune events and attended lengths, and for a dynamic-cache row the
    tokens its timed slice's tensors hold after its last step (`holding`)."""

    model_config = ConfigDict(extra="forbid")
    spec: dict[str, Any]  # streamllm.strategies.StrategySpec fields
    tokens: int  # the text length the evaluation scored
    prune_steps: list[int] | None = None  # None: the evaluation kept no trace
    kv_length: list[int] | None = None
    holding: RawHolding | None = None


class RawOwnPath(BaseModel):
    """A static or ring row's own decode across its first evictions (streamllm.ownpath.OwnPath),
    the same slice through the eager dynamic cache (the calibration that sets the tolerance), and
    the reference evaluator's per-token NLL at both slices' steps."""

    model_config = ConfigDict(extra="forbid")
    strategy: str
    cache: str
    decoder: str
    fill: str
    steps: list[int]
    nll: list[float | None]  # None: not finite (JSON has no NaN); the judge reads it as NaN
    events: list[int]
    holdings: list[RawHolding] = Field(default_factory=list)
    reference: str | None = None  # the reference evaluator ("the parallel evaluator")
    reference_nll: list[float | None] | None = None  # the evaluator's NLL at `steps`
    calibration_steps: list[int] | None = None
    calibration_nll: list[float | None] | None = None  # eager dynamic cache, same weights
    calibration_reference_nll: list[float | None] | None = None  # the evaluator's NLL at `calibration_steps`


class RawFinding(BaseModel):
    """One (c) finding of a case: its band (bench/findings.py's catalog, as the run used it) and
    what was measured for it (estimate and CI), or why it was not measured."""

    model_config = ConfigDict(extra="forbid")
    name: str
    relation: str  # streamllm.harness.findings.RELATIONS
    low: float | None
    high: float | None
    provenance: str
    reference: str  # the reference case (its label for a two-case ratio, its id for a one-run finding)
    trace: bool = False  # measured on one run's arrays (bench/findings.py TRACE_FINDINGS)
    not_applicable: str | None = None  # why it does not apply to this run
    not_measured: str | None = None  # TPOT / step times not measured (the run's no_timing)
    unmeasurable: str | None = None  # the arrays could not give a number (too few events, ...)
    estimate: float | None = None  # None where the measurement was not finite
    ci_low: float | None = None
    ci_high: float | None = None


class RawCase(BaseModel):
    """One (case, dataset): what was measured, nothing judged."""

    model_config = ConfigDict(extra="forbid")
    case: str
    dataset: str  # the --dataset name (history entries are keyed by it)
    label: str
    text: str  # the text's name as the evaluation reports it (the judges' messages name it)
    baseline_key: dict[str, Any]  # BaselineKey fields: which stored record this case is judged against
    graph: bool = False  # captured in a CUDA graph (its ratio is not judged; its device time is)
    skipped: str | None = None
    ppl: float | None = None
    nll: RawNll | None = None
    ppl_delta_vs_dense_pct: float | None = None
    speedup: float | None = None  # dense TPOT / this TPOT, same run
    floor_ms: float | None = None  # bytes a step must read / measured copy bandwidth
    timing: RawArm | None = None
    reference: RawArm | None = None  # the interleaved reference arm
    work: dict[str, Any] | None = None  # WorkCounts.to_json()
    reference_work: dict[str, Any] | None = None
    own_path_nll_max_abs_diff: float | None = None  # timed decode vs evaluator, where both exist
    own_path_tolerance: float | None = None  # the timed-slice tolerance the run used (the judge derives it)
    agreement_steps: int | None = None  # timed steps the max |ΔNLL| above is taken over
    evaluator: str | None = None  # the evaluation's evaluator ("parallel", "token", ...)
    # The eviction check, the own path and the (c) findings; None in records written before they
    # were kept (the judge then leaves those checks to what the run printed).
    eviction: RawEviction | None = None
    own_path: RawOwnPath | None = None
    findings: list[RawFinding] | None = None
    oversubscribed: str | None = None  # the machine's load when the case was judged (CPU), or None


class RawConditions(BaseModel):
    """The run's conditions every case is judged under."""

    model_config = ConfigDict(extra="forbid")
    started: str  # UTC ISO time the run began: a replay reads only history from before it
    fingerprint: dict[str, Any]
    fingerprint_id: str
    threads: int
    versions: dict[str, str | None] = Field(default_factory=dict)
    device_type: str = "cpu"
    dtype: str = "float32"
    tpot_tolerance: float = 0.10
    history_k: int = 5
    nightly: bool = False
    updating: bool = False  # --update/--append-baselines: checks record instead of judging
    no_timing: str | None = None  # why TPOT was not measured, or None
    calibration_ms: list[float] = Field(default_factory=list)  # the torch-only arm (streamllm.calibration.CalibrationArm)


class RawWorker(BaseModel):
    """One worker of a merged `pytest bench -n` run: the conditions it measured under (its GPU,
    fingerprint, threads, start) and the cases it measured ("<case>-<dataset>")."""

    model_config = ConfigDict(extra="forbid")
    worker: str
    conditions: RawConditions
    cases: list[str] = Field(default_factory=list)


class RawRun(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    schema_: str = Field(default=RAW_SCHEMA, alias="schema")
    conditions: RawConditions  # a merged -n run: the first worker's
    cases: list[RawCase] = Field(default_factory=list)
    # A merged -n run: every worker's conditions (bench/xdist_merge.py). Empty for one process and
    # in records written before merges kept them: `conditions` is then every case's.
    workers: list[RawWorker] = Field(default_factory=list)

    def conditions_of(self, case: RawCase) -> RawConditions:
        """The conditions `case` was measured under: its worker's in a merged run, else the run's."""
        cell = f"{case.case}-{case.dataset}"
        return next((w.conditions for w in self.workers if cell in w.cases), self.conditions)

    def to_json(self) -> dict:
        return self.model_dump(by_alias=True, mode="json")


class RunModel(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    schema_: str = Field(alias="schema")
    created: str
    runtime_s: float | None = None
    command: str = ""
    options: dict[str, Any] = Field(default_factory=dict)
    model: dict[str, Any] | None = None
    fingerprint: dict[str, Any] = Field(default_factory=dict)
    fingerprint_id: str | None = None
    results: list[CaseModel] = Field(default_factory=list)
    raw: RawRun | None = None  # absent in runs written before the raw part existed

    def to_json(self) -> dict:
        return self.model_dump(by_alias=True, mode="json")


class RunRecordError(ValueError):
    """A run record file cannot be read; the message names the file and the fix."""


FIX = "pass a file that `pytest bench` wrote under out/runs/, or re-run `pytest bench`"


def validate_run(data: Any, source: str = "run record") -> RunModel:
    """The run record `data` as a RunModel, or RunRecordError naming `source` and the first problem."""
    if not isinstance(data, dict):
        raise RunRecordError(f"{source}: not a bench run (top level is {type(data).__name__}); {FIX}")
    if data.get("schema") not in READABLE_SCHEMAS:
        raise RunRecordError(f"{source}: not a bench run (schema {data.get('schema')!r}, this streamllm reads "
                             f"{', '.join(READABLE_SCHEMAS)}); {FIX}")
    try:
        return RunModel.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RunRecordError(f"{source}: {where}: {first['msg']} ({exc.error_count()} problem(s)); {FIX}") from None


def load_run(path: str | os.PathLike) -> RunModel:
    """A stored run record, validated; RunRecordError naming the file and the fix otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunRecordError(f"run file {path} does not exist; {FIX}") from None
    except IsADirectoryError:
        raise RunRecordError(f"run file {path} is a directory; {FIX}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunRecordError(f"run file {path}: cannot be read as JSON ({exc}); {FIX}") from None
    return validate_run(data, f"run file {path}")


def load_raw(path: str | os.PathLike) -> RawRun:
    """The raw part of a stored run record (what `streamllm compare` judges)."""
    run = load_run(path)
    if run.raw is None:
        raise RunRecordError(f"run file {path}: written before runs kept their raw measurements (no `raw` part, "
                             f"schema {run.schema_}); re-run `pytest bench` with this checkout to get one")
    return run.raw
