"""Decode steps: one token in, its logits out, eager / compiled / compiled + CUDA graph.

`make_cache` builds the cache a StrategySpec names (`spec.cache`: dynamic, static, ring);
`decoder_factory` wraps a model and cache into a `step(token) -> (logits, eviction event)` callable:

- eager: the model's forward as is;
- compiled (`--compile default`): the same forward through torch.compile (inductor, no CUDA
  graphs); works with every cache, the dynamic one recompiles once for dynamic lengths;
- graph (`--compile cudagraphs`, static and ring caches, CUDA only): gpt-fast style. One
  `decode_step()` reads only static buffers (the input token buffer, the cache's position ids,
  mask and counters), writes the logits into a static output buffer and advances the cache's
  device counter; it is compiled (inductor, no CUDA graphs of its own) and captured once by hand
  in a torch.cuda.CUDAGraph, then replayed. The logits handed out are a clone, so a caller that
  keeps them across steps never sees them overwritten by the next replay — the exploration log's crash (docs/findings.md#cuda-graphs) was
  exactly that kind of tensor (held logits, RoPE tables rebuilt, torch.cat caches) kept across
  replays of graphs made by mode="reduce-overhead".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch

from .caches import AnyCache, EvictionEvent, FixedCache, make_cache
from .combinations import check_compile
from .compat import attention_implementation, cache_kwargs, incompatibility_guard, register_attention, sdpa_attention
from .gemv import INDUCTOR_OPTIONS, reduction_linears

__all__ = ["AnyCache", "CompiledDecoder", "EagerDecoder", "GraphDecoder", "make_cache"]


class EagerDecoder:
    """model(x_t) then cache.end_step(); positions and mask come from the cache."""

    def __init__(self, model: torch.nn.Module, cache: AnyCache):
        self.model, self.cache = model, cache
        self.device = next(model.parameters()).device
        self.forward: Callable[..., torch.Tensor] = self._forward

    def _forward(self, token: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        out = self.model(input_ids=token, position_ids=position_ids, attention_mask=mask,
                         **cache_kwargs(self.model, self.cache))
        return out.logits[0, -1]

    def _inputs(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(self.cache, FixedCache):
            return self.cache.position_ids, self.cache.attention_mask
        return torch.tensor([[self.cache.next_position()]], device=self.device), None

    def step(self, token: torch.Tensor) -> tuple[torch.Tensor, EvictionEvent | None]:
        position_ids, mask = self._inputs()
        with incompatibility_guard("the decode step"):
            logits = self.forward(token, position_ids, mask)
        return logits, self.cache.end_step()


class CompiledDecoder(EagerDecoder):
    """The eager step with the forward compiled by inductor (no CUDA graphs)."""

    def __init__(self, model: torch.nn.Module, cache: AnyCache):
        super().__init__(model, cache)
        # Fixed caches have static shapes: one graph, and a graph break would be a bug.
        fixed = isinstance(cache, FixedCache)
        self.forward = torch.compile(self._forward, fullgraph=fixed, dynamic=False if fixed else None)


GRAPH_RECOMPILE_LIMIT = 256  # compiled entries of GraphDecoder._decode_step while a decoder traces
MASK_FREE_SDPA = "streamllm_sdpa"  # HF's SDPA under a name transformers builds no masks for
ATTENTION_CHOICES = (None, "sdpa", "eager", "sdpa-maskfree")


def register_mask_free_sdpa() -> str:
    """Register transformers' own SDPA function under MASK_FREE_SDPA (idempotent).

    transformers builds (or rebuilds) masks only for implementations in its mask registry; under
    this name the cache's 4-D mask, or None, reaches SDPA untouched. With no mask at all SDPA may
    pick its flash kernel, which a mask rules out.
    """
    return register_attention(MASK_FREE_SDPA, sdpa_attention())


class GraphDecoder:
    """decode_step() compiled (or eager) and captured in a CUDA graph; static/ring caches only.

    One graph per cache phase (`FixedCache.graph_key`: e.g. the ring before and after its sinks
    are recorded, with and without a mask): each phase's first `warmup` steps run un-captured on
    a side stream (compilation, autotuning, cuBLAS workspaces), the next is captured and every
    later step of that phase replays it.

    `attention`: None keeps the model's attention; "sdpa" / "eager" pick transformers' SDPA or
    matmul attention while tracing; "sdpa-maskfree" passes no mask once every slot of the cache
    holds a token (ring, steady state), so SDPA may use its flash kernel.

    `gemv`: trace batch-1 linears as reductions (streamllm.gemv) with inductor's coordinate-descent
    tuning, so the matrix-vector products are Triton kernels instead of cuBLAS calls.
    """

    def __init__(self, model: torch.nn.Module, cache: FixedCache, compiled: bool = True, warmup: int = 3,
                 compile_mode: str | None = None, attention: str | None = None, gemv: bool = False):
        check_compile("cudagraphs", getattr(cache, "kind", "dynamic"), cache.geometry.device.type
                      if isinstance(cache, FixedCache) else "cuda")
        if attention not in ATTENTION_CHOICES:
            raise ValueError(f"attention must be one of {ATTENTION_CHOICES}, got {attention!r}")
        self.model, self.cache = model, cache
        device = cache.geometry.device
        self.tokens = torch.zeros(1, 1, dtype=torch.long, device=device)
        self.logits = torch.zeros(model.config.vocab_size, dtype=cache.geometry.dtype, device=device)
        self.compiled = compiled
        self.mask_free = attention == "sdpa-maskfree"
        self.attention = register_mask_free_sdpa() if self.mask_free else attention
        # compile_mode: None (inductor default) or e.g. "max-autotune-no-cudagraphs"; never a mode
        # with CUDA graphs of its own: the capture below is the only one.
        if gemv and (not compiled or compile_mode is not None):
            raise ValueError("gemv needs the default compile mode (it sets inductor options of its own)")
        self.gemv = gemv
        options = INDUCTOR_OPTIONS if gemv else None
        self.fn = (torch.compile(self._decode_step, fullgraph=True, dynamic=False, mode=compile_mode, options=options)
                   if compiled else self._decode_step)
        self.warmup = warmup
        self.graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self.uncaptured: dict[tuple, int] = {}

    def _decode_step(self) -> None:
        # Everything read here is a static buffer; everything produced is written into one. The
        # host flags read (cache.full) flip once: a compiled step specializes on them once.
        cache = self.cache
        mask = None if self.mask_free and cache.full else cache.attention_mask
        out = self.model(input_ids=self.tokens, position_ids=cache.position_ids, attention_mask=mask,
                         **cache_kwargs(self.model, cache))
        self.logits.copy_(out.logits[0, -1])
        cache.advance_device()

    @contextmanager
    def _tracing(self) -> Iterator[None]:
        # What the compiled step sees while it is traced and captured; replays need neither.
        # Every GraphDecoder compiles the same code object (_decode_step), once per cache phase, and
        # a process builds one decoder per case (`pytest bench --sweep gpu`: ~14): past dynamo's
        # default of 8 entries per code object a fullgraph compile raises FailOnRecompileLimitHit.
        # The limit is lifted only while this decoder traces, so nothing outside it changes.
        linears = reduction_linears(self.model) if self.gemv else nullcontext()
        limit = torch._dynamo.config.patch(recompile_limit=GRAPH_RECOMPILE_LIMIT)
        with attention_implementation(self.model, self.attention), linears, limit:
            yield

    def step(self, token: torch.Tensor) -> tuple[torch.Tensor, EvictionEvent | None]:
        self.tokens.copy_(token.view(1, 1))
        key = (self.cache.graph_key, self.mask_free and self.cache.full)
        graph = self.graphs.get(key)
        if graph is not None:
            graph.replay()
        elif self.uncaptured.get(key, 0) < self.warmup:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), self._tracing():
                self.fn()
            torch.cuda.current_stream().wait_stream(side)
            self.uncaptured[key] = self.uncaptured.get(key, 0) + 1
        else:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), self._tracing():
                self.fn()  # recorded, not run
            self.graphs[key] = graph
            graph.replay()
        event = self.cache.end_step(advance_device=False)
        return self.logits.clone(), event


DecoderFactory = Callable[[torch.nn.Module, AnyCache], object]

# GraphDecoder's options per graph mode (which modes exist, and where each may run, is
# streamllm.combinations'); cudagraphs-triton is a decoder of its own (streamllm.kernels).
GRAPH_OPTIONS: dict[str, dict[str, object]] = {
    "cudagraphs": {},
    "cudagraphs-gemv": {"gemv": True},
    "cudagraphs-maskfree": {"attention": "sdpa-maskfree"},
    "cudagraphs-matmul": {"attention": "eager"},
    "cudagraphs-uncompiled": {"compiled": False},
    "cudagraphs-autotune": {"compile_mode": "max-autotune-no-cudagraphs"},
}
