"""Which combinations can run, and why the others cannot: the one place every "is this allowed" asks.

A run combines a strategy (streamllm.strategies) with a cache kind (streamllm.caches), a compile
mode (streamllm.decode), optionally INT8 weights (streamllm.transforms) and a device. The CLI, the
caches, the decoders and the bench catalog all ask `problem` (or `check`, which raises); none of
them keeps rules of its own. Each refusal names what to use instead.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil

from .strategies import CACHE_KINDS, RING_STRATEGIES, StrategyError, StrategySpec, cache_problem  # noqa: F401  (re-exported)

# How the decode step runs (`--compile`); the graph modes are captured by hand in one CUDA graph.
# The last four are the H100 exploration's variants of that graph, kept as modes so the suite's `--sweep gpu` can keep measuring them: SDPA without a mask once the ring
# is full (flash-eligible), transformers' matmul attention, the eager forward captured without
# inductor, and inductor's max-autotune (no CUDA graphs of its own). Their options: decode.GRAPH_OPTIONS.
COMPILE_MODES = ("none", "default", "cudagraphs", "cudagraphs-gemv", "cudagraphs-triton",
                 "cudagraphs-maskfree", "cudagraphs-matmul", "cudagraphs-uncompiled", "cudagraphs-autotune")
GRAPH_MODES = frozenset(mode for mode in COMPILE_MODES if mode.startswith("cudagraphs"))



class UnsupportedCombinationError(StrategyError):
    """A strategy / cache kind / compile / INT8 / device combination that cannot work; the message says why."""


def check_cache(spec: StrategySpec, kind: str) -> None:
    """Raise UnsupportedCombinationError if the `kind` cache cannot hold `spec`'s strategy."""
    found = cache_problem(dataclasses.replace(spec, cache=kind))
    if found:
        raise UnsupportedCombinationError(found)


def compile_problem(compile_mode: str, cache_kind: str, device_type: str) -> str | None:
    """Why `--compile compile_mode` cannot run the `cache_kind` cache on `device_type`, or None."""
    if compile_mode not in COMPILE_MODES:
        return f"unknown --compile {compile_mode!r}; choose one of: {', '.join(COMPILE_MODES)}"
    if compile_mode not in GRAPH_MODES:
        return None
    if device_type != "cuda":
        return f"--compile {compile_mode} needs a CUDA device; on CPU use --compile default or none"
    if compile_mode == "cudagraphs-triton":
        from .kernels import unavailable_reason  # imports no triton

        reason = unavailable_reason(device_type)
        if reason:
            return f"--compile {compile_mode}: {reason}"
    if cache_kind == "dynamic":
        return (
            f"--compile {compile_mode} needs a cache with static shapes and in-place state: the dynamic cache grows "
            "by torch.cat and is re-sliced on eviction, so each step makes new tensors that a replayed graph "
            "would overwrite ('accessing tensor output of CUDAGraphs that has been overwritten': docs/findings.md#cuda-graphs). "
            "Use --cache ring (strict) or --cache static, or --compile default with the dynamic cache"
        )
    return None


def environment_problem(compile_mode: str = "none", device_type: str = "cpu", int8: bool = False) -> str | None:
    """What this machine lacks for the combination (a compiler for inductor on CPU, torchao for INT8), or None."""
    if compile_mode != "none" and device_type == "cpu" and shutil.which(os.environ.get("CXX", "g++")) is None:
        return "torch.compile (inductor) on CPU needs a C++ compiler (g++) on PATH"
    if int8 and importlib.util.find_spec("torchao") is None:
        return "INT8 v2 needs torchao: pip install 'streamllm[int8]'"
    return None


def problem(spec: StrategySpec, compile_mode: str = "none", device_type: str = "cpu", int8: bool = False,
            environment: bool = False) -> str | None:
    """The first reason the combination cannot run, or None. `environment`: also what this machine lacks."""
    found = cache_problem(spec) or compile_problem(compile_mode, spec.cache, device_type)
    if found is None and environment:
        found = environment_problem(compile_mode, device_type, int8)
    return found


def check(spec: StrategySpec, compile_mode: str = "none", device_type: str = "cpu", int8: bool = False) -> None:
    """Raise UnsupportedCombinationError with the reason, if the combination cannot run."""
    found = problem(spec, compile_mode, device_type, int8)
    if found:
        raise UnsupportedCombinationError(found)


def check_compile(compile_mode: str, cache_kind: str, device_type: str) -> None:
    found = compile_problem(compile_mode, cache_kind, device_type)
    if found:
        raise UnsupportedCombinationError(found)


def decode_mode_for(spec: StrategySpec, compile_mode: str) -> tuple[str, str | None]:
    """The compile mode `spec` actually runs with, and why it differs from the one asked for (or None).

    Dense grows without bound: no static shapes to capture, so the graph modes compile it without graphs."""
    if compile_mode in GRAPH_MODES and spec.name == "dense":
        return "default", "dense: CUDA graphs need a bounded cache; compiling it without graphs"
    return compile_mode, None
