"""The parallel evaluator's schedule, on cache lengths only (docs/semantics.md#parallel-evaluation):
for every strategy whose context schedule is known in advance, the context of query t is the sinks
[0, S) plus a contiguous window [a_t, t]. `schedule` simulates the token loop's cache lengths with
`plan_eviction` and refuses a strategy whose cache is not 'sinks + one contiguous window' at some
step; `supports_parallel` says whether the evaluator reproduces the token loop for a strategy and
model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .rope import RopeSpec, UnsupportedRopeError
from .strategies import PositionMode, StrategySpec, plan_eviction


class ScheduleError(ValueError):
    """The strategy's cache is not 'sinks + one contiguous window' at some step."""


@dataclass(frozen=True)
class Schedule:
    """Per decode step t (feeds x_t): what the token loop's cache looks like.

    Before step t the cache C_t holds the sinks [0, min(S, a_t)) and the window [a_t, t - 1];
    token t attends C_t and itself.
    """

    cache_length: np.ndarray  # |C_t|
    window_start: np.ndarray  # a_t
    position: np.ndarray  # position id the token loop feeds: |C_t| (shift) or t (absolute)
    pruned: np.ndarray  # bool: the eviction after step t removed entries
    evicted: np.ndarray  # entries removed after step t (0 when not pruned)
    sink: int  # S

    def __len__(self) -> int:
        return len(self.cache_length)

    def sinks_used(self, t: int | np.ndarray) -> int | np.ndarray:
        """Sinks attended as a separate block by query t (those not already inside the window)."""
        return np.minimum(self.sink, self.window_start[t])

    @property
    def prune_steps(self) -> list[int]:
        return np.flatnonzero(self.pruned).tolist()


def schedule(spec: StrategySpec, steps: int) -> Schedule:
    """Simulate `steps` decode steps of `spec` on cache lengths only, with `plan_eviction`."""
    ok, reason = _spec_supported(spec)
    if not ok:
        raise ScheduleError(reason)
    sink = spec.sink if spec.name != "dense" else 0
    cache_length = np.zeros(steps, dtype=np.int64)
    window_start = np.zeros(steps, dtype=np.int64)
    pruned = np.zeros(steps, dtype=bool)
    evicted = np.zeros(steps, dtype=np.int64)
    length, start = 0, 0
    for t in range(steps):
        cache_length[t], window_start[t] = length, start
        length += 1
        keep = plan_eviction(spec, length, t)
        if keep is None:
            continue
        start = _window_start_after(keep, sink, start, length, t)
        pruned[t], evicted[t] = True, length - len(keep)
        length = len(keep)
    absolute = spec.position_mode is PositionMode.ABSOLUTE
    position = np.arange(steps, dtype=np.int64) if absolute else cache_length.copy()
    return Schedule(cache_length, window_start, position, pruned, evicted, sink)


def _window_start_after(keep: list[int], sink: int, start: int, length: int, step: int) -> int:
    """New window start a after evicting to `keep`; checks the cache stays 'sinks + window'.

    Slot k of C_t + [t] holds token k for the separate sinks (k < min(S, a)) and token
    a + k - min(S, a) for the window; the kept window must be a contiguous run of slots ending at
    the newest one.
    """
    separate = min(sink, start)
    head, tail = keep[:sink], keep[sink:]
    first = tail[0] if tail else length
    contiguous = tail == list(range(first, length))
    if head != list(range(sink)) or not contiguous or first < separate:
        raise ScheduleError(
            f"step {step}: eviction keeps slots that are not 'sinks + one contiguous window' "
            "(the parallel evaluator cannot honour this strategy; use the token loop)"
        )
    new_start = start + first - separate
    if 0 < new_start < sink:
        raise ScheduleError(f"step {step}: window start {new_start} falls inside the {sink} sinks")
    return new_start


def supports_parallel(spec: StrategySpec, model: torch.nn.Module | None = None) -> tuple[bool, str]:
    """(True, "") if `evaluate_parallel` reproduces the token loop for `spec` (and `model`)."""
    ok, reason = _spec_supported(spec)
    if not ok or model is None or spec.position_mode is PositionMode.ABSOLUTE:
        return ok, reason
    try:
        RopeSpec.from_model(model)
    except UnsupportedRopeError as exc:
        return False, f"pos-shift needs a re-rotatable RoPE: {exc}"
    return True, ""


def _spec_supported(spec: StrategySpec) -> tuple[bool, str]:
    if spec.name == "refresh":
        return False, ("refresh re-inserts evicted tokens at the tail with new positions: its context is not "
                       "sinks + one contiguous window")
    # Static and ring caches hold the same token lists as the dynamic one (plan_eviction decides),
    # so their NLL is the strategy's; whether a cache kind can hold a strategy is spec.validate's job.
    return True, ""
