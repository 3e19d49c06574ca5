"""Judging a row's numerics and eviction from the raw record: its own path (streamllm.ownpath) — the
per-token NLL across the first evictions against the reference evaluator, with a tolerance derived
in the same run from two correct paths —, the tokens its tensors hold against the closed-form
schedule, the evaluation's prune events against that schedule, and the timed decode's agreement
with the evaluator. Pure functions of `records.RawCase` (+ the run's dtype and device); the judge
(judge.py) calls them for a live run and for `streamllm compare` alike."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from streamllm.ownpath import Holding, OwnPath
from streamllm.schedule import EvictionCheckError, TextTooShortError, eviction_steps, trace_engaged
from streamllm.strategies import StrategySpec

from .records import Check, RawCase, RawHolding, RawOwnPath
from .verdicts import (
    AGREEMENT_CHECK,
    ERROR,
    EVICTION_CHECK,
    FAIL,
    NOT_APPLICABLE,
    NOT_CHECKED,
    OWN_PATH_CHECK,
    OWN_PATH_FACTOR,
    OWN_PATH_NOISE_FLOOR,
    PASS,
)


def own_path_tolerance(calibration: OwnPath, reference_nll: Sequence[float], dtype: str,
                       cap: float) -> tuple[float, float]:
    """(tolerance, the correct-path gap it comes from): OWN_PATH_FACTOR x max |Δ NLL| of the
    calibration path (eager dynamic cache) against the reference, the gap floored at the dtype's
    kernel noise (OWN_PATH_NOISE_FLOOR) and the tolerance capped at `cap` (the timed slice's fixed tolerance), so a broken
    calibration path cannot widen the tolerance past what the dynamic rows are held to."""
    gap = float(np.max(np.abs(np.asarray(calibration.nll) - np.asarray(reference_nll)[list(calibration.steps)])))
    floor = OWN_PATH_NOISE_FLOOR.get(dtype.replace("fp", "float"), OWN_PATH_NOISE_FLOOR["float32"])
    return min(cap, OWN_PATH_FACTOR * max(gap, floor)), gap


def check_own_path(own: OwnPath, reference_nll: Sequence[float], *, tolerance: float, calibration_gap: float,
                   reference: str, what: str) -> Check:
    """PASS when every step's |Δ NLL| is within `tolerance`; FAIL names max |Δ|, the first step
    past it and its place in the eviction schedule."""
    ref = np.asarray(reference_nll)[list(own.steps)]
    diff = np.abs(np.asarray(own.nll) - ref)
    worst = float(np.max(diff))
    details = {"max_abs_diff": worst, "tolerance": tolerance, "calibration_gap": calibration_gap,
               "steps": [own.steps[0], own.steps[-1]], "events": list(own.events), "reference": reference,
               "decoder": own.decoder, "fill": own.fill}
    where = (f"{len(own.steps)} steps {own.steps[0]}-{own.steps[-1]} through {own.decoder} ({own.cache} cache), "
             f"{len(own.events)} eviction events, vs {reference}")
    bad = np.flatnonzero(~(diff <= tolerance))  # a NaN NLL (a broken cache) is past any tolerance
    if bad.size == 0:
        return Check("ppl", OWN_PATH_CHECK, PASS,
                     f"{what}: max |ΔNLL| {worst:.2e} over {where}, within {tolerance:.2e} "
                     f"({OWN_PATH_FACTOR:g}x the eager dynamic cache's {calibration_gap:.2e})", details)
    step = own.steps[int(bad[0])]
    details["first_bad_step"] = step
    return Check("ppl", OWN_PATH_CHECK, FAIL,
                 f"{what}: max |ΔNLL| {worst:.3g} over {where}, beyond {tolerance:.2e} "
                 f"({OWN_PATH_FACTOR:g}x the eager dynamic cache's {calibration_gap:.2e}); first at step {step} "
                 f"({own.place(step)}), |ΔNLL| {float(diff[bad[0]]):.3g}", details)


def check_holdings(own: OwnPath, what: str) -> Check | None:
    """FAIL at the first probe step whose tensors hold other tokens than the schedule's; None when
    every holding matches (the caller reports the pass with the rest of the eviction check)."""
    for holding in own.holdings:
        if not holding.matches:
            return Check("ppl", EVICTION_CHECK, FAIL,
                         f"{what}: after step {holding.step} ({own.place(holding.step)}) the {own.cache} cache's "
                         f"tensors hold other tokens than the schedule's: {holding.difference()}",
                         {"step": holding.step, "held": list(holding.held), "expected": list(holding.expected)})
    return None


# -- from the raw record ----------------------------------------------------------------------------
def _holding(raw: RawHolding) -> Holding:
    return Holding(raw.step, tuple(raw.held), tuple(raw.expected))


def _floats(xs: list[float | None]) -> list[float]:
    return [np.nan if x is None else float(x) for x in xs]  # JSON stores a non-finite NLL as null


def _own(raw: RawOwnPath, steps: list[int], nll: list[float | None], holdings: bool = True) -> OwnPath:
    return OwnPath(raw.strategy, raw.cache, raw.decoder, raw.fill, tuple(steps), tuple(_floats(nll)), tuple(raw.events),
                   tuple(_holding(h) for h in raw.holdings) if holdings else ())


def eviction_check(raw: RawCase) -> Check | None:
    """(a) the case's eviction engaged, checked from outside the cache: the evaluation's prune events
    and attended lengths against the schedule computed from S, W, R, B alone (streamllm.schedule),
    and the tokens the case's own cache holds, read from its tensors (streamllm.ownpath): across
    the first evictions for a static or ring row, at the end of its timed slice for a dynamic one.
    A text too short to evict is an error naming both, never a pass. None: a record without it."""
    ev = raw.eviction
    if ev is None:
        return None
    spec = StrategySpec(**ev.spec)
    what = f"{raw.label} on {raw.text}"
    if spec.capacity is None:
        return Check("ppl", EVICTION_CHECK, NOT_APPLICABLE, f"{what}: dense keeps every token")
    try:
        if ev.prune_steps is not None:
            trace_engaged(spec, ev.tokens, ev.prune_steps, ev.kv_length)
    except TextTooShortError as exc:
        return Check("ppl", EVICTION_CHECK, ERROR, f"{what}: {exc}")
    except EvictionCheckError as exc:
        return Check("ppl", EVICTION_CHECK, FAIL, f"{what}: {exc}")
    if raw.own_path is not None:
        holdings, source = raw.own_path.holdings, f"its {spec.cache} cache's tensors"
        failed = check_holdings(_own(raw.own_path, raw.own_path.steps, raw.own_path.nll), what)
        if failed is not None:
            return failed
    elif ev.holding is not None:
        holdings, source = [ev.holding], f"its {spec.cache} cache's tensors at the end of its slice"
        held = _holding(ev.holding)
        if not held.matches:
            return Check("ppl", EVICTION_CHECK, FAIL,
                         f"{what}: after step {held.step} {source} hold other tokens than the schedule's: "
                         f"{held.difference()}", {"step": held.step})
    else:
        return Check("ppl", EVICTION_CHECK, NOT_CHECKED,
                     f"{what}: the prune events match the schedule, but no slice of the row's own cache was "
                     "decoded to read its tensors (the text is too short, or the case was not measured)")
    steps = [h.step for h in holdings]
    return Check("ppl", EVICTION_CHECK, PASS,
                 f"{what}: evicts as scheduled ({len(eviction_steps(spec, ev.tokens - 1))} events in the "
                 f"text; {source} hold the schedule's tokens after steps {steps})",
                 {"steps_checked": steps, "source": source})


def own_path_check(raw: RawCase, dtype: str, cap: float) -> Check | None:
    """(a) a static or ring row's own decode across its first evictions vs the reference evaluator,
    with the tolerance from its calibration path; None where the record holds no such slice."""
    own = raw.own_path
    if own is None or own.calibration_nll is None or own.reference_nll is None \
            or own.calibration_steps is None or own.calibration_reference_nll is None:
        return None
    reference = np.full(max([*own.steps, *own.calibration_steps]) + 1, np.nan)
    reference[own.calibration_steps] = _floats(own.calibration_reference_nll)
    reference[own.steps] = _floats(own.reference_nll)
    calibration = _own(own, own.calibration_steps, own.calibration_nll, holdings=False)
    tolerance, gap = own_path_tolerance(calibration, reference, dtype, cap=cap)
    return check_own_path(_own(own, own.steps, own.nll), reference, tolerance=tolerance, calibration_gap=gap,
                          reference=own.reference or "the reference evaluator", what=f"{raw.label} on {raw.text}")


def agreement_check(raw: RawCase, tolerance: float) -> Check | None:
    """(a) the timed decode's per-token NLL against the evaluator's at the same steps (dynamic rows:
    the timed slice is their own path); None where it was not measured (random K/V, no timing)."""
    diff = raw.own_path_nll_max_abs_diff
    if diff is None:
        return None
    ok = diff <= tolerance
    steps = raw.agreement_steps if raw.agreement_steps is not None else "?"
    return Check("ppl", AGREEMENT_CHECK, PASS if ok else FAIL,
                 f"{raw.label} on {raw.text}: max |NLL(timed decode) - NLL({raw.evaluator} evaluator)| = {diff:.2e} "
                 f"over {steps} steps ({'within' if ok else 'OUTSIDE'} {tolerance:g})",
                 {"max_abs_diff": diff, "tolerance": tolerance})
