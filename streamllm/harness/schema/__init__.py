"""One pydantic model per JSON file the project stores and reads back (issue #28 item 2), and one
loader (`load_stored`) that turns a broken file into a one-line error naming the file and the fix.

| file | model | module |
|---|---|---|
| `baselines/<model>/<dataset>-<tokens>-<dtype>.json` | `BaselineFileModel` | `schema/baseline.py` |
| `history/<fingerprint_id>/<NNNN>-<stamp>.json` | `HistoryRunModel` | `schema/history.py` |
| `pytest bench -n N` worker parts | `XdistPart` | `schema/xdist_part.py` |
| `out/runs/*.json` (run records) | `RunModel` / `RawRun` | `streamllm/harness/records.py` |
| `streamllm count --json`, bisect/drift records | `WorkRecord` (work counts inside baselines: `StoredCounts`) | `schema/workrecord.py` |
| the counting runner's `<record>.jobs.json` | `CountJobs` | `schema/count_jobs.py` |
| `.device_state/state.json` (scripts/device_plan.py) | `DeviceState` | `schema/device_state.py` |
| `streamllm eval --per-token` output; phase A's trace cache | `EvalPerToken`; `PhaseATraces` | `schema/eval_output.py` |

The counting runner (`countrunner.py`) runs in other venvs without pydantic: it reads its jobs file
and writes the work record by hand, with its own copies of their schema strings (tests pin them
equal to the models'). A work record of the integer-keyed /1 (`"schema_version": 1`) reads as /2.
The JSON parses outside this package are listed, each with why, in tests/test_schema_coverage.py.
"""

from ..records import RAW_SCHEMA, RUN_SCHEMA, RawArm, RawCase, RawConditions, RawRun, RunModel, RunRecordError
from .baseline import (
    BASELINE_SCHEMA,
    BaselineError,
    BaselineFields,
    BaselineFileModel,
    BaselineHeader,
    BaselineRecordModel,
)
from .count_jobs import COUNT_JOBS_SCHEMA, CountJob, CountJobs, CountJobsError
from .device_state import DEVICE_STATE_SCHEMA, DeviceState, DeviceStateError, StepDone, StepTry
from .eval_output import PHASE_A_SCHEMA, CaseTrace, EvalOutputError, EvalPerToken, PerTokenTrace, PhaseATraces
from .history import HISTORY_SCHEMA, HistoryCase, HistoryError, HistoryRunModel
from .loader import StoredFileError, StoredModel, load_stored, read_json, validate_stored
from .workrecord import WORK_RECORD_SCHEMA, StoredCounts, WorkRecord, WorkRecordError, load_work_record
from .xdist_part import PART_SCHEMA, PartHistory, PartPinning, PartRecord, XdistPart, XdistPartError

__all__ = [
    "BASELINE_SCHEMA", "COUNT_JOBS_SCHEMA", "DEVICE_STATE_SCHEMA", "HISTORY_SCHEMA", "PART_SCHEMA", "PHASE_A_SCHEMA",
    "RAW_SCHEMA", "RUN_SCHEMA", "WORK_RECORD_SCHEMA",
    "CountJob", "CountJobs", "CountJobsError", "DeviceState", "DeviceStateError", "StepDone", "StepTry",
    "CaseTrace", "EvalOutputError", "EvalPerToken", "PerTokenTrace", "PhaseATraces",
    "BaselineError", "BaselineFields", "BaselineFileModel", "BaselineHeader", "BaselineRecordModel",
    "HistoryCase", "HistoryError", "HistoryRunModel",
    "PartHistory", "PartPinning", "PartRecord", "XdistPart", "XdistPartError",
    "RawArm", "RawCase", "RawConditions", "RawRun", "RunModel", "RunRecordError",
    "StoredFileError", "StoredModel", "load_stored", "read_json", "validate_stored",
    "StoredCounts", "WorkRecord", "WorkRecordError", "load_work_record",
]
