"""Measuring one case, to its frozen result: `Measurements.measure_case` times the case interleaved
with its reference arm, measures what its checks read besides the timing (its PPL, the probes of
bench/probes.py, its findings), builds its raw record (`raw_case`: the one place a TimingRun
becomes the record's RawArm) and puts that through the one judge (`judged`: where the judge asks
for more interleaved rounds, they are measured once on the same caches and the case judged again).
Memoized per (dataset, case): a finding's reference strategy is measured once, whichever case
needs it first. No verdict word is produced here: the checks come from `streamllm.harness.judge`.

A TPOT sample passes through this file once, between the timing run (streamllm/measure.py) and
the raw record (streamllm/harness/records.py): docs/architecture.md, "The route of one TPOT sample"."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from streamllm.calibration import CalibrationArm
from streamllm.combinations import GRAPH_MODES
from streamllm.decode_slice import DecodeSlice, prepare_slice, reference_slice
from streamllm.decoders import decoder_factory
from streamllm.evaluate import build_result
from streamllm.harness.history import RunHistory
from streamllm.harness.judge import judge_case
from streamllm.harness.judge_ratio import RatioCI, ratio_ci
from streamllm.harness.records import Check, RawArm, RawCase, RawFinding
from streamllm.harness.table import bound_word, make_row, summarize
from streamllm.harness.verdicts import RATIO_CHECK
from streamllm.harness.workrecord import WorkCounts
from streamllm.measure import TimingRun, speedup, steps_per_round, time_interleaved
from streamllm.ownpath import Holding, OwnPath
from streamllm.parallel import evaluate_parallel
from streamllm.parallel_schedule import supports_parallel
from streamllm.results import EvalResult, TokenTrace

from .catalog import BenchCase, compile_mode
from .measure_findings import measure_findings
from .probes import SliceProbes, raw_eviction, raw_nll, raw_own_path
from .session import Session, _in_phase, raw_conditions


@dataclass(frozen=True)
class CaseResult:
    """One case's result, frozen once measured and judged (bench/measuring.py `measure_case`)."""

    case: BenchCase
    dataset: str
    evaluation: EvalResult | None = None
    timing: TimingRun | None = None
    reference_timing: TimingRun | None = None  # the interleaved reference arm (decode_slice.reference_slice)
    ratio: RatioCI | None = None  # case / reference, per round, same process
    work: WorkCounts | None = None
    reference_work: WorkCounts | None = None  # the reference arm over the same steps, if the judge asked
    speedup: float | None = None
    floor_ms: float | None = None  # analytic bytes a step must read / measured copy bandwidth
    ppl_delta_vs_dense_pct: float | None = None
    slice_nll_max_abs_diff: float | None = None
    own_path: OwnPath | None = None  # static/ring rows: their own decode across the first evictions
    calibration: OwnPath | None = None  # the same slice through the eager dynamic cache
    holding: Holding | None = None  # dynamic rows: what the timed slice's tensors hold at its end
    findings: list[RawFinding] | None = None  # the (c) findings as measured (bench/measure_findings.py)
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    skipped: str | None = None  # reason, when the case could not run here
    raw: RawCase | None = None  # what the judge judged (bench/measuring.py raw_case; skipped cases too)

    @property
    def bound(self) -> str | None:
        work = self.work
        return bound_word(work.device_busy_us if work else None, work.steps if work else None,
                          self.timing.mean_ms if self.timing else None)

    @property
    def verdicts(self) -> dict[str, str]:
        return {"a": summarize(self.checks, "ppl"), "b": summarize(self.checks, "tpot"),
                "c": summarize(self.checks, "finding")}

    def row(self) -> dict:
        ev, tm = self.evaluation, self.timing
        return make_row(dataset=self.dataset, case=self.case.id, label=self.case.label, checks=self.checks,
                        skipped=self.skipped, timed=tm is not None, ppl=ev.ppl if ev else None,
                        ppl_delta_vs_dense_pct=self.ppl_delta_vs_dense_pct, tpot_ms_mean=tm.mean_ms if tm else None,
                        tpot_ms_median=tm.median_ms if tm else None, speedup=self.speedup, floor_ms=self.floor_ms,
                        bound=self.bound)

    def to_json(self) -> dict:
        ev = self.evaluation
        out = {
            **self.row(),
            "transform": self.case.transform,
            "sweeps": list(self.case.sweeps),  # the report draws one curve per sweep
            "params": self.case.params(),
            "seconds": self.seconds,
            "slice_nll_max_abs_diff": self.slice_nll_max_abs_diff,
            "evaluation": ev.summary() if ev else None,
            "timing": self.timing.summary() if self.timing else None,
            "reference_timing": self.reference_timing.summary() if self.reference_timing else None,
            "ratio": self.ratio.as_dict() if self.ratio else None,
            "work": self.work.to_json() if self.work else None,
            "reference_work": self.reference_work.to_json() if self.reference_work else None,
            "timing_step_ms": self.timing.step_ms if self.timing else None,
            # text index and prune flag of each timed step: the phase A diagnostics put the step
            # times next to the per-token NLL and KV length
            "timing_positions": self.timing.positions if self.timing else None,
            "timing_prune_flags": self.timing.prune_flags if self.timing else None,
            "checks": [c.to_dict() for c in self.checks],
        }
        if ev is not None and ev.trace is not None:
            out["trace"] = {"nll": ev.trace.nll, "prune_steps": ev.trace.prune_steps,
                            "kv_length": ev.trace.kv_length, "evicted": ev.trace.evicted,
                            "step_ms": ev.trace.step_ms}  # NaN (null) for the parallel evaluator
        return finite(out)


class Measurements(SliceProbes):
    def __init__(self, session: Session):
        super().__init__()
        self.session = session
        self._evals: dict[tuple, EvalResult] = {}
        self._timings: dict[tuple[str, str], TimingRun] = {}
        self.references: dict[tuple[str, str], TimingRun] = {}  # each case's reference arm
        self._slices: dict[tuple[str, str], DecodeSlice] = {}  # kept until a rerun is decided
        self._reference_slices: dict[tuple[str, str], DecodeSlice] = {}
        self._torch_only: CalibrationArm | None = None  # the run's calibration arm, timed after each case

    # -- one case, end to end ------------------------------------------------------------------
    def measure_case(self, case: BenchCase, dataset: str, benchmark=None) -> CaseResult:
        """The case measured and judged: its frozen result, checks and raw record included."""
        if self.session.options.no_timing:
            return self._ppl_only(case, dataset, benchmark)
        # timing first: for token-loop cases the timed rounds *are* the evaluation's decode steps
        timing = self.timing(case, dataset, benchmark)
        reference = self.references.get((dataset, case.id))
        holding, own, calibration = self.own_numerics(case, dataset)  # before counting feeds the slice more steps
        evaluation = self.evaluate(case, dataset)
        ppl_delta = self.ppl_delta_vs_dense(case, dataset, evaluation)
        faster = 1.0 if case.id == "dense" else speedup(self.timing(self.session.case("dense"), dataset).mean_ms,
                                                        timing.mean_ms)
        measured = CaseResult(
            case, dataset, evaluation=evaluation, timing=timing, reference_timing=reference,
            ratio=ratio_ci(timing.samples, reference.samples) if reference is not None else None,
            speedup=faster, floor_ms=self.step_floor_ms(case, timing.kv_length_max), ppl_delta_vs_dense_pct=ppl_delta,
            slice_nll_max_abs_diff=self.slice_agreement(evaluation, timing.positions, timing.nll, timing.fill_mode),
            own_path=own, calibration=calibration, holding=holding)
        return self.judged(measured)

    def _ppl_only(self, case: BenchCase, dataset: str, benchmark=None) -> CaseResult:
        """The case's PPL, (a) and PPL findings without timing (`options.no_timing` says why).

        The evaluation is `evaluate`, exactly as in a timed run, so the PPL is the serial run's; the
        (b) cell and timing findings are not checked, with the reason. Token-loop cases (refresh)
        still step their reference arm: its times are discarded, the NLL is the same."""
        if benchmark is not None:
            # Nothing to time: disabled, pedantic runs the no-op once and records no benchmark entry
            # (and pytest-benchmark does not warn that its fixture went unused).
            benchmark.disabled = True
            benchmark.pedantic(lambda: None)
        evaluation = self.evaluate(case, dataset)
        ppl_delta = self.ppl_delta_vs_dense(case, dataset, evaluation)
        holding, own, calibration = self.own_numerics(case, dataset)
        measured = CaseResult(case, dataset, evaluation=evaluation, ppl_delta_vs_dense_pct=ppl_delta, own_path=own,
                              calibration=calibration, holding=holding)
        return self.judged(measured, count_work=False)  # (b): "not measured"

    def ppl_delta_vs_dense(self, case: BenchCase, dataset: str, evaluation: EvalResult) -> float:
        if case.id == "dense":
            return 0.0
        return 100.0 * (evaluation.ppl / self.evaluate(self.session.case("dense"), dataset).ppl - 1.0)

    def judged(self, out: CaseResult, *, count_work: bool = True) -> CaseResult:
        """`out` with its work counts and findings measured, its raw record, and that record's checks
        from the one judge (streamllm.harness.judge): (a) PPL, eviction, own path, timed-decode
        agreement; (b) work counts, TPOT relative to the reference arm timed in the same process,
        absolute TPOT against this machine's run history (or device time for a graph row); (c) the
        findings. What the judge asks for (the reference arm's counts, more rounds) is measured once
        and judged again."""
        case, dataset = out.case, out.dataset
        if count_work and out.work is None:
            out = dataclasses.replace(out, work=self.count(case, dataset))
        out = dataclasses.replace(out, findings=measure_findings(self.session, self, case, dataset))
        conditions = raw_conditions(self.session)
        # the history as it is now: this run appends to it only at its end (finish_run)
        history = RunHistory(self.session.history_root, self.session.fingerprint_id)
        raw = raw_case(self.session, out)
        verdicts = judge_case(raw, conditions, self.session.store, history)
        if verdicts.count_reference is not None:
            out = dataclasses.replace(out, reference_work=self.count_reference(case, dataset))
            verdicts = judge_case(raw := raw_case(self.session, out), conditions, self.session.store, history)
        if verdicts.rerun is not None and not raw.oversubscribed:
            self.rerun(case, dataset)  # adds the rounds to the TimingRuns' rerun_samples
            verdicts = judge_case(raw := raw_case(self.session, out), conditions, self.session.store, history)
        ratio = next((c for c in verdicts.tpot if c.name == RATIO_CHECK), None)
        if ratio is not None and ratio.details.get("ratio"):
            out = dataclasses.replace(out, ratio=RatioCI(**ratio.details["ratio"]))
        return dataclasses.replace(out, raw=raw, checks=verdicts.checks)

    def release(self, case: BenchCase, dataset: str) -> None:
        """Drop the case's caches once it is judged (they were kept for a rerun)."""
        self._slices.pop((dataset, case.id), None)
        self._reference_slices.pop((dataset, case.id), None)

    # -- measurements --------------------------------------------------------------------------
    @_in_phase("PPL")
    def evaluate(self, case: BenchCase, dataset: str) -> EvalResult:
        """Per-token NLL and PPL of a case: the parallel evaluator where it is exact, else the token loop.

        Static/ring caches and torch.compile change how a step runs, not which tokens it attends,
        so for the parallel evaluator they share the dynamic strategy's evaluation (on the same
        weights); the timed decode slice then checks *their* numerics against it
        (`_slice_agreement`). Memoized: a finding's reference is evaluated once per dataset."""
        key = (dataset, case.id)
        if key not in self._evals:
            loaded = self.session.model(case.transform)
            text = self.session.text(dataset)
            use_parallel, why = False, "--evaluator token"
            if self.session.options.evaluator == "auto":
                    use_parallel, why = supports_parallel(case.spec, loaded.model)
            if use_parallel:
                weights = "int8" if case.transform == "int8" else None
                shared = ("parallel", dataset, dataclasses.replace(case.spec, cache="dynamic"), weights)
                if shared not in self._evals:
                    self._evals[shared] = evaluate_parallel(loaded, text.ids, dataclasses.replace(case.spec, cache="dynamic"),
                                                            dataset=text.name, dataset_sha256=text.sha256,
                                                            chunk_size=self.session.options.chunk_size)
                result = self._evals[shared]
            else:
                result = self._loop(case, dataset)
                result.notes.append(f"token-loop evaluator: {why}")
            # the label carries the cache kind and transform: they are part of what was measured
            self._evals[key] = dataclasses.replace(result, strategy=case.label, params=case.params(),
                                                   notes=list(result.notes))
        return self._evals[key]

    def new_slice(self, case: BenchCase, dataset: str, timed_steps: int | None = None,
                  real_fill: bool = False) -> DecodeSlice:
        loaded = self.session.model(case.transform)
        steps, _ = self.session.geometry(case)
        if timed_steps is None:
            timed_steps = steps * (self.session.options.warmup_rounds + self.session.rounds_for(case))
        factory = decoder_factory(compile_mode(case), loaded.device, case.spec.cache)
        return prepare_slice(loaded, self.session.text(dataset).ids, case.spec, timed_steps=timed_steps,
                             decoder_factory=factory, real_fill=real_fill)

    def timing(self, case: BenchCase, dataset: str, benchmark=None) -> TimingRun:
        """Time a case interleaved with its reference arm (through pytest-benchmark when given),
        memoized per (dataset, case)."""
        key = (dataset, case.id)
        if key not in self._timings and self.session.uses_loop(case):
            self._loop(case, dataset, benchmark)
        if key in self._timings:
            return self._timings[key]
        steps, cycle = self.session.geometry(case)
        slice_ = self.new_slice(case, dataset)
        self._timings[key] = self._time(case, dataset, slice_, steps, cycle, self.session.rounds_for(case), benchmark)
        self._slices[key] = slice_
        return self._timings[key]

    def reference_length(self, case: BenchCase, slice_: DecodeSlice) -> int:
        """|C| the reference arm holds: what the case attends at steady state (dense: where its slice starts)."""
        if case.spec.capacity is None:
            return slice_.cursor
        return case.spec.sink + case.spec.effective_window

    @_in_phase("timing")
    def _time(self, case: BenchCase, dataset: str, slice_: DecodeSlice, steps: int, cycle: int, rounds: int,
              benchmark) -> TimingRun:
        """The case's rounds interleaved step for step with its reference arm (measure.time_interleaved)."""
        key = (dataset, case.id)
        loaded = self.session.model(case.transform)
        reference = reference_slice(loaded, self.session.text(dataset).ids, self.reference_length(case, slice_))
        self._reference_slices[key] = reference
        if benchmark is not None and getattr(benchmark, "disabled", False):
            benchmark.pedantic(lambda: None)  # --benchmark-disable: pedantic would run the target once, untimed
            benchmark = None
        run, ref = time_interleaved(slice_, reference, steps=steps, cycle=cycle, rounds=rounds,
                                    warmup_rounds=self.session.options.warmup_rounds, benchmark=benchmark)
        self.references[key] = ref
        if self._torch_only is None:
            self._torch_only = CalibrationArm(loaded.device)
        self._torch_only.measure()
        return run

    @property
    def calibration_ms(self) -> list[float]:
        """The torch-only calibration arm's samples so far (ms; device time on CUDA)."""
        return list(self._torch_only.samples) if self._torch_only is not None else []

    @_in_phase("token loop (PPL + timing)")
    def _loop(self, case: BenchCase, dataset: str, benchmark=None) -> EvalResult:
        """Token-loop evaluation whose steady-state steps are also the timing rounds.

        The cache is filled to capacity by one chunked forward (its logits are the token loop's
        NLL for those steps: nothing is evicted before), then the rest of the text is decoded in
        rounds of whole eviction cycles through pytest-benchmark; every step's NLL is recorded
        (outside the timed region), so one pass gives both the PPL and the TPOT samples. A
        refresh run costs one token loop instead of a token loop plus a timing slice."""
        key = ("loop", dataset, case.id)
        if key in self._evals:
            return self._evals[key]
        loaded = self.session.model(case.transform)
        text = self.session.text(dataset)
        steps, cycle = self.session.geometry(case)
        slice_ = self.new_slice(case, dataset, timed_steps=0, real_fill=True)
        fill = slice_.cursor
        rounds = min(self.session.rounds_for(case), slice_.remaining // steps - self.session.options.warmup_rounds)
        if rounds < 1:
            raise ValueError(f"{case.label}: {text.ids.numel()} tokens leave no whole round of {steps} steps after "
                             f"filling {fill}: raise --tokens")
        run = self._time(case, dataset, slice_, steps, cycle, rounds, benchmark)
        if slice_.remaining and not self.session.options.dummy:
            # the text's tail: scored, not a whole round, not a sample. Dummy weights have no PPL
            # worth the tail's steps: their evaluation ends with the timed rounds.
            slice_.run(slice_.remaining)
        positions, prunes, evicted = slice_.positions, slice_.pruned, slice_.evicted
        nan = float("nan")
        trace = TokenTrace(
            nll=list(slice_.fill_nll) + list(slice_.nll),
            step_ms=[nan] * fill + list(slice_.step_ms),
            kv_length=list(range(1, fill + 1)) + list(slice_.kv_length),
            position=list(range(fill)) + list(slice_.fed_position),
            prune_steps=[t for t, p in zip(positions, prunes, strict=True) if p],
            evicted=[e for e, p in zip(evicted, prunes, strict=True) if p],
        )
        result = build_result(loaded, case.spec, trace, len(trace.nll) + 1, text.name, text.sha256, "token",
                              self.session.options.warmup_rounds * steps)
        self._evals[key] = result
        self._timings[(dataset, case.id)] = run
        self._slices[(dataset, case.id)] = slice_
        return result

    def rerun(self, case: BenchCase, dataset: str) -> tuple[list[float], list[float]]:
        """More interleaved rounds on the same caches after an inconclusive verdict: twice the
        rounds, as far as the text allows. Returns (case samples, reference samples)."""
        steps, cycle = self.session.geometry(case)
        key = (dataset, case.id)
        slice_, reference = self._slices.get(key), self._reference_slices.get(key)
        if slice_ is None or reference is None:
            return [], []
        rounds = min(2 * self.session.rounds_for(case), slice_.remaining // steps)
        if rounds < 1:
            return [], []
        more, ref = time_interleaved(slice_, reference, steps=steps, cycle=cycle, rounds=rounds, warmup_rounds=0)
        self._timings[key].rerun_samples.extend(more.samples)
        self.references[key].rerun_samples.extend(ref.samples)
        return more.samples, ref.samples

    @_in_phase("findings timing")
    def paired_ratio(self, case: BenchCase, other: BenchCase, dataset: str) -> RatioCI:
        """TPOT(case) / TPOT(other), the two timed step for step in fresh slices (measure.time_interleaved):
        a TPOT finding compares two strategies, and timings taken minutes apart on a shared machine
        differ by more than the finding's band."""
        steps = steps_per_round(math.lcm(case.cycle, other.cycle), self.session.options.min_steps)
        rounds = max(4, self.session.options.rounds * self.session.options.min_steps // steps)
        warmup = max(1, self.session.options.warmup_rounds)  # fresh slices: first calls pay one-time costs
        timed = steps * (warmup + rounds)
        arms = [self.new_slice(c, dataset, timed_steps=timed) for c in (case, other)]
        a, b = time_interleaved(arms[0], arms[1], steps=steps, cycle=steps, rounds=rounds, warmup_rounds=warmup)
        return ratio_ci(a.samples, b.samples)


# -- the raw record: what was measured, for the judge (streamllm/harness/judge.py) -----------------
def raw_case(session: Session, out: CaseResult) -> RawCase:
    """One case's raw measurements (no verdict): what `judge` reads, and all `streamllm compare` has.
    Its arms are the TimingRuns as they stand (a rerun's rounds included)."""
    ev, tm = out.evaluation, out.timing
    return RawCase(
        case=out.case.id, dataset=out.dataset, label=out.case.label, text=ev.dataset if ev else out.dataset,
        baseline_key=session.key(out.case, ev).to_json() if ev else {},
        graph=compile_mode(out.case) in GRAPH_MODES, skipped=out.skipped, ppl=finite(ev.ppl) if ev else None,
        nll=raw_nll(ev), ppl_delta_vs_dense_pct=finite(out.ppl_delta_vs_dense_pct),
        speedup=finite(out.speedup), floor_ms=finite(out.floor_ms),
        timing=RawArm.from_timing(tm) if tm is not None else None,
        reference=RawArm.from_timing(out.reference_timing) if out.reference_timing is not None else None,
        work=out.work.to_json() if out.work else None,
        reference_work=out.reference_work.to_json() if out.reference_work else None,
        own_path_nll_max_abs_diff=finite(out.slice_nll_max_abs_diff),
        own_path_tolerance=session.slice_tolerance() if out.slice_nll_max_abs_diff is not None else None,
        agreement_steps=len(tm.positions) if tm is not None and out.slice_nll_max_abs_diff is not None else None,
        evaluator=ev.evaluator if ev else None,
        eviction=raw_eviction(out.case.spec, ev, out.holding) if not out.skipped else None,
        own_path=raw_own_path(out.own_path, out.calibration, ev),
        findings=out.findings,
        oversubscribed=session.oversubscribed() if tm is not None else None,
    )


def finite(obj):
    """NaN/inf are not JSON: store them as null (numpy scalars become floats)."""
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
