"""The pooled variance of a band's key (docs/bands.md): a row's variance of ln(value) is moderated
toward s₀² with d₀ degrees of freedom, both fitted to the sample variances of every row stored under
the same key (CPU model / GPU model) by Smyth's (2004) method of moments (`fit_prior`). The band
built from it: bands.py."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special

from .verdicts import MIN_PRIOR_ROWS, PRIOR_DF_MAX


@dataclass(frozen=True)
class Prior:
    """s₀² and d₀ of one key's rows: the variance a row is shrunk toward, and how many degrees of
    freedom that is worth."""

    s0_sq: float
    d0: float
    rows: int  # rows with a spread it was fitted to

    @property
    def source(self) -> str:
        return f"pooled over {self.rows} rows: s0 {math.sqrt(self.s0_sq):.2%}, d0 {self.d0:.3g}"


def _trigamma_inverse(y: float) -> float:
    """x with trigamma(x) = y (y > 0); trigamma falls monotonically from ∞ to 0."""
    f = lambda lx: float(special.polygamma(1, math.exp(lx))) - y  # noqa: E731 - a one-line root target
    return math.exp(optimize.brentq(f, -30.0, 30.0, xtol=1e-12))


def fit_prior(variances: Sequence[tuple[float, int]]) -> Prior | None:
    """Smyth (2004) §6 method of moments on log sample variances: (s², df) per row. None below
    MIN_PRIOR_ROWS usable rows (df ≥ 1, s² > 0: a zero variance is rounding, not information)."""
    used = [(float(s2), int(df)) for s2, df in variances if df >= 1 and s2 > 0 and math.isfinite(s2)]
    if len(used) < MIN_PRIOR_ROWS:
        return None
    s2 = np.array([u[0] for u in used])
    df = np.array([u[1] for u in used], dtype=float)
    # e_g = ln s²_g − ψ(d_g/2) + ln(d_g/2) has mean ln s₀² + ψ(d₀/2) − ln(d₀/2)... and variance
    # ψ'(d_g/2) + ψ'(d₀/2): the excess over the sampling part estimates ψ'(d₀/2).
    e = np.log(s2) - special.digamma(df / 2) + np.log(df / 2)
    e_mean = float(e.mean())
    excess = float(e.var(ddof=1) - np.mean(special.polygamma(1, df / 2)))
    # excess <= 0: the rows' variances differ no more than sampling does: one shared variance.
    d0 = PRIOR_DF_MAX if excess <= 0 else min(PRIOR_DF_MAX, 2.0 * _trigamma_inverse(excess))
    s0_sq = math.exp(e_mean + float(special.digamma(d0 / 2)) - math.log(d0 / 2))
    return Prior(s0_sq, d0, len(used))


def prior_from_rows(rows: Sequence[Sequence[float]]) -> Prior | None:
    """The prior of a key from each row's stored per-process values (positive, not logged)."""
    stats = []
    for values in rows:
        logs = np.log([float(v) for v in values if v and v > 0 and math.isfinite(v)])
        if logs.size >= 2:
            stats.append((float(logs.var(ddof=1)), int(logs.size - 1)))
    return fit_prior(stats)
