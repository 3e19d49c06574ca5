"""The `streamllm` console script: the library's commands (eval, strategies: streamllm.cli) plus the
harness's own, each next to what it calls (report: streamllm.harness.report)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from .. import cli as product_cli
from .baselines import BaselineError
from .records import DEFAULT_REPORT_DIR
from .report import ReportError
from .report import run_report as render_report

USER_ERRORS = (*product_cli.USER_ERRORS, ReportError, BaselineError)


def add_report_parser(sub: argparse._SubParsersAction) -> None:
    runs = f"{DEFAULT_REPORT_DIR}/runs"
    rep = sub.add_parser("report", help=f"render the bench suite's run JSON ({runs}/) into a report")
    rep.add_argument("--runs", default=runs, help=f"directory of run JSON files (default: {runs})")
    rep.add_argument("--run", default=None, help="the run file to report (default: the newest under --runs)")
    rep.add_argument("--history", default="history",
                     help="the run history the TPOT check reads, for the trend plot (default: history)")
    rep.add_argument("--out", default=f"{DEFAULT_REPORT_DIR}/report",
                     help=f"output directory (default: {DEFAULT_REPORT_DIR}/report)")


def run_report(args: argparse.Namespace) -> int:
    """`streamllm report`: markdown/HTML, PNG plots and summary.json from the bench's run files."""
    fix = f"pass --run a file that `pytest bench` wrote under {args.runs}/, or leave --run out for the newest"
    if args.run is not None and not Path(args.run).is_file():
        raise product_cli.UsageError(f"run file {args.run} does not exist; {fix}")
    try:
        path, summary = render_report(args.runs, args.run, args.out, history_dir=args.history)
    except ReportError as exc:
        if args.run is None:  # no run under --runs: the message already says to run `pytest bench`
            raise
        raise ReportError(f"{exc}; {fix}") from None
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary["verdict_counts"].items()))
    print(f"wrote {path} (+ report.html, summary.json, {len(summary['plots'])} plots) from {summary['run']}: "
          f"{summary['status']} ({counts})" + (f"; no result: {', '.join(summary['missing'])}" if summary["missing"] else "")
          + (f"; {summary['armed']}" if summary.get("armed") else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = product_cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    add_report_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    commands = {"strategies": product_cli.run_strategies, "eval": product_cli.run_eval, "report": run_report}
    return product_cli.dispatch(build_parser(), commands, USER_ERRORS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
