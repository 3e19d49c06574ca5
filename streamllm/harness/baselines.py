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
  harness's one loader, `schema.load_stored`); this module is the store: reading files, looking a
  key up, writing updates. The key and the record in memory are `baseline_record.py`'s, the rules
  for merging and appending `baseline_merge.py`'s, a record's provenance `provenance.py`'s.
- Files change only through `BaselineStore.update` (the explicit --update-baselines path), which
  merges and writes each file atomically (temp file + fsync + os.replace). A file that does not
  load is never overwritten: the update stops with its error.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..results import locked_directory, write_text_atomic
from .baseline_merge import append_run, merge_records
from .baseline_record import BaselineKey, BaselineRecord
from .schema.baseline import BASELINE_SCHEMA, BaselineError, BaselineFileModel
from .schema.loader import load_stored

SCHEMA = BASELINE_SCHEMA
# BaselineKey and BaselineRecord are baseline_record.py's; the store reads and writes them (and
# compare.py / judges.py import them from here).
__all__ = ["SCHEMA", "BaselineError", "BaselineFile", "BaselineKey", "BaselineRecord", "BaselineStore",
           "read_baseline_file"]


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
                        merged[label] = merge_records(old, record)
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
