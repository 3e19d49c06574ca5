"""A `pytest bench -n N` worker's part file (`<parts dir>/<slot>-<worker>.json`, model
`streamllm.harness.schema.XdistPart`): written by the worker after every cell (`part_json`), read
back by the controller (`read_parts`) before merging (bench/xdist_merge.py)."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamllm.harness.schema.xdist_part import PART_SCHEMA, XdistPart

if TYPE_CHECKING:
    from .xdist_worker import WorkerInfo


def record_to_json(record) -> dict:
    """A BaselineRecord as a part's entry (schema.PartRecord: the baseline file's header and record)."""
    return {"header": record.key.header(), "record": record.stored().model_dump(mode="json")}


def record_from_json(data: Mapping[str, Any]):
    from streamllm.harness.baseline_record import BaselineRecord
    from streamllm.harness.schema import PartRecord

    part = PartRecord.model_validate(data, strict=False)
    return BaselineRecord.from_stored(part.header.header(), part.record)


def part_json(suite, *, worker: str, info: WorkerInfo, cells: Mapping[str, Mapping[str, str]], complete: bool,
              notes: Sequence[str] = ()) -> dict:
    """One worker's part: its run record so far (validated like any run), baseline records and history."""
    from streamllm.harness.records import validate_run

    run = validate_run(suite.run_json(), f"worker {worker}'s run record").to_json() if suite is not None else None
    part = {
        "schema": PART_SCHEMA,
        "worker": worker,
        "pid": os.getpid(),
        "pinning": dataclasses.asdict(info.pinning),
        # what this worker saw after pinning: a record that each one ran on its own card
        "visible": {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"), "gpus": _gpus_seen(),
                    "cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None},
        "cells": dict(cells),  # every cell this worker collected: nodeid -> {case, dataset}
        "complete": complete,
        "notes": list(notes),
        "run": run,
        "records": [record_to_json(r) for r in suite.records] if suite is not None else [],
        "history": {"samples": dict(suite.history_results), "accepted": dict(suite.history_accepted),
                    "fingerprint": suite.fingerprint} if suite is not None and suite.history_results else None,
    }
    return XdistPart.model_validate(part, strict=False).to_json()  # the model the controller reads back


def _gpus_seen() -> list[str]:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def read_parts(parts_dir: Path) -> list[dict]:
    """Every part in `parts_dir` (validated by `schema.XdistPart`, through the one loader), in slot
    order. A part that does not load is kept as an entry naming the file and why (its worker's
    cells then come out MISSING), not raised: the other workers' cells are still merged."""
    from streamllm.harness.schema import StoredFileError, load_stored

    parts = []
    for path in sorted(parts_dir.glob("*.json")):
        try:
            parts.append(load_stored(path, XdistPart).to_json())
        except StoredFileError as exc:
            parts.append({"schema": PART_SCHEMA, "worker": path.stem, "unreadable": str(exc), "cells": {}})
    return sorted(parts, key=lambda p: ((p.get("pinning") or {}).get("slot", 0), str(p.get("worker"))))
