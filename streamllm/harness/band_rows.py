"""What a band is built from, read from the baseline store (docs/bands.md): a row's stored
per-process values under a key (`stored_runs`, with values stored under the older `cpu-t<threads>`
key attributed by `legacy_cpu_model`), every row's values under that key (`key_rows`), and the
pooled prior and row count they give (`key_group`, `device_time_group`, `store_group`)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .band_prior import Prior, prior_from_rows
from .schema.baseline import BaselineError

_LEGACY_CPU = re.compile(r"^cpu-t(\d+)$")
_CPU = re.compile(r"^cpu:(.*)-t(\d+)$")


@dataclass(frozen=True)
class StoredRuns:
    """A row's per-process values under one key, and how older-keyed entries were read."""

    values: list
    note: str | None = None  # legacy entries attributed, or why they were not


def legacy_cpu_model(record, legacy_key: str, count: int) -> tuple[str | None, str]:
    """The CPU model that recorded `count` values stored under the older `cpu-t<threads>` key.

    Every process that records a ratio also adds its run median(s) to `tpot_runs_ms` of its own
    fingerprint, so only a CPU fingerprint (of that thread count) holding at least `count` run
    medians can have recorded them. Exactly one CPU model among those: it recorded them; none or
    several: unknown (the ratios are not used)."""
    threads = int(_LEGACY_CPU.match(legacy_key).group(1))
    runs = record.tpot_runs_ms
    models = set()
    for fid, fp in record.fingerprints.items():
        if fp.get("device_class") == "cpu" and int(fp.get("torch_threads") or 0) == threads \
                and len(runs.get(fid) or []) >= count:
            models.add(str(fp.get("cpu_model")))
    if len(models) == 1:
        model = models.pop()
        return model, f"{count} value(s) stored under {legacy_key!r} read as {model!r}'s (the only CPU model with as many recorded runs)"
    found = "no" if not models else f"{len(models)} ({', '.join(sorted(models))})"
    return None, (f"{count} value(s) stored under {legacy_key!r} (before ratios were keyed by CPU model) not used: "
                  f"{found} CPU model(s) could have recorded them; re-record on this CPU model (`nox -s arm`)")


def stored_runs(record, section: str, key: str) -> StoredRuns:
    """The values of the record's `section` (a keyed section: tpot_ratio, ...) that belong to `key`: its own entry, and on CPU those under
    the older `cpu-t<threads>` key that `legacy_cpu_model` attributes to this key's CPU model."""
    stored = getattr(record, section) if record is not None else {}
    own = list(stored.get(key) or [])
    cpu = _CPU.match(key)
    legacy = f"cpu-t{cpu.group(2)}" if cpu else None
    if not legacy or not stored.get(legacy):
        return StoredRuns(own)
    old = list(stored[legacy])
    count = len(record.tpot_ratio.get(legacy) or old)
    model, note = legacy_cpu_model(record, legacy, count)
    if model == cpu.group(1):
        return StoredRuns(old + own, note)
    if model is not None:
        note = f"{count} value(s) stored under {legacy!r} belong to {model!r}, not this CPU model: not used"
    return StoredRuns(own, note)


def ratio_judged(record) -> bool:
    """Whether a row's same-run ratio is judged: a graph row (device time stored) is judged on its
    device time, its ratio following the host-bound eager reference arm, so that ratio must not
    set its peers' prior either."""
    return not getattr(record, "device_time_ms", None)


def key_rows(records: Mapping[str, object] | Sequence[object], section: str, key: str) -> list[list[float]]:
    """Every row's stored values under `key` (records of all baseline files): the prior's input."""
    items = records.values() if isinstance(records, Mapping) else records
    if section == "tpot_ratio":
        items = [r for r in items if ratio_judged(r)]
    return [v for v in (stored_runs(r, section, key).values for r in items) if v]


@dataclass(frozen=True)
class KeyGroup:
    """What a key's rows tell a row's band: the pooled prior and how many rows a run judges."""

    prior: Prior | None
    rows: int


def key_group(records: Sequence[object], section: str, key: str) -> KeyGroup:
    rows = key_rows(records, section, key)
    return KeyGroup(prior_from_rows(rows), max(1, len(rows)))


# A graph row's device time is keyed per row (its kernel counts' key); its peers are the graph
# rows stored for the same GPU model and software.
DEVICE_TIME_PEER_FIELDS = ("gpu", "torch", "transformers")


def device_time_group(records: Sequence[object], fields: Mapping[str, object]) -> KeyGroup:
    """`key_group` for device times: every stored device-time row whose kernel key (read from the
    record's stored work counts) matches `fields` on DEVICE_TIME_PEER_FIELDS."""
    want = tuple(fields.get(f) for f in DEVICE_TIME_PEER_FIELDS)
    rows = []
    for record in records:
        kernels = {}
        for counts in record.work_counts.values():
            key = counts.get("key") if isinstance(counts, dict) else None
            if isinstance(key, dict) and isinstance(key.get("fields"), dict) and key.get("kernel_id"):
                kernels[key["kernel_id"]] = key["fields"]
        for kernel_id, values in record.device_time_ms.items():
            got = kernels.get(kernel_id)
            if got is not None and tuple(got.get(f) for f in DEVICE_TIME_PEER_FIELDS) == want and values:
                rows.append(list(values))
    return KeyGroup(prior_from_rows(rows), max(1, len(rows)))


def store_records(store) -> list:
    """Every record of every readable file of a BaselineStore (a corrupt file is the row's own
    lookup's error to report, so it is left out of the pool here)."""
    records: list = []
    for path in store.files():
        try:
            records.extend(store.read(path).records.values())
        except BaselineError:
            continue
    return records


def store_group(store, section: str, key: str) -> KeyGroup:
    """`key_group` over the whole store."""
    return key_group(store_records(store), section, key)
