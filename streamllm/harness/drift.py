"""`streamllm drift`: the default cases' decode-step work under each of several transformers releases.

One venv per release under ~/.cache/streamllm/drift (reused on later runs). Each venv holds only
transformers and whatever of its dependencies the release pins differently; torch and the rest
come from the environment running this command, through a .pth line pointing at its
site-packages (`venv --system-site-packages` would expose the *system* interpreter's packages,
not this venv's torch). This checkout's library is counted in every venv by countrunner.py (run in
place from this checkout), the same runner `streamllm count` and `streamllm bisect` use, so only
the release differs. The runner writes raw histograms; the comparison below is this checkout's.

The table marks, per case, each release whose step dispatches other ops, moves other bytes or
syncs differently from the release before it, with the histogram difference below it, and names
the first release under which a case fails outright, with its error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import InvalidVersion, Version

from .. import compat
from .countcases import CountCase, WorkRecord, counts_of, run_runner
from .workrecord import WorkCounts, format_bytes, frac_text

CHECKOUT = Path(__file__).resolve().parents[2]  # the directory holding this streamllm package
DEFAULT_VENVS = Path(os.environ.get("STREAMLLM_CACHE", Path.home() / ".cache" / "streamllm")).expanduser() / "drift"


class DriftError(ValueError):
    """A release list or environment drift cannot use; the message says what to pass instead."""


@dataclass(frozen=True)
class DriftPlan:
    releases: list[str]
    cases: list[CountCase]
    venvs: Path = DEFAULT_VENVS
    base_python: str = sys.executable
    allow_untested: bool = False
    checkout: Path = CHECKOUT  # whose streamllm is counted: this one, or e.g. a worktree of an older commit


@dataclass
class ReleaseRun:
    release: str
    record: WorkRecord
    venv_s: float
    count_s: float
    built: bool  # False: an existing venv was reused

    def entry(self, label: str):
        return self.record.entry(label)


@dataclass
class DriftResult:
    runs: list[ReleaseRun]
    labels: list[str]
    changes: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (release, case) -> diff vs previous
    breaks: dict[str, tuple[str, str]] = field(default_factory=dict)  # case -> (first failing release, error)
    seconds: float = 0.0


def parse_releases(text: str, allow_untested: bool = False) -> list[str]:
    """'5.17.0,5.20.0,5.25.0' -> sorted releases; below compat.LOWEST_TESTED refused unless allowed."""
    releases = [r.strip() for r in text.split(",") if r.strip()]
    if len(releases) < 2:
        raise DriftError("--transformers needs at least two releases to compare, e.g. "
                         f"--transformers {compat.LOWEST_TESTED},5.25.0")
    try:
        versions = sorted({Version(r): r for r in releases}.items())
    except InvalidVersion as exc:
        raise DriftError(f"--transformers: {exc}; pass release numbers such as {compat.LOWEST_TESTED}") from None
    lowest = Version(compat.LOWEST_TESTED)
    below = [r for v, r in versions if v < lowest]
    if below and not allow_untested:
        raise DriftError(f"transformers {', '.join(below)} is below the lowest tested release {compat.LOWEST_TESTED} "
                         f"(streamllm supports {compat.SUPPORTED_TRANSFORMERS}); drop it or pass --allow-untested")
    return [r for _, r in versions]


def _site_packages(python: str) -> list[str]:
    code = "import sysconfig, json; p = sysconfig.get_paths(); print(json.dumps([p['purelib'], p['platlib']]))"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout
    return list(dict.fromkeys(json.loads(out)))


def _probe(python: Path) -> dict[str, str] | None:
    code = "import json, torch, transformers; print(json.dumps([torch.__version__, transformers.__version__]))"
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=_env(None))
    if proc.returncode != 0:
        return None
    torch_v, tf_v = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"torch": torch_v, "transformers": tf_v}


def _env(pythonpath: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    env["OMP_NUM_THREADS"] = "1"
    return env


def ensure_venv(release: str, venvs: Path, base_python: str = sys.executable,
                say: Callable[[str], None] = print) -> tuple[Path, bool]:
    """(python of the venv holding transformers==release over the base env's torch, built now?)."""
    root = venvs / f"transformers-{release}"
    python = root / "bin" / "python"
    if python.exists():
        found = _probe(python)
        if found and found["transformers"] == release:
            return python, False
    say(f"building {root} (transformers=={release} over {base_python}'s torch)")
    subprocess.run([base_python, "-m", "venv", "--clear", "--without-pip", str(root)], check=True,
                   capture_output=True)
    own = _site_packages(str(python))[0]
    base = [p for p in _site_packages(base_python) if p != own]
    # Appended after the venv's own site-packages: the release installed here shadows the base's.
    Path(own, "_streamllm_drift_base.pth").write_text("\n".join(base) + "\n")
    proc = subprocess.run([base_python, "-m", "pip", "--python", str(python), "install", "--quiet",
                           "--disable-pip-version-check", f"transformers=={release}"], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise DriftError(f"pip could not install transformers=={release} ({last[0]}); pick a release that "
                         "`pip index versions transformers` lists")
    found = _probe(python)
    if not found or found["transformers"] != release:
        raise DriftError(f"{root} does not import transformers {release} after the install (found {found}); "
                         f"delete {root} and run again")
    return python, True


def check_checkout(path: Path) -> Path:
    if not (path / "streamllm" / "__init__.py").is_file():
        raise DriftError(f"--checkout {path} holds no streamllm package; pass a checkout's root, e.g. one made by "
                         "`git worktree add /tmp/old REV`")
    return path.resolve()


def count_release(python: Path, cases: list[CountCase], scratch: Path, release: str,
                  checkout: Path = CHECKOUT) -> WorkRecord:
    """countrunner under `python` (`checkout`'s library on PYTHONPATH); its record."""
    return run_runner(cases, checkout, scratch / f"transformers-{release}.json", python=str(python))


def run_drift(plan: DriftPlan, say: Callable[[str], None] = print) -> DriftResult:
    started = time.perf_counter()
    plan.venvs.mkdir(parents=True, exist_ok=True)
    runs: list[ReleaseRun] = []
    with tempfile.TemporaryDirectory(prefix="streamllm-drift-") as tmp:
        for release in plan.releases:
            t0 = time.perf_counter()
            python, built = ensure_venv(release, plan.venvs, plan.base_python, say)
            t1 = time.perf_counter()
            record = count_release(python, plan.cases, Path(tmp), release, plan.checkout)
            run = ReleaseRun(release, record, t1 - t0, time.perf_counter() - t1, built)
            runs.append(run)
            ok = sum(1 for e in record.results if e.ok)
            say(f"transformers {release}: venv {'built' if built else 'reused'} in {run.venv_s:.0f} s, "
                f"{ok}/{len(plan.cases)} cases counted in {run.count_s:.0f} s"
                + (f" ({record.error})" if record.error else ""))
    result = compare_releases(runs, [c.label for c in plan.cases])
    result.seconds = time.perf_counter() - started
    return result


def compare_releases(runs: list[ReleaseRun], labels: list[str]) -> DriftResult:
    """Each release against the one before it, per case; the first failing release per case."""
    result = DriftResult(runs, labels)
    for label in labels:
        previous = None
        for run in runs:
            entry = run.entry(label)
            if entry is None or entry.counts is None:
                error = (entry.error if entry is not None else None) or run.record.error or "not counted"
                result.breaks.setdefault(label, (run.release, error))
                continue
            work = counts_of(entry)
            if previous is not None:
                lines = work.diff(previous)
                if lines:
                    result.changes[(run.release, label)] = lines
            previous = work
    return result


def _cell(run: ReleaseRun, label: str, result: DriftResult) -> str:
    entry = run.entry(label)
    if entry is None or entry.counts is None:
        return "**fails**"
    work = counts_of(entry)
    text = (f"{_per_step(work, work.total_ops)} ops, "
            f"{format_bytes(float(work.per_step(work.bytes_read + work.bytes_written)))}, "
            f"{_per_step(work, work.total_syncs)} syncs")
    return f"**changed** {text}" if (run.release, label) in result.changes else text


def _per_step(work: WorkCounts, total: int) -> str:
    return frac_text(work.per_step(total))


def markdown(result: DriftResult, command: str | None = None) -> str:
    """The releases x cases table, the changes with their histogram difference, and the breaks."""
    lines = ["| transformers | " + " | ".join(result.labels) + " |",
             "|---|" + "---|" * len(result.labels)]
    for run in result.runs:
        lines.append(f"| {run.release} | " + " | ".join(_cell(run, label, result) for label in result.labels) + " |")
    lines += ["", "Per decode step: aten ops dispatched, bytes read + written, host-device syncs "
              "(**changed**: differs from the release in the row above)."]
    lines.append("")
    if result.changes:
        lines.append("Changes from the release above:")
        lines.append("")
        for run in result.runs:
            for label in result.labels:
                diff = result.changes.get((run.release, label))
                if diff:
                    lines.append(f"- transformers {run.release}, {label}: " + "; ".join(diff))
    else:
        lines.append("No release changed any case's ops, bytes or syncs.")
    lines.append("")
    if result.breaks:
        first = min(result.breaks.items(), key=lambda kv: Version(kv[1][0]))
        lines.append(f"First release that breaks a case: transformers {first[1][0]} ({first[0]}: {first[1][1]}).")
        for label, (release, error) in result.breaks.items():
            if label != first[0]:
                lines.append(f"- {label} first fails under {release}: {error}")
    else:
        lines.append("No release broke a case: every case counted under every release.")
    lines.append("")
    timing = ", ".join(f"{r.release}: venv {'built' if r.built else 'reused'} {r.venv_s:.0f} s + counts {r.count_s:.0f} s"
                       for r in result.runs)
    lines.append(f"Wall time {result.seconds:.0f} s ({timing}); torch {result.runs[0].record.torch}.")
    if command:
        lines += ["", f"`{command}`"]
    return "\n".join(lines) + "\n"
