"""Stored baselines' model (`baselines/<model>/<dataset>-<tokens>-<dtype>.json`, schema
`streamllm.baseline/2`; the storage rules are `streamllm/harness/baselines.py`, the fields
`baselines/README.md`).

/2 against /1: the judged sections that sat in an untyped `extra` dict are fields of the record
(`work_counts`, `reference_work_counts`, `tpot_ratio`, `tpot_ratio_ci`, `device_time_ms`), and what
was written but never read is gone: `tpot_samples_ms` and `tpot_ms` (absolute TPOT is judged
against the run history, never from here) and `extra.tpot_ms_median` / `extra.spikes` /
`extra.raw_nll_spikes`. `scripts/convert_stored_files.py` converts a /1 file.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .loader import StoredFileError, StoredModel

BASELINE_SCHEMA = "streamllm.baseline/2"

Finite = Annotated[float, Field(allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Interval = Annotated[list[Finite], Field(min_length=2, max_length=2)]  # [low, high]

# Per-key sections: work counts keyed by counter key (software), TPOT ratios by device class, a
# graph row's device time by its kernel key. An update replaces this run's keys and keeps the
# others; an append adds this run's value to the APPENDED ones as one more run.
KEYED_SECTIONS = ("work_counts", "reference_work_counts", "tpot_ratio", "tpot_ratio_ci", "device_time_ms")
APPENDED_SECTIONS = ("tpot_ratio", "tpot_ratio_ci", "device_time_ms")
HEADER_FIELDS = ("model", "model_revision", "dtype", "dataset", "dataset_sha256", "tokens")


class BaselineError(StoredFileError):
    """A baseline file is unreadable or does not match the run; the message names file and fix."""


class BaselineFields(BaseModel):
    """What one strategy's record holds besides its label: defined here once, stored by
    `BaselineRecordModel` and held in memory (with its `BaselineKey`) by
    `baseline_record.BaselineRecord`. The order is the stored order."""

    model_config = ConfigDict(extra="forbid", strict=True)
    ppl: Positive
    mean_nll: Finite
    ppl_device_class: str  # device class whose numerics produced ppl (its tolerance depends on it)
    runs_averaged: int = Field(ge=1)  # required in a file; a new in-memory record is one run
    # fingerprint id -> the median TPOT of each run recorded: which machine recorded how many runs
    # (band_rows.legacy_cpu_model attributes ratios stored under the older cpu-t<threads> key with it)
    tpot_runs_ms: dict[str, list[Positive]] = Field(default_factory=dict)
    fingerprints: dict[str, dict[str, Any]] = Field(default_factory=dict)  # id -> hardware_fingerprint()
    provenance: dict[str, Any] = Field(default_factory=dict)  # commit, date, command, environment: for people
    work_counts: dict[str, dict[str, Any]] = Field(default_factory=dict)  # counter key id -> WorkCounts JSON
    reference_work_counts: dict[str, dict[str, Any]] = Field(default_factory=dict)  # same key -> reference arm's
    tpot_ratio: dict[str, list[Positive]] = Field(default_factory=dict)  # ratio key -> one ratio per run
    tpot_ratio_ci: dict[str, list[Interval]] = Field(default_factory=dict)  # ratio key -> one CI per run
    device_time_ms: dict[str, list[Positive]] = Field(default_factory=dict)  # kernel key id -> per run


class RecordLabel(BaseModel):
    """The strategy a stored record is of (in memory: `BaselineKey.strategy` / `.params`)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    strategy: str  # StrategySpec.label(), equal to the key it is stored under
    params: dict[str, Any]  # StrategySpec.params()


class BaselineRecordModel(BaselineFields, RecordLabel):
    """One strategy's record, stored under its label: the label's fields first, then the numbers
    (pydantic orders inherited fields from the last base to the first)."""


class BaselineHeader(BaseModel):
    """What a file is a baseline of (one file per model, dataset, tokens and dtype); in memory,
    `baseline_record.BaselineKey` is these fields plus the strategy."""

    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=())
    model: str
    model_revision: str  # hub revision, or config hash for local/dummy/embedded models
    dtype: str
    dataset: str
    dataset_sha256: str
    tokens: int

    def header(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in HEADER_FIELDS}


class BaselineFileModel(StoredModel, BaselineHeader):
    KIND: ClassVar[str] = "baseline file"
    SCHEMA: ClassVar[str] = BASELINE_SCHEMA
    FIX_BROKEN: ClassVar[str] = ("restore it with `git checkout -- {path}`, or delete it and re-record with "
                                 "--update-baselines (nox -s update-baselines)")
    FIX_SCHEMA: ClassVar[str] = ("convert it once with `python scripts/convert_stored_files.py {path}`, or delete it "
                                 "and re-record with --update-baselines (nox -s update-baselines)")
    ERROR: ClassVar[type[StoredFileError]] = BaselineError

    schema_version: Literal["streamllm.baseline/2"] = Field(BASELINE_SCHEMA, alias="schema")
    records: dict[str, BaselineRecordModel]

    @model_validator(mode="after")
    def _labels_match(self) -> BaselineFileModel:
        for label, record in self.records.items():
            if record.strategy != label:
                raise ValueError(f"records[{label!r}] holds strategy {record.strategy!r} (key mismatch)")
        return self

    def to_text(self) -> str:
        """The file's text: sorted records, indented, each number array on one line (diffable)."""
        payload = {"schema": self.schema_version, **self.header(),
                   "records": {label: self.records[label].model_dump(mode="json") for label in sorted(self.records)}}
        text = json.dumps(payload, indent=2, allow_nan=False, ensure_ascii=False)
        # Safe: the pattern needs raw newlines, which never occur inside a JSON string.
        text = re.sub(
            r"\[\n\s*(-?[0-9][-0-9.eE+]*(?:,\n\s*-?[0-9][-0-9.eE+]*)*)\n\s*\]",
            lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",\n")) + "]",
            text,
        )
        return text + "\n"


def convert_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A `streamllm.baseline/1` file's JSON as /2: `extra`'s judged sections become fields, the
    fields nothing reads are dropped (tpot_runs_ms from the samples where a /1 file had none)."""
    import statistics

    records = {}
    for label, body in data["records"].items():
        body = dict(body)
        extra = body.pop("extra", {}) or {}
        samples = body.pop("tpot_samples_ms", {}) or {}
        body.pop("tpot_ms", None)
        runs = body.get("tpot_runs_ms") or {fid: [float(f"{statistics.median(xs):.6g}")] for fid, xs in samples.items() if xs}
        body["tpot_runs_ms"] = runs
        body.update({section: extra[section] for section in KEYED_SECTIONS if extra.get(section)})
        records[label] = body
    return {**data, "schema": BASELINE_SCHEMA, "records": records}
