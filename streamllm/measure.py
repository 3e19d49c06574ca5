"""The one measurement core: timing runs of THE decode step, the way gpt-fast times: one step
function, one device sync before and after it. Everything that reports a decode time
(`streamllm eval`, the bench suite, the GPU scripts) times steps through these two modules:

- `decode_slice.py`: `Clock` (one synchronized step time, CUDA events beside it), `minor_faults`,
  `DecodeSlice` (a cache at steady state; its `step()` is THE timed step), `prepare_slice` (fill
  it), `reference_slice` (the reference arm).
- here: the definitions (TPOT is the mean step time over whole eviction cycles: lazy R prunes on
  one step in R, and a median would hide it; `speedup` is reference TPOT / strategy TPOT; a timing
  round is the smallest whole number of cycles that reaches the asked-for steps: `tpot_ms`,
  `whole_cycles`, `speedup`, `steps_per_round`), `TimingRun` (an arm's measured steps and
  per-round samples), `time_rounds`, `time_steady_state` (what `streamllm eval` reports beside the
  parallel evaluator's PPL) and `time_interleaved`: a case and a reference arm timed step for step
  (A B A B ...) in one process, so machine drift cancels in their ratio
  (`streamllm.harness.judge_ratio`). Through pytest-benchmark when a fixture is given: the case's
  step is the benchmark target and the reference's step its untimed setup, so
  `--benchmark-compare` times exactly the steps TPOT counts.

`calibration.py` (the torch-only calibration arm, the device copy bandwidth) reads the same clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .decode_slice import DecodeSlice, prepare_slice
from .models import LoadedModel
from .strategies import StrategySpec


# -- the definitions: every decode time reported anywhere is computed by these -----------------------
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


# -- timing runs ---------------------------------------------------------------------------------------


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
