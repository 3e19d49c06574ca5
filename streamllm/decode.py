"""Decode steps: one token in, its logits out, eager / compiled / compiled + CUDA graph.

`make_cache` builds the cache a StrategySpec names (`spec.cache`: dynamic, static, ring);
`make_decoder` wraps a model and cache into a `step(token) -> (logits, eviction event)` callable:

- eager: the model's forward as is;
- compiled (`--compile default`): the same forward through torch.compile (inductor, no CUDA
  graphs); works with every cache, the dynamic one recompiles once for dynamic lengths;
- graph (`--compile cudagraphs`, static and ring caches, CUDA only): gpt-fast style. One
  `decode_step()` reads only static buffers (the input token buffer, the cache's position ids,
  mask and counters), writes the logits into a static output buffer and advances the cache's
  device counter; it is compiled (inductor, no CUDA graphs of its own) and captured once by hand
  in a torch.cuda.CUDAGraph, then replayed. The logits handed out are a clone, so a caller that
  keeps them across steps never sees them overwritten by the next replay — the log's crash was
  exactly that kind of tensor (held logits, RoPE tables rebuilt, torch.cat caches) kept across
  replays of graphs made by mode="reduce-overhead".
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .cache import EvictionEvent, StreamingCache, build_cache
from .fixed_cache import FixedCache, UnsupportedCacheError
from .ring_cache import RingStreamingCache
from .static_cache import StaticStreamingCache
from .strategies import StrategySpec
from .transforms import check_compile_combination

AnyCache = StreamingCache | FixedCache


def make_cache(spec: StrategySpec, model: torch.nn.Module) -> AnyCache:
    """The cache kind `spec.cache` names, for `spec`'s strategy (the evaluator's default factory)."""
    if spec.cache == "dynamic":
        return build_cache(spec, model)
    if spec.cache == "static":
        return StaticStreamingCache(spec, model)
    if spec.cache == "ring":
        return RingStreamingCache(spec, model)
    raise UnsupportedCacheError(f"unknown cache kind {spec.cache!r}; choose one of: dynamic, static, ring")


class EagerDecoder:
    """model(x_t) then cache.end_step(); positions and mask come from the cache."""

    def __init__(self, model: torch.nn.Module, cache: AnyCache):
        self.model, self.cache = model, cache
        self.device = next(model.parameters()).device
        self.forward: Callable[..., torch.Tensor] = self._forward

    def _forward(self, token: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        out = self.model(input_ids=token, position_ids=position_ids, attention_mask=mask,
                         past_key_values=self.cache, use_cache=True)
        return out.logits[0, -1]

    def _inputs(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(self.cache, FixedCache):
            return self.cache.position_ids, self.cache.attention_mask
        return torch.tensor([[self.cache.next_position()]], device=self.device), None

    def step(self, token: torch.Tensor) -> tuple[torch.Tensor, EvictionEvent | None]:
        position_ids, mask = self._inputs()
        logits = self.forward(token, position_ids, mask)
        return logits, self.cache.end_step()


class CompiledDecoder(EagerDecoder):
    """The eager step with the forward compiled by inductor (no CUDA graphs)."""

    def __init__(self, model: torch.nn.Module, cache: AnyCache):
        super().__init__(model, cache)
        # Fixed caches have static shapes: one graph, and a graph break would be a bug.
        fixed = isinstance(cache, FixedCache)
        self.forward = torch.compile(self._forward, fullgraph=fixed, dynamic=False if fixed else None)


class GraphDecoder:
    """decode_step() compiled (or eager) and captured once in a CUDA graph; static/ring caches only."""

    def __init__(self, model: torch.nn.Module, cache: FixedCache, compiled: bool = True, warmup: int = 3,
                 compile_mode: str | None = None):
        if not isinstance(cache, FixedCache):
            raise UnsupportedCacheError("CUDA graphs need the static or ring cache (static shapes, in-place state)")
        self.model, self.cache = model, cache
        device = cache.geometry.device
        self.tokens = torch.zeros(1, 1, dtype=torch.long, device=device)
        self.logits = torch.zeros(model.config.vocab_size, dtype=cache.geometry.dtype, device=device)
        self.compiled = compiled
        # compile_mode: None (inductor default) or e.g. "max-autotune-no-cudagraphs"; never a mode
        # with CUDA graphs of its own: the capture below is the only one.
        self.fn = (torch.compile(self._decode_step, fullgraph=True, dynamic=False, mode=compile_mode)
                   if compiled else self._decode_step)
        self.warmup = warmup
        self.steps = 0
        self.graph: torch.cuda.CUDAGraph | None = None

    def _decode_step(self) -> None:
        # Everything read here is a static buffer; everything produced is written into one.
        cache = self.cache
        out = self.model(input_ids=self.tokens, position_ids=cache.position_ids, attention_mask=cache.attention_mask,
                         past_key_values=cache, use_cache=True)
        self.logits.copy_(out.logits[0, -1])
        cache.advance_device()

    def step(self, token: torch.Tensor) -> tuple[torch.Tensor, EvictionEvent | None]:
        self.tokens.copy_(token.view(1, 1))
        if self.graph is not None:
            self.graph.replay()
        elif self.steps < self.warmup or not self.cache.graph_ready:
            # Real steps on a side stream (compilation, autotuning, cuBLAS workspaces) before capture.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.fn()
            torch.cuda.current_stream().wait_stream(side)
        else:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.fn()  # recorded, not run
            self.graph = graph
            graph.replay()
        self.steps += 1
        event = self.cache.end_step(advance_device=False)
        return self.logits.clone(), event


DecoderFactory = Callable[[torch.nn.Module, AnyCache], object]


def decoder_factory(compile_mode: str = "none", device: torch.device | str = "cpu",
                    cache_kind: str = "dynamic") -> DecoderFactory:
    """The decoder for a --compile mode, after refusing combinations that cannot work."""
    check_compile_combination(compile_mode, cache_kind, torch.device(device))
    if compile_mode == "none":
        return EagerDecoder
    if compile_mode == "default":
        return CompiledDecoder
    return GraphDecoder
