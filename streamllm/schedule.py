"""Did eviction engage? The text positions a cache must hold, derived from the strategy's
parameters alone, checked against what a cache says it holds (docs/findings.md#eviction-engaged).

A run whose text never exceeds the cache, or a strategy that silently stopped evicting, passes
every PPL check against a baseline recorded in the same state. So the expected contents here are
not taken from `strategies.plan_eviction` (which the caches and the parallel evaluator's
`parallel_schedule.schedule` share) but written down in closed form from S, W, R (and B):

  sinks + window (strict, lazy, window, no-shift, overlap): the first eviction ends step
  e0 = S + W + R - 1 (the cache reaches S+W+R entries), then every R steps. After step t
  (t >= e0), with e the last event <= t, the cache holds [0, S) + [e - W + 1, t].
  refresh: the same events at S + W + B + R - 1 + kR; each keeps the sinks, the last W entries
  and B of the evicted ones, evenly spaced, at the tail (re-inserted with new positions).
  dense: every token.

`parallel_schedule.schedule` is the independent cross-check of the closed form in the tests: two
derivations, one of them the one every evaluation uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .strategies import StrategySpec


class EvictionCheckError(AssertionError):
    """Eviction did not engage as the strategy says; the message names strategy, text and step."""


class TextTooShortError(EvictionCheckError):
    """The text ends before the strategy's first eviction: nothing about eviction was measured."""


@dataclass(frozen=True)
class Engagement:
    strategy: str  # StrategySpec.label()
    tokens: int  # text length (tokens - 1 decode steps)
    first_eviction: int | None  # step whose end evicts first; None: the strategy never evicts (dense)
    steps_checked: tuple[int, ...]  # steps whose holdings matched, at least one past the first eviction
    events_in_text: int  # eviction events the schedule puts inside the text

    def to_dict(self) -> dict:
        return {"strategy": self.strategy, "tokens": self.tokens, "first_eviction": self.first_eviction,
                "steps_checked": list(self.steps_checked), "events_in_text": self.events_in_text}


def _geometry(spec: StrategySpec) -> tuple[int, int, int, int]:
    """(S, W kept, R, B) as the strategy's definition states them (auto-cap and overlap folded into W)."""
    return spec.sink, spec.effective_window, max(1, spec.compress_every), spec.refresh


def first_eviction_step(spec: StrategySpec) -> int | None:
    """The step t whose end evicts first (the cache holds t + 1 = S+W+B+R tokens); None for dense."""
    if spec.name == "dense":
        return None
    s, w, r, b = _geometry(spec)
    return s + w + b + r - 1


def eviction_steps(spec: StrategySpec, steps: int) -> list[int]:
    """Every step < `steps` whose end evicts."""
    first = first_eviction_step(spec)
    if first is None:
        return []
    return list(range(first, steps, _geometry(spec)[2]))


def min_tokens(spec: StrategySpec, past: int = 0) -> int | None:
    """Shortest text whose decode reaches `past` steps beyond the first eviction (steps = tokens - 1)."""
    first = first_eviction_step(spec)
    return None if first is None else first + past + 2


def expected_positions(spec: StrategySpec, step: int) -> list[int]:
    """Text positions the cache holds after step `step` (token `step` appended, eviction done),
    in slot order: what `cache.slots` must read then."""
    if step < 0:
        raise ValueError(f"step must be >= 0 (got {step})")
    first = first_eviction_step(spec)
    if first is None or step < first:
        return list(range(step + 1))
    s, w, r, b = _geometry(spec)
    if spec.name != "refresh":
        last = first + (step - first) // r * r
        return list(range(s)) + list(range(last - w + 1, step + 1))
    return _refresh_positions(s, w, r, b, first, step)


def expected_length(spec: StrategySpec, step: int) -> int:
    """len(expected_positions(spec, step)) without building the list (long texts, wide windows)."""
    first = first_eviction_step(spec)
    if first is None or step < first:
        return step + 1
    s, w, r, b = _geometry(spec)
    last = first + (step - first) // r * r
    return s + w + b + (step - last)


def _refresh_positions(s: int, w: int, r: int, b: int, first: int, step: int) -> list[int]:
    # Tokens enter at the tail; each event keeps the S sinks, the last W entries of the list and B
    # of the entries between them, evenly spaced ((2i+1)n/2B of n), appended after the window.
    held = list(range(first + 1))
    event = first
    while True:
        between = held[s:-w] if w else held[s:]
        n = len(between)
        chosen = between if b >= n else [between[(2 * i + 1) * n // (2 * b)] for i in range(b)]
        held = held[:s] + held[len(held) - w:] + chosen
        nxt = event + r
        if nxt > step:
            return held + list(range(event + 1, step + 1))
        held += list(range(event + 1, nxt + 1))
        event = nxt


def probe_steps(spec: StrategySpec, tokens: int, count: int = 3) -> list[int]:
    """A few steps past the first eviction to compare holdings at: the first event, the step after
    it, and the second event (strict: three consecutive events), as far as the text reaches."""
    first = first_eviction_step(spec)
    if first is None:
        return []
    r = _geometry(spec)[2]
    wanted = sorted({first, first + 1, first + r, first + r + 1})[:count]
    return [t for t in wanted if t <= tokens - 2]


def too_short_error(spec: StrategySpec, tokens: int, first: int) -> TextTooShortError:
    s, w, r, b = _geometry(spec)
    extra = f" + B {b}" if b else ""
    return TextTooShortError(
        f"{spec.label()}: the text has {tokens} tokens ({tokens - 1} decode steps) but the first eviction ends "
        f"step {first} (the cache reaches S+W = {s + w}{extra} plus R-1 = {r - 1} tokens): nothing would be "
        f"evicted, so this case would measure no eviction; use >= {first + 2} tokens (more for a CI over events) "
        "or a smaller window")


def eviction_engaged(spec: StrategySpec, tokens: int, held: Mapping[int, Sequence[int]]) -> Engagement:
    """Compare what a cache reported holding after some steps (`held`: step -> its `slots`, text
    positions in slot order) with `expected_positions`. Raises TextTooShortError when `tokens`
    ends before the first eviction, EvictionCheckError when a holding differs or no reported step
    lies past the first eviction. Dense passes when it holds every token (it never evicts)."""
    first = first_eviction_step(spec)
    if first is not None and tokens - 2 < first:
        raise too_short_error(spec, tokens, first)
    for step in sorted(held):
        if step > tokens - 2:
            raise ValueError(f"{spec.label()}: step {step} is past the text's last decode step {tokens - 2}")
        want, got = expected_positions(spec, step), list(held[step])
        if got != want:
            raise EvictionCheckError(f"{spec.label()} on a {tokens}-token text: after step {step} the cache holds "
                                     f"{_describe(got)}, the strategy's schedule says {_describe(want)}"
                                     f"{_first_difference(got, want)}")
    if first is not None and not any(step >= first for step in held):
        raise EvictionCheckError(f"{spec.label()}: no holding reported at or after the first eviction (step {first}); "
                                 f"reported steps {sorted(held)}")
    return Engagement(spec.label(), tokens, first, tuple(sorted(held)), len(eviction_steps(spec, tokens - 1)))


def trace_engaged(spec: StrategySpec, tokens: int, prune_steps: Sequence[int],
                  kv_length: Sequence[int] | None = None) -> Engagement:
    """The same check on an evaluation's trace (`TokenTrace.prune_steps`, `kv_length` = |C_t| + 1),
    which both evaluators fill: the events and lengths must be the schedule's, and at least one
    event must fall inside the text."""
    first = first_eviction_step(spec)
    if first is not None and tokens - 2 < first:
        raise too_short_error(spec, tokens, first)
    want = eviction_steps(spec, tokens - 1)
    got = list(prune_steps)
    if got != want:
        raise EvictionCheckError(f"{spec.label()} on a {tokens}-token text: prune events at {_describe(got)}, the "
                                 f"schedule says {_describe(want)}{_first_difference(got, want)}")
    if kv_length is not None:
        for t, length in enumerate(kv_length):
            expected = 1 if t == 0 else expected_length(spec, t - 1) + 1
            if length != expected:
                raise EvictionCheckError(f"{spec.label()}: step {t} attends {length} entries, the schedule says "
                                         f"{expected}")
    return Engagement(spec.label(), tokens, first, tuple(want[:3]), len(want))


def _describe(positions: Sequence[int]) -> str:
    if len(positions) <= 8:
        return f"{list(positions)}"
    return f"{len(positions)} entries [{', '.join(map(str, positions[:4]))}, ..., {', '.join(map(str, positions[-2:]))}]"


def _first_difference(got: Sequence[int], want: Sequence[int]) -> str:
    if len(got) > len(want):
        why = ": eviction did not run (or removed too little)"
    elif len(got) < len(want):
        why = ": eviction removed too much or ran early"
    else:
        why = ""
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return f" (first difference at entry {i}: {a} vs {b}){why}"
    return f" ({len(got)} vs {len(want)} entries){why}" if why else ""
