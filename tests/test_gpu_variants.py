"""The GPU decode variants as bench cases (`--sweep gpu`) and the profiling script on top of the library.

scripts/gpu_tpot.py used to time its own table of variants; they are catalog cases now, measured
by the suite (`pytest bench --sweep gpu`) and by streamllm.profile (the script and
scripts/kernel_bench.py's end-to-end table). On CPU: the cases exist with the right compile modes
and transforms, the graph ones are refused with streamllm.combinations' reason, the script's CPU
path writes its JSON, and an INT8 case can no longer hand its quantized weights to a float case
listed after it. GPU-only checks are marked `gpu` and skip without CUDA.
"""

from __future__ import annotations

import dataclasses
import json
import types
from argparse import Namespace

import pytest
import torch

from bench.catalog import BenchCase, build_catalog, compile_mode, select, unavailable_reason
from conftest import tiny_neox
from streamllm.combinations import GRAPH_MODES, problem
from streamllm.decode import GRAPH_OPTIONS, GraphDecoder
from streamllm.decoders import decoder_factory
from streamllm.profile import (
    WeightSets,
    hf_static_slice,
    kernel_group,
    measure_variant,
    weights_kind,
)
from streamllm.strategies import make_strategy

S, W = 4, 28  # tiny-model geometry: 32 slots, well inside 512 positions
INT8_TYPE = "IntxUnpackedToInt8Tensor"  # torchao's INT8 v2 weight tensor
needs_torchao = pytest.mark.skipif(problem(make_strategy("strict", sink=S, window=W), int8=True, environment=True)
                                   is not None, reason="INT8 v2 needs torchao")

# id -> (compile mode, transform, strategy, cache): the old script's variants, as catalog cases.
GPU_CASES = {
    "dense": ("none", None, "dense", "dynamic"),
    "strict": ("none", None, "strict", "dynamic"),
    "lazy-c16": ("none", None, "lazy", "dynamic"),
    "lazy-c32": ("none", None, "lazy", "dynamic"),
    "static": ("none", None, "strict", "static"),
    "lazy-c32-static": ("none", None, "lazy", "static"),
    "int8": ("none", "int8", "strict", "dynamic"),
    "compile": ("default", "compile", "strict", "dynamic"),
    "ring": ("none", None, "strict", "ring"),
    "ring-compile": ("default", "compile", "strict", "ring"),
    "ring-cudagraphs": ("cudagraphs", "compile-cudagraphs", "strict", "ring"),
    "ring-cudagraphs-gemv": ("cudagraphs-gemv", "compile-cudagraphs-gemv", "strict", "ring"),
    "ring-cudagraphs-triton": ("cudagraphs-triton", "compile-cudagraphs-triton", "strict", "ring"),
    "ring-cudagraphs-uncompiled": ("cudagraphs-uncompiled", "compile-cudagraphs-uncompiled", "strict", "ring"),
    "ring-cudagraphs-maskfree": ("cudagraphs-maskfree", "compile-cudagraphs-maskfree", "strict", "ring"),
    "ring-cudagraphs-matmul": ("cudagraphs-matmul", "compile-cudagraphs-matmul", "strict", "ring"),
    "ring-cudagraphs-autotune": ("cudagraphs-autotune", "compile-cudagraphs-autotune", "strict", "ring"),
    "noevict-ring-cudagraphs": ("cudagraphs", "compile-cudagraphs", "window", "ring"),
    "noevict-ring-cudagraphs-gemv": ("cudagraphs-gemv", "compile-cudagraphs-gemv", "window", "ring"),
    "noevict-ring-cudagraphs-triton": ("cudagraphs-triton", "compile-cudagraphs-triton", "window", "ring"),
    "noevict-ring-cudagraphs-maskfree": ("cudagraphs-maskfree", "compile-cudagraphs-maskfree", "window", "ring"),
    "static-cudagraphs": ("cudagraphs", "compile-cudagraphs", "strict", "static"),
    "lazy-c32-static-cudagraphs": ("cudagraphs", "compile-cudagraphs", "lazy", "static"),
    "int8-ring": ("none", "int8", "strict", "ring"),
    "int8-ring-cudagraphs": ("cudagraphs", "int8", "strict", "ring"),
    "int8-ring-cudagraphs-gemv": ("cudagraphs-gemv", "int8", "strict", "ring"),
}


def gpu_sweep(sink: int = 4, window: int = 124) -> dict[str, BenchCase]:
    return {case.id: case for case in select(build_catalog(sink, window), "sweep:gpu", "cuda")}


# -- the cases -------------------------------------------------------------------------------
def test_gpu_sweep_holds_every_variant_with_its_mode_and_transform():
    cases = gpu_sweep()
    assert set(cases) == set(GPU_CASES)
    for case_id, (mode, transform, strategy, cache) in GPU_CASES.items():
        case = cases[case_id]
        assert (compile_mode(case), case.transform, case.spec.name, case.spec.cache) == (mode, transform, strategy,
                                                                                            cache), case_id
    # the ring's no-eviction twin: the same slot count, no sinks (nothing to re-rotate)
    twin, ring = cases["noevict-ring-cudagraphs"].spec, cases["ring-cudagraphs"].spec
    assert (twin.sink, twin.window) == (0, ring.sink + ring.window)
    assert cases["lazy-c32-static-cudagraphs"].spec.compress_every == 32
    # new points are sweep-only: `--strategies all` (the nox gpu job) and the default run are unchanged
    assert all(cases[i].sweep_only and not cases[i].default for i in cases if i.startswith(("noevict", "int8-")))


def test_every_catalog_label_is_unique():
    """Labels key the stored baselines: an INT8 case's compile mode must be in its label."""
    labels = [case.label for case in build_catalog(4, 124)]
    assert len(labels) == len(set(labels))
    cases = gpu_sweep()
    assert cases["int8-ring-cudagraphs"].label == "strict-s4-w124-ring+int8+compile-cudagraphs"
    assert cases["int8-ring-cudagraphs"].params()["compile"] == "cudagraphs"
    assert "compile" not in cases["int8"].params()  # existing baseline keys keep their shape
    assert "compile" not in cases["ring-cudagraphs"].params()


def test_compile_field_needs_int8_weights():
    spec = make_strategy("strict", sink=4, window=124, cache="ring")
    with pytest.raises(ValueError, match="transform='int8' only"):
        BenchCase("bad", spec, transform="compile", compile="cudagraphs")


def test_gpu_cases_refused_on_cpu_with_the_combinations_reason():
    for case in gpu_sweep().values():
        mode = compile_mode(case)
        expected = problem(case.spec, mode, "cpu", int8=case.transform == "int8", environment=True)
        assert unavailable_reason(case, "cpu") == expected
        if mode in GRAPH_MODES:
            assert f"--compile {mode} needs a CUDA device" in expected, case.id


def test_every_graph_mode_has_a_decoder():
    assert set(GRAPH_OPTIONS) | {"cudagraphs-triton"} == GRAPH_MODES
    assert decoder_factory("cudagraphs", "cuda", "ring") is GraphDecoder
    for mode, options in GRAPH_OPTIONS.items():
        if options:
            assert decoder_factory(mode, "cuda", "ring").keywords == options
        with pytest.raises(ValueError, match="needs a CUDA device"):
            decoder_factory(mode, "cpu", "ring")


def test_graph_decoder_lifts_the_recompile_limit_only_while_tracing():
    """One process builds a decoder per case; ~14 graph cases would pass dynamo's 8 entries of
    _decode_step and fail the fullgraph compile."""
    fake = types.SimpleNamespace(model=tiny_neox().model, gemv=False, attention=None)
    before = torch._dynamo.config.recompile_limit
    with GraphDecoder._tracing(fake):
        assert torch._dynamo.config.recompile_limit >= 4 * len(GPU_CASES)
    assert torch._dynamo.config.recompile_limit == before


# -- the library -----------------------------------------------------------------------------
@pytest.fixture
def tiny_weights(monkeypatch):
    """WeightSets (and so the scripts) load a fresh tiny seeded GPT-NeoX wherever they ask for a model."""
    monkeypatch.setattr("streamllm.profile.load_model", lambda *args, **kwargs: tiny_neox())


@needs_torchao
def test_float_weights_after_int8_stay_float(tiny_weights):
    weights = WeightSets("tiny", "float32", "cpu")
    int8 = weights.get("int8")
    float_ = weights.get(None)
    assert weights_kind(int8.model)["type"] == INT8_TYPE
    assert weights_kind(float_.model) == {"module": "gpt_neox.layers.0.mlp.dense_h_to_4h", "type": "Tensor",
                                          "dtype": "float32"}
    assert weights.get("compile") is float_ and weights.get("int8") is int8  # one model per weight transform


def test_measure_variant_times_whole_cycles_and_floors_them():
    loaded = tiny_neox()
    ids = torch.randint(0, 97, (200,), generator=torch.Generator().manual_seed(1))
    spec = dataclasses.replace(make_strategy("lazy", sink=S, window=W, compress_every=8), cache="static")
    row = measure_variant(loaded, ids, spec, min_steps=4, rounds=2, profile_rounds=1, bandwidth_GBps=10.0)
    assert row.steps_per_round == 8 and len(row.samples_ms) == 2  # rounds are whole lazy cycles
    assert row.attended_slots == pytest.approx(S + W + 4.5)  # lazy R=8: |C_t| + 1 runs 33..40
    assert row.floor_ms == pytest.approx(row.step_bytes / 10e9 * 1e3)
    assert 0 < row.kv_bytes < row.step_bytes and len(row.step_ms) == 16
    assert row.profile.clock == "cpu" and row.profile.steps == 8 and row.profile.us_per_step > 0
    with pytest.raises(ValueError, match="needs a CUDA device"):
        measure_variant(loaded, ids, dataclasses.replace(spec, compress_every=1, cache="ring"), "cudagraphs")


def test_hf_static_reference_decodes_like_dense():
    loaded = tiny_neox()
    ids = torch.randint(0, 97, (80,), generator=torch.Generator().manual_seed(2))
    slice_ = hf_static_slice(loaded, ids, length=40, timed_steps=20, mode=None)
    slice_.run(20)
    with torch.inference_mode():
        logits = loaded.model(input_ids=ids[:61].view(1, -1)).logits[0, 40:60]
    ref = -torch.log_softmax(logits.float(), -1).gather(1, ids[41:61].view(-1, 1)).view(-1)
    assert torch.allclose(torch.tensor(slice_.nll, dtype=torch.float32), ref, atol=1e-4)
    assert slice_.kv_length == list(range(41, 61))


def test_kernel_groups():
    assert kernel_group("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert kernel_group("nvjet_hsh_64x8_64x16_2x1_v_bz_splitK_TNT") == "matmul"
    assert kernel_group("triton_poi_fused_add_mul_0") == "triton (fused elementwise/norm/scatter)"
    assert kernel_group("aten::gelu") == "other"


# -- the scripts -----------------------------------------------------------------------------
@needs_torchao
def test_profile_script_cpu_path_writes_its_json(tiny_weights, tmp_path):
    from scripts import gpu_tpot

    rc = gpu_tpot.main(["--model", "tiny", "--device", "cpu", "--sink", str(S), "--window", str(W),
                        "--tokens", "200", "--min-steps", "4", "--rounds", "2", "--bandwidth", "10",
                        "--cases", "dense,int8,ring,lazy-c32-static,ring-cudagraphs,int8-ring-cudagraphs",
                        "--profile", "ring", "--hf-static", "eager", "--out", str(tmp_path)])
    assert rc == 0
    report = json.loads((tmp_path / "gpu_tpot.json").read_text())
    rows = report["rows"]
    assert report["schema"] == "streamllm.gpu-tpot/2" and report["copy_bandwidth_GBps"] == 10
    assert list(rows) == ["dense", "int8", "ring", "lazy-c32-static", "hf-static-compile"]  # catalog order
    assert set(report["skipped"]) == {"ring-cudagraphs", "int8-ring-cudagraphs"}
    assert "--compile cudagraphs needs a CUDA device" in report["skipped"]["ring-cudagraphs"]
    assert not report["errors"]
    for row in rows.values():
        assert row["tpot_ms"] > 0 and row["floor_ms"] > 0
    assert rows["ring"]["profile"]["clock"] == "cpu" and rows["ring"]["profile"]["top"]
    assert rows["lazy-c32-static"]["steps_per_round"] == 32
    # The old script quantized the shared model in place: "ring" (listed after "int8") ran on INT8.
    assert rows["int8"]["weights"]["type"] == INT8_TYPE
    for name in ("dense", "ring", "lazy-c32-static", "hf-static-compile"):
        assert rows[name]["weights"] == {"module": "gpt_neox.layers.0.mlp.dense_h_to_4h", "type": "Tensor",
                                         "dtype": "float32"}, name


def test_profile_script_lists_cases_with_reasons(capsys):
    from scripts import gpu_tpot

    assert gpu_tpot.main(["--list", "--device", "cpu", "--window", "124"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert set(lines) == set(GPU_CASES)
    assert "needs a CUDA device" in lines["noevict-ring-cudagraphs"] and "needs" not in lines["ring"]


@needs_torchao
def test_kernel_bench_end_to_end_goes_through_the_library(tiny_weights, monkeypatch):
    from scripts import kernel_bench

    monkeypatch.setattr(kernel_bench, "E2E_WINDOW", W)
    monkeypatch.setattr(kernel_bench, "E2E_TOKENS", 200)
    # strict-ring-graph: reports/gpu-kernels.md's name for the ring-cudagraphs case
    args = Namespace(e2e="ring,int8-ring,strict-ring-graph", profile="ring", min_steps=4, rounds=2, warmup_rounds=1,
                     equiv_tokens=0)
    report = {"copy_bandwidth_Bps": 10e9}
    kernel_bench.end_to_end(torch.device("cpu"), args, report, save=lambda: None)
    e2e = report["e2e"]
    assert set(e2e["results"]) == {"ring", "int8-ring"}
    assert e2e["results"]["int8-ring"]["weights"]["type"] == INT8_TYPE
    assert e2e["results"]["ring"]["profile"]["clock"] == "cpu"
    assert "needs a CUDA device" in e2e["errors"]["ring-cudagraphs"]


# -- GPU only --------------------------------------------------------------------------------
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("mode", ["cudagraphs-maskfree", "cudagraphs-matmul", "cudagraphs-uncompiled",
                                  "cudagraphs-autotune"])
def test_graph_variant_modes_match_eager_ring(mode):
    from streamllm.evaluate import DecodeOptions, evaluate_tokens

    loaded = tiny_neox()
    loaded.model.to("cuda")
    loaded = dataclasses.replace(loaded, device=torch.device("cuda"))
    ids = torch.randint(0, 97, (40,), generator=torch.Generator().manual_seed(3))
    spec = make_strategy("strict", sink=2, window=9, cache="ring")
    options = DecodeOptions(warmup_steps=0, time_steps=False)
    eager = evaluate_tokens(loaded, ids, spec, options=options)
    graph = evaluate_tokens(loaded, ids, spec, options=options, decoder_factory=decoder_factory(mode, "cuda", "ring"))
    assert (torch.tensor(graph.trace.nll) - torch.tensor(eager.trace.nll)).abs().max().item() <= 1e-4


@pytest.mark.gpu
@gpu
def test_cudagraph_trees_overwrite_a_rope_table_kept_on_a_module():
    """The exploration log's crash, second pattern (docs/findings.md#cuda-graphs): a table built
    inside a reduce-overhead graph and kept on a module for the next call."""

    class Rope:
        table = None

    rope = Rope()

    def forward(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        if rope.table is None:
            rope.table = torch.outer(torch.arange(64, device=x.device, dtype=x.dtype), x[0])
        return x * rope.table[pos].cos()

    torch._dynamo.reset()
    step = torch.compile(forward, mode="reduce-overhead")
    x = torch.randn(1, 8, device="cuda")
    with pytest.raises(RuntimeError, match="overwritten"):
        for i in range(4):
            torch.compiler.cudagraph_mark_step_begin()
            step(x, torch.tensor([i], device="cuda"))
    torch._dynamo.reset()


@pytest.mark.gpu
@gpu
def test_cudagraph_trees_overwrite_a_cat_cache_fed_back():
    """Third pattern: a torch.cat cache returned by one replay and read after the next."""
    torch._dynamo.reset()
    step = torch.compile(lambda cache, x: torch.cat((cache[:, 1:], x), dim=1), mode="reduce-overhead")
    cache = torch.randn(1, 8, device="cuda")
    with pytest.raises(RuntimeError, match="overwritten"):
        for _ in range(4):
            torch.compiler.cudagraph_mark_step_begin()
            new = step(cache, torch.randn(1, 1, device="cuda"))
            _ = cache.sum().item()
            cache = new
    torch._dynamo.reset()
