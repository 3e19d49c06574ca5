"""Run `pytest bench` with a regression injected on purpose, and say whether the suite caught it.

    python scripts/inject_regression.py extra-op --strategy strict -- --dataset book
    python scripts/inject_regression.py slowdown --strategy lazy --fraction 0.15 -- --dataset book
    python scripts/inject_regression.py extra-copy --strategy strict --cache ring -- ...   # + a full-buffer copy per layer (graph rows too)
    python scripts/inject_regression.py none -- --dataset book          # A/A: nothing injected

The injection (bench/injections.py) patches one strategy's cache code inside this process, then
pytest runs the suite in-process with the arguments after `--` (never --update-baselines). The
last line is machine-readable: `INJECTED <kind> <strategy>: caught=<yes|no> failed=<case ids>`.
`slowdown` makes every decode step of the strategy `--fraction` longer (of that step's own time). Exit code: 0 when the outcome is
the expected one (caught for an injection, no failure for `none`), else 1; 2 on bad input.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASE_FOR = {("dense", "dynamic"): "dense", ("strict", "dynamic"): "strict", ("lazy", "dynamic"): "lazy-c16", ("strict", "static"): "static",
            ("strict", "ring"): "ring", ("refresh", "dynamic"): "refresh", ("no-shift", "dynamic"): "no-shift",
            ("window", "dynamic"): "window"}


def _option(args: list[str], name: str, default: str) -> str:
    """The value of `name` among pytest arguments (`--name value` or `--name=value`)."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


def _without(args: list[str], name: str) -> list[str]:
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out


class Recorder:
    """pytest plugin: which tests failed, and on which check."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def pytest_runtest_logreport(self, report) -> None:
        if report.when == "call" and report.failed:
            self.failed.append(report.nodeid.split("[", 1)[-1].rstrip("]"))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("extra-op", "extra-copy", "slowdown", "none"))
    parser.add_argument("--strategy", default="strict",
                        help="strategy whose cache code is patched (a comma list patches each: strict,lazy,dense)")
    parser.add_argument("--cache", default="dynamic", choices=("dynamic", "static", "ring"))
    parser.add_argument("--fraction", type=float, default=0.15, help="slowdown: extra time / step time")
    args = parser.parse_args(own)
    if any(a.startswith("--update-baselines") or a.startswith("--append-baselines") for a in rest):
        print("inject_regression: error: never record baselines from an injected run; drop --update/--append-baselines",
              file=sys.stderr)
        return 2
    strategies = [s for s in args.strategy.split(",") if s]
    unknown = [s for s in strategies if (s, args.cache) not in CASE_FOR]
    if args.kind != "none" and unknown:
        print(f"inject_regression: error: no suite case for {unknown[0]} on the {args.cache} cache; "
              f"choose one of {sorted(CASE_FOR)}", file=sys.stderr)
        return 2

    import pytest

    from bench import injections

    patches = []
    for strategy in strategies if args.kind != "none" else []:
        if args.kind == "extra-op":
            patches.append(injections.extra_op(strategy, args.cache))
        elif args.kind == "extra-copy":
            patches.append(injections.extra_copy(strategy, args.cache))
        else:
            print(f"{strategy} ({args.cache}): every decode step {args.fraction:.0%} slower")
            patches.append(injections.slowdown(strategy, args.fraction, args.cache))
    recorder = Recorder()
    # the injected run reads the machine's history (its history check is live) but writes a copy:
    # samples of planted code must never become a level that later runs are compared with
    with tempfile.TemporaryDirectory(prefix="injected-history-") as scratch:
        history = Path(_option(rest, "--history-dir", "history"))
        copy = Path(scratch) / "history"
        if history.is_dir():
            shutil.copytree(history, copy)
        try:
            pytest.main(["bench", "-p", "no:cacheprovider", *_without(rest, "--history-dir"),
                         "--history-dir", str(copy)], plugins=[recorder])
        finally:
            for patch in reversed(patches):
                patch.undo()
    failed = sorted(set(recorder.failed))
    targets = [CASE_FOR[(s, args.cache)] for s in strategies] if args.kind != "none" else []
    caught = bool(targets) and all(any(f.startswith(f"{t}-") for f in failed) for t in targets)
    print(f"INJECTED {args.kind} {args.strategy if args.kind != 'none' else '-'}: "
          f"caught={'yes' if caught else 'no'} failed={','.join(failed) or '-'}")
    expected = (not failed) if args.kind == "none" else caught
    return 0 if expected else 1


if __name__ == "__main__":
    sys.exit(main())
