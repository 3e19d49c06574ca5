"""The suite: one bench session, end to end for each case — measure it (bench/measuring.py), judge
it (its raw record through the judge: bench/judging.py), keep its result — and at the end write the run (bench/run_record.py): the
baselines under --update/--append-baselines, the history entries, the run record.

One `Suite` lives on the pytest config (`config.stash`), created by the top-level conftest.py from
the command-line options. Nothing is module-global.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from streamllm.harness.baseline_record import BaselineRecord
from streamllm.harness.history_runs import CALIBRATION_CASE
from streamllm.harness.judge import nightly_unarmed
from streamllm.harness.judge_ratio import ratio_ci
from streamllm.harness.verdicts import Check
from streamllm.measure import TimingRun, speedup
from streamllm.results import EvalResult

from .catalog import BenchCase
from .finish import FinishPlan, RunEnd, finish_run, write_baselines
from .judging import judge_case
from .measuring import Measurements
from .run_record import (
    REFERENCE_SUFFIX,  # noqa: F401  (re-exported: tests build history entries with it)
    CaseResult,
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

    def checks(self, case: BenchCase, dataset: str, evaluation: EvalResult, timing: TimingRun,
               out: CaseResult) -> list[Check]:
        if out.work is None and self.options.count_work:
            out.work, out.reference_work = self.measure.count(case, dataset)
        return judge_case(self, self.measure, case, dataset, evaluation, timing, out)

    # -- one case, end to end ------------------------------------------------------------------
    def run_case(self, case: BenchCase, dataset: str, benchmark) -> CaseResult:
        if self.options.no_timing:
            return self.run_ppl_only(case, dataset, benchmark)
        started = time.perf_counter()
        out = CaseResult(case, dataset)
        # timing first: for token-loop cases the timed rounds *are* the evaluation's decode steps
        timing = out.timing = self.timing(case, dataset, benchmark)
        out.reference_timing = self.measure.references.get((dataset, case.id))
        if out.reference_timing is not None:
            out.ratio = ratio_ci(timing.samples, out.reference_timing.samples)
        self.own_numerics(case, dataset, out)  # before counting feeds the timed slice more steps
        evaluation = out.evaluation = self.evaluate(case, dataset)
        out.slice_nll_max_abs_diff = self.measure.slice_agreement(evaluation, timing)
        if case.id != "dense":
            dense = self.case("dense")
            out.ppl_delta_vs_dense_pct = 100.0 * (evaluation.ppl / self.evaluate(dense, dataset).ppl - 1.0)
            out.speedup = speedup(self.timing(dense, dataset).mean_ms, timing.mean_ms)
        else:
            out.ppl_delta_vs_dense_pct, out.speedup = 0.0, 1.0
        out.floor_ms = self.measure.step_floor_ms(case, timing)
        out.checks = self.checks(case, dataset, evaluation, timing, out)
        if self.options.update_baselines:
            self.records.append(baseline_record(self, case, dataset, evaluation, timing, out))
        self.measure.release(case, dataset)
        out.seconds = time.perf_counter() - started
        self.results.append(out)
        if benchmark is not None:
            benchmark.group = f"{self.text(dataset).name} ({self.options.model}, {self.options.tokens} tokens)"
            benchmark.extra_info.update(extra_info(self, out))
        return out

    def own_numerics(self, case: BenchCase, dataset: str, out: CaseResult) -> None:
        """The row's own path (static/ring: with its calibration path) and its cache's holdings."""
        out.holding = self.measure.holding(case, dataset)
        out.own_path = self.measure.own_path(case, dataset)
        if out.own_path is not None:
            out.calibration = self.measure.calibration(case, dataset)

    def run_ppl_only(self, case: BenchCase, dataset: str, benchmark=None) -> CaseResult:
        """The case's PPL, (a) and PPL findings without timing (`options.no_timing` says why).

        The evaluation is `evaluate`, exactly as in a timed run, so the PPL is the serial run's; the
        (b) cell and timing findings are not checked, with the reason. Token-loop cases (refresh)
        still step their reference arm: its times are discarded, the NLL is the same."""
        started = time.perf_counter()
        out = CaseResult(case, dataset)
        if benchmark is not None:
            # Nothing to time: disabled, pedantic runs the no-op once and records no benchmark entry
            # (and pytest-benchmark does not warn that its fixture went unused).
            benchmark.disabled = True
            benchmark.pedantic(lambda: None)
        evaluation = out.evaluation = self.evaluate(case, dataset)
        if case.id != "dense":
            out.ppl_delta_vs_dense_pct = 100.0 * (evaluation.ppl / self.evaluate(self.case("dense"), dataset).ppl - 1.0)
        else:
            out.ppl_delta_vs_dense_pct = 0.0
        self.own_numerics(case, dataset, out)
        out.checks = judge_case(self, self.measure, case, dataset, evaluation, None, out)  # (b): "not measured"
        out.seconds = time.perf_counter() - started
        self.results.append(out)
        return out

    def skip_case(self, case: BenchCase, dataset: str, reason: str) -> None:
        self.results.append(CaseResult(case, dataset, skipped=reason))

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
        """The run's end (bench/finish.py, the same for an xdist merge): baselines under
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
