"""The definitions: TPOT is the mean step time over whole eviction cycles (lazy R prunes on one
step in R: a median would hide it); speedup is reference TPOT / strategy TPOT; a timing round is
the smallest whole number of cycles that reaches the asked-for steps. Everything that reports a
decode time computes it here."""

from __future__ import annotations

import math

import numpy as np


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
