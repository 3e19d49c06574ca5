"""Findings measured on one run's arrays (bench/findings.py TRACE_FINDINGS): pure functions of the
measured NLL traces and step times, each with a direction and a band."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bench.catalog import build_catalog
from bench.findings import (
    FINDINGS,
    TRACE_FINDINGS,
    Finding,
    TraceFindingSpec,
    TraceInputs,
    findings_for,
    measure_trace_finding,
    trace_finding_record,
    trace_findings_for,
)
from streamllm.harness.findings import judge_finding
from streamllm.harness.verdicts import FAIL, INCONCLUSIVE, PASS

N = 2048


def check_trace_finding(spec: TraceFindingSpec, inputs: TraceInputs) -> tuple[str, str, dict]:
    """Measured (bench/findings.py), then judged (streamllm/harness/findings.py), as the suite does."""
    check = judge_finding(trace_finding_record(spec, inputs), spec.case)
    return check.verdict, check.message, check.details


def spec(relation: str, low: float | None, high: float | None, **kw) -> TraceFindingSpec:
    return TraceFindingSpec(Finding("test", relation, low, high, "test provenance"), case="lazy-c32",
                            reference=kw.pop("reference", "strict-w140"), models=("tiny",), **kw)


def traces(bump: float, seed: int = 0) -> tuple[TraceInputs, np.ndarray]:
    rng = np.random.default_rng(seed)
    dense = rng.gamma(1.2, 2.0, N)
    events = list(range(159, N - 1, 32))
    lazy = dense + 0.1 + rng.normal(0, 0.05, N)
    for e in events:
        lazy[e + 1 : e + 5] += bump
    same_size = dense + 0.1 + rng.normal(0, 0.05, N)
    return TraceInputs(nll=lazy.tolist(), prune_steps=events, reference_nll=same_size.tolist()), dense


def test_cycle_excess_passes_inside_and_fails_on_a_planted_spike():
    quiet, _ = traces(0.0)
    verdict, message, data = check_trace_finding(spec("dnll_cycle_excess", -0.02, 0.02), quiet)
    assert verdict == PASS and data["ci_low"] < 0 < data["ci_high"]
    spiky, _ = traces(1.0)  # 4 of 32 steps +1 nat: +0.125 nats/token over the cycle
    verdict, message, data = check_trace_finding(spec("dnll_cycle_excess", -0.02, 0.02), spiky)
    assert verdict == FAIL and "costlier eviction" in message and data["estimate"] == pytest.approx(0.125, abs=0.01)


def test_event_excess_is_measured_against_the_reference_given():
    spiky, dense = traces(1.0)
    inputs = dataclasses.replace(spiky, reference_nll=dense.tolist())
    est, lo, hi = measure_trace_finding(spec("dnll_event_excess", -0.25, 0.25, reference="dense"), inputs)
    assert lo < 0.5 < hi  # 8-step horizon, +1 on 4 steps
    verdict, message, _ = check_trace_finding(spec("dnll_event_excess", -0.25, 0.25, reference="dense"), inputs)
    assert verdict == FAIL and "a spike after events" in message


def test_step_time_findings_and_what_is_missing():
    flags = ([False] * 31 + [True]) * 8
    times = [10.0 + 0.1 * (i % 3) if not f else 30.0 for i, f in enumerate(flags)]
    inputs = TraceInputs(step_ms=times, prune_flags=flags, cycle=32)
    est, lo, hi = measure_trace_finding(spec("prune_multiple", 1.5, 5.0), inputs)
    assert est == pytest.approx(30.0 / np.mean([t for t, f in zip(times, flags, strict=True) if not f]))
    assert check_trace_finding(spec("prune_multiple", 1.5, 5.0), inputs)[0] == PASS
    assert check_trace_finding(spec("prune_share", None, 0.01), inputs)[0] == FAIL  # ~5.9 %: above 1 %
    verdict, message, _ = check_trace_finding(spec("prune_share", None, 0.1), TraceInputs())
    assert verdict == INCONCLUSIVE and "no step times" in message
    strict = TraceInputs(step_ms=[5.0] * 64, prune_flags=[True] * 64, cycle=1)
    assert check_trace_finding(spec("prune_multiple", 1.0, 2.0), strict)[0] == INCONCLUSIVE


def test_min_tokens_and_geometry_decide_applicability():
    s = spec("dnll_cycle_excess", -0.02, 0.02, geometry={"sink": 4, "window": 124}, min_tokens=4096)
    common = dict(model="tiny", dataset="book", sink=4, window=124, device_type="cpu", dummy_weights=False)
    assert "--tokens >= 4096" in s.applies(tokens=1024, **common)
    assert s.applies(tokens=4096, **common) is None and s.applies(tokens=8192, **common) is None
    assert "window=124" in s.applies(tokens=4096, **{**common, "window": 252})
    with pytest.raises(ValueError, match="relation must be one of"):
        TraceFindingSpec(Finding("x", "ratio_ppl", 1.0, 2.0, "p"), case="a", reference="b", models=("m",))


def test_trace_findings_reference_catalog_cases_and_stay_out_of_the_ratio_list():
    for s in TRACE_FINDINGS:
        known = {c.id for c in build_catalog(s.geometry.get("sink", 4), s.geometry.get("window", 124))}
        assert s.case in known and s.reference in known, s.finding.name
        assert s not in FINDINGS and s not in findings_for(s.case) and s in trace_findings_for(s.case)
        assert s.finding.low is not None or s.finding.high is not None
