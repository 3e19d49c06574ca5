"""Steady-state TPOT, memory floor and per-kernel profile of bench catalog cases (default: `--sweep gpu`).

From the repository root (no install needed; `python -m` puts it on the path):

    python -m scripts.gpu_tpot --out $OUT                       # the gpu sweep, dummy Pythia-2.8b fp16, S=4 W=2048
    python -m scripts.gpu_tpot --cases ring-cudagraphs,noevict-ring-cudagraphs --profile ring-cudagraphs
    python -m scripts.gpu_tpot --list                           # the cases, their compile modes, and why any cannot run here
    python -m scripts.gpu_tpot --model dummy:smollm2-135m --device cpu --tokens 256 --window 60 --min-steps 8 --rounds 2

The cases are bench/catalog.py's: the regression checks of the same cases are `pytest bench
--sweep gpu`; this script looks inside a step. Each case is measured by
streamllm.profile.measure_variant (streamllm.measure's timed step, as in the suite) on the weights
its transform names (streamllm.profile.WeightSets: an INT8 case never shares a model with a float
one), next to the memory floor (streamllm.floor) and, with --profile, torch.profiler's table.
Cases this machine cannot run are listed with the reason streamllm.combinations gives. Ring ==
strict and the CUDA-graph crash reproduction are tests (tests/test_static_ring.py,
tests/test_gpu_variants.py), not part of this script.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, "") and importlib.util.find_spec("bench") is None:
    # Run as a file (`python scripts/gpu_tpot.py`): bench/ is never installed, so its checkout's
    # root goes on the path. `python -m scripts.gpu_tpot` from the root needs nothing.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.catalog import build_catalog, compile_mode, select, unavailable_reason  # noqa: E402
from streamllm.calibration import copy_bandwidth_GBps  # noqa: E402
from streamllm.data import load_text, synthetic_ids, tokenize  # noqa: E402
from streamllm.harness.fingerprint import fingerprint_id, hardware_fingerprint, package_version  # noqa: E402
from streamllm.models import resolve_device  # noqa: E402
from streamllm.profile import VariantRow, WeightSets, measure_hf_static, measure_variant, profile_lines  # noqa: E402
from streamllm.results import write_json_atomic  # noqa: E402

SCHEMA = "streamllm.gpu-tpot/2"
BASE = "noevict-ring-cudagraphs"  # the /noevict column: the same graph without eviction work


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="dummy:pythia-2.8b", help="as streamllm eval --model (default dummy:pythia-2.8b)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default=None, help="float16 on CUDA, float32 on CPU unless given")
    ap.add_argument("--sink", type=int, default=4)
    ap.add_argument("--window", type=int, default=2048)
    ap.add_argument("--tokens", type=int, default=4096, help="text length: fill + warm-up + timed + profiled steps")
    ap.add_argument("--dataset", default="book", help="text for a real model (dummy models use random ids)")
    ap.add_argument("--cases", default="sweep:gpu", help="catalog selection as pytest bench --strategies "
                    "(ids, default, all, sweep:NAME; default sweep:gpu)")
    ap.add_argument("--min-steps", type=int, default=32, help="steps per round, rounded up to whole eviction cycles")
    ap.add_argument("--rounds", type=int, default=4, help="timed rounds")
    ap.add_argument("--warmup-rounds", type=int, default=1, help="rounds before timing (compile, graph capture)")
    ap.add_argument("--profile", default="", help="comma list of case ids to profile (or 'all')")
    ap.add_argument("--profile-rounds", type=int, default=1)
    ap.add_argument("--hf-static", default=None, choices=("reduce-overhead", "eager", "none"),
                    help="the transformers reference row (StaticCache + torch.compile mode); default "
                         "reduce-overhead on CUDA, none on CPU (inductor compiles for minutes there)")
    ap.add_argument("--bandwidth", type=float, default=None, help="GB/s for the floor instead of a measured copy")
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="directory for gpu_tpot[-TAG].json")
    ap.add_argument("--tag", default="", help="suffix of the JSON file name (several runs in one --out)")
    ap.add_argument("--list", action="store_true")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    dtype = args.dtype or ("float16" if device.type == "cuda" else "float32")
    hf_mode = args.hf_static or ("reduce-overhead" if device.type == "cuda" else "none")
    cases = select(build_catalog(args.sink, args.window), args.cases, device.type)
    if args.list:
        for case in cases:
            reason = unavailable_reason(case, device.type)
            print(f"{case.id:34s} {compile_mode(case):22s} {case.transform or '':28s} {reason or ''}")
        return 0

    started = time.perf_counter()
    out_path = Path(args.out) / f"gpu_tpot{'-' + args.tag if args.tag else ''}.json"
    weights = WeightSets(args.model, dtype, device)
    loaded = weights.get(None)
    ids = (synthetic_ids(loaded.model.config.vocab_size, args.tokens) if loaded.tokenizer is None
           else tokenize(loaded.tokenizer, load_text(args.dataset), args.tokens))
    bandwidth = args.bandwidth or copy_bandwidth_GBps(device)
    profiled = {c.id for c in cases} if args.profile == "all" else {p.strip() for p in args.profile.split(",") if p}
    fingerprint = {**hardware_fingerprint(str(device)), "torchao": package_version("torchao")}
    report = {
        "schema": SCHEMA, "command": " ".join(["python -m scripts.gpu_tpot", *(sys.argv[1:] if argv is None else argv)]),
        "model": loaded.name, "model_revision": loaded.revision, "dtype": dtype, "device": str(device),
        "sink": args.sink, "window": args.window, "tokens": args.tokens, "min_steps": args.min_steps,
        "rounds": args.rounds, "warmup_rounds": args.warmup_rounds, "fingerprint": fingerprint,
        "fingerprint_id": fingerprint_id(fingerprint), "copy_bandwidth_GBps": bandwidth,
        "bandwidth_source": "--bandwidth" if args.bandwidth else "measured copy (read + write)",
        "rows": {}, "skipped": {}, "errors": {},
    }
    timing = {"min_steps": args.min_steps, "rounds": args.rounds, "warmup_rounds": args.warmup_rounds,
              "bandwidth_GBps": bandwidth}

    def record(name: str, measure) -> None:
        t0 = time.perf_counter()
        try:
            row: VariantRow = measure()
            report["rows"][name] = row.to_json()
            print(f"{name:34s} {row.tpot_ms:9.3f} ms/token (median {row.tpot_ms_median:.3f}, warm-up "
                  f"{row.warmup_ms / 1e3:.1f} s, {time.perf_counter() - t0:.0f} s)", flush=True)
        except Exception as exc:  # a survey: one variant failing must not cost the others' device time
            report["errors"][name] = traceback.format_exc()
            print(f"{name:34s} FAILED: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        report["elapsed_s"] = time.perf_counter() - started
        write_json_atomic(out_path, report)  # after every row: a run cut short keeps what it measured

    for case in cases:
        reason = unavailable_reason(case, device.type)
        if reason:
            report["skipped"][case.id] = reason
            continue
        record(case.id, lambda case=case: measure_variant(
            weights.get(case.transform), ids, case.spec, compile_mode(case), name=case.id, label=case.label,
            profile_rounds=args.profile_rounds if case.id in profiled else 0, **timing))
    if hf_mode != "none":
        record("hf-static-compile", lambda: measure_hf_static(
            loaded, ids, args.sink + args.window, mode=None if hf_mode == "eager" else hf_mode,
            profile_rounds=args.profile_rounds if "hf-static-compile" in profiled else 0, **timing))
    write_json_atomic(out_path, report)
    print_table(report)
    print(f"wrote {out_path}")
    return 1 if report["errors"] else 0


def print_table(report: dict) -> None:
    rows = report["rows"]
    base = rows.get(BASE, {}).get("tpot_ms")
    print(f"\n{report['model']} {report['dtype']} S={report['sink']} W={report['window']} on "
          f"{report['fingerprint'].get('gpu') or report['fingerprint'].get('cpu_model')}; copy bandwidth "
          f"{report['copy_bandwidth_GBps']:.1f} GB/s")
    print(f"{'case':34s} {'TPOT ms':>9s} {'median':>8s} {'p90':>8s} {'device':>8s} {'warm-up s':>9s} {'floor ms':>8s} "
          f"{'/floor':>6s} {'/noevict':>8s}  weights")
    for name, r in rows.items():
        floor = r["floor_ms"]
        device = f"{r['device_tpot_ms']:8.3f}" if r["device_tpot_ms"] is not None else f"{'-':>8s}"
        print(f"{name:34s} {r['tpot_ms']:9.3f} {r['tpot_ms_median']:8.3f} {r['tpot_ms_p90']:8.3f} {device} "
              f"{r['warmup_ms'] / 1e3:9.1f} {floor:8.3f} {r['tpot_ms'] / floor:6.2f} "
              f"{r['tpot_ms'] / base if base else float('nan'):8.3f}  {r['weights']['type']} {r['weights']['dtype']}")
    for name, r in rows.items():
        if r.get("profile"):
            print("\n".join(profile_lines(name, r["profile"])))
    for name, reason in report["skipped"].items():
        print(f"{name:34s} not run here: {reason}")
    for name, err in report["errors"].items():
        print(f"{name:34s} FAILED: {err.strip().splitlines()[-1][:200]}")


if __name__ == "__main__":
    raise SystemExit(main())
