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
- Files change only through `BaselineStore.update` (the explicit --update-baselines path), which
  merges and writes each file atomically (temp file + fsync + os.replace).
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

from ..results import locked_directory, write_text_atomic
from .fingerprint import fingerprint_id, hardware_fingerprint, package_version  # noqa: F401  (re-exported)
from .verdicts import ppl_tolerance

if TYPE_CHECKING:  # only for annotations: keep `import streamllm.baselines` free of torch
    from ..results import EvalResult

SCHEMA = "streamllm.baseline/1"


_FIX = "restore it with `git checkout -- {path}` or re-record with --update-baselines (nox -s update-baselines)"
_DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16", "float": "float32"}


class BaselineError(Exception):
    """A baseline file is unreadable or does not match the run; the message names file and fix."""


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
    key: BaselineKey
    ppl: float
    mean_nll: float
    ppl_device_class: str  # device class whose numerics produced ppl (tolerance depends on it)
    tpot_samples_ms: dict[str, list[float]] = field(default_factory=dict)  # fingerprint_id -> raw samples
    tpot_ms: dict[str, float] = field(default_factory=dict)  # fingerprint_id -> summary TPOT
    # fingerprint_id -> median TPOT of each run averaged in: the run-to-run spread (stats.run_spread_tolerance)
    tpot_runs_ms: dict[str, list[float]] = field(default_factory=dict)
    fingerprints: dict[str, dict] = field(default_factory=dict)  # fingerprint_id -> hardware_fingerprint()
    runs_averaged: int = 1
    provenance: dict = field(default_factory=dict)  # commit, date, command, environment
    extra: dict = field(default_factory=dict)

    def body(self) -> dict:
        """The record as stored under its strategy label (the header lives at file level)."""
        return {
            "strategy": self.key.strategy,
            "params": self.key.params,
            "ppl": float(self.ppl),
            "mean_nll": float(self.mean_nll),
            "ppl_device_class": self.ppl_device_class,
            "runs_averaged": self.runs_averaged,
            # float(): numpy scalars (float32 in particular) are not JSON-serializable
            "tpot_ms": {k: float(self.tpot_ms[k]) for k in sorted(self.tpot_ms)},
            "tpot_samples_ms": {k: [float(x) for x in self.tpot_samples_ms[k]] for k in sorted(self.tpot_samples_ms)},
            "tpot_runs_ms": {k: [float(x) for x in self.tpot_runs_ms[k]] for k in sorted(self.tpot_runs_ms)},
            "fingerprints": {k: self.fingerprints[k] for k in sorted(self.fingerprints)},
            "provenance": self.provenance,
            "extra": self.extra,
        }

    def validate(self) -> BaselineRecord:
        """Refuse to store a record that could never be compared against (NaN PPL, empty samples)."""
        if not (math.isfinite(self.ppl) and self.ppl > 0 and math.isfinite(self.mean_nll)):
            raise ValueError(f"{self.key.id()}: PPL {self.ppl} / mean NLL {self.mean_nll} is not a finite positive value")
        if self.runs_averaged < 1:
            raise ValueError(f"{self.key.id()}: runs_averaged must be >= 1")
        for fid, samples in self.tpot_samples_ms.items():
            if not samples or not all(math.isfinite(x) and x > 0 for x in samples):
                raise ValueError(f"{self.key.id()}: TPOT samples for {fid} must be non-empty, finite and > 0")
        return self

    @classmethod
    def from_result(
        cls,
        result: EvalResult,
        *,
        fingerprint: dict,
        tpot_samples_ms: Sequence[float] | None = None,
        tpot_ms: float | None = None,
        provenance: dict | None = None,
        extra: dict | None = None,
    ) -> BaselineRecord:
        """One run's record. `tpot_samples_ms`: the raw steady-state samples the suite compares
        (per-step times, per-cycle means, or per-round TPOTs: whatever it will pass as candidate).
        `tpot_ms` defaults to the result's cycle mean (docs/semantics.md#tpot: a median hides pruning)."""
        fid = fingerprint_id(fingerprint)
        samples = [_round_ms(x) for x in tpot_samples_ms] if tpot_samples_ms is not None else []
        summary = tpot_ms if tpot_ms is not None else result.tpot_ms_cycle_mean
        if summary is None or not math.isfinite(summary):  # parallel evaluator: no timing
            summary = statistics.median(samples) if samples else None
        return cls(
            key=BaselineKey.from_result(result),
            ppl=float(result.ppl),
            mean_nll=float(result.mean_nll),
            ppl_device_class=str(fingerprint.get("device_class", result.device)),
            tpot_samples_ms={fid: samples} if samples else {},
            tpot_ms={fid: _round_ms(summary)} if summary is not None else {},
            tpot_runs_ms={fid: [_round_ms(statistics.median(samples))]} if samples else {},
            fingerprints={fid: dict(fingerprint)},
            runs_averaged=1,
            provenance=dict(provenance) if provenance is not None else make_provenance(),
            extra=dict(extra or {}),
        )


def _round_ms(x: float) -> float:
    # 6 significant digits (sub-µs at CPU scale, 1 ns at GPU scale) keeps files diffable; the
    # timing noise is orders of magnitude larger.
    return float(f"{float(x):.6g}")


def _runs_of(record: BaselineRecord, fid: str) -> list[float]:
    """Per-run TPOT summaries of `fid` (older files without them: the pooled median, once)."""
    runs = record.tpot_runs_ms.get(fid)
    if runs:
        return [float(x) for x in runs]
    samples = record.tpot_samples_ms.get(fid)
    return [_round_ms(statistics.median(samples))] if samples else []


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
    if fid not in new.tpot_samples_ms:
        return old
    old_runs = _runs_of(old, fid)
    new_runs = _runs_of(new, fid)
    n_old = len(old_runs)
    n_new = len(new_runs)
    old_tpot = old.tpot_ms.get(fid)
    tpot = (new.tpot_ms[fid] if old_tpot is None
            else (old_tpot * n_old + new.tpot_ms[fid] * n_new) / (n_old + n_new))
    provenance = dict(old.provenance)
    provenance["appended_dates"] = [*provenance.get("appended_dates", []), new.provenance.get("date")]
    return replace(
        old,
        tpot_samples_ms={**old.tpot_samples_ms, fid: [*old.tpot_samples_ms.get(fid, []), *new.tpot_samples_ms[fid]]},
        tpot_ms={**old.tpot_ms, fid: _round_ms(tpot)},
        tpot_runs_ms={**old.tpot_runs_ms, fid: [*old_runs, *new_runs]},
        fingerprints={**old.fingerprints, **new.fingerprints},
        runs_averaged=old.runs_averaged + new.runs_averaged,
        provenance=provenance,
        extra=_merge_extra(old.extra, new.extra, append=True),
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
# Reading and validating files


def _fail(path: Path, what: str, fix: bool = True) -> BaselineError:
    msg = f"baseline file {path}: {what}"
    if fix:
        msg += "; " + _FIX.format(path=path)
    return BaselineError(msg)


def _number(value, path: Path, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(path, f"{where} must be a number, got {value!r}")
    return float(value)


def _typed(obj: dict, name: str, types: type | tuple[type, ...], path: Path, where: str):
    if name not in obj:
        raise _fail(path, f"{where} is missing field {name!r}")
    value = obj[name]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise _fail(path, f"{where}.{name} has type bool")
    if not isinstance(value, types):
        raise _fail(path, f"{where}.{name} has type {type(value).__name__}")
    return value


@dataclass
class BaselineFile:
    """A parsed, validated baseline file."""

    path: Path
    header: dict
    records: dict[str, BaselineRecord]


def read_baseline_file(path: str | os.PathLike) -> BaselineFile:
    """Parse and validate one file; raises BaselineError (naming the file and the fix)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror})", fix=False) from exc
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _fail(path, f"is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise _fail(path, f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from exc
    if not isinstance(data, dict):
        raise _fail(path, f"top level must be a JSON object, got {type(data).__name__}")
    schema = data.get("schema")
    if schema is None:
        raise _fail(path, f"has no 'schema' field (expected {SCHEMA!r})")
    if schema != SCHEMA:
        raise _fail(path, f"has schema {schema!r}, this streamllm reads {SCHEMA!r}")
    header = {
        "model": _typed(data, "model", str, path, "file"),
        "model_revision": _typed(data, "model_revision", str, path, "file"),
        "dtype": _typed(data, "dtype", str, path, "file"),
        "dataset": _typed(data, "dataset", str, path, "file"),
        "dataset_sha256": _typed(data, "dataset_sha256", str, path, "file"),
        "tokens": _typed(data, "tokens", int, path, "file"),
    }
    records_raw = _typed(data, "records", dict, path, "file")
    records: dict[str, BaselineRecord] = {}
    for label, body in records_raw.items():
        where = f"records[{label!r}]"
        if not isinstance(body, dict):
            raise _fail(path, f"{where} must be an object")
        stored_label = _typed(body, "strategy", str, path, where)
        if stored_label != label:
            raise _fail(path, f"{where} holds strategy {stored_label!r} (key mismatch)")
        samples = _typed(body, "tpot_samples_ms", dict, path, where)
        summaries = _typed(body, "tpot_ms", dict, path, where)
        fingerprints = _typed(body, "fingerprints", dict, path, where)
        runs_ms = body.get("tpot_runs_ms", {})  # absent in files written before per-run summaries
        if not isinstance(runs_ms, dict):
            raise _fail(path, f"{where}.tpot_runs_ms must be an object")
        runs = _typed(body, "runs_averaged", int, path, where)
        if runs < 1:
            raise _fail(path, f"{where}.runs_averaged must be >= 1")
        record = BaselineRecord(
            key=BaselineKey(**header, strategy=label, params=_typed(body, "params", dict, path, where)),
            ppl=_number(_typed(body, "ppl", (int, float), path, where), path, f"{where}.ppl"),
            mean_nll=_number(_typed(body, "mean_nll", (int, float), path, where), path, f"{where}.mean_nll"),
            ppl_device_class=_typed(body, "ppl_device_class", str, path, where),
            tpot_samples_ms={
                fid: [_number(x, path, f"{where}.tpot_samples_ms[{fid!r}]") for x in _list(xs, path, where, fid)]
                for fid, xs in samples.items()
            },
            tpot_ms={fid: _number(v, path, f"{where}.tpot_ms[{fid!r}]") for fid, v in summaries.items()},
            tpot_runs_ms={
                fid: [_number(x, path, f"{where}.tpot_runs_ms[{fid!r}]") for x in _list(xs, path, where, fid)]
                for fid, xs in runs_ms.items()
            },
            fingerprints={fid: _dict(fp, path, where, fid) for fid, fp in fingerprints.items()},
            runs_averaged=runs,
            provenance=_typed(body, "provenance", dict, path, where),
            extra=_typed(body, "extra", dict, path, where),
        )
        if not (math.isfinite(record.ppl) and record.ppl > 0):
            raise _fail(path, f"{where}.ppl must be a finite positive number, got {record.ppl}")
        records[label] = record
    return BaselineFile(path=path, header=header, records=records)


def _list(value, path: Path, where: str, fid: str) -> list:
    if not isinstance(value, list):
        raise _fail(path, f"{where}.tpot_samples_ms[{fid!r}] must be a list")
    return value


def _dict(value, path: Path, where: str, fid: str) -> dict:
    if not isinstance(value, dict):
        raise _fail(path, f"{where}.fingerprints[{fid!r}] must be an object")
    return value


def _dumps(header: dict, records: dict[str, BaselineRecord]) -> str:
    payload = {"schema": SCHEMA, **header, "records": {label: records[label].body() for label in sorted(records)}}
    text = json.dumps(payload, indent=2, allow_nan=False, ensure_ascii=False)
    # Put number arrays (TPOT samples) on one line each: thousands of one-number lines make
    # diffs unreadable. Safe: the pattern needs raw newlines, which never occur inside a JSON string.
    text = re.sub(
        r"\[\n\s*(-?[0-9][-0-9.eE+]*(?:,\n\s*-?[0-9][-0-9.eE+]*)*)\n\s*\]",
        lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",\n")) + "]",
        text,
    )
    return text + "\n"


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
                f"tokens {bf.header['tokens']}, dtype {bf.header['dtype']!r}) belongs in {expected}",
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
                    "if the change is intended, re-record with --update-baselines (nox -s update-baselines)",
                    fix=False,
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
                f"(stored, this run): {diff}; if intended, re-record with --update-baselines",
                fix=False,
            )
        return record


    def update(self, records: Sequence[BaselineRecord], append_for: str | None = None) -> list[Path]:
        """Merge `records` into their files and write each file atomically. Only for explicit updates.

        `append_for` (a fingerprint id, `--append-baselines`): a stored record with the same key
        keeps everything and gains the new timing of that fingerprint as more runs (append_run);
        records not stored yet are written as they are.

        Per strategy label: PPL, runs, provenance and extra are replaced; TPOT samples, summaries
        and fingerprints are merged per fingerprint id, so updating on one machine keeps the other
        machines' timings. A record whose params differ from the stored one replaces it. A stored
        file recorded for another model revision or dataset text is stale as a whole: its other
        records are dropped (with a warning) instead of being relabelled. An unreadable file is
        replaced (with a warning): the caller asked to re-record.
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
        try:
            bf = self.read(path)
        except BaselineError as exc:
            warnings.warn(f"replacing unreadable baseline file: {exc}", stacklevel=3)
            return {}
        if bf.header != header:
            changed = {k: (bf.header[k], header[k]) for k in header if bf.header[k] != header[k]}
            dropped = sorted(bf.records)
            warnings.warn(
                f"baseline file {path} was recorded for {changed} (stored, new); dropping its records {dropped}",
                stacklevel=3,
            )
            return {}
        return dict(bf.records)


# Per-key sections of `extra` that several machines or software stacks share: work counts keyed by
# counter key (software), TPOT ratios by device class. An update replaces this run's keys and keeps
# the others; an append adds this run's ratio as one more run.
# Graph rows' device time is keyed like their kernel counts (GPU model and software).
KEYED_EXTRA = ("work_counts", "reference_work_counts", "tpot_ratio", "tpot_ratio_ci", "device_time_ms")
APPENDED_EXTRA = ("tpot_ratio", "tpot_ratio_ci", "device_time_ms")  # one entry per recorded run


def _merge_extra(old: dict, new: dict, append: bool) -> dict:
    out = {**old, **new} if not append else dict(old)
    for section in KEYED_EXTRA:
        mine, theirs = dict(old.get(section) or {}), new.get(section) or {}
        for key, value in theirs.items():
            if append and section in APPENDED_EXTRA and key in mine:
                mine[key] = [*mine[key], *value]
            else:
                mine[key] = value
        if mine:
            out[section] = mine
    return out


def _merge(old: BaselineRecord, new: BaselineRecord) -> BaselineRecord:
    return replace(
        new,
        extra=_merge_extra(old.extra, new.extra, append=False),
        tpot_samples_ms={**old.tpot_samples_ms, **new.tpot_samples_ms},
        tpot_ms={**old.tpot_ms, **new.tpot_ms},
        tpot_runs_ms={**old.tpot_runs_ms, **new.tpot_runs_ms},
        fingerprints={**old.fingerprints, **new.fingerprints},
    )
