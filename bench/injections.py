"""Regressions injected on purpose, to prove what the suite catches (tests and scripts/inject_regression.py).

Each injection patches one cache class's per-step code so that only the named strategy is hit:

- `extra_op`: one extra aten op per layer and step (`torch.cat` of the new key with itself,
  result unused): the kind of change a refactor slips into a cache's update. The work counters
  must fail that strategy, naming `aten.cat`, in every run.
- `slowdown`: every decode step of the strategy takes `fraction` longer (a busy-wait of that
  fraction of the step's own time): a 15 % slower step must fail its same-run TPOT ratio check.

They patch classes (not instances) because the suite builds its caches itself; `undo()` restores them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from streamllm.caches import StreamingCache
from streamllm.caches.fixed import FixedLayer


@dataclass
class Injection:
    undo_steps: list[Callable[[], None]] = field(default_factory=list)

    def undo(self) -> None:
        while self.undo_steps:
            self.undo_steps.pop()()


def _targets(cache, strategy: str, kind: str) -> bool:
    spec = getattr(cache, "spec", None)  # the reference arm's cache has none: never a target
    return spec is not None and spec.name == strategy and spec.cache == kind


def extra_op(strategy: str, cache_kind: str = "dynamic") -> Injection:
    """+1 aten.cat per layer per decode step in `strategy`'s cache (cache kind `cache_kind`)."""
    injection = Injection()
    if cache_kind == "dynamic":
        from transformers.cache_utils import DynamicLayer

        original = DynamicLayer.update

        def update(self, key_states, value_states, *args, **kwargs):
            out = original(self, key_states, value_states, *args, **kwargs)
            if getattr(self, "_streamllm_injected", False):
                torch.cat((key_states, key_states), dim=-2)  # the injected op: result unused
            return out

        build = StreamingCache.__init__

        def init(self, spec, rope, num_layers):
            build(self, spec, rope, num_layers)
            if spec.name == strategy:
                for layer in self.layers:
                    layer._streamllm_injected = True

        DynamicLayer.update, StreamingCache.__init__ = update, init
        injection.undo_steps.append(lambda: setattr(DynamicLayer, "update", original))
        injection.undo_steps.append(lambda: setattr(StreamingCache, "__init__", build))
        return injection
    original_update = FixedLayer.update

    def fixed_update(self, key_states, value_states, *args, **kwargs):
        out = original_update(self, key_states, value_states, *args, **kwargs)
        if _targets(self.owner, strategy, cache_kind):
            torch.cat((key_states, key_states), dim=-2)  # the injected op: result unused
        return out

    FixedLayer.update = fixed_update
    injection.undo_steps.append(lambda: setattr(FixedLayer, "update", original_update))
    return injection


def extra_copy(strategy: str, cache_kind: str = "ring") -> Injection:
    """A preallocated cache's every layer also copies its whole key buffer into a scratch buffer each
    step: a mutation of a static buffer, which a compiled step cannot drop as dead code (an unused
    `torch.cat` it can), so a CUDA-graph row gains one copy kernel per layer, named by the counts."""
    from streamllm.caches.fixed import FixedCache

    if cache_kind not in ("static", "ring"):
        raise ValueError("extra_copy patches the preallocated caches (static, ring)")
    injection = Injection()
    original_init, original_update = FixedCache.__init__, FixedLayer.update

    def init(self, spec, model, *args, **kwargs):
        original_init(self, spec, model, *args, **kwargs)
        if _targets(self, strategy, cache_kind):
            for layer in self.layers:
                layer._streamllm_scratch = torch.empty_like(layer.keys)
                if layer.keys.is_cuda:
                    torch._dynamo.mark_static_address(layer._streamllm_scratch)

    def update(self, key_states, value_states, *args, **kwargs):
        out = original_update(self, key_states, value_states, *args, **kwargs)
        scratch = getattr(self, "_streamllm_scratch", None)
        if scratch is not None:
            scratch.copy_(self.keys)  # the injected full-buffer copy
        return out

    FixedCache.__init__, FixedLayer.update = init, update
    injection.undo_steps.append(lambda: setattr(FixedCache, "__init__", original_init))
    injection.undo_steps.append(lambda: setattr(FixedLayer, "update", original_update))
    return injection


def slowdown(strategy: str, fraction: float, cache_kind: str = "dynamic") -> Injection:
    """Every decode step of `strategy` (on its `cache_kind` cache) takes `fraction` longer: after
    the step, a busy-wait of `fraction` x the time that very step took. Relative to each step, so
    the slowdown is the same fraction whatever else loads the machine."""
    from streamllm.decode import EagerDecoder, GraphDecoder

    injection = Injection()
    for cls in (EagerDecoder, GraphDecoder):
        original = cls.step

        def step(self, token, _original=original):
            start = time.perf_counter()
            out = _original(self, token)
            if _targets(self.cache, strategy, cache_kind):
                stop = time.perf_counter() + fraction * (time.perf_counter() - start)
                while time.perf_counter() < stop:  # busy: a sleep would yield the core and undershoot
                    pass
            return out

        cls.step = step
        injection.undo_steps.append(lambda cls=cls, original=original: setattr(cls, "step", original))
    return injection
