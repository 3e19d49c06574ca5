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
import importlib.util
import os
import shutil
from dataclasses import dataclass

from streamllm.strategies import StrategySpec, make_strategy

# Geometry of the CPU main job: 1024 tokens through S + W = 128 slots keeps eviction active for
# ~900 of the 1023 scored tokens, and the embedded model (8192 trained positions) never runs
# past its context, so the lazy-pruning findings measure eviction, not position extrapolation.
DEFAULT_SINK = 4
DEFAULT_WINDOW = 124
DEFAULT_TOKENS = 1024


@dataclass(frozen=True)
class BenchCase:
    id: str  # pytest id, --strategies name
    spec: StrategySpec
    transform: str | None = None  # "int8" | "compile" | "compile-cudagraphs"
    default: bool = True  # in the default selection
    every_dataset: bool = True  # False: the default selection runs it on the first --dataset only
    note: str = ""  # why it is (not) in the default selection, shown by --strategies help

    @property
    def label(self) -> str:
        """Baseline key and table label: the spec's label plus the transform."""
        return self.spec.label() + (f"+{self.transform}" if self.transform else "")

    @property
    def cycle(self) -> int:
        """Steps of one eviction cycle: every R-th step prunes (R = compress_every)."""
        return max(1, self.spec.compress_every)

    def params(self) -> dict:
        return {**self.spec.params(), "transform": self.transform}


def build_catalog(sink: int = DEFAULT_SINK, window: int = DEFAULT_WINDOW) -> list[BenchCase]:
    """Every case the suite knows, in run order (dense first: it is the speedup reference)."""
    strict = make_strategy("strict", sink=sink, window=window)
    static = dataclasses.replace(strict, cache="static")
    ring = dataclasses.replace(strict, cache="ring")
    return [
        BenchCase("dense", make_strategy("dense"), note="the fixed baseline"),
        BenchCase("strict", strict),
        BenchCase("window", make_strategy("window", window=window), note="no sinks: the collapse sinks fix"),
        BenchCase("lazy-c16", make_strategy("lazy", sink=sink, window=window, compress_every=16)),
        BenchCase("lazy-c32", make_strategy("lazy", sink=sink, window=window, compress_every=32)),
        # Refresh has no exact parallel evaluator: its PPL is a token loop (~75 s per 1024-token text
        # on 2 shared cores), so the default run scores it on the first dataset only (CPU budget).
        BenchCase("refresh", make_strategy("refresh", sink=sink, window=window, compress_every=32, refresh=8),
                  every_dataset=False,
                  note="tail re-insertion, the log's negative result; default: first dataset only (token loop)"),
        BenchCase("static", static),
        BenchCase("int8", strict, transform="int8", note="torchao INT8 weight-only v2, MLP linears"),
        BenchCase("compile", strict, transform="compile", default=False,
                  note="torch.compile without CUDA graphs; minutes of compile on CPU, default on CUDA"),
        BenchCase("ring", ring),
        BenchCase("ring-cudagraphs", ring, transform="compile-cudagraphs", note="CUDA only"),
        # Sweep points the log's findings need (c128: +34 % on Pythia-2.8b); not in the default run.
        BenchCase("lazy-c128", make_strategy("lazy", sink=sink, window=window, compress_every=128), default=False,
                  note="the log's quality cliff; slow on CPU"),
        BenchCase("no-shift", make_strategy("no-shift", sink=sink, window=window), default=False,
                  note="absolute-position ablation"),
    ]


def select(catalog: list[BenchCase], selection: str, device_type: str) -> list[BenchCase]:
    """`default`, `all`, or a comma list of case ids (`default,lazy-c128` adds to the default)."""
    by_id = {case.id: case for case in catalog}
    chosen: list[BenchCase] = []
    for item in [part.strip() for part in selection.split(",") if part.strip()]:
        if item == "all":
            chosen.extend(catalog)
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
    if case.every_dataset or "all" in named or case.id in named:
        return datasets
    return datasets[:1]


# -- availability ---------------------------------------------------------------------------------
def unavailable_reason(case: BenchCase, device_type: str) -> str | None:
    """None when the case can run here; otherwise the reason it skips (shown in the table)."""
    import torch

    from streamllm.strategies import cache_kind_problem
    from streamllm.transforms import check_compile_combination

    problem = cache_kind_problem(case.spec)
    if problem:
        return problem
    mode = compile_mode(case)
    if mode != "none":
        try:
            check_compile_combination(mode, case.spec.cache, torch.device(device_type))
        except ValueError as exc:
            return str(exc)
        if device_type == "cpu" and shutil.which(os.environ.get("CXX", "g++")) is None:
            return "torch.compile (inductor) on CPU needs a C++ compiler (g++) on PATH"
    if case.transform == "int8" and importlib.util.find_spec("torchao") is None:
        return "INT8 v2 needs torchao: pip install 'streamllm[int8]'"
    return None


def compile_mode(case: BenchCase) -> str:
    """The streamllm.decode --compile mode of a case."""
    return {"compile": "default", "compile-cudagraphs": "cudagraphs"}.get(case.transform or "", "none")
