"""Strategy specifications: which tokens stay in the cache, and where positions come from.

A strategy is pure data (`StrategySpec`) plus an eviction rule (`plan_eviction`). The rule maps
the cache length after appending the current token to the ordered list of slots to keep, or
None when nothing is evicted. Caches, the schedule simulator and the parallel evaluator all use
this one rule, so they cannot disagree on semantics (docs/semantics.md#eviction).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum


class StrategyError(ValueError):
    """Bad strategy name or parameters; the message says how to fix it."""


class PositionMode(str, Enum):
    SHIFT = "shift"  # k-th cache entry has position k (StreamingLLM pos-shift)
    ABSOLUTE = "absolute"  # token t has position t (dense, and the no-shift ablation)


# name -> one-line description, shown by `streamllm strategies` and in errors.
STRATEGIES: dict[str, str] = {
    "dense": "keep every token, absolute positions (the fixed baseline)",
    "window": "keep the last W tokens, no sinks (the collapse StreamingLLM fixes)",
    "strict": "keep S sinks + last W, evict every step (compress_every=1)",
    "lazy": "keep S sinks + last W, evict once the cache reaches S+W+R",
    "no-shift": "strict eviction with absolute positions instead of cache positions (ablation)",
    "overlap": "strict/lazy with window W+O; --auto-cap shrinks W so S+W+O(+B) <= cap",
    "refresh": "lazy eviction that re-inserts B evicted tokens (uniform) at the tail with new positions",
}


@dataclass(frozen=True)
class StrategySpec:
    name: str
    sink: int = 4
    window: int = 252
    compress_every: int = 1
    overlap: int = 0
    refresh: int = 0
    auto_cap: int | None = None  # cap on S+W+O+B; shrinks W when exceeded
    cache: str = "dynamic"  # a key of CACHE_KINDS (streamllm/caches/)

    # -- derived ---------------------------------------------------------------------------
    @property
    def position_mode(self) -> PositionMode:
        return PositionMode.ABSOLUTE if self.name in ("dense", "no-shift") else PositionMode.SHIFT

    @property
    def effective_window(self) -> int:
        """W actually kept: overlap adds O recent tokens; auto-cap may shrink W to fit the cap."""
        if self.name == "dense":
            return 0
        return self.capped_window + self.overlap

    @property
    def capped_window(self) -> int:
        """W after auto-cap: the cap takes room from W, never from the overlap or refresh budget."""
        over = 0 if self.auto_cap is None else self.sink + self.window + self.overlap + self.refresh - self.auto_cap
        return self.window - max(over, 0)

    @property
    def capacity(self) -> int | None:
        """Largest |C_t| (cache length before the new token is appended); None: unbounded."""
        if self.name == "dense":
            return None
        return self.sink + self.effective_window + self.refresh + self.compress_every - 1

    @property
    def max_position(self) -> int | None:
        """Largest position id a pos-shift strategy feeds (|C_t| at its largest); None if absolute."""
        if self.position_mode is PositionMode.ABSOLUTE:
            return None
        return self.capacity

    def label(self) -> str:
        """Short, stable id used in tables, baseline keys and benchmark ids."""
        if self.name == "dense":
            return "dense"
        parts = [self.name, f"s{self.sink}", f"w{self.window}"]
        if self.compress_every != 1:
            parts.append(f"c{self.compress_every}")
        if self.overlap:
            parts.append(f"o{self.overlap}")
        if self.refresh:
            parts.append(f"b{self.refresh}")
        if self.auto_cap is not None:
            parts.append(f"cap{self.auto_cap}")
        if self.cache != "dynamic":
            parts.append(self.cache)
        return "-".join(parts)

    def params(self) -> dict:
        return dataclasses.asdict(self)

    # -- validation ------------------------------------------------------------------------
    def validate(self, max_positions: int | None = None, allow_beyond_context: bool = False) -> StrategySpec:
        if self.name not in STRATEGIES:
            raise StrategyError(
                f"unknown strategy {self.name!r}; choose one of: {', '.join(STRATEGIES)}"
            )
        problem = cache_problem(self)
        if problem:
            raise StrategyError(problem)
        if self.name == "dense":
            return self
        if self.window <= 0:
            raise StrategyError(f"--window must be > 0 (got {self.window})")
        if self.sink < 0:
            raise StrategyError(f"--sink must be >= 0 (got {self.sink})")
        if self.name == "window" and self.sink != 0:
            raise StrategyError("the 'window' strategy keeps no sinks: pass --sink 0 (or use 'strict')")
        if self.compress_every < 1:
            raise StrategyError(f"--compress-every must be >= 1 (got {self.compress_every}); 1 means evict every step")
        if self.overlap < 0 or self.refresh < 0:
            raise StrategyError("--overlap and --refresh must be >= 0")
        if self.overlap and self.name != "overlap":
            raise StrategyError("--overlap only applies to the 'overlap' strategy")
        if self.name == "refresh" and self.refresh <= 0:
            raise StrategyError("the 'refresh' strategy needs a budget: --refresh B with B > 0")
        if self.refresh and self.name != "refresh":
            raise StrategyError("--refresh only applies to the 'refresh' strategy")
        if self.name in ("strict", "no-shift", "window") and self.compress_every != 1:
            raise StrategyError(
                f"{self.name!r} evicts every step; for periodic eviction use --strategy lazy --compress-every R"
            )
        if self.auto_cap is not None and self.capped_window <= 0:
            raise StrategyError(
                f"--auto-cap {self.auto_cap} leaves no room for a window after {self.sink} sinks, "
                f"overlap {self.overlap} and refresh {self.refresh}"
            )
        kept = self.sink + self.effective_window + self.refresh
        if max_positions is not None and kept > max_positions and not allow_beyond_context:
            raise StrategyError(
                f"sink + window ({self.sink} + {self.effective_window}"
                + (f" + refresh {self.refresh}" if self.refresh else "")
                + f") exceeds the model's {max_positions} trained positions; use a smaller --window, "
                "--auto-cap to fit it, or --allow-beyond-context to measure it on purpose"
            )
        return self


# Cache kinds (streamllm/caches/): dynamic.py, static.py, ring.py.
CACHE_KINDS: dict[str, str] = {
    "dynamic": "HF tensors grown by cat, evicted by slicing + re-rotation (any strategy)",
    "static": "preallocated buffer, eviction by in-place shift (strict, lazy, window, overlap, no-shift)",
    "ring": "fixed buffers, O(1) eviction by overwrite, sinks re-rotated (strict, window, no-shift; R=1)",
}
RING_STRATEGIES = ("strict", "window", "no-shift", "overlap")


def cache_problem(spec: StrategySpec) -> str | None:
    """Why `spec.cache` cannot hold `spec`'s strategy, or None."""
    if spec.cache not in CACHE_KINDS:
        return f"unknown cache kind {spec.cache!r}; choose one of: {', '.join(CACHE_KINDS)}"
    if spec.cache == "static" and spec.name in ("dense", "refresh"):
        why = "dense keeps every token" if spec.name == "dense" else "refresh re-inserts scattered tokens"
        return f"the static cache holds sinks + one contiguous window; {why}: use --cache dynamic"
    if spec.cache == "ring" and (spec.name not in RING_STRATEGIES or spec.compress_every != 1):
        return (
            "the ring cache implements strict eviction (one token out per step: strict, window, no-shift, "
            f"overlap with compress_every=1); {spec.name} with compress_every={spec.compress_every} needs "
            "--cache static (lazy) or --cache dynamic"
        )
    return None


def make_strategy(name: str, **params) -> StrategySpec:
    """Build and validate a spec; `lazy` with R=1 is allowed (it equals strict)."""
    name = name.strip().lower().replace("_", "-")
    if name == "noshift":
        name = "no-shift"
    spec = StrategySpec(name=name, **{k: v for k, v in params.items() if v is not None})
    if spec.name == "window" and "sink" not in params:
        spec = dataclasses.replace(spec, sink=0)
    return spec.validate()


def plan_eviction(spec: StrategySpec, length: int, step: int = 0) -> list[int] | None:
    """Slots to keep (in their new order) after the token of `step` was appended, or None.

    `length` is |C_t + [t]|. Sinks are slots [0, S); the rest is ordered oldest first.
    """
    if spec.name == "dense":
        return None
    sink, window = spec.sink, spec.effective_window
    if spec.name != "refresh":
        if length < sink + window + spec.compress_every:
            return None
        return list(range(sink)) + list(range(length - window, length))
    # refresh: like lazy, the B re-inserted tokens ride at the tail and are evicted next time.
    budget = spec.refresh
    if length < sink + window + budget + spec.compress_every:
        return None
    evicted = list(range(sink, length - window))
    chosen = uniform_choice(evicted, budget)
    return list(range(sink)) + list(range(length - window, length)) + chosen


def uniform_choice(candidates: list[int], budget: int) -> list[int]:
    """The 'uniform' refresh policy: `budget` candidates evenly spaced over the evicted span.

    Deterministic (no RNG) so runs are reproducible; order is kept (oldest first).
    """
    n = len(candidates)
    if budget >= n:
        return list(candidates)
    return [candidates[(2 * i + 1) * n // (2 * budget)] for i in range(budget)]
