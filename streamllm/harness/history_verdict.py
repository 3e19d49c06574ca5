"""The run history's TPOT verdicts, asv/conbench style (issue #11 item 3): a run's per-round
samples of a case against the pooled samples of its baseline (history_runs.py).

Verdicts (`judge`): a regression needs both a two-sided Mann-Whitney p < 0.002 and a median
ratio beyond the band (ratio > 1 + band); an improvement is the mirror image in log space
(ratio < 1 / (1 + band)), so a slowdown and its revert are judged alike; anything else passes.
The small alpha keeps the false-alarm rate low over many cases and nights (pooled samples of
separate processes differ by more than their within-run noise, which the band absorbs). With
too few accepted runs, or samples too few for Mann-Whitney to ever reach alpha, the case is
NOT_CHECKED with the reason, never a pass.

Nightly mode (PyTorch HUD's rule): a case is flagged only when the previous run of that case
got the same raw verdict, i.e. two consecutive points; a single outlier run is reported as
"unconfirmed" and never fails. The previous run's verdict is re-judged from its samples against
the baseline that run had (the accepted runs before it, of its library versions), and counts only
when that run kept the case out of its baseline: a run that let a moved case in had put the move
on the machine (its reference arm moved alike), so it is no first point (`previous_verdict`).

Acceptance (`enters_baseline`, what a bench run appends): the run is accepted, except each case
that got a raw regression/improvement, so one moved case does not keep the other cases' samples
out of their baselines, and a step change keeps being compared with the old level until a person
accepts the new one on purpose (`append(..., accepted=True)` with no per-case override);
`accepted=False` rejects a run known to be disturbed.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .history_runs import Run, baseline_of, valid_samples
from .stats import mann_whitney
from .verdicts import HISTORY_ALPHA, IMPROVEMENT, NOT_CHECKED, PASS, REGRESSION, UNCONFIRMED

DEFAULT_ALPHA = HISTORY_ALPHA


def enters_baseline(raw: str) -> bool:
    """Whether a case whose history check got `raw` enters its baseline: a move beyond the band stays
    out, so a step change is compared with the old level until a person accepts it on purpose."""
    return raw not in (REGRESSION, IMPROVEMENT)


@dataclass(frozen=True)
class Judgement:
    case: str
    verdict: str  # final: regression | improvement | pass | not checked | unconfirmed (nightly)
    raw: str  # before the nightly rule: regression | improvement | pass | not checked
    flagged: bool  # the verdict fails the case
    ratio: float | None  # median(candidate) / median(baseline)
    p_value: float | None  # two-sided Mann-Whitney U
    band: float
    message: str
    n_candidate: int = 0
    n_baseline: int = 0
    baseline_runs: tuple[int, ...] = ()

    def as_dict(self) -> dict:
        out = dict(self.__dict__)
        out["baseline_runs"] = list(self.baseline_runs)
        return out



def _best_p(n: int, m: int) -> float:
    """The smallest p Mann-Whitney can give for n vs m samples (perfect separation)."""
    return mann_whitney([float(i) for i in range(n)], [float(n + i) for i in range(m)])


def _not_checked(case: str, band: float, why: str, n: int = 0, m: int = 0, runs: tuple[int, ...] = ()) -> Judgement:
    return Judgement(case, NOT_CHECKED, NOT_CHECKED, False, None, None, band,
                     f"{case}: TPOT not checked: {why}", n, m, runs)


def judge(
    candidate: Sequence[float],
    baseline: Sequence[float],
    band: float,
    *,
    alpha: float = DEFAULT_ALPHA,
    case: str = "TPOT",
    baseline_runs: tuple[int, ...] = (),
) -> Judgement:
    """Raw verdict of `candidate` per-round samples against pooled `baseline` samples.

    regression: p < alpha and median ratio > 1 + band; improvement: p < alpha and ratio <
    1 / (1 + band); else pass. Not checked when the sample sizes cannot reach p < alpha at all.
    """
    if band < 0:
        raise ValueError(f"band must be >= 0, got {band}")
    cand = valid_samples(list(candidate), f"{case}: candidate")
    base = valid_samples(list(baseline), f"{case}: baseline")
    n, m = len(cand), len(base)
    best = _best_p(n, m)
    if best >= alpha:
        return _not_checked(case, band, f"{n} vs {m} samples cannot reach Mann-Whitney p < {alpha:g} "
                            f"(best possible p = {best:.2g}): record more rounds or runs", n, m, baseline_runs)
    ratio = statistics.median(cand) / statistics.median(base)
    p = mann_whitney(cand, base)
    high, low = 1.0 + band, 1.0 / (1.0 + band)
    significant = p < alpha
    if significant and ratio > high:
        raw = REGRESSION
        why = f"slower than the band (> {high:.3g}x) and significant"
    elif significant and ratio < low:
        raw = IMPROVEMENT
        why = f"faster than the band (< {low:.3g}x) and significant: if intended, accept the run on purpose"
    elif ratio > high or ratio < low:
        raw, why = PASS, f"beyond the band but not significant (p >= {alpha:g})"
    else:
        raw, why = PASS, f"inside the band [{low:.3g}x, {high:.3g}x]"
    runs = f" of runs {', '.join(f'#{r}' for r in baseline_runs)}" if baseline_runs else ""
    message = (f"{case}: TPOT median {ratio:.3f}x baseline (p={p:.2g}, {n} vs {m} samples{runs}, "
               f"band ±{100 * band:.3g}%): {raw}, {why}")
    return Judgement(case, raw, raw, raw in (REGRESSION, IMPROVEMENT), ratio, p, band, message, n, m,
                     baseline_runs)


def apply_nightly(judgement: Judgement, previous: str | None, previous_run: int | None = None) -> Judgement:
    """The two-consecutive-points rule: flag only when the previous run of the case got the same
    raw verdict; a first point beyond the band is "unconfirmed" and does not fail."""
    if judgement.raw not in (REGRESSION, IMPROVEMENT):
        return replace(judgement, flagged=False)
    where = f"run #{previous_run}" if previous_run is not None else "the previous run"
    if previous == judgement.raw:
        return replace(judgement, verdict=judgement.raw, flagged=True,
                       message=f"{judgement.message} (confirmed: {where} got {previous} too)")
    return replace(judgement, verdict=UNCONFIRMED, flagged=False,
                   message=f"{judgement.message} (nightly: first point, {where} got {previous or 'no verdict'}; "
                           "flagged only if the next run confirms it)")


def previous_verdict(
    runs: Sequence[Run],
    case: str,
    *,
    band: float,
    band_of: Callable[[Sequence[float]], float] | None = None,
    k: int = 5,
    min_runs: int = 3,
    alpha: float = DEFAULT_ALPHA,
    versions: Mapping[str, Any] | None = None,
    where: Path | str = "the history",
) -> tuple[Run | None, str | None]:
    """The previous run of `case` among `runs` (oldest first) and the raw verdict it got, re-judged
    from its samples against the baseline it had (the accepted runs before it; of its own library
    versions when `versions` is given). `band_of` maps that baseline's run medians to its band
    (None: `band`). A move counts only when that run kept the case out of its baseline: one that
    let it in had put the move on the machine and re-based (NOT_CHECKED then, as that run recorded it)."""
    prev = next((r for r in reversed(runs) if case in r.cases), None)
    if prev is None:
        return None, None
    before = [r for r in runs if r.number < prev.number]
    base = baseline_of(before, case, k, min_runs=min_runs,
                       versions=prev.fingerprint if versions is not None else None, where=where)
    if not base.ok:
        return prev, NOT_CHECKED
    prev_band = band_of(base.run_medians) if band_of is not None else band
    raw = judge(prev.cases[case].samples, base.samples, prev_band, alpha=alpha, case=case).raw
    if raw in (REGRESSION, IMPROVEMENT) and prev.case_accepted(case):
        return prev, NOT_CHECKED
    return prev, raw


def check_case(
    runs: Sequence[Run],
    case: str,
    samples: Sequence[float],
    *,
    band: float,
    k: int = 5,
    min_runs: int = 3,
    nightly: bool = False,
    alpha: float = DEFAULT_ALPHA,
    versions: Mapping[str, Any] | None = None,
    band_of: Callable[[Sequence[float]], float] | None = None,
    where: Path | str = "the history",
) -> Judgement:
    """`samples` (this run's per-round TPOT of `case`) against the baseline pooled from `runs` (of
    the runs with the same library `versions`, when given). Under `nightly` the previous run is
    re-judged (`previous_verdict`, with `band_of` giving its band from its own baseline)."""
    base = baseline_of(runs, case, k, min_runs=min_runs, versions=versions, where=where)
    if not base.ok:
        return _not_checked(case, band, base.reason, len(samples), len(base.samples), base.runs)
    judgement = judge(samples, base.samples, band, alpha=alpha, case=case, baseline_runs=base.runs)
    if nightly:
        prev, previous = previous_verdict(runs, case, band=band, band_of=band_of, k=k, min_runs=min_runs,
                                          alpha=alpha, versions=versions, where=where)
        judgement = apply_nightly(judgement, previous, prev.number if prev else None)
    return judgement
