"""`streamllm count`: the work of a few steady-state decode steps of one case, no PPL, no timing.

Counting is countrunner's (the same code bisect and drift run against other commits and
releases); this module runs it in this process, prints the per-step histogram, and compares a
record with another (`--against`): the records are the JSON that `--json`, bisect and drift write.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import counters, workcounts
from .countrunner import DEFAULT_CASES, CaseError, CountCase, Library, count_prepared, parse_cases, prepare


class CountError(ValueError):
    """A counts file that cannot be read or compared; the message names the file and the fix."""


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
        base = CountCase(**{**base.to_json(), "sink": 0})
    cases = parse_cases(args.cases, base) if args.cases else [base]
    return [c.check() for c in cases]


def count_in_process(cases: list[CountCase], threads: int | None = 1) -> dict[str, Any]:
    """countrunner's record for `cases`, counted with this checkout's library in this process."""
    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    library = Library.load()
    record: dict[str, Any] = {"torch": torch.__version__, "transformers": workcounts._version("transformers"),
                              "library": library.root, "api": library.api, "results": []}
    models: dict = {}
    for case in cases:
        t0 = time.perf_counter()
        prepared = prepare(case, library, models)
        work = count_prepared(prepared, counters)
        record["results"].append({"case": case.to_json(), "label": case.label, "status": "ok",
                                  "counts": work.to_json(), "load_s": prepared.load_s, "fill_s": prepared.fill_s,
                                  "filled_by": prepared.filled_by, "seconds": time.perf_counter() - t0})
    record["status"] = "ok"
    record["seconds"] = time.perf_counter() - started
    return record


def load_record(path: str | Path) -> dict[str, Any]:
    """A record written by `streamllm count --json`, bisect or drift."""
    fix = "pass a file written by `streamllm count --json FILE`"
    p = Path(path)
    if not p.is_file():
        raise CountError(f"counts file {p} does not exist; {fix}")
    try:
        record = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise CountError(f"{p} is not JSON ({exc.msg} at line {exc.lineno}); {fix}") from None
    if not isinstance(record, dict) or not isinstance(record.get("results"), list):
        raise CountError(f"{p} has no 'results' list; {fix}")
    return record


def counts_of(entry: dict[str, Any], source: str) -> counters.WorkCounts:
    return counters.WorkCounts.from_json(entry.get("counts"), source)


def histogram_text(work: counters.WorkCounts, indent: str = "  ") -> list[str]:
    """The per-step op histogram (largest first), then bytes and syncs."""
    per = sorted(work.ops_per_step().items(), key=lambda kv: (-kv[1], kv[0]))
    width = max((len(n) for n, _ in per), default=0)
    lines = [f"{indent}{name:<{width}}  {workcounts._frac_text(n)}" for name, n in per]
    syncs = ", ".join(f"{n} {workcounts._frac_text(work.per_step(c))}" for n, c in sorted(work.syncs.items())) or "none"
    lines.append(f"{indent}bytes read {counters.format_bytes(float(work.per_step(work.bytes_read)))}, written "
                 f"{counters.format_bytes(float(work.per_step(work.bytes_written)))} per step; syncs per step: {syncs}")
    return lines


def describe(record: dict[str, Any], *, full: bool = True) -> list[str]:
    lines = [f"library {record.get('library')} ({record.get('api')}); torch {record.get('torch')}, "
             f"transformers {record.get('transformers')}"]
    for entry in record["results"]:
        case = entry["case"]
        head = (f"{entry['label']}: {case['model']} on {case['device']}, {case['dataset']} {case['tokens']} tokens, "
                f"filled {entry.get('filled_by')}; {entry.get('seconds', 0):.1f} s")
        if entry.get("status") != "ok":
            lines.append(f"{head}: cannot count: {entry.get('error')}")
            continue
        work = counts_of(entry, entry["label"])
        lines.append(f"{head}\n  {work.summary()} (over {work.steps} steps)")
        if full:
            lines.extend(histogram_text(work, "    "))
    return lines


@dataclass(frozen=True)
class CaseDiff:
    label: str
    lines: list[str] | None  # None: not counted on one side; [] identical
    why: str = ""


def compare_records(mine: dict[str, Any], theirs: dict[str, Any], source: str = "the other record") -> list[CaseDiff]:
    """Per case (by label) what changed from `theirs` to `mine`, per step."""
    other = {e["label"]: e for e in theirs.get("results", [])}
    out = []
    for entry in mine.get("results", []):
        ref = other.get(entry["label"])
        if ref is None:
            out.append(CaseDiff(entry["label"], None, f"not in {source} (it has {', '.join(other) or 'no case'})"))
        elif entry.get("status") != "ok" or ref.get("status") != "ok":
            why = entry.get("error") if entry.get("status") != "ok" else ref.get("error")
            out.append(CaseDiff(entry["label"], None, f"not counted on one side: {why}"))
        else:
            out.append(CaseDiff(entry["label"], counts_of(entry, "these counts").diff(counts_of(ref, source))))
    return out


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


def write_record(path: str | Path, record: dict[str, Any]) -> None:
    p = Path(path)
    if p.is_dir():
        raise CountError(f"--json {p} is a directory; pass a file path such as {p / 'counts.json'}")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(record, indent=1, default=str))


__all__ = ["CaseError", "CountError", "add_case_options", "cases_from_args", "compare_records", "count_in_process",
           "describe", "diff_text", "load_record", "write_record"]
