"""The one measurement core: one clock, one decode-and-time loop, one definition each of TPOT and speedup.

Everything that reports a decode time (`streamllm eval`, the bench suite, the GPU scripts) times
steps here, the way gpt-fast does: one step function, one device sync before and after it.

- `Clock`: device-synchronized wall time of a step (perf_counter), and on CUDA also the device
  time between two events recorded around it (what the GPU spent, idle gaps between launches
  included; the per-kernel sum is `streamllm.harness.opcount`'s business). Beside each step's time, the
  minor page faults the process took during it (`minor_faults`): a step that keeps touching
  fresh memory is paying for its allocator's state (a fragmented heap growing under large
  per-step temporaries), and the suite's ratio check reads that before calling a slower step a
  regression (bench/checks.py).
- `DecodeSlice`: a cache filled to steady state, its decoder, and a cursor into the text. Its
  `step()` is THE timed decode step: forward + the cache's eviction; logits are kept and the
  NLL computed later, outside the clock (log_softmax over the vocabulary is not part of a step).
- `tpot_ms`: TPOT = the mean step time over whole eviction cycles (lazy R prunes on one step in
  R: a median would hide it). `speedup`: reference TPOT / strategy TPOT, both from this module.
- `time_interleaved`: a case and a reference arm timed step for step (A B A B ...) in one
  process, so machine drift cancels in their ratio (`streamllm.ratio`). Through pytest-benchmark
  when a fixture is given: the case's step is the benchmark target and the reference's step its
  untimed setup, so `--benchmark-compare` times exactly the steps TPOT counts.

Filling: our dynamic `StreamingCache` is filled by one chunked forward (before the first eviction
every strategy is plain causal attention at positions 0..n-1, so the chunk leaves the state the
token loop would, and its logits are the token loop's NLL of those steps). Preallocated caches
(static, ring) take one token per step: for timing they jump to steady state with random K/V
(`prime_random`), or, when their NLL is needed, are filled by untimed real decode steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
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


# -- the clock ---------------------------------------------------------------------------------
def minor_faults() -> int | None:
    """Minor page faults of this process so far (getrusage), or None where there is no such count."""
    if resource is None:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class SliceTooShortError(ValueError):
    """The text ends before the slice's fill and timed steps: the message names both and the fix."""


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


# -- the definitions ---------------------------------------------------------------------------
def whole_cycles(step_ms: list[float] | np.ndarray, cycle: int) -> np.ndarray:
    """The step times of the whole eviction cycles, reshaped [cycles, cycle]."""
    arr = np.asarray(step_ms, dtype=float)
    whole = arr.size // cycle
    return arr[: whole * cycle].reshape(whole, cycle)


def tpot_ms(step_ms: list[float] | np.ndarray, cycle: int = 1) -> float:
    """TPOT: mean step time over whole eviction cycles (every pruning step counted once per cycle)."""
    cycles = whole_cycles(step_ms, cycle)
    return float(cycles.mean()) if cycles.size else float("nan")


def speedup(reference_tpot_ms: float, tpot: float) -> float | None:
    """How many times faster than the reference (dense): reference TPOT / this TPOT."""
    if not (math.isfinite(reference_tpot_ms) and math.isfinite(tpot)) or tpot <= 0:
        return None
    return reference_tpot_ms / tpot


def steps_per_round(cycle: int, min_steps: int) -> int:
    """Smallest multiple of the eviction cycle that is >= min_steps."""
    return cycle * max(1, math.ceil(min_steps / cycle))


def dense_start(tokens: int, timed_steps: int) -> int:
    """Fill length that centres `timed_steps` dense steps on context tokens/2 (its mean context)."""
    return max(1, min(tokens - timed_steps, tokens // 2 - timed_steps // 2))


def fill_length(spec: StrategySpec, tokens: int, timed_steps: int) -> int:
    """Streaming strategies: `spec.capacity` (|C_t| at its largest), so the first timed step
    appends and evicts and every round starts a cycle. Dense: `dense_start`."""
    return spec.capacity if spec.capacity is not None else dense_start(tokens, timed_steps)


# -- the timed decode step ---------------------------------------------------------------------
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


# -- timing runs -------------------------------------------------------------------------------
@dataclass
class TimingRun:
    """The measured steps of one arm (warm-up excluded), with their per-cycle samples."""

    steps_per_round: int
    cycle: int
    rounds: int
    warmup_rounds: int
    step_ms: list[float]
    device_ms: list[float]
    prune_flags: list[bool]
    positions: list[int]
    nll: list[float]
    kv_length_max: int
    fill_s: float
    fill_mode: str
    warmup_ms: float
    rerun_samples: list[float] = field(default_factory=list)
    faults: list[int] = field(default_factory=list)  # minor page faults of each measured step

    @property
    def faults_per_step(self) -> float | None:
        return float(np.mean(self.faults)) if self.faults else None

    @property
    def samples(self) -> list[float]:
        """Per-round TPOT (ms; rounds are whole cycles): the unit the statistics compare."""
        rows = whole_cycles(self.step_ms, self.steps_per_round)
        return rows.mean(axis=1).tolist()

    @property
    def device_samples(self) -> list[float]:
        rows = whole_cycles(self.device_ms, self.steps_per_round) if self.device_ms else np.empty((0, 1))
        return rows.mean(axis=1).tolist()

    @property
    def mean_ms(self) -> float:
        return tpot_ms(self.step_ms, self.cycle)

    @property
    def device_mean_ms(self) -> float | None:
        return tpot_ms(self.device_ms, self.cycle) if self.device_ms else None

    @property
    def median_ms(self) -> float:
        return float(np.median(self.step_ms))

    @property
    def prunes_per_cycle(self) -> float:
        return sum(self.prune_flags) / max(1, len(self.prune_flags) // self.cycle)

    def summary(self) -> dict:
        return {
            "steps_per_round": self.steps_per_round, "cycle": self.cycle, "rounds": self.rounds,
            "warmup_rounds": self.warmup_rounds, "tpot_ms_mean": self.mean_ms, "tpot_ms_median": self.median_ms,
            "device_tpot_ms": self.device_mean_ms, "samples_ms": self.samples,
            "device_samples_ms": self.device_samples, "rerun_samples_ms": self.rerun_samples,
            "prunes_per_cycle": self.prunes_per_cycle, "kv_length_max": self.kv_length_max,
            "first_step": self.positions[0] if self.positions else None, "fill_s": self.fill_s,
            "fill_mode": self.fill_mode, "warmup_ms": self.warmup_ms, "page_faults_per_step": self.faults_per_step,
        }


def collect(slice_: DecodeSlice, *, first: int, stop: int, steps: int, cycle: int, warmup_steps: int) -> TimingRun:
    """TimingRun of slice_'s steps [first, stop); the `warmup_steps` before `first` were warm-up."""
    warm = slice_.step_ms[max(0, first - warmup_steps): first]
    return TimingRun(
        steps_per_round=steps, cycle=cycle, rounds=(stop - first) // steps, warmup_rounds=len(warm) // max(1, steps),
        step_ms=slice_.step_ms[first:stop], device_ms=slice_.device_ms[first:stop],
        prune_flags=slice_.pruned[first:stop], positions=slice_.positions[first:stop],
        nll=slice_.nll[first:stop], kv_length_max=max(slice_.kv_length) if slice_.kv_length else 0,
        fill_s=slice_.fill_s, fill_mode=slice_.fill_mode, warmup_ms=float(sum(warm)),
        faults=slice_.faults[first:stop] if len(slice_.faults) == len(slice_.step_ms) else [],
    )


def time_rounds(slice_: DecodeSlice, *, steps: int, cycle: int, rounds: int, warmup_rounds: int) -> TimingRun:
    """`rounds` rounds of `steps` steps of one arm, after `warmup_rounds` untimed-for-statistics rounds."""
    slice_.run(warmup_rounds * steps)
    first = len(slice_.step_ms)
    slice_.run(rounds * steps)
    return collect(slice_, first=first, stop=len(slice_.step_ms), steps=steps, cycle=cycle,
                   warmup_steps=warmup_rounds * steps)


def time_interleaved(case: DecodeSlice, reference: DecodeSlice, *, steps: int, cycle: int, rounds: int,
                     warmup_rounds: int, benchmark=None) -> tuple[TimingRun, TimingRun]:
    """Case and reference stepped alternately (A B A B ...), `rounds` rounds of `steps` steps each.

    Step-level alternation puts both arms under the same machine state at every moment (a
    neighbour's burst, a frequency change), so the per-round ratio is free of drift. With a
    pytest-benchmark fixture the case's step is the benchmark target (one round of it = one
    decode step: its mean over whole rounds is TPOT) and the reference's step runs in `setup`,
    outside pytest-benchmark's clock."""
    def setup() -> None:
        reference.step()

    def pairs(count: int) -> None:
        for _ in range(count):
            setup()
            case.step()

    pairs(warmup_rounds * steps)  # warm-up: compile, allocator, caches; outside every clock's statistics
    first_case, first_ref = len(case.step_ms), len(reference.step_ms)
    measured = rounds * steps
    if benchmark is not None and not getattr(benchmark, "disabled", False):
        benchmark.pedantic(case.step, setup=setup, rounds=measured, warmup_rounds=0, iterations=1)
    else:
        pairs(measured)
    case.flush()
    reference.flush()
    out = []
    for arm, first in ((case, first_case), (reference, first_ref)):
        out.append(collect(arm, first=first, stop=first + measured, steps=steps, cycle=cycle,
                           warmup_steps=warmup_rounds * steps))
    return out[0], out[1]


def time_steady_state(loaded: LoadedModel, ids: torch.Tensor, spec: StrategySpec, *,
                      decoder_factory: Callable | None = None, min_steps: int = 8, timed_steps: int = 64,
                      warmup_rounds: int = 1) -> TimingRun | None:
    """TPOT of `spec` at steady state without decoding the whole text (what `streamllm eval` reports
    beside the parallel evaluator's exact PPL): the cache filled to capacity (random K/V for the
    preallocated caches, one chunked forward for the dynamic one), then whole-cycle rounds of
    real decode steps on the text. Dense is timed around context N/2, its mean context. None when
    the text is too short for the fill and two rounds after it."""
    steps = steps_per_round(spec.compress_every if spec.capacity is not None else 1, min_steps)
    rounds = max(2, math.ceil(timed_steps / steps))
    fill = spec.capacity if spec.capacity is not None else 1
    rounds = min(rounds, (ids.numel() - 1 - fill) // steps - warmup_rounds)
    if rounds < 2:
        return None
    slice_ = prepare_slice(loaded, ids, spec, timed_steps=(warmup_rounds + rounds) * steps,
                           decoder_factory=decoder_factory, real_fill=False)
    return time_rounds(slice_, steps=steps, cycle=spec.compress_every if spec.capacity is not None else 1,
                       rounds=rounds, warmup_rounds=warmup_rounds)


class CalibrationArm:
    """A fixed torch-only workload, timed between the cases of a run: a batch-1 matrix-vector
    product over a matrix the size of a small model's layer, repeated. It runs no code of this
    library or of transformers, so when both arms of a case slow down together, this arm tells
    the machine (it slows too) from code both arms share (it holds still)."""

    def __init__(self, device: torch.device | str, size: int = 2048, repeats: int = 8):
        self.device = torch.device(device)
        generator = torch.Generator(device="cpu").manual_seed(0)
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        size = size * 4 if self.device.type == "cuda" else size  # ~128 MB of fp16: past L2, like a step
        self.matrix = torch.randn(size, size, generator=generator).to(self.device, dtype)
        self.vector = torch.randn(1, size, generator=generator).to(self.device, dtype)
        self.repeats = repeats
        self.clock = Clock(self.device)
        self.samples: list[float] = []

    def _work(self) -> torch.Tensor:
        out = self.vector
        for _ in range(self.repeats):
            out = (out @ self.matrix).tanh()  # tanh: bounded, so repeats never overflow fp16
        return out

    def measure(self, rounds: int = 4) -> list[float]:
        """`rounds` timed calls (ms each: device time on CUDA), appended to `samples`; one untimed first."""
        self._work()
        taken = []
        for _ in range(rounds):
            _, wall, device = self.clock.time(self._work)
            taken.append(device if device is not None else wall)
        self.samples.extend(taken)
        return taken


def copy_bandwidth_GBps(device: torch.device | str, nbytes: int = 256 * 2**20, repeats: int = 5) -> float:
    """Measured device copy bandwidth (bytes read + written per second, GB/s), the best of `repeats`
    copies of an `nbytes` buffer: the rate the step's floor is computed at (floor.floor_ms)."""
    device = torch.device(device)
    clock = Clock(device)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch: allocate pages, warm the copy kernel
    best = min(clock.time(lambda: dst.copy_(src))[1] for _ in range(repeats))
    return 2 * nbytes / (best / 1e3) / 1e9
