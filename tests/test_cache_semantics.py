"""Semantics of the streaming caches (docs/semantics.md#streaming-step to #positions-under-rope) on tiny random models, fp32."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from reference_cache import reference_strict_nll

from conftest import tiny_llama
from streamllm.caches import StreamingCache, build_cache
from streamllm.compat import cache_kwargs
from streamllm.evaluate import DecodeOptions, evaluate_tokens
from streamllm.rope import RopeSpec, UnsupportedRopeError
from streamllm.strategies import make_strategy, plan_eviction, uniform_choice

pytestmark = pytest.mark.compat

FAST = DecodeOptions(warmup_steps=0, time_steps=False)


def nll(loaded, ids, spec) -> np.ndarray:
    return np.asarray(evaluate_tokens(loaded, ids, spec, options=FAST).trace.nll)


@pytest.mark.parametrize(
    "name, params",
    [
        ("strict", dict(sink=4, window=200)),
        ("lazy", dict(sink=4, window=200, compress_every=8)),
        ("window", dict(window=200)),
        ("no-shift", dict(sink=4, window=200)),
        ("overlap", dict(sink=4, window=150, overlap=50)),
        ("refresh", dict(sink=4, window=200, compress_every=8, refresh=4)),
    ],
)
def test_window_covering_text_equals_dense(tiny_model, token_ids, name, params):
    dense = nll(tiny_model, token_ids, make_strategy("dense"))
    other = nll(tiny_model, token_ids, make_strategy(name, **params))
    np.testing.assert_allclose(other, dense, atol=1e-5, rtol=0)


def test_lazy_r1_equals_strict(tiny_model, token_ids):
    strict = nll(tiny_model, token_ids, make_strategy("strict", sink=4, window=24))
    lazy = nll(tiny_model, token_ids, make_strategy("lazy", sink=4, window=24, compress_every=1))
    np.testing.assert_array_equal(lazy, strict)


@pytest.mark.parametrize("sink, window", [(4, 24), (1, 40), (0, 17)])
def test_strict_equals_pre_rope_reference(tiny_model, token_ids, sink, window):
    name = "window" if sink == 0 else "strict"
    ours = nll(tiny_model, token_ids, make_strategy(name, sink=sink, window=window))
    ref = reference_strict_nll(tiny_model.model, token_ids, sink, window).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_eviction_changes_predictions(tiny_model, token_ids):
    # Guards the equivalence tests above against vacuous agreement: eviction must matter.
    dense = nll(tiny_model, token_ids, make_strategy("dense"))
    strict = nll(tiny_model, token_ids, make_strategy("strict", sink=4, window=24))
    assert np.abs(dense - strict)[40:].max() > 1e-3


def test_positions_shift_vs_absolute(tiny_model, token_ids):
    strict = evaluate_tokens(tiny_model, token_ids, make_strategy("strict", sink=4, window=24), options=FAST)
    noshift = evaluate_tokens(tiny_model, token_ids, make_strategy("no-shift", sink=4, window=24), options=FAST)
    assert strict.trace.position == [min(t, 28) for t in range(token_ids.numel() - 1)]
    assert noshift.trace.position == list(range(token_ids.numel() - 1))
    assert strict.trace.kv_length == noshift.trace.kv_length
    assert max(strict.trace.kv_length) == 4 + 24 + 1


def test_lazy_schedule_and_prune_events(tiny_model, token_ids):
    spec = make_strategy("lazy", sink=4, window=24, compress_every=16)
    result = evaluate_tokens(tiny_model, token_ids, spec, options=FAST)
    # First eviction when |C_t + [t]| reaches S+W+R = 44, i.e. after token 43; then every R steps.
    assert result.trace.prune_steps[:3] == [43, 59, 75]
    assert set(result.trace.evicted) == {16}
    assert max(result.trace.kv_length) == 4 + 24 + 16
    assert max(result.trace.position) == 4 + 24 + 16 - 1 == spec.max_position


def test_refresh_reinserts_uniform_choice_at_tail_with_new_positions():
    loaded = tiny_llama()
    rope = RopeSpec.from_model(loaded.model)
    spec = make_strategy("refresh", sink=2, window=4, compress_every=4, refresh=2)
    cache = StreamingCache(spec, rope, num_layers=1)
    torch.manual_seed(0)
    fed = []
    for _ in range(spec.sink + spec.window + spec.refresh + spec.compress_every):  # 12 tokens -> one prune
        key = torch.randn(1, 2, 1, 16)
        fed.append(key)
        cache.update(key, torch.randn(1, 2, 1, 16), 0)
        event = cache.end_step()
    assert event is not None and event.reinserted == 2 and event.evicted == 12 - 8
    # evicted span = slots 2..7 (tokens 2..7); uniform picks 2 evenly spaced: tokens 3 and 6
    assert uniform_choice(list(range(2, 8)), 2) == [3, 6]
    assert cache.slots == [0, 1, 8, 9, 10, 11, 3, 6]
    keys = cache.layers[0].keys
    for slot, token in enumerate(cache.slots):
        # a key fed at slot == token (no earlier prune) now sits at `slot`: rotated by slot - token
        expected = rope.rotate(fed[token], slot - token)
        torch.testing.assert_close(keys[:, :, slot : slot + 1], expected, atol=1e-5, rtol=0)
    assert cache.next_position() == 8  # the next token continues after the re-inserted tail


def test_refresh_hurts_on_tiny_models_too(tiny_model, token_ids):
    # not a quality claim (random weights): only that refresh differs from lazy at the same R
    lazy = nll(tiny_model, token_ids, make_strategy("lazy", sink=4, window=24, compress_every=8))
    refresh = nll(tiny_model, token_ids, make_strategy("refresh", sink=4, window=24, compress_every=8, refresh=4))
    assert np.abs(lazy - refresh).max() > 1e-4


def test_auto_cap_respects_cap(tiny_model, token_ids):
    spec = make_strategy("overlap", sink=4, window=40, overlap=16, auto_cap=48)
    # effective_window already includes the overlap: S + (W + O) is shrunk to the cap
    assert spec.sink + spec.effective_window == 48
    assert spec.effective_window == 44
    result = evaluate_tokens(tiny_model, token_ids, spec, options=FAST)
    assert max(result.trace.kv_length) - 1 <= 48  # |C_t| never exceeds the cap
    uncapped = make_strategy("overlap", sink=4, window=40, overlap=16)
    assert uncapped.effective_window == 56
    refresh = make_strategy("refresh", sink=4, window=40, refresh=8, compress_every=4, auto_cap=48)
    assert refresh.sink + refresh.effective_window + refresh.refresh == 48


def test_plan_eviction_definitions():
    strict = make_strategy("strict", sink=2, window=3)
    assert plan_eviction(strict, 5) is None
    assert plan_eviction(strict, 6) == [0, 1, 3, 4, 5]
    lazy = make_strategy("lazy", sink=2, window=3, compress_every=3)
    assert plan_eviction(lazy, 7) is None
    assert plan_eviction(lazy, 8) == [0, 1, 5, 6, 7]
    assert plan_eviction(make_strategy("dense"), 10_000) is None


def test_batch_of_two_matches_batch_of_one(tiny_model, token_ids):
    spec = make_strategy("strict", sink=2, window=10)
    other = torch.roll(token_ids, 7)
    batch = torch.stack([token_ids, other])[:, :40]
    cache2 = build_cache(spec, tiny_model.model)
    logits2 = []
    with torch.inference_mode():
        for t in range(39):
            pos = torch.full((2, 1), cache2.next_position())
            logits2.append(tiny_model.model(input_ids=batch[:, t : t + 1], position_ids=pos, **cache_kwargs(tiny_model.model, cache2)).logits)
            cache2.end_step()
    for row in range(2):
        single = nll(tiny_model, batch[row], spec)
        lp = torch.stack([torch.log_softmax(step[row, -1].double(), -1) for step in logits2])
        batched = -lp[torch.arange(39), batch[row, 1:]].numpy()
        np.testing.assert_allclose(batched, single, atol=1e-4, rtol=0)


def test_unsupported_rope_is_refused():
    loaded = tiny_llama(rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 256})
    with pytest.raises(UnsupportedRopeError, match="yarn"):
        build_cache(make_strategy("strict", sink=4, window=8), loaded.model)
    # absolute-position strategies never re-rotate, so they still work
    build_cache(make_strategy("no-shift", sink=4, window=8), loaded.model)


def test_speedup_needs_same_tokens(tiny_model, token_ids):
    timed = DecodeOptions(warmup_steps=2)
    dense = evaluate_tokens(tiny_model, token_ids[:40], make_strategy("dense"), options=timed)
    strict = evaluate_tokens(tiny_model, token_ids[:40], make_strategy("strict", sink=2, window=8),
                             options=timed, reference=dense)
    # one definition (streamllm.measure.speedup): reference TPOT / this TPOT
    assert strict.speedup == pytest.approx(dense.tpot_ms_cycle_mean / strict.tpot_ms_cycle_mean)
    with pytest.raises(ValueError, match="same text"):
        evaluate_tokens(tiny_model, token_ids[:30], make_strategy("strict", sink=2, window=8), options=timed,
                        reference=dense)


def test_label_is_stable():
    assert make_strategy("lazy", sink=4, window=252, compress_every=32).label() == "lazy-s4-w252-c32"
    spec = make_strategy("refresh", sink=4, window=252, compress_every=32, refresh=8)
    assert spec.label() == "refresh-s4-w252-c32-b8"
    assert dataclasses.replace(spec, cache="ring").label().endswith("-ring")
