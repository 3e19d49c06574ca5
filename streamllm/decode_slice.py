"""THE timed decode step, the clock it is read from, and the cache it runs on. A `DecodeSlice` is
a cache filled to steady state, its decoder, and a cursor into the text; its `step()` is forward +
the cache's eviction, timed by `Clock`; logits are kept and the NLL computed later, outside the
clock (log_softmax over the vocabulary is not part of a step). `reference_slice` is the reference
arm: the same model attending a fixed number of cached tokens with no eviction code of ours.

The clock lives here, beside the one step it times (docs/architecture.md, "The route of one TPOT
sample"): `Clock` synchronizes the device, reads perf_counter around one call, and on CUDA also
the device time between two events recorded around it (what the GPU spent, idle gaps between
launches included; the per-kernel sum is `streamllm.harness.opcount`'s business). Beside each
step's time, `minor_faults` counts the minor page faults the process took during it: a step that
keeps touching fresh memory is paying for its allocator's state (a fragmented heap growing under
large per-step temporaries), and the suite's ratio check reads that before calling a slower step
a regression.

Filling: our dynamic `StreamingCache` is filled by one chunked forward (before the first eviction
every strategy is plain causal attention at positions 0..n-1, so the chunk leaves the state the
token loop would, and its logits are the token loop's NLL of those steps). Preallocated caches
(static, ring) take one token per step: for timing they jump to steady state with random K/V
(`prime_random`), or, when their NLL is needed, are filled by untimed real decode steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import DynamicCache

from .caches import StreamingCache, make_cache
from .compat import cache_kwargs
from .decode import EagerDecoder
from .models import LoadedModel
from .strategies import StrategySpec

try:  # getrusage: POSIX only; imported once, not on every timed step
    import resource
except ImportError:
    resource = None


# -- the clock --------------------------------------------------------------------------------------
def minor_faults() -> int | None:
    """Minor page faults of this process so far (getrusage), or None where there is no such count."""
    if resource is None:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class Clock:
    """Synchronize, read perf_counter; on CUDA also CUDA events around the timed call."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def time(self, fn: Callable[[], object]) -> tuple[object, float, float | None]:
        """(fn's result, wall ms, device ms or None) of one call, the device idle before and after."""
        self.sync()
        if self.cuda:
            start_event = torch.cuda.Event(enable_timing=True)
            end_event = torch.cuda.Event(enable_timing=True)
            start_event.record()
        start = time.perf_counter()
        out = fn()
        if self.cuda:
            end_event.record()
        self.sync()
        wall = (time.perf_counter() - start) * 1e3
        return out, wall, (start_event.elapsed_time(end_event) if self.cuda else None)


# -- the slice ---------------------------------------------------------------------------------------
class SliceTooShortError(ValueError):
    """The text ends before the slice's fill and timed steps: the message names both and the fix."""


def dense_start(tokens: int, timed_steps: int) -> int:
    """Fill length that centres `timed_steps` dense steps on context tokens/2 (its mean context)."""
    return max(1, min(tokens - timed_steps, tokens // 2 - timed_steps // 2))


def fill_length(spec: StrategySpec, tokens: int, timed_steps: int) -> int:
    """Streaming strategies: `spec.capacity` (|C_t| at its largest), so the first timed step
    appends and evicts and every round starts a cycle. Dense: `dense_start`."""
    return spec.capacity if spec.capacity is not None else dense_start(tokens, timed_steps)


@dataclass
class DecodeSlice:
    """A cache at steady state, its decoder, a cursor into the text, and every step's record."""

    loaded: LoadedModel
    spec: StrategySpec | None  # None for the reference arm
    ids: torch.Tensor  # the whole text (1-D, on the device); decode feeds ids[cursor], ...
    cache: object
    decoder: object  # streamllm.decode decoder: step(token) -> (logits, event)
    cursor: int  # index of the next token to feed
    wrap: bool = False  # reference arm: start over at the fill when the text runs out
    fill_s: float = 0.0
    fill_mode: str = ""  # "chunked" (one forward), "steps" (untimed decode steps) or "random"
    fill_nll: list[float] | None = None
    clock: Clock | None = None
    step_ms: list[float] = field(default_factory=list)
    device_ms: list[float] = field(default_factory=list)  # CUDA only
    pruned: list[bool] = field(default_factory=list)
    evicted: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # text index t of each step
    kv_length: list[int] = field(default_factory=list)  # |C_t| + 1
    fed_position: list[int] = field(default_factory=list)  # position id the cache fed for x_t
    nll: list[float] = field(default_factory=list)  # -log p(x_{t+1}), filled in by flush()
    faults: list[int] = field(default_factory=list)  # minor page faults during each step (where counted)
    _pending: list[torch.Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.clock is None:
            self.clock = Clock(self.loaded.device)
        self._start = self.cursor

    @property
    def remaining(self) -> int:
        """Steps left before the text runs out (the last token is only scored, never fed)."""
        return self.ids.numel() - 1 - self.cursor

    def step(self) -> None:
        """One timed decode step (forward + eviction) on the next token of the text."""
        if self.remaining < 1:
            if not self.wrap:
                raise RuntimeError(f"the timing slice ran out of text ({self.ids.numel()} tokens): "
                                   "use more --tokens or fewer --rounds")
            self.cursor = self._start
        t = self.cursor
        self.kv_length.append(self.cache.length + 1)
        self.fed_position.append(self.cache.next_position())
        token = self.ids[t : t + 1].view(1, 1)
        before = minor_faults()
        with torch.inference_mode():
            (logits, event), wall, device = self.clock.time(lambda: self.decoder.step(token))
        if before is not None:
            self.faults.append(minor_faults() - before)
        self.step_ms.append(wall)
        if device is not None:
            self.device_ms.append(device)
        self._pending.append(logits)
        self.pruned.append(event is not None)
        self.evicted.append(event.evicted if event is not None else 0)
        self.positions.append(t)
        self.cursor += 1

    def flush(self) -> None:
        """NLL of the steps run since the last flush (untimed)."""
        if not self._pending:
            return
        with torch.inference_mode():
            stacked = torch.stack(self._pending).float()
            where = torch.tensor(self.positions[-len(self._pending):], device=self.ids.device)
            nll = -torch.log_softmax(stacked, dim=-1).gather(1, self.ids[where + 1].view(-1, 1)).view(-1)
        self.nll.extend(nll.double().cpu().tolist())
        self._pending.clear()

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step()
        self.flush()


def fill_chunked(loaded: LoadedModel, cache: StreamingCache, ids: torch.Tensor, n: int) -> torch.Tensor:
    """Feed the text's first n tokens to a fresh dynamic cache in one forward; returns their logits.
    Only below the first eviction (every strategy then keeps all n entries)."""
    with torch.inference_mode():
        logits = loaded.model(input_ids=ids[:n].view(1, -1), **cache_kwargs(loaded.model, cache),
                              position_ids=torch.arange(n, device=loaded.device).view(1, -1)).logits[0]
    if cache.spec.name == "dense":
        cache.end_step(n)  # dense accepts a chunk: it never evicts
    else:
        # Streaming caches advance one token per step (end_step refuses a chunk); account for
        # the n entries as n steps would: below capacity the eviction rule keeps them all.
        cache.slots = list(range(n))
        cache.seen = n
    return logits


def prepare_slice(
    loaded: LoadedModel,
    ids: torch.Tensor,
    spec: StrategySpec,
    *,
    timed_steps: int,
    decoder_factory: Callable | None = None,
    cache_factory: Callable = make_cache,
    real_fill: bool = True,
) -> DecodeSlice:
    """Build cache + decoder and fill the cache so the next decode step is at steady state.

    `real_fill=False` lets a preallocated cache jump there with random K/V (timing only)."""
    ids = ids.to(loaded.device)
    n = fill_length(spec, ids.numel(), timed_steps)
    if n + timed_steps > ids.numel() - 1:
        raise SliceTooShortError(
            f"{spec.label()}: filling {n} slots and timing {timed_steps} steps needs {n + timed_steps + 1} tokens, "
            f"the text has {ids.numel()}: raise --tokens or lower --rounds"
        )
    cache = cache_factory(spec, loaded.model)
    decoder = (decoder_factory or EagerDecoder)(loaded.model, cache)
    clock = Clock(loaded.device)
    started = time.perf_counter()
    if type(cache) is StreamingCache:
        logits = fill_chunked(loaded, cache, ids, n)
        with torch.inference_mode():
            fill_nll = -torch.log_softmax(logits.float(), dim=-1).gather(1, ids[1 : n + 1].view(-1, 1)).view(-1)
        clock.sync()
        slice_ = DecodeSlice(loaded, spec, ids, cache, decoder, cursor=n, fill_mode="chunked",
                             fill_nll=fill_nll.double().cpu().tolist(), clock=clock)
    elif not real_fill and hasattr(cache, "prime_random"):
        cache.prime_random(n, torch.Generator(device=loaded.device).manual_seed(0))
        clock.sync()
        slice_ = DecodeSlice(loaded, spec, ids, cache, decoder, cursor=n, fill_mode="random", clock=clock)
    else:
        filler = DecodeSlice(loaded, spec, ids, cache, decoder, cursor=0, clock=clock)
        filler.run(n)
        slice_ = DecodeSlice(loaded, spec, ids, cache, decoder, cursor=n, fill_mode="steps", fill_nll=filler.nll,
                             clock=clock)
    slice_.fill_s = time.perf_counter() - started
    return slice_


class _HeldLengthCache(DynamicCache):
    """transformers' own DynamicCache, cut back to its first `length` entries after every step."""

    def __init__(self, length: int):
        super().__init__()
        self.held = length

    @property
    def length(self) -> int:
        return self.held

    def next_position(self) -> int:
        return self.held

    def end_step(self, num_tokens: int = 1) -> None:
        for layer in self.layers:  # drop the token just appended (a view: one slice per layer)
            layer.keys = layer.keys[:, :, : self.held]
            layer.values = layer.values[:, :, : self.held]


def reference_slice(loaded: LoadedModel, ids: torch.Tensor, length: int,
                    decoder_factory: Callable | None = None) -> DecodeSlice:
    """The reference arm: the same model attending `length` cached tokens, no eviction code of ours.

    transformers' DynamicCache holds the first `length` tokens; each step appends one and crops
    it off again. So the arm costs what any strategy with |C| = length must pay (the forward),
    and a strategy's ratio to it moves only with the strategy's own code."""
    ids = ids.to(loaded.device)
    cache = _HeldLengthCache(length)
    with torch.inference_mode():
        loaded.model(input_ids=ids[:length].view(1, -1), **cache_kwargs(loaded.model, cache))
    decoder = (decoder_factory or EagerDecoder)(loaded.model, cache)
    return DecodeSlice(loaded, None, ids, cache, decoder, cursor=length, wrap=True, fill_mode="chunked")
