"""Judging one case: (a) PPL and (b) go through the one judge (`streamllm.harness.judge`) from the
case's raw record; the eviction probe, the own-path agreement and the (c) findings are still judged
here, from the live measurements (they move into the judge once their rewrite lands)."""

from __future__ import annotations

from streamllm.harness.history import RunHistory
from streamllm.harness.judge import CaseVerdicts
from streamllm.harness.judge import judge_case as judge_one
from streamllm.harness.numerics import check_holdings, check_own_path, own_path_tolerance
from streamllm.harness.ratio import RatioCI
from streamllm.harness.stats import ppl_ratio_ci
from streamllm.harness.verdicts import (
    AGREEMENT_CHECK,
    ERROR,
    EVICTION_CHECK,
    FAIL,
    NOT_APPLICABLE,
    NOT_CHECKED,
    PASS,
    RATIO_CHECK,
    Check,
)
from streamllm.measure import TimingRun
from streamllm.results import EvalResult
from streamllm.schedule import EvictionCheckError, TextTooShortError, eviction_steps, trace_engaged

from .catalog import BenchCase
from .findings import (
    TIMING_RELATIONS,
    TraceInputs,
    check_finding,
    check_trace_finding,
    findings_for,
    trace_findings_for,
)
from .measuring import Measurements
from .run_record import CaseResult, raw_case, raw_conditions
from .session import Session


def judge_case(session: Session, measure: Measurements, case: BenchCase, dataset: str, evaluation: EvalResult, timing: TimingRun,
           out: CaseResult) -> list[Check]:
    what = f"{case.label} on {evaluation.dataset}"
    judged = judge_measured(session, measure, case, dataset, out, evaluation, timing)
    checks = [*judged.ppl, eviction_check(session, case, dataset, evaluation, out)]
    own = own_path_check(session, case, evaluation, out)
    if own is not None:
        checks.append(own)
    agreement = timing and measure.slice_agreement(evaluation, timing)
    if agreement is not None:
        tol = session.slice_tolerance()
        ok = agreement <= tol
        checks.append(Check(
            "ppl", AGREEMENT_CHECK, PASS if ok else FAIL,
            f"{what}: max |NLL(timed decode) - NLL({evaluation.evaluator} evaluator)| = {agreement:.2e} over "
            f"{len(timing.positions)} steps ({'within' if ok else 'OUTSIDE'} {tol:g})",
            {"max_abs_diff": agreement, "tolerance": tol}))
    checks.extend(judged.tpot)
    checks.extend(finding_checks(session, measure, case, dataset))
    return checks


def judge_measured(session: Session, measure: Measurements, case: BenchCase, dataset: str,
                   out: CaseResult, evaluation: EvalResult, timing: TimingRun | None) -> CaseVerdicts:
    """(a) PPL and (b) from the case's raw record through the one judge (streamllm.harness.judge):
    the work counts (exact, any machine with this software), TPOT relative to the reference arm
    timed in the same process (any machine of this device class), absolute TPOT against this
    machine's run history (or device time for a graph row). Where the judge asks for more rounds,
    this loop measures them once and judges again; `out.raw` keeps what was judged."""
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


def finding_checks(session: Session, measure: Measurements, case: BenchCase, dataset: str) -> list[Check]:
    out: list[Check] = []
    for spec in findings_for(case.id):
        f = spec.finding
        name = f"(c) {f.name}"
        why_not = _why_not(session, spec, dataset)
        if why_not:
            out.append(Check("finding", name, NOT_APPLICABLE, f"n/a: {why_not}"))
            continue
        ref_case = session.case(spec.reference)
        if f.relation != "ratio_ppl" and session.options.no_timing:
            out.append(Check("finding", name, NOT_CHECKED, f"{case.label} vs {ref_case.label}: TPOT not measured: "
                             f"{session.options.no_timing}", {"not_measured": session.options.no_timing}))
            continue
        if f.relation == "ratio_ppl":
            s_nll = measure.evaluate(case, dataset).trace.nll
            r_nll = measure.evaluate(ref_case, dataset).trace.nll
            est, lo, hi = ppl_ratio_ci(s_nll, r_nll)
        else:
            paired = measure.paired_ratio(case, ref_case, dataset)
            est, lo, hi = paired.ratio, paired.low, paired.high
        verdict, message = check_finding(f, est, lo, hi)
        out.append(Check("finding", name, verdict, f"{case.label} vs {ref_case.label}: {message}",
                         {"estimate": est, "ci_low": lo, "ci_high": hi, "low": f.low, "high": f.high,
                          "relation": f.relation, "reference": ref_case.label, "provenance": f.provenance}))
    out.extend(trace_finding_checks(session, measure, case, dataset))
    return out


def trace_finding_checks(session: Session, measure: Measurements, case: BenchCase, dataset: str) -> list[Check]:
    """Findings measured on one run's arrays: ΔNLL against a reference at the same tokens, and the
    prune step apart from the mean (bench/findings.py TRACE_FINDINGS)."""
    out: list[Check] = []
    for spec in trace_findings_for(case.id):
        name = f"(c) {spec.finding.name}"
        why_not = _why_not(session, spec, dataset)
        if why_not:
            out.append(Check("finding", name, NOT_APPLICABLE, f"n/a: {why_not}"))
            continue
        if spec.finding.relation in TIMING_RELATIONS:
            if session.options.no_timing:
                out.append(Check("finding", name, NOT_CHECKED, f"{case.label}: step times not measured: "
                                 f"{session.options.no_timing}", {"not_measured": session.options.no_timing}))
                continue
            t = measure.timing(case, dataset)
            inputs = TraceInputs(step_ms=t.step_ms, prune_flags=t.prune_flags, cycle=t.cycle)
        else:
            trace = measure.evaluate(case, dataset).trace
            reference = measure.evaluate(session.case(spec.reference), dataset).trace
            inputs = TraceInputs(nll=trace.nll, prune_steps=trace.prune_steps, reference_nll=reference.nll)
        verdict, message, data = check_trace_finding(spec, inputs)
        out.append(Check("finding", name, verdict, message, data))
    return out


def eviction_check(session: Session, case: BenchCase, dataset: str, evaluation: EvalResult, out: CaseResult) -> Check:
    """(a) the case's eviction engaged, checked from outside the cache: the evaluation's prune events
    and attended lengths against the schedule computed from S, W, R, B alone (streamllm.schedule),
    and the tokens the case's own cache holds, read from its tensors (streamllm.ownpath): across
    the first evictions for a static or ring row, at the end of its timed slice for a dynamic one.
    A text too short to evict is an error naming both, never a pass."""
    what = f"{case.label} on {evaluation.dataset}"
    if case.spec.capacity is None:
        return Check("ppl", EVICTION_CHECK, NOT_APPLICABLE, f"{what}: dense keeps every token")
    tokens = evaluation.tokens  # the text the evaluation scored (dummy weights: the token loop's timed part)
    try:
        if evaluation.trace is not None:
            trace_engaged(case.spec, tokens, evaluation.trace.prune_steps, evaluation.trace.kv_length)
    except TextTooShortError as exc:
        return Check("ppl", EVICTION_CHECK, ERROR, f"{what}: {exc}")
    except EvictionCheckError as exc:
        return Check("ppl", EVICTION_CHECK, FAIL, f"{what}: {exc}")
    if out.own_path is not None:
        holdings, source = list(out.own_path.holdings), f"its {case.spec.cache} cache's tensors"
        failed = check_holdings(out.own_path, what)
        if failed is not None:
            return failed
    elif out.holding is not None:
        holdings, source = [out.holding], f"its {case.spec.cache} cache's tensors at the end of its slice"
        if not out.holding.matches:
            return Check("ppl", EVICTION_CHECK, FAIL,
                         f"{what}: after step {out.holding.step} {source} hold other tokens than the schedule's: "
                         f"{out.holding.difference()}", {"step": out.holding.step})
    else:
        return Check("ppl", EVICTION_CHECK, NOT_CHECKED,
                     f"{what}: the prune events match the schedule, but no slice of the row's own cache was "
                     "decoded to read its tensors (the text is too short, or the case was not measured)")
    steps = [h.step for h in holdings]
    return Check("ppl", EVICTION_CHECK, PASS,
                 f"{what}: evicts as scheduled ({len(eviction_steps(case.spec, tokens - 1))} events in the "
                 f"text; {source} hold the schedule's tokens after steps {steps})",
                 {"steps_checked": steps, "source": source})


def own_path_check(session: Session, case: BenchCase, evaluation: EvalResult, out: CaseResult) -> Check | None:
    """(a) a static or ring row's own decode across its first evictions vs the reference evaluator."""
    if out.own_path is None or out.calibration is None or evaluation.trace is None:
        return None
    tolerance, gap = own_path_tolerance(out.calibration, evaluation.trace.nll, session.options.dtype,
                                        cap=session.slice_tolerance())
    return check_own_path(out.own_path, evaluation.trace.nll, tolerance=tolerance, calibration_gap=gap,
                          reference=f"the {evaluation.evaluator} evaluator", what=f"{case.label} on {evaluation.dataset}")
