"""Stored baselines: versioned JSON files the regression suite compares against (docs/semantics.md#baselines).

Layout (documented for humans in baselines/README.md):

    <root>/<model-slug>/<dataset-slug>-<tokens>-<dtype>.json

One file per (model, dataset, tokens, dtype). The file header holds that identity plus the model
revision and the dataset text's sha256; `records` maps a strategy label to its record: PPL (tagged
with the device class that measured it), and TPOT samples keyed by hardware fingerprint id, so a
CPU laptop, a CI runner and an H100 can share one file without ever comparing timings across
machines.

Rules the suite relies on:
- Reading never writes. A missing file or record means "no baseline" (`lookup` returns None);
  a file that is not valid JSON, has another schema version, or does not match the key is a
  `BaselineError` naming the file and the fix. A stale baseline never silently passes.
- The file format is one pydantic model, `schema.baseline.BaselineFileModel` (read through the
  harness's one loader, `schema.load_stored`); this module keeps the key, the record and the rules
  for merging and appending.
- Files change only through `BaselineStore.update` (the explicit --update-baselines path), which
  merges and writes each file atomically (temp file + fsync + os.replace). A file that does not
  load is never overwritten: the update stops with its error.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from ..results import locked_directory, write_text_atomic
from .fingerprint import fingerprint_id, hardware_fingerprint, package_version  # noqa: F401  (re-exported)
from .schema.baseline import (
    APPENDED_SECTIONS,
    BASELINE_SCHEMA,
    KEYED_SECTIONS,
    BaselineError,
    BaselineFileModel,
    BaselineRecordModel,
)
from .schema.loader import first_problem, load_stored
from .verdicts import ppl_tolerance

if TYPE_CHECKING:  # only for annotations: keep `import streamllm.baselines` free of torch
    from ..results import EvalResult

SCHEMA = BASELINE_SCHEMA
__all__ = ["SCHEMA", "BaselineError", "BaselineFile", "BaselineKey", "BaselineRecord", "BaselineStore",
           "append_run", "fingerprint_id", "hardware_fingerprint", "make_provenance", "normalize_dtype",
           "read_baseline_file"]

_DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16", "float": "float32"}


# --------------------------------------------------------------------------------------------
# Keys and records


def _slug(text: str) -> str:
    """File-name-safe form of a model or dataset name ("HuggingFaceTB/SmolLM2" -> "HuggingFaceTB_SmolLM2")."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._") or "_"


def _canonical(obj):
    """JSON round trip: tuples become lists etc., so a key compares equal to its stored form."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def normalize_dtype(dtype: object) -> str:
    name = str(dtype).removeprefix("torch.").lower()
    return _DTYPE_ALIASES.get(name, name)


@dataclass
class BaselineKey:
    """What a baseline is a baseline of. Everything here must match for a comparison to mean anything."""

    model: str
    model_revision: str  # hub revision, or config hash for local/dummy/embedded models
    dtype: str
    dataset: str
    dataset_sha256: str
    tokens: int
    strategy: str  # StrategySpec.label()
    params: dict = field(default_factory=dict)  # StrategySpec.params()

    def __post_init__(self) -> None:
        self.dtype = normalize_dtype(self.dtype)
        self.tokens = int(self.tokens)
        self.params = _canonical(dict(self.params))

    def id(self) -> str:
        """Readable and unique: model:dataset-tokens-dtype:strategy#hash (hash covers every field)."""
        digest = hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.model}:{self.dataset}-{self.tokens}-{self.dtype}:{self.strategy}#{digest}"

    def relpath(self) -> Path:
        return Path(_slug(self.model)) / f"{_slug(self.dataset)}-{self.tokens}-{self.dtype}.json"

    def header(self) -> dict:
        """The file-level part of the key (one file holds every strategy of this header)."""
        return {
            "model": self.model,
            "model_revision": self.model_revision,
            "dtype": self.dtype,
            "dataset": self.dataset,
            "dataset_sha256": self.dataset_sha256,
            "tokens": self.tokens,
        }

    def to_json(self) -> dict:
        return {**self.header(), "strategy": self.strategy, "params": self.params}

    @classmethod
    def from_result(cls, result: EvalResult) -> BaselineKey:
        return cls(
            model=result.model,
            model_revision=result.model_revision,
            dtype=result.dtype,
            dataset=result.dataset,
            dataset_sha256=result.dataset_sha256,
            tokens=result.tokens,
            strategy=result.strategy,
            params=result.params,
        )


@dataclass
class BaselineRecord:
    """One strategy's baseline in memory: its key and the stored record's fields
    (`schema.baseline.BaselineRecordModel` says what each holds)."""

    key: BaselineKey
    ppl: float
    mean_nll: float
    ppl_device_class: str  # device class whose numerics produced ppl (tolerance depends on it)
    # fingerprint_id -> median TPOT of each run recorded: the runs each machine recorded (bands.legacy_cpu_model)
    tpot_runs_ms: dict[str, list[float]] = field(default_factory=dict)
    fingerprints: dict[str, dict] = field(default_factory=dict)  # fingerprint_id -> hardware_fingerprint()
    runs_averaged: int = 1
    provenance: dict = field(default_factory=dict)  # commit, date, command, environment
    work_counts: dict[str, dict] = field(default_factory=dict)  # counter key id -> WorkCounts JSON
    reference_work_counts: dict[str, dict] = field(default_factory=dict)  # same key -> the reference arm's
    tpot_ratio: dict[str, list[float]] = field(default_factory=dict)  # ratio key -> one ratio per run
    tpot_ratio_ci: dict[str, list[list[float]]] = field(default_factory=dict)  # ratio key -> one CI per run
    device_time_ms: dict[str, list[float]] = field(default_factory=dict)  # kernel key id -> one per run

    def stored(self) -> BaselineRecordModel:
        """The record as stored under its strategy label (the header lives at file level);
        ValueError naming the key when it could never be compared against (NaN PPL, runs < 1)."""
        try:
            return BaselineRecordModel.model_validate({
                "strategy": self.key.strategy, "params": self.key.params, "ppl": float(self.ppl),
                "mean_nll": float(self.mean_nll), "ppl_device_class": self.ppl_device_class,
                "runs_averaged": self.runs_averaged, "fingerprints": self.fingerprints, "provenance": self.provenance,
                # float(): numpy scalars (float32 in particular) are not JSON-serializable
                "tpot_runs_ms": {k: [float(x) for x in v] for k, v in sorted(self.tpot_runs_ms.items())},
                **{s: _canonical(dict(sorted(getattr(self, s).items()))) for s in KEYED_SECTIONS},
            }, strict=False)
        except ValidationError as exc:
            raise ValueError(f"{self.key.id()}: {first_problem(exc)}") from None

    def validate(self) -> BaselineRecord:
        """Refuse to store a record that could never be compared against (NaN PPL, runs < 1)."""
        self.stored()
        return self

    @classmethod
    def from_stored(cls, header: dict, record: BaselineRecordModel) -> BaselineRecord:
        return cls(key=BaselineKey(**header, strategy=record.strategy, params=record.params), ppl=record.ppl,
                   mean_nll=record.mean_nll, ppl_device_class=record.ppl_device_class,
                   tpot_runs_ms=record.tpot_runs_ms, fingerprints=record.fingerprints,
                   runs_averaged=record.runs_averaged, provenance=record.provenance,
                   **{s: getattr(record, s) for s in KEYED_SECTIONS})

    @classmethod
    def from_result(
        cls,
        result: EvalResult,
        *,
        fingerprint: dict,
        tpot_samples_ms: Sequence[float] | None = None,
        provenance: dict | None = None,
        **sections: dict,
    ) -> BaselineRecord:
        """One run's record. `tpot_samples_ms`: this run's steady-state TPOT samples; their median
        is the run's entry in `tpot_runs_ms`. `sections`: the judged per-key sections
        (`work_counts=`, `tpot_ratio=`, ...: schema.baseline.KEYED_SECTIONS)."""
        unknown = set(sections) - set(KEYED_SECTIONS)
        if unknown:
            raise TypeError(f"unknown baseline section(s) {sorted(unknown)}; stored are {', '.join(KEYED_SECTIONS)}")
        fid = fingerprint_id(fingerprint)
        samples = [float(x) for x in tpot_samples_ms] if tpot_samples_ms is not None else []
        return cls(
            key=BaselineKey.from_result(result),
            ppl=float(result.ppl),
            mean_nll=float(result.mean_nll),
            ppl_device_class=str(fingerprint.get("device_class", result.device)),
            tpot_runs_ms={fid: [_round_ms(statistics.median(samples))]} if samples else {},
            fingerprints={fid: dict(fingerprint)},
            runs_averaged=1,
            provenance=dict(provenance) if provenance is not None else make_provenance(),
            **{s: dict(v) for s, v in sections.items()},
        )


def _round_ms(x: float) -> float:
    # 6 significant digits (sub-µs at CPU scale, 1 ns at GPU scale) keeps files diffable; the
    # timing noise is orders of magnitude larger.
    return float(f"{float(x):.6g}")


def append_run(old: BaselineRecord, new: BaselineRecord, fingerprint_id: str) -> BaselineRecord:
    """`old` with `new`'s timing for one fingerprint added as more runs (`--append-baselines`).

    What is appended is timing only: the stored PPL, provenance and other machines' timings stay.
    The PPL must agree (same key, same numbers), else the code changed and appending would mix
    two versions: that is a re-record (`--update-baselines`), not a new run.
    """
    if old.key != new.key:
        raise ValueError(f"cannot append {new.key.id()} to {old.key.id()}: different key")
    tol = ppl_tolerance(old.ppl_device_class, new.ppl_device_class)
    if abs(math.log(new.ppl / old.ppl)) > tol:
        raise ValueError(
            f"{old.key.id()}: PPL {new.ppl:.6g} differs from the stored {old.ppl:.6g} beyond ±{tol:g} in ln PPL; "
            "the code changed: re-record with --update-baselines instead of appending"
        )
    fid = fingerprint_id
    if not new.tpot_runs_ms.get(fid):
        return old
    provenance = dict(old.provenance)
    provenance["appended_dates"] = [*provenance.get("appended_dates", []), new.provenance.get("date")]
    return replace(
        old,
        tpot_runs_ms={**old.tpot_runs_ms, fid: [*old.tpot_runs_ms.get(fid, []), *new.tpot_runs_ms[fid]]},
        fingerprints={**old.fingerprints, **new.fingerprints},
        runs_averaged=old.runs_averaged + new.runs_averaged,
        provenance=provenance,
        **_merge_sections(old, new, append=True),
    )


def make_provenance(command: str | None = None, cwd: str | os.PathLike | None = None) -> dict:
    """commit (with a dirty flag), UTC date, command line and package versions of this run."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "commit": commit or "unknown",
        "dirty": bool(status) if status is not None else None,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command if command is not None else " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            **{dist: package_version(dist) for dist in ("torch", "transformers", "numpy", "scipy", "torchao")},
        },
    }


# --------------------------------------------------------------------------------------------
# Reading files


def _fail(path: Path, what: str) -> BaselineError:
    return BaselineError(f"{path}: {what}")


@dataclass
class BaselineFile:
    """A parsed, validated baseline file."""

    path: Path
    header: dict
    records: dict[str, BaselineRecord]


def read_baseline_file(path: str | os.PathLike) -> BaselineFile:
    """Parse and validate one file (schema.load_stored); raises BaselineError naming the file and the fix."""
    path = Path(path)
    stored = load_stored(path, BaselineFileModel)
    header = stored.header()
    return BaselineFile(path=path, header=header,
                        records={label: BaselineRecord.from_stored(header, r) for label, r in stored.records.items()})


def _dumps(header: dict, records: dict[str, BaselineRecord]) -> str:
    return BaselineFileModel.model_validate(
        {**header, "records": {label: records[label].stored() for label in records}}, strict=False).to_text()


class BaselineStore:
    """Baseline files under `root` (normally the repository's baselines/)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path_for(self, key: BaselineKey) -> Path:
        return self.root / key.relpath()

    def files(self) -> list[Path]:
        return sorted(p for p in self.root.glob("*/*.json") if p.is_file())

    def read(self, path: str | os.PathLike) -> BaselineFile:
        """Read one file and check that its name matches its header (a copied file is a mismatch)."""
        bf = read_baseline_file(path)
        expected = self.root / BaselineKey(**bf.header, strategy="").relpath()
        if Path(path).resolve() != expected.resolve():
            raise _fail(
                bf.path,
                f"key mismatch: its header (model {bf.header['model']!r}, dataset {bf.header['dataset']!r}, "
                f"tokens {bf.header['tokens']}, dtype {bf.header['dtype']!r}) belongs in {expected}: move it there "
                "or restore this one from git",
            )
        return bf

    def lookup(self, key: BaselineKey) -> BaselineRecord | None:
        """The stored record for `key`, or None when there is none (missing file or strategy).

        Raises BaselineError when the file is unreadable or was recorded for something else (model
        revision, dataset text or strategy params differ): comparing against it would be wrong, and
        returning None would silently turn a real mismatch into "not checked".
        """
        path = self.path_for(key)
        if not path.exists():
            return None
        bf = self.read(path)
        header = key.header()
        for name in ("model_revision", "dataset_sha256"):
            if bf.header[name] != header[name]:
                raise _fail(
                    path,
                    f"key mismatch: recorded for {name} {bf.header[name]!r}, this run has {header[name]!r}; "
                    "if the change is intended, re-record with --update-baselines (nox -s update-baselines)"
                )
        record = bf.records.get(key.strategy)
        if record is None:
            return None
        if record.key.params != key.params:
            diff = {
                k: (record.key.params.get(k), key.params.get(k))
                for k in sorted(set(record.key.params) | set(key.params))
                if record.key.params.get(k) != key.params.get(k)
            }
            raise _fail(
                path,
                f"key mismatch: strategy {key.strategy!r} was recorded with other params "
                f"(stored, this run): {diff}; if intended, re-record with --update-baselines"
            )
        return record


    def update(self, records: Sequence[BaselineRecord], append_for: str | None = None) -> list[Path]:
        """Merge `records` into their files and write each file atomically. Only for explicit updates.

        `append_for` (a fingerprint id, `--append-baselines`): a stored record with the same key
        keeps everything and gains the new timing of that fingerprint as more runs (append_run);
        records not stored yet are written as they are.

        Per strategy label: PPL, runs and provenance are replaced; per-run TPOT medians and
        fingerprints are merged per fingerprint id and the keyed sections per key, so updating on one
        machine keeps the other machines' entries. A record whose params differ from the stored one
        replaces it. A stored file recorded for another model revision or dataset text is stale as a
        whole: its other records are dropped (with a warning) instead of being relabelled. A file that
        does not load (corrupt, another schema version) is never overwritten: its BaselineError
        (naming the file and the fix) stops the update before anything is written.
        """
        by_path: dict[Path, dict[str, BaselineRecord]] = {}
        for record in records:
            record.validate()
            group = by_path.setdefault(self.path_for(record.key), {})
            if record.key.strategy in group:
                raise ValueError(
                    f"{record.key.id()} given twice in one update; store one record per strategy (append further runs with append_for)"
                )
            group[record.key.strategy] = record
        written = []
        for path, incoming in by_path.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            with locked_directory(path.parent):
                header = next(iter(incoming.values())).key.header()
                merged = self._existing_for_update(path, header)
                for label, record in incoming.items():
                    old = merged.get(label)
                    if old is None or old.key != record.key:
                        merged[label] = record
                    elif append_for is not None:
                        merged[label] = append_run(old, record, append_for)
                    else:
                        merged[label] = _merge(old, record)
                write_text_atomic(path, _dumps(header, merged))
            written.append(path)
        return written

    def _existing_for_update(self, path: Path, header: dict) -> dict[str, BaselineRecord]:
        if not path.exists():
            return {}
        bf = self.read(path)  # BaselineError: never overwrite a file that does not load
        if bf.header != header:
            changed = {k: (bf.header[k], header[k]) for k in header if bf.header[k] != header[k]}
            dropped = sorted(bf.records)
            warnings.warn(
                f"baseline file {path} was recorded for {changed} (stored, new); dropping its records {dropped}",
                stacklevel=3,
            )
            return {}
        return dict(bf.records)


def _merge_sections(old: BaselineRecord, new: BaselineRecord, append: bool) -> dict[str, dict]:
    """The keyed sections of `old` updated with `new`'s keys: replaced, or (append, for the sections
    holding one entry per run) extended by this run's entries."""
    out = {}
    for section in KEYED_SECTIONS:
        mine, theirs = dict(getattr(old, section)), getattr(new, section)
        for key, value in theirs.items():
            if append and section in APPENDED_SECTIONS and key in mine:
                mine[key] = [*mine[key], *value]
            else:
                mine[key] = value
        out[section] = mine
    return out


def _merge(old: BaselineRecord, new: BaselineRecord) -> BaselineRecord:
    return replace(
        new,
        tpot_runs_ms={**old.tpot_runs_ms, **new.tpot_runs_ms},
        fingerprints={**old.fingerprints, **new.fingerprints},
        **_merge_sections(old, new, append=False),
    )
