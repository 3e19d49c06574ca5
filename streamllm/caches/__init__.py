"""Sink + window KV caches, all built on transformers' per-layer cache classes.

- `dynamic.StreamingCache`: DynamicLayer tensors grown by cat, evicted by slicing and
  re-rotation; every strategy.
- `static.StaticStreamingCache`: preallocated FixedLayers, eviction by in-place shift.
- `ring.RingStreamingCache`: preallocated FixedLayers, O(1) eviction by overwrite; strict only.

Which cache may hold which strategy (and with which compile mode, INT8, device) is decided in
`streamllm.combinations`; `make_cache` builds the kind a spec names.
"""

from __future__ import annotations

import torch

from .dynamic import StreamingCache, build_cache
from .events import EvictionEvent
from .fixed import FixedCache, KVGeometry, UnsupportedCacheError
from .ring import RingStreamingCache
from .static import StaticStreamingCache

AnyCache = StreamingCache | FixedCache

__all__ = [
    "AnyCache", "EvictionEvent", "FixedCache", "KVGeometry", "RingStreamingCache", "StaticStreamingCache",
    "StreamingCache", "UnsupportedCacheError", "build_cache", "make_cache",
]


def make_cache(spec, model: torch.nn.Module) -> AnyCache:
    """The cache kind `spec.cache` names, for `spec`'s strategy (the evaluator's default factory)."""
    if spec.cache == "dynamic":
        return build_cache(spec, model)
    if spec.cache == "static":
        return StaticStreamingCache(spec, model)
    if spec.cache == "ring":
        return RingStreamingCache(spec, model)
    raise UnsupportedCacheError(f"unknown cache kind {spec.cache!r}; choose one of: dynamic, static, ring")
