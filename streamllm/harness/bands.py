"""Bands with a stated false-alarm rate for per-process TPOT values (docs/bands.md).

The same-run TPOT ratio of a row and a graph row's device time are stored once per recorded
process. A new process is judged against a *prediction interval* for one more process:

- the row's variance of ln(value) is moderated across the rows stored under the same key (CPU
  model / GPU model): s̃² = (d₀ s₀² + (n−1) s²) / (d₀ + n − 1), with s₀², d₀ fitted to the rows'
  sample variances by Smyth's (2004) method of moments (`fit_prior`);
- the interval is ln(stored mean) ± t_{ν, 1−α/2} · s̃ · √(1 + 1/n), ν = d₀ + n − 1, never narrower
  than PREDICTION_FLOOR;
- α is Šidák's per-row level for a nightly run of m rows: 1 − (1 − FALSE_ALARM_PER_RUN)^(1/m);
- FAIL needs the estimate outside the interval AND the process's own CI excluding the stored
  mean (`judge_ratio.band_verdict`: the one CI of a run against the band lives with the ratio's
  statistic); a band through which a MUST_CATCH-fold slowdown passes is not a check.

Everything here is a pure function of stored values: the prior is band_prior.py's, and
band_rows.py reads the rows (`key_rows`, `stored_runs`, the key groups) from the store.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize, special

from .band_prior import Prior, prior_from_rows
from .band_rows import key_rows
from .verdicts import (
    FALSE_ALARM_PER_RUN,
    GUARD_SLOWDOWN,
    MDE_POWER,
    MIN_PRIOR_ROWS,
    MUST_CATCH,
    PREDICTION_FLOOR,
)


def sidak_alpha(rows: int, family: float = FALSE_ALARM_PER_RUN) -> float:
    """Per-row two-sided level so that `rows` independent rows false-alarm at most `family`."""
    return 1.0 - (1.0 - family) ** (1.0 / max(1, int(rows)))


# -- the band --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PredictionBand:
    """A prediction interval for one more process's value, in log space around the stored mean."""

    centre: float  # geometric mean of the stored values
    log_half: float  # half-width in ln: max(t · s̃ · √(1+1/n), PREDICTION_FLOOR)
    s_tilde: float  # moderated SD of ln(value)
    nu: float  # its degrees of freedom
    n: int  # stored processes of this row
    alpha: float  # per-row two-sided level
    rows: int  # rows of the run it is Šidák-corrected for
    t_crit: float
    floored: bool
    prior: Prior | None

    @property
    def low(self) -> float:
        return self.centre * math.exp(-self.log_half)

    @property
    def high(self) -> float:
        return self.centre * math.exp(self.log_half)

    @property
    def width(self) -> float:
        """Relative half-width (the upper edge over the centre, minus one)."""
        return math.expm1(self.log_half)

    @property
    def can_fail(self) -> bool:
        """Whether a MUST_CATCH-fold slowdown lands outside it."""
        return self.log_half < math.log(MUST_CATCH)

    @property
    def source(self) -> str:
        pooled = self.prior.source if self.prior else "unpooled"
        floor = f", floored at ±{PREDICTION_FLOOR:.0%}" if self.floored else ""
        return (f"±{self.width:.1%}: {1 - self.alpha:.4%} prediction interval of {self.n} processes "
                f"(s̃ {self.s_tilde:.2%}, ν {self.nu:.3g}, {pooled}; Šidák over {self.rows} rows for "
                f"≤{FALSE_ALARM_PER_RUN:.0%} false alarms a run{floor})")

    def as_dict(self) -> dict:
        out = asdict(self)
        out.update(width=self.width, low=self.low, high=self.high, can_fail=self.can_fail)
        return out


def prediction_band(values: Sequence[float], prior: Prior | None, rows: int,
                    alpha: float | None = None) -> PredictionBand | None:
    """The band of a row from its stored per-process values, its key's prior and the run's row
    count (`alpha`: a per-row level instead of Šidák's, for calibration). None where nothing tells
    the spread (fewer than 3 values and no prior): the caller's fallback."""
    logs = np.log([float(v) for v in values if v and v > 0 and math.isfinite(v)])
    n = int(logs.size)
    if n == 0:
        return None
    s2 = float(logs.var(ddof=1)) if n >= 2 else 0.0
    if prior is not None:
        nu = prior.d0 + n - 1
        s_tilde_sq = (prior.d0 * prior.s0_sq + (n - 1) * s2) / nu
    elif n >= 3:  # unpooled: a plain Student prediction interval
        nu, s_tilde_sq = float(n - 1), s2
    else:
        return None
    alpha = sidak_alpha(rows) if alpha is None else float(alpha)
    t_crit = float(special.stdtrit(nu, 1 - alpha / 2))  # = scipy.stats.t.ppf, without its overhead
    s_tilde = math.sqrt(s_tilde_sq)
    half = t_crit * s_tilde * math.sqrt(1 + 1 / n)
    return PredictionBand(float(math.exp(logs.mean())), max(half, PREDICTION_FLOOR), s_tilde, nu, n, alpha,
                          max(1, int(rows)), t_crit, half < PREDICTION_FLOOR, prior)


# -- detection power -------------------------------------------------------------------------------
def mde90(band: PredictionBand, ci_half: float = 0.0, power: float = MDE_POWER) -> float:
    """The smallest slowdown (relative: 0.05 = 5 %) that fails with probability `power`.

    The deviation of a new process from the stored mean is N(δ, σ²(1+1/n)); over s̃√(1+1/n) it is
    noncentral t with ν degrees of freedom and noncentrality δ / (σ√(1+1/n)) (σ plugged in as s̃).
    It fails beyond the band's edge, plus the process's CI half-width `ci_half` (ln) where that
    CI is wider than the band (then only a CI wholly beyond the edge fails): inconclusive is a
    miss. Where the floor sets the edge its critical value is the floor over s̃√(1+1/n)."""
    scale = band.s_tilde * math.sqrt(1 + 1 / band.n)
    edge = band.log_half + (ci_half if ci_half >= band.log_half else 0.0)
    if scale <= 0:
        return math.expm1(edge)
    c = band.t_crit if not band.floored and edge == band.log_half else edge / scale

    def miss(ncp: float) -> float:
        return 1.0 - float(special.nctdtr(band.nu, ncp, c)) - power  # = scipy.stats.nct.sf(c, nu, ncp)

    hi = c + 10.0
    while miss(hi) < 0:
        hi *= 2
    ncp = optimize.brentq(miss, 0.0, hi, xtol=1e-10)
    return math.expm1(ncp * scale)


def row_mde90(values: Sequence[float], prior: Prior | None, rows: int, ci_half: float = 0.0) -> float | None:
    """A row's MDE90 from its stored per-process values (what the report and table show); None
    where the row has no band with a stated rate (the fallback) or its band cannot fail."""
    band = prediction_band(values, prior, rows)
    if band is None or not band.can_fail:
        return None
    return mde90(band, ci_half)


def guards(mde: float) -> bool:
    """Whether a row's MDE90 is within GUARD_SLOWDOWN (the table marks it)."""
    return mde <= GUARD_SLOWDOWN


# -- calibration -----------------------------------------------------------------------------------
def leave_one_out(rows: Sequence[tuple[str, Sequence[float]]], levels: Sequence[float]) -> dict[float, tuple[int, int]]:
    """Leave-one-out coverage of the prediction interval over a key's stored processes: each is
    checked against the band rebuilt without it (its row's values and the key's pooled prior both
    lose it), at each two-sided `level`. level -> (held-out processes inside, processes). A process
    whose row has no band without it (the judge's stated fallback) is not counted."""
    values = [[float(v) for v in vs] for _, vs in rows]
    inside = dict.fromkeys(levels, 0)
    total = 0
    for i, row in enumerate(values):
        for j, held in enumerate(row):
            rest = row[:j] + row[j + 1:]
            prior = prior_from_rows([v for k, v in enumerate(values) if k != i] + [rest])
            if prediction_band(rest, prior, len(values)) is None:
                continue  # no band without it (the judge's fallback): nothing to calibrate
            total += 1
            for level in levels:
                band = prediction_band(rest, prior, len(values), alpha=1 - level)
                if band is not None and band.low <= held <= band.high:
                    inside[level] += 1
    return {level: (inside[level], total) for level in levels}


@dataclass(frozen=True)
class Coverage:
    """Leave-one-out coverage of one key's bands: what the report and docs/bands.md show."""

    key: str
    rows: int
    processes: int
    levels: tuple[tuple[float, int], ...]  # (nominal two-sided level, held-out processes inside)
    judge_level: float  # the Šidák level the judge uses for this many rows

    def lines(self) -> list[str]:
        out = []
        for level, inside in self.levels:
            name = f"{level:.2%} (the judge's, Šidák)" if level == self.judge_level else f"{level:.0%}"
            out.append(f"{name}: {inside / self.processes:.1%} ({inside} of {self.processes})")
        return out


def key_coverage(records: Sequence[object], key: str, section: str = "tpot_ratio") -> Coverage | None:
    """Leave-one-out coverage at 90 %, 99 % and the judge's level of every stored process under
    `key`; None with fewer than MIN_PRIOR_ROWS rows of two or more processes."""
    rows = [(str(i), v) for i, v in enumerate(key_rows(records, section, key))]
    if sum(len(v) >= 2 for _, v in rows) < MIN_PRIOR_ROWS:
        return None
    judge_level = 1 - sidak_alpha(len(rows))
    levels = (0.90, 0.99, judge_level)
    got = leave_one_out(rows, levels)
    total = next(iter(got.values()))[1]
    return Coverage(key, len(rows), total, tuple((level, got[level][0]) for level in levels), judge_level)
