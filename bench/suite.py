"""The suite: one bench session, end to end for each case — measure it (bench/measuring.py), judge
it (bench/judging.py), keep its result — and at the end write the run (bench/run_record.py): the
baselines under --update/--append-baselines, the history entries, the run record.

One `Suite` lives on the pytest config (`config.stash`), created by the top-level conftest.py from
the command-line options. Nothing is module-global.
"""

from __future__ import annotations

import time
from pathlib import Path

from streamllm.harness.baselines import BaselineRecord
from streamllm.harness.judges import check_ppl, lookup
from streamllm.harness.ratio import RatioCI, ratio_ci
from streamllm.harness.verdicts import NOT_CHECKED, RATIO_CHECK, WORK_CHECK, Check, armed_summary
from streamllm.measure import TimingRun, speedup
from streamllm.results import EvalResult

from .catalog import BenchCase
from .judging import eviction_check, finding_checks, judge_case
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

    def paired_ratio(self, case: BenchCase, other: BenchCase, dataset: str) -> RatioCI:
        return self.measure.paired_ratio(case, other, dataset)

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
        # the row's own numerics and holdings, read before counting feeds its slice more steps
        out.holding = self.measure.holding(case, dataset)
        out.own_path = self.measure.own_path(case, dataset)
        if out.own_path is not None:
            out.calibration = self.measure.calibration(case, dataset)
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
        what = f"{case.label} on {evaluation.dataset}"
        found = lookup(self.store, self.key(case, evaluation))
        out.checks = [
            check_ppl(evaluation.ppl, found, device_class=self.fingerprint["device_class"], updating=False, what=what),
            eviction_check(self, case, dataset, evaluation, out),
            Check("tpot", "(b) TPOT", NOT_CHECKED, f"{what}: TPOT not measured: {self.options.no_timing}",
                  {"not_measured": self.options.no_timing}),
            *finding_checks(self, self.measure, case, dataset),
        ]
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
    def history_verdicts(self) -> dict[str, str]:
        return history_entries(self.results)[1]

    def write_history(self) -> Path | None:
        """Append this run's absolute samples to the machine's run history (never edited)."""
        samples, verdicts = history_entries(self.results)
        if not samples or self.options.report_dir is None:
            return None
        return append_history(self.history_root, self.fingerprint, samples, verdicts, rootdir=self.rootdir)

    def write_baselines(self) -> list[Path]:
        if self.records:
            self.written = self.store.update(
                self.records, append_for=self.fingerprint_id if self.options.append_baselines else None)
        return self.written

    def run_json(self) -> dict:
        return run_json(self, self.results, self.written, self.measure.bandwidth)

    def write_run(self) -> Path | None:
        if self.options.report_dir is None or not self.results:
            return None
        self.run_file = write_run_record(self._under_root(self.options.report_dir), self.options.device_type,
                                         self.run_json())
        return self.run_file

    def nightly_unarmed(self) -> str | None:
        """Under --nightly: the line that fails the run when a row is not armed on a device class that
        has baselines (some row's work counts or ratio were live), else None."""
        if not self.options.nightly or self.options.update_baselines or self.options.no_timing:
            return None
        rows = [r.row() for r in self.results]
        unarmed = [r for r in rows if r.get("armed") is False]
        has_baselines = any(c.live and c.name in (WORK_CHECK, RATIO_CHECK) for r in self.results for c in r.checks)
        if not unarmed or not has_baselines:
            return None
        return (f"streamllm: --nightly: {armed_summary(rows)}; a nightly run checks every row: record the missing "
                f"baselines on this device class with `nox -s arm -- <this run's options>` (bench/README.md)")

    def time_line(self) -> str:
        """Where this process's wall time went; the warm-up steps (compile, graph capture) inside timing."""
        warm = sum((r.timing.warmup_ms / 1e3 + r.timing.fill_s) for r in self.results if r.timing is not None)
        return self.phases.line(time.time() - self.started, {"of which fill + warm-up/compile": warm})

    def rows_line(self) -> str:
        """Each row's wall time (measuring and judging), so a slow row is named."""
        parts = [f"{r.case.id}/{r.dataset} {r.seconds:.0f} s" for r in self.results if not r.skipped]
        return f"rows: {', '.join(parts)}"
