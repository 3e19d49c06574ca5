"""Steady-state TPOT of every cache / compile / INT8 variant, the bandwidth floor, ring == strict in fp16.

Run on a GPU (the H100 numbers in reports/gpu-h100.md came from this script):

    PYTHONUNBUFFERED=1 python scripts/gpu_tpot.py --out $OUT

Model: a shipped config with dummy weights (default Pythia-2.8b, fp16), 4 sinks + 2048 window.
Steady state: each cache is primed with random K/V as if `--prime` tokens had streamed through
it (full cache, right after an eviction, so lazy cycles are whole), then `--warmup` decode steps
(compile and graph capture included, reported separately) and `--steps` timed steps. TPOT is
total time / steps over whole lazy cycles (design-notes §4), with per-step CUDA-event samples
kept in the JSON. Dense keeps all tokens: it starts at the same S + W entries and grows by
warmup + steps while timed.

The floor is (bytes of weights read per token + bytes of K/V read) / measured device-copy
bandwidth (bytes read + written). The equivalence check runs strict (dynamic, eager) and ring
(CUDA graph) on the same tokens in fp16 and compares logits per step, next to static-vs-dynamic
strict as the fp16 noise reference (same semantics, different arithmetic order).

On CPU with `--config tiny` it runs end to end in about a minute, to catch mistakes before
spending device time (`--variants` picks a subset; `--list` names them).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamllm.fingerprint import fingerprint_id, hardware_fingerprint  # noqa: E402
from streamllm.caches import FixedCache, StreamingCache, make_cache  # noqa: E402
from streamllm.compat import cache_kwargs  # noqa: E402
from streamllm.decode import CompiledDecoder, EagerDecoder, GraphDecoder  # noqa: E402
from streamllm.models import LoadedModel, load_dummy  # noqa: E402
from streamllm.strategies import StrategySpec, make_strategy  # noqa: E402
from streamllm.transforms import apply_int8  # noqa: E402

TINY_CONFIG = {  # CPU smoke test: GPT-NeoX with partial rotary, seconds per variant
    "model_type": "gpt_neox", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "intermediate_size": 128, "vocab_size": 97, "rotary_pct": 0.25, "max_position_embeddings": 512,
    "use_parallel_residual": True, "tie_word_embeddings": False,
}


@dataclass
class Setup:
    loaded: LoadedModel
    sink: int
    window: int
    steps: int
    warmup: int
    prime: int
    device: torch.device
    sync: Callable[[], None]
    tokens: torch.Tensor  # random ids for warm-up + timed steps
    int8: bool = False
    profile: tuple[str, ...] = ()  # variants to profile after timing


@dataclass
class Timing:
    label: str
    cache: str
    decoder: str
    tpot_ms: float  # total / steps over whole cycles
    median_ms: float
    p90_ms: float
    max_ms: float
    warmup_s: float  # warm-up steps incl. compile and capture
    steps: int
    kv_slots: int
    notes: list[str] = field(default_factory=list)
    step_ms: list[float] = field(default_factory=list)
    profile: dict | None = None


# -- model and cache set-up -------------------------------------------------------------------
def load(config: str, dtype: torch.dtype, device: torch.device) -> LoadedModel:
    if config != "tiny":
        return load_dummy(config, dtype, device)
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(**TINY_CONFIG)
    cfg._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype).to(device).eval().requires_grad_(False)
    return LoadedModel(model, None, "dummy:tiny", "tiny", dtype, device, dummy_weights=True)


def prime_dynamic(cache: StreamingCache, model: torch.nn.Module, length: int, seen: int) -> None:
    """Timing only: `length` random entries in every DynamicLayer, as if `seen` tokens streamed."""
    config = model.config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    emb = model.get_input_embeddings().weight
    for layer in cache.layers:
        keys = torch.randn(1, heads, length, head_dim, dtype=emb.dtype, device=emb.device)
        values = torch.randn_like(keys)
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
    cache.seen = seen
    sink = cache.spec.sink if cache.spec.name != "dense" else 0
    cache.slots = list(range(sink)) + list(range(seen - (length - sink), seen))


def make_primed_cache(setup: Setup, spec: StrategySpec):
    model = setup.loaded.model
    cache = make_cache(spec, model)
    kept = setup.sink + setup.window
    if isinstance(cache, FixedCache):
        cache.prime_random(setup.prime)
    else:
        prime_dynamic(cache, model, kept, setup.prime if spec.name != "dense" else kept)
    return cache


def decoder_for(kind: str, model: torch.nn.Module, cache) -> object:
    if kind.endswith("+gemv"):  # graph[:ATTENTION]+gemv: linears as Triton reductions (streamllm.gemv)
        attention = kind.removesuffix("+gemv").partition(":")[2] or None
        return GraphDecoder(model, cache, compiled=True, attention=attention, gemv=True)
    if kind == "eager":
        return EagerDecoder(model, cache)
    if kind == "compile":
        return CompiledDecoder(model, cache)
    if kind == "graph":
        return GraphDecoder(model, cache, compiled=True)
    if kind == "graph-eager":
        return GraphDecoder(model, cache, compiled=False)
    if kind == "graph-autotune":
        return GraphDecoder(model, cache, compiled=True, compile_mode="max-autotune-no-cudagraphs")
    if kind.startswith("graph:"):  # graph:ATTENTION, e.g. graph:sdpa-maskfree, graph:eager
        return GraphDecoder(model, cache, compiled=True, attention=kind.partition(":")[2])
    raise ValueError(kind)


# -- timing -------------------------------------------------------------------------------------
def time_decoder(setup: Setup, label: str, cache, decoder, decoder_kind: str) -> Timing:
    tokens = setup.tokens
    cuda = setup.device.type == "cuda"
    with torch.inference_mode():
        setup.sync()
        t0 = time.perf_counter()
        for i in range(setup.warmup):
            decoder.step(tokens[i : i + 1].view(1, 1))
        setup.sync()
        warmup_s = time.perf_counter() - t0
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(setup.steps)] if cuda else []
        host_ms = []
        setup.sync()
        t0 = time.perf_counter()
        for i in range(setup.steps):
            token = tokens[setup.warmup + i : setup.warmup + i + 1].view(1, 1)
            if cuda:
                events[i][0].record()
                decoder.step(token)
                events[i][1].record()
            else:
                s = time.perf_counter()
                decoder.step(token)
                host_ms.append((time.perf_counter() - s) * 1e3)
        setup.sync()
        total_ms = (time.perf_counter() - t0) * 1e3
    step_ms = [a.elapsed_time(b) for a, b in events] if cuda else host_ms
    arr = np.asarray(step_ms)
    return Timing(
        label=label, cache=getattr(cache, "kind", "dynamic"), decoder=decoder_kind,
        tpot_ms=total_ms / setup.steps, median_ms=float(np.median(arr)), p90_ms=float(np.percentile(arr, 90)),
        max_ms=float(arr.max()), warmup_s=warmup_s, steps=setup.steps,
        kv_slots=int(cache.num_slots) if isinstance(cache, FixedCache) else setup.sink + setup.window,
        step_ms=[round(x, 4) for x in step_ms],
    )


def run_variant(setup: Setup, spec: StrategySpec, decoder_kind: str, label: str) -> Timing:
    # "graph@math": the same decoder with SDPA pinned to one backend while compiling and capturing.
    decoder_kind, _, backend = decoder_kind.partition("@")
    cache = make_primed_cache(setup, spec)
    decoder = decoder_for(decoder_kind, setup.loaded.model, cache)
    if backend:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        torch._dynamo.reset()  # the backend is chosen while tracing: trace again under it

        with sdpa_kernel(getattr(SDPBackend, backend.upper())):
            timing = time_decoder(setup, label, cache, decoder, f"{decoder_kind}@{backend}")
    else:
        timing = time_decoder(setup, label, cache, decoder, decoder_kind)
    if label in setup.profile:
        timing.profile = profile_steps(setup, decoder)
    if spec.name == "dense":
        timing.notes.append(f"dense grows from {setup.sink + setup.window} to "
                            f"{setup.sink + setup.window + setup.warmup + setup.steps} entries while timed")
    del decoder, cache
    return timing


def run_hf_static_compiled(setup: Setup, label: str) -> Timing:
    """Reference: transformers' StaticCache + torch.compile(mode="reduce-overhead"), dense."""
    from transformers import StaticCache

    model = setup.loaded.model
    kept = setup.sink + setup.window
    max_len = kept + setup.warmup + setup.steps + 1
    cache = StaticCache(config=model.config, max_cache_len=max_len)
    forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
    prompt = torch.randint(0, model.config.vocab_size, (1, kept), device=setup.device)
    with torch.inference_mode():
        model(input_ids=prompt, **cache_kwargs(model, cache))  # prefill, eager
    position = [kept]

    class Step:
        def step(self, token):
            pos = torch.tensor([[position[0]]], device=setup.device)
            out = forward(input_ids=token, position_ids=pos, **cache_kwargs(model, cache))
            position[0] += 1
            return out.logits[0, -1].clone()  # a graph-owned output must not outlive the next replay

    timing = time_decoder(setup, label, cache, Step(), "hf-reduce-overhead")
    timing.kv_slots = max_len
    timing.notes.append(f"HF StaticCache(max_cache_len={max_len}) prefilled with {kept} tokens; attends to all slots")
    return timing


def profile_steps(setup: Setup, decoder, steps: int = 8) -> dict:
    """Device time per kernel over `steps` more steps (graph replays are traced kernel by kernel)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if setup.device.type == "cuda" else [])
    token = setup.tokens[:1].view(1, 1)
    with torch.inference_mode(), profile(activities=activities) as prof:
        for _ in range(steps):
            decoder.step(token)
        setup.sync()
    rows = []
    for event in prof.key_averages():
        device_us = getattr(event, "self_device_time_total", 0) or getattr(event, "self_cuda_time_total", 0)
        if device_us > 0:
            rows.append({"name": event.key[:120], "count": event.count, "us_per_step": device_us / steps})
    rows.sort(key=lambda r: -r["us_per_step"])
    groups: dict[str, float] = {}
    for r in rows:
        name = r["name"].lower()
        if any(k in name for k in ("fmha", "attention", "flash", "attn")):
            group = "attention"
        elif any(k in name for k in ("gemv", "gemm", "cutlass", "cublas", "sm90_", "xmma", "mm_")):
            group = "matmul"
        elif name.startswith("triton"):
            group = "triton (fused elementwise/norm/scatter)"
        else:
            group = "other"
        groups[group] = groups.get(group, 0.0) + r["us_per_step"]
    kernels = sum(r["count"] for r in rows if not r["name"].startswith(("cuda", "Memcpy", "Memset"))) / steps
    return {"us_per_step_by_group": groups, "device_us_per_step": sum(groups.values()),
            "kernels_per_step": kernels, "top": rows[:30]}


# -- floor --------------------------------------------------------------------------------------
def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Bytes read + written per second by a device-to-device copy (median of 10 after warm-up)."""
    if device.type != "cuda":
        return float("nan")
    src = torch.empty(nbytes // 2, dtype=torch.float16, device=device).normal_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(10):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    del src, dst
    return 2 * nbytes / float(np.median(times))


def weight_bytes(model: torch.nn.Module) -> dict:
    """Bytes one decode step reads: every weight once, but only one row of the input embedding."""
    total = 0
    for p in model.parameters():
        size = _tensor_bytes(p)
        if p is model.get_input_embeddings().weight:
            size = size // p.shape[0]
        total += size
    return {"weights": total}


def _tensor_bytes(t: torch.Tensor) -> int:
    inner = [getattr(t, a) for a in ("qdata", "scale", "zero_point") if isinstance(getattr(t, a, None), torch.Tensor)]
    if inner:  # torchao tensor subclass: what is stored is what is read
        return sum(x.numel() * x.element_size() for x in inner)
    return t.numel() * t.element_size()


def kv_bytes(model: torch.nn.Module, slots: int, dtype: torch.dtype) -> int:
    c = model.config
    heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 2 * c.num_hidden_layers * heads * slots * head_dim * torch.tensor([], dtype=dtype).element_size()


# -- equivalence --------------------------------------------------------------------------------
def equivalence(setup: Setup, window: int, tokens: int, extra_kinds: tuple[str, ...] = ()) -> dict:
    """Ring (CUDA graph when on CUDA) vs strict (dynamic, eager) logits per step, in the model dtype."""
    model = setup.loaded.model
    ids = torch.randint(0, model.config.vocab_size, (tokens,), generator=torch.Generator().manual_seed(7))
    ids = ids.to(setup.device)
    strict = make_strategy("strict", sink=setup.sink, window=window)

    def logits_of(spec: StrategySpec, kind: str) -> torch.Tensor:
        cache = make_cache(spec, model)
        decoder = decoder_for(kind, model, cache)
        out = []
        with torch.inference_mode():
            for t in range(tokens - 1):
                logits, _ = decoder.step(ids[t : t + 1].view(1, 1))
                out.append(logits.float())
        return torch.stack(out)

    graph_kind = "graph-eager" if setup.device.type == "cuda" else "eager"
    ref = logits_of(strict, "eager")
    ring = logits_of(dataclasses.replace(strict, cache="ring"), graph_kind)
    # fp noise reference: strict again with an fp32 copy of the same weights
    model_dtype = next(model.parameters()).dtype
    model.float()
    try:
        ref32 = logits_of(strict, "eager")
    finally:
        model.to(model_dtype)
    target = ids[1:].long()

    def compare(a: torch.Tensor, b: torch.Tensor) -> dict:
        nll_a = -torch.log_softmax(a, -1).gather(-1, target[:, None]).squeeze(-1)
        nll_b = -torch.log_softmax(b, -1).gather(-1, target[:, None]).squeeze(-1)
        return {
            "max_abs_logit_diff": float((a - b).abs().max()),
            "rel_l2": float((a - b).norm() / b.norm()),
            "argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
            "max_abs_nll_diff": float((nll_a - nll_b).abs().max()),
            "mean_abs_nll_diff": float((nll_a - nll_b).abs().mean()),
            "logit_scale": float(b.abs().max()),
        }

    extra = {f"ring[{kind}]_vs_strict_fp32": compare(logits_of(dataclasses.replace(strict, cache="ring"), kind), ref32)
             for kind in extra_kinds}
    return {
        "sink": setup.sink, "window": window, "tokens": tokens, "dtype": str(setup.loaded.dtype),
        "ring_decoder": graph_kind,
        "ring_vs_strict": compare(ring, ref),
        "ring_vs_strict_fp32": compare(ring, ref32),
        "strict_vs_strict_fp32": compare(ref, ref32),
        **extra,
    }


# -- the log's CUDA-graph crash ---------------------------------------------------------------------
def cudagraph_repro(device: torch.device) -> dict:
    """Which ways of keeping a tensor made inside a reduce-overhead graph raise 'overwritten'.

    Each pattern runs warm-up, record and replays of one tiny compiled function; a pattern that
    raises reproduces the log's `RuntimeError: accessing tensor output of CUDAGraphs that has
    been overwritten`. The supported paths avoid all three (static buffers written in place,
    RoPE computed from a position tensor, outputs cloned).
    """
    if device.type != "cuda":
        return {"skipped": "needs CUDA"}
    mark = torch.compiler.cudagraph_mark_step_begin
    results = {}

    def attempt(name: str, body: Callable[[], None]) -> None:
        torch._dynamo.reset()
        try:
            body()
            results[name] = "no error"
        except RuntimeError as exc:
            results[name] = str(exc).splitlines()[0][:200]

    def held_logits() -> None:
        step = torch.compile(lambda x: x @ x.T, mode="reduce-overhead")
        x = torch.randn(16, 16, device=device)
        kept = []
        for _ in range(4):
            mark()
            kept.append(step(x))  # the evaluator keeping logits across steps
        _ = kept[0].sum().item()

    def rope_table_cached() -> None:
        class Rope:  # the old pattern: tables rebuilt inside the forward, kept on the module
            table = None

        rope = Rope()

        def forward(x, pos):
            if rope.table is None:
                rope.table = torch.outer(torch.arange(64, device=x.device, dtype=x.dtype), x[0])
            return x * rope.table[pos].cos()

        step = torch.compile(forward, mode="reduce-overhead")
        x = torch.randn(1, 8, device=device)
        for i in range(4):
            mark()
            step(x, torch.tensor([i], device=device))

    def cat_cache() -> None:
        step = torch.compile(lambda cache, x: torch.cat((cache[:, 1:], x), dim=1), mode="reduce-overhead")
        cache = torch.randn(1, 8, device=device)
        for _ in range(4):
            mark()
            new = step(cache, torch.randn(1, 1, device=device))
            _ = cache.sum().item()  # the previous step's cache is read after the next replay
            cache = new

    attempt("held_logits", held_logits)
    attempt("rope_table_kept_on_module", rope_table_cached)
    attempt("torch_cat_cache_fed_back", cat_cache)
    torch._dynamo.reset()
    return results


# -- the variant table ----------------------------------------------------------------------------
def variants(sink: int, window: int) -> dict[str, tuple[StrategySpec | None, str]]:
    strict = make_strategy("strict", sink=sink, window=window)
    lazy16 = make_strategy("lazy", sink=sink, window=window, compress_every=16)
    lazy32 = make_strategy("lazy", sink=sink, window=window, compress_every=32)
    dense = make_strategy("dense")
    # The ring's own no-eviction twin: same slot count, no sinks to re-rotate, absolute frame.
    no_evict = make_strategy("window", sink=0, window=sink + window)
    ring = dataclasses.replace(strict, cache="ring")
    return {
        "dense-eager": (dense, "eager"),
        "strict-dynamic-eager": (strict, "eager"),
        "lazy-c16-dynamic-eager": (lazy16, "eager"),
        "lazy-c32-dynamic-eager": (lazy32, "eager"),
        "strict-static-eager": (dataclasses.replace(strict, cache="static"), "eager"),
        "lazy-c32-static-eager": (dataclasses.replace(lazy32, cache="static"), "eager"),
        "strict-ring-eager": (ring, "eager"),
        "strict-ring-graph": (ring, "graph"),
        "noevict-ring-graph": (dataclasses.replace(no_evict, cache="ring"), "graph"),
        "strict-ring-graph-eager": (ring, "graph-eager"),
        "strict-ring-graph-maskfree": (ring, "graph:sdpa-maskfree"),
        "noevict-ring-graph-maskfree": (dataclasses.replace(no_evict, cache="ring"), "graph:sdpa-maskfree"),
        "strict-ring-graph-matmulattn": (ring, "graph:eager"),
        "strict-ring-graph-autotune": (ring, "graph-autotune"),
        "noevict-ring-graph-autotune": (dataclasses.replace(no_evict, cache="ring"), "graph-autotune"),
        "strict-ring-graph-math": (ring, "graph@math"),
        "strict-ring-graph-cudnn": (ring, "graph@cudnn_attention"),
        "strict-ring-graph-efficient": (ring, "graph@efficient_attention"),
        "strict-ring-graph-gemv": (ring, "graph+gemv"),
        "noevict-ring-graph-gemv": (dataclasses.replace(no_evict, cache="ring"), "graph+gemv"),
        "strict-ring-graph-gemv-maskfree": (ring, "graph:sdpa-maskfree+gemv"),
        "strict-ring-graph-gemv-matmulattn": (ring, "graph:eager+gemv"),
        "strict-static-graph": (dataclasses.replace(strict, cache="static"), "graph"),
        "lazy-c32-static-graph": (dataclasses.replace(lazy32, cache="static"), "graph"),
        "strict-dynamic-compile": (strict, "compile"),
        "strict-ring-compile": (ring, "compile"),
        "hf-static-compile": (None, "hf"),
        "int8-strict-ring-eager": (ring, "eager"),
        "int8-strict-ring-graph": (ring, "graph"),
        "int8-strict-ring-graph-gemv": (ring, "graph+gemv"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="pythia-2.8b", help="shipped config name, or 'tiny' for a CPU smoke test")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--sink", type=int, default=4)
    ap.add_argument("--window", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=128, help="timed steps (a multiple of 32: whole lazy cycles)")
    ap.add_argument("--warmup", type=int, default=32, help="warm-up steps (a multiple of 32 keeps cycles aligned)")
    ap.add_argument("--prime", type=int, default=4096, help="tokens the primed caches pretend to have seen")
    ap.add_argument("--variants", default="all", help="comma list of variant names, or 'all'")
    ap.add_argument("--equiv-window", type=int, default=128)
    ap.add_argument("--equiv-tokens", type=int, default=400)
    ap.add_argument("--no-equiv", action="store_true")
    ap.add_argument("--equiv-kinds", default="", help="more ring decoders to compare, e.g. graph+gemv")
    ap.add_argument("--repro", action="store_true", help="reproduce the reduce-overhead 'overwritten' error")
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="directory for gpu_tpot.json")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--profile", default="", help="comma list of variants to profile (kernel time per step)")
    ap.add_argument("--tag", default="", help="suffix of the JSON file name (several runs in one $OUT)")
    args = ap.parse_args(argv)
    table = variants(args.sink, args.window)
    if args.list:
        print("\n".join(table))
        return 0
    chosen = list(table) if args.variants == "all" else [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in table]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; --list names them")

    # Every compiled variant recompiles the same code objects for a new cache: allow it.
    for knob in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 256)
    device = torch.device(args.device)
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / f"gpu_tpot{'-' + args.tag if args.tag else ''}.json"
    started = time.perf_counter()
    fp = hardware_fingerprint(args.device)
    try:
        import torchao

        fp["torchao"] = torchao.__version__
    except ImportError:
        fp["torchao"] = None
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    loaded = load(args.config, dtype, device)
    vocab = loaded.model.config.vocab_size
    tokens = torch.randint(0, vocab, (args.warmup + args.steps,), generator=torch.Generator().manual_seed(3))
    setup = Setup(loaded, args.sink, args.window, args.steps, args.warmup, args.prime, device, sync, tokens.to(device),
                  profile=tuple(v.strip() for v in args.profile.split(",") if v.strip()))

    bandwidth = copy_bandwidth(device)
    slots = args.sink + args.window + 1
    floor = {"copy_bandwidth_Bps": bandwidth, **weight_bytes(loaded.model),
             "kv": kv_bytes(loaded.model, slots, dtype), "kv_slots": slots}
    floor["floor_ms"] = (floor["weights"] + floor["kv"]) / bandwidth * 1e3 if bandwidth == bandwidth else None
    report = {
        "schema": "streamllm.gpu-tpot/1",
        "command": " ".join(["python", "scripts/gpu_tpot.py", *(argv if argv is not None else sys.argv[1:])]),
        "model": loaded.name, "model_revision": loaded.revision, "dtype": args.dtype,
        "sink": args.sink, "window": args.window, "steps": args.steps, "warmup": args.warmup, "prime": args.prime,
        "fingerprint": fp, "fingerprint_id": fingerprint_id(fp),
        "floor": floor, "results": {}, "errors": {}, "equivalence": None,
    }

    def save() -> None:
        report["elapsed_s"] = time.perf_counter() - started
        tmp = out_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(out_path)

    if args.repro:
        report["cudagraph_repro"] = cudagraph_repro(device)
        save()
    if not args.no_equiv:
        try:
            report["equivalence"] = equivalence(setup, args.equiv_window, args.equiv_tokens,
                                                tuple(k for k in args.equiv_kinds.split(",") if k))
        except Exception as exc:  # keep going: the timings are still worth having
            report["errors"]["equivalence"] = traceback.format_exc()
            print(f"equivalence failed: {exc}", flush=True)
        save()

    for name in chosen:
        spec, kind = table[name]
        if name.startswith("int8-") and not setup.int8:
            apply_int8(loaded.model)  # in place, once: the int8 variants run last
            setup.int8 = True
            floor["int8_weights"] = weight_bytes(loaded.model)["weights"]
            floor["int8_floor_ms"] = (floor["int8_weights"] + floor["kv"]) / bandwidth * 1e3
        t0 = time.perf_counter()
        if kind.startswith("graph") and device.type != "cuda":
            report["errors"][name] = "skipped: CUDA graphs need a CUDA device"
            continue
        try:
            timing = run_hf_static_compiled(setup, name) if kind == "hf" else run_variant(setup, spec, kind, name)
            timing.notes.append(f"strategy label {spec.label() if spec else 'dense'}")
            report["results"][name] = dataclasses.asdict(timing)
            print(f"{name:28s} {timing.tpot_ms:8.3f} ms/token  (median {timing.median_ms:.3f}, "
                  f"warm-up {timing.warmup_s:.1f}s, {time.perf_counter() - t0:.0f}s)", flush=True)
        except Exception as exc:
            report["errors"][name] = traceback.format_exc()
            print(f"{name:28s} FAILED: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        save()

    print_table(report)
    save()
    return 0


def print_table(report: dict) -> None:
    floor = report["floor"]
    bw = floor["copy_bandwidth_Bps"]
    print()
    print(f"{report['model']} {report['dtype']}  S={report['sink']} W={report['window']}  "
          f"{report['fingerprint'].get('gpu') or 'cpu'}  torch {report['fingerprint']['torch']}")
    if bw == bw:
        print(f"copy bandwidth {bw / 1e12:.2f} TB/s; weights {floor['weights'] / 1e9:.2f} GB + KV "
              f"{floor['kv'] / 1e9:.2f} GB -> floor {floor['floor_ms']:.2f} ms/token"
              + (f"; INT8 floor {floor['int8_floor_ms']:.2f}" if "int8_floor_ms" in floor else ""))
    eq = report.get("equivalence")
    if eq:
        print(f"equivalence ({eq['dtype']}, S={eq['sink']} W={eq['window']}, {eq['tokens']} tokens):")
        for key, r in eq.items():
            if not isinstance(r, dict):
                continue
            print(f"  {key:36s} max|dlogit| {r['max_abs_logit_diff']:.3g} rel {r['rel_l2']:.2g} "
                  f"argmax {r['argmax_agreement']:.4f} max|dNLL| {r['max_abs_nll_diff']:.3g} "
                  f"mean|dNLL| {r['mean_abs_nll_diff']:.3g}")
    if report.get("cudagraph_repro"):
        for key, value in report["cudagraph_repro"].items():
            print(f"  reduce-overhead repro {key}: {value}")
    results = report["results"]
    base = results.get("noevict-ring-graph", {}).get("tpot_ms")
    print(f"{'variant':28s} {'TPOT ms':>8s} {'median':>8s} {'p90':>8s} {'max':>8s} {'warm-up s':>9s} {'/floor':>7s}"
          f" {'/noevict':>8s}")
    for name, r in results.items():
        ratio = r["tpot_ms"] / floor["floor_ms"] if floor.get("floor_ms") else math.nan
        rel = r["tpot_ms"] / base if base else math.nan
        print(f"{name:28s} {r['tpot_ms']:8.3f} {r['median_ms']:8.3f} {r['p90_ms']:8.3f} {r['max_ms']:8.3f} "
              f"{r['warmup_s']:9.1f} {ratio:7.2f} {rel:8.3f}")
    for name, r in results.items():
        if r.get("profile"):
            p = r["profile"]
            groups = ", ".join(f"{k} {v / 1e3:.3f}" for k, v in sorted(p["us_per_step_by_group"].items()))
            print(f"profile {name}: device {p['device_us_per_step'] / 1e3:.3f} ms/step, "
                  f"{p['kernels_per_step']:.0f} kernels; {groups}")
            for row in p["top"][:8]:
                print(f"    {row['us_per_step']:8.1f} us x{row['count'] // 8:<4d} {row['name'][:90]}")
    for name, err in report["errors"].items():
        print(f"{name:28s} FAILED: {err.strip().splitlines()[-1][:200]}")


if __name__ == "__main__":
    raise SystemExit(main())
