"""Shared plumbing for the preallocated caches (static and ring): buffers, mask, HF Cache glue.

Both caches keep each layer's keys and values in its own tensor `[batch=1, kv_heads, slots,
head_dim]` allocated once, so a step writes in place (index_copy_) and shapes never change (what
CUDA graphs and `torch.compile` without recompiles need). One tensor for all layers with a view
per layer was measured 3x slower under inductor on the H100 (14.9 vs 4.6 ms/token graphed eager):
each in-place write into a view of a graph input is functionalized into a scatter of the whole
base, so every layer copied every layer's cache. Slots that hold no token are hidden by an additive
4-D attention mask `[1, 1, 1, slots]` (0 where a token lives, dtype min elsewhere); transformers
returns a 4-D mask as-is (masking_utils._preprocess_mask_arguments), so the model attends to
exactly the slots the cache says.

Everything the forward reads (write slot, position ids, mask, rotation angles) lives in device
tensors updated in place, so one captured graph serves every step.

A model spread over devices (`load_model(device_map="auto")`) computes each layer's K/V on that
layer's device: each FixedLayer's buffers are allocated there (`KVGeometry.layer_devices`), the
mask and position ids stay on the input device (accelerate moves inputs to each layer), and every
per-step tensor a layer's write reads has one copy per other layer device (`DeviceCopies`),
refreshed once per step. On one device there are no copies and no extra ops, so the step (and a
CUDA graph captured from it) is exactly what it was; CUDA graphs do not span devices, so a spread
cache is for the eager decoder. The host keeps a mirror
(`seen`, `slots`) for the step protocol and the evaluator's diagnostics; it is never read inside
the forward.

Step protocol (same as `StreamingCache`):

    pos = cache.next_position()            # effective (pos-shift) position, for diagnostics
    model(x_t, position_ids=cache.position_ids, attention_mask=cache.attention_mask,
          past_key_values=cache)          # writes t's K/V in place
    event = cache.end_step()               # advance counters, evict
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from ..combinations import UnsupportedCombinationError
from ..strategies import PositionMode, StrategySpec, plan_eviction
from .events import EvictionEvent

# The combination rules' error, under the name the cache modules have always raised.
UnsupportedCacheError = UnsupportedCombinationError


@dataclass(frozen=True)
class KVGeometry:
    """Per-layer K/V shape of a decoder-only HF model (batch 1), and where each layer computes."""

    num_layers: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device  # the input device: mask, position ids and step counters live here
    layer_devices: tuple[torch.device, ...] = ()  # per layer; empty: every layer on `device`

    def layer_device(self, index: int) -> torch.device:
        return self.layer_devices[index] if self.layer_devices else self.device

    @property
    def other_devices(self) -> list[torch.device]:
        """Layer devices besides the input device (empty unless the model is spread)."""
        return sorted({d for d in self.layer_devices if d != self.device}, key=str)

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> KVGeometry:
        from ..models import input_device, layer_devices

        config = model.config
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        # INT8 weights are tensor subclasses whose dtype is the compute dtype; activations (and
        # so K/V) follow the embedding's dtype, which quantization never touches.
        dtype = model.get_input_embeddings().weight.dtype
        device = input_device(model)
        try:
            devices = tuple(layer_devices(model))
        except ValueError:  # layers not found by shape: the model is on one device as far as we know
            devices = ()
        if len(devices) != config.num_hidden_layers or all(d == device for d in devices):
            devices = ()  # one device: the cache is exactly the single-device one
        return cls(config.num_hidden_layers, kv_heads, head_dim, dtype, device, devices)


class DeviceCopies:
    """A per-step device tensor that layers read, plus one copy on each other layer device.

    The cache updates `main` (on the input device); `sync()` refreshes the copies once per step,
    before the first layer on another device reads them; `on(device)` is what a layer uses."""

    def __init__(self, main: torch.Tensor, devices: list[torch.device]):
        self.main = main
        # copy=True: a copy even where `d` names the main tensor's device another way (cpu:0 vs cpu)
        self.copies = {d: main.to(d, copy=True) for d in devices if d != main.device}

    def on(self, device: torch.device) -> torch.Tensor:
        return self.main if device == self.main.device else self.copies[device]

    def sync(self) -> None:
        for copy in self.copies.values():
            copy.copy_(self.main)


class FixedLayer(CacheLayerMixin):
    """One decoder layer's preallocated K/V, as a transformers cache layer.

    transformers' `Cache.update` hands each layer's new K/V to its layer object with whatever
    extra arguments this release passes; the layer forwards only the tensors to its owning
    cache, which decides the slot (the step's device state is shared by all layers). So an
    upstream change of `update`'s signature or of the Cache's bookkeeping meets the layer
    interface transformers itself maintains, not a hand-written copy of it.
    """

    is_compileable = True
    is_sliding = False
    is_croppable = False

    def __init__(self, owner: FixedCache, index: int, shape: tuple[int, ...], dtype: torch.dtype,
                 device: torch.device):
        super().__init__()
        self.owner, self.index = owner, index
        # zeros, not empty: masked slots still enter q·k, and NaN garbage times a zero softmax
        # weight is NaN.
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.device = device
        self.batch_size = shape[0]
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> None:
        pass  # preallocated in __init__

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        return self.owner.write(self.index, key_states, value_states)

    def get_mask_sizes(self, *args, **kwargs) -> tuple[int, int]:
        return self.owner.num_slots, 0

    def get_seq_length(self, *args, **kwargs) -> int:
        return self.owner.length

    def get_max_length(self, *args, **kwargs) -> int:
        return self.owner.num_slots

    def reset(self) -> None:
        raise NotImplementedError("streaming caches are built per run; make a new one instead of reset()")


class FixedCache(Cache):
    """Base class: one FixedLayer per decoder layer + the mask; subclasses choose slots and eviction."""

    kind = "fixed"

    def __init__(self, spec: StrategySpec, model: torch.nn.Module, num_slots: int, pad_to: int = 8):
        self.spec = spec
        self.geometry = geo = KVGeometry.from_model(model)
        # Slots the strategy uses; the buffers may round up to a multiple of `pad_to` (16-byte rows
        # of the fp16 mask, which SDPA's memory-efficient kernel would otherwise pad on every
        # call). Extra slots stay masked forever, so a padded cache always needs its mask.
        self.used_slots = num_slots
        self.num_slots = num_slots = -(-num_slots // pad_to) * pad_to
        shape = (1, geo.kv_heads, num_slots, geo.head_dim)
        super().__init__(layers=[FixedLayer(self, i, shape, geo.dtype, geo.layer_device(i))
                                 for i in range(geo.num_layers)])
        self._copies: list[DeviceCopies] = []  # per-step tensors with copies on other layer devices
        self.masked_value = torch.finfo(geo.dtype).min
        self.attention_mask = torch.full((1, 1, 1, num_slots), self.masked_value, dtype=geo.dtype, device=geo.device)
        self.seen = 0  # host mirror: tokens fed so far
        self.slots: list[int] = []  # host mirror: text index of each cache entry in pos-shift order
        for tensor in (*self.keys, *self.values, self.attention_mask):
            _mark_static(tensor)

    def _per_layer(self, tensor: torch.Tensor) -> DeviceCopies:
        """Register a per-step tensor the layers' writes read (copied to other layer devices each step)."""
        copies = DeviceCopies(tensor, self.geometry.other_devices)
        if copies.copies:
            self._copies.append(copies)
        return copies

    def _layer_device(self, layer_idx: int) -> torch.device:
        return self.geometry.layer_device(layer_idx)

    @property
    def keys(self) -> list[torch.Tensor]:
        return [layer.keys for layer in self.layers]

    @property
    def values(self) -> list[torch.Tensor]:
        return [layer.values for layer in self.layers]

    # -- the step protocol -----------------------------------------------------------------
    @property
    def length(self) -> int:
        return len(self.slots)

    def next_position(self) -> int:
        """Effective position of the token about to be fed (pos-shift: |C_t|), as in StreamingCache."""
        return self.length if self.spec.position_mode is PositionMode.SHIFT else self.seen

    def _host_step(self) -> tuple[int, list[int] | None]:
        """Advance the host mirror by one token and apply the shared eviction rule to it."""
        self.slots.append(self.seen)
        self.seen += 1
        length = len(self.slots)
        keep = plan_eviction(self.spec, length, self.seen - 1)
        if keep is not None:
            self.slots = [self.slots[i] for i in keep]
        return length, keep

    @staticmethod
    def _event(step: int, length: int, keep: list[int] | None) -> EvictionEvent | None:
        if keep is None:
            return None
        return EvictionEvent(step=step, length_before=length, length_after=len(keep), evicted=length - len(keep))

    # -- the write every layer's update lands in -------------------------------------------
    def write(self, layer_idx: int, key_states: torch.Tensor, value_states: torch.Tensor):
        if key_states.shape[0] != 1 or key_states.shape[-2] != 1:
            raise ValueError(
                f"{type(self).__name__} takes one token of batch 1 per step (got K/V {tuple(key_states.shape)}); "
                "feed text token by token"
            )
        self.prepare(layer_idx)
        self._write(layer_idx, key_states, value_states)
        layer = self.layers[layer_idx]
        return layer.keys, layer.values

    def prepare(self, layer_idx: int) -> None:
        """The step's shared device state (slot, mask, angles), computed before layer 0's write.
        A fused kernel that writes the layer itself calls this instead of `write`."""
        if layer_idx == 0:
            self._begin_step()
            for copies in self._copies:  # none on one device
                copies.sync()

    # -- subclass hooks (device-only: they run inside captured graphs) ---------------------
    def _begin_step(self) -> None:
        raise NotImplementedError

    def _write(self, layer_idx: int, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise NotImplementedError

    @property
    def graph_key(self) -> tuple:
        """Host flags the forward's code depends on; a captured graph is valid while they hold."""
        return ()

    @property
    def full(self) -> bool:
        """Every slot holds a token after this step's write (no mask needed); host flag."""
        return False

    def advance_device(self) -> None:
        """Device-side counter update after a step (captured with the forward in graph mode)."""
        raise NotImplementedError

    def end_step(self, num_tokens: int = 1, advance_device: bool = True) -> EvictionEvent | None:
        raise NotImplementedError

    def prime_random(self, seen: int, generator: torch.Generator | None = None) -> None:
        """Timing only: jump to steady state after `seen` tokens with random K/V (no forward)."""
        self._randomize(self._valid_slots(seen), generator)
        self._jump(seen, generator)

    def _valid_slots(self, seen: int) -> int:
        """Slots that hold a token after `seen` tokens have been fed (a prefix of the buffer)."""
        raise NotImplementedError

    def prime_prefix(self, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """The state after feeding the text's first n tokens, from another cache's K/V of them
        (`[1, kv_heads, n, head_dim]` per layer, keys rotated at their positions 0..n-1).

        Only before the first eviction, where every strategy holds token k in slot k at position
        k: there a chunked forward through transformers' own cache computes exactly what n
        decode steps would write, and the cache's own write path takes over from step n on. It
        refills a cache that was already used (a timed slice's), so its compiled decoder and
        captured graphs serve the refilled state too."""
        n = int(keys[0].shape[-2])
        if n > self.spec.sink + self.spec.effective_window + max(1, self.spec.compress_every) - 1:
            raise ValueError(f"{self.spec.label()}: prime_prefix takes at most the tokens before the first eviction "
                             f"(got {n})")
        for mine, theirs in zip((*self.keys, *self.values), (*keys, *values), strict=True):
            mine.zero_()
            mine[:, :, :n].copy_(theirs)
        self._jump(n, None, valid=n)

    def _jump(self, seen: int, generator: torch.Generator | None, valid: int | None = None) -> None:
        """Set the mask, counters and host mirror to the state after `seen` tokens (K/V already
        written); `valid`: slots holding a token, when not the steady state's `_valid_slots`."""
        raise NotImplementedError

    def _randomize(self, slots: int, generator: torch.Generator | None) -> None:
        for tensor in (*self.keys, *self.values):
            normal_(tensor[:, :, :slots], generator)


def normal_(tensor: torch.Tensor, generator: torch.Generator | None) -> None:
    """In-place N(0, 1); a generator of another device (spread models) draws there and copies."""
    if generator is None or generator.device == tensor.device:
        tensor.normal_(generator=generator)
    else:
        tensor.copy_(torch.randn(tensor.shape, generator=generator, device=generator.device, dtype=tensor.dtype))


def _mark_static(tensor: torch.Tensor) -> None:
    # torch.compile's CUDA-graph trees (mode="reduce-overhead") would otherwise copy mutated
    # inputs on every call or refuse to graph them; transformers' StaticCache does the same.
    if tensor.is_cuda:
        torch._dynamo.mark_static_address(tensor)


def check_one_token(num_tokens: int, kind: str) -> None:
    if num_tokens != 1:
        raise ValueError(f"the {kind} cache advances one token per step; feed text token by token")
