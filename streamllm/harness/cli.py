"""The `streamllm` console script: the library's commands (eval, strategies: streamllm.cli) plus the
harness's own, each next to what it calls (report: streamllm.harness.report)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import cli as product_cli
from . import bisect, countcases, drift
from .compare import compare
from .records import DEFAULT_REPORT_DIR, RunRecordError
from .report import run_report as render_report
from .report_runs import ReportError
from .schema import StoredFileError
from .schema.workrecord import WorkRecordError, load_work_record

USER_ERRORS = (*product_cli.USER_ERRORS, ReportError, RunRecordError, StoredFileError, WorkRecordError,
               countcases.CaseError, bisect.BisectError, drift.DriftError)


def add_report_parser(sub: argparse._SubParsersAction) -> None:
    runs = f"{DEFAULT_REPORT_DIR}/runs"
    rep = sub.add_parser("report", help=f"render the bench suite's run JSON ({runs}/) into a report")
    rep.add_argument("--runs", default=runs, help=f"directory of run JSON files (default: {runs})")
    rep.add_argument("--run", default=None, help="the run file to report (default: the newest under --runs)")
    rep.add_argument("--history", default="history",
                     help="the run history the TPOT check reads, for the trend plot (default: history)")
    rep.add_argument("--baselines", default="baselines",
                     help="baseline store, for the bands' leave-one-out coverage (default: baselines)")
    rep.add_argument("--out", default=f"{DEFAULT_REPORT_DIR}/report",
                     help=f"output directory (default: {DEFAULT_REPORT_DIR}/report)")


def run_report(args: argparse.Namespace) -> int:
    """`streamllm report`: markdown/HTML, PNG plots and summary.json from the bench's run files."""
    fix = f"pass --run a file that `pytest bench` wrote under {args.runs}/, or leave --run out for the newest"
    if args.run is not None and not Path(args.run).is_file():
        raise product_cli.UsageError(f"run file {args.run} does not exist; {fix}")
    try:
        path, summary = render_report(args.runs, args.run, args.out, history_dir=args.history,
                                      baselines_dir=args.baselines)
    except ReportError as exc:
        if args.run is None:  # no run under --runs: the message already says to run `pytest bench`
            raise
        raise ReportError(f"{exc}; {fix}") from None
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary["verdict_counts"].items()))
    print(f"wrote {path} (+ report.html, summary.json, {len(summary['plots'])} plots) from {summary['run']}: "
          f"{summary['status']} ({counts})" + (f"; no result: {', '.join(summary['missing'])}" if summary["missing"] else "")
          + (f"; {summary['armed']}" if summary.get("armed") else ""))
    return 0


def add_compare_parser(sub: argparse._SubParsersAction) -> None:
    cmp = sub.add_parser("compare", help="judge a stored run record again (its raw measurements) and print the "
                                         "suite's verdict table")
    cmp.add_argument("run", help=f"a run record `pytest bench` wrote under {DEFAULT_REPORT_DIR}/runs/")
    cmp.add_argument("--against", default="baselines",
                     help="baselines (default: the --baselines store and the run history) or another run record")
    cmp.add_argument("--baselines", default="baselines", help="baseline store root (default: baselines)")
    cmp.add_argument("--history", default="history", help="run history root (default: history)")


def run_compare(args: argparse.Namespace) -> int:
    """`streamllm compare`: exit 0 when every re-judged row passes, 1 when one fails, 2 on bad input."""
    result = compare(args.run, against=args.against, baselines_dir=args.baselines, history_dir=args.history)
    for line in result.lines:
        print(line)
    return result.exit_code


def add_count_parser(sub: argparse._SubParsersAction) -> None:
    cnt = sub.add_parser("count", help="count the work of a few steady-state decode steps of a case (no PPL, no timing)")
    countcases.add_case_options(cnt)
    cnt.add_argument("--json", dest="json_out", default=None, help="write the counts here (a record --against reads)")
    cnt.add_argument("--against", default=None,
                     help="a counts JSON to compare with: prints the per-step difference, exit 1 if any case differs")
    cnt.add_argument("--brief", action="store_true", help="one summary line per case, no op histogram")


def run_count(args: argparse.Namespace) -> int:
    """`streamllm count`: histogram, bytes and syncs per step; with --against, the difference."""
    cases = countcases.cases_from_args(args)
    theirs = load_work_record(args.against) if args.against else None  # a bad file fails before counting
    if args.json_out and Path(args.json_out).is_dir():
        raise product_cli.UsageError(f"--json {args.json_out} is a directory; pass a file path")
    record = countcases.count_in_process(cases)
    print("\n".join(countcases.describe(record, full=not args.brief)))
    if args.json_out:
        countcases.write_record(args.json_out, record)
        print(f"wrote {args.json_out}")
    if not record.ok:
        return 1
    if theirs is None:
        return 0
    diffs = countcases.compare_records(record, theirs, args.against)
    print(f"against {args.against}:")
    print("\n".join("  " + line for line in countcases.diff_text(diffs)))
    return 1 if countcases.changed(diffs) else 0


def add_bisect_parser(sub: argparse._SubParsersAction) -> None:
    bis = sub.add_parser("bisect", help="git bisect on a case's work counts (or --timing): the first commit "
                                        "whose decode step changed, with the counter difference")
    bis.add_argument("--good", required=True, help="a commit whose step is right (its counts are the reference)")
    bis.add_argument("--bad", default="HEAD", help="a later commit whose step changed (default HEAD)")
    countcases.add_case_options(bis)
    bis.add_argument("--repo", default=".", help="the git checkout to bisect (default: the current directory); "
                                                 "it is cloned to a scratch directory and never changed")
    bis.add_argument("--python", default=sys.executable,
                     help="interpreter that runs each commit (e.g. a drift venv's, for another transformers)")
    bis.add_argument("--timing", action="store_true",
                     help="bisect on step time: alternated good/commit processes, inconclusive commits skipped")
    bis.add_argument("--pairs", type=int, default=6, help="--timing: good/commit process pairs per commit (default 6)")
    bis.add_argument("--threshold", type=float, default=0.05, help="--timing: the slowdown that counts (default 0.05)")
    bis.add_argument("--time-steps", type=int, default=32, help="--timing: timed steps per process (default 32)")
    bis.add_argument("--keep", action="store_true", help="keep the scratch clone and every commit's record")
    bis.add_argument("--workdir", default=None, help="where the scratch clone goes (default: the system temp dir)")


def run_bisect(args: argparse.Namespace) -> int:
    """`streamllm bisect`: prints the first bad commit, its subject and the difference; exit 0 when found."""
    if args.pairs < 3:
        raise product_cli.UsageError(f"--pairs must be >= 3 (got {args.pairs}): fewer pairs can never make a call")
    if args.workdir is not None and not Path(args.workdir).is_dir():
        raise product_cli.UsageError(f"--workdir {args.workdir} is not a directory; create it or leave --workdir out")
    plan = bisect.BisectPlan(repo=Path(args.repo), good=args.good, bad=args.bad, cases=countcases.cases_from_args(args),
                             python=args.python, timing=args.timing, pairs=args.pairs, threshold=args.threshold,
                             time_steps=args.time_steps, keep=args.keep,
                             workdir=Path(args.workdir) if args.workdir else None)
    result = bisect.run_bisect(plan, say=lambda line: print(line, flush=True))
    print("\n".join(bisect.report(result)))
    return 0 if result.first_bad or result.no_change else 1


def add_drift_parser(sub: argparse._SubParsersAction) -> None:
    dri = sub.add_parser("drift", help="count the default cases under several transformers releases (one venv each, "
                                       "sharing this environment's torch) and table where the step's work changes")
    dri.add_argument("--transformers", required=True, help="comma list of releases, e.g. 5.17.0,5.20.0,5.25.0")
    countcases.add_case_options(dri, several=True)
    dri.add_argument("--markdown", default=None, help="write the table (and the changes and breaks) to this file")
    dri.add_argument("--json", dest="json_out", default=None,
                     help="write {'releases': {release: work record}} here (each record is what count --json writes)")
    dri.add_argument("--venvs", default=str(drift.DEFAULT_VENVS), help=f"venv cache (default {drift.DEFAULT_VENVS})")
    dri.add_argument("--checkout", default=None,
                     help="count this checkout's streamllm instead of the running one (e.g. `git worktree add /tmp/old "
                          "REV`: which release broke an old commit)")
    dri.add_argument("--allow-untested", action="store_true",
                     help=f"allow releases below the lowest tested one ({drift.compat.LOWEST_TESTED})")


def run_drift(args: argparse.Namespace) -> int:
    """`streamllm drift`: prints the markdown table; exit 0 (changes and breaks are results, not errors)."""
    releases = drift.parse_releases(args.transformers, args.allow_untested)
    cases = countcases.cases_from_args(args)
    for flag, path in (("--markdown", args.markdown), ("--json", args.json_out)):
        if path is not None and Path(path).is_dir():
            raise product_cli.UsageError(f"{flag} {path} is a directory; pass a file path")
    checkout = drift.check_checkout(Path(args.checkout)) if args.checkout else drift.CHECKOUT
    plan = drift.DriftPlan(releases, cases, venvs=Path(args.venvs).expanduser(), allow_untested=args.allow_untested,
                           checkout=checkout)
    result = drift.run_drift(plan, say=lambda line: print(line, flush=True))
    command = ("streamllm drift --transformers " + ",".join(releases) + " --cases " + ",".join(c.label for c in cases)
               + (f" --checkout {args.checkout}" if args.checkout else ""))
    text = drift.markdown(result, command)
    print(text)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text)
        print(f"wrote {args.markdown}")
    if args.json_out:
        # one count record per release: `streamllm count --against` reads any of them saved on its own
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps({"releases": {r.release: r.record.to_json() for r in result.runs}},
                                                  indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = product_cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    add_report_parser(sub)
    add_compare_parser(sub)
    add_count_parser(sub)
    add_bisect_parser(sub)
    add_drift_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    commands = {"strategies": product_cli.run_strategies, "eval": product_cli.run_eval, "report": run_report,
                "compare": run_compare, "count": run_count, "bisect": run_bisect,
                "drift": run_drift}
    return product_cli.dispatch(build_parser(), commands, USER_ERRORS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
