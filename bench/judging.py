"""Judging one case: the checks of its measurements against what is stored, each a
`streamllm.harness.verdicts.Check` made by a judge of `streamllm.harness.judges`. These functions
gather the judges' inputs (the stored record, the run's conditions) and call them; they decide no
verdict of their own and change none."""

from __future__ import annotations

import torch

from streamllm.combinations import GRAPH_MODES
from streamllm.harness.bands import device_time_group, store_group, store_records
from streamllm.harness.history import RunHistory
from streamllm.harness.judges import (
    HistoryInputs,
    check_device_time,
    check_history,
    check_ppl,
    check_ratio_vs_baseline,
    check_work,
    lookup,
)
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
    Check,
    ratio_key,
)
from streamllm.measure import TimingRun
from streamllm.results import EvalResult
from streamllm.schedule import EvictionCheckError, TextTooShortError, eviction_steps, trace_engaged

from .catalog import BenchCase, compile_mode
from .findings import (
    TIMING_RELATIONS,
    TraceInputs,
    check_finding,
    check_trace_finding,
    findings_for,
    trace_findings_for,
)
from .measuring import Measurements
from .run_record import REFERENCE_SUFFIX, CaseResult, device_time_key
from .session import Session


def judge_case(session: Session, measure: Measurements, case: BenchCase, dataset: str, evaluation: EvalResult, timing: TimingRun,
           out: CaseResult) -> list[Check]:
    what = f"{case.label} on {evaluation.dataset}"
    found = lookup(session.store, session.key(case, evaluation))
    updating = session.options.update_baselines
    device_class = session.fingerprint["device_class"]
    checks = [check_ppl(evaluation.ppl, found, device_class=device_class, updating=updating, what=what),
              eviction_check(session, case, dataset, evaluation, out)]
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
    checks.extend(tpot_checks(session, measure, case, dataset, evaluation, timing, out, found))
    checks.extend(finding_checks(session, measure, case, dataset))
    return checks


def tpot_checks(session: Session, measure: Measurements, case: BenchCase, dataset: str, evaluation: EvalResult, timing: TimingRun,
                out: CaseResult, found) -> list[Check]:
    """(b) three signals, strongest first: the step's work counts (exact, any machine with this
    software), its TPOT relative to the reference arm timed in the same process (any machine of
    this device class), and its absolute TPOT against this machine's run history."""
    what = f"{case.label} on {evaluation.dataset}"
    updating = session.options.update_baselines
    checks: list[Check] = []
    checks.append(check_work(out.work, found, updating=updating, what=what, reference=out.reference_work))
    busy = session.oversubscribed()
    rerun = None
    if not busy:
        def rerun() -> tuple[list[float], list[float]]:
            return measure.rerun(case, dataset)
    graph = compile_mode(case) in GRAPH_MODES
    key = ratio_key(session.fingerprint, torch.get_num_threads())
    # A row's band pools the variance of every row stored under its key and is corrected for
    # as many rows (docs/bands.md): read from the store, so every process agrees on it.
    group = store_group(session.store, "tpot_ratio", key)
    ratio = check_ratio_vs_baseline(
        timing.samples, out.reference_timing.samples if out.reference_timing else None, found,
        key=key, updating=updating, what=what, prior=group.prior, rows=group.rows,
        tolerance=session.options.tpot_tolerance, rerun=rerun,
        faults=(timing.faults_per_step, out.reference_timing.faults_per_step) if out.reference_timing else None,
        not_applicable=("a CUDA-graph step is device-bound, the eager reference host-bound: their ratio "
                        "follows the host, not the step (checked by work counts and device time)") if graph else None)
    if ratio.details.get("ratio"):
        out.ratio = RatioCI(**ratio.details["ratio"])
    checks.append(ratio)
    device = timing.device_samples if timing.device_ms else None
    samples = device or timing.samples
    if graph:
        # A graph replay is device-bound by construction (decided from the row, not from a
        # measured busy share that can flip): its device time is checked against the GPU
        # model's stored processes from a machine's first run; the history stays for the rest.
        dkey = device_time_key(out)
        dgroup = device_time_group(store_records(session.store), out.work.key.fields) if dkey else None
        checks.append(check_device_time(device, found, key=dkey, updating=updating,
                                        what=what, fallback=session.options.tpot_tolerance,
                                        prior=dgroup.prior if dgroup else None, rows=dgroup.rows if dgroup else None))
    ref = out.reference_timing
    ref_samples = (ref.device_samples if ref.device_ms else ref.samples) if ref is not None else None
    name = f"{dataset}/{case.id}"
    history = RunHistory(session.history_root, session.fingerprint_id)
    absolute = check_history(history, name, samples, what=what,
                             clock="device time (CUDA events)" if device else "wall time",
                             floor=session.options.tpot_tolerance, k=session.options.history_k,
                             nightly=session.options.nightly, versions=session.fingerprint,
                             inputs=HistoryInputs(busy=busy, reference_case=name + REFERENCE_SUFFIX,
                                                  reference_samples=ref_samples))
    checks.append(absolute)
    return checks


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
