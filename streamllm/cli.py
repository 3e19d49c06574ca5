"""Command line: `streamllm eval ...` runs strategies on a model and text and prints a table.

Several strategies in one run share the model, the text and the tokens; when `dense` is among
them it runs first and is the reference for the speedup column. A strategy item may carry its
own parameters after colons: `lazy:c32`, `refresh:c32:b8`, `overlap:o64`, `strict:s16:w1024`
(c = compress_every, b = refresh budget, o = overlap, s = sinks, w = window).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .combinations import CACHE_KINDS, COMPILE_MODES, decode_mode_for
from .data import DatasetError, load_text, synthetic_ids, tokenize
from .decoders import decoder_factory
from .evaluate import DecodeOptions, evaluate_tokens, speedup
from .measure import time_steady_state
from .models import ModelOptionError, ModelUnavailableError, is_dummy, load_model, parse_dtype, resolve_device
from .parallel import evaluate_parallel, with_decode_timing, with_slice_timing
from .parallel_schedule import supports_parallel
from .report_table import results_table
from .results import write_json_atomic
from .rope import UnsupportedRopeError
from .spikes import delta_vs_dense
from .strategies import STRATEGIES, StrategyError, StrategySpec, make_strategy
from .transforms import MissingDependencyError, NonFiniteLogitsError, apply_int8

ITEM_KEYS = {"c": "compress_every", "b": "refresh", "o": "overlap", "s": "sink", "w": "window"}


# Which global options each strategy takes; the rest keep their neutral defaults.
GLOBAL_OPTIONS = {
    "dense": (),
    "window": ("window",),
    "strict": ("sink", "window", "auto_cap"),
    "no-shift": ("sink", "window", "auto_cap"),
    "lazy": ("sink", "window", "compress_every", "auto_cap"),
    "overlap": ("sink", "window", "compress_every", "overlap", "auto_cap"),
    "refresh": ("sink", "window", "compress_every", "refresh", "auto_cap"),
}


def parse_strategies(text: str, defaults: dict) -> list[StrategySpec]:
    specs = []
    for item in [part.strip() for part in text.split(",") if part.strip()]:
        name, *mods = item.split(":")
        name = name.strip().lower().replace("_", "-")
        if name not in GLOBAL_OPTIONS:
            raise StrategyError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
        params = {key: defaults[key] for key in GLOBAL_OPTIONS[name] if defaults.get(key) is not None}
        if name == "window":
            params["sink"] = 0  # window-only keeps no sinks by definition
        for mod in mods:
            match = re.fullmatch(r"([a-z])(\d+)", mod.strip())
            if not match or match.group(1) not in ITEM_KEYS:
                raise StrategyError(f"bad strategy option {mod!r} in {item!r}: use c<R>, b<B>, o<O>, s<S> or w<W>")
            params[ITEM_KEYS[match.group(1)]] = int(match.group(2))
        specs.append(make_strategy(name, **params))
    if not specs:
        raise StrategyError("no strategy given: --strategy NAME[,NAME...]; choose from " + ", ".join(STRATEGIES))
    return specs


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="streamllm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("eval", help="evaluate streaming strategies (PPL, TPOT, prune events)")
    ev.add_argument("--model", default="embedded",
                    help="embedded | PATH.gguf | HUB_ID | DIR | dummy:CONFIG (default: embedded)")
    ev.add_argument("--dataset", default="book", help="book | wiki | wikitext | pg19 | PATH (default: book)")
    ev.add_argument("--strategy", default="strict", help="comma list, e.g. dense,strict,lazy:c32,refresh:c32:b8")
    ev.add_argument("--sink", type=int, default=4, help="attention sinks S (default 4)")
    ev.add_argument("--window", type=int, default=252, help="recent window W (default 252)")
    ev.add_argument("--compress-every", type=int, default=1, help="lazy eviction period R (default 1)")
    ev.add_argument("--overlap", type=int, default=0, help="extra recent tokens O for 'overlap'")
    ev.add_argument("--refresh", type=int, default=0, help="refresh budget B for 'refresh'")
    ev.add_argument("--auto-cap", type=int, default=None, help="shrink W so S+W+O+B <= this cap")
    ev.add_argument("--allow-beyond-context", action="store_true",
                    help="allow S+W beyond the model's trained positions (measured, flagged in the result)")
    ev.add_argument("--tokens", type=int, default=1024, help="first N tokens of the text (N-1 are scored)")
    ev.add_argument("--dtype", default="float32", help="float32 | float16 | bfloat16")
    ev.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ev.add_argument("--warmup", type=int, default=8, help="decode steps excluded from timing")
    ev.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ev.add_argument("--json", dest="json_out", default=None, help="write the result record(s) as JSON")
    ev.add_argument("--per-token", dest="per_token_out", default=None,
                    help="write per-token NLL, time, KV length, positions and prune events as JSON")
    ev.add_argument("--no-progress", action="store_true")
    ev.add_argument("--cache", choices=tuple(CACHE_KINDS), default="dynamic",
                    help="KV cache for the non-dense strategies: dynamic (cat/slice), static (preallocated, "
                         "in-place shift), ring (strict only, O(1) overwrite) (default: dynamic)")
    ev.add_argument("--compile", choices=COMPILE_MODES, default="none",
                    help="torch.compile the decode step: default (inductor, any cache), cudagraphs "
                         "(inductor + one captured CUDA graph; static/ring cache on CUDA), cudagraphs-gemv "
                         "(the same with batch-1 linears as inductor reductions), cudagraphs-triton (Triton "
                         "GEMV + split-KV attention, mask-free once the ring is full; streamllm.kernels), or the graph variants cudagraphs-uncompiled, "
                         "-maskfree, -matmul, -autotune (default: none)")
    ev.add_argument("--evaluator", choices=("parallel", "token"), default="parallel",
                    help="parallel: exact chunked PPL, TPOT per --timing (strategies it cannot honour, "
                         "e.g. refresh, use the token loop); token: the decode loop (PPL and TPOT) (default: parallel)")
    ev.add_argument("--chunk-size", type=int, default=512, help="queries per forward for --evaluator parallel")
    ev.add_argument("--timing", nargs="?", const="loop", default="slice", choices=("slice", "loop", "none"),
                    help="with --evaluator parallel, where TPOT comes from: slice (default: steady-state rounds of "
                         "real decode steps, streamllm.measure), loop (--timing alone: decode the whole text) or none")
    ev.add_argument("--int8", action="store_true",
                    help="INT8 weight-only MLP linears (torchao IntxWeightOnlyConfig version=2), logits checked finite")

    sub.add_parser("strategies", help="list the strategies")

    return parser


class UsageError(ValueError):
    """A command-line value that cannot work (size <= 0, output path is a directory, ...)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2) pointing at --help."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, _usage_line(message, self.prog))


def _usage_line(message: str, prog: str) -> str:
    return f"streamllm: error: {_one_line(message)} (see {prog} --help)\n"


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip()) or "no message"


# The errors that mean "bad input or environment": their message names the fix and the CLI prints
# it as one line with exit code 2. Anything else is a bug and keeps its traceback. (StrategyError
# covers the caches' UnsupportedCacheError, its subclass.)
USER_ERRORS: tuple[type[BaseException], ...] = (
    UsageError, StrategyError, DatasetError, ModelUnavailableError, ModelOptionError, UnsupportedRopeError,
    MissingDependencyError, NonFiniteLogitsError)


def dispatch(parser: argparse.ArgumentParser, commands: dict, user_errors: tuple[type[BaseException], ...],
             argv: Sequence[str] | None = None) -> int:
    """Parse, run the subcommand, and turn a user error into one line on stderr with exit code 2."""
    args, extra = parser.parse_known_args(argv)
    if extra:  # argparse would blame the top-level parser; point at the subcommand's help instead
        parser.exit(2, _usage_line(f"unrecognized arguments: {' '.join(extra)}", f"{parser.prog} {args.command}"))
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        return 130
    except user_errors as exc:
        print(f"streamllm: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2


COMMANDS = {"strategies": "run_strategies", "eval": "run_eval"}


def main(argv: Sequence[str] | None = None) -> int:
    """The library's own commands; the console script `streamllm` (streamllm.harness.cli) adds the
    harness's (report, count, bisect)."""
    return dispatch(build_parser(), {name: globals()[fn] for name, fn in COMMANDS.items()}, USER_ERRORS, argv)


def run_strategies(args: argparse.Namespace) -> int:
    for name, text in STRATEGIES.items():
        print(f"{name:10s} {text}")
    return 0


def check_eval_args(args: argparse.Namespace) -> None:
    """Sizes and output paths that cannot work, before anything is loaded."""
    minimums = {"tokens": (2, "one token fed, one scored"), "window": (1, None), "sink": (0, None),
                "compress_every": (1, "1 means evict every step"), "overlap": (0, None), "refresh": (0, None),
                "warmup": (0, None), "chunk_size": (1, None), "threads": (1, None), "auto_cap": (1, None)}
    for name, (least, why) in minimums.items():
        value = getattr(args, name)
        if value is not None and value < least:
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} must be >= {least} (got {value})" + (f"; {why}" if why else ""))
    for flag, path in (("--json", args.json_out), ("--per-token", args.per_token_out)):
        if path is not None and Path(path).is_dir():
            raise UsageError(f"{flag} {path} is a directory; pass a file path such as {Path(path) / 'out.json'}")


def run_eval(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console


    console = Console(stderr=True)
    defaults = {"sink": args.sink, "window": args.window, "compress_every": args.compress_every,
                "overlap": args.overlap, "refresh": args.refresh, "auto_cap": args.auto_cap}
    # Fail fast, before loading anything: sizes, strategies, device, dtype and the text.
    check_eval_args(args)
    specs = parse_strategies(args.strategy, defaults)
    # --cache applies to every strategy but dense, which stays the dynamic speedup reference.
    specs = [s if s.name == "dense" else dataclasses.replace(s, cache=args.cache).validate() for s in specs]
    device = resolve_device(args.device)
    parse_dtype(args.dtype)
    text = None if is_dummy(args.model) else load_text(args.dataset)
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    decoders = {}
    for spec in specs:
        mode, why = decode_mode_for(spec, args.compile)
        if why:
            console.print(why)
        decoders[spec] = decoder_factory(mode, device, spec.cache)
    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    if args.int8:
        apply_int8(loaded.model)
    for spec in specs:
        spec.validate(loaded.max_positions, allow_beyond_context=args.allow_beyond_context)
    if loaded.tokenizer is None or text is None:
        ids = synthetic_ids(loaded.model.config.vocab_size, args.tokens)
        dataset, sha = "synthetic", "synthetic"
    else:
        ids = tokenize(loaded.tokenizer, text, args.tokens)
        dataset, sha = text.name, text.sha256
    console.print(f"model {loaded.name} ({loaded.revision}) on {loaded.device}, {loaded.dtype}; "
                  f"{dataset}: {args.tokens} tokens, scoring x_1..x_{args.tokens - 1}; "
                  f"loaded in {time.perf_counter() - started:.1f}s")

    # dense first: it is the speedup reference
    specs.sort(key=lambda s: s.name != "dense")
    results, runtimes = [], []
    reference = None
    options = DecodeOptions(warmup_steps=args.warmup)
    for spec in specs:
        t0 = time.perf_counter()
        with _progress(console, spec.label(), args.tokens - 1, disabled=args.no_progress) as advance:
            result = _evaluate(args, console, loaded, ids, spec, dataset=dataset, dataset_sha256=sha,
                               options=options, reference=reference, progress=advance,
                               decoder_factory=decoders[spec])
        if spec.name == "dense":
            reference = result
            result.speedup = 1.0 if math.isfinite(result.tpot_ms_cycle_mean) else None
        elif reference is not None:
            result.speedup = speedup(reference, result)
            if result.trace is not None and reference.trace is not None and \
                    len(result.trace.nll) == len(reference.trace.nll):
                result.delta_spikes = delta_vs_dense(result.trace.nll, reference.trace.nll, result.trace.prune_steps,
                                                     cycle=max(1, spec.compress_every))
        results.append(result)
        runtimes.append(time.perf_counter() - t0)

    print_table = results_table(results, runtimes)
    if any(r.evaluator == "parallel" and not math.isfinite(r.tpot_ms_cycle_mean) for r in results):
        print_table.title += " | TPOT not measured (--timing none)"
    fallbacks = [r.strategy for r in results if r.evaluator == "token" and args.evaluator == "parallel"]
    if fallbacks:
        print_table.title += f" | token loop for {', '.join(fallbacks)}"
    out = Console()
    if not out.is_terminal:
        out = Console(width=160)  # files and pipes: do not squeeze the table to 80 columns
    out.print(print_table)
    if args.json_out:
        records = [dict(r.summary(), tpot_ms=r.summary()["tpot_ms_cycle_mean"], runtime_s=rt)
                   for r, rt in zip(results, runtimes, strict=True)]
        write_json_atomic(args.json_out, records[0] if len(records) == 1 else {"results": records})
    if args.per_token_out:
        traces = [r.per_token() for r in results]
        write_json_atomic(args.per_token_out, traces[0] if len(traces) == 1 else {"results": traces})
    return 0


def _evaluate(args: argparse.Namespace, console, loaded, ids, spec: StrategySpec, *, options, decoder_factory,
              **common):
    """One strategy with the chosen evaluator. TPOT always comes from real decode steps
    (streamllm.measure): with --evaluator parallel from a steady-state slice (--timing slice, the
    default) or the whole token loop (--timing loop); strategies the parallel evaluator cannot
    honour (refresh) run in the token loop, and the console and the result's notes say so."""

    def token_loop():
        return evaluate_tokens(loaded, ids, spec, options=options, decoder_factory=decoder_factory, **common)

    if args.evaluator == "token":
        return token_loop()
    ok, reason = supports_parallel(spec, loaded.model)
    if not ok:
        console.print(f"{spec.label()}: the parallel evaluator cannot honour it ({reason}); using the token loop")
        result = token_loop()
        result.notes.append(f"evaluated by the token loop: {reason}")
        return result
    result = evaluate_parallel(loaded, ids, spec, chunk_size=args.chunk_size, **common)
    if args.timing == "loop":
        return with_decode_timing(result, token_loop())
    if args.timing == "slice":
        timing = time_steady_state(loaded, ids.to(loaded.device), spec, decoder_factory=decoder_factory)
        return with_slice_timing(result, timing)
    return result


class _progress:
    """A rich progress bar on stderr for long runs; a no-op when disabled."""

    def __init__(self, console, label: str, total: int, disabled: bool):
        self.console, self.label, self.total, self.disabled = console, label, total, disabled

    def __enter__(self):
        if self.disabled:
            return lambda done: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.bar = Progress("[bold]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=self.console, transient=True)
        self.bar.__enter__()
        task = self.bar.add_task(self.label, total=self.total)
        every = max(1, self.total // 200)
        return lambda done: self.bar.update(task, completed=done) if done % every == 0 or done == self.total else None

    def __exit__(self, *exc):
        if not self.disabled:
            self.bar.__exit__(*exc)
        return False


if __name__ == "__main__":
    raise SystemExit(main())
