"""What every judge of a stored value starts from: the baseline lookup's outcome (the record, its
file, or the error reading it), and the file's name as a message shows it (relative to the working
directory)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .baseline_record import BaselineRecord
from .baselines import BaselineError, BaselineStore


def relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@dataclass
class Lookup:
    """A baseline lookup's outcome: the record (or None), its file, or the error reading it."""

    record: BaselineRecord | None
    path: Path
    error: BaselineError | None = None


def lookup(store: BaselineStore, key) -> Lookup:
    path = store.path_for(key)
    try:
        return Lookup(store.lookup(key), path)
    except BaselineError as exc:
        return Lookup(None, path, exc)
