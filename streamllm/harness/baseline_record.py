"""A baseline's key and record in memory: what a baseline is a baseline of (`BaselineKey`, the
file it lives in) and one strategy's stored numbers (`BaselineRecord`: the key plus the fields of
`schema.baseline.BaselineFields`, the same fields the file stores in `BaselineRecordModel`). The store that reads and writes them: baselines.py; how two
records of one key combine: baseline_merge.py."""

from __future__ import annotations

import hashlib
import json
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict, Field, ValidationError, field_validator

from .fingerprint import fingerprint_id
from .provenance import make_provenance
from .schema.baseline import KEYED_SECTIONS, BaselineFields, BaselineHeader, BaselineRecordModel
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


class BaselineKey(BaselineHeader):
    """What a baseline is a baseline of: the file's header (`schema.baseline.BaselineHeader`, whose
    six fields and `header()` are declared there once) plus the strategy. Everything here must
    match for a comparison to mean anything. Built with keywords, like any pydantic model."""

    # lax, unlike the file's strict header: a run hands numpy ints, torch dtypes and tuples, which
    # the validators below normalize as the stored form has them (the id hashes that form)
    model_config = ConfigDict(strict=False)
    strategy: str  # StrategySpec.label()
    params: dict[str, Any] = Field(default_factory=dict)  # StrategySpec.params()

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype(cls, value: object) -> str:
        return normalize_dtype(value)

    @field_validator("tokens", mode="before")
    @classmethod
    def _tokens(cls, value: Any) -> int:
        return int(value)

    @field_validator("params", mode="before")
    @classmethod
    def _params(cls, value: Any) -> dict[str, Any]:
        return _canonical(dict(value))

    def id(self) -> str:
        """Readable and unique: model:dataset-tokens-dtype:strategy#hash (hash covers every field)."""
        digest = hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.model}:{self.dataset}-{self.tokens}-{self.dtype}:{self.strategy}#{digest}"

    def relpath(self) -> Path:
        return Path(_slug(self.model)) / f"{_slug(self.dataset)}-{self.tokens}-{self.dtype}.json"

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


class BaselineRecord(BaselineFields):
    """One strategy's baseline in memory: its key and the stored record's fields, which are
    `schema.baseline.BaselineFields` itself (one definition: the file's record is the same fields
    under the key's strategy label and params). Built like the dataclass it replaced:
    `BaselineRecord(key, ppl, mean_nll, ppl_device_class, tpot_ratio=..., ...)`; a changed copy is
    `record.model_copy(update={...})`."""

    # lax: numpy scalars and tuples from a run are taken as floats and lists, as the file stores them
    model_config = ConfigDict(extra="forbid", strict=False)
    key: BaselineKey  # a pydantic model: an instance is kept as given (pydantic does not revalidate it)

    def __init__(self, key: BaselineKey, ppl: float, mean_nll: float, ppl_device_class: str, **fields: Any) -> None:
        # Validated as it is built, so a record that could never be compared against (NaN PPL,
        # runs < 1) is a ValueError naming its key before anything is stored.
        fields.setdefault("runs_averaged", 1)
        try:
            super().__init__(key=key, ppl=ppl, mean_nll=mean_nll, ppl_device_class=ppl_device_class, **fields)
        except ValidationError as exc:
            raise ValueError(f"{key.id()}: {first_problem(exc)}") from None

    def stored(self) -> BaselineRecordModel:
        """The record as stored under its strategy label (the header lives at file level), each
        keyed section sorted; ValueError naming the key when it does not fit the file's model."""
        fields = self.model_dump(exclude={"key"})
        try:
            return BaselineRecordModel.model_validate({
                "strategy": self.key.strategy, "params": self.key.params, **fields,
                "tpot_runs_ms": dict(sorted(fields["tpot_runs_ms"].items())),
                **{s: _canonical(dict(sorted(fields[s].items()))) for s in KEYED_SECTIONS},
            }, strict=False)
        except ValidationError as exc:
            raise ValueError(f"{self.key.id()}: {first_problem(exc)}") from None

    def validate(self) -> BaselineRecord:  # type: ignore[override]  # pydantic's deprecated classmethod
        """Refuse to store a record that could never be compared against (a copy changed with
        model_copy is not re-validated until here)."""
        self.stored()
        return self

    @classmethod
    def from_stored(cls, header: dict, record: BaselineRecordModel) -> BaselineRecord:
        key = BaselineKey(**header, strategy=record.strategy, params=record.params)
        return cls(key, **record.model_dump(include=set(BaselineFields.model_fields)))

    @classmethod
    def from_result(
        cls,
        result: EvalResult,
        *,
        fingerprint: dict,
        tpot_samples_ms: Sequence[float] | None = None,
        provenance: dict | None = None,
        key: BaselineKey | None = None,
        **sections: dict,
    ) -> BaselineRecord:
        """One run's record. `tpot_samples_ms`: this run's steady-state TPOT samples; their median
        is the run's entry in `tpot_runs_ms`. `key`: where the caller keys it otherwise than the
        result's own (the suite's row key names the transform), so a refusal names that key.
        `sections`: the judged per-key sections (`work_counts=`, `tpot_ratio=`, ...:
        schema.baseline.KEYED_SECTIONS)."""
        unknown = set(sections) - set(KEYED_SECTIONS)
        if unknown:
            raise TypeError(f"unknown baseline section(s) {sorted(unknown)}; stored are {', '.join(KEYED_SECTIONS)}")
        fid = fingerprint_id(fingerprint)
        samples = [float(x) for x in tpot_samples_ms] if tpot_samples_ms is not None else []
        return cls(
            key=key if key is not None else BaselineKey.from_result(result),
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
