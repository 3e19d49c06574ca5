"""Static and ring caches equal the dynamic reference; INT8 and compile refusals are clear.

CPU, fp32, tiny seeded GPT-NeoX (partial rotary) and Llama (GQA) from conftest. The ring must
equal strict per token (docs/semantics.md#caches) over sequences that wrap the ring several times;
the static cache must equal the dynamic cache for strict and lazy. GPU-only checks (CUDA graph
capture, the CUDAGraphs "overwritten" error) are marked `gpu` and skip without CUDA.
"""

from __future__ import annotations

import builtins
import dataclasses

import pytest
import torch

from streamllm.caches import RingStreamingCache, StaticStreamingCache, UnsupportedCacheError
from streamllm.cli import main
from streamllm.combinations import check_compile, decode_mode_for, problem
from streamllm.decode import CompiledDecoder, GraphDecoder, make_cache
from streamllm.decoders import decoder_factory
from streamllm.evaluate import DecodeOptions, evaluate_tokens
from streamllm.strategies import StrategyError, make_strategy
from streamllm.transforms import (
    MissingDependencyError,
    NonFiniteLogitsError,
    check_finite_logits,
    quantize_int8_mlp,
)

pytestmark = pytest.mark.compat

TOL = 1e-4
OPTIONS = DecodeOptions(warmup_steps=0, time_steps=False)


def run(loaded, ids, spec, **kwargs):
    return evaluate_tokens(loaded, ids, spec, options=OPTIONS, **kwargs)


def nll_gap(a, b) -> float:
    return (torch.tensor(a.trace.nll) - torch.tensor(b.trace.nll)).abs().max().item()


def stream(sink: int, window: int) -> torch.Tensor:
    # Past S + W, and around the ring (W + 1 slots) twice.
    n = sink + window + 2 * (window + 1) + 3
    return torch.randint(0, 97, (n,), generator=torch.Generator().manual_seed(sink * 100 + window))


@pytest.mark.parametrize(("sink", "window"), [(4, 12), (0, 10), (2, 7)])
def test_ring_equals_strict(tiny_model, sink, window):
    ids = stream(sink, window)
    strict = make_strategy("strict" if sink else "window", sink=sink, window=window)
    ref = run(tiny_model, ids, strict)
    ring = run(tiny_model, ids, dataclasses.replace(strict, cache="ring"))
    assert nll_gap(ring, ref) <= TOL
    assert ring.trace.prune_steps == ref.trace.prune_steps
    assert ring.trace.kv_length == ref.trace.kv_length
    assert ring.trace.position == ref.trace.position  # effective (pos-shift) positions
    assert ring.strategy == strict.label() + "-ring"


@pytest.mark.parametrize("name", ["strict", "lazy"])
def test_static_equals_dynamic(tiny_model, name):
    sink, window = 3, 9
    ids = stream(sink, window)
    params = {"compress_every": 4} if name == "lazy" else {}
    spec = make_strategy(name, sink=sink, window=window, **params)
    ref = run(tiny_model, ids, spec)
    static = run(tiny_model, ids, dataclasses.replace(spec, cache="static"))
    assert nll_gap(static, ref) <= TOL
    assert static.trace.prune_steps == ref.trace.prune_steps
    assert static.trace.kv_length == ref.trace.kv_length


def test_no_shift_ring_equals_dynamic(tiny_model):
    ids = stream(2, 8)
    spec = make_strategy("no-shift", sink=2, window=8)
    assert nll_gap(run(tiny_model, ids, dataclasses.replace(spec, cache="ring")), run(tiny_model, ids, spec)) <= TOL


def test_ring_without_sink_rotation_differs(tiny_model):
    """Negative control: skipping the sink re-rotation must be visible, so the equality above means something."""
    ids = stream(4, 12)
    spec = make_strategy("strict", sink=4, window=12)

    def unrotated(s, model):
        cache = RingStreamingCache(dataclasses.replace(s, cache="ring"), model)
        cache.rotate_sinks = False
        return cache

    assert nll_gap(run(tiny_model, ids, spec, cache_factory=unrotated), run(tiny_model, ids, spec)) > 10 * TOL


def test_ring_state_is_on_the_device(tiny_model):
    spec = make_strategy("strict", sink=2, window=5, cache="ring")
    cache = make_cache(spec, tiny_model.model)
    ids = stream(2, 5)[:20]
    run(tiny_model, ids, spec, cache_factory=lambda s, m: cache)
    assert int(cache.t) == cache.seen == 19
    assert cache.slots == [0, 1, 14, 15, 16, 17, 18]
    assert cache.keys[0].shape[-2] == cache.num_slots == cache.used_slots == 2 + 5 + 1  # no padding
    assert bool((cache.attention_mask == 0).all()) and cache.full  # every slot holds a token
    static = make_cache(make_strategy("strict", sink=2, window=5, cache="static"), tiny_model.model)
    assert static.num_slots == 8 and static.used_slots == 8 and not static.full


def test_mask_free_attention_matches_masked(tiny_model):
    """The registered mask-free SDPA gives what SDPA with an all-zero mask gives (what a full ring uses)."""
    from streamllm.compat import attention_implementation
    from streamllm.decode import register_mask_free_sdpa

    model = tiny_model.model
    ids = stream(0, 12)[:10].view(1, -1)
    with torch.inference_mode():
        ref = model(input_ids=ids).logits
        zeros = torch.zeros(1, 1, 10, 10)
        causal = zeros.masked_fill(torch.ones(10, 10, dtype=torch.bool).triu(1), torch.finfo(torch.float32).min)
        with attention_implementation(model, register_mask_free_sdpa()):
            got = model(input_ids=ids, attention_mask=causal).logits
        assert model.config._attn_implementation == "sdpa"  # restored
    assert (got - ref).abs().max().item() <= 1e-5


def test_cache_kind_refusals(tiny_model):
    with pytest.raises(StrategyError, match="ring cache implements strict eviction"):
        make_strategy("lazy", sink=4, window=8, compress_every=4, cache="ring")
    with pytest.raises(StrategyError, match="static cache"):
        make_strategy("dense", cache="static")
    with pytest.raises(StrategyError, match="refresh re-inserts"):
        make_strategy("refresh", sink=4, window=8, compress_every=4, refresh=2, cache="static")
    with pytest.raises(StrategyError, match="unknown cache kind"):
        make_strategy("strict", cache="paged")
    with pytest.raises(UnsupportedCacheError, match="static"):
        RingStreamingCache(make_strategy("lazy", sink=4, window=8, compress_every=4), tiny_model.model)
    with pytest.raises(UnsupportedCacheError, match="dense keeps every token"):
        StaticStreamingCache(make_strategy("dense"), tiny_model.model)


def test_compile_refusals():
    cuda = torch.device("cuda")
    with pytest.raises(UnsupportedCacheError, match="overwritten.*--cache ring"):
        check_compile("cudagraphs", "dynamic", "cuda")
    with pytest.raises(UnsupportedCacheError, match="needs a CUDA device"):
        decoder_factory("cudagraphs", "cpu", "ring")
    with pytest.raises(UnsupportedCacheError, match="unknown --compile"):
        decoder_factory("max-autotune", "cpu", "ring")
    assert decoder_factory("default", "cpu", "dynamic") is CompiledDecoder
    assert decoder_factory("cudagraphs", cuda, "ring") is GraphDecoder


def test_one_table_answers_every_combination_question():
    ring = make_strategy("strict", sink=4, window=8, cache="ring")
    assert problem(ring, "cudagraphs", "cuda") is None
    assert "needs a CUDA device" in problem(ring, "cudagraphs", "cpu")
    dynamic = make_strategy("strict", sink=4, window=8)
    assert "overwritten" in problem(dynamic, "cudagraphs-gemv", "cuda")
    assert problem(dynamic, "default", "cpu") is None
    assert decode_mode_for(make_strategy("dense"), "cudagraphs")[0] == "default"
    assert decode_mode_for(ring, "cudagraphs") == ("cudagraphs", None)


def test_cli_refuses_bad_combinations(capsys):
    assert main(["eval", "--strategy", "lazy:c4", "--cache", "ring", "--tokens", "8"]) == 2
    assert "ring cache implements strict eviction" in capsys.readouterr().err
    # refused before any model is loaded (the model name would fail later)
    assert main(["eval", "--model", "dummy:nope", "--strategy", "strict", "--cache", "ring",
                 "--compile", "cudagraphs", "--device", "cpu"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
    assert main(["eval", "--model", "dummy:nope", "--strategy", "strict", "--compile", "cudagraphs",
                 "--device", "cpu"]) == 2


def test_int8_mlp_only_and_finite(tiny_model):
    pytest.importorskip("torchao")
    from conftest import tiny_neox

    loaded = tiny_neox()
    names = quantize_int8_mlp(loaded.model)
    assert names and all(".mlp." in n for n in names)
    attention = loaded.model.gpt_neox.layers[0].attention.query_key_value.weight
    assert type(attention) in (torch.Tensor, torch.nn.Parameter)  # attention untouched
    assert type(loaded.model.gpt_neox.layers[0].mlp.dense_h_to_4h.weight).__name__ == "IntxUnpackedToInt8Tensor"
    check_finite_logits(loaded.model)  # no raise


def test_finite_check_names_first_bad_layer():
    from conftest import tiny_llama

    loaded = tiny_llama()
    with torch.no_grad():
        loaded.model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteLogitsError, match=r"first non-finite layer: model\.layers\.1 "):
        check_finite_logits(loaded.model)


def test_int8_refuses_version_1_and_missing_torchao(tiny_model, monkeypatch):
    with pytest.raises(ValueError, match="version=1"):
        quantize_int8_mlp(tiny_model.model, version=1)
    real_import = builtins.__import__

    def no_torchao(name, *args, **kwargs):
        if name.startswith("torchao"):
            raise ImportError("No module named 'torchao'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchao)
    with pytest.raises(MissingDependencyError, match="pip install torchao"):
        quantize_int8_mlp(tiny_model.model)


# -- GPU only ----------------------------------------------------------------------------------
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@gpu
def test_cudagraph_trees_overwrite_held_outputs():
    """The exploration log's crash (docs/findings.md#cuda-graphs), reproduced: an output of a reduce-overhead graph kept across replays."""

    @torch.compile(mode="reduce-overhead")
    def step(x):
        return x @ x.T

    x = torch.randn(16, 16, device="cuda")
    kept = []
    for _ in range(4):  # warm-up, record, replays into the memory kept[0] lives in
        torch.compiler.cudagraph_mark_step_begin()
        kept.append(step(x))  # like an evaluator keeping each step's logits
    with pytest.raises(RuntimeError, match="overwritten"):
        kept[0].sum().item()


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize(("compiled", "attention", "gemv"),
                         [(False, None, False), (True, None, False), (False, "sdpa-maskfree", False),
                          (True, None, True)])
def test_graph_decoder_matches_eager_ring(compiled, attention, gemv):
    from conftest import tiny_neox

    loaded = tiny_neox()
    loaded.model.to("cuda")
    loaded = dataclasses.replace(loaded, device=torch.device("cuda"))
    ids = stream(2, 9)
    spec = make_strategy("strict", sink=2, window=9, cache="ring")
    eager = run(loaded, ids, spec)
    graph = run(loaded, ids, spec, decoder_factory=lambda m, c: GraphDecoder(m, c, compiled=compiled,
                                                                           attention=attention, gemv=gemv))
    assert nll_gap(graph, eager) <= TOL
    assert nll_gap(graph, run(loaded, ids, dataclasses.replace(spec, cache="dynamic"))) <= TOL
