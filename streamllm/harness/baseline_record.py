"""A baseline's key and record in memory: what a baseline is a baseline of (`BaselineKey`, the
file it lives in) and one strategy's stored numbers (`BaselineRecord`, whose stored form is
`schema.baseline.BaselineRecordModel`). The store that reads and writes them: baselines.py; how two
records of one key combine: baseline_merge.py."""

from __future__ import annotations

import hashlib
import json
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from .fingerprint import fingerprint_id
from .provenance import make_provenance
from .schema.baseline import KEYED_SECTIONS, BaselineRecordModel
from .schema.loader import first_problem

if TYPE_CHECKING:  # only for annotations: keep `import streamllm.harness.baseline_record` free of torch
    from ..results import EvalResult

_DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16", "float": "float32"}

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
    # fingerprint_id -> median TPOT of each run recorded: the runs each machine recorded (band_rows.legacy_cpu_model)
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
