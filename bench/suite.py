"""The suite: one bench session, end to end for each case — measure and judge it (bench/measuring.py
`measure_case`: its raw record through the one judge, a frozen result), keep its result — and at
the end write the run (`finish_run`, below, with bench/run_record.py's writers).

One `Suite` lives on the pytest config (`config.stash`), created by the top-level conftest.py from
the command-line options. Nothing is module-global.

`finish_run` ends both a serial run (`Suite.finish`) and an xdist run (bench/xdist.py, after merging
the workers' parts). Both ends hand it the run record (a dict: the serial Suite's `run_json()`, or
the controller's merge of the workers' parts), the baseline records and the history samples. It
writes the baselines (only under --update/--append-baselines), appends the history, writes the run
record, builds the lines the terminal prints (table, notes, the --nightly line) and decides the
run's status through the harness' one rule (`streamllm.harness.judge.run_outcome`), which
`streamllm report` also reads, so the terminal, summary.json and pytest's exit code agree. It lives
here, at the suite's end, so a TPOT sample's row reaches the table line without another file
(docs/architecture.md, "The route of one TPOT sample").
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamllm.harness.baseline_record import BaselineRecord
from streamllm.harness.baselines import BaselineStore
from streamllm.harness.fingerprint import fingerprint_id
from streamllm.harness.history_runs import CALIBRATION_CASE
from streamllm.harness.judge import RunOutcome, nightly_unarmed, run_outcome
from streamllm.harness.table import armed_summary, table_lines
from streamllm.measure import TimingRun
from streamllm.results import EvalResult

from .catalog import BenchCase
from .measuring import CaseResult, Measurements, raw_case
from .run_record import (
    REFERENCE_SUFFIX,  # noqa: F401  (re-exported: tests build history entries with it)
    UnrecordableCaseError,
    append_history,
    baseline_record,
    extra_info,
    history_entries,
    run_json,
    write_run_record,
)
from .session import Session, SuiteOptions  # noqa: F401  (SuiteOptions re-exported for conftest and tests)


class Suite(Session):
    def __init__(self, options: SuiteOptions, rootdir: Path):
        super().__init__(options, rootdir)
        self.measure = Measurements(self)
        self.results: list[CaseResult] = []
        self.records: list[BaselineRecord] = []
        self.written: list[Path] = []  # baseline files written by the update
        self.run_file: Path | None = None

    # The measurements tests and findings reach for, by their plain names.
    def evaluate(self, case: BenchCase, dataset: str) -> EvalResult:
        return self.measure.evaluate(case, dataset)

    def timing(self, case: BenchCase, dataset: str, benchmark=None) -> TimingRun:
        return self.measure.timing(case, dataset, benchmark)

    # -- one case, end to end ------------------------------------------------------------------
    def run_case(self, case: BenchCase, dataset: str, benchmark) -> CaseResult:
        """The case measured and judged (bench/measuring.py `measure_case`, its frozen result), its
        baseline record under --update/--append-baselines, kept for the run's end."""
        started = time.perf_counter()
        out = self.measure.measure_case(case, dataset, benchmark)
        timed = not self.options.no_timing
        unrecordable = None
        if timed:
            if self.options.update_baselines:
                try:
                    self.records.append(baseline_record(self, case, dataset, out.evaluation, out.timing, out))
                except ValueError as exc:  # the record's model refuses it (e.g. a NaN PPL): say so, keep the row
                    unrecordable = (f"{case.label} on {dataset}: not recorded as a baseline ({exc}); its stored "
                                    "entry is left as it was: fix the row, then re-run with --update-baselines")
            self.measure.release(case, dataset)
        out = dataclasses.replace(out, seconds=time.perf_counter() - started)
        self.results.append(out)
        if benchmark is not None and timed:
            benchmark.group = f"{self.text(dataset).name} ({self.options.model}, {self.options.tokens} tokens)"
            benchmark.extra_info.update(extra_info(self, out))
        if unrecordable:
            raise UnrecordableCaseError(unrecordable)
        return out

    def skip_case(self, case: BenchCase, dataset: str, reason: str) -> None:
        out = CaseResult(case, dataset, skipped=reason)
        self.results.append(dataclasses.replace(out, raw=raw_case(self, out)))

    # -- the run's end -------------------------------------------------------------------------
    @property
    def history_results(self) -> dict[str, list[float]]:
        """This run's per-round samples for the history (each case and its reference arm)."""
        return history_entries(self.results)[0]

    @property
    def history_accepted(self) -> dict[str, bool]:
        """The entries this run keeps out of their baseline (False); no verdicts go to the history."""
        return history_entries(self.results)[1]

    def write_history(self) -> Path | None:
        """Append this run's absolute samples to the machine's run history (never edited)."""
        samples, accepted = history_entries(self.results)
        if not samples or self.options.report_dir is None:
            return None
        return append_history(self.history_root, self.fingerprint, samples, accepted, rootdir=self.rootdir)

    def write_baselines(self) -> list[Path]:
        if self.records:
            self.written = write_baselines(self.store, self.records, append=self.options.append_baselines)
        return self.written

    def run_json(self) -> dict:
        return run_json(self, self.results, self.written, self.measure.bandwidth)

    def write_run(self) -> Path | None:
        if self.options.report_dir is None or not self.results:
            return None
        self.run_file = write_run_record(self._under_root(self.options.report_dir), self.options.device_type,
                                         self.run_json())
        return self.run_file

    def finish(self) -> RunEnd:
        """The run's end (`finish_run`, the same for an xdist merge): baselines under
        --update/--append-baselines, history, run record, the table's lines and the outcome."""
        o = self.options
        plan = FinishPlan(store=self.store if o.update_baselines else None, append=o.append_baselines,
                          history_root=self.history_root,
                          report_root=self._under_root(o.report_dir) if o.report_dir is not None else None,
                          device_type=o.device_type, rootdir=self.rootdir)
        samples, accepted = history_entries(self.results)
        if samples and self.measure.calibration_ms:
            samples[CALIBRATION_CASE] = self.measure.calibration_ms
        end = finish_run(self.run_json(), self.records, [(self.fingerprint, samples, accepted)], plan)
        self.written, self.run_file = end.written, end.run_file
        return end

    def nightly_unarmed(self) -> str | None:
        """Under --nightly: the line that fails the run when it cannot check every row (the harness'
        one rule, `judge.nightly_unarmed`, which the xdist merge and `streamllm report` also read)."""
        rows = [{**r.row(), "checks": [c.to_dict() for c in r.checks]} for r in self.results]
        return nightly_unarmed(rows, dataclasses.asdict(self.options))

    def time_line(self) -> str:
        """Where this process's wall time went; the warm-up steps (compile, graph capture) inside timing."""
        warm = sum((r.timing.warmup_ms / 1e3 + r.timing.fill_s) for r in self.results if r.timing is not None)
        return self.phases.line(time.time() - self.started, {"of which fill + warm-up/compile": warm})

    def rows_line(self) -> str:
        """Each row's wall time (measuring and judging), so a slow row is named."""
        parts = [f"{r.case.id}/{r.dataset} {r.seconds:.0f} s" for r in self.results if not r.skipped]
        return f"rows: {', '.join(parts)}"


# -- the run's end, serial and xdist alike ------------------------------------------------------------
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
