"""The strategies the suite benchmarks, and whether this machine can run each.

A `BenchCase` is a cache strategy (`StrategySpec`) plus an optional model transform (INT8 v2,
torch.compile). Its `id` is the pytest id and the name used by `--strategies`; its `label` keys
the stored baselines, so it carries every parameter that changes the numbers.

Cases this device cannot run (CUDA graphs on CPU, INT8 without torchao, inductor without a
compiler) are still collected and *skip with the reason*, so the verdict table shows what was
not measured instead of hiding it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from streamllm.strategies import StrategySpec, make_strategy

# Geometry of the CPU main job: 1024 tokens through S + W = 128 slots keeps eviction active for
# ~900 of the 1023 scored tokens, and the embedded model (8192 trained positions) never runs
# past its context, so the lazy-pruning findings measure eviction, not position extrapolation.
DEFAULT_SINK = 4
DEFAULT_WINDOW = 124
DEFAULT_TOKENS = 1024

# The `--sweep` groups (the exploration log's experiments, docs/findings.md, as parameterized benchmarks). Each sweep point is
# an ordinary BenchCase tagged with the sweeps it belongs to, so it is measured, checked (a
# missing baseline is "not checked", never a silent pass) and reported like any other case.
SWEEPS: dict[str, str] = {
    "window": "strict at S+W = 1/2, 1, 2, 4 x the default (the log's w1024 vs w2048, scaled)",
    "sinks": "S = 0 (window-only), 4, 16, 32 at the default W",
    "compress": "compress_every R = 1 (strict), 16, 32, 64, 128",
    "overlap": "overlap O = (S+W)/4, (S+W)/2, without and with auto-cap S+W (cap: same cache size)",
    "refresh": "refresh budget B = 8, 16, 32 at R=32 vs lazy c32 (token loop: first dataset only)",
    "b2": "phase B2 matrix: strict / lazy c16 / lazy c32 x dynamic / static, + ring (strict only)",
    "context": "eviction vs trained context: S+W+R inside vs only the largest positions beyond "
               "(W ~ max positions; needs --tokens >= max positions + ~2k, default 10240 for this sweep)",
    "gpu": "decode variants on one GPU (the H100 table of reports/gpu-h100.md): every cache x eager / compile / "
           "CUDA graph, the graph's attention and kernel variants, each against the ring with no eviction, INT8 "
           "on its own weights; on CPU the graph and Triton cases skip with the reason",
}
# `--sweep all`: every sweep at the default text length. The context sweep needs ~10k tokens
# (its window is the model's whole trained context), and the gpu sweep is mostly CUDA-graph cases
# that skip on CPU and compile for minutes where they run: both are only run by name.
ALL_SWEEPS = ("window", "sinks", "compress", "overlap", "refresh", "b2")
CONTEXT_TOKENS = 10240  # default --tokens for --sweep context: ~2k tokens of eviction past an 8k window
CONTEXT_R = 128  # the log's quality cliff (docs/findings.md#lazy-pruning): lets the largest position run 127 past the context


@dataclass(frozen=True)
class BenchCase:
    id: str  # pytest id, --strategies name
    spec: StrategySpec
    transform: str | None = None  # "int8" | "compile" | "compile-<graph mode>" (e.g. "compile-cudagraphs")
    default: bool = True  # in the default selection
    every_dataset: bool = True  # False: the default selection runs it on the first --dataset only
    note: str = ""  # why it is (not) in the default selection, shown by --strategies help
    sweeps: tuple[str, ...] = ()  # the --sweep groups this case is a point of
    sweep_only: bool = False  # only selected by --sweep or by id (not by `all`: the GPU job's set)
    min_tokens: int = 0  # text length the case needs (context arms: window ~ max positions)
    # The --compile mode on top of INT8 weights. `transform` stays "int8" for every INT8 case: it
    # is what makes the suite (and streamllm.profile.WeightSets) load a model of its own for them.
    compile: str | None = None

    def __post_init__(self) -> None:
        if self.compile is not None and self.transform != "int8":
            raise ValueError(f"{self.id}: compile= combines with transform='int8' only; other cases name "
                             "their mode in transform ('compile-<mode>')")

    @property
    def label(self) -> str:
        """Baseline key and table label: the spec's label plus the transform (and an INT8 case's compile mode)."""
        suffix = (f"+{self.transform}" if self.transform else "") + (f"+compile-{self.compile}" if self.compile else "")
        return self.spec.label() + suffix

    @property
    def cycle(self) -> int:
        """Steps of one eviction cycle: every R-th step prunes (R = compress_every)."""
        return max(1, self.spec.compress_every)

    def params(self) -> dict:
        # `compile` only where set: the stored baselines of every other case keep their keys
        return {**self.spec.params(), "transform": self.transform, **({"compile": self.compile} if self.compile else {})}


def build_catalog(sink: int = DEFAULT_SINK, window: int = DEFAULT_WINDOW,
                  context_positions: int | None = None) -> list[BenchCase]:
    """Every case the suite knows, in run order (dense first: it is the speedup reference).

    `context_positions`: the model's trained positions; the context sweep's arms straddle it, so
    they exist only when it is known (the suite loads the model's config for --sweep context)."""
    strict = make_strategy("strict", sink=sink, window=window)
    static = dataclasses.replace(strict, cache="static")
    ring = dataclasses.replace(strict, cache="ring")
    return [
        BenchCase("dense", make_strategy("dense"), note="the fixed baseline"),
        BenchCase("strict", strict, sweeps=("window", "sinks", "compress", "overlap", "b2", "gpu")),
        BenchCase("window", make_strategy("window", window=window), note="no sinks: the collapse sinks fix",
                  sweeps=("sinks",)),
        BenchCase("lazy-c16", make_strategy("lazy", sink=sink, window=window, compress_every=16),
                  sweeps=("compress", "b2", "gpu")),
        BenchCase("lazy-c32", make_strategy("lazy", sink=sink, window=window, compress_every=32),
                  sweeps=("compress", "refresh", "b2", "gpu")),
        # Refresh has no exact parallel evaluator: its PPL is a token loop (~75 s per 1024-token text
        # on 2 shared cores), so the default run scores it on the first dataset only (CPU budget).
        BenchCase("refresh", make_strategy("refresh", sink=sink, window=window, compress_every=32, refresh=8),
                  every_dataset=False, sweeps=("refresh",),
                  note="tail re-insertion, the log's negative result; default: first dataset only (token loop)"),
        BenchCase("static", static, sweeps=("b2", "gpu")),
        BenchCase("int8", strict, transform="int8", note="torchao INT8 weight-only v2, MLP linears", sweeps=("gpu",)),
        BenchCase("compile", strict, transform="compile", default=False, sweeps=("gpu",),
                  note="torch.compile without CUDA graphs; minutes of compile on CPU, default on CUDA"),
        BenchCase("ring", ring, sweeps=("b2", "gpu")),
        BenchCase("ring-cudagraphs", ring, transform="compile-cudagraphs", note="CUDA only", sweeps=("gpu",)),
        BenchCase("ring-cudagraphs-gemv", ring, transform="compile-cudagraphs-gemv", sweeps=("gpu",),
                  note="CUDA only: linears as Triton reductions (streamllm.gemv)"),
        BenchCase("ring-cudagraphs-triton", ring, transform="compile-cudagraphs-triton", sweeps=("gpu",),
                  note="CUDA only: Triton GEMV + split-KV attention (streamllm.kernels)"),
        # Sweep points the log's findings need (c128: +34 % on Pythia-2.8b, docs/findings.md#lazy-pruning); not in the default run.
        BenchCase("lazy-c128", make_strategy("lazy", sink=sink, window=window, compress_every=128), default=False,
                  note="the log's quality cliff; slow on CPU", sweeps=("compress",)),
        BenchCase("no-shift", make_strategy("no-shift", sink=sink, window=window), default=False,
                  note="absolute-position ablation"),
        *sweep_cases(sink, window),
        *mean_size_cases(sink, window),
        *gpu_cases(sink, window),
        *(context_cases(context_positions, sink) if context_positions else []),
    ]


def sweep_cases(sink: int, window: int) -> list[BenchCase]:
    """The sweep points that are not already default cases, scaled to the suite's geometry.

    Sizes are relative to the slots S+W so that `--sink/--window` rescale a sweep for another
    model (the log's w1024 vs w2048 on a 2048-position Pythia, docs/findings.md#window-and-sinks, become S+W = 64..512 here)."""
    slots = sink + window

    def point(case_id: str, spec: StrategySpec, sweep: str, **kw) -> BenchCase:
        return BenchCase(case_id, spec, default=False, sweep_only=True, sweeps=(sweep,), **kw)

    out = [point(f"strict-w{w}", make_strategy("strict", sink=sink, window=w), "window")
           for w in (slots // 2 - sink, 2 * slots - sink, 4 * slots - sink) if w > 0]
    out += [point(f"strict-s{s}", make_strategy("strict", sink=s, window=window), "sinks") for s in (16, 32)
            if s != sink]
    out.append(point("lazy-c64", make_strategy("lazy", sink=sink, window=window, compress_every=64), "compress"))
    for o in (slots // 4, slots // 2):
        out.append(point(f"overlap-o{o}", make_strategy("overlap", sink=sink, window=window, overlap=o), "overlap",
                         note="window grows to W+O"))
        # auto-cap at S+W: the cap takes O slots from W, so the cache holds the same S+W tokens.
        out.append(point(f"overlap-o{o}-cap", make_strategy("overlap", sink=sink, window=window, overlap=o,
                                                           auto_cap=slots), "overlap", note="O reallocated from W"))
    out += [point(f"refresh-b{b}", make_strategy("refresh", sink=sink, window=window, compress_every=32, refresh=b),
                  "refresh", every_dataset=False, note="token loop: first dataset only")
            for b in (16, 32)]
    for r in (16, 32):
        spec = dataclasses.replace(make_strategy("lazy", sink=sink, window=window, compress_every=r), cache="static")
        out.append(BenchCase(f"lazy-c{r}-static", spec, default=False, sweep_only=True,
                             sweeps=("b2", "gpu") if r == 32 else ("b2",)))
    return out


def mean_size_cases(sink: int, window: int, periods: tuple[int, ...] = (16, 32, 128)) -> list[BenchCase]:
    """Strict at lazy cR's mean cache size (W + R/2): the reference of the phase A finding on ΔNLL
    (bench/findings.py TRACE_FINDINGS): lazy's cycle vs holding as many tokens on average without
    hard eviction. Selected by id only; a finding evaluates its reference whether selected or not."""
    return [BenchCase(f"strict-w{window + r // 2}", make_strategy("strict", sink=sink, window=window + r // 2),
                      default=False, sweep_only=True, note=f"strict at lazy c{r}'s mean cache size W+R/2")
            for r in periods]


def gpu_cases(sink: int, window: int) -> list[BenchCase]:
    """The `--sweep gpu` points that are not default cases: what scripts/gpu_tpot.py timed in a loop of
    its own before (reports/gpu-h100.md), now measured, checked and reported like any case.

    `noevict-*` is the ring's own no-eviction twin: S=0, W=S+W (the same slot count, no sinks to
    re-rotate), so `ring-X / noevict-ring-X` is what eviction costs inside the same graph."""
    strict = make_strategy("strict", sink=sink, window=window)
    ring = dataclasses.replace(strict, cache="ring")
    noevict = dataclasses.replace(make_strategy("window", sink=0, window=sink + window), cache="ring")
    lazy32_static = dataclasses.replace(make_strategy("lazy", sink=sink, window=window, compress_every=32),
                                        cache="static")

    def point(case_id: str, spec: StrategySpec, note: str, **kw) -> BenchCase:
        return BenchCase(case_id, spec, default=False, sweep_only=True, sweeps=("gpu",), note=note, **kw)

    out = [point(f"noevict-ring-{mode}", noevict, f"no eviction, {what}", transform=f"compile-{mode}")
           for mode, what in (("cudagraphs", "the ring-cudagraphs graph"), ("cudagraphs-gemv", "gemv reductions"),
                              ("cudagraphs-triton", "Triton kernels"), ("cudagraphs-maskfree", "mask-free SDPA"))]
    out += [
        point("static-cudagraphs", dataclasses.replace(strict, cache="static"), "static strict: shift every step",
              transform="compile-cudagraphs"),
        point("lazy-c32-static-cudagraphs", lazy32_static, "static lazy: the shift once per 32 steps",
              transform="compile-cudagraphs"),
        point("ring-compile", ring, "inductor without CUDA graphs", transform="compile"),
        point("ring-cudagraphs-uncompiled", ring, "the eager forward captured, no inductor",
              transform="compile-cudagraphs-uncompiled"),
        point("ring-cudagraphs-maskfree", ring, "no mask once the ring is full (flash-eligible SDPA)",
              transform="compile-cudagraphs-maskfree"),
        point("ring-cudagraphs-matmul", ring, "transformers' matmul attention", transform="compile-cudagraphs-matmul"),
        point("ring-cudagraphs-autotune", ring, "inductor max-autotune", transform="compile-cudagraphs-autotune"),
        point("int8-ring", ring, "INT8 weights, eager", transform="int8"),
        point("int8-ring-cudagraphs", ring, "INT8 weights, graph", transform="int8", compile="cudagraphs"),
        point("int8-ring-cudagraphs-gemv", ring, "INT8 dequantized inside the gemv reduction", transform="int8",
              compile="cudagraphs-gemv"),
    ]
    return out


def context_cases(max_positions: int, sink: int = DEFAULT_SINK, compress_every: int = CONTEXT_R) -> list[BenchCase]:
    """The arms that separate hard eviction from position extrapolation (P = max positions).

    A pos-shift cache feeds positions up to |C_t| = S + W + R - 1 (`StrategySpec.max_position`);
    the model saw positions 0..P-1 in training. At the same S and R:

      ctx-strict-fit      strict, W_fit = P - S - R            all positions inside
      ctx-lazy-fit        lazy R, W_fit (S+W+R-1 = P-1)        eviction only: vs ctx-strict-fit
      ctx-strict-beyond-w strict, W_b = P - S (S+W = P)        the widest window that fits S+W
      ctx-lazy-beyond     lazy R, W_b: S+W fits, the last R-1 positions run past P   vs ctx-strict-beyond-w
      ctx-strict-maxpos   strict, W_b + R - 1: the same largest position as ctx-lazy-beyond, no cycling

    Eviction effect = lazy-fit / strict-fit; position effect = strict-maxpos / strict-beyond-w (same
    eviction rule, ~1.5 % more window, R-1 positions past P on every step); lazy-beyond /
    strict-beyond-w has both. Score the steps after the windows fill (t >= S + W_b + R): before
    that the arms attend the same tokens."""
    r = compress_every
    w_fit, w_b = max_positions - sink - r, max_positions - sink
    need = max_positions + 2 * 1024  # >= ~15 lazy cycles past the fill, and the timing slices

    def arm(case_id: str, spec: StrategySpec, note: str) -> BenchCase:
        return BenchCase(case_id, spec, default=False, sweep_only=True, sweeps=("context",), min_tokens=need,
                         every_dataset=False, note=note)

    return [
        arm("ctx-strict-fit", make_strategy("strict", sink=sink, window=w_fit), "all positions < P"),
        arm("ctx-lazy-fit", make_strategy("lazy", sink=sink, window=w_fit, compress_every=r),
            "S+W+R-1 = P-1: eviction only"),
        arm("ctx-strict-beyond-w", make_strategy("strict", sink=sink, window=w_b), "S+W = P"),
        arm("ctx-lazy-beyond", make_strategy("lazy", sink=sink, window=w_b, compress_every=r),
            "S+W fits, S+W+R-1 > P-1: the largest positions run past the context"),
        # S+W > P: validate() refuses it unless asked on purpose (allow_beyond_context)
        arm("ctx-strict-maxpos", StrategySpec("strict", sink=sink, window=w_b + r - 1).validate(
            max_positions, allow_beyond_context=True), "same largest position as ctx-lazy-beyond, no cycling"),
    ]


def select(catalog: list[BenchCase], selection: str, device_type: str) -> list[BenchCase]:
    """`default`, `all`, `sweep:NAME`, or a comma list of case ids (`default,lazy-c128` adds to
    the default). `all` is every non-sweep case (the GPU job's set); `sweep:all` every sweep but
    the context one (it needs its own text length)."""
    by_id = {case.id: case for case in catalog}
    chosen: list[BenchCase] = []
    for item in [part.strip() for part in selection.split(",") if part.strip()]:
        if item.startswith("sweep:"):
            name = item.removeprefix("sweep:")
            names = ALL_SWEEPS if name == "all" else (name,)
            if name != "all" and name not in SWEEPS:
                raise ValueError(f"unknown sweep {name!r} for --sweep; choose from: all, " + ", ".join(SWEEPS))
            found = [c for c in catalog if set(names) & set(c.sweeps)]
            if not found:
                raise ValueError(f"sweep {name!r} has no cases in this catalog (context: the model's max positions "
                                 "must be known)")
            chosen.extend([by_id["dense"], *found])  # dense: the speedup reference of every point
        elif item == "all":
            chosen.extend(c for c in catalog if not c.sweep_only)
        elif item == "default":
            # torch.compile costs minutes of inductor compile on 2 CPU cores: opt-in there only.
            chosen.extend(c for c in catalog if c.default or (c.id == "compile" and device_type == "cuda"))
        elif item in by_id:
            chosen.append(by_id[item])
        else:
            raise ValueError(f"unknown strategy {item!r} for --strategies; choose from: default, all, "
                             + ", ".join(by_id))
    ids = {case.id for case in chosen}
    return [case for case in catalog if case.id in ids]  # catalog order (dense first), no duplicates


def datasets_for(case: BenchCase, datasets: tuple[str, ...], selection: str) -> tuple[str, ...]:
    """The datasets a selected case runs on: all, unless the default selection limits it."""
    named = {item.strip() for item in selection.split(",")}
    if case.every_dataset or "all" in named or case.id in named:  # `sweep:all` is not `all`
        return datasets
    return datasets[:1]


# -- availability ---------------------------------------------------------------------------------
def unavailable_reason(case: BenchCase, device_type: str) -> str | None:
    """None when the case can run here; otherwise the reason it skips (shown in the table)."""
    from streamllm.combinations import problem

    return problem(case.spec, compile_mode(case), device_type, int8=case.transform == "int8", environment=True)


def compile_mode(case: BenchCase) -> str:
    """The streamllm.decode --compile mode of a case: "compile" is inductor's default, "compile-<mode>"
    names the mode, INT8 cases carry theirs in `compile`, anything else decodes eagerly."""
    if case.transform == "compile":
        return "default"
    if case.transform and case.transform.startswith("compile-"):
        return case.transform.removeprefix("compile-")
    return case.compile or "none"
