"""`streamllm bisect`: the first commit whose decode step does different work (or, --timing, is slower).

Each commit is counted by *this* checkout's runner (countrunner.py with opcount.py, run in place
from this checkout, nothing copied into the commit's tree) importing *that* commit's `streamllm`
product modules, so old commits with another harness layout are counted exactly like new ones.
The runner only writes raw histograms; this process compares them and tells git. Everything
happens in a scratch clone (`git clone --shared`: no objects copied, the user's checkout, index,
refs and bisect state untouched), stepped with `git bisect good/bad/skip`:

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

import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .countcases import CountCase, WorkRecord, compare_records, counts_of, diff_text, headline, run_runner
from .verdicts import INCONCLUSIVE

SLOWER, NOT_SLOWER = "slower", "not slower"


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
    """A shared clone to bisect in, and every commit's record."""

    def __init__(self, plan: BisectPlan):
        self.root = Path(tempfile.mkdtemp(prefix="streamllm-bisect-", dir=plan.workdir))
        self.repo = self.root / "repo"
        self.records = self.root / "commits"
        self.records.mkdir()
        git(plan.repo, "clone", "--quiet", "--shared", "--no-checkout", str(plan.repo.resolve()), str(self.repo))
        self.plan = plan

    def checkout(self, commit: str, tree: Path | None = None) -> None:
        git(tree or self.repo, "checkout", "--quiet", "--force", "--detach", commit)

    def run(self, tree: Path, name: str, mode: str = "count") -> WorkRecord:
        """The runner against the commit checked out in `tree`; its record (kept under commits/)."""
        return run_runner(self.plan.cases, tree, self.records / f"{name}.json", python=self.plan.python, mode=mode,
                          time_steps=self.plan.time_steps)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


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


# A commit's verdict for git: ("good" | "bad" | "skip", the detail line, seconds).
Judged = tuple[str, str, float | None]


def _walk(plan: BisectPlan, scratch: Scratch, good: str, bad: str, judge: Callable[[str], Judged],
          say: Callable[[str], None]) -> tuple[str | None, list[str], list[Tested]]:
    """git bisect from bad/good, each commit it checks out judged here: (first bad, candidates, tested)."""
    out = _bisect(scratch, "start", bad, good)
    tested: list[Tested] = []
    for _ in range(int(git(plan.repo, "rev-list", "--count", f"{good}..{bad}")) + 1):
        first, candidates = parse_bisect_output(out)
        if first or candidates:
            return first, candidates, tested
        for line in out.splitlines():
            if line.startswith("Bisecting:"):
                say("  " + line.rstrip())
        commit = git(scratch.repo, "rev-parse", "HEAD")
        verdict, detail, seconds = judge(commit)
        tested.append(Tested(commit, subject(plan.repo, commit), verdict, detail, seconds))
        out = _bisect(scratch, verdict)
    raise BisectError(f"git bisect did not finish; its log is in {scratch.root} (pass --keep to keep it)")


def _bisect(scratch: Scratch, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(scratch.repo), "bisect", *args], capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    with (scratch.root / "bisect.log").open("a") as log:
        log.write(f"$ git bisect {' '.join(args)}\n{text}")
    return text


def _bisect_counts(plan: BisectPlan, scratch: Scratch, good: str, bad: str, say: Callable[[str], None]) -> BisectResult:
    scratch.checkout(good)
    good_record = scratch.run(scratch.repo, "good")
    if not good_record.ok:
        raise BisectError(f"the case cannot be counted at --good {plan.good} ({good_record.why_not()}); "
                          "pick a --good where it runs, or run the commits under the transformers they were written "
                          "for: --python ~/.cache/streamllm/drift/transformers-X/bin/python (built by streamllm drift)")
    say(f"good {good[:10]} counted in {good_record.seconds or 0:.1f} s: "
        + "; ".join(f"{r.label} {counts_of(r).summary()}" for r in good_record.results))
    scratch.checkout(bad)
    bad_record = scratch.run(scratch.repo, "bad")
    if not bad_record.ok:
        raise BisectError(f"the case cannot be counted at --bad {plan.bad} ({bad_record.why_not()}); "
                          "pick a --bad where it runs")
    diffs = compare_records(bad_record, good_record)
    say(f"bad {bad[:10]} counted in {bad_record.seconds or 0:.1f} s: {headline(diffs)}")
    if headline(diffs) == "no change":
        return BisectResult(good, bad, None, None, [], [], "no change in the counted work between --good and --bad "
                            "(a step slower without more work: --timing)", no_change=True)
    records = {bad: bad_record}

    def judge(commit: str) -> Judged:
        record = records[commit] = scratch.run(scratch.repo, commit)
        if not record.ok:
            return "skip", record.why_not(), record.seconds
        change = headline(compare_records(record, good_record))
        return ("good", "same counts as good", record.seconds) if change == "no change" else \
            ("bad", change, record.seconds)

    first, candidates, tested = _walk(plan, scratch, good, bad, judge, say)
    if first is None:
        return BisectResult(good, bad, None, None, candidates, [], "only skipped commits are left: the change is in "
                            "one of the candidates", tested)
    diffs = compare_records(records[first], good_record) if first in records else []
    return BisectResult(good, bad, first, subject(plan.repo, first), [], diff_text(diffs), headline(diffs), tested)


# -- the timing comparison ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TimingVerdict:
    """Commit vs good over alternated process pairs: per pair the ratio of their per-process medians."""

    verdict: str  # SLOWER | NOT_SLOWER | INCONCLUSIVE
    ratios: list[float]
    median: float
    low: float  # a distribution-free interval for the median ratio (order statistics)
    high: float
    coverage: float
    threshold: float

    def text(self) -> str:
        return (f"{self.verdict}: commit/good step time x{self.median:.3f} (median of {len(self.ratios)} process pairs; "
                f"{self.coverage:.0%} interval x{self.low:.3f}..x{self.high:.3f}; a call needs the interval above x1 "
                f"with the median >= x{1 + self.threshold:.2f}, or wholly below x{1 + self.threshold:.2f})")


def median_interval(values: list[float], coverage: float = 0.9) -> tuple[float, float, float]:
    """(low, high, achieved coverage) of the order-statistic interval for the median: the
    narrowest [x_(k), x_(n+1-k)] whose binomial coverage is >= `coverage` (the widest, [min, max],
    when n is too small to reach it)."""
    xs = sorted(values)
    n = len(xs)
    best = (xs[0], xs[-1], 1 - 2 * 0.5 ** n)
    for k in range(1, n // 2 + 1):
        tail = sum(math.comb(n, i) for i in range(k)) / 2 ** n
        if 1 - 2 * tail >= coverage:
            best = (xs[k - 1], xs[n - k], 1 - 2 * tail)
    return best


def timing_verdict(ratios: list[float], threshold: float = 0.05) -> TimingVerdict:
    """slower: the interval is above 1 and the median ratio is at least 1 + threshold;
    not slower: the whole interval is below 1 + threshold; else inconclusive (noise forbids a call)."""
    low, high, cov = median_interval(ratios)
    med = statistics.median(ratios)
    if low > 1.0 and med >= 1.0 + threshold:
        verdict = SLOWER
    elif high < 1.0 + threshold:
        verdict = NOT_SLOWER
    else:
        verdict = INCONCLUSIVE
    return TimingVerdict(verdict, list(ratios), med, low, high, cov, threshold)


def tpot_ms(step_ms: list[float], cycle: int) -> float:
    """One process's statistic: the median over whole cycles of the cycle-mean step time (a lazy
    prune counted once per cycle, an odd slow cycle not dominating)."""
    rows = [step_ms[i : i + cycle] for i in range(0, len(step_ms) - cycle + 1, cycle)]
    return statistics.median(sum(r) / len(r) for r in rows)


def time_pairs(scratch: Scratch, good_tree: Path, name: str) -> list[float] | str:
    """Alternate runner processes good, commit, good, commit, ... (--mode time); the per-pair
    ratios commit / good of the first case's per-process statistic, or why a process failed."""
    cycle = scratch.plan.cases[0].cycle
    ratios = []
    for i in range(scratch.plan.pairs):
        tpot = {}
        for side, tree in (("good", good_tree), ("commit", scratch.repo)):
            record = scratch.run(tree, f"{name}-time-{side}-{i}", mode="time")
            if not record.ok or not record.results[0].step_ms:
                return f"{side} timing process failed: {record.why_not()}"
            tpot[side] = tpot_ms(record.results[0].step_ms, cycle)
        ratios.append(tpot["commit"] / tpot["good"])
    return ratios


def _bisect_timing(plan: BisectPlan, scratch: Scratch, good: str, bad: str, say: Callable[[str], None]) -> BisectResult:
    good_tree = scratch.root / "good-tree"
    git(scratch.repo, "worktree", "add", "--quiet", "--detach", str(good_tree), good)
    texts: dict[str, str] = {}

    def judge(commit: str) -> Judged:
        t0 = time.perf_counter()
        ratios = time_pairs(scratch, good_tree, commit)
        if isinstance(ratios, str):
            return "skip", ratios, time.perf_counter() - t0
        verdict = timing_verdict(ratios, plan.threshold)
        texts[commit] = verdict.text()
        return ({SLOWER: "bad", NOT_SLOWER: "good"}.get(verdict.verdict, "skip"), verdict.text(),
                time.perf_counter() - t0)

    scratch.checkout(bad)
    call, text, seconds = judge(bad)
    if call == "skip" and bad not in texts:
        raise BisectError(f"cannot time --good {plan.good} against --bad {plan.bad}: {text}")
    say(f"bad {bad[:10]} vs good {good[:10]} ({seconds:.0f} s): {text}")
    if call != "bad":
        why = ("--bad is not slower than --good by the threshold: nothing to bisect" if call == "good"
               else "--bad against --good is inconclusive: no call, nothing bisected (more --pairs, a quieter "
                    "machine or a larger --threshold may make one)")
        return BisectResult(good, bad, None, None, [], [text], why, no_change=True)
    first, candidates, tested = _walk(plan, scratch, good, bad, judge, say)
    if first is None:
        return BisectResult(good, bad, None, None, candidates, [], "only skipped (inconclusive or unrunnable) commits "
                            "are left: the slowdown is in one of the candidates", tested)
    text = texts.get(first, "")
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
