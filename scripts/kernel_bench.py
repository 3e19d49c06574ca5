"""Per-kernel table (bytes, time, GB/s, % of copy bandwidth) and end-to-end TPOT for the Triton kernels (#13).

On the H100, one call from the repository root (reports/gpu-kernels.md has the results):

    PYTHONUNBUFFERED=1 python -m scripts.kernel_bench --out $OUT

1. copy bandwidth: a 1 GiB device-to-device copy, bytes read + written (streamllm.measure.copy_bandwidth_GBps);
2. GEMV on Pythia-2.8b's shapes (QKV 2560->7680, dense 2560->2560, MLP 2560->10240 with GELU and
   10240->2560, head 2560->50304), fp16, and split-KV attention over the ring's 2053 slots x 32 heads x 80:
   the error against a float32 reference, then every candidate config and cuBLAS / SDPA timed the
   same way: one CUDA graph calling the kernel on enough distinct weight (K/V) copies that they do
   not fit in L2 (>= 512 MB, as a decode step streams 5.3 GB), replayed; time per call = replay
   time / calls (median of 5 blocks of 10 replays). Graph replay is how the decode step runs, so
   launch gaps count as they do there;
3. end to end (--e2e): dummy Pythia-2.8b fp16, S=4 W=2048, steady-state TPOT of bench catalog
   cases through streamllm.profile.measure_variant (the suite's measurement): ring + compile + CUDA
   graph with the Triton kernels (ring-cudagraphs-triton) vs the same with cuBLAS/cuDNN
   (ring-cudagraphs) vs HF StaticCache + compile (hf-static-compile); the Triton one also without
   eviction (noevict-ring-cudagraphs-triton: S=0, W=2052) and profiled; fp16 logits of the Triton
   ring (CUDA graph of the eager forward) vs strict eager over 300 tokens (S=4, W=128).

`--emit-tuned` prints the best config per shape as a tuned_configs.TUNED entry. With `--sweep attention`
the last lines printed are, per attention row (mask / no mask), the 8 fastest correct configs with their
layout (splits, programs = KV heads x splits, tiles per split), warps, pipeline stages, merge, % of copy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from streamllm.kernels import decode_attention as attn
from streamllm.kernels import gemv as gv
from streamllm.kernels import ops
from streamllm.measure import copy_bandwidth_GBps
from streamllm.profile import profile_lines

GEMV_SHAPES = [  # name, N, K, bias, act (Pythia-2.8b)
    ("qkv 2560->7680", 7680, 2560, True, gv.ACT_NONE),
    ("dense 2560->2560", 2560, 2560, True, gv.ACT_NONE),
    ("mlp up 2560->10240 +gelu", 10240, 2560, True, gv.ACT_GELU),
    ("mlp down 10240->2560", 2560, 10240, True, gv.ACT_NONE),
    ("head 2560->50304", 50304, 2560, False, gv.ACT_NONE),
]
E2E_MODEL, E2E_SINK, E2E_WINDOW, E2E_TOKENS = "dummy:pythia-2.8b", 4, 2048, 4096
# heads, kv heads, slots, head dim: the ring of the end-to-end rows holds S + W + 1 slots (the
# token being fed has a slot of its own), so its attention calls have this shape and find the
# tuned entry the sweep emits. (Sessions before 5 swept 2052 slots: the same BLOCK_S tile layout
# for every candidate, but a TUNED name the ring never looked up.)
ATTN_SHAPE = (32, 32, E2E_SINK + E2E_WINDOW + 1, 80)
L2_SPAN = 512 << 20


def graph_time(calls: list[Callable[[], object]], blocks: int = 5, replays: int = 10) -> float:
    """Seconds per call: `calls` captured once in a CUDA graph, replayed, median over blocks."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for call in calls:  # compile, workspaces, cuBLAS handles: outside the capture
            call()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(blocks):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(replays):
            graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3 / (replays * len(calls)))
    del graph
    return float(np.median(times))


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    if out.isnan().any():
        return float("nan")
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def cublas_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, act: int) -> torch.Tensor:
    y = F.linear(x, w, b)
    return F.gelu(y) if act == gv.ACT_GELU else y


def _rated(row: dict, name: str, nbytes: float, bandwidth: float, other: str, best: object) -> dict:
    """Add GB/s and % of copy bandwidth for the Triton and the reference (cuBLAS / SDPA) times; print the row."""
    for key in ("triton_s", "cublas_s"):
        row[key.replace("_s", "_GBps")] = nbytes / row[key] / 1e9
        row[key.replace("_s", "_pct_copy")] = 100 * nbytes / row[key] / bandwidth
    print(f"{name:26s} {nbytes / 1e6:8.1f} MB  triton {row['triton_s'] * 1e6:7.1f} us "
          f"{row['triton_GBps']:6.0f} GB/s {row['triton_pct_copy']:5.1f}%   {other:6s} {row['cublas_s'] * 1e6:7.1f} us "
          f"{row['cublas_GBps']:6.0f} GB/s {row['cublas_pct_copy']:5.1f}%  err {row['rel_err']:.1e}  best {best}",
          flush=True)
    return row


def sweep_configs(row: dict, candidates: list, out: torch.Tensor, ref: torch.Tensor,
                  launch_one: Callable[[object], object], launches: Callable[[object], list]) -> tuple[dict, str, object]:
    """Check each candidate config once against `ref`, graph-time it over the weight copies; the
    correct ones (rel err < 5e-3) as {repr: result}, the fastest's repr and the config itself."""
    for cfg in candidates:
        try:
            out.fill_(float("nan"))  # an element the kernel leaves unwritten stays NaN and fails the check
            launch_one(cfg)
            err = rel_err(out, ref)
            row["configs"][repr(cfg)] = {"s": graph_time(launches(cfg)), "rel_err": err}
        except Exception as exc:  # noqa: BLE001 - a config that does not compile is a row, not a crash
            row["configs"][repr(cfg)] = {"error": repr(exc)[:300]}
    timed = {c: r for c, r in row["configs"].items() if "s" in r and r["rel_err"] < 5e-3}
    best = min(timed, key=lambda c: timed[c]["s"])
    return timed, best, next(c for c in candidates if repr(c) == best)


def bench_gemv(device: torch.device, bandwidth: float, tune_all: bool) -> list[dict]:
    rows = []
    g = torch.Generator(device=device).manual_seed(0)
    for name, n, k, has_bias, act in GEMV_SHAPES:
        nbytes = (n * k + k + n + (n if has_bias else 0)) * 2
        copies = max(2, math.ceil(L2_SPAN / (n * k * 2)))
        ws = [torch.randn(n, k, generator=g, device=device).mul_(0.02).half() for _ in range(copies)]
        b = torch.randn(n, generator=g, device=device).half() if has_bias else None
        x = torch.randn(k, generator=g, device=device).half()
        out = torch.full((n,), float("nan"), dtype=torch.float16, device=device)
        # correctness: the op as the model calls it (tuned config), then every candidate
        y = torch.ops.streamllm.gemv(x.view(1, 1, k), ws[0], b, act).view(-1)
        ref = gv.gemv_reference(x.float(), ws[0].float(), None if b is None else b.float(), act)
        chosen = ops.gemv_config(x, ws[0], b, act, None)
        row = {"kernel": name, "N": n, "K": k, "bytes": nbytes, "copies": copies, "rel_err": rel_err(y, ref),
               "tuner_choice": repr(chosen), "configs": {}}
        candidates = gv.candidate_configs(n, k) if tune_all else [chosen]
        timed, best, best_cfg = sweep_configs(
            row, candidates, out, ref,
            lambda cfg, x=x, w=ws[0], b=b, out=out, act=act: gv.launch_gemv(x, w, b, out, cfg, act),
            lambda cfg, x=x, ws=tuple(ws), b=b, out=out, act=act: [partial(gv.launch_gemv, x, w, b, out, cfg, act)
                                                                  for w in ws])
        # The end-to-end run uses the config that was fastest inside a graph.
        key = ops.gemv_key(ws[0], gated=False)
        ops.pin("gemv", key, best_cfg)
        row["tuned_key"] = ops.tuned_name("gemv", key)
        row["best_config"] = best
        row["best"] = dataclasses.asdict(best_cfg)
        row["triton_s"] = timed[best]["s"]
        row["triton_tuner_s"] = row["configs"].get(repr(chosen), {}).get("s")

        row["cublas_s"] = graph_time([partial(cublas_linear, x, w, b, act) for w in ws])
        rows.append(_rated(row, name, nbytes, bandwidth, "cuBLAS", best))
        del ws
    return rows


def bench_attention(device: torch.device, bandwidth: float, tune_all: bool) -> list[dict]:
    heads, kv_heads, slots, head_dim = ATTN_SHAPE
    g = torch.Generator(device=device).manual_seed(1)
    kv_bytes = 2 * kv_heads * slots * head_dim * 2
    copies = max(2, math.ceil(L2_SPAN / kv_bytes))
    ks = [torch.randn(1, kv_heads, slots, head_dim, generator=g, device=device).half() for _ in range(copies)]
    vs = [torch.randn(1, kv_heads, slots, head_dim, generator=g, device=device).half() for _ in range(copies)]
    q = torch.randn(1, heads, 1, head_dim, generator=g, device=device).half()
    scale = head_dim ** -0.5
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    rows = []
    for masked in (True, False):
        # The full ring's mask: every slot live (zeros), as FixedCache keeps it once full.
        mask = torch.zeros(1, 1, 1, slots, dtype=torch.float16, device=device) if masked else None
        nbytes = kv_bytes + 2 * heads * head_dim * 2 + (slots * 2 if masked else 0)
        out = torch.empty(1, 1, heads, head_dim, dtype=torch.float16, device=device)
        ref = attn.attention_reference(q.float(), ks[0].float(), vs[0].float(), mask, scale)
        y = torch.ops.streamllm.decode_attention(q, ks[0], vs[0], mask, scale)
        chosen = ops.attention_config(q, ks[0], vs[0], mask, scale)
        name = f"attention {slots}x{kv_heads}x{head_dim}{' +mask' if masked else ''}"
        row = {"kernel": name, "bytes": nbytes, "copies": copies, "rel_err": rel_err(y, ref),
               "tuner_choice": repr(chosen), "configs": {}}
        candidates = [chosen]
        if tune_all:
            # The tuner's own list for this device (split counts from its SM count), plus the tuner's
            # pick and the untuned default (the pre-sweep kernel's shape) as reference rows.
            candidates = attn.candidate_configs(slots, heads // kv_heads, kv_heads=kv_heads, head_dim=head_dim,
                                                sms=sms, elem_bytes=2)
            candidates += [c for c in (chosen, attn.default_config(slots, heads // kv_heads)) if c not in candidates]
        timed, best, best_cfg = sweep_configs(
            row, candidates, out, ref,
            lambda cfg, mask=mask, out=out: attn.launch_decode_attention(q, ks[0], vs[0], mask, scale, out, cfg),
            lambda cfg, mask=mask, out=out: [partial(attn.launch_decode_attention, q, ks[i], vs[i], mask, scale,
                                                     out, cfg) for i in range(copies)])
        key = ops.attention_key(q, ks[0], mask)
        ops.pin("attention", key, best_cfg)  # the end-to-end rows use the graph-timed best, per mask state
        row["tuned_key"] = ops.tuned_name("attention", key)
        row.update(best_config=best, best=dataclasses.asdict(best_cfg), triton_s=timed[best]["s"])
        row["triton_tuner_s"] = row["configs"].get(repr(chosen), {}).get("s")
        row["sweep"] = attention_sweep_rows(row, candidates, kv_heads, slots, nbytes, bandwidth)
        row["cublas_s"] = graph_time([partial(F.scaled_dot_product_attention, q, ks[i], vs[i], attn_mask=mask,
                                              scale=scale) for i in range(copies)])
        rows.append(_rated(row, name, nbytes, bandwidth, "SDPA", best))
    return rows


def attention_sweep_rows(row: dict, candidates: list, kv_heads: int, slots: int, nbytes: float,
                         bandwidth: float) -> list[dict]:
    """Every correct timed attention config, fastest first, with its layout and % of copy bandwidth."""
    rows = []
    for cfg in candidates:
        r = row["configs"].get(repr(cfg), {})
        if "s" not in r or not r["rel_err"] < 5e-3:
            continue
        tiles, splits = cfg.layout(slots)
        rows.append({"config": dataclasses.asdict(cfg), "s": r["s"], "rel_err": r["rel_err"], "splits": splits,
                     "programs": kv_heads * splits, "tiles_per_split": cfg.max_tiles_per_split(slots),
                     "GBps": nbytes / r["s"] / 1e9, "pct_copy": 100 * nbytes / r["s"] / bandwidth})
    rows.sort(key=lambda r: r["s"])
    return rows


def print_attention_sweep(report: dict, top: int = 8) -> None:
    """The fastest attention configs per attention row (printed last: the tail of the output)."""
    for r in report.get("kernels", []):
        sweep = r.get("sweep")
        if not sweep:
            continue
        bad = [c for c, v in r["configs"].items() if "s" not in v or not v["rel_err"] < 5e-3]
        print(f"\n{r['kernel']}: top {min(top, len(sweep))} of {len(sweep)} correct configs "
              f"({len(bad)} failed or wrong), {r['bytes'] / 1e6:.1f} MB, {r.get('cublas_s', 0) * 1e6:.1f} us SDPA")
        print(f"{'us':>6s} {'%copy':>6s} {'GB/s':>6s} {'block_s':>7s} {'splits':>6s} {'progs':>5s} {'tiles':>5s} "
              f"{'warps':>5s} {'stages':>6s} {'merge':>6s} {'rel err':>8s}")
        for x in sweep[:top]:
            c = x["config"]
            print(f"{x['s'] * 1e6:6.2f} {x['pct_copy']:6.1f} {x['GBps']:6.0f} {c['block_s']:7d} "
                  f"{x['splits']:6d} {x['programs']:5d} {x['tiles_per_split']:5d} {c['num_warps']:5d} "
                  f"{str(c['num_stages']):>6s} {c['merge']:>6s} {x['rel_err']:8.1e}")


# -- end to end -------------------------------------------------------------------------------------
# The names reports/gpu-kernels.md's commands use -> the bench catalog cases they now are.
E2E_ALIASES = {"strict-ring-triton": "ring-cudagraphs-triton", "strict-ring-graph": "ring-cudagraphs",
               "noevict-ring-triton": "noevict-ring-cudagraphs-triton", "noevict-ring-graph": "noevict-ring-cudagraphs"}


def end_to_end(device: torch.device, args, report: dict, save: Callable[[], None]) -> None:
    """Steady-state TPOT of catalog cases (and the HF reference) through streamllm.profile, as the suite times them."""
    from bench.catalog import build_catalog, compile_mode
    from streamllm.data import synthetic_ids
    from streamllm.profile import WeightSets, measure_hf_static, measure_variant

    weights = WeightSets(E2E_MODEL, "float16", device)
    loaded = weights.get(None)
    ids = synthetic_ids(loaded.model.config.vocab_size, E2E_TOKENS)
    cases = {case.id: case for case in build_catalog(E2E_SINK, E2E_WINDOW)}
    bandwidth = report["copy_bandwidth_Bps"] / 1e9
    timing = {"min_steps": args.min_steps, "rounds": args.rounds, "warmup_rounds": args.warmup_rounds,
              "bandwidth_GBps": bandwidth}
    profiled = {E2E_ALIASES.get(v, v) for v in args.profile.split(",")}
    e2e = report["e2e"] = {"model": E2E_MODEL, "sink": E2E_SINK, "window": E2E_WINDOW, "results": {}, "errors": {}}

    if args.equiv_tokens:
        try:
            e2e["equivalence"] = equivalence(loaded.model, device, args.equiv_tokens)
        except Exception:
            e2e["errors"]["equivalence"] = traceback.format_exc()
            print(e2e["errors"]["equivalence"], flush=True)
        save()

    def measure(name: str):
        profile_rounds = 1 if name in profiled else 0
        if name == "hf-static-compile":
            return measure_hf_static(loaded, ids, E2E_SINK + E2E_WINDOW, profile_rounds=profile_rounds, **timing)
        case = cases[name]
        return measure_variant(weights.get(case.transform), ids, case.spec, compile_mode(case), name=name,
                               label=case.label, profile_rounds=profile_rounds, **timing)

    for name in [E2E_ALIASES.get(v, v) for v in args.e2e.split(",") if v]:
        t0 = time.perf_counter()
        try:
            row = measure(name)
            e2e["results"][name] = row.to_json()
            print(f"{name:32s} {row.tpot_ms:8.3f} ms/token (median {row.tpot_ms_median:.3f}, warm-up "
                  f"{row.warmup_ms / 1e3:.1f}s, {time.perf_counter() - t0:.0f}s)", flush=True)
        except Exception:
            e2e["errors"][name] = traceback.format_exc()
            print(f"{name} FAILED\n{e2e['errors'][name][-3000:]}", flush=True)
        torch.cuda.empty_cache()
        save()


def equivalence(model: torch.nn.Module, device: torch.device, tokens: int) -> dict:
    """fp16 logits: ring through a CUDA graph (eager forward) with the kernels vs strict eager."""
    from streamllm.decode import EagerDecoder, GraphDecoder, make_cache
    from streamllm.kernels.integration import TritonGraphDecoder
    from streamllm.strategies import make_strategy

    ids = torch.randint(0, model.config.vocab_size, (tokens,), generator=torch.Generator().manual_seed(7)).to(device)
    strict = make_strategy("strict", sink=4, window=128)
    ring = dataclasses.replace(strict, cache="ring")

    def logits_of(spec, factory) -> torch.Tensor:
        cache = make_cache(spec, model)
        decoder = factory(model, cache)
        out = []
        with torch.inference_mode():
            for t in range(tokens - 1):
                logits, _ = decoder.step(ids[t : t + 1].view(1, 1))
                out.append(logits.float())
        return torch.stack(out)

    ref = logits_of(strict, EagerDecoder)
    ring_cublas = logits_of(ring, lambda m, c: GraphDecoder(m, c, compiled=False))
    ring_triton = logits_of(ring, lambda m, c: TritonGraphDecoder(m, c, compiled=False))
    model.float()
    try:
        ref32 = logits_of(strict, EagerDecoder)
    finally:
        model.half()
    target = ids[1:].long()

    def compare(a: torch.Tensor, b: torch.Tensor) -> dict:
        nll_a = -torch.log_softmax(a, -1).gather(-1, target[:, None]).squeeze(-1)
        nll_b = -torch.log_softmax(b, -1).gather(-1, target[:, None]).squeeze(-1)
        return {"max_abs_logit_diff": float((a - b).abs().max()), "rel_l2": float((a - b).norm() / b.norm()),
                "argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
                "max_abs_nll_diff": float((nll_a - nll_b).abs().max()),
                "mean_abs_nll_diff": float((nll_a - nll_b).abs().mean())}

    result = {"sink": 4, "window": 128, "tokens": tokens,
              "ring_triton_vs_strict_fp16": compare(ring_triton, ref),
              "ring_triton_vs_strict_fp32": compare(ring_triton, ref32),
              "ring_cublas_vs_strict_fp32": compare(ring_cublas, ref32),
              "strict_fp16_vs_strict_fp32": compare(ref, ref32)}
    for key, r in result.items():
        if isinstance(r, dict):
            print(f"  {key:30s} max|dlogit| {r['max_abs_logit_diff']:.3g} rel {r['rel_l2']:.2g} "
                  f"argmax {r['argmax_agreement']:.4f} max|dNLL| {r['max_abs_nll_diff']:.3g}", flush=True)
    return result


def print_tables(report: dict) -> None:
    bw = report["copy_bandwidth_Bps"]
    print(f"\n{report['device']}  torch {report['torch']}  triton {report['triton']}  copy {bw / 1e12:.3f} TB/s")
    print(f"{'kernel':28s} {'MB':>7s} {'triton us':>9s} {'GB/s':>6s} {'%copy':>6s} {'ref us':>8s} {'GB/s':>6s} "
          f"{'%copy':>6s} {'rel err':>8s}")
    for r in report["kernels"]:
        print(f"{r['kernel']:28s} {r['bytes'] / 1e6:7.1f} {r['triton_s'] * 1e6:9.1f} {r['triton_GBps']:6.0f} "
              f"{r['triton_pct_copy']:6.1f} {r['cublas_s'] * 1e6:8.1f} {r['cublas_GBps']:6.0f} "
              f"{r['cublas_pct_copy']:6.1f} {r['rel_err']:8.1e}")
    e2e = report.get("e2e")
    if e2e:
        for name, r in e2e["results"].items():
            print(f"{name:32s} {r['tpot_ms']:8.3f} median {r['tpot_ms_median']:.3f} p90 {r['tpot_ms_p90']:.3f} "
                  f"warm-up {r['warmup_ms'] / 1e3:.0f}s  floor {r['floor_ms']:.3f} ({r['step_bytes'] / 1e9:.2f} GB)"
                  f"  /floor {r['tpot_ms'] / r['floor_ms']:.2f}")
        for name, r in e2e["results"].items():
            if r.get("profile"):
                print("\n".join(profile_lines(name, r["profile"], top=12)))
        for name, err in e2e["errors"].items():
            print(f"{name} FAILED: {err.strip().splitlines()[-1][:200]}")


def emit_tuned(report: dict) -> dict:
    """Best config per shape, as tuned_configs.TUNED[device] entries."""
    return {report["device"]: {r["tuned_key"]: r["best"] for r in report["kernels"]}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--sweep", default="gemv,attention",
                    help="kernels whose every candidate config is timed ('' : only the tuner's choice)")
    ap.add_argument("--e2e", default="ring-cudagraphs-triton,ring-cudagraphs,hf-static-compile,"
                    "noevict-ring-cudagraphs-triton",
                    help="comma list of bench catalog case ids and/or hf-static-compile ('' for none)")
    ap.add_argument("--profile", default="ring-cudagraphs-triton")
    ap.add_argument("--min-steps", type=int, default=32, help="steps per round (whole eviction cycles)")
    ap.add_argument("--rounds", type=int, default=4, help="timed rounds")
    ap.add_argument("--warmup-rounds", type=int, default=1)
    ap.add_argument("--equiv-tokens", type=int, default=300)
    ap.add_argument("--emit-tuned", action="store_true")
    args = ap.parse_args(argv)
    device = torch.device("cuda")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    import triton

    report = {"schema": "streamllm.kernel-bench/2", "command": " ".join(["python -m scripts.kernel_bench",
                                                                        *(argv if argv is not None else sys.argv[1:])]),
              "device": torch.cuda.get_device_name(device), "torch": torch.__version__, "triton": triton.__version__}
    started = time.perf_counter()

    def save() -> None:
        report["elapsed_s"] = time.perf_counter() - started
        report["tuning_log"] = ops.TUNING_LOG
        (out_dir / "kernel_bench.json").write_text(json.dumps(report, indent=1, default=str))

    report["copy_bandwidth_Bps"] = bw = copy_bandwidth_GBps(device, nbytes=1 << 30) * 1e9  # 1 GiB: launch cost < 1 %
    print(f"copy bandwidth {bw / 1e12:.3f} TB/s (read + write)", flush=True)
    report["kernels"] = bench_gemv(device, bw, "gemv" in args.sweep)
    save()
    report["kernels"] += bench_attention(device, bw, "attention" in args.sweep)
    save()
    if args.emit_tuned:
        report["tuned"] = emit_tuned(report)
        print("TUNED =", json.dumps(report["tuned"]))
    if args.e2e:
        end_to_end(device, args, report, save)
    save()
    print_tables(report)
    print_attention_sweep(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
