"""Work counting (streamllm.harness.opcount) and its stored form (streamllm.harness.workrecord): exact, deterministic across processes, and a changed op in
a cache's update shows up as exactly that op's name in the diff."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from conftest import tiny_llama
from streamllm.decode import EagerDecoder, make_cache
from streamllm.floor import analytic_step_bytes, floor_ms, kv_bytes_per_slot, mean_attended_slots
from streamllm.harness import opcount
from streamllm.harness.opcount import ReplayCounter, op_name
from streamllm.harness.schema.workrecord import WorkRecordError
from streamllm.harness.work_compare import compare_counts
from streamllm.harness.workrecord import CounterKey, WorkCounts, counter_key
from streamllm.strategies import make_strategy

ROOT = Path(__file__).resolve().parents[1]
IDS = torch.randint(0, 97, (300,), generator=torch.Generator().manual_seed(1))


def count_work(step, steps, *, key=None, **kw) -> WorkCounts:
    """opcount's raw histograms as the stored form (what the bench does with them)."""
    return WorkCounts.from_raw(opcount.count_work(step, steps, **kw), key)


def token_feeder(decoder, ids: torch.Tensor, start: int):
    """`step()` for count_work: feeds ids[start], ids[start + 1], ... through `decoder.step`."""
    flat = ids.view(-1)
    position = iter(range(start, flat.numel()))
    return lambda: decoder.step(flat[next(position)].view(1, 1))



def _steady(loaded, spec):
    """An eager decoder whose cache is full (the next step evicts), and its step callable."""
    cache = make_cache(spec, loaded.model)
    decoder = EagerDecoder(loaded.model, cache)
    step = token_feeder(decoder, IDS, 0)
    with torch.inference_mode():
        for _ in range(spec.capacity):
            step()
    return cache, step


def _count(loaded, spec, steps, patch=None):
    cache, step = _steady(loaded, spec)
    if patch is not None:
        patch(cache)
    key = counter_key(loaded.model, device="cpu", strategy=spec)
    return count_work(step, steps, cycle=spec.compress_every, key=key)


# Run in a fresh interpreter: the counts must not depend on the process (hash seeds, caches,
# import order). Prints the counts' JSON.
_CHILD = """
import json, sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from conftest import tiny_llama
from streamllm.harness.opcount import count_work
from streamllm.harness.workrecord import WorkCounts, counter_key
from streamllm.decode import EagerDecoder, make_cache
from streamllm.strategies import make_strategy
loaded = tiny_llama()
spec = make_strategy("lazy", sink=4, window=16, compress_every=4)
cache = make_cache(spec, loaded.model)
decoder = EagerDecoder(loaded.model, cache)
ids = torch.randint(0, 97, (300,), generator=torch.Generator().manual_seed(1))
position = iter(range(ids.numel()))
step = lambda: decoder.step(ids[next(position)].view(1, 1))
with torch.inference_mode():
    for _ in range(spec.capacity):
        step()
counts = WorkCounts.from_raw(count_work(step, 8, cycle=4), counter_key(loaded.model, device="cpu", strategy=spec))
print("COUNTS=" + json.dumps(counts.to_json()))
"""


@pytest.mark.slow  # ~10-20 s: two child processes, each importing torch and building a model
def test_counts_identical_in_two_processes():
    code = _CHILD.format(tests=str(ROOT / "tests"))
    procs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env={**os.environ, "PYTHONHASHSEED": seed})
        for seed in ("1", "2")
    ]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        line = next(x for x in out.splitlines() if x.startswith("COUNTS="))
        outs.append(WorkCounts.from_json(json.loads(line.removeprefix("COUNTS="))))
    a, b = outs
    assert a.diff(b) == [] and a.to_json() == b.to_json()
    assert a.total_ops > 0 and a.bytes_read > 0 and a.bytes_written > 0
    assert compare_counts(a, b).passed
    # ...and the same as counted in this (pytest) process.
    here = _count(tiny_llama(), make_strategy("lazy", sink=4, window=16, compress_every=4), 8)
    assert here.diff(a) == []


def test_counts_repeat_and_scale_with_steps():
    loaded = tiny_llama()
    spec = make_strategy("strict", sink=4, window=16)
    c2, c4 = _count(loaded, spec, 2), _count(loaded, spec, 4)
    assert c2.steps == 2 and c4.steps == 4
    assert {k: 2 * v for k, v in c2.ops.items()} == c4.ops  # strict: every step is the same step
    assert c4.diff(c2) == []
    assert c4.per_step(c4.total_ops) == Fraction(c4.total_ops, 4)
    # The eviction's own work is there: a streaming cache cats each layer's K and V back together.
    assert c4.per_step(c4.ops["aten.cat"]) >= 2 * loaded.model.config.num_hidden_layers


def test_extra_op_in_cache_update_is_named_per_layer():
    """An extra torch.cat in every layer's update: the histogram diff is exactly +layers aten.cat."""
    loaded = tiny_llama()
    layers = loaded.model.config.num_hidden_layers
    spec = make_strategy("strict", sink=4, window=16)

    def extra_cat(cache):
        for layer in cache.layers:  # instance level: only this cache's layers change
            original = layer.update

            def update(*args, _original=original, **kwargs):
                keys, values = _original(*args, **kwargs)
                torch.cat((keys, keys), dim=-2)  # the injected regression
                return keys, values

            layer.update = update

    base = _count(loaded, spec, 4)
    slow = _count(loaded, spec, 4, patch=extra_cat)
    lines = slow.diff(base)
    op_lines = [line for line in lines if line.endswith("per step") and line.split()[1].startswith("aten.")]
    assert op_lines == [f"+{layers} aten.cat per step"], lines
    assert any(line.startswith("bytes written +") for line in lines)
    assert any(line.startswith("bytes read +") for line in lines)
    verdict = compare_counts(slow, base)
    assert verdict.verdict == "fail" and f"+{layers} aten.cat per step" in verdict.message
    assert base.diff(slow)[0] == f"-{layers} aten.cat per step"


def test_lazy_cycle_fractions_are_exact():
    """Lazy c4 prunes once per 4 steps: its per-step eviction ops are quarter counts, kept exact."""
    loaded = tiny_llama()
    spec = make_strategy("lazy", sink=4, window=16, compress_every=4)
    with pytest.raises(ValueError, match="whole number of eviction cycles"):
        _count(loaded, spec, 6)
    c4, c8 = _count(loaded, spec, 4), _count(loaded, spec, 8)
    assert c8.diff(c4) == []
    strict = _count(loaded, make_strategy("strict", sink=4, window=16), 4)
    lines = c4.diff(strict)
    assert lines and any("over 4 steps" in line for line in lines), lines


@pytest.mark.parametrize("name,kw", [("lazy", {"compress_every": 4}), ("refresh", {"compress_every": 4, "refresh": 2})])
def test_a_whole_cycle_counts_the_same_from_any_phase(name, kw):
    """The bench warms a timed slice up by one step, not a cycle, before counting: that is sound
    only because, once a slice has pruned (its timing did), any whole number of cycles gives the
    same counts whichever step of the cycle it starts at (each prune and cache length once)."""
    loaded = tiny_llama()
    spec = make_strategy(name, sink=4, window=16, **kw)
    cycle = spec.compress_every
    counted = []
    for phase in range(cycle + 1):
        _, step = _steady(loaded, spec)
        with torch.inference_mode():
            for _ in range(cycle):  # as the timed rounds do: every first-call table is built
                step()
        counted.append(count_work(step, 2 * cycle, cycle=cycle, warmup=phase,
                                  key=counter_key(loaded.model, device="cpu", strategy=spec)))
    assert all(c.diff(counted[0]) == [] for c in counted[1:]), [c.diff(counted[0]) for c in counted[1:]]
    assert counted[0].ops.get("aten.cat")  # the prune's work is in every count


def test_dispatch_details():
    """Views move no bytes, in-place ops write their target, syncs are counted on CPU."""
    x = torch.ones(4, 8)  # 128 bytes
    y = torch.ones(4, 8)

    def step():
        x[:, :4]  # view: 0 bytes
        x.add_(1)  # reads x (128), writes x (128)
        torch.cat((x, y))  # reads 256, writes 256
        x.sum().item()  # sum reads 128 writes 4; item syncs, reads 4
        torch.nonzero(y > 0)

    c = count_work(step, 1, warmup=0)
    assert c.ops["aten.slice"] == 1 and c.ops["aten.add_"] == 1 and c.ops["aten.cat"] == 1
    # .item() reaches the mode as aten.item under inference mode, else as _local_scalar_dense.
    assert c.syncs.get("aten.nonzero") == 1 and c.total_syncs == 2
    assert {"aten.item", "aten._local_scalar_dense"} & set(c.syncs)
    gt = 128 + 0  # y > 0 reads y; its scalar operand is not a tensor
    nonzero_read = 32  # the bool mask
    assert c.bytes_read == 128 + 256 + 128 + 4 + gt + nonzero_read
    nonzero_out = 32 * 2 * 8  # 32 hits, 2 dims, int64
    assert c.bytes_written == 128 + 256 + 4 + 32 + nonzero_out
    assert op_name(torch.ops.aten.cat.default) == "aten.cat"


def test_counting_leaves_compiled_functions_compiled():
    """dynamo skips frames met under a dispatch mode and marks them skipped for good; count_work
    runs compiled functions eagerly by stance instead, so their compiled code keeps running."""
    torch._dynamo.reset()
    runs = []

    def backend(gm, example_inputs):
        def compiled(*args):
            runs.append(1)
            return gm.forward(*args)

        return compiled

    f = torch.compile(lambda x: torch.cat((x, x)).sin(), backend=backend)
    x = torch.ones(4)
    f(x)
    assert len(runs) == 1
    c = count_work(lambda: f(x), 2, warmup=0)
    assert c.ops == {"aten.cat": 2, "aten.sin": 2}  # the eager trace
    f(x)
    assert len(runs) == 2  # still compiled after counting


def test_json_round_trip_and_validation():
    loaded = tiny_llama()
    spec = make_strategy("strict", sink=4, window=16)
    c = _count(loaded, spec, 2)
    again = WorkCounts.from_json(json.loads(json.dumps(c.to_json())))
    assert again == c
    bad = c.to_json() | {"ops": {"aten.cat": -1}}
    with pytest.raises(WorkRecordError, match=r"baselines/x.json: ops.aten.cat: .*greater than or equal to 0.*re-record"):
        WorkCounts.from_json(bad, source="baselines/x.json")
    with pytest.raises(WorkRecordError, match="schema"):
        WorkCounts.from_json(c.to_json() | {"schema": "other/9"})
    with pytest.raises(WorkRecordError, match="does not match its fields"):
        WorkCounts.from_json(c.to_json() | {"key": c.key.to_json() | {"id": "wk-0000000000"}})
    with pytest.raises(WorkRecordError, match="steps: .*greater than or equal to 1"):
        WorkCounts.from_json(c.to_json() | {"steps": 0})
    with pytest.raises(WorkRecordError, match="bytes_read: .*integer"):
        WorkCounts.from_json(c.to_json() | {"bytes_read": True})


def test_counter_key_and_compare_not_checked():
    loaded = tiny_llama()
    strict, lazy = make_strategy("strict", sink=4, window=16), make_strategy("lazy", sink=4, window=16, compress_every=4)
    k1 = counter_key(loaded.model, device="cpu", strategy=strict)
    assert k1.id == counter_key(loaded.model, device="cpu", strategy=strict.params()).id
    assert k1.id != counter_key(loaded.model, device="cpu", strategy=lazy).id
    assert k1.id != counter_key(tiny_llama(max_positions=256).model, device="cpu", strategy=strict).id
    assert k1.id == counter_key(tiny_llama(seed=3).model, device="cpu", strategy=strict).id  # weights don't count
    # The GPU name keys kernels only.
    on_h100 = CounterKey(k1.fields | {"gpu": "NVIDIA H100"})
    assert on_h100.id == k1.id and on_h100.kernel_id != k1.kernel_id
    c = _count(loaded, strict, 2)
    assert compare_counts(c, None).verdict == "not checked"
    other = WorkCounts.from_json(c.to_json() | {"key": {"fields": k1.fields | {"torch": "0.0"}}})
    v = compare_counts(c, other)
    assert v.verdict == "not checked" and "torch: 0.0 -> " in v.message


def test_kernel_lines_only_when_both_counted():
    a = WorkCounts(2, {"aten.mm": 4}, 10, 10, {}, kernels=10, memcpys=0, graph_replays=2)
    b = WorkCounts(2, {"aten.mm": 4}, 10, 10, {}, kernels=12, memcpys=0, graph_replays=2)
    cpu = WorkCounts(2, {"aten.mm": 4}, 10, 10, {})
    assert a.diff(b) == ["-1 CUDA kernels per step"]
    assert a.diff(cpu) == [] and cpu.diff(a) == []


def test_replay_counter_is_instance_level():
    class Graph:
        def __init__(self):
            self.calls = 0

        def replay(self):
            self.calls += 1

    graphs = {"a": Graph(), "b": Graph()}
    other = Graph()
    with ReplayCounter(graphs) as counter:
        graphs["a"].replay()
        graphs["b"].replay()
        graphs["a"].replay()
        other.replay()
        graphs["c"] = Graph()
    assert counter.count == 3 and counter.captured == 1
    assert "replay" not in vars(graphs["a"])  # the wrapper is gone
    assert graphs["a"].calls == 2 and other.calls == 1

    calls = iter(range(100))
    counts = count_work(lambda: graphs[("a", "b")[next(calls) % 2]].replay(), 4, warmup=0, graphs=graphs)
    assert counts.graph_replays == 4


def test_analytic_floor():
    loaded = tiny_llama()
    model, cfg = loaded.model, loaded.model.config
    per_slot = kv_bytes_per_slot(model)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    assert per_slot == 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 4
    params = sum(p.numel() * 4 for p in model.parameters())
    emb = model.get_input_embeddings().weight
    tied = emb.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    weights = params if tied else params - emb.numel() * 4 + emb.shape[1] * 4
    assert analytic_step_bytes(model, 21) == weights + 21 * per_slot
    assert floor_ms(3.35e9, 3350) == pytest.approx(1.0)
    assert mean_attended_slots(make_strategy("strict", sink=4, window=16)) == 21
    assert mean_attended_slots(make_strategy("lazy", sink=4, window=16, compress_every=4)) == 20 + 2.5
    assert mean_attended_slots(make_strategy("dense"), context=99) == 100


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_kernels_and_graph_replays():
    """On CUDA: kernels and memcpys counted by the profiler, repeatable; a CUDA-graph decoder's
    replays counted on its graph instances (kernels inside replays are counted too)."""
    from streamllm.decode import CompiledDecoder, GraphDecoder

    model = tiny_llama().model.cuda()
    ids = IDS.cuda()

    def counts(kind: str, graph: bool = True, compiled: bool = False) -> WorkCounts:
        spec = make_strategy("strict", sink=4, window=16, cache=kind)
        cache = make_cache(spec, model)
        if kind != "dynamic" and graph:
            decoder = GraphDecoder(model, cache, compiled=False)
        else:
            decoder = (CompiledDecoder if compiled else EagerDecoder)(model, cache)
        step = token_feeder(decoder, ids, 0)
        with torch.inference_mode():
            for _ in range(spec.capacity + 8):  # the graph decoder warms up, then captures
                step()
        first = count_work(step, 8, device="cuda", graphs=getattr(decoder, "graphs", None),
                           key=counter_key(model, device="cuda", strategy=spec))
        # Counting must leave the decoder as it was (compiled stays compiled): count again.
        again = count_work(step, 8, device="cuda", graphs=getattr(decoder, "graphs", None),
                           key=counter_key(model, device="cuda", strategy=spec))
        assert first.diff(again) == [], (kind, compiled, first.diff(again))
        return first

    eager, eager2 = counts("dynamic"), counts("dynamic")
    assert eager.kernels and eager.kernels > eager.steps and eager.graph_replays is None
    assert eager.diff(eager2) == [] and eager.key.kernel_id != eager.key.id
    graph = counts("ring")
    assert graph.graph_replays == graph.steps and not graph.notes
    assert graph.kernels and graph.total_ops < eager.total_ops  # the forward is inside the graph
    # Compiled (inductor): aten ops are the eager trace's (dynamo is off under the dispatch mode),
    # kernels come from the pass without the mode: fused, fewer than eager.
    ring_eager = counts("ring", graph=False)
    compiled = counts("ring", graph=False, compiled=True)
    assert compiled.ops == ring_eager.ops
    assert compiled.kernels < ring_eager.kernels
