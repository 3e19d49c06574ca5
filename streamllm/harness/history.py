"""Run history for absolute TPOT, asv/conbench style (issue #11 item 3).

Every suite run appends one file per hardware fingerprint; nothing is ever edited, averaged or
re-keyed by hand:

    <root>/<fingerprint_id>/<NNNN>-<YYYYmmddTHHMMSSZ>.json

(numbered like pytest-benchmark's storage, written atomically under a directory lock so two
processes never take the same number). A run holds, per case, the per-round TPOT samples (ms)
and an `accepted` flag fixed at write time (per run, optionally overridden per case); no verdict
is stored. The file format is one pydantic model, `schema.history.HistoryRunModel` (schema
`streamllm.history/2`; /1 files stored each case's verdict, which nothing read), read through the
harness's one loader (`schema.load_stored`). The baseline
of a case is the pooled samples of the last K runs in which that case was accepted.

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
on the machine (its reference arm moved alike), so it is no first point.

Acceptance (`enters_baseline`, what a bench run appends): the run is accepted, except each case
that got a raw regression/improvement, so one moved case does not keep the other cases' samples
out of their baselines, and a step change keeps being compared with the old level until a person
accepts the new one on purpose (`append(..., accepted=True)` with no per-case override);
`accepted=False` rejects a run known to be disturbed.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..results import locked_directory, write_text_atomic
from .schema.history import HISTORY_SCHEMA, HistoryError, HistoryRunModel
from .schema.loader import load_stored, validate_stored
from .stats import mann_whitney
from .verdicts import HISTORY_ALPHA, IMPROVEMENT, NOT_CHECKED, PASS, REGRESSION, UNCONFIRMED

SCHEMA = HISTORY_SCHEMA

# History entry of a case's reference arm: "<dataset>/<case>:reference".
REFERENCE_SUFFIX = ":reference"
# The run-level calibration arm (streamllm.measure.CalibrationArm): torch alone, no library code.
CALIBRATION_CASE = "calibration:torch-only"
DEFAULT_ALPHA = HISTORY_ALPHA

# The library versions a run's absolute TPOT depends on beyond the fingerprint id (which holds
# torch but not transformers: an upgrade moved CPU decode 2x). Runs are compared only within one
# version set; a run that did not store them is a version set of its own.
VERSION_FIELDS = ("torch", "transformers")

_NAME = re.compile(r"^(\d{4,})-(\d{8}T\d{6}(?:\d{6})?Z)\.json$")
_STAMP = "%Y%m%dT%H%M%SZ"


def _fail(path: Path | str, what: str) -> HistoryError:
    return HistoryError(f"{path}: {what}: " + HistoryRunModel.FIX_BROKEN.format(path=path))


def _samples(values: Any, where: str) -> tuple[float, ...]:
    """Per-round TPOT samples as floats; ValueError on anything else (NaN marks untimed steps)."""
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"{where} must be a non-empty list of per-round TPOT ms")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{where} holds {v!r}; samples must be finite positive ms")
        out.append(float(v))
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class CaseRun:
    samples: tuple[float, ...]  # per-round TPOT (ms) of this case in this run
    accepted: bool | None = None  # None: the run's flag decides


@dataclass(frozen=True)
class Run:
    fingerprint_id: str
    number: int
    timestamp: str  # UTC, ISO 8601
    accepted: bool
    cases: dict[str, CaseRun]
    fingerprint: dict = field(default_factory=dict)  # the full hardware fingerprint, for people
    meta: dict = field(default_factory=dict)  # commit, command, ...: provenance, never read back

    def case_accepted(self, case: str) -> bool:
        """Whether `case`'s samples of this run may enter its baseline."""
        c = self.cases.get(case)
        return c is not None and (self.accepted if c.accepted is None else c.accepted)

    @property
    def filename(self) -> str:
        stamp = datetime.fromisoformat(self.timestamp).astimezone(timezone.utc).strftime(_STAMP)
        return f"{self.number:04d}-{stamp}.json"

    def to_json(self) -> dict:
        return {
            "schema": SCHEMA,
            "fingerprint_id": self.fingerprint_id,
            "number": self.number,
            "timestamp": self.timestamp,
            "accepted": self.accepted,
            "cases": {name: {"samples_ms": list(c.samples), "accepted": c.accepted}
                      for name, c in self.cases.items()},
            "fingerprint": self.fingerprint,
            "meta": self.meta,
        }

    @classmethod
    def from_model(cls, m: HistoryRunModel) -> Run:
        return cls(m.fingerprint_id, m.number, m.timestamp, m.accepted,
                   {name: CaseRun(tuple(c.samples_ms), c.accepted) for name, c in m.cases.items()},
                   m.fingerprint, m.meta)

    @classmethod
    def from_json(cls, obj: Any, source: Path | str = "history run") -> Run:
        """A parsed run file's JSON (HistoryRunModel); HistoryError naming `source` and the fix."""
        return cls.from_model(validate_stored(obj, HistoryRunModel, source))


def version_set(fingerprint: Mapping[str, Any] | None) -> tuple | None:
    """(torch, transformers) of a run's fingerprint; None when it did not store them all."""
    values = tuple((fingerprint or {}).get(f) for f in VERSION_FIELDS)
    return None if any(v is None for v in values) else tuple(str(v) for v in values)


@dataclass(frozen=True)
class Baseline:
    case: str
    samples: tuple[float, ...]  # pooled per-round samples of the runs below
    runs: tuple[int, ...]  # run numbers pooled, oldest first
    run_medians: tuple[float, ...]  # one per run: the spread between processes
    reason: str | None = None  # why it cannot be used; None = usable

    @property
    def ok(self) -> bool:
        return self.reason is None



def baseline_of(runs: Sequence[Run], case: str, k: int = 5, *, min_runs: int = 3,
                versions: Mapping[str, Any] | None = None, where: Path | str = "the history") -> Baseline:
    """Pooled samples of the last `k` of `runs` (oldest first) in which `case` was accepted; pure, so
    the baseline a past run had is this over the runs before it."""
    if k < 1 or not 1 <= min_runs <= k:
        raise ValueError(f"need k >= 1 and 1 <= min_runs <= k (got k={k}, min_runs={min_runs})")
    wanted = version_set(versions) if versions is not None else None
    same = [r for r in runs if versions is None or (wanted is not None and version_set(r.fingerprint) == wanted)]
    chosen = [r for r in same if r.case_accepted(case)][-k:]
    samples = tuple(s for r in chosen for s in r.cases[case].samples)
    medians = tuple(statistics.median(r.cases[case].samples) for r in chosen)
    numbers = tuple(r.number for r in chosen)
    reason = None
    if len(chosen) < min_runs:
        total = sum(case in r.cases for r in runs)
        scope = "" if versions is None else (
            f" of {', '.join(f'{f} {v}' for f, v in zip(VERSION_FIELDS, wanted or ('?',) * len(VERSION_FIELDS), strict=True))}"
            f" ({sum(case in r.cases for r in same)} such run(s))")
        reason = (f"{len(chosen)} accepted run(s) with {case!r}{scope} under {where} "
                  f"({total} run(s) in all), need {min_runs}: it is checked after {min_runs - len(chosen)} "
                  "more accepted run(s)")
    return Baseline(case, samples, numbers, medians, reason)


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


# --------------------------------------------------------------------------------------------
# Verdicts


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
    cand = _samples(list(candidate), f"{case}: candidate")
    base = _samples(list(baseline), f"{case}: baseline")
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


# --------------------------------------------------------------------------------------------
# The store


class RunHistory:
    """The runs of one hardware fingerprint under `root/<fingerprint_id>/`."""

    def __init__(self, root: str | os.PathLike, fingerprint_id: str):
        if not fingerprint_id or "/" in fingerprint_id or fingerprint_id.startswith("."):
            raise ValueError(f"bad fingerprint id {fingerprint_id!r}")
        self.root = Path(root)
        self.fingerprint_id = fingerprint_id
        self.directory = self.root / fingerprint_id
        self._runs: list[Run] | None = None

    # -- reading ---------------------------------------------------------------------------
    def _read(self, path: Path) -> Run:
        run = Run.from_model(load_stored(path, HistoryRunModel))
        name = _NAME.match(path.name)
        if name is None or int(name.group(1)) != run.number:
            raise _fail(path, f"file name does not match its run number {run.number}")
        if run.fingerprint_id != self.fingerprint_id:
            raise _fail(path, f"run of fingerprint {run.fingerprint_id!r} stored under {self.fingerprint_id!r}")
        return run

    def runs(self) -> list[Run]:
        """All runs, oldest first (by number, then time). Files not named NNNN-<stamp>.json are
        ignored (a README may sit there); a malformed run file is a HistoryError."""
        if self._runs is None:
            paths = sorted(p for p in self.directory.glob("*.json") if _NAME.match(p.name)) \
                if self.directory.is_dir() else []
            self._runs = sorted((self._read(p) for p in paths), key=lambda r: (r.number, r.timestamp))
        return list(self._runs)

    def baseline(self, case: str, k: int = 5, *, min_runs: int = 3,
                 versions: Mapping[str, Any] | None = None) -> Baseline:
        """Pooled samples of the last `k` runs in which `case` was accepted; `reason` says why not
        when fewer than `min_runs` such runs exist. `versions` (a fingerprint, or any mapping with
        VERSION_FIELDS): only runs of the same library versions count (None: every run)."""
        return baseline_of(self.runs(), case, k, min_runs=min_runs, versions=versions, where=self.directory)

    def previous(self, case: str) -> Run | None:
        """The latest run that measured `case`, accepted or not (the nightly rule's previous point)."""
        return next((r for r in reversed(self.runs()) if case in r.cases), None)

    def previous_verdict(
        self,
        case: str,
        *,
        band: float,
        band_of: Callable[[Sequence[float]], float] | None = None,
        k: int = 5,
        min_runs: int = 3,
        alpha: float = DEFAULT_ALPHA,
        versions: Mapping[str, Any] | None = None,
    ) -> tuple[Run | None, str | None]:
        """The previous run of `case` and the raw verdict it got, re-judged from its samples against
        the baseline it had (the accepted runs before it; of its own library versions when
        `versions` is given). `band_of` maps that baseline's run medians to its band (None: `band`).
        A move counts only when that run kept the case out of its baseline: one that let it in had
        put the move on the machine and re-based (NOT_CHECKED then, as that run recorded it)."""
        prev = self.previous(case)
        if prev is None:
            return None, None
        before = [r for r in self.runs() if r.number < prev.number]
        base = baseline_of(before, case, k, min_runs=min_runs,
                           versions=prev.fingerprint if versions is not None else None, where=self.directory)
        if not base.ok:
            return prev, NOT_CHECKED
        prev_band = band_of(base.run_medians) if band_of is not None else band
        raw = judge(prev.cases[case].samples, base.samples, prev_band, alpha=alpha, case=case).raw
        if raw in (REGRESSION, IMPROVEMENT) and prev.case_accepted(case):
            return prev, NOT_CHECKED
        return prev, raw

    def check(
        self,
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
    ) -> Judgement:
        """`samples` (this run's per-round TPOT of `case`) against the history's baseline (of the
        runs with the same library `versions`, when given). Under `nightly` the previous run is
        re-judged (`previous_verdict`, with `band_of` giving its band from its own baseline)."""
        base = self.baseline(case, k, min_runs=min_runs, versions=versions)
        if not base.ok:
            return _not_checked(case, band, base.reason, len(samples), len(base.samples), base.runs)
        judgement = judge(samples, base.samples, band, alpha=alpha, case=case, baseline_runs=base.runs)
        if nightly:
            prev, previous = self.previous_verdict(case, band=band, band_of=band_of, k=k, min_runs=min_runs,
                                                   alpha=alpha, versions=versions)
            judgement = apply_nightly(judgement, previous, prev.number if prev else None)
        return judgement

    # -- writing ---------------------------------------------------------------------------
    def append(
        self,
        cases: Mapping[str, Sequence[float] | CaseRun],
        *,
        accepted: bool,
        case_accepted: Mapping[str, bool] | None = None,
        fingerprint: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
        now: datetime | None = None,
    ) -> Run:
        """Write one new run (the next number) and return it: samples and acceptance only, no
        verdict (the nightly rule re-judges a run from its samples). `case_accepted`: per-case
        overrides of `accepted` (a case that moved beyond its band stays out of its baseline)."""
        if not cases:
            raise ValueError("a run needs at least one case")
        overrides = dict(case_accepted or {})
        built = {}
        for name, c in cases.items():
            if isinstance(c, CaseRun):
                built[name] = CaseRun(_samples(list(c.samples), f"case {name!r}"), overrides.get(name, c.accepted))
            else:
                built[name] = CaseRun(_samples(list(c), f"case {name!r}"), overrides.get(name))
        stamp = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
        self.directory.mkdir(parents=True, exist_ok=True)
        with locked_directory(self.directory):
            self._runs = None  # another process may have appended since we read
            number = max((r.number for r in self.runs()), default=0) + 1
            run = Run(self.fingerprint_id, number, stamp.isoformat(), accepted, built,
                      json.loads(json.dumps(dict(fingerprint or {}), default=str)),
                      json.loads(json.dumps(dict(meta or {}), default=str)))
            path = self.directory / run.filename
            if path.exists():  # cannot happen under the lock; never overwrite a run
                raise HistoryError(f"{path} exists already: runs are never rewritten")
            text = HistoryRunModel.model_validate(run.to_json(), strict=False).to_json()
            write_text_atomic(path, json.dumps(text, indent=1) + "\n")
            self._runs = None
        return run
