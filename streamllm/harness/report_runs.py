"""The run records a report reads: one validated file (`read_run`), or every readable one in a
folder, oldest first (`load_runs`); and the small helpers every part of the report shares (a
number's text, a result's check by name, its datasets, its work counts as one line per step)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .judge import check_failed
from .records import RunRecordError, load_run


class ReportError(ValueError):
    """No run to report, or a run file that is not a bench run; the message names the file."""


@dataclass
class Run:
    path: Path
    data: dict

    @property
    def created(self) -> str:
        return self.data.get("created", "")

    @property
    def results(self) -> list[dict]:
        return self.data.get("results", [])


def read_run(path: str | Path) -> Run:
    """The run record at `path` through the run record's one loader (records.load_run)."""
    path = Path(path)
    try:
        return Run(path, load_run(path).to_json())
    except RunRecordError as exc:
        raise ReportError(str(exc)) from None


def load_runs(runs_dir: str | Path) -> list[Run]:
    """Every readable run under `runs_dir`, oldest first (unreadable files are skipped: history
    is best effort, the run being reported is read strictly)."""
    runs = []
    for p in sorted(Path(runs_dir).glob("*.json")):
        try:
            runs.append(read_run(p))
        except ReportError:
            continue
    return sorted(runs, key=lambda r: r.created)


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


failed = check_failed  # the judge's rule: a report never re-derives whether a check failed


def _check(r: dict, name: str) -> dict | None:
    return next((c for c in r.get("checks") or [] if c.get("name") == name), None)


def _datasets(run: Run) -> list[str]:
    return sorted({r["dataset"] for r in run.results})


def work_summary(r: dict) -> str | None:
    """The result's work counts as one line per step (`WorkCounts.summary`), or why not."""
    work = r.get("work")
    if not work:
        return None
    from .schema.workrecord import WorkRecordError
    from .workrecord import WorkCounts

    try:
        return WorkCounts.from_json(work, source=f"{r.get('label')} work").summary()
    except WorkRecordError as exc:
        return f"unreadable: {exc}"
