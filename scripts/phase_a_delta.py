"""The exploration log's two lazy-eviction claims measured fairly (issue 24; docs/findings.md#spikes):

1. spikes on ΔNLL = NLL_strategy - NLL_dense at the same tokens (streamllm.spikes.summarize_delta),
   beside the old raw-NLL metric (streamllm.spikes.summarize), for strict and lazy c16/c32/c128;
   and the phase A question re-stated: lazy's ΔNLL over whole cycles minus strict's at lazy's
   mean cache size W + R/2 (streamllm.spikes.cycle_excess);
2. the per-step time split of lazy's saw-tooth (streamllm.steptime.split_timing_run): the prune
   step's cost in ms and as a multiple of a normal step, p99, TPOT and the prune's amortised share.

PPL comes from the exact parallel evaluator (the same per-token NLL as
`streamllm eval --evaluator parallel --timing none --per-token FILE`); step times from
streamllm.measure.time_steady_state (real decode steps at steady state, one thread).

    python scripts/phase_a_delta.py --out out/phase_a            # tables to stdout + out/phase_a/*.json
    python scripts/phase_a_delta.py --out out/phase_a --no-timing
    python scripts/phase_a_delta.py --out out/phase_a --per-token book=/tmp/book-pt.json,wiki=/tmp/wiki-pt.json
    python3 -m scripts.phase_a_delta --model dummy:pythia-2.8b --device cuda --dtype float16 --window 2044 \
        --timing-only --out $OUT                                 # step times only (dummy weights: no PPL)

(`python -m scripts.phase_a_delta` from the repository root, or PYTHONPATH=., so that the
checkout's streamllm is the one imported.)

Per-token traces are cached under --out (<dataset>-<tokens>.json) and reused when present. The
cache and the --per-token files are read through their models
(`streamllm.harness.schema.eval_output`): one that does not load is one line naming it and the
fix, exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from streamllm.data import load_text, synthetic_ids, tokenize
from streamllm.harness.schema.eval_output import EvalOutputError, EvalPerToken, PhaseATraces
from streamllm.harness.schema.loader import StoredFileError, load_stored
from streamllm.measure import time_steady_state
from streamllm.models import load_model
from streamllm.parallel import evaluate_parallel
from streamllm.spikes import Interval, cycle_excess, delta_nll, summarize, summarize_delta
from streamllm.steptime import split_timing_run
from streamllm.strategies import StrategySpec, make_strategy


def specs(sink: int, window: int, periods: list[int]) -> dict[str, StrategySpec]:
    out = {"dense": make_strategy("dense"), "strict": make_strategy("strict", sink=sink, window=window)}
    for r in periods:
        out[f"lazy-c{r}"] = make_strategy("lazy", sink=sink, window=window, compress_every=r)
        # strict at lazy's mean cache size: lazy holds S+W .. S+W+R-1 entries over a cycle
        out[f"strict-w{window + r // 2}"] = make_strategy("strict", sink=sink, window=window + r // 2)
    return out


def traces(args, loaded, dataset: str, chosen: dict[str, StrategySpec]) -> dict[str, dict]:
    """{case: {"nll": [...], "prune_steps": [...]}} from a cache file, a --per-token file, or the evaluator."""
    cache = Path(args.out) / f"{dataset}-{args.tokens}.json"
    if cache.exists():
        return load_stored(cache, PhaseATraces).model_dump()["traces"]
    given = dict(item.split("=", 1) for item in args.per_token.split(",")) if args.per_token else {}
    out: dict[str, dict] = {}
    if dataset in given:  # `streamllm eval --per-token` output: keyed by strategy label
        by_label = load_stored(given[dataset], EvalPerToken).by_label()
        for case, spec in chosen.items():
            r = by_label.get(spec.label())
            if r is None:
                raise EvalOutputError(f"{given[dataset]}: no trace of {spec.label()!r} (it holds {sorted(by_label)}): "
                                      f"evaluate it too with `streamllm eval ... --per-token {given[dataset]}`")
            out[case] = {"nll": r.nll, "prune_steps": r.prune_steps}
    else:
        text = load_text(dataset)
        ids = tokenize(loaded.tokenizer, text, args.tokens)
        for case, spec in chosen.items():
            result = evaluate_parallel(loaded, ids, spec, dataset=text.name, dataset_sha256=text.sha256)
            out[case] = {"nll": result.trace.nll, "prune_steps": result.trace.prune_steps}
            print(f"  {dataset} {case}: PPL {result.ppl:.3f}", file=sys.stderr)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(PhaseATraces.model_validate({"traces": out}, strict=False).to_json()))
    return out


def fmt(x: Interval | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    return f"{x.estimate:+.{digits}f} ({x.low:+.{digits}f}..{x.high:+.{digits}f})"


def spike_table(dataset: str, got: dict[str, dict], tokens: int, periods: list[int]) -> tuple[str, list[dict]]:
    dense = np.asarray(got["dense"]["nll"])[: tokens - 1]
    rows, lines = [], [
        f"#### {dataset}, first {tokens} tokens",
        "",
        "| case | events | ΔNLL level (steady) | event excess, 8 steps after vs 8 before | aligned ΔNLL peak "
        "| old: peak mean (raw NLL) | old: aligned peak (raw NLL) | PPL / dense |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case in ["strict", *[f"lazy-c{r}" for r in periods]]:
        nll = np.asarray(got[case]["nll"])[: tokens - 1]
        events = [e for e in got[case]["prune_steps"] if e < tokens - 1]
        new = summarize_delta(delta_nll(nll, dense), events)
        old = summarize(nll, events)
        ratio = float(np.exp(nll.mean() - dense.mean()))
        rows.append({"dataset": dataset, "tokens": tokens, "case": case, "delta": new.to_dict() if new else None,
                     "old": old.to_dict() if old else None, "ppl_over_dense": ratio})
        lines.append(f"| {case} | {new.events if new else 0} | {fmt(new.level) if new else '-'} | "
                     f"{fmt(new.excess) if new else '-'} | {fmt(new.aligned_peak) if new else '-'} | "
                     f"{old.peak_mean:.2f} | {_f(old.aligned_peak)} | {ratio:.4f} |")
    return "\n".join(lines), rows


def ci(c: tuple[float, float] | None, k: float = 1.0) -> str:
    return "" if c is None else f" ({c[0] * k:.2f}..{c[1] * k:.2f})"


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def phase_a_table(dataset: str, got: dict[str, dict], tokens: int, window: int,
                  periods: list[int]) -> tuple[str, list[dict]]:
    lines = [f"#### {dataset}, first {tokens} tokens: ΔNLL_lazy − ΔNLL_strict per token over lazy's whole cycles",
             "", "| lazy | cycles | vs strict at W+R/2 (same mean cache size) | vs strict at W |", "|---|---|---|---|"]
    rows = []
    for r in periods:
        lazy = got[f"lazy-c{r}"]
        nll = np.asarray(lazy["nll"])[: tokens - 1]
        events = [e for e in lazy["prune_steps"] if e < tokens - 1]
        if len(events) < 3:
            lines.append(f"| c{r} | {max(0, len(events) - 1)} | too few events | |")
            continue
        same = cycle_excess(nll, np.asarray(got[f"strict-w{window + r // 2}"]["nll"])[: tokens - 1], events)
        small = cycle_excess(nll, np.asarray(got["strict"]["nll"])[: tokens - 1], events)
        rows.append({"dataset": dataset, "tokens": tokens, "R": r, "cycles": len(events) - 1,
                     "vs_strict_mean_size": same.to_dict(), "vs_strict_w": small.to_dict()})
        lines.append(f"| c{r} | {len(events) - 1} | {fmt(same, 4)} | {fmt(small, 4)} |")
    return "\n".join(lines), rows


def timing_table(loaded, ids: torch.Tensor, sink: int, window: int, periods: list[int],
                 timed_steps: int) -> tuple[str, list[dict]]:
    lines = ["| case | steps | TPOT ms | median ms | p99 ms | normal step ms | prune step ms | prune / normal "
             "| prune share of TPOT |", "|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for case, spec in [("strict", make_strategy("strict", sink=sink, window=window)),
                       *[(f"lazy-c{r}", make_strategy("lazy", sink=sink, window=window, compress_every=r))
                         for r in periods]]:
        run = time_steady_state(loaded, ids, spec, min_steps=8, timed_steps=max(timed_steps, 8 * spec.compress_every))
        if run is None:
            lines.append(f"| {case} | text too short | | | | | | | |")
            continue
        s = split_timing_run(run)
        rows.append({"case": case, **s.to_dict()})
        share = "-" if s.prune_share is None else f"{100 * s.prune_share:.1f} %{ci(s.prune_share_ci, 100)}"
        multiple = "-" if s.prune_multiple is None else f"{s.prune_multiple:.2f}x{ci(s.prune_multiple_ci)}"
        lines.append(f"| {case} | {s.steps} | {s.mean_ms:.1f} | {s.median_ms:.1f} | {s.p99_ms:.1f} | "
                     f"{_f(s.normal_ms)} | {_f(s.prune_ms)} | {multiple} | {share} |")
        print(f"  timed {case}", file=sys.stderr)
    return "\n".join(lines), rows


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except StoredFileError as exc:  # a cache or --per-token file that does not load: one line, exit 2
        print(f"phase_a_delta: error: {exc}", file=sys.stderr)
        return 2


def run(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--datasets", default="book,wiki")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--also-tokens", default="1024", help="prefix lengths also tabulated (the bench's default)")
    parser.add_argument("--sink", type=int, default=4)
    parser.add_argument("--window", type=int, default=124)
    parser.add_argument("--periods", default="16,32,128")
    parser.add_argument("--out", default="out/phase_a")
    parser.add_argument("--per-token", default="", help="dataset=FILE,... from `streamllm eval --per-token`")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--timing-only", action="store_true", help="step times only (dummy weights: no PPL)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--timed-steps", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    periods = [int(p) for p in args.periods.split(",")]
    chosen = specs(args.sink, args.window, periods)
    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    dummy = loaded.tokenizer is None  # dummy weights: PPL is meaningless, step times only
    report: dict = {"args": vars(args), "spikes": [], "phase_a": [], "timing": [],
                    "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()}}
    lengths = [args.tokens] + [int(t) for t in args.also_tokens.split(",") if t and int(t) < args.tokens]
    if not (args.timing_only or dummy):
        print(f"## ΔNLL spikes (S={args.sink} W={args.window}, {args.model}, parallel evaluator)\n")
    for dataset in [] if args.timing_only or dummy else args.datasets.split(","):
        got = traces(args, loaded, dataset, chosen)
        for tokens in lengths:
            text, rows = spike_table(dataset, got, tokens, periods)
            print(text + "\n")
            report["spikes"] += rows
            text, rows = phase_a_table(dataset, got, tokens, args.window, periods)
            print(text + "\n")
            report["phase_a"] += rows
    if not args.no_timing:
        if dummy:
            ids = synthetic_ids(loaded.model.config.vocab_size, args.tokens)
        else:
            ids = tokenize(loaded.tokenizer, load_text(args.datasets.split(",")[0]), args.tokens)
        where = (torch.cuda.get_device_name(loaded.device) if loaded.device.type == "cuda"
                 else f"{args.threads} thread(s), {os.cpu_count()} CPUs, load {os.getloadavg()}")
        print(f"## Step time split ({args.model}, {args.dtype}, S={args.sink} W={args.window}, {where})\n")
        text, rows = timing_table(loaded, ids, args.sink, args.window, periods, args.timed_steps)
        print(text + "\n")
        report["timing"] = rows
    report["machine"]["load_average_end"] = os.getloadavg()
    out = Path(args.out) / ("phase_a_timing.json" if args.timing_only or dummy else "phase_a.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__")
                              else str(o)))
    print(f"(written {out})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
