"""The end of a bench run, once for serial and xdist runs: `finish_run`.

Both ends hand it the run record (a dict: the serial Suite's `run_json()`, or the controller's merge
of the workers' parts), the baseline records and the history samples. It writes the baselines (only
under --update/--append-baselines), appends the history, writes the run record, builds the lines the
terminal prints (table, notes, the --nightly line) and decides the run's status through the
harness' one rule (`streamllm.harness.judge.run_outcome`), which `streamllm report` also reads,
so the terminal, summary.json and pytest's exit code agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamllm.harness.baseline_record import BaselineRecord
from streamllm.harness.baselines import BaselineStore
from streamllm.harness.fingerprint import fingerprint_id
from streamllm.harness.judge import RunOutcome, run_outcome
from streamllm.harness.table import table_lines
from streamllm.harness.verdicts import armed_summary

from .run_record import append_history, write_run_record

# fingerprint, samples, per-entry acceptance (False: kept out of its baseline); no verdicts
HistoryEntry = tuple[dict, dict[str, list[float]], dict[str, bool]]


@dataclass(frozen=True)
class FinishPlan:
    """Where the run's end writes (None: not written) and what it may change."""

    store: BaselineStore | None  # set only under --update/--append-baselines
    append: bool  # --append-baselines: one more process per fingerprint instead of replacing
    history_root: Path
    report_root: Path | None  # the run record goes to <report_root>/runs/; None: no record, no history
    device_type: str
    rootdir: Path


@dataclass
class RunEnd:
    outcome: RunOutcome
    lines: list[str]  # what the terminal prints under the run's own header
    run_file: Path | None = None
    history_files: list[Path] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)


def write_baselines(store: BaselineStore, records: Sequence[BaselineRecord], *, append: bool) -> list[Path]:
    """Under --append-baselines each record goes in as one more process of its own fingerprint."""
    by_fp: dict[str | None, list[BaselineRecord]] = {}
    for record in records:
        fid = next(iter(record.fingerprints), None) if append else None
        by_fp.setdefault(fid, []).append(record)
    written: list[Path] = []
    for fid, group in by_fp.items():
        written += store.update(group, append_for=fid)
    return written


def merge_history(history: Sequence[HistoryEntry]) -> list[HistoryEntry]:
    """One (fingerprint, samples, acceptance) per fingerprint id: workers on like GPUs share one id,
    so their cells become one history run of that machine."""
    grouped: dict[str, HistoryEntry] = {}
    for fp, samples, accepted in history:
        _, s, a = grouped.setdefault(fingerprint_id(fp), (fp, {}, {}))
        s.update(samples)
        a.update(accepted)
    return list(grouped.values())


def finish_run(run: dict[str, Any], records: Sequence[BaselineRecord], history: Sequence[HistoryEntry],
               plan: FinishPlan) -> RunEnd:
    """Write what the run's end writes, and say how the run ended. `run` gets `baselines_written`."""
    written = write_baselines(plan.store, records, append=plan.append) if plan.store is not None and records else []
    run["baselines_written"] = [str(p) for p in written]
    end = RunEnd(run_outcome(run["results"], run.get("options") or {}), [], written=written)
    if plan.report_root is not None:
        for fp, samples, accepted in merge_history(history):
            if samples:
                end.history_files.append(append_history(plan.history_root, fp, samples, accepted,
                                                        rootdir=plan.rootdir))
        run.setdefault("fingerprint_id", fingerprint_id(run.get("fingerprint") or {}))
        end.run_file = write_run_record(plan.report_root, plan.device_type, run)
    results = run["results"]
    end.lines = [armed_summary(results), *table_lines(results)]
    if end.outcome.unarmed:
        end.lines.append(end.outcome.unarmed)
    if written:
        end.lines.append("baselines written: " + ", ".join(str(p) for p in written))
    if end.run_file:
        end.lines.append(f"run JSON: {end.run_file} (render with `streamllm report`; re-judge with "
                         f"`streamllm compare {end.run_file}`)")
    return end
