"""Where a bench process's wall time goes: load, PPL, counting, timing, findings (exclusive time:
a phase entered inside another pauses the outer one, so the parts add up to the whole)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class PhaseClock:
    seconds: dict[str, float] = field(default_factory=dict)
    now: Callable[[], float] = time.perf_counter
    _stack: list[tuple[str, float]] = field(default_factory=list)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        now = self.now()
        if self._stack:  # pause the enclosing phase
            outer, since = self._stack[-1]
            self.seconds[outer] = self.seconds.get(outer, 0.0) + now - since
        self._stack.append((name, now))
        try:
            yield
        finally:
            end = self.now()
            _, since = self._stack.pop()
            self.seconds[name] = self.seconds.get(name, 0.0) + end - since
            if self._stack:  # resume it
                self._stack[-1] = (self._stack[-1][0], end)

    def line(self, wall_s: float, extra: dict[str, float] | None = None) -> str:
        """"time: load 12 s, PPL 30 s, ... (other 3 s, wall 80 s)"; `extra` adds parts of a phase."""
        parts = [f"{name} {s:.0f} s" for name, s in self.seconds.items()]
        parts += [f"{name} {s:.0f} s" for name, s in (extra or {}).items()]
        other = wall_s - sum(self.seconds.values())
        return f"time: {', '.join(parts)} (other {other:.0f} s, wall {wall_s:.0f} s)"
