"""Judging one case: the measuring glue around the one judge (`streamllm.harness.judge`).

Everything a case's checks read goes into its raw record first (bench/run_record.py `raw_case`:
PPL, timing, work counts, the eviction probe, the own path, and the (c) findings measured here by
`measure_findings`); the judge turns that record into checks. No verdict word is produced here:
where the judge asks for more interleaved rounds, this loop measures them once and asks again."""

from __future__ import annotations

from streamllm.harness.history import RunHistory
from streamllm.harness.judge import CaseVerdicts
from streamllm.harness.judge import judge_case as judge_one
from streamllm.harness.judge_ratio import RatioCI
from streamllm.harness.records import RawFinding
from streamllm.harness.stats import ppl_ratio_ci
from streamllm.harness.verdicts import RATIO_CHECK, Check
from streamllm.measure import TimingRun
from streamllm.results import EvalResult

from .catalog import BenchCase
from .findings import (
    TIMING_RELATIONS,
    TraceInputs,
    finding_record,
    findings_for,
    trace_finding_record,
    trace_findings_for,
)
from .measuring import Measurements
from .run_record import CaseResult, raw_case, raw_conditions
from .session import Session


def judge_case(session: Session, measure: Measurements, case: BenchCase, dataset: str, evaluation: EvalResult,
               timing: TimingRun | None, out: CaseResult) -> list[Check]:
    """The case's checks in the suite's order ((a), (b), (c)), all from its raw record."""
    out.findings = measure_findings(session, measure, case, dataset)
    return judge_measured(session, measure, case, dataset, out, evaluation, timing).checks


def judge_measured(session: Session, measure: Measurements, case: BenchCase, dataset: str,
                   out: CaseResult, evaluation: EvalResult, timing: TimingRun | None) -> CaseVerdicts:
    """The case's raw record through the one judge (streamllm.harness.judge): (a) PPL, eviction, own
    path, timed-decode agreement; (b) work counts (exact, any machine with this software), TPOT
    relative to the reference arm timed in the same process (any machine of this device class),
    absolute TPOT against this machine's run history (or device time for a graph row); (c) the
    findings in `out.findings`. Where the judge asks for more rounds, this loop measures them once
    and judges again; `out.raw` keeps what was judged."""
    conditions = raw_conditions(session)
    # the history as it is now: this run appends to it only at its end (finish_run)
    history = RunHistory(session.history_root, session.fingerprint_id)
    out.raw = raw_case(session, out, evaluation, timing)
    judged = judge_one(out.raw, conditions, session.store, history)
    if judged.rerun is not None and not out.raw.oversubscribed:
        measure.rerun(case, dataset)  # adds the rounds to the TimingRuns' rerun_samples
        out.raw = raw_case(session, out, evaluation, timing)
        judged = judge_one(out.raw, conditions, session.store, history)
    ratio = next((c for c in judged.tpot if c.name == RATIO_CHECK), None)
    if ratio is not None and ratio.details.get("ratio"):
        out.ratio = RatioCI(**ratio.details["ratio"])
    return judged


def _why_not(session: Session, spec, dataset: str) -> str | None:
    """Why a finding does not apply to this run (model, text, geometry, device, weights), or None."""
    loaded = session.model()
    return spec.applies(model=loaded.name, dataset=session.text(dataset).name, sink=session.options.sink,
                        window=session.options.window, tokens=session.options.tokens,
                        device_type=session.options.device_type, dummy_weights=loaded.dummy_weights)


def measure_findings(session: Session, measure: Measurements, case: BenchCase, dataset: str) -> list[RawFinding]:
    """The case's (c) findings, measured (estimate and CI) or with why not; judged by the judge."""
    out: list[RawFinding] = []
    no_timing = session.options.no_timing
    for spec in findings_for(case.id):
        why_not = _why_not(session, spec, dataset)
        if why_not:
            out.append(finding_record(spec, spec.reference, not_applicable=why_not))
            continue
        ref_case = session.case(spec.reference)
        if spec.finding.relation != "ratio_ppl" and no_timing:
            out.append(finding_record(spec, ref_case.label, not_measured=no_timing))
        elif spec.finding.relation == "ratio_ppl":
            est, lo, hi = ppl_ratio_ci(measure.evaluate(case, dataset).trace.nll,
                                       measure.evaluate(ref_case, dataset).trace.nll)
            out.append(finding_record(spec, ref_case.label, estimate=est, ci_low=lo, ci_high=hi))
        else:
            paired = measure.paired_ratio(case, ref_case, dataset)
            out.append(finding_record(spec, ref_case.label, estimate=paired.ratio, ci_low=paired.low,
                                      ci_high=paired.high))
    for spec in trace_findings_for(case.id):
        out.append(_trace_finding(session, measure, case, dataset, spec))
    return out


def _trace_finding(session: Session, measure: Measurements, case: BenchCase, dataset: str, spec) -> RawFinding:
    """A finding measured on one run's arrays: ΔNLL against a reference at the same tokens, or the
    prune step apart from the mean (bench/findings.py TRACE_FINDINGS)."""
    why_not = _why_not(session, spec, dataset)
    if why_not:
        return finding_record(spec, spec.reference, trace=True, not_applicable=why_not)
    if spec.finding.relation in TIMING_RELATIONS:
        if session.options.no_timing:
            return finding_record(spec, spec.reference, trace=True, not_measured=session.options.no_timing)
        t = measure.timing(case, dataset)
        inputs = TraceInputs(step_ms=t.step_ms, prune_flags=t.prune_flags, cycle=t.cycle)
    else:
        trace = measure.evaluate(case, dataset).trace
        reference = measure.evaluate(session.case(spec.reference), dataset).trace
        inputs = TraceInputs(nll=trace.nll, prune_steps=trace.prune_steps, reference_nll=reference.nll)
    return trace_finding_record(spec, inputs)
