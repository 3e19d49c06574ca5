"""One pydantic model per JSON file the harness stores and reads back (issue #28 item 2), and one
loader (`load_stored`) that turns a broken file into a one-line error naming the file and the fix.

| file | model | module |
|---|---|---|
| `baselines/<model>/<dataset>-<tokens>-<dtype>.json` | `BaselineFileModel` | `schema/baseline.py` |
| `history/<fingerprint_id>/<NNNN>-<stamp>.json` | `HistoryRunModel` | `schema/history.py` |
| `pytest bench -n N` worker parts | `XdistPart` | `schema/xdist_part.py` |
| `out/runs/*.json` (run records) | `RunModel` / `RawRun` | `streamllm/harness/records.py` |
| `streamllm count --json`, bisect/drift records | `WorkRecord` (work counts inside baselines: `StoredCounts`) | `schema/workrecord.py` |

The work record keeps its own `schema_version` key (it predates `load_stored`); its errors are
`StoredFileError`s all the same.
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
from .history import HISTORY_SCHEMA, HistoryCase, HistoryError, HistoryRunModel
from .loader import StoredFileError, StoredModel, load_stored, validate_stored
from .workrecord import StoredCounts, WorkRecord, WorkRecordError, load_work_record
from .xdist_part import PART_SCHEMA, PartHistory, PartPinning, PartRecord, XdistPart, XdistPartError

__all__ = [
    "BASELINE_SCHEMA", "HISTORY_SCHEMA", "PART_SCHEMA", "RAW_SCHEMA", "RUN_SCHEMA",
    "BaselineError", "BaselineFields", "BaselineFileModel", "BaselineHeader", "BaselineRecordModel",
    "HistoryCase", "HistoryError", "HistoryRunModel",
    "PartHistory", "PartPinning", "PartRecord", "XdistPart", "XdistPartError",
    "RawArm", "RawCase", "RawConditions", "RawRun", "RunModel", "RunRecordError",
    "StoredFileError", "StoredModel", "load_stored", "validate_stored",
    "StoredCounts", "WorkRecord", "WorkRecordError", "load_work_record",
]
