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

How a stored run pools to a case's baseline: history_runs.py (the records, `baseline_of`); the
verdicts, the nightly rule and acceptance: history_verdict.py. This module is the store: it reads
a fingerprint's runs and appends new ones, and answers `check` / `previous_verdict` over them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..results import locked_directory, write_text_atomic
from .history_runs import Baseline, CaseRun, Run, baseline_of, valid_samples
from .history_verdict import Judgement, check_case, previous_verdict
from .schema.history import HistoryError, HistoryRunModel
from .schema.loader import load_stored

_NAME = re.compile(r"^(\d{4,})-(\d{8}T\d{6}(?:\d{6})?Z)\.json$")


def _fail(path: Path | str, what: str) -> HistoryError:
    return HistoryError(f"{path}: {what}: " + HistoryRunModel.FIX_BROKEN.format(path=path))


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

    def previous_verdict(self, case: str, **options: Any) -> tuple[Run | None, str | None]:
        """The previous run of `case` and the raw verdict it got, re-judged from its samples against
        the baseline it had: `history_verdict.previous_verdict` over this history's runs (its
        keyword options: band, band_of, k, min_runs, alpha, versions)."""
        return previous_verdict(self.runs(), case, where=self.directory, **options)

    def check(self, case: str, samples: Sequence[float], **options: Any) -> Judgement:
        """`samples` (this run's per-round TPOT of `case`) against this history's baseline:
        `history_verdict.check_case` over this history's runs (its keyword options: band, k,
        min_runs, nightly, alpha, versions, band_of)."""
        return check_case(self.runs(), case, samples, where=self.directory, **options)

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
                built[name] = CaseRun(valid_samples(list(c.samples), f"case {name!r}"), overrides.get(name, c.accepted))
            else:
                built[name] = CaseRun(valid_samples(list(c), f"case {name!r}"), overrides.get(name))
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
