"""Sink + window KV caches for transformers' Cache API (dynamic tensors).

The decode loop owns step boundaries:

    pos = cache.next_position()             # position id for token t
    model(x_t, position_ids=pos, **cache_kwargs(model, cache))   # appends t's K/V (rotated at pos)
    event = cache.end_step()                # C_{t+1} = evict(C_t + [t])

With pos-shift (`PositionMode.SHIFT`) the k-th slot holds a key rotated at position k. When an
eviction moves a kept entry from slot i to slot j, its key is re-rotated by j - i, so the
invariant holds without ever storing pre-RoPE keys (the old HF SinkCache approach). With
absolute positions (dense, no-shift) keys keep the rotation they were computed with.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

from ..rope import RopeSpec, apply_rotation
from ..strategies import PositionMode, StrategySpec, plan_eviction
from .events import EvictionEvent


class StreamingCache(Cache):
    """Cache whose every layer holds the same ordered token list, evicted by `spec`'s rule."""

    def __init__(self, spec: StrategySpec, rope: RopeSpec | None, num_layers: int):
        if spec.position_mode is PositionMode.SHIFT and rope is None:
            raise ValueError(f"strategy {spec.name!r} re-rotates keys and needs the model's RopeSpec")
        super().__init__(layers=[DynamicLayer() for _ in range(num_layers)])
        self.spec = spec
        self.rope = rope
        self.seen = 0  # tokens fed so far: the next token is x_seen
        self.slots: list[int] = []  # text index of the token in each slot (diagnostics, tests)
        self._shift_tables: dict[tuple[int, torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    # -- the step protocol -----------------------------------------------------------------
    @property
    def length(self) -> int:
        return len(self.slots)

    def next_position(self) -> int:
        """Position id of the token about to be fed."""
        return self.length if self.spec.position_mode is PositionMode.SHIFT else self.seen

    def end_step(self, num_tokens: int = 1) -> EvictionEvent | None:
        """Account for the token(s) just fed, then apply the strategy's eviction rule."""
        if num_tokens != 1 and self.spec.name != "dense":
            raise ValueError(
                "streaming caches advance one token per step (eviction semantics are per token); "
                "feed prompts token by token or use the parallel evaluator"
            )
        self.slots.extend(range(self.seen, self.seen + num_tokens))
        self.seen += num_tokens
        length = len(self.slots)
        keep = plan_eviction(self.spec, length, self.seen - 1)
        if keep is None:
            return None
        self._apply(keep, length)
        self.slots = [self.slots[i] for i in keep]
        reinserted = len(keep) - self.spec.sink - self.spec.effective_window if self.spec.name == "refresh" else 0
        return EvictionEvent(
            step=self.seen - 1,
            length_before=length,
            length_after=len(keep),
            evicted=length - len(keep),
            reinserted=reinserted,
        )

    # -- tensor work -----------------------------------------------------------------------
    def _apply(self, keep: list[int], length: int) -> None:
        sink = self.spec.sink
        window = keep[sink:]
        contiguous = window == list(range(window[0], window[0] + len(window))) if window else True
        shift = self.spec.position_mode is PositionMode.SHIFT
        for layer in self.layers:
            if not layer.is_initialized:
                continue
            keys, values = layer.keys, layer.values
            if contiguous and keep[:sink] == list(range(sink)):
                # Fast path (every strategy but refresh): sinks stay put, the window moves left.
                start = window[0] if window else length
                move = start - sink
                kept_window = keys[:, :, start:]
                if shift and move:
                    kept_window = self._shift(kept_window, -move)
                layer.keys = torch.cat((keys[:, :, :sink], kept_window), dim=-2)
                layer.values = torch.cat((values[:, :, :sink], values[:, :, start:]), dim=-2)
            else:
                index = torch.tensor(keep, device=keys.device)
                new_keys = keys.index_select(-2, index)
                if shift:
                    delta = torch.arange(len(keep), dtype=torch.float64) - torch.tensor(keep, dtype=torch.float64)
                    cos, sin = self.rope.cos_sin(delta, torch.float32, keys.device)
                    new_keys = apply_rotation(new_keys, cos, sin, self.rope.rotary_dim)
                layer.keys = new_keys
                layer.values = values.index_select(-2, index)

    def _shift(self, keys: torch.Tensor, delta: int) -> torch.Tensor:
        # The same few shifts recur (strict: always -1; lazy: always -R): cache their cos/sin.
        key = (delta, keys.device, keys.dtype)
        table = self._shift_tables.get(key)
        if table is None:
            table = self.rope.cos_sin(torch.tensor(float(delta)), torch.float32, keys.device)
            self._shift_tables[key] = table
        cos, sin = table
        return apply_rotation(keys, cos, sin, self.rope.rotary_dim)


def build_cache(spec: StrategySpec, model: torch.nn.Module) -> StreamingCache:
    rope = RopeSpec.from_model(model) if spec.position_mode is PositionMode.SHIFT else None
    return StreamingCache(spec, rope, model.config.num_hidden_layers)
