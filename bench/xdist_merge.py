"""The workers' parts of a `pytest bench -n N` run merged into one run record (bench/xdist.py):
results and raw cases in collection order, every collected cell with no result a MISSING row,
the baseline records and history samples of every worker, and each worker's conditions."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamllm.harness.verdicts import MISSING

from .xdist_parts import record_from_json

BENCHMARK_NOTE = ("pytest-benchmark disables itself under xdist (its own rule); the suite's TPOT and verdicts "
                  "do not use it: streamllm.measure times each step with its own clock")


def cell_id(nodeid: str) -> str:
    """`bench/test_strategies.py::test_strategy[strict-s16-book]@int8` -> `strict-s16-book`."""
    base = nodeid.split("@", 1)[0] if "]@" in nodeid else nodeid
    return base[base.rindex("[") + 1 : -1] if base.endswith("]") and "[" in base else base


@dataclass
class Merged:
    run: dict  # the run record (not yet validated)
    records: list  # BaselineRecord
    history: list[tuple[dict, dict[str, list[float]], dict[str, bool]]]  # (fingerprint, samples, accepted)
    missing: list[str] = field(default_factory=list)  # cell ids with no result


def merge_parts(parts: Sequence[Mapping[str, Any]], collected: Sequence[str], crashed: Mapping[str, str], *,
                command: str, runtime_s: float, timing_refused: str | None = None) -> Merged:
    """One run record from the workers' parts, in collection order.

    `collected`: the nodeids xdist collected (every worker collects the same list); `crashed`:
    nodeid -> worker id that crashed running it. A collected cell with no result in any part
    becomes a MISSING row (skipped, with the reason) so the table and the report name it."""
    runs = [p for p in parts if p.get("run")]
    cells: dict[str, dict[str, str]] = {}
    for p in parts:
        cells.update(p.get("cells") or {})
    by_cell: dict[str, dict] = {}
    for p in runs:
        for r in p["run"]["results"]:
            by_cell.setdefault(f"{r['case']}-{r['dataset']}", {**r, "worker": p["worker"]})
    order = [cell_id(n) for n in collected] or list(by_cell)
    nodeid_of = {cell_id(n): n for n in collected}
    raw_by_cell: dict[str, dict] = {}
    for p in runs:
        for c in (p["run"].get("raw") or {}).get("cases") or []:
            raw_by_cell.setdefault(f"{c['case']}-{c['dataset']}", c)
    results, missing, raw_cases = [], [], []
    for cid in order:
        if cid in by_cell:
            results.append(by_cell.pop(cid))
            if cid in raw_by_cell:
                raw_cases.append(raw_by_cell.pop(cid))
            continue
        nodeid = nodeid_of.get(cid, cid)
        meta = cells.get(nodeid) or {}
        worker = crashed.get(nodeid)
        why = (f"MISSING: worker {worker} crashed while running it; its result is lost (the other cells of that "
               "worker are kept)") if worker else "MISSING: no worker reported a result (stopped early or interrupted)"
        case, dataset = meta.get("case"), meta.get("dataset")
        if case is None:
            case, _, dataset = cid.rpartition("-")
        results.append({"dataset": dataset, "case": case, "label": meta.get("label", case), "skipped": why,
                        "ppl": None, "ppl_delta_vs_dense_pct": None, "tpot_ms_mean": None, "tpot_ms_median": None,
                        "speedup": None, "verdicts": {"a": MISSING, "b": MISSING, "c": MISSING}, "missing": True})
        raw_cases.append({"case": case, "dataset": dataset, "label": meta.get("label", case), "text": dataset,
                          "baseline_key": {}, "skipped": why})
        missing.append(cid)
    results.extend(by_cell.values())  # results of cells not collected here (should not happen): kept
    raw_cases.extend(raw_by_cell.values())
    base = dict(runs[0]["run"]) if runs else {"schema": _run_schema(), "options": {}, "fingerprint": {},
                                               "fingerprint_id": None, "model": None}
    base.update({
        "created": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "runtime_s": runtime_s,
        "command": command,
        "results": results,
        "xdist": {
            "workers": [{"worker": p.get("worker"), "pid": p.get("pid"), "pinning": p.get("pinning"),
                         "visible": p.get("visible"),
                         "complete": p.get("complete", False), "notes": p.get("notes", []),
                         "unreadable": p.get("unreadable"),
                         "fingerprint_id": (p.get("run") or {}).get("fingerprint_id"),
                         "threads": (p.get("run") or {}).get("threads"),
                         "runtime_s": (p.get("run") or {}).get("runtime_s"),
                         "cells": len((p.get("run") or {}).get("results", []))} for p in parts],
            "missing": missing,
            "timing": timing_refused or "timed in each worker",
            "benchmark": BENCHMARK_NOTE,
        },
    })
    if base.get("raw"):
        # one raw record: every worker's cases in collection order; `conditions` is the first
        # worker's and `workers` keeps each worker's (its GPU, fingerprint, threads, start) with
        # the cases it measured, so each case is judged under its own worker's conditions
        base["raw"] = {**base["raw"], "cases": raw_cases, "workers": raw_workers(runs)}
    records = [record_from_json(r) for p in parts for r in p.get("records") or []]
    history = [(p["history"]["fingerprint"], p["history"]["samples"], p["history"]["accepted"])
               for p in parts if p.get("history")]
    return Merged(base, records, history, missing)


def raw_workers(runs: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Each worker's raw conditions and the cells it measured (records.RawWorker), in slot order."""
    out = []
    for p in runs:
        raw = p["run"].get("raw") or {}
        if raw.get("conditions"):
            out.append({"worker": str(p["worker"]), "conditions": raw["conditions"],
                        "cases": [f"{c['case']}-{c['dataset']}" for c in raw.get("cases") or []]})
    return out


def _run_schema() -> str:
    from streamllm.harness.records import RUN_SCHEMA

    return RUN_SCHEMA
