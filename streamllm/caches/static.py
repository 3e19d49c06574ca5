"""Static cache: sink + window in a preallocated buffer, eviction by in-place shift (the log's "static").

Same semantics as `StreamingCache` for strict, lazy, window, overlap and no-shift (per-token NLL
equal to the dynamic cache): slot k holds the k-th entry of C_t, so with pos-shift the token
about to be fed has position |C_t| and keys in slot k are rotated at k. Eviction (decided on the
host by `plan_eviction`, the one source of eviction semantics) moves the window left by `move`
slots inside the buffer and re-rotates the moved keys by -move, like the dynamic cache but
without reallocating. The shift is O(W) per eviction: strict pays it every step, lazy R once per
R steps. Refresh (non-contiguous keep lists) and dense (unbounded) are refused.

The forward only reads device tensors (write slot, position ids, mask), so it can be captured in
a CUDA graph; the shift runs outside the graph, between replays, with a fixed shape per strategy.
"""

from __future__ import annotations

import torch

from ..combinations import check_cache
from ..rope import RopeSpec, apply_rotation
from ..strategies import PositionMode, StrategySpec
from .events import EvictionEvent
from .fixed import FixedCache, check_one_token


class StaticStreamingCache(FixedCache):
    kind = "static"

    def __init__(self, spec: StrategySpec, model: torch.nn.Module):
        check_cache(spec, "static")
        capacity = spec.capacity  # largest |C_t|; the new token takes one more slot
        super().__init__(spec, model, capacity + 1)
        self.shift = spec.position_mode is PositionMode.SHIFT
        self.rope = RopeSpec.from_model(model) if self.shift else None
        device = self.geometry.device
        self.length_t = torch.zeros(1, dtype=torch.long, device=device)  # |C_t| = write slot
        self.seen_t = torch.zeros(1, dtype=torch.long, device=device)
        self.position_ids = torch.zeros(1, 1, dtype=torch.long, device=device)
        self._write_slot = self._per_layer(self.length_t)  # layers on other devices index with a copy
        self._shift_tables: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    # -- device side (graph-safe) ----------------------------------------------------------
    def _begin_step(self) -> None:
        self.attention_mask.index_fill_(-1, self.length_t, 0.0)

    def _write(self, layer_idx: int, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        slot = self._write_slot.on(self._layer_device(layer_idx))
        self.layers[layer_idx].keys.index_copy_(2, slot, key_states)
        self.layers[layer_idx].values.index_copy_(2, slot, value_states)

    def advance_device(self) -> None:
        self.length_t.add_(1)
        self.seen_t.add_(1)
        self._sync_position()

    def _sync_position(self) -> None:
        source = self.length_t if self.shift else self.seen_t
        self.position_ids.copy_(source.view(1, 1))

    # -- host side -------------------------------------------------------------------------
    def end_step(self, num_tokens: int = 1, advance_device: bool = True) -> EvictionEvent | None:
        check_one_token(num_tokens, "static")
        if advance_device:
            self.advance_device()
        length, keep = self._host_step()
        if keep is not None:
            self._evict(keep, length)
        return self._event(self.seen - 1, length, keep)

    def _evict(self, keep: list[int], length: int) -> None:
        sink = self.spec.sink
        window = len(keep) - sink
        start = keep[sink] if window else length
        move = start - sink
        if keep != list(range(sink)) + list(range(start, start + window)):
            raise AssertionError(f"static cache expects sinks + a contiguous window, got keep={keep[:8]}...")
        if move:
            for keys, values in zip(self.keys, self.values, strict=True):
                cos, sin = self._table(-move, keys.device) if self.shift else (None, None)
                # Sources overlap destinations: build the moved block first, then write it.
                moved = keys[:, :, start:length]
                moved = apply_rotation(moved, cos, sin, self.rope.rotary_dim) if self.shift else moved.clone()
                keys[:, :, sink : sink + window].copy_(moved)
                values[:, :, sink : sink + window].copy_(values[:, :, start:length].clone())
        self.attention_mask[..., len(keep) :].fill_(self.masked_value)
        self.length_t.fill_(len(keep))
        self._sync_position()

    def _table(self, delta: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # Strict always shifts by 1 and lazy R by R: one cos/sin pair per strategy (and layer
        # device), computed in float64 on the host once.
        table = self._shift_tables.get((delta, device))
        if table is None:
            table = self.rope.cos_sin(torch.tensor(float(delta)), torch.float32, device)
            self._shift_tables[(delta, device)] = table
        return table

    def _valid_slots(self, seen: int) -> int:
        # right after an eviction once seen > S + W: the first S + W slots hold sinks + window
        return min(seen, self.spec.sink + self.spec.effective_window)

    def _jump(self, seen: int, generator: torch.Generator | None, valid: int | None = None) -> None:
        length = self._valid_slots(seen) if valid is None else valid
        self.attention_mask.fill_(self.masked_value)
        self.attention_mask[..., :length].fill_(0.0)
        self.seen = seen
        self.slots = list(range(self.spec.sink)) + list(range(seen - (length - self.spec.sink), seen))
        self.slots = self.slots[:length]
        self.length_t.fill_(length)
        self.seen_t.fill_(seen)
        self._sync_position()
