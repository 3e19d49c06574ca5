"""Steady-state decode slices: the TPOT the suite times.

Timing the whole text token by token costs ~40 ms x 1023 steps per strategy on 2 CPU cores, far
over the suite's budget. What design-notes §4 asks for is TPOT *at steady state* (cache full),
so the suite fills the cache cheaply and then times short slices of real decode steps through
the library's own decoders (`streamllm.decode`: eager, compiled, CUDA graph), exactly the step
`evaluate_tokens` times: forward + the cache's eviction, device-synchronized before each clock
read. The NLL of every timed step is computed outside the timed region and compared with the
evaluator's per-token NLL at the same positions (a cheap end-to-end check that the timed cache
computes what the PPL check scored).

A *round* is a whole number of eviction cycles (lazy R: every R-th step prunes), so each round
pays its pruning cost once per cycle. The raw per-step times are kept; the samples the
statistics compare are per-cycle means (design-notes §4: a median would hide the pruning step).

Filling: our dynamic `StreamingCache` is filled by one chunked forward (before the first
eviction every strategy is plain causal attention at positions 0..n-1, so the chunk leaves the
state the token loop would, and its logits are the token loop's NLL of those steps;
tests/test_bench_glue.py pins it). Preallocated caches (static, ring) take one token per step:
for timing they jump to steady state with random K/V (`prime_random`, their timing-only API),
or, when their NLL is needed (--evaluator token), are filled by untimed real decode steps.

Where dense is timed: its step cost grows with the context, so its slice is centred on context
N/2, its mean context over an N-token text; the slice's mean TPOT then estimates dense total
time / N, and `speedup = dense mean TPOT / strategy mean TPOT` estimates design-notes §4's
dense total / strategy total (ignoring the strategy's fill phase, which slightly favours dense).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from streamllm.caches import StreamingCache
from streamllm.compat import cache_kwargs
from streamllm.decode import EagerDecoder, make_cache
from streamllm.models import LoadedModel
from streamllm.strategies import StrategySpec


def synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def steps_per_round(cycle: int, min_steps: int) -> int:
    """Smallest multiple of the eviction cycle that is >= min_steps."""
    return cycle * max(1, math.ceil(min_steps / cycle))


def dense_start(tokens: int, timed_steps: int) -> int:
    """Fill length that centres `timed_steps` dense steps on context tokens/2."""
    return max(1, min(tokens - timed_steps, tokens // 2 - timed_steps // 2))


def fill_length(spec: StrategySpec, tokens: int, timed_steps: int) -> int:
    """Streaming strategies: `spec.capacity` (|C_t| at its largest), so the first timed step
    appends and evicts and every round starts a cycle. Dense: `dense_start`."""
    return spec.capacity if spec.capacity is not None else dense_start(tokens, timed_steps)


@dataclass
class DecodeSlice:
    """A cache filled to steady state, its decoder, and a cursor into the text."""

    loaded: LoadedModel
    spec: StrategySpec
    ids: torch.Tensor  # the whole text (1-D, on the device); decode feeds ids[cursor], ...
    cache: object
    decoder: object  # streamllm.decode decoder: step(token) -> (logits, event)
    cursor: int  # index of the next token to feed
    fill_s: float = 0.0
    fill_mode: str = ""  # "chunked" (one forward), "steps" (untimed decode steps) or "random"
    fill_nll: list[float] | None = None  # NLL of the fill's steps (None for a random fill)
    calls: list[list[float]] = field(default_factory=list)  # per run_round call: per-step ms
    prunes: list[list[bool]] = field(default_factory=list)  # per call: did the step evict
    positions: list[list[int]] = field(default_factory=list)  # per call: text index t of each step
    nll: list[list[float]] = field(default_factory=list)  # per call: -log p(x_{t+1}) (untimed)
    evicted: list[list[int]] = field(default_factory=list)  # per call: entries evicted by each step
    kv_length: list[int] = field(default_factory=list)  # |C_t| + 1 of every step run
    fed_position: list[int] = field(default_factory=list)  # position id the cache fed for x_t

    @property
    def remaining(self) -> int:
        """Steps left before the text runs out (the last token is only scored, never fed)."""
        return self.ids.numel() - 1 - self.cursor

    def run_round(self, steps: int) -> None:
        """Decode `steps` tokens, recording each step's device-synchronized wall time (ms)."""
        if steps > self.remaining:
            raise RuntimeError(
                f"the timing slice ran out of text ({self.ids.numel()} tokens) at token {self.cursor}: "
                "use more --tokens or fewer --rounds"
            )
        sync = synchronizer(self.loaded.device)
        times: list[float] = []
        pruned: list[bool] = []
        evicted: list[int] = []
        where: list[int] = []
        logits_kept: list[torch.Tensor] = []
        with torch.inference_mode():
            for _ in range(steps):
                t = self.cursor
                self.kv_length.append(self.cache.length + 1)
                self.fed_position.append(self.cache.next_position())
                token = self.ids[t : t + 1].view(1, 1)
                sync()
                start = time.perf_counter()
                logits, event = self.decoder.step(token)
                sync()
                times.append((time.perf_counter() - start) * 1e3)
                logits_kept.append(logits)
                pruned.append(event is not None)
                evicted.append(event.evicted if event is not None else 0)
                where.append(t)
                self.cursor += 1
            # NLL after the timed loop: log_softmax over the vocabulary is not part of a step.
            stacked = torch.stack(logits_kept).float()
            targets = self.ids[where[0] + 1 : where[-1] + 2]
            nll = -torch.log_softmax(stacked, dim=-1).gather(1, targets.view(-1, 1)).view(-1)
        self.calls.append(times)
        self.prunes.append(pruned)
        self.evicted.append(evicted)
        self.positions.append(where)
        self.nll.append(nll.double().cpu().tolist())


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
        raise ValueError(
            f"{spec.label()}: filling {n} slots and timing {timed_steps} steps needs {n + timed_steps + 1} tokens, "
            f"the text has {ids.numel()}: raise --tokens or lower --rounds"
        )
    cache = cache_factory(spec, loaded.model)
    decoder = (decoder_factory or EagerDecoder)(loaded.model, cache)
    sync = synchronizer(loaded.device)
    started = time.perf_counter()
    if type(cache) is StreamingCache:
        with torch.inference_mode():
            logits = loaded.model(input_ids=ids[:n].view(1, -1), **cache_kwargs(loaded.model, cache),
                                  position_ids=torch.arange(n, device=loaded.device).view(1, -1)).logits[0]
            fill_nll = -torch.log_softmax(logits.float(), dim=-1).gather(1, ids[1 : n + 1].view(-1, 1)).view(-1)
        if spec.name == "dense":
            cache.end_step(n)  # dense accepts a chunk: it never evicts
        else:
            # Streaming caches advance one token per step (end_step refuses a chunk); account for
            # the n entries as n steps would: below capacity the eviction rule keeps them all.
            cache.slots = list(range(n))
            cache.seen = n
        sync()
        slice_ = DecodeSlice(loaded, spec, ids, cache, decoder, cursor=n, fill_mode="chunked",
                             fill_nll=fill_nll.double().cpu().tolist())
    elif not real_fill and hasattr(cache, "prime_random"):
        cache.prime_random(n, torch.Generator(device=loaded.device).manual_seed(0))
        sync()
        slice_ = DecodeSlice(loaded, spec, ids, cache, decoder, cursor=n, fill_mode="random")
    else:
        slice_ = DecodeSlice(loaded, spec, ids, cache, decoder, cursor=0, fill_mode="steps")
        slice_.run_round(n)
        slice_.fill_nll = slice_.nll[0]
        # the fill is not a measurement: forget its records
        for records in (slice_.calls, slice_.prunes, slice_.evicted, slice_.positions, slice_.nll, slice_.kv_length,
                        slice_.fed_position):
            records.clear()
    slice_.fill_s = time.perf_counter() - started
    return slice_


@dataclass
class TimingRun:
    """What one strategy's timing produced (measured rounds only; warm-up reported apart)."""

    steps_per_round: int
    cycle: int
    rounds: int
    warmup_rounds: int
    step_ms: list[float]  # raw per-step times of the measured rounds, in order
    prune_flags: list[bool]
    positions: list[int]  # text index t of each measured step
    nll: list[float]  # NLL of each measured step (from the timed decode, computed untimed)
    kv_length_max: int
    fill_s: float
    fill_mode: str
    warmup_ms: float  # total time of the warm-up rounds (compile, allocator, caches)
    rerun_samples: list[float] = field(default_factory=list)  # per-cycle means of the rerun, if any

    @property
    def samples(self) -> list[float]:
        """Per-cycle mean TPOT (ms): the unit the statistics compare."""
        arr = np.asarray(self.step_ms)
        whole = arr.size // self.cycle
        return arr[: whole * self.cycle].reshape(whole, self.cycle).mean(axis=1).tolist()

    @property
    def mean_ms(self) -> float:
        """Whole-cycle mean TPOT: total time / steps (rounds are whole cycles)."""
        return float(np.mean(self.step_ms))

    @property
    def median_ms(self) -> float:
        return float(np.median(self.step_ms))

    @property
    def prunes_per_cycle(self) -> float:
        return sum(self.prune_flags) / max(1, len(self.prune_flags) // self.cycle)

    def summary(self) -> dict:
        return {
            "steps_per_round": self.steps_per_round,
            "cycle": self.cycle,
            "rounds": self.rounds,
            "warmup_rounds": self.warmup_rounds,
            "tpot_ms_mean": self.mean_ms,
            "tpot_ms_median": self.median_ms,
            "samples_ms": self.samples,
            "rerun_samples_ms": self.rerun_samples,
            "prunes_per_cycle": self.prunes_per_cycle,
            "kv_length_max": self.kv_length_max,
            "first_step": self.positions[0] if self.positions else None,
            "fill_s": self.fill_s,
            "fill_mode": self.fill_mode,
            "warmup_ms": self.warmup_ms,
        }


def collect(slice_: DecodeSlice, *, steps: int, cycle: int, warmup_rounds: int, first: int = 0,
            count: int | None = None) -> TimingRun:
    """TimingRun from calls[first : first + count] of `slice_`; the `warmup_rounds` calls before
    `first` were warm-up."""
    stop = len(slice_.calls) if count is None else first + count
    measured = range(first, stop)
    warm = range(max(0, first - warmup_rounds), first)
    flat = lambda rows: [x for i in measured for x in rows[i]]  # noqa: E731 - local helper
    return TimingRun(
        steps_per_round=steps,
        cycle=cycle,
        rounds=len(measured),
        warmup_rounds=len(warm),
        step_ms=flat(slice_.calls),
        prune_flags=flat(slice_.prunes),
        positions=flat(slice_.positions),
        nll=flat(slice_.nll),
        kv_length_max=max(slice_.kv_length) if slice_.kv_length else 0,
        fill_s=slice_.fill_s,
        fill_mode=slice_.fill_mode,
        warmup_ms=float(sum(sum(slice_.calls[i]) for i in warm)),
    )


def time_rounds(slice_: DecodeSlice, *, steps: int, cycle: int, rounds: int, warmup_rounds: int) -> TimingRun:
    """The same measurement as the pytest-benchmark path, without pytest-benchmark (reference
    strategies, reruns, repeated baseline runs, --benchmark-disable)."""
    first = len(slice_.calls) + warmup_rounds
    for _ in range(warmup_rounds + rounds):
        slice_.run_round(steps)
    return collect(slice_, steps=steps, cycle=cycle, warmup_rounds=warmup_rounds, first=first, count=rounds)


def rounds_that_fit(slice_: DecodeSlice, steps: int) -> int:
    return slice_.remaining // steps
