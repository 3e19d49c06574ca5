"""Counting the work of decode steps: a dispatch mode and a profiler pass (issue #11 item 1).

Self-contained on purpose: this file imports only the standard library and torch (no
`streamllm` module), because `countrunner.py` loads it by path inside an old commit's checkout or
another transformers release's venv, where `streamllm` is that target's product. What it returns is
raw histograms (a JSON-ready dict); the stored form, its key and every comparison are
`workrecord.py`'s (`WorkCounts.from_raw`).

Wall time moves from process to process and machine to machine; the work a step dispatches does
not. For a fixed software stack (torch, transformers), device type, dtype, model config and
strategy, the counts below are integers that repeat exactly in every process, so they can be
asserted with zero tolerance on any machine, and a mismatch names the op that changed
(`+2 aten.cat per step`).

Counted over N decode steps run through a zero-argument callable (`count_work`), N a multiple
of the eviction cycle R, so every prune is counted once per cycle:

- aten ops dispatched, as a histogram keyed by the overload packet (`aten.cat.default` and
  `aten.cat.out` are both `aten.cat`). Counted by a TorchDispatchMode, i.e. below autograd, as
  the dispatcher delivers them (under inference mode, which `count_work` uses like the timed
  loop, some composite ops arrive whole: `aten.linear`, `aten.item`), top-level ops only: what a
  kernel calls internally is not dispatched through the mode.
- bytes read / written by those ops (logical sizes, `Tensor.nbytes`): reads are the tensor
  inputs (not the `out=` buffers); writes are fresh outputs plus every argument the schema marks
  as mutated (in-place and `out=` ops). An op whose tensor outputs all alias its inputs and that
  mutates nothing (a view: slice, view, transpose, ...) moves no data and counts 0 bytes.
- host-device synchronizations: ops that force the host to wait for the device on CUDA
  (`SYNC_OPS`: `.item()`'s `aten._local_scalar_dense`, `aten.nonzero`, boolean-mask indexing, ...,
  and blocking copies between the CPU and a device). They are counted on CPU too, where they cost
  nothing, because the same code syncs on CUDA.
- on CUDA: kernels launched and memcpy/memset operations (torch.profiler's device events), and
  CUDA-graph replays (`ReplayCounter` on the decoder's graphs).

Counts are totals over `steps`; `workrecord.WorkCounts` turns them into exact per-step fractions,
so counts over 32 and 64 steps compare exactly.

Caveats (the caller's to handle): dynamo cannot trace under a dispatch mode, so the aten-op pass
runs torch.compile'd functions eagerly on purpose (`torch.compiler.set_stance("force_eager")`,
which leaves their compiled code intact): for compiled decoders the aten-op counts describe the
eager trace of the same code (an extra op in the cache's code still shows); their kernels are
counted in a second pass without the mode, so kernel counts are the compiled step's. CUDA-graph
decoders dispatch only the few ops around `replay()`: assert their kernels and replays. Counting
costs a Python call per dispatched op: count in separate steps, never inside timed ones.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# Op packets that make the host wait for the device on CUDA. `aten.item`, `aten.is_nonzero` and
# `aten.equal` mostly decompose into `_local_scalar_dense` before reaching the mode; they are
# listed so that a backend that dispatches them directly is counted too.
SYNC_OPS = frozenset({
    "aten._local_scalar_dense",  # .item(), int(t), float(t), bool(t), tolist() of device tensors
    "aten.item",
    "aten.is_nonzero",
    "aten.equal",
    "aten.nonzero",  # output size depends on the data
    "aten.masked_select",
    "aten.unique",
    "aten._unique",
    "aten._unique2",
    "aten.unique_dim",
    "aten.unique_consecutive",
    "aten.bincount",
})
# Sync only in some calls: repeat_interleave without output_size, indexing with a boolean mask.
_REPEAT_INTERLEAVE = "aten.repeat_interleave"
_MASK_INDEX_OPS = frozenset({"aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl"})
_COPY_OPS = frozenset({"aten._to_copy", "aten.copy", "aten.copy_", "aten.to"})


def op_name(func: Any) -> str:
    """`aten.cat.default` -> `aten.cat`: the overload packet, so `out=` and overloads pool."""
    packet = getattr(func, "overloadpacket", None)
    return str(packet) if packet is not None else str(func)


# --------------------------------------------------------------------------------------------
# Counting


def _storage_ptr(t: torch.Tensor) -> int | None:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensors without storage (some subclasses)
        return None


@dataclass(frozen=True)
class _Schema:
    mutated: tuple[int | str, ...]  # positions (or kwarg names) of arguments the op writes
    outs: frozenset[str]  # names of pure out= arguments (written, not read)
    positional: tuple[str, ...]  # argument names in order


class _CountingMode(TorchDispatchMode):
    """Counts every op dispatched while active (top level only: inside __torch_dispatch__ the
    mode is off, so what an op calls internally is not counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.syncs: Counter[str] = Counter()
        self.bytes_read = 0
        self.bytes_written = 0
        self._schemas: dict[Any, _Schema] = {}

    def _schema(self, func: Any) -> _Schema:
        s = self._schemas.get(func)
        if s is None:
            args = func._schema.arguments
            mutated = tuple(a.name for a in args if a.alias_info is not None and a.alias_info.is_write)
            outs = frozenset(a.name for a in args if getattr(a, "is_out", False))
            s = _Schema(mutated, outs, tuple(a.name for a in args if not a.kwarg_only))
            self._schemas[func] = s
        return s

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self._record(func, args, kwargs, out)
        return out

    def _record(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        name = op_name(func)
        self.ops[name] += 1
        schema = self._schema(func)
        named = dict(zip(schema.positional, args, strict=False))
        named.update(kwargs)
        inputs = [t for n, v in named.items() if n not in schema.outs
                  for t in tree_flatten(v)[0] if isinstance(t, torch.Tensor)]
        written = [t for n in schema.mutated for t in tree_flatten(named.get(n))[0] if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        in_ptrs = {_storage_ptr(t) for t in inputs} | {_storage_ptr(t) for t in written}
        fresh = [t for t in outputs if _storage_ptr(t) not in in_ptrs]
        if written or fresh or not outputs:
            # A pure view (every output aliases an input, nothing mutated) moves no data.
            self.bytes_read += sum(t.nbytes for t in inputs)
            self.bytes_written += sum(t.nbytes for t in written) + sum(t.nbytes for t in fresh)
        if self._syncs(name, named, inputs, outputs):
            self.syncs[name] += 1

    @staticmethod
    def _syncs(name: str, named: dict, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> bool:
        if name in SYNC_OPS:
            return True
        if name == _REPEAT_INTERLEAVE:
            return isinstance(named.get("repeats"), torch.Tensor) and named.get("output_size") is None
        if name in _MASK_INDEX_OPS:
            indices = named.get("indices") or ()
            return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)
        if name in _COPY_OPS and not named.get("non_blocking", False):
            # A blocking copy between host and device waits for the stream (both directions).
            devices = {t.device.type for t in inputs + outputs}
            return "cpu" in devices and len(devices) > 1
        return False


class ReplayCounter:
    """Counts `replay()` calls of the CUDA graphs in `graphs` (e.g. GraphDecoder.graphs).

    Installs a counting wrapper on each graph *instance* (an instance attribute shadows the
    class's method) on entry and removes it on exit, so nothing global changes and graphs of
    other decoders are untouched. A graph captured while counting is a phase change inside the
    counted steps (not steady state): it is reported in `captured` and `count_work` notes it.
    """

    def __init__(self, graphs: Mapping[Any, Any] | Iterable[Any]):
        self._source = graphs
        self._wrapped: list[Any] = []
        self._before = 0
        self.count = 0
        self.captured = 0

    def _graphs(self) -> list[Any]:
        src = self._source
        return list(src.values()) if isinstance(src, Mapping) else list(src)

    def __enter__(self) -> ReplayCounter:
        graphs = self._graphs()
        self._before = len(graphs)
        for graph in graphs:
            original = graph.replay

            def replay(*a: Any, _original: Callable = original, **kw: Any) -> Any:
                self.count += 1
                return _original(*a, **kw)

            graph.replay = replay
            self._wrapped.append(graph)
        return self

    def __exit__(self, *exc: object) -> None:
        for graph in self._wrapped:
            del graph.replay  # back to the class's method
        self._wrapped.clear()
        self.captured = len(self._graphs()) - self._before


def _cuda_profile(enabled: bool):
    if not enabled:
        return nullcontext(None)
    from torch.profiler import ProfilerActivity, profile

    return profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])


def _device_events(events: Iterable[Any]) -> tuple[int, int, float, dict[str, int]]:
    """(kernels, memcpy/memset ops, their summed duration in us, kernels by name) among the
    profiler's device events (`prof.events()`)."""
    kernels = copies = 0
    busy = 0.0
    names: Counter[str] = Counter()
    for event in events:
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        busy += float(event.time_range.elapsed_us())
        if event.name.startswith(("Memcpy", "Memset")):
            copies += 1
        else:
            kernels += 1
            names[event.name] += 1
    return kernels, copies, busy, dict(names)


def _eager_stance():
    """torch.compile'd functions run as plain Python inside (torch >= 2.6). Without this, dynamo
    meets their frames while the dispatch mode is active, skips them, and marks their code as
    skipped for good: a CompiledDecoder counted once would decode eagerly ever after."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else nullcontext()


def _graph_count(graphs: Mapping[Any, Any] | None) -> int:
    return 0 if graphs is None else len(graphs)


def count_work(
    step: Callable[[], object],
    steps: int,
    *,
    cycle: int = 1,
    warmup: int | None = None,
    device: torch.device | str = "cpu",
    kernels: bool | None = None,
    graphs: Mapping[Any, Any] | None = None,
    inference_mode: bool = True,
) -> dict[str, Any]:
    """Run `warmup` then `steps` calls of `step()` and count the work of the latter (on CUDA with
    kernel counts, `steps` more: kernels are counted in a second pass without the dispatch mode).
    Returns the raw histograms as a JSON-ready dict (`workrecord.WorkCounts.from_raw` keys it).

    `steps` must be a whole number of eviction cycles (`cycle` = R for lazy, 1 for strict), so the
    per-step averages include each prune exactly once per cycle; any R consecutive steps hold one
    prune, so the phase does not matter. `warmup` (default: one cycle) runs uncounted first, so
    first-call work (RoPE shift tables, lazily built masks, graph capture) is not counted.
    `kernels`: count CUDA kernels with torch.profiler (default: when `device` is CUDA).
    `graphs`: the decoder's CUDA graphs (e.g. `GraphDecoder.graphs`) to count replays of.
    Run this on a cache and decoder that are not timed afterwards, or after the timed rounds:
    every counted step is slower than a plain one and advances the cache like any step.

    Compiled decoders: their aten-op counts describe the eager trace of the same Python code
    (still exact, and an extra op in the cache's code still shows); their kernel counts (pass 2)
    are the compiled step's. A CUDA graph captured during pass 1 would record the eager trace:
    warm up until every phase is captured (a capture while counting is reported in `notes`).
    """
    if steps < 1 or cycle < 1:
        raise ValueError(f"steps and cycle must be >= 1 (got steps={steps}, cycle={cycle})")
    if steps % cycle:
        raise ValueError(f"steps={steps} is not a whole number of eviction cycles of {cycle}: "
                         f"use {cycle * math.ceil(steps / cycle)}")
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if kernels is None:
        kernels = cuda
    if kernels and not cuda:
        raise ValueError("kernel counts need a CUDA device (torch.profiler's CUDA activity)")
    grad = torch.inference_mode() if inference_mode else nullcontext()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    mode = _CountingMode()
    prof = replays = None
    with grad:
        for _ in range(cycle if warmup is None else warmup):
            step()
        sync()
        graphs_before = _graph_count(graphs)
        # Pass 1, aten ops: a dispatch mode. Graph replays are counted here when no kernel pass
        # follows (a replay is no dispatched op: the mode does not change it).
        replays = ReplayCounter(graphs) if graphs is not None and not kernels else None
        with _eager_stance(), replays or nullcontext(), mode:
            for _ in range(steps):
                step()
            sync()
        if kernels:
            # Pass 2, kernels: without the dispatch mode, because dynamo does not run compiled
            # frames while one is active (they fall back to eager), so kernels counted under it
            # would be the eager model's, not the compiled step's.
            replays = ReplayCounter(graphs) if graphs is not None else None
            with _cuda_profile(True) as prof, replays or nullcontext():
                for _ in range(steps):
                    step()
                sync()
    notes = []
    captured = _graph_count(graphs) - graphs_before
    if captured:
        notes.append(f"{captured} CUDA graph(s) captured while counting: warm up longer")
    n_kernels = n_copies = busy = names = None
    if prof is not None:
        n_kernels, n_copies, busy, names = _device_events(prof.events())
    return {
        "steps": steps,
        "ops": dict(sorted(mode.ops.items())),
        "bytes_read": mode.bytes_read,
        "bytes_written": mode.bytes_written,
        "syncs": dict(sorted(mode.syncs.items())),
        "kernels": n_kernels,
        "memcpys": n_copies,
        "graph_replays": None if replays is None else replays.count,
        "kernel_names": None if names is None else dict(sorted(names.items())),
        "device_busy_us": busy,
        "notes": notes,
    }
