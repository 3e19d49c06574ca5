"""The parallel (chunked) evaluator equals the token loop per token (docs/semantics.md#parallel-evaluation)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, GPTNeoXConfig, LlamaConfig

from streamllm.caches import StreamingCache
from streamllm.evaluate import DecodeOptions, evaluate_tokens
from streamllm.models import LoadedModel
from streamllm.parallel import evaluate_parallel, with_decode_timing
from streamllm.parallel_attention import ATTENTION_NAME
from streamllm.parallel_schedule import ScheduleError, schedule, supports_parallel
from streamllm.rope import RopeSpec
from streamllm.strategies import StrategySpec, make_strategy

pytestmark = pytest.mark.compat

TOLERANCE = 1e-4  # max |ΔNLL| per token, fp32
VOCAB = 96


def build_tiny(arch: str) -> LoadedModel:
    """Seeded random model, eager attention; weights large enough that attention is peaked."""
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=4096)
    if arch == "llama":
        config = LlamaConfig(num_key_value_heads=2, **common)  # GQA 4/2, full rotary
    else:
        config = GPTNeoXConfig(rotary_pct=0.25, **common)  # partial rotary, parallel residual
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.15)
    model.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=None, name=f"tiny-{arch}", revision="test", dtype=torch.float32,
                       device=torch.device("cpu"))


@pytest.fixture(scope="module", params=["llama", "gpt_neox"])
def loaded(request) -> LoadedModel:
    return build_tiny(request.param)


@pytest.fixture(autouse=True)
def one_thread(request):
    """Tiny models run fastest on one thread; a shared, busy CPU makes 2-thread tiny ops ~50x slower."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def text_ids(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


_token_cache: dict[tuple, list[float]] = {}


def token_nll(loaded: LoadedModel, ids: torch.Tensor, spec: StrategySpec):
    key = (loaded.name, spec, ids.numel())
    if key not in _token_cache:
        result = evaluate_tokens(loaded, ids, spec, options=DecodeOptions(time_steps=False))
        _token_cache[key] = result
    return _token_cache[key]


SPECS = {
    "dense": make_strategy("dense"),
    "window": make_strategy("window", window=16),
    "strict": make_strategy("strict", sink=4, window=16),
    "strict-s1": make_strategy("strict", sink=1, window=9),
    "lazy-c1": make_strategy("lazy", sink=4, window=16, compress_every=1),
    "lazy-c3": make_strategy("lazy", sink=4, window=16, compress_every=3),
    "lazy-c8": make_strategy("lazy", sink=2, window=12, compress_every=8),
    "lazy-s0-c5": make_strategy("lazy", sink=0, window=12, compress_every=5),
    "no-shift": make_strategy("no-shift", sink=4, window=16),
    "overlap-cap": make_strategy("overlap", sink=4, window=16, overlap=8, auto_cap=24),
    "overlap-lazy": make_strategy("overlap", sink=3, window=10, overlap=4, compress_every=4),
}


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("chunk_size", [3, 7, 32, 512])
def test_parallel_equals_token_loop(loaded: LoadedModel, name: str, chunk_size: int):
    spec = SPECS[name]
    ids = text_ids(83)  # 82 steps: no chunk size divides it; 3 < S and 7 are smaller than every window
    ref = token_nll(loaded, ids, spec)
    got = evaluate_parallel(loaded, ids, spec, chunk_size=chunk_size)
    delta = np.abs(np.asarray(got.trace.nll) - np.asarray(ref.trace.nll))
    assert delta.max() <= TOLERANCE, f"{name}: max |ΔNLL| {delta.max():.2e} at step {delta.argmax()}"
    assert got.trace.kv_length == ref.trace.kv_length
    assert got.trace.position == ref.trace.position
    assert got.trace.prune_steps == ref.trace.prune_steps
    assert got.trace.evicted == ref.trace.evicted
    assert got.evaluator == "parallel" and got.prune_events == ref.prune_events
    assert got.max_position == ref.max_position
    assert np.isnan(got.trace.step_ms).all() and np.isnan(got.tpot_ms_median)
    assert got.ppl == pytest.approx(ref.ppl, rel=1e-4)


@pytest.mark.slow  # a 3000-token decode loop
def test_no_precision_drift_far_into_the_text():
    """Shift strategies only ever see positions <= S+W in the token loop; float32 angles at t ~ 3000
    would be off by ~1e-4 rad (measured: max |ΔNLL| 2.4e-4 at 4000 tokens), float64 ones are not."""
    loaded = build_tiny("llama")
    ids = text_ids(3000, seed=2)
    spec = SPECS["strict"]
    ref = np.asarray(token_nll(loaded, ids, spec).trace.nll)
    got = np.asarray(evaluate_parallel(loaded, ids, spec).trace.nll)
    assert np.abs(got - ref).max() <= TOLERANCE / 4


def test_equivalence_is_sensitive(loaded: LoadedModel):
    """The tiny models tell strategies apart, so the equivalence test above has teeth."""
    ids = text_ids(83)
    shift = np.asarray(token_nll(loaded, ids, SPECS["strict"]).trace.nll)
    absolute = np.asarray(token_nll(loaded, ids, SPECS["no-shift"]).trace.nll)
    dense = np.asarray(token_nll(loaded, ids, SPECS["dense"]).trace.nll)
    assert np.abs(shift - absolute).max() > 100 * TOLERANCE
    assert np.abs(shift - dense).max() > 100 * TOLERANCE


def test_restores_attention_implementation(loaded: LoadedModel):
    before = loaded.model.config._attn_implementation
    evaluate_parallel(loaded, text_ids(20), SPECS["strict"], chunk_size=8)
    assert loaded.model.config._attn_implementation == before != ATTENTION_NAME


def test_refresh_is_not_supported():
    spec = make_strategy("refresh", sink=4, window=16, compress_every=4, refresh=2)
    ok, reason = supports_parallel(spec)
    assert not ok and "refresh" in reason
    with pytest.raises(ScheduleError):
        schedule(spec, 50)


def test_supported_strategies():
    for spec in SPECS.values():
        assert supports_parallel(spec) == (True, "")


def test_refresh_raises_in_evaluate_parallel(loaded: LoadedModel):
    spec = make_strategy("refresh", sink=4, window=16, compress_every=4, refresh=2)
    with pytest.raises(ScheduleError, match="refresh"):
        evaluate_parallel(loaded, text_ids(40), spec)


def test_with_decode_timing_takes_tpot_from_the_token_loop(loaded: LoadedModel):
    spec = SPECS["lazy-c3"]
    ids = text_ids(60)
    timed = evaluate_tokens(loaded, ids, spec, options=DecodeOptions(warmup_steps=2))
    merged = with_decode_timing(evaluate_parallel(loaded, ids, spec, chunk_size=16), timed)
    assert merged.evaluator == "parallel" and merged.tpot_ms_cycle_mean == timed.tpot_ms_cycle_mean
    assert merged.trace.step_ms == timed.trace.step_ms and merged.total_s == timed.total_s
    assert any("TPOT from the token loop" in note for note in merged.notes)
    with pytest.raises(ValueError):
        with_decode_timing(evaluate_parallel(loaded, ids, SPECS["strict"]), timed)


def test_cli_parallel_by_default_with_token_fallback(tmp_path, capsys):
    from streamllm.cli import main

    out = tmp_path / "r.json"
    argv = ["eval", "--model", "dummy:smollm2-135m", "--strategy", "strict:s4:w16,refresh:s4:w16:c4:b2",
            "--tokens", "40", "--chunk-size", "16", "--warmup", "2", "--no-progress", "--json", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "cannot honour" in captured.err and "TPOT not measured" in captured.out
    records = {r["strategy"]: r for r in json.loads(out.read_text())["results"]}
    strict, refresh = records["strict-s4-w16"], records["refresh-s4-w16-c4-b2"]
    assert strict["evaluator"] == "parallel" and strict["tpot_ms"] is None
    assert refresh["evaluator"] == "token" and refresh["tpot_ms"] > 0
    assert any("token loop" in note for note in refresh["notes"])


# -- the schedule against the real cache's slot bookkeeping ----------------------------------
DUMMY_ROPE = RopeSpec(inv_freq=torch.ones(1, dtype=torch.float64), rotary_dim=2, head_dim=2, rope_type="default")


@pytest.mark.parametrize("name", list(SPECS))
def test_schedule_matches_streaming_cache(name: str):
    spec = SPECS[name]
    steps = 120
    plan = schedule(spec, steps)
    cache = StreamingCache(spec, DUMMY_ROPE, num_layers=1)  # no tensors: slots only
    for t in range(steps):
        a, sinks = int(plan.window_start[t]), int(plan.sinks_used(t))
        assert cache.slots == list(range(sinks)) + list(range(a, t)), f"step {t}"
        assert plan.cache_length[t] == cache.length
        assert plan.position[t] == cache.next_position()
        event = cache.end_step()
        assert bool(plan.pruned[t]) == (event is not None)
        assert plan.evicted[t] == (event.evicted if event else 0)


def test_schedule_lazy_r1_equals_strict():
    strict = schedule(SPECS["strict"], 100)
    lazy = schedule(SPECS["lazy-c1"], 100)
    for field in ("cache_length", "window_start", "position", "pruned", "evicted"):
        assert np.array_equal(getattr(strict, field), getattr(lazy, field))


@pytest.mark.parametrize(("name", "cache"), [("strict", "static"), ("strict", "ring"), ("window", "ring"),
                                           ("no-shift", "ring"), ("lazy-c3", "static")])
def test_parallel_holds_for_static_and_ring_caches(loaded: LoadedModel, name: str, cache: str):
    """`schedule` plans from the strategy alone (it never reads `spec.cache`), so the parallel
    evaluator's NLL for a static or ring spec is right only if those caches keep exactly the tokens
    and positions the strategy says. The token loop on the real cache is the judge."""
    spec = dataclasses.replace(SPECS[name], cache=cache)
    ids = text_ids(60)  # 59 steps: the ring wraps more than twice at S+W = 20
    ref = evaluate_tokens(loaded, ids, spec, options=DecodeOptions(time_steps=False))
    got = evaluate_parallel(loaded, ids, spec, chunk_size=16)
    delta = np.abs(np.asarray(got.trace.nll) - np.asarray(ref.trace.nll))
    assert delta.max() <= TOLERANCE, f"{spec.label()}: max |ΔNLL| {delta.max():.2e} at step {delta.argmax()}"
    assert got.trace.kv_length == ref.trace.kv_length
    assert got.trace.position == ref.trace.position
    assert got.trace.prune_steps == ref.trace.prune_steps
    assert got.trace.evicted == ref.trace.evicted


# -- the embedded model ----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("compress_every", [1, 32])
def test_embedded_model_book(compress_every: int):
    from streamllm.data import load_text, tokenize
    from streamllm.models import load_model

    loaded = load_model("embedded")  # 2 threads: tests/conftest.py's torch_threads (one_thread skips slow tests)
    text = load_text("book")
    ids = tokenize(loaded.tokenizer, text, 1024)
    name = "strict" if compress_every == 1 else "lazy"
    spec = make_strategy(name, sink=4, window=252, compress_every=compress_every)
    ref = evaluate_tokens(loaded, ids, spec, options=DecodeOptions(time_steps=False))
    got = evaluate_parallel(loaded, ids, spec)
    delta = np.abs(np.asarray(got.trace.nll) - np.asarray(ref.trace.nll))
    print(f"\n{spec.label()}: max |ΔNLL| {delta.max():.2e}, PPL token {ref.ppl:.4f} parallel {got.ppl:.4f}")
    assert delta.max() <= TOLERANCE
    assert got.trace.prune_steps == ref.trace.prune_steps
