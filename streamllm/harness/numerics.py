"""Judging a row's own path (streamllm.ownpath): its per-token NLL across the first evictions
against the reference evaluator, with a tolerance derived in the same run from two correct paths,
and the tokens its tensors hold against the closed-form schedule."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from streamllm.ownpath import OwnPath

from .verdicts import EVICTION_CHECK, FAIL, OWN_PATH_CHECK, OWN_PATH_FACTOR, OWN_PATH_NOISE_FLOOR, PASS, Check


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
    bad = np.flatnonzero(diff > tolerance)
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
