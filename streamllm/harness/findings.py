"""The (c) findings' judge: a finding's band against what one run measured for it.

A finding (bench/findings.py holds the catalog and measures each one) relates a strategy to a
reference measured in the same run, or is a number taken from one run's arrays. The run stores the
band and the measured estimate with its CI in its raw record (`records.RawFinding`); `judge_finding`
turns that into the check, so a live run and `streamllm compare` give the same verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .records import Check, RawFinding
from .stats import _pct
from .verdicts import FAIL, INCONCLUSIVE, NOT_APPLICABLE, NOT_CHECKED, PASS

RELATIONS = {
    "ratio_ppl": "PPL_s/PPL_ref",
    "ratio_tpot": "TPOT_s/TPOT_ref",
    # measured on one run's arrays (bench/findings.py TraceFindingSpec, measure_trace_finding)
    "dnll_cycle_excess": "ΔNLL_s − ΔNLL_ref per token over s's whole eviction cycles (nats)",
    "dnll_event_excess": "ΔNLL in the 8 steps after an eviction − the 8 before (nats per token)",
    "prune_multiple": "prune step / normal step (mean ms)",
    "prune_share": "prune's amortised extra cost / TPOT",
}
# What a CI below / above the band means, per relation (for the failure message).
SIDES = {
    "ratio_ppl": ("lower PPL", "higher PPL"),
    "ratio_tpot": ("faster", "slower"),
    "dnll_cycle_excess": ("cheaper eviction", "costlier eviction"),
    "dnll_event_excess": ("a dip after events", "a spike after events"),
    "prune_multiple": ("a cheaper prune step", "a costlier prune step"),
    "prune_share": ("a smaller prune share", "a larger prune share"),
}


@dataclass(frozen=True)
class Finding:
    name: str
    relation: str  # a key of RELATIONS: "ratio_ppl", "ratio_tpot", or a one-run relation (TRACE_FINDINGS)
    low: float | None  # band on the ratio; None = unbounded
    high: float | None
    provenance: str  # where the band comes from (a log section of docs/findings.md, or measured here, with date)

    def __post_init__(self) -> None:
        if self.relation not in RELATIONS:
            raise ValueError(f"finding {self.name!r}: relation must be one of {sorted(RELATIONS)}, got {self.relation!r}")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"finding {self.name!r}: band low {self.low} > high {self.high}")

    def band_text(self) -> str:
        lo = "-∞" if self.low is None else f"{self.low:.4g}"
        hi = "+∞" if self.high is None else f"{self.high:.4g}"
        return f"{RELATIONS[self.relation]} in [{lo}, {hi}]"


def check_finding(
    finding: Finding, estimate: float, ci_low: float, ci_high: float, *, confidence: float = 0.95
) -> tuple[str, str]:
    """(verdict, message) for a finding's ratio estimate and CI against its band.

    pass: the CI lies inside the band; fail: the CI lies entirely outside it, on either side (an
    improvement beyond the band fails too: the finding changed, so re-record it on purpose);
    inconclusive: the CI straddles an edge.
    """
    if not all(math.isfinite(x) for x in (estimate, ci_low, ci_high)):
        verdict = FAIL
        why = "non-finite measurement"
    else:
        lo_edge = -math.inf if finding.low is None else finding.low
        hi_edge = math.inf if finding.high is None else finding.high
        if lo_edge <= ci_low and ci_high <= hi_edge:
            verdict, why = PASS, "inside the band"
        elif ci_high < lo_edge or ci_low > hi_edge:
            verdict = FAIL
            below = ci_high < lo_edge
            side = SIDES[finding.relation][0 if below else 1]
            why = (
                f"{'below' if below else 'above'} the band ({side} than the finding says): "
                "the finding changed; if intended, re-record it on purpose"
            )
        else:
            verdict, why = INCONCLUSIVE, "the CI straddles an edge of the band; rerun with more tokens or rounds"
    message = (
        f"finding {finding.name!r}: expected {finding.band_text()} ({finding.provenance}); measured "
        f"{estimate:.4g} ({_pct(confidence)} CI {ci_low:.4g}–{ci_high:.4g}): {verdict}, {why}"
    )
    return verdict, message


def _number(x: float | None) -> float:
    return math.nan if x is None else float(x)  # JSON keeps a non-finite measurement as null


def judge_finding(raw: RawFinding, label: str) -> Check:
    """One finding's check from the raw record; `label`: the case's label (the message names it)."""
    name = f"(c) {raw.name}"
    if raw.not_applicable:
        return Check("finding", name, NOT_APPLICABLE, f"n/a: {raw.not_applicable}")
    finding = Finding(raw.name, raw.relation, raw.low, raw.high, raw.provenance)
    data = {"low": raw.low, "high": raw.high, "relation": raw.relation, "reference": raw.reference,
            "provenance": raw.provenance}
    prefix = f"{label}: " if raw.trace else f"{label} vs {raw.reference}: "
    if raw.not_measured:
        what = "step times" if raw.trace else "TPOT"
        return Check("finding", name, NOT_CHECKED, f"{prefix}{what} not measured: {raw.not_measured}",
                     {"not_measured": raw.not_measured})
    if raw.unmeasurable:  # a measurement that cannot be made is inconclusive with the reason, never a pass
        return Check("finding", name, INCONCLUSIVE, f"finding {raw.name!r}: not measured: {raw.unmeasurable}", data)
    est, lo, hi = _number(raw.estimate), _number(raw.ci_low), _number(raw.ci_high)
    verdict, message = check_finding(finding, est, lo, hi)
    details = {"estimate": est, "ci_low": lo, "ci_high": hi, **data}
    return Check("finding", name, verdict, message if raw.trace else prefix + message, details)
