"""The cases `streamllm count`, `bisect` and `drift` count, the runner launched on them, and the
per-case comparison of two work records.

This checkout's side of counting another tree: a `CountCase` names a case (the bench catalog's ids:
strict, lazy-c32, static, ...) and sizes it; `job()` is the flat form `countrunner.py` runs inside
the target; `run_runner` starts the runner in a target tree and reads back its record (raw
histograms, `schema/workrecord.py`); `compare_records` / `headline` / `diff_text` are the
comparison, made here and never by the runner. `count_in_process` is `streamllm count`: the same
runner imported into this process, counting this checkout's library.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from . import countrunner
from .schema.count_jobs import CountJobs
from .schema.workrecord import WorkRecord, load_work_record, parse_work_record
from .workrecord import WorkCounts, format_bytes, frac_text

RUNNER = Path(countrunner.__file__).resolve()

# Case ids shared with the bench catalog (bench/catalog.py) and their strategy parameters.
NAMED_CASES: dict[str, dict[str, Any]] = {
    "dense": {"strategy": "dense"},
    "strict": {"strategy": "strict"},
    "window": {"strategy": "window", "sink": 0},
    "no-shift": {"strategy": "no-shift"},
    "static": {"strategy": "strict", "cache": "static"},
    "ring": {"strategy": "strict", "cache": "ring"},
}
DEFAULT_CASES = ("dense", "strict", "lazy-c32", "static", "ring")
FILLS = ("fast", "steps")


class CaseError(ValueError):
    """A case that cannot be named or sized; the message says what to pass instead."""


@dataclass(frozen=True)
class CountCase:
    """One case to count: the strategy and where it runs. `steps`/`warmup` 0: derived from the cycle."""

    strategy: str = "strict"
    sink: int = 4
    window: int = 124
    compress_every: int = 1
    cache: str = "dynamic"
    model: str = "embedded"
    dataset: str = "book"
    tokens: int = 512
    dtype: str = "float32"
    device: str = "cpu"
    steps: int = 0
    warmup: int = 0
    name: str = ""
    fill: str = "fast"  # "fast": chunked forward / random K/V like decode_slice.prepare_slice; "steps": real decode steps

    @property
    def cycle(self) -> int:
        return max(1, self.compress_every) if self.strategy != "dense" else 1

    @property
    def counted_steps(self) -> int:
        """A whole number of eviction cycles, at least 8 steps (so a per-step op shows as 8 in the totals)."""
        return self.cycle * math.ceil((self.steps or 8) / self.cycle)

    @property
    def warmup_steps(self) -> int:
        return self.cycle * math.ceil((self.warmup or 4) / self.cycle)

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.strategy == "dense":
            return "dense"
        parts = [self.strategy, f"s{self.sink}", f"w{self.window}"]
        if self.compress_every != 1:
            parts.append(f"c{self.compress_every}")
        if self.cache != "dynamic":
            parts.append(self.cache)
        return "-".join(parts)

    def strategy_params(self) -> dict[str, Any]:
        """make_strategy's keywords; the cache kind only when not dynamic (commits before the
        fixed caches have no such field and still count the dynamic cases)."""
        if self.strategy == "dense":
            params: dict[str, Any] = {}
        elif self.strategy == "window":
            params = {"window": self.window, "sink": 0}
        else:
            params = {"sink": self.sink, "window": self.window}
            if self.compress_every != 1:
                params["compress_every"] = self.compress_every
        if self.cache != "dynamic":
            params["cache"] = self.cache
        return params

    def fill_length(self) -> int:
        """Tokens in the cache before the warm-up: the cache at capacity (dense: half the text)."""
        if self.strategy == "dense":
            return self.tokens // 2
        return self.sink + self.window + self.cycle - 1

    def check(self) -> CountCase:
        for flag, value, least in (("--tokens", self.tokens, 2), ("--window", self.window, 1),
                                   ("--sink", self.sink, 0), ("--compress-every", self.compress_every, 1),
                                   ("--steps", self.steps, 0), ("--warmup", self.warmup, 0)):
            if value < least:
                raise CaseError(f"{flag} must be >= {least} (got {value})")
        if self.fill not in FILLS:
            raise CaseError(f"fill {self.fill!r} unknown; use one of {', '.join(FILLS)}")
        need = self.fill_length() + self.warmup_steps + self.counted_steps + 1
        if need > self.tokens:
            raise CaseError(f"{self.label}: filling {self.fill_length()}, warming up {self.warmup_steps} and "
                            f"counting {self.counted_steps} steps needs {need} tokens: pass --tokens {need} or more")
        return self

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def job(self) -> dict[str, Any]:
        """What the runner needs, every derived number computed here (the runner decides nothing)."""
        return {"label": self.label, "case": self.to_json(), "strategy": self.strategy,
                "params": self.strategy_params(), "fill_length": self.fill_length(), "cycle": self.cycle,
                "warmup": self.warmup_steps, "steps": self.counted_steps}


def named_case(name: str, base: CountCase) -> CountCase:
    """`strict`, `lazy-c32`, `static`, ... (the bench catalog's ids) on `base`'s model, text and sizes."""
    key = name.strip().lower()
    if key in NAMED_CASES:
        return replace(base, **{"compress_every": 1, "cache": "dynamic", **NAMED_CASES[key]}, name=key)
    if key.startswith("lazy-c") and key[6:].isdigit() and int(key[6:]) >= 1:
        return replace(base, strategy="lazy", compress_every=int(key[6:]), cache="dynamic", name=key)
    raise CaseError(f"unknown case {name!r}; use one of {', '.join(NAMED_CASES)} or lazy-c<R> (e.g. lazy-c32)")


def parse_cases(text: str, base: CountCase) -> list[CountCase]:
    cases = [named_case(part, base) for part in text.split(",") if part.strip()]
    if not cases:
        raise CaseError(f"no case given: pass --cases with e.g. {','.join(DEFAULT_CASES)}")
    return cases


def add_case_options(p: argparse.ArgumentParser, *, several: bool = False) -> None:
    """The options that name a case (shared by count, bisect and drift)."""
    p.add_argument("--strategy", default="strict", help="dense | strict | lazy | window | no-shift (default strict)")
    p.add_argument("--sink", type=int, default=4, help="attention sinks S (default 4)")
    p.add_argument("--window", type=int, default=124, help="recent window W (default 124, the bench default)")
    p.add_argument("--compress-every", type=int, default=1, help="lazy eviction period R (default 1)")
    p.add_argument("--cache", choices=("dynamic", "static", "ring"), default="dynamic", help="cache kind (default dynamic)")
    default = ",".join(DEFAULT_CASES) if several else None
    p.add_argument("--cases", default=default,
                   help="comma list of bench case ids instead of --strategy/--cache: dense, strict, window, no-shift, "
                        f"static, ring, lazy-c<R>{f' (default {default})' if default else ''}")
    p.add_argument("--model", default="embedded", help="embedded | HUB_ID | DIR | dummy:CONFIG (default embedded)")
    p.add_argument("--dataset", default="book", help="book | wiki | PATH (default book)")
    p.add_argument("--tokens", type=int, default=512, help="tokens of text (fill + warm-up + counted steps)")
    p.add_argument("--dtype", default="float32", help="float32 | float16 | bfloat16")
    p.add_argument("--device", default="cpu", help="cpu | cuda (on CUDA kernels are counted too)")
    p.add_argument("--steps", type=int, default=0, help="counted steps, rounded up to whole cycles (default 8)")


def cases_from_args(args: argparse.Namespace) -> list[CountCase]:
    base = CountCase(strategy=args.strategy.strip().lower(), sink=args.sink, window=args.window,
                     compress_every=args.compress_every, cache=args.cache, model=args.model, dataset=args.dataset,
                     tokens=args.tokens, dtype=args.dtype, device=args.device, steps=args.steps)
    if base.strategy == "window":
        base = replace(base, sink=0)
    cases = parse_cases(args.cases, base) if args.cases else [base]
    return [c.check() for c in cases]


# -- running the runner ----------------------------------------------------------------------------
def runner_env(tree: Path) -> dict[str, str]:
    """The target first on the path (an editable install of another checkout stays behind it), one
    thread, and no bytecode written into the target tree."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def run_runner(cases: list[CountCase], tree: Path, out: Path, *, python: str = sys.executable, mode: str = "count",
               time_steps: int = 32) -> WorkRecord:
    """countrunner.py (run in place from this checkout) under `python` against the streamllm in `tree`."""
    jobs = out.with_name(out.stem + ".jobs.json")
    jobs.write_text(json.dumps(CountJobs.of(c.job() for c in cases).to_json()))
    proc = subprocess.run([python, str(RUNNER), "--jobs", str(jobs), "--out", str(out), "--mode", mode,
                           "--time-steps", str(time_steps)], cwd=tree, env=runner_env(tree),
                          capture_output=True, text=True)
    out.with_suffix(".log").write_text(proc.stdout + proc.stderr)
    if out.is_file():
        return load_work_record(out)
    last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}, no output"])[-1]
    return WorkRecord(mode=mode, error=f"the runner wrote no record: {last}")


def count_in_process(cases: list[CountCase], threads: int | None = 1) -> WorkRecord:
    """The runner's record for `cases`, counted with this checkout's library in this process."""
    if threads:
        torch.set_num_threads(threads)
    return parse_work_record(countrunner.run_jobs(CountJobs.of(c.job() for c in cases).job_dicts()), "this count")


def write_record(path: str | Path, record: WorkRecord) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(record.model_dump_json(indent=1, by_alias=True))  # by alias: the file's key is "schema"


# -- reading and comparing records -----------------------------------------------------------------
def counts_of(entry: Any) -> WorkCounts:
    return WorkCounts.from_raw(entry.counts)


def histogram_text(work: WorkCounts, indent: str = "  ") -> list[str]:
    """The per-step op histogram (largest first), then bytes and syncs."""
    per = sorted(((name, work.per_step(n)) for name, n in work.ops.items()), key=lambda kv: (-kv[1], kv[0]))
    width = max((len(n) for n, _ in per), default=0)
    lines = [f"{indent}{name:<{width}}  {frac_text(n)}" for name, n in per]
    syncs = ", ".join(f"{n} {frac_text(work.per_step(c))}" for n, c in sorted(work.syncs.items())) or "none"
    lines.append(f"{indent}bytes read {format_bytes(float(work.per_step(work.bytes_read)))}, written "
                 f"{format_bytes(float(work.per_step(work.bytes_written)))} per step; syncs per step: {syncs}")
    return lines


def describe(record: WorkRecord, *, full: bool = True) -> list[str]:
    lines = [f"library {record.library} ({record.api}); torch {record.torch}, transformers {record.transformers}"]
    for entry in record.results:
        case = entry.case
        head = (f"{entry.label}: {case['model']} on {case['device']}, {case['dataset']} {case['tokens']} tokens, "
                f"filled {entry.filled_by}; {entry.seconds or 0:.1f} s")
        if not entry.ok or entry.counts is None:
            lines.append(f"{head}: cannot count: {entry.error}")
            continue
        work = counts_of(entry)
        lines.append(f"{head}\n  {work.summary()} (over {work.steps} steps)")
        if full:
            lines.extend(histogram_text(work, "    "))
    return lines


@dataclass(frozen=True)
class CaseDiff:
    label: str
    lines: list[str] | None  # None: not counted on one side; [] identical
    why: str = ""


def compare_records(mine: WorkRecord, theirs: WorkRecord, source: str = "the other record") -> list[CaseDiff]:
    """Per case (by label) what changed from `theirs` to `mine`, per step."""
    other = {e.label: e for e in theirs.results}
    out = []
    for entry in mine.results:
        ref = other.get(entry.label)
        if ref is None:
            out.append(CaseDiff(entry.label, None, f"not in {source} (it has {', '.join(other) or 'no case'})"))
        elif entry.counts is None or ref.counts is None:
            why = entry.error or ref.error or "no counts (a timing record)"
            out.append(CaseDiff(entry.label, None, f"not counted on one side: {why}"))
        else:
            out.append(CaseDiff(entry.label, counts_of(entry).diff(counts_of(ref))))
    return out


def changed(diffs: list[CaseDiff]) -> bool:
    return any(d.lines for d in diffs)


def diff_text(diffs: list[CaseDiff]) -> list[str]:
    lines = []
    for d in diffs:
        if d.lines is None:
            lines.append(f"{d.label}: not compared ({d.why})")
        elif not d.lines:
            lines.append(f"{d.label}: identical")
        else:
            lines.append(f"{d.label}: " + "; ".join(d.lines))
    return lines


def headline(diffs: list[CaseDiff]) -> str:
    """The largest change of each changed case: `+64 aten.cat per step in strict`."""
    parts = [f"{d.lines[0]} in {d.label}" for d in diffs if d.lines]
    return "; ".join(parts) if parts else "no change"
