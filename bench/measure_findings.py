"""Measuring a case's (c) findings: each finding's estimate and CI (or why it was not measured),
for the raw record the judge reads (`streamllm.harness.findings` judges them). A PPL finding pairs
two evaluations' per-token NLL; a TPOT finding times the two strategies step for step in fresh
slices (`Measurements.paired_ratio`, a TPOT sample route of its own); a trace finding reads one
run's arrays (bench/findings.py TRACE_FINDINGS: the prune step against the mean reads the case's
own step times, a branch of its TPOT sample's route, docs/architecture.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from streamllm.harness.records import RawFinding
from streamllm.harness.stats import ppl_ratio_ci

from .catalog import BenchCase
from .findings import (
    TIMING_RELATIONS,
    TraceInputs,
    finding_record,
    findings_for,
    trace_finding_record,
    trace_findings_for,
)
from .session import Session

if TYPE_CHECKING:  # a type only: measuring.py calls measure_findings
    from .measuring import Measurements


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
