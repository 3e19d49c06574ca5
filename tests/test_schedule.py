"""The eviction-engaged check (streamllm/schedule.py): the closed-form schedule equals the parallel
evaluator's, every cache holds what it says on a tiny random model, and a text too short to
evict or a cache that stopped evicting is an error, not a pass."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import streamllm.caches.dynamic as dynamic_module
import streamllm.parallel_schedule as parallel_schedule_module
from conftest import tiny_llama
from streamllm.caches import make_cache
from streamllm.combinations import cache_problem
from streamllm.decode import EagerDecoder
from streamllm.evaluate import DecodeOptions, evaluate_tokens
from streamllm.parallel import evaluate_parallel
from streamllm.parallel_schedule import schedule
from streamllm.schedule import (
    EvictionCheckError,
    TextTooShortError,
    eviction_engaged,
    eviction_steps,
    expected_length,
    expected_positions,
    first_eviction_step,
    trace_engaged,
)
from streamllm.strategies import make_strategy

S, W = 2, 8
SPECS = [
    make_strategy("strict", sink=S, window=W),
    make_strategy("lazy", sink=S, window=W, compress_every=4),
    make_strategy("window", window=W),
    make_strategy("no-shift", sink=S, window=W),
    make_strategy("overlap", sink=S, window=W, overlap=3),
    make_strategy("overlap", sink=S, window=W, overlap=3, auto_cap=10, compress_every=3),
    make_strategy("refresh", sink=S, window=W, compress_every=4, refresh=3),
]
CACHES = [dataclasses.replace(spec, cache=kind) for spec in SPECS for kind in ("dynamic", "static", "ring")
          if cache_problem(dataclasses.replace(spec, cache=kind)) is None]
STEPS = 60


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)  # tiny models: one thread is fastest on the shared CPU


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama()


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, 97, (STEPS + 1,), generator=torch.Generator().manual_seed(3))


def decode_holdings(tiny, ids: torch.Tensor, spec) -> dict[int, list[int]]:
    """cache.slots after every step of a token-by-token decode (what the cache says it holds)."""
    cache = make_cache(spec, tiny.model)
    decoder = EagerDecoder(tiny.model, cache)
    held = {}
    with torch.inference_mode():
        for t in range(ids.numel() - 1):
            decoder.step(ids[t : t + 1].view(1, 1))
            held[t] = list(cache.slots)
    return held


@pytest.mark.parametrize("spec", [s for s in SPECS if s.name != "refresh"] + [make_strategy("dense")],
                         ids=lambda s: s.label())
def test_closed_form_equals_the_parallel_schedule(spec):
    plan = schedule(spec, STEPS)  # the parallel evaluator's: plan_eviction on lengths
    for t in range(1, STEPS):
        held = expected_positions(spec, t - 1)  # C_t
        sinks = list(range(int(plan.sinks_used(t))))
        window = list(range(int(plan.window_start[t]), t))
        assert held == sinks + window, t
        assert len(held) == plan.cache_length[t]
    assert eviction_steps(spec, STEPS) == plan.prune_steps


@pytest.mark.parametrize("spec", CACHES, ids=lambda s: s.label())
def test_every_cache_holds_the_schedule_past_the_first_eviction(tiny, ids, spec):
    held = decode_holdings(tiny, ids, spec)
    first = first_eviction_step(spec)
    assert first is not None and first + 2 * spec.compress_every < STEPS  # the text evicts several times
    past = {t: h for t, h in held.items() if t >= first}
    engaged = eviction_engaged(spec, ids.numel(), past)
    assert engaged.first_eviction == first and engaged.events_in_text >= 3
    # and the check is not vacuous: the holdings really shrank at the first eviction
    assert len(held[first]) < len(held[first - 1]) + 1


@pytest.mark.parametrize("spec", SPECS + [make_strategy("dense")], ids=lambda s: s.label())
def test_expected_length_is_the_holdings_length(spec):
    assert [expected_length(spec, t) for t in range(STEPS)] == [len(expected_positions(spec, t)) for t in range(STEPS)]


def test_dense_holds_everything(tiny, ids):
    dense = make_strategy("dense")
    held = decode_holdings(tiny, ids[:20], dense)
    assert eviction_engaged(dense, 20, held).first_eviction is None
    with pytest.raises(EvictionCheckError):
        eviction_engaged(dense, 20, {5: [0, 1, 2]})


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.label())
def test_text_too_short_to_evict_is_an_error_naming_both(tiny, ids, spec):
    first = first_eviction_step(spec)
    short = first + 1  # decode steps 0..first-1: the eviction at the end of step `first` never happens
    with pytest.raises(TextTooShortError) as info:
        eviction_engaged(spec, short, {0: [0]})
    message = str(info.value)
    assert spec.label() in message and f"{short} tokens" in message
    assert f"S+W = {spec.sink + spec.effective_window}" in message
    with pytest.raises(TextTooShortError):
        trace_engaged(spec, short, [])
    assert eviction_engaged(spec, short + 1, {first: expected_positions(spec, first)}).events_in_text == 1


def test_a_cache_that_never_evicts_is_caught(tiny, ids, monkeypatch):
    spec = SPECS[1]
    monkeypatch.setattr(dynamic_module, "plan_eviction", lambda *args, **kwargs: None)
    held = decode_holdings(tiny, ids, spec)
    with pytest.raises(EvictionCheckError, match="did not run"):
        eviction_engaged(spec, ids.numel(), {t: h for t, h in held.items() if t >= first_eviction_step(spec)})


def test_wrong_refresh_choice_is_caught(tiny, ids, monkeypatch):
    spec = SPECS[-1]
    monkeypatch.setattr("streamllm.strategies.uniform_choice", lambda candidates, budget: list(candidates[:budget]))
    held = decode_holdings(tiny, ids, spec)
    with pytest.raises(EvictionCheckError, match="first difference"):
        eviction_engaged(spec, ids.numel(), {t: h for t, h in held.items() if t >= first_eviction_step(spec)})


def test_no_holding_past_the_first_eviction_is_not_a_pass():
    spec = SPECS[1]
    with pytest.raises(EvictionCheckError, match="no holding reported"):
        eviction_engaged(spec, STEPS + 1, {3: [0, 1, 2, 3]})


@pytest.mark.parametrize("spec", SPECS[:2], ids=lambda s: s.label())
def test_traces_of_both_evaluators_follow_the_schedule(tiny, ids, spec, monkeypatch):
    token = evaluate_tokens(tiny, ids, spec, options=DecodeOptions(time_steps=False))
    parallel = evaluate_parallel(tiny, ids, spec, chunk_size=16)
    for result in (token, parallel):
        engaged = trace_engaged(spec, ids.numel(), result.trace.prune_steps, result.trace.kv_length)
        assert engaged.events_in_text == len(result.trace.prune_steps) >= 3
    # the parallel evaluator's schedule shares plan_eviction: break it and its trace no longer passes
    monkeypatch.setattr(parallel_schedule_module, "plan_eviction", lambda *args, **kwargs: None)
    broken = evaluate_parallel(tiny, ids, spec, chunk_size=16)
    assert broken.trace.prune_steps == []
    with pytest.raises(EvictionCheckError, match="prune events"):
        trace_engaged(spec, ids.numel(), broken.trace.prune_steps, broken.trace.kv_length)
    assert np.isfinite(broken.ppl)
