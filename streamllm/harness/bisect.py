"""`streamllm bisect`: the first commit whose decode step does different work (or, --timing, is slower).

Each commit is counted by *this* checkout's counts-only runner (countrunner.py and counters.py,
copied out before the bisect starts) importing *that* commit's `streamllm` product modules, so
old commits with another harness layout are counted exactly like new ones. Everything happens
in a scratch clone (`git clone --shared`: no objects copied, the user's checkout, index, refs
and bisect state untouched), driven by `git bisect run`:

- the counts at --good are measured first and are the reference (stored baselines are not:
  they are re-recorded along with intended changes);
- a commit whose counts equal good's is good (exit 0), one that differs is bad (exit 1), one
  that cannot be counted (no such module, the case fails to build or run) is skipped (exit 125)
  and listed with its error;
- the answer is the first bad commit, its subject and the counter difference.

--timing bisects on time instead, for a step that got slower without doing more work: each
commit is timed in processes alternated with the good commit's (good, commit, good, commit,
...), each pair gives a ratio of per-process medians, and the commit is bad when the ratios'
median interval is above 1 by the threshold, good when it is wholly below it, and skipped as
inconclusive otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import countrunner, workcount
from .countrunner import CountCase, copy_tools

HERE = Path(__file__).resolve().parent


class BisectError(ValueError):
    """Revisions or cases that cannot be bisected; the message says what to pass instead."""


@dataclass(frozen=True)
class BisectPlan:
    repo: Path
    good: str
    bad: str
    cases: list[CountCase]
    python: str = sys.executable
    timing: bool = False
    pairs: int = 6
    threshold: float = 0.05
    time_steps: int = 32
    keep: bool = False
    workdir: Path | None = None


@dataclass
class Tested:
    commit: str
    subject: str
    verdict: str  # "good" | "bad" | "skip"
    detail: str
    seconds: float | None


@dataclass
class BisectResult:
    good: str
    bad: str
    first_bad: str | None
    subject: str | None
    candidates: list[str]  # when skipped commits leave several
    difference: list[str]  # per-case diff lines (counts) or the timing verdict text
    headline: str
    tested: list[Tested] = field(default_factory=list)
    seconds: float = 0.0
    scratch: Path | None = None
    no_change: bool = False
    timing: bool = False


def git(repo: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise BisectError(f"git {' '.join(args)} failed in {repo}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip()


def resolve(repo: Path, rev: str, flag: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise BisectError(f"{flag} {rev} is not a commit of {repo}; pass a commit, tag or branch "
                          "(`git log --oneline` lists them)")
    return proc.stdout.strip()


def subject(repo: Path, commit: str) -> str:
    return git(repo, "log", "-1", "--format=%s", commit)


class Scratch:
    """A shared clone to bisect in, the runner copied beside it, and every commit's record."""

    def __init__(self, plan: BisectPlan):
        self.root = Path(tempfile.mkdtemp(prefix="streamllm-bisect-", dir=plan.workdir))
        self.repo = self.root / "repo"
        self.tools = self.root / "tools"
        self.records = self.root / "commits"
        self.records.mkdir()
        self.tools.mkdir()
        git(plan.repo, "clone", "--quiet", "--shared", "--no-checkout", str(plan.repo.resolve()), str(self.repo))
        copy_tools(self.tools)
        self.cases = self.root / "cases.json"
        self.cases.write_text(json.dumps([c.to_json() for c in plan.cases]))
        self.plan = plan

    def runner(self, *extra: str) -> list[str]:
        return [self.plan.python, str(self.tools / "countrunner.py"), "--counters", str(self.tools / "counters.py"),
                "--cases", str(self.cases), *extra]

    def env(self, tree: Path) -> dict[str, str]:
        # The commit's library first on the path (an editable install of another checkout stays behind it).
        return {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}

    def checkout(self, commit: str, tree: Path | None = None) -> None:
        git(tree or self.repo, "checkout", "--quiet", "--force", "--detach", commit)

    def run_at(self, commit: str, out: Path, *extra: str) -> tuple[int, dict[str, Any]]:
        self.checkout(commit)
        proc = subprocess.run(self.runner("--out", str(out), *extra), cwd=self.repo, env=self.env(self.repo),
                              capture_output=True, text=True)
        (out.with_suffix(".log")).write_text(proc.stdout + proc.stderr)
        record = json.loads(out.read_text()) if out.is_file() else {"status": "skip", "error": proc.stderr[-500:]}
        return proc.returncode, record

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _record_error(record: dict[str, Any]) -> str:
    if record.get("error"):
        return str(record["error"])
    errors = [f"{r['label']}: {r['error']}" for r in record.get("results", []) if r.get("status") != "ok"]
    return "; ".join(errors) or "unknown error"


def parse_bisect_output(text: str) -> tuple[str | None, list[str]]:
    """(first bad commit, []) or (None, candidates) when only skipped commits are left."""
    lines = text.splitlines()
    for line in lines:
        if line.endswith(" is the first bad commit"):
            return line.split()[0], []
    if "only 'skip'ped commits left" in text:
        at = next(i for i, line in enumerate(lines) if "could be any of" in line)
        shas = []
        for line in lines[at + 1:]:
            word = line.strip().split(" ")[0] if line.strip() else ""
            if len(word) >= 7 and all(c in "0123456789abcdef" for c in word):
                shas.append(word)
            elif shas:
                break
        return None, shas
    return None, []


def run_bisect(plan: BisectPlan, say: Callable[[str], None] = print) -> BisectResult:
    started = time.perf_counter()
    if subprocess.run(["git", "-C", str(plan.repo), "rev-parse", "--git-dir"], capture_output=True).returncode != 0:
        raise BisectError(f"{plan.repo} is not a git repository; run bisect inside the project's checkout (or --repo)")
    good, bad = resolve(plan.repo, plan.good, "--good"), resolve(plan.repo, plan.bad, "--bad")
    if good == bad:
        raise BisectError("--good and --bad are the same commit; pass an older --good")
    if subprocess.run(["git", "-C", str(plan.repo), "merge-base", "--is-ancestor", good, bad]).returncode != 0:
        raise BisectError(f"--good {plan.good} is not an ancestor of --bad {plan.bad}; swap them or pick a --good "
                          f"from `git log --oneline {plan.bad}`")
    scratch = Scratch(plan)
    say(f"scratch clone {scratch.repo} (your checkout is not touched); cases: "
        f"{', '.join(c.label for c in plan.cases)}")
    try:
        result = (_bisect_timing if plan.timing else _bisect_counts)(plan, scratch, good, bad, say)
    finally:
        subprocess.run(["git", "-C", str(scratch.repo), "bisect", "reset"], capture_output=True)
        if not plan.keep:
            scratch.remove()
    result.seconds = time.perf_counter() - started
    result.scratch = scratch.root if plan.keep else None
    result.timing = plan.timing
    return result


def _bisect_counts(plan: BisectPlan, scratch: Scratch, good: str, bad: str, say: Callable[[str], None]) -> BisectResult:
    good_json = scratch.root / "good.json"
    t0 = time.perf_counter()
    code, good_record = scratch.run_at(good, good_json)
    if code != 0 or good_record.get("status") != "ok":
        raise BisectError(f"the case cannot be counted at --good {plan.good} ({_record_error(good_record)}); "
                          "pick a --good where it runs, or run the commits under the transformers they were written "
                          "for: --python ~/.cache/streamllm/drift/transformers-X/bin/python (built by streamllm drift)")
    say(f"good {good[:10]} counted in {time.perf_counter() - t0:.1f} s: "
        + "; ".join(f"{r['label']} {workcount.counts_of(r, r['label']).summary()}" for r in good_record["results"]))
    t0 = time.perf_counter()
    code, bad_record = scratch.run_at(bad, scratch.root / "bad.json", "--against", str(good_json))
    if code == countrunner.EXIT_SKIP:
        raise BisectError(f"the case cannot be counted at --bad {plan.bad} ({_record_error(bad_record)}); "
                          "pick a --bad where it runs")
    diffs = workcount.compare_records(bad_record, good_record)
    say(f"bad {bad[:10]} counted in {time.perf_counter() - t0:.1f} s: {workcount.headline(diffs)}")
    if code == countrunner.EXIT_SAME:
        return BisectResult(good, bad, None, None, [], [], "no change in the counted work between --good and --bad "
                            "(a step slower without more work: --timing)", no_change=True)
    out = _git_bisect(scratch, good, bad, scratch.runner("--out", str(scratch.records / "{commit}.json"),
                                                         "--against", str(good_json)), say)
    first, candidates = parse_bisect_output(out)
    tested = _tested(plan, scratch, good, bad)
    if first is None:
        return BisectResult(good, bad, None, None, candidates, [], "only skipped commits are left: the change is in "
                            "one of the candidates", tested)
    record = _commit_record(scratch, first) or (bad_record if first == bad else {})
    diffs = workcount.compare_records(record, good_record) if record else []
    return BisectResult(good, bad, first, subject(plan.repo, first), [], workcount.diff_text(diffs),
                        workcount.headline(diffs), tested)


def _git_bisect(scratch: Scratch, good: str, bad: str, command: list[str], say: Callable[[str], None]) -> str:
    git(scratch.repo, "bisect", "start", bad, good)
    proc = subprocess.Popen(["git", "-C", str(scratch.repo), "bisect", "run", *command], cwd=scratch.repo,
                            env=scratch.env(scratch.repo), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Bisecting:"):
            say("  " + line.rstrip())
    proc.wait()
    text = "".join(lines)
    (scratch.root / "bisect-run.log").write_text(text)
    return text + "\n" + git(scratch.repo, "bisect", "log", check=False)


def _commit_record(scratch: Scratch, commit: str) -> dict[str, Any] | None:
    path = scratch.records / f"{commit}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _tested(plan: BisectPlan, scratch: Scratch, good: str, bad: str) -> list[Tested]:
    """Every commit git bisect ran, from the bisect log (its order) and the records."""
    out = []
    for line in git(scratch.repo, "bisect", "log", check=False).splitlines():
        parts = line.split()
        if len(parts) < 3 or parts[0] != "git" or parts[1] != "bisect" or parts[2] not in ("good", "bad", "skip"):
            continue
        for commit in parts[3:]:
            if commit in (good, bad):
                continue
            record = _commit_record(scratch, commit) or {}
            verdict = parts[2]
            if record.get("text"):  # a timing step's verdict (an inconclusive one is a skip)
                detail = record["text"]
            elif verdict == "skip":
                detail = _record_error(record)
            else:
                change = workcount.headline(_diffs_vs_good(scratch, record))
                detail = "same counts as good" if change == "no change" else change
            out.append(Tested(commit, subject(plan.repo, commit), verdict, detail, record.get("seconds")))
    return out


def _diffs_vs_good(scratch: Scratch, record: dict[str, Any]) -> list[workcount.CaseDiff]:
    good = scratch.root / "good.json"
    if not record.get("results") or not good.is_file():
        return []
    return workcount.compare_records(record, json.loads(good.read_text()))


def _bisect_timing(plan: BisectPlan, scratch: Scratch, good: str, bad: str, say: Callable[[str], None]) -> BisectResult:
    good_tree = scratch.root / "good-tree"
    git(scratch.repo, "worktree", "add", "--quiet", "--detach", str(good_tree), good)
    step = ["--mode", "timing-step", "--good-tree", str(good_tree), "--pairs", str(plan.pairs),
            "--threshold", str(plan.threshold), "--time-steps", str(plan.time_steps)]
    t0 = time.perf_counter()
    code, record = scratch.run_at(bad, scratch.root / "bad-timing.json", *step)
    if record.get("status") != "ok":
        raise BisectError(f"cannot time --good {plan.good} against --bad {plan.bad}: {_record_error(record)}")
    say(f"bad {bad[:10]} vs good {good[:10]} ({time.perf_counter() - t0:.0f} s): {record['text']}")
    if record["verdict"] != "slower":
        why = ("--bad is not slower than --good by the threshold: nothing to bisect" if record["verdict"] == "not slower"
               else "--bad against --good is inconclusive: no call, nothing bisected (more --pairs, a quieter "
                    "machine or a larger --threshold may make one)")
        return BisectResult(good, bad, None, None, [], [record["text"]], why, no_change=True)
    out = _git_bisect(scratch, good, bad, scratch.runner("--out", str(scratch.records / "{commit}.json"), *step), say)
    first, candidates = parse_bisect_output(out)
    tested = _tested(plan, scratch, good, bad)
    if first is None:
        return BisectResult(good, bad, None, None, candidates, [], "only skipped (inconclusive or unrunnable) commits "
                            "are left: the slowdown is in one of the candidates", tested)
    rec = _commit_record(scratch, first) or (record if first == bad else {})
    text = rec.get("text", "")
    return BisectResult(good, bad, first, subject(plan.repo, first), [], [text] if text else [], text, tested)


def report(result: BisectResult) -> list[str]:
    """The closing lines: the first bad commit, its subject, the difference; tested and skipped commits."""
    lines = []
    if result.no_change:
        lines.append(result.headline)
        lines.extend(result.difference)
    elif result.first_bad:
        lines.append(f"first bad commit: {result.first_bad[:10]} {result.subject}")
        lines.append(f"  {result.headline}")
        lines.extend(f"  {line}" for line in result.difference)
    else:
        lines.append(result.headline + ": " + ", ".join(c[:10] for c in result.candidates))
    if result.tested:
        lines.append(f"tested {len(result.tested)} commit(s) between good {result.good[:10]} and bad {result.bad[:10]}:")
        for t in result.tested:
            secs = f" {t.seconds:.1f} s" if t.seconds is not None else ""
            lines.append(f"  {t.verdict:<4} {t.commit[:10]} {t.subject[:70]}{secs}: {t.detail[:200]}")
        skipped = [t for t in result.tested if t.verdict == "skip"]
        if skipped:
            why = "inconclusive or could not be timed" if result.timing else "could not be counted"
            lines.append(f"skipped ({why}): {', '.join(t.commit[:10] for t in skipped)}")
    lines.append(f"wall time {result.seconds:.0f} s" + (f"; scratch kept at {result.scratch}" if result.scratch else ""))
    return lines
