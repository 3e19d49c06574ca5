"""A strategy's own path across its first evictions: what the cache, decoder and kernels of one
configuration compute, and which tokens its tensors hold, measured on real text.

The PPL of a static or ring row comes from the parallel evaluator (it shares no code with those
caches), and its timed steps start from random K/V: neither exercises the row's eviction code on
real keys. This slice does. The cache is filled with the text's first n tokens (n = one short of
the first eviction) from a chunked forward through transformers' own DynamicCache (before the
first eviction every strategy holds token k in slot k at position k, so those K/V are exactly
what n decode steps would write), then decoded step by step through its own decoder across the
first eviction and at least two more eviction events. It records

- the per-token NLL of every decoded step (compared by the harness with a reference path), and
- at the probe steps, the tokens the cache's tensors hold, read from layer 0's value buffer:
  layer-0 values depend only on the token (embedding -> norm -> v_proj, no context, no rotation),
  so each valid slot is matched to the text token whose layer-0 value it equals.

Nothing here judges; `streamllm.harness` compares the numbers with a tolerance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from transformers import DynamicCache

from .caches import FixedCache, StreamingCache, make_cache
from .decode import EagerDecoder
from .decode_slice import DecodeSlice, fill_chunked
from .models import LoadedModel
from .schedule import TextTooShortError, eviction_steps, expected_positions, first_eviction_step, too_short_error
from .strategies import StrategySpec

# A slot matches a text token when their layer-0 values agree to this relative L2 error: the same
# projection of the same embedding, computed as a batch-1 GEMV in the decode and as a GEMM in the
# chunked forward (fp16 rounding ~1e-3); two different tokens differ by O(1).
MATCH_RELATIVE = 3e-2
UNMATCHED = -1  # a slot whose value matches no token of the text so far


@dataclass(frozen=True)
class Holding:
    """After decode step `step`: token ids read from the cache's tensors vs the schedule's (sorted)."""

    step: int
    held: tuple[int, ...]
    expected: tuple[int, ...]

    @property
    def matches(self) -> bool:
        return self.held == self.expected

    def difference(self) -> str:
        """'missing [..] extra [..]' in token ids (a multiset difference), '' when equal."""
        held, want = list(self.held), list(self.expected)
        for token in self.expected:
            if token in held:
                held.remove(token)
                want.remove(token)
        return f"missing token ids {want[:6]}, extra {held[:6]} (of {len(self.expected)} expected)"


@dataclass(frozen=True)
class OwnPath:
    """One configuration's decode across its first evictions (see the module docstring)."""

    strategy: str
    cache: str  # cache kind
    decoder: str  # decoder class
    fill: str  # how the first n tokens entered the cache
    steps: tuple[int, ...]  # text index t of each decoded step (feeds x_t, scores x_{t+1})
    nll: tuple[float, ...]
    events: tuple[int, ...]  # steps whose end evicts, by the closed-form schedule, inside `steps`
    holdings: tuple[Holding, ...]

    def place(self, step: int) -> str:
        """Where `step` lies in the eviction schedule, for a message."""
        before = [e for e in self.events if e < step]
        if not before:
            return "before the first eviction" if step < self.events[0] else "the first eviction's step"
        if step in self.events:
            return f"eviction event {self.events.index(step) + 1} (the step whose end evicts)"
        return f"{step - before[-1]} step(s) after eviction event {len(before)}"

    def to_dict(self) -> dict:
        return asdict(self)


def slice_steps(spec: StrategySpec, events_after_first: int = 2, min_after: int = 8) -> tuple[int, int]:
    """(first decoded step, last decoded step): from the first eviction's step through
    `events_after_first` more events, and at least `min_after` steps after the first event (a
    rotation error grows with the sinks' offset, which grows one position per step)."""
    first = first_eviction_step(spec)
    if first is None:
        raise ValueError(f"{spec.label()} never evicts: it has no eviction path to follow")
    r = max(1, spec.compress_every)
    return first, first + max(events_after_first * r + 1, min_after)


def reference_kv(loaded: LoadedModel, ids: torch.Tensor, n: int) -> DynamicCache:
    """K/V of the text's first n tokens from one chunked forward through transformers' DynamicCache."""
    cache = DynamicCache()
    with torch.inference_mode():
        loaded.model(input_ids=ids[:n].view(1, -1).to(loaded.device), past_key_values=cache, use_cache=True,
                     position_ids=torch.arange(n, device=loaded.device).view(1, -1))
    return cache


def layer0_values(kv: DynamicCache) -> torch.Tensor:
    """[tokens, kv_heads * head_dim] float32: each text token's layer-0 value."""
    values = kv.layers[0].values[0]  # [kv_heads, n, head_dim]
    return values.transpose(0, 1).reshape(values.shape[1], -1).float()


def _valid_values(cache: object) -> torch.Tensor:
    """[valid slots, kv_heads * head_dim] float32: layer 0's values of the slots attention reads."""
    if isinstance(cache, FixedCache):
        values = cache.values[0][0]
        valid = (cache.attention_mask.reshape(-1) == 0).to(values.device)
        values = values[:, valid[: values.shape[1]]]
    elif isinstance(cache, StreamingCache):
        values = cache.layers[0].values[0]
    else:
        raise TypeError(f"cannot read the tensors of a {type(cache).__name__}")
    return values.transpose(0, 1).reshape(values.shape[1], -1).float()


def held_tokens(cache: object, reference: torch.Tensor, ids: torch.Tensor, upto: int) -> tuple[int, ...]:
    """Token ids the cache's valid slots hold, sorted, read from its tensors: each slot's layer-0
    value matched to the nearest of the text's tokens 0..upto (UNMATCHED when none is close)."""
    slots = _valid_values(cache).to(reference.device)
    table = reference[: upto + 1]
    distance = torch.cdist(slots, table)
    best, index = distance.min(dim=1)
    scale = table.norm(dim=1)[index].clamp(min=1e-6)
    tokens = ids.to(index.device)[index]
    tokens = torch.where(best / scale <= MATCH_RELATIVE, tokens, torch.full_like(tokens, UNMATCHED))
    return tuple(sorted(tokens.tolist()))


def expected_tokens(spec: StrategySpec, cache: object, ids: torch.Tensor, step: int) -> tuple[int, ...]:
    """Token ids the schedule says the tensors hold after `step`. A cache that evicts by
    overwriting (`evicts_on_write`: the ring) still holds the entry the next write replaces, so
    it holds C_step + [step] rather than C_{step+1}."""
    positions = expected_positions(spec, step)
    if getattr(cache, "evicts_on_write", False) and step > 0:
        positions = sorted(set(expected_positions(spec, step - 1)) | {step})
    return tuple(sorted(ids[positions].tolist()))


def fill_prefix(loaded: LoadedModel, cache: object, kv: DynamicCache, ids: torch.Tensor, n: int) -> str:
    """Put the text's first n tokens into `cache` (fresh or used); returns how."""
    if isinstance(cache, FixedCache):
        cache.prime_prefix([layer.keys[:, :, :n] for layer in kv.layers],
                           [layer.values[:, :, :n] for layer in kv.layers])
        return "prefix K/V copied from transformers' DynamicCache"
    if isinstance(cache, StreamingCache) and cache.seen == 0:
        fill_chunked(loaded, cache, ids, n)
        return "one chunked forward"
    raise TypeError(f"cannot refill a used {type(cache).__name__}: build a new one")


def own_path(loaded: LoadedModel, ids: torch.Tensor, spec: StrategySpec, *,
             decoder_factory: Callable | None = None, cache: object | None = None, decoder: object | None = None,
             events_after_first: int = 2, min_after: int = 8) -> OwnPath:
    """Decode `spec`'s configuration across its first evictions (module docstring).

    `cache` and `decoder`: an existing pair to reuse (a timed slice's: its compiled step and
    captured graphs then serve this slice too, with no recompile); else a new cache of
    `spec.cache` and `decoder_factory`'s decoder (eager by default)."""
    ids = ids.to(loaded.device)
    first, last = slice_steps(spec, events_after_first, min_after)
    tokens = int(ids.numel())
    if tokens - 2 < first + 1:
        raise too_short_error(spec, tokens, first)
    last = min(last, tokens - 2)
    events = tuple(e for e in eviction_steps(spec, last + 1) if e >= first)
    if cache is None:
        cache = make_cache(spec, loaded.model)
        decoder = (decoder_factory or EagerDecoder)(loaded.model, cache)
    elif decoder is None:
        raise ValueError("a reused cache needs its decoder")
    kv = reference_kv(loaded, ids, last + 1)
    reference = layer0_values(kv)
    fill = fill_prefix(loaded, cache, kv, ids, first)
    slice_ = DecodeSlice(loaded, spec, ids, cache, decoder, cursor=first)
    probes = {first, first + 1, *events[1:3], last}
    holdings = []
    for t in range(first, last + 1):
        slice_.step()
        if t in probes:
            holdings.append(Holding(t, held_tokens(cache, reference, ids, t), expected_tokens(spec, cache, ids, t)))
    slice_.flush()
    del kv
    return OwnPath(spec.label(), spec.cache, type(decoder).__name__, fill, tuple(range(first, last + 1)),
                   tuple(slice_.nll), events, tuple(holdings))


__all__ = ["Holding", "OwnPath", "TextTooShortError", "own_path", "held_tokens", "slice_steps"]
