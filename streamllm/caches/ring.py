"""Ring cache: strict sink + window semantics in fixed buffers, O(1) eviction by overwrite.

"Absolute frame + sink re-rotation" (design-notes §2). The model is fed absolute position ids t.
Window entries are contiguous, so their pos-shift distances equal true distances t - j: they are
stored rotated at j and never touched again. Only the S sink keys need distance |C_t| - i instead
of t - i, so the cache keeps each sink key as rotated at i (in `sink_store`) and writes it into
its slot rotated by (t - |C_t|) each step (S keys per layer). Nothing moves; eviction is the next
write landing on the oldest window slot. All writes are index_copy_ into whole per-layer tensors:
a slice assignment into a graph input is functionalized by inductor into a copy of the base.

Layout: slots [0, S) hold the sinks, slots [S, S + W + 1) are a ring over the window. Token t
goes to slot t while t < S, else to S + (t - S) mod (W + 1). With W + 1 ring slots, after the
write the ring holds tokens [t - W, t], i.e. exactly C_t's window plus t; the write of t + 1 then
evicts t - W, which strict eviction removes after step t. Before the cache is full the valid
slots are a prefix and the mask hides the rest.

Everything per step is derived on the device from one counter `t` (long tensor): the write slot,
the sink offset, its cos/sin (float64 angles, cast to float32), the mask update. So one captured
CUDA graph serves every step, filling and steady state alike, with no Python-int state read.
Softmax attention does not depend on slot order, so the ring's order is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..combinations import check_cache
from ..rope import RopeSpec, apply_rotation
from ..strategies import PositionMode, StrategySpec
from .events import EvictionEvent
from .fixed import FixedCache, check_one_token, normal_


@dataclass(frozen=True)
class RingLayerStep:
    """What a fused attention kernel needs to do one layer's ring write itself
    (streamllm.kernels.ring_attention): the layer's buffers, the step's slot (1-element long
    tensor) and, when the sinks are re-rotated, their raw store and the step's float32 cos/sin."""

    keys: torch.Tensor
    values: torch.Tensor
    slot: torch.Tensor
    sink_store: torch.Tensor | None = None
    sink_cos: torch.Tensor | None = None
    sink_sin: torch.Tensor | None = None
    sinks: int = 0


class RingStreamingCache(FixedCache):
    kind = "ring"
    # An evicted entry stays in its slot until the next token's write lands on it (O(1) eviction),
    # so after step t the tensors hold C_t + [t], not C_{t+1}: a probe of the tensors must know.
    evicts_on_write = True

    def __init__(self, spec: StrategySpec, model: torch.nn.Module):
        check_cache(spec, "ring")
        self.sink = spec.sink
        self.window = spec.effective_window
        # No padding: once full, every slot holds a token and attention may run without a mask.
        super().__init__(spec, model, self.sink + self.window + 1, pad_to=1)
        device = self.geometry.device
        # Rotate sinks only under pos-shift; no-shift keeps every key at its absolute position.
        self.rotate_sinks = spec.position_mode is PositionMode.SHIFT and self.sink > 0
        self.sinks_recorded = False  # host: all S sink keys are in sink_store
        self._full = False  # host: the token being fed fills the last free slot (or later)
        self.t = torch.zeros(1, 1, dtype=torch.long, device=device)  # position of the token being fed
        self.position_ids = self.t  # absolute frame: the model is fed t itself
        self._slot = torch.zeros(1, dtype=torch.long, device=device)
        self._sink_slot = torch.zeros(1, dtype=torch.long, device=device)
        if self.rotate_sinks:
            self.rope = RopeSpec.from_model(model)
            rot = self.rope.rotary_dim
            geo = self.geometry
            # Raw sink keys (as rotated at i). Row S is a scratch row for the clamped write index.
            self.sink_store = [
                torch.zeros((1, geo.kv_heads, self.sink + 1, geo.head_dim), dtype=geo.dtype,
                            device=geo.layer_device(i))
                for i in range(geo.num_layers)
            ]
            self.sink_index = torch.arange(self.sink, device=device)
            self._key_slots = torch.zeros(self.sink + 1, dtype=torch.long, device=device)
            self.inv_freq = self.rope.inv_freq.to(device)  # float64: t * inv_freq grows with t
            self.cos = torch.ones(rot, dtype=torch.float32, device=device)
            self.sin = torch.zeros(rot, dtype=torch.float32, device=device)
            self._sink_slot_on = self._per_layer(self._sink_slot)
            self._key_slots_on = self._per_layer(self._key_slots)
            self._cos_on, self._sin_on = self._per_layer(self.cos), self._per_layer(self.sin)
        # computed on the input device in _begin_step; layers on other devices read copies
        self._slot_on = self._per_layer(self._slot)

    # -- device side (graph-safe) ----------------------------------------------------------
    def _begin_step(self) -> None:
        t = self.t.view(1)
        sink, ring = self.sink, self.window + 1
        ring_slot = sink + torch.remainder((t - sink).clamp(min=0), ring)
        self._slot.copy_(torch.where(t < sink, t, ring_slot))
        self.attention_mask.index_fill_(-1, self._slot, 0.0)
        if not self.rotate_sinks:
            return
        self._sink_slot.copy_(self._slot.clamp(max=sink))
        self._key_slots.copy_(torch.cat((self.sink_index, self._slot)))
        # |C_t| = min(t, S + W): the sink offset t - |C_t| is 0 until the first eviction.
        offset = (t - (sink + self.window)).clamp(min=0).to(torch.float64)
        angles = offset * self.inv_freq
        angles = torch.cat((angles, angles))
        self.cos.copy_(angles.cos())
        self.sin.copy_(angles.sin())

    def _write(self, layer_idx: int, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        keys = self.layers[layer_idx].keys
        device = self._layer_device(layer_idx)
        slot = self._slot_on.on(device)
        if self.rotate_sinks:
            # Store first, then one scatter writes the S re-rotated sinks and the new key (one
            # kernel per layer once compiled: each launch counts at ~3 us inside a graph). While
            # t < S the new token is itself a sink at offset 0, so both writes to its slot carry
            # the same value (rotation by 0 is exact).
            store = self.sink_store[layer_idx]
            if not self.sinks_recorded:
                # Only the first S tokens are sinks. A host flag (flips once, so a compiled step
                # specializes on it once) keeps this write out of the steady-state graph.
                store.index_copy_(2, self._sink_slot_on.on(device), key_states)
            rotated = apply_rotation(store[:, :, : self.sink], self._cos_on.on(device), self._sin_on.on(device),
                                     self.rope.rotary_dim)
            keys.index_copy_(2, self._key_slots_on.on(device), torch.cat((rotated, key_states), dim=2))
        else:
            keys.index_copy_(2, slot, key_states)
        self.layers[layer_idx].values.index_copy_(2, slot, value_states)

    @property
    def fusable(self) -> bool:
        """Host flag: this step's writes can be done by a fused kernel (`fused_step`): one device
        (no per-device copies) and no raw sink key left to record (the first S tokens keep the
        unfused write, which stores them)."""
        return not self._copies and (not self.rotate_sinks or self.sinks_recorded)

    def fused_step(self, layer_idx: int) -> RingLayerStep:
        """Layer `layer_idx`'s step for a kernel that rotates, writes and re-rotates itself; the
        caller writes exactly what `_write` would: the new K/V at `slot`, and the first `sinks`
        slots as the store's keys rotated by (sink_cos, sink_sin)."""
        if not self.fusable:
            raise RuntimeError("the ring's step is not fusable now (sinks still being recorded, or a spread model)")
        self.prepare(layer_idx)
        layer = self.layers[layer_idx]
        if not self.rotate_sinks:
            return RingLayerStep(layer.keys, layer.values, self._slot)
        return RingLayerStep(layer.keys, layer.values, self._slot, self.sink_store[layer_idx], self.cos, self.sin,
                             self.sink)

    def advance_device(self) -> None:
        self.t.add_(1)

    # -- host side -------------------------------------------------------------------------
    def end_step(self, num_tokens: int = 1, advance_device: bool = True) -> EvictionEvent | None:
        check_one_token(num_tokens, "ring")
        if advance_device:
            self.advance_device()
        length, keep = self._host_step()
        self.sinks_recorded = self.seen >= self.sink
        self._full = self.seen >= self.sink + self.window
        return self._event(self.seen - 1, length, keep)

    @property
    def graph_key(self) -> tuple:
        # A graph captured before the sinks are recorded keeps the store write; one captured
        # after leaves it out: two phases, one graph each.
        return (self.sinks_recorded,)

    @property
    def full(self) -> bool:
        # Token t = seen fills the last free slot when t >= S + W (slots = S + W + 1).
        return self._full

    def _valid_slots(self, seen: int) -> int:
        return min(seen, self.used_slots)

    def prime_prefix(self, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        # Before the first eviction the sink offset is 0: slots [0, S) hold the raw sink keys.
        super().prime_prefix(keys, values)
        if self.rotate_sinks:
            sinks = min(self.seen, self.sink)
            for store, layer_keys in zip(self.sink_store, self.keys, strict=True):
                store.zero_()
                store[:, :, :sinks].copy_(layer_keys[:, :, :sinks])

    def _jump(self, seen: int, generator: torch.Generator | None, valid: int | None = None) -> None:
        valid = self._valid_slots(seen) if valid is None else valid
        self.attention_mask.fill_(self.masked_value)
        self.attention_mask[..., :valid].fill_(0.0)
        if self.rotate_sinks:
            for store in self.sink_store:
                normal_(store, generator)
        self.seen = seen
        self.sinks_recorded = seen >= self.sink
        self._full = seen >= self.sink + self.window
        kept = min(seen, self.sink + self.window)
        self.slots = list(range(self.sink)) + list(range(seen - (kept - self.sink), seen))
        self.slots = self.slots[:kept]
        self.t.fill_(seen)
