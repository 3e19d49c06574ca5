"""The stored form of work counts and its comparison: what determines them (`CounterKey`), the
totals of one counted round (`WorkCounts`: built from `opcount.count_work`'s raw histograms with
`from_raw`, stored with `to_json`, exact per-step differences with `diff`), and their comparisons
with a stored recording (`compare_counts`, `compare_across_software`). Counting is `opcount.py`'s;
the JSON layouts are validated by `schema/workrecord.py`."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from importlib import metadata
from typing import Any

import torch

from .schema.workrecord import COUNTS_SCHEMA, RawCounts, WorkRecordError, parse_stored_counts

SCHEMA = COUNTS_SCHEMA

# Config keys that do not change the computation (names, provenance), dropped before hashing.
_CONFIG_NOISE = frozenset({
    "_name_or_path", "name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures",
    "_commit_hash", "_attn_implementation_autoset", "_attn_implementation_internal",
})


# --------------------------------------------------------------------------------------------
# Keys: what determines the counts


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _canonical(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _short_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _dtype_name(dtype: Any) -> str | None:
    return None if dtype is None else str(dtype).removeprefix("torch.")


def config_hash(model: torch.nn.Module) -> str:
    """Short hash of the model config without names and provenance (two checkpoints of one
    architecture count the same work)."""
    config = model.config.to_dict()
    return _short_hash({k: v for k, v in config.items() if k not in _CONFIG_NOISE})


# Key fields that name the software, not the workload. A release of either can change what a step
# dispatches, so exact counts are keyed by them; counts recorded under another release are compared
# through the reference arm instead (`compare_across_software`).
SOFTWARE_FIELDS = ("torch", "transformers")


@dataclass(frozen=True)
class CounterKey:
    """What the counts depend on. `id` keys ops, bytes and syncs; `kernel_id` adds the GPU model,
    which decides kernel choice (cuBLAS heuristics) and so only the kernel counts."""

    fields: dict

    @property
    def id(self) -> str:
        return "wk-" + _short_hash({k: v for k, v in self.fields.items() if k != "gpu"})

    @property
    def kernel_id(self) -> str:
        return "wk-" + _short_hash(self.fields)

    @property
    def workload_id(self) -> str:
        """The key without the software versions (and the GPU): the same model, dtype, strategy and
        decoder, whatever torch / transformers release counts them."""
        return "wl-" + _short_hash({k: v for k, v in self.fields.items() if k not in ("gpu", *SOFTWARE_FIELDS)})

    def to_json(self) -> dict:
        return {"fields": self.fields, "id": self.id, "kernel_id": self.kernel_id}

    def differences(self, other: CounterKey) -> list[str]:
        """`torch: 2.13.0 -> 2.14.0` for every field that differs (other -> self)."""
        names = sorted(set(self.fields) | set(other.fields))
        return [f"{n}: {other.fields.get(n)} -> {self.fields.get(n)}" for n in names
                if self.fields.get(n) != other.fields.get(n)]


def counter_key(
    model: torch.nn.Module,
    *,
    device: torch.device | str,
    strategy: Mapping[str, Any] | Any,
    decoder: str = "eager",
    context: int | None = None,
    dtype: torch.dtype | str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> CounterKey:
    """The key of `model`'s counts on `device` with `strategy` (a StrategySpec or its params).

    Deliberately not in the key: CPU model, core count, thread count, machine serials: they do
    not change what is dispatched, so any machine with the same software checks the counts.
    `context` is the cache length at the first counted step where it matters (dense grows;
    streaming strategies at steady state do not need it). `extra` names anything else that
    changes the step (INT8 transform, attention override, ...).
    """
    dev = torch.device(device)
    params = strategy.params() if hasattr(strategy, "params") else dict(strategy)
    gpu = None
    if dev.type == "cuda" and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(dev.index if dev.index is not None else torch.cuda.current_device())
    if dtype is None:
        dtype = next(model.parameters()).dtype
    fields = {
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "device_type": dev.type,
        "gpu": gpu,
        "dtype": _dtype_name(dtype),
        "model_class": type(model).__name__,
        "model_config": config_hash(model),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "strategy": params,
        "decoder": decoder,
        "context": context,
        "extra": dict(extra or {}),
    }
    return CounterKey(_canonical(fields))


# --------------------------------------------------------------------------------------------
# The counts


def frac_text(x: Fraction) -> str:
    """Exact integers as integers; otherwise the decimal value, rounded for reading."""
    return str(x.numerator) if x.denominator == 1 else f"{float(x):.4g}"


def _signed(x: Fraction, total_delta: int, steps: int, what: str) -> str:
    """`+64 aten.cat per step`; a non-integral average adds the exact total: `(+1 over 32 steps)`."""
    line = f"{'+' if x > 0 else '-'}{frac_text(abs(x))} {what} per step"
    return line if x.denominator == 1 else f"{line} ({total_delta:+d} over {steps} steps)"


def format_bytes(n: float) -> str:
    """Decimal units (1 MB = 1e6 B), like bandwidth figures."""
    a = abs(n)
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if a >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.4g} B"


@dataclass(frozen=True)
class WorkCounts:
    """Totals over `steps` decode steps (a whole number of eviction cycles)."""

    steps: int
    ops: dict[str, int]  # op packet -> dispatches over all steps
    bytes_read: int
    bytes_written: int
    syncs: dict[str, int]  # op packet -> host-device syncs it caused
    kernels: int | None = None  # CUDA kernels launched (None: not counted, e.g. on CPU)
    memcpys: int | None = None  # CUDA memcpy/memset operations
    graph_replays: int | None = None  # CUDA-graph replays (None: no graphs given)
    # CUDA kernels by name: an accidental extra copy or a changed GEMM choice is a named kernel,
    # where the total alone could hide a swap (None: not counted, or recorded before names were)
    kernel_names: dict[str, int] | None = None
    key: CounterKey | None = None
    # Measured, not counted: the summed duration of the device events of the kernel pass (us over
    # `steps`). Never compared (it is a time); the suite reports it beside wall time to say
    # whether a row is host- or device-bound.
    device_busy_us: float | None = None
    notes: list[str] = field(default_factory=list)

    # -- per step (exact) ------------------------------------------------------------------
    def per_step(self, total: int) -> Fraction:
        return Fraction(total, self.steps)

    @property
    def total_ops(self) -> int:
        return sum(self.ops.values())

    @property
    def total_syncs(self) -> int:
        return sum(self.syncs.values())

    def summary(self) -> str:
        """One line for tables: per-step ops, bytes, syncs (and kernels/replays where counted)."""
        parts = [
            f"{frac_text(self.per_step(self.total_ops))} aten ops",
            f"read {format_bytes(float(self.per_step(self.bytes_read)))}",
            f"written {format_bytes(float(self.per_step(self.bytes_written)))}",
            f"{frac_text(self.per_step(self.total_syncs))} syncs",
        ]
        if self.kernels is not None:
            parts.append(f"{frac_text(self.per_step(self.kernels))} kernels")
        if self.graph_replays is not None:
            parts.append(f"{frac_text(self.per_step(self.graph_replays))} graph replays")
        return ", ".join(parts) + " per step"

    # -- comparison ------------------------------------------------------------------------
    def diff(self, other: WorkCounts) -> list[str]:
        """What changed from `other` (e.g. the stored counts) to self, per step; [] if equal.

        Histogram lines first, largest change first (`+64 aten.cat per step`), then the total,
        bytes, syncs, kernels, memcpys and replays. Kernel/memcpy/replay lines only where both
        sides counted them. Non-integral per-step changes also give the total over the steps.
        """
        lines: list[str] = []

        def delta(mine: int, theirs: int) -> tuple[Fraction, int]:
            d = self.per_step(mine) - other.per_step(theirs)
            # The total change, in self's steps (exact when both counted the same steps).
            return d, int(round(d * self.steps))

        changed: list[tuple[Fraction, str, int]] = []
        for name in sorted(set(self.ops) | set(other.ops)):
            d, tot = delta(self.ops.get(name, 0), other.ops.get(name, 0))
            if d:
                changed.append((d, name, tot))
        for d, name, tot in sorted(changed, key=lambda c: (-abs(c[0]), c[1])):
            lines.append(_signed(d, tot, self.steps, name))
        if changed:
            d, tot = delta(self.total_ops, other.total_ops)
            before, after = other.per_step(other.total_ops), self.per_step(self.total_ops)
            change = f"{'+' if d > 0 else '-'}{frac_text(abs(d))}" if d else "±0"
            lines.append(f"aten ops {frac_text(before)} -> {frac_text(after)} per step ({change})")
        for label, mine, theirs in (("bytes read", self.bytes_read, other.bytes_read),
                                    ("bytes written", self.bytes_written, other.bytes_written)):
            d, _ = delta(mine, theirs)
            if d:
                lines.append(f"{label} {'+' if d > 0 else '-'}{format_bytes(abs(float(d)))} per step "
                             f"({frac_text(d) if d < 0 else '+' + frac_text(d)} B)")
        for name in sorted(set(self.syncs) | set(other.syncs)):
            d, tot = delta(self.syncs.get(name, 0), other.syncs.get(name, 0))
            if d:
                lines.append(_signed(d, tot, self.steps, f"host-device syncs ({name})"))
        if self.kernel_names is not None and other.kernel_names is not None:
            named = []
            mine_k, theirs_k = kernel_families(self.kernel_names), kernel_families(other.kernel_names)
            for name in sorted(set(mine_k) | set(theirs_k)):
                d, tot = delta(mine_k.get(name, 0), theirs_k.get(name, 0))
                if d:
                    named.append((d, name, tot))
            for d, name, tot in sorted(named, key=lambda c: (-abs(c[0]), c[1])):
                lines.append(_signed(d, tot, self.steps, f"kernel {name}"))
        for label, mine, theirs in (("CUDA kernels", self.kernels, other.kernels),
                                    ("CUDA memcpy/memset", self.memcpys, other.memcpys),
                                    ("CUDA-graph replays", self.graph_replays, other.graph_replays)):
            if mine is None or theirs is None:
                continue
            d, tot = delta(mine, theirs)
            if d:
                lines.append(_signed(d, tot, self.steps, label))
        return lines

    def minus(self, other: WorkCounts) -> WorkCounts:
        """The work self does beyond `other`, counted over the same steps (entries may be negative).

        The case minus its reference arm is the strategy's own cost (its cache code, its eviction):
        what a change in the model's forward, common to both arms, leaves alone."""
        if self.steps != other.steps:
            raise ValueError(f"counted over {self.steps} vs {other.steps} steps: subtract counts of equal steps")

        def sub(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
            out = {n: a.get(n, 0) - b.get(n, 0) for n in set(a) | set(b)}
            return {n: v for n, v in sorted(out.items()) if v}

        def opt(a: int | None, b: int | None) -> int | None:
            return None if a is None or b is None else a - b

        return WorkCounts(self.steps, sub(self.ops, other.ops), self.bytes_read - other.bytes_read,
                          self.bytes_written - other.bytes_written, sub(self.syncs, other.syncs),
                          opt(self.kernels, other.kernels), opt(self.memcpys, other.memcpys),
                          opt(self.graph_replays, other.graph_replays))

    def without_kernels(self) -> WorkCounts:
        """The same counts with the device-event counts dropped (another GPU chooses other kernels)."""
        return replace(self, kernels=None, memcpys=None, kernel_names=None)

    # -- JSON ------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "schema": SCHEMA,
            "steps": self.steps,
            "ops": dict(sorted(self.ops.items())),
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
            "syncs": dict(sorted(self.syncs.items())),
            "kernels": self.kernels,
            "memcpys": self.memcpys,
            "graph_replays": self.graph_replays,
            "kernel_names": None if self.kernel_names is None else dict(sorted(self.kernel_names.items())),
            "key": None if self.key is None else self.key.to_json(),
            "notes": list(self.notes),
            "device_busy_us": self.device_busy_us,
        }

    @classmethod
    def from_raw(cls, raw: RawCounts | dict, key: CounterKey | None = None) -> WorkCounts:
        """The counts `opcount.count_work` (or a runner's record) holds, with `key` attached."""
        r = raw if isinstance(raw, RawCounts) else RawCounts.model_validate(raw)
        return cls(steps=r.steps, ops=dict(r.ops), bytes_read=r.bytes_read, bytes_written=r.bytes_written,
                   syncs=dict(r.syncs), kernels=r.kernels, memcpys=r.memcpys, graph_replays=r.graph_replays,
                   kernel_names=None if r.kernel_names is None else dict(r.kernel_names), key=key,
                   notes=list(r.notes), device_busy_us=r.device_busy_us)

    @classmethod
    def from_json(cls, obj: Any, source: str = "work counts") -> WorkCounts:
        """Validate and build the stored form; a malformed one raises WorkRecordError naming `source` and the fix."""
        stored = parse_stored_counts(obj, source)
        key = None
        if stored.key is not None:
            key = CounterKey(_canonical(stored.key.fields))
            if stored.key.id not in (None, key.id):
                raise WorkRecordError(f"{source}: key id {stored.key.id!r} does not match its fields (computed "
                                      f"{key.id}); counts are generated, never edited: restore the file from git")
        return cls.from_raw(stored, key)


# Inductor names a generated kernel by what it fuses plus a per-graph index
# (`triton_poi_fused_copy__13`): one added kernel renumbers every later one, so kernels are
# compared by family (the name without its index) and a planted copy reads "+32 kernel
# triton_poi_fused_copy_", not as thirty renumbered kernels.
_INDUCTOR_INDEX = re.compile(r"^(triton_[a-z]+_.*?)_\d+$")


def kernel_family(name: str) -> str:
    m = _INDUCTOR_INDEX.match(name)
    return m.group(1) if m else name


def kernel_families(names: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, n in names.items():
        family = kernel_family(name)
        out[family] = out.get(family, 0) + n
    return out
