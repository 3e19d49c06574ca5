"""Per-kernel table (bytes, time, GB/s, % of copy bandwidth) and end-to-end TPOT for the Triton kernels (#13, #22).

On the H100, one call from the repository root (reports/gpu-kernels.md has the results and the
command of record):

    PYTHONUNBUFFERED=1 python -m scripts.kernel_bench --out $OUT

For each model of `--models` (dummy configs; default dummy:pythia-2.8b), shapes read off its config:

1. copy bandwidth: a 1 GiB device-to-device copy, bytes read + written (streamllm.calibration.copy_bandwidth_GBps);
2. GEMV on the model's shapes (GPT-NeoX: QKV, dense, MLP up with GELU, down, head; Llama: q, k, v,
   o_proj, gate/up with silu(gate) * up, down, head), fp16, and the fused forms the decode path now
   runs (norm in the prologue, residual adds in the epilogue: QKV / q + LayerNorm / RMSNorm, MLP up
   + LayerNorm + GELU or gate/up + RMSNorm, down (and o_proj) + residuals) beside their cuBLAS +
   torch-op equivalents; split-KV attention over the ring's S + W + 1 slots; and the fused ring
   kernel (the new token's rotary, its cache write and the sinks' re-rotation in the attention
   launch) beside the unfused torch ops + SDPA. Each: the error against a float32 reference, then
   every candidate config (stream-K GEMVs included, in waves of this device's SMs) and the
   reference timed the same way: one CUDA graph calling the kernel on enough distinct weight
   (K/V) copies that they do not fit in L2 (>= 512 MB, as a decode step streams GBs), replayed;
   time per call = replay time / calls (median of 5 blocks of 10 replays). Graph replay is how
   the decode step runs, so launch gaps count as they do there;
3. end to end (--e2e): the model fp16, S=4 W=2048, steady-state TPOT of bench catalog cases through
   streamllm.profile.measure_variant (the suite's measurement): ring + compile + CUDA graph with
   the Triton kernels (ring-cudagraphs-triton: now the fused ring attention and fused layers) vs
   the same with cuBLAS/cuDNN (ring-cudagraphs) vs HF StaticCache + compile (hf-static-compile);
   the Triton one also without eviction (noevict-ring-cudagraphs-triton: S=0, W=2052) and
   profiled; fp16 logits of the Triton ring (CUDA graph of the eager forward) vs strict eager and
   strict fp32 over --equiv-tokens tokens (S=4, W=128), beside the cuBLAS ring's.

`--emit-tuned` prints the best config per shape as a tuned_configs.TUNED entry (GEMV, attention and
ring_attention shapes of every model). With `--sweep attention` the last lines printed are, per
attention row (mask / no mask), the 8 fastest correct configs with their layout (splits, programs =
KV heads x splits, tiles per split), warps, pipeline stages, merge, % of copy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from streamllm.calibration import copy_bandwidth_GBps
from streamllm.compat import rope_parameter
from streamllm.kernels import decode_attention as attn
from streamllm.kernels import gemv as gv
from streamllm.kernels import ops
from streamllm.kernels import ring_attention as ra
from streamllm.profile import profile_lines
from streamllm.rope import apply_rotation

E2E_MODEL, E2E_SINK, E2E_WINDOW, E2E_TOKENS = "dummy:pythia-2.8b", 4, 2048, 4096


@dataclass(frozen=True)
class GemvShape:
    """One GEMV of a decode step: N x K, bias, fused activation / gate, and the fused prologue
    (norm) and epilogue (residual adds) the fused layer path gives it."""

    name: str
    n: int
    k: int
    bias: bool
    act: int = gv.ACT_NONE
    norm: int = gv.NORM_NONE
    residuals: int = 0

    @property
    def gated(self) -> bool:
        return self.act == gv.ACT_SILU_GATED

    @property
    def fused(self) -> bool:
        return self.norm != gv.NORM_NONE or self.residuals > 0

    def nbytes(self, elem: int = 2) -> int:
        matrices = 2 if self.gated else 1
        vectors = self.k + self.n + (self.n if self.bias else 0) + self.residuals * self.n
        vectors += {gv.NORM_NONE: 0, gv.NORM_LAYER: 2 * self.k, gv.NORM_RMS: self.k}[self.norm]
        return (matrices * self.n * self.k + vectors) * elem


@dataclass(frozen=True)
class AttentionShape:
    heads: int
    kv_heads: int
    slots: int
    head_dim: int
    rotary_dim: int
    sinks: int


def model_shapes(config, sink: int = E2E_SINK, window: int = E2E_WINDOW) -> tuple[list[GemvShape], AttentionShape]:
    """The decode step's GEMVs (plain, then the fused forms) and its attention, from an HF config
    (GPT-NeoX or Llama family). The ring holds S + W + 1 slots (the token being fed has one)."""
    h, heads = config.hidden_size, config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    inter, vocab = config.intermediate_size, config.vocab_size
    if config.model_type == "gpt_neox":
        rot = int(head_dim * rope_parameter(config, "partial_rotary_factor", 1.0))
        shapes = [
            GemvShape(f"qkv {h}->{3 * h}", 3 * h, h, True),
            GemvShape(f"dense {h}->{h}", h, h, True),
            GemvShape(f"mlp up {h}->{inter} +gelu", inter, h, True, gv.ACT_GELU),
            GemvShape(f"mlp down {inter}->{h}", h, inter, True),
            GemvShape(f"head {h}->{vocab}", vocab, h, False),
            GemvShape(f"qkv {h}->{3 * h} +layernorm", 3 * h, h, True, norm=gv.NORM_LAYER),
            GemvShape(f"mlp up {h}->{inter} +layernorm +gelu", inter, h, True, gv.ACT_GELU, gv.NORM_LAYER),
            GemvShape(f"mlp down {inter}->{h} +2 residuals", h, inter, True, residuals=2),
        ]
    elif config.model_type == "llama":
        rot = head_dim
        attn_bias = bool(getattr(config, "attention_bias", False))
        mlp_bias = bool(getattr(config, "mlp_bias", False))
        q, kv = heads * head_dim, kv_heads * head_dim
        shapes = [
            GemvShape(f"q {h}->{q}", q, h, attn_bias),
            GemvShape(f"k/v {h}->{kv}", kv, h, attn_bias),
            GemvShape(f"o_proj {q}->{h}", h, q, attn_bias),
            GemvShape(f"mlp gate/up {h}->2x{inter} +silu gate", inter, h, mlp_bias, gv.ACT_SILU_GATED),
            GemvShape(f"mlp down {inter}->{h}", h, inter, mlp_bias),
            GemvShape(f"head {h}->{vocab}", vocab, h, False),
            GemvShape(f"q {h}->{q} +rmsnorm", q, h, attn_bias, norm=gv.NORM_RMS),
            GemvShape(f"o_proj {q}->{h} +residual", h, q, attn_bias, residuals=1),
            GemvShape(f"mlp gate/up {h}->2x{inter} +rmsnorm +silu gate", inter, h, mlp_bias, gv.ACT_SILU_GATED,
                      gv.NORM_RMS),
            GemvShape(f"mlp down {inter}->{h} +residual", h, inter, mlp_bias, residuals=1),
        ]
    else:
        raise ValueError(f"no kernel shapes for model type {config.model_type!r} (GPT-NeoX and Llama only)")
    return shapes, AttentionShape(heads, kv_heads, sink + window + 1, head_dim, rot, sink)


def model_config(name: str):
    """The HF config of a shipped dummy model (no weights built)."""
    from transformers import AutoConfig

    from streamllm.models import CONFIG_DIR, DUMMY_PREFIX

    return AutoConfig.for_model(**json.loads((CONFIG_DIR / f"{name.removeprefix(DUMMY_PREFIX)}.json").read_text()))


L2_SPAN = 512 << 20


def graph_time(calls: list[Callable[[], object]], blocks: int = 5, replays: int = 10) -> float:
    """Seconds per call: `calls` captured once in a CUDA graph, replayed, median over blocks."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for call in calls:  # compile, workspaces, cuBLAS handles: outside the capture
            call()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(blocks):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(replays):
            graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3 / (replays * len(calls)))
    del graph
    return float(np.median(times))


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    if out.isnan().any():
        return float("nan")
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def torch_gemv(x: torch.Tensor, w: torch.Tensor, w2: torch.Tensor | None, b: torch.Tensor | None, act: int,
               norm: gv.Norm | None = None, residuals: tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
    """The same work as cuBLAS + torch ops (what the model runs without the kernels)."""
    if norm is not None:
        x = gv.normalize_reference(x, norm)
    y = F.linear(x, w, b)
    if act == gv.ACT_GELU:
        y = F.gelu(y)
    elif act == gv.ACT_SILU_GATED:
        y = F.silu(y) * F.linear(x, w2)
    for r in residuals:
        y = y + r
    return y


def _rated(row: dict, name: str, nbytes: float, bandwidth: float, other: str, best: object) -> dict:
    """Add GB/s and % of copy bandwidth for the Triton and the reference (cuBLAS / SDPA) times; print the row."""
    for key in ("triton_s", "cublas_s"):
        row[key.replace("_s", "_GBps")] = nbytes / row[key] / 1e9
        row[key.replace("_s", "_pct_copy")] = 100 * nbytes / row[key] / bandwidth
    print(f"{name:26s} {nbytes / 1e6:8.1f} MB  triton {row['triton_s'] * 1e6:7.1f} us "
          f"{row['triton_GBps']:6.0f} GB/s {row['triton_pct_copy']:5.1f}%   {other:6s} {row['cublas_s'] * 1e6:7.1f} us "
          f"{row['cublas_GBps']:6.0f} GB/s {row['cublas_pct_copy']:5.1f}%  err {row['rel_err']:.1e}  best {best}",
          flush=True)
    return row


def sweep_configs(row: dict, candidates: list, out: torch.Tensor, ref: torch.Tensor,
                  launch_one: Callable[[object], object], launches: Callable[[object], list]) -> tuple[dict, str, object]:
    """Check each candidate config once against `ref`, graph-time it over the weight copies; the
    correct ones (rel err < 5e-3) as {repr: result}, the fastest's repr and the config itself."""
    for cfg in candidates:
        try:
            out.fill_(float("nan"))  # an element the kernel leaves unwritten stays NaN and fails the check
            launch_one(cfg)
            err = rel_err(out, ref)
            row["configs"][repr(cfg)] = {"s": graph_time(launches(cfg)), "rel_err": err}
        except Exception as exc:  # noqa: BLE001 - a config that does not compile is a row, not a crash
            row["configs"][repr(cfg)] = {"error": repr(exc)[:300]}
    timed = {c: r for c, r in row["configs"].items() if "s" in r and r["rel_err"] < 5e-3}
    best = min(timed, key=lambda c: timed[c]["s"])
    return timed, best, next(c for c in candidates if repr(c) == best)


def bench_gemv(device: torch.device, bandwidth: float, tune_all: bool, shapes: list[GemvShape],
               model: str) -> list[dict]:
    rows = []
    g = torch.Generator(device=device).manual_seed(0)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    for shape in shapes:
        n, k, act = shape.n, shape.k, shape.act
        nbytes = shape.nbytes()
        copies = max(2, math.ceil(L2_SPAN / (n * k * 2 * (2 if shape.gated else 1))))
        ws = [torch.randn(n, k, generator=g, device=device).mul_(0.02).half() for _ in range(copies)]
        w2s = [torch.randn(n, k, generator=g, device=device).mul_(0.02).half() for _ in range(copies)] \
            if shape.gated else [None] * copies
        b = torch.randn(n, generator=g, device=device).half() if shape.bias else None
        # The layer input h is far from normalized, as in a real residual stream.
        x = (torch.randn(k, generator=g, device=device) * (3.0 if shape.norm else 1.0)).half()
        norm = None
        if shape.norm:
            nw = (1.0 + 0.1 * torch.randn(k, generator=g, device=device)).half()
            nb = (0.1 * torch.randn(k, generator=g, device=device)).half() if shape.norm == gv.NORM_LAYER else None
            norm = gv.Norm(shape.norm, nw, nb, 1e-5)
        res = tuple(torch.randn(n, generator=g, device=device).half() for _ in range(shape.residuals))
        out = torch.full((n,), float("nan"), dtype=torch.float16, device=device)
        # correctness: the op as the model calls it (tuned config), then every candidate
        fused_args = {} if norm is None else {"norm_weight": norm.weight, "norm_bias": norm.bias,
                                              "norm": norm.kind, "eps": norm.eps}
        fused_args.update(zip(("residual", "residual2"), res, strict=False))
        y = torch.ops.streamllm.gemv(x.view(1, 1, k), ws[0], b, act, w2s[0], **fused_args).view(-1)
        ref = gv.gemv_reference(x.float(), ws[0].float(), None if b is None else b.float(), act,
                                None if w2s[0] is None else w2s[0].float(),
                                None if norm is None else gv.Norm(norm.kind, norm.weight.float(),
                                                                  None if norm.bias is None else norm.bias.float(),
                                                                  norm.eps),
                                tuple(r.float() for r in res))
        chosen = ops.gemv_config(x, ws[0], b, act, w2s[0])
        row = {"model": model, "kernel": shape.name, "N": n, "K": k, "bytes": nbytes, "copies": copies,
               "fused": shape.fused, "rel_err": rel_err(y, ref), "tuner_choice": repr(chosen), "configs": {}}
        # A fused form runs, in the decode step, the config pinned for its weight shape by the plain
        # row before it (the tuner's key): time that one.
        candidates = gv.candidate_configs(n, k, shape.gated, sms=sms) if tune_all and not shape.fused else [chosen]

        def launch(cfg, w, w2, out=out, x=x, b=b, act=act, norm=norm, res=res):
            return gv.launch_gemv(x, w, b, out, cfg, act, w2, norm=norm, residuals=res)

        timed, best, best_cfg = sweep_configs(
            row, candidates, out, ref, lambda cfg, launch=launch, w=ws[0], w2=w2s[0]: launch(cfg, w, w2),
            lambda cfg, launch=launch, ws=tuple(ws), w2s=tuple(w2s): [partial(launch, cfg, w, w2)
                                                                      for w, w2 in zip(ws, w2s, strict=True)])
        if not shape.fused:
            # The end-to-end rows use the config that was fastest inside a graph. A fused row times
            # the same weight shape with its prologue / epilogue: reported, not pinned (the tuner's
            # key is the weight shape).
            key = ops.gemv_key(ws[0], gated=shape.gated)
            ops.pin("gemv", key, best_cfg)
            row["tuned_key"] = ops.tuned_name("gemv", key)
        row["best_config"] = best
        row["best"] = dataclasses.asdict(best_cfg)
        row["triton_s"] = timed[best]["s"]
        row["triton_tuner_s"] = row["configs"].get(repr(chosen), {}).get("s")
        stream_k = {c: r["s"] for c, r in timed.items() if "programs=0" not in c}
        if stream_k:
            row["best_stream_k"] = min(stream_k, key=stream_k.get)
            row["best_stream_k_s"] = stream_k[row["best_stream_k"]]
        row["cublas_s"] = graph_time([partial(torch_gemv, x, w, w2, b, act, norm, res)
                                      for w, w2 in zip(ws, w2s, strict=True)])
        rows.append(_rated(row, shape.name, nbytes, bandwidth, "cuBLAS", best))
        del ws, w2s
    return rows


def bench_attention(device: torch.device, bandwidth: float, tune_all: bool, shape: AttentionShape,
                    model: str) -> list[dict]:
    heads, kv_heads, slots, head_dim = shape.heads, shape.kv_heads, shape.slots, shape.head_dim
    group = heads // kv_heads
    g = torch.Generator(device=device).manual_seed(1)
    kv_bytes = 2 * kv_heads * slots * head_dim * 2
    copies = max(2, math.ceil(L2_SPAN / kv_bytes))
    ks = [torch.randn(1, kv_heads, slots, head_dim, generator=g, device=device).half() for _ in range(copies)]
    vs = [torch.randn(1, kv_heads, slots, head_dim, generator=g, device=device).half() for _ in range(copies)]
    q = torch.randn(1, heads, 1, head_dim, generator=g, device=device).half()
    scale = head_dim ** -0.5
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    rows = []
    for masked in (True, False):
        # The full ring's mask: every slot live (zeros), as FixedCache keeps it once full.
        mask = torch.zeros(1, 1, 1, slots, dtype=torch.float16, device=device) if masked else None
        nbytes = kv_bytes + 2 * heads * head_dim * 2 + (slots * 2 if masked else 0)
        out = torch.empty(1, 1, heads, head_dim, dtype=torch.float16, device=device)
        ref = attn.attention_reference(q.float(), ks[0].float(), vs[0].float(), mask, scale)
        y = torch.ops.streamllm.decode_attention(q, ks[0], vs[0], mask, scale)
        chosen = ops.attention_config(q, ks[0], vs[0], mask, scale)
        name = f"attention {slots}x{kv_heads}x{head_dim}{f' gqa{group}' if group > 1 else ''}{' +mask' if masked else ''}"
        row = {"model": model, "kernel": name, "bytes": nbytes, "copies": copies, "rel_err": rel_err(y, ref),
               "tuner_choice": repr(chosen), "configs": {}}
        candidates = [chosen]
        if tune_all:
            # The tuner's own list for this device (split counts from its SM count), plus the tuner's
            # pick and the untuned default (the pre-sweep kernel's shape) as reference rows.
            candidates = attn.candidate_configs(slots, group, kv_heads=kv_heads, head_dim=head_dim,
                                                sms=sms, elem_bytes=2)
            candidates += [c for c in (chosen, attn.default_config(slots, group)) if c not in candidates]
        timed, best, best_cfg = sweep_configs(
            row, candidates, out, ref,
            lambda cfg, mask=mask, out=out: attn.launch_decode_attention(q, ks[0], vs[0], mask, scale, out, cfg),
            lambda cfg, mask=mask, out=out: [partial(attn.launch_decode_attention, q, ks[i], vs[i], mask, scale,
                                                     out, cfg) for i in range(copies)])
        key = ops.attention_key(q, ks[0], mask)
        ops.pin("attention", key, best_cfg)  # the end-to-end rows use the graph-timed best, per mask state
        row["tuned_key"] = ops.tuned_name("attention", key)
        row.update(best_config=best, best=dataclasses.asdict(best_cfg), triton_s=timed[best]["s"])
        row["triton_tuner_s"] = row["configs"].get(repr(chosen), {}).get("s")
        row["sweep"] = attention_sweep_rows(row, candidates, kv_heads, slots, nbytes, bandwidth)
        row["cublas_s"] = graph_time([partial(F.scaled_dot_product_attention, q, ks[i], vs[i], attn_mask=mask,
                                              scale=scale, enable_gqa=group > 1) for i in range(copies)])
        rows.append(_rated(row, name, nbytes, bandwidth, "SDPA", best))
    return rows


def torch_ring_step(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                    k_cache: torch.Tensor, v_cache: torch.Tensor, slot: torch.Tensor, key_slots: torch.Tensor,
                    sink: ra.SinkRotation, mask: torch.Tensor | None, scale: float, group: int) -> torch.Tensor:
    """The unfused ring step of one layer as eager torch ops (transformers' rotary, the ring's one
    scatter of re-rotated sinks + new key, the value write) and SDPA: what the fused kernel replaces
    (inductor fuses the small ops into ~5 kernels in the compiled step; here they run one by one)."""
    q = ra.rotate_half_rope(q, cos, sin)
    k_new = ra.rotate_half_rope(k_new, cos, sin)
    rotated = apply_rotation(sink.store[:, :, : sink.count], sink.cos, sink.sin, sink.cos.shape[-1])
    k_cache.index_copy_(2, key_slots, torch.cat((rotated, k_new), dim=2))
    v_cache.index_copy_(2, slot, v_new)
    return F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask, scale=scale, enable_gqa=group > 1)


def bench_ring_attention(device: torch.device, bandwidth: float, tune_all: bool, shape: AttentionShape,
                         model: str) -> list[dict]:
    """The fused ring kernel (rotary of q and the new key, the slot write, the sinks' re-rotation,
    attention) vs the same step unfused (torch ops + SDPA), per mask state."""
    heads, kv_heads, slots, head_dim, rot = shape.heads, shape.kv_heads, shape.slots, shape.head_dim, shape.rotary_dim
    group = heads // kv_heads
    g = torch.Generator(device=device).manual_seed(2)
    kv_bytes = 2 * kv_heads * slots * head_dim * 2
    copies = max(2, math.ceil(L2_SPAN / kv_bytes))
    ks = [torch.randn(1, kv_heads, slots, head_dim, generator=g, device=device).half() for _ in range(copies)]
    vs = [torch.randn(1, kv_heads, slots, head_dim, generator=g, device=device).half() for _ in range(copies)]
    q = torch.randn(1, heads, 1, head_dim, generator=g, device=device).half()
    k_new = torch.randn(1, kv_heads, 1, head_dim, generator=g, device=device).half()
    v_new = torch.randn(1, kv_heads, 1, head_dim, generator=g, device=device).half()
    angles = 3000.0 * torch.rand(rot // 2, generator=g, device=device)
    cos = torch.cat((angles, angles)).cos().half().view(1, 1, rot)
    sin = torch.cat((angles, angles)).sin().half().view(1, 1, rot)
    sink_angles = 1000.0 * torch.rand(rot // 2, generator=g, device=device)
    sink = ra.SinkRotation(torch.randn(1, kv_heads, shape.sinks + 1, head_dim, generator=g, device=device).half(),
                           torch.cat((sink_angles, sink_angles)).cos(), torch.cat((sink_angles, sink_angles)).sin(),
                           shape.sinks)
    slot = torch.tensor([slots // 2], device=device)
    key_slots = torch.cat((torch.arange(shape.sinks, device=device), slot))
    scale = head_dim ** -0.5
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    rows = []
    for masked in (True, False):
        mask = torch.zeros(1, 1, 1, slots, dtype=torch.float16, device=device) if masked else None
        # K/V read once, the new row and the sinks written, the sink store read.
        nbytes = kv_bytes + (2 * heads + 2 * kv_heads * (2 + 2 * shape.sinks)) * head_dim * 2 + (slots * 2 if masked
                                                                                                 else 0)
        out = torch.empty(1, 1, heads, head_dim, dtype=torch.float16, device=device)
        ref32 = ra.ring_attention_reference(q.float(), k_new.float(), v_new.float(), cos.float(), sin.float(),
                                            ks[0].float(), vs[0].float(), slot, sink, mask, scale)
        y = torch.ops.streamllm.ring_attention(q, k_new, v_new, cos, sin, ks[0], vs[0], slot, sink.store, sink.cos,
                                               sink.sin, sink.count, mask, scale)
        key = ops.attention_key(q, ks[0], mask)
        chosen = ops._CHOSEN.get(("ring_attention", *key), attn.default_config(slots, group))
        name = (f"ring attention +rotary +write +{shape.sinks} sinks {slots}x{kv_heads}x{head_dim}"
                f"{f' gqa{group}' if group > 1 else ''}{' +mask' if masked else ''}")
        row = {"model": model, "kernel": name, "bytes": nbytes, "copies": copies, "rel_err": rel_err(y, ref32),
               "tuner_choice": repr(chosen), "configs": {}, "reference": "unfused torch ops + SDPA"}
        candidates = [chosen]
        if tune_all:
            candidates = attn.candidate_configs(slots, group, kv_heads=kv_heads, head_dim=head_dim, sms=sms,
                                                elem_bytes=2)
            candidates += [c for c in (chosen,) if c not in candidates]

        def launch(cfg, i, mask=mask, out=out):
            return ra.launch_ring_attention(q, k_new, v_new, cos, sin, ks[i], vs[i], slot, sink, mask, scale, out,
                                            cfg)

        timed, best, best_cfg = sweep_configs(row, candidates, out, ref32, lambda cfg, launch=launch: launch(cfg, 0),
                                              lambda cfg, launch=launch: [partial(launch, cfg, i)
                                                                          for i in range(copies)])
        ops.pin("ring_attention", key, best_cfg)
        row["tuned_key"] = ops.tuned_name("ring_attention", key)
        row.update(best_config=best, best=dataclasses.asdict(best_cfg), triton_s=timed[best]["s"])
        row["sweep"] = attention_sweep_rows(row, candidates, kv_heads, slots, nbytes, bandwidth)
        row["cublas_s"] = graph_time([partial(torch_ring_step, q, k_new, v_new, cos, sin, ks[i], vs[i], slot,
                                              key_slots, sink, mask, scale, group) for i in range(copies)])
        rows.append(_rated(row, name, nbytes, bandwidth, "unfused", best))
    return rows


RAMP_MULTIPLES = (1, 2, 4, 8)


def attention_ramp(device: torch.device, bandwidth: float, shape: AttentionShape, model: str) -> dict:
    """Is attention short of copy bandwidth because 21 MB a layer is too little to hide a kernel's
    fixed cost (launch, ramp-up, tail, merge)? Plain and fused ring attention, mask-free, each
    with the config picked for the ring's slot count, timed at 1, 2, 4 and 8 times the window;
    a least-squares line time = fixed + bytes / rate says how much of each call is fixed and
    what rate the stream itself reaches."""
    g = torch.Generator(device=device).manual_seed(3)
    heads, kv_heads, head_dim, rot = shape.heads, shape.kv_heads, shape.head_dim, shape.rotary_dim
    window = shape.slots - shape.sinks - 1
    q = torch.randn(1, heads, 1, head_dim, generator=g, device=device).half()
    k_new = torch.randn(1, kv_heads, 1, head_dim, generator=g, device=device).half()
    v_new = torch.randn(1, kv_heads, 1, head_dim, generator=g, device=device).half()
    cos = torch.ones(1, 1, rot, dtype=torch.float16, device=device)
    sin = torch.zeros(1, 1, rot, dtype=torch.float16, device=device)
    sink = ra.SinkRotation(torch.randn(1, kv_heads, shape.sinks + 1, head_dim, generator=g, device=device).half(),
                           torch.ones(rot, device=device), torch.zeros(rot, device=device), shape.sinks)
    scale = head_dim ** -0.5
    probe = torch.empty(1, kv_heads, shape.slots, head_dim, dtype=torch.float16, device="meta")
    configs = {"attention": ops._CHOSEN.get(("attention", *ops.attention_key(q, probe, None))),
               "ring_attention": ops._CHOSEN.get(("ring_attention", *ops.attention_key(q, probe, None)))}
    out = torch.empty(1, 1, heads, head_dim, dtype=torch.float16, device=device)
    result = {"model": model, "configs": {k: repr(v) for k, v in configs.items()}, "points": []}
    for multiple in RAMP_MULTIPLES:
        slots = shape.sinks + multiple * window + 1
        kv_bytes = 2 * kv_heads * slots * head_dim * 2
        copies = max(2, math.ceil(L2_SPAN / kv_bytes))
        ks = [torch.randn(1, kv_heads, slots, head_dim, generator=g, device=device).half() for _ in range(copies)]
        vs = [torch.randn(1, kv_heads, slots, head_dim, generator=g, device=device).half() for _ in range(copies)]
        slot = torch.tensor([slots // 2], device=device)
        point = {"slots": slots, "bytes": kv_bytes}
        for kind, cfg in configs.items():
            cfg = cfg or attn.default_config(slots, heads // kv_heads)
            if kind == "attention":
                calls = [partial(attn.launch_decode_attention, q, ks[i], vs[i], None, scale, out, cfg)
                         for i in range(copies)]
            else:
                calls = [partial(ra.launch_ring_attention, q, k_new, v_new, cos, sin, ks[i], vs[i], slot, sink, None,
                                 scale, out, cfg) for i in range(copies)]
            point[f"{kind}_s"] = graph_time(calls)
        result["points"].append(point)
        del ks, vs
    for kind in configs:
        x = np.array([p["bytes"] for p in result["points"]], dtype=float)
        y = np.array([p[f"{kind}_s"] for p in result["points"]], dtype=float)
        slope, fixed = np.polyfit(x, y, 1)
        result[kind] = {"fixed_us": fixed * 1e6, "stream_GBps": 1 / slope / 1e9 if slope > 0 else float("inf"),
                        "stream_pct_copy": 100 / slope / bandwidth if slope > 0 else float("inf")}
        line = "  ".join(f"{p['slots']} slots {p[f'{kind}_s'] * 1e6:.1f} us "
                         f"({100 * p['bytes'] / p[f'{kind}_s'] / bandwidth:.0f} %)" for p in result["points"])
        print(f"ramp {model} {kind}: fixed {result[kind]['fixed_us']:.1f} us, stream "
              f"{result[kind]['stream_pct_copy']:.0f} % of copy; {line}", flush=True)
    return result


def attention_sweep_rows(row: dict, candidates: list, kv_heads: int, slots: int, nbytes: float,
                         bandwidth: float) -> list[dict]:
    """Every correct timed attention config, fastest first, with its layout and % of copy bandwidth."""
    rows = []
    for cfg in candidates:
        r = row["configs"].get(repr(cfg), {})
        if "s" not in r or not r["rel_err"] < 5e-3:
            continue
        tiles, splits = cfg.layout(slots)
        rows.append({"config": dataclasses.asdict(cfg), "s": r["s"], "rel_err": r["rel_err"], "splits": splits,
                     "programs": kv_heads * splits, "tiles_per_split": cfg.max_tiles_per_split(slots),
                     "GBps": nbytes / r["s"] / 1e9, "pct_copy": 100 * nbytes / r["s"] / bandwidth})
    rows.sort(key=lambda r: r["s"])
    return rows


def print_attention_sweep(report: dict, top: int = 8) -> None:
    """The fastest attention configs per attention row (printed last: the tail of the output)."""
    for r in report.get("kernels", []):
        sweep = r.get("sweep")
        if not sweep:
            continue
        bad = [c for c, v in r["configs"].items() if "s" not in v or not v["rel_err"] < 5e-3]
        print(f"\n{r['kernel']}: top {min(top, len(sweep))} of {len(sweep)} correct configs "
              f"({len(bad)} failed or wrong), {r['bytes'] / 1e6:.1f} MB, {r.get('cublas_s', 0) * 1e6:.1f} us "
              f"{r.get('reference', 'SDPA')}")
        print(f"{'us':>6s} {'%copy':>6s} {'GB/s':>6s} {'block_s':>7s} {'splits':>6s} {'progs':>5s} {'tiles':>5s} "
              f"{'warps':>5s} {'stages':>6s} {'merge':>6s} {'rel err':>8s}")
        for x in sweep[:top]:
            c = x["config"]
            print(f"{x['s'] * 1e6:6.2f} {x['pct_copy']:6.1f} {x['GBps']:6.0f} {c['block_s']:7d} "
                  f"{x['splits']:6d} {x['programs']:5d} {x['tiles_per_split']:5d} {c['num_warps']:5d} "
                  f"{str(c['num_stages']):>6s} {c['merge']:>6s} {x['rel_err']:8.1e}")


# -- end to end -------------------------------------------------------------------------------------
# The names reports/gpu-kernels.md's commands use -> the bench catalog cases they now are.
E2E_ALIASES = {"strict-ring-triton": "ring-cudagraphs-triton", "strict-ring-graph": "ring-cudagraphs",
               "noevict-ring-triton": "noevict-ring-cudagraphs-triton", "noevict-ring-graph": "noevict-ring-cudagraphs"}


def end_to_end(device: torch.device, args, report: dict, save: Callable[[], None], model: str = E2E_MODEL,
               key: str = "e2e") -> None:
    """Steady-state TPOT of catalog cases (and the HF reference) through streamllm.profile, as the
    suite times them, for `model`; results in report[key]."""
    from bench.catalog import build_catalog, compile_mode
    from streamllm.data import synthetic_ids
    from streamllm.profile import WeightSets, measure_hf_static, measure_variant

    weights = WeightSets(model, "float16", device)
    loaded = weights.get(None)
    ids = synthetic_ids(loaded.model.config.vocab_size, E2E_TOKENS)
    cases = {case.id: case for case in build_catalog(E2E_SINK, E2E_WINDOW)}
    bandwidth = report["copy_bandwidth_Bps"] / 1e9
    timing = {"min_steps": args.min_steps, "rounds": args.rounds, "warmup_rounds": args.warmup_rounds,
              "bandwidth_GBps": bandwidth}
    profiled = {E2E_ALIASES.get(v, v) for v in args.profile.split(",")}
    e2e = report[key] = {"model": model, "sink": E2E_SINK, "window": E2E_WINDOW, "results": {}, "errors": {}}

    if args.equiv_tokens:
        try:
            e2e["equivalence"] = equivalence(loaded.model, device, args.equiv_tokens)
        except Exception:
            e2e["errors"]["equivalence"] = traceback.format_exc()
            print(e2e["errors"]["equivalence"], flush=True)
        save()

    def measure(name: str):
        profile_rounds = 1 if name in profiled else 0
        if name == "hf-static-compile":
            return measure_hf_static(loaded, ids, E2E_SINK + E2E_WINDOW, profile_rounds=profile_rounds, **timing)
        case = cases[name]
        return measure_variant(weights.get(case.transform), ids, case.spec, compile_mode(case), name=name,
                               label=case.label, profile_rounds=profile_rounds, **timing)

    for name in [E2E_ALIASES.get(v, v) for v in args.e2e.split(",") if v]:
        t0 = time.perf_counter()
        try:
            row = measure(name)
            e2e["results"][name] = row.to_json()
            print(f"{model} {name:32s} {row.tpot_ms:8.3f} ms/token (median {row.tpot_ms_median:.3f}, warm-up "
                  f"{row.warmup_ms / 1e3:.1f}s, {time.perf_counter() - t0:.0f}s)", flush=True)
        except Exception:
            e2e["errors"][name] = traceback.format_exc()
            print(f"{model} {name} FAILED\n{e2e['errors'][name][-3000:]}", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        save()


def equivalence(model: torch.nn.Module, device: torch.device, tokens: int) -> dict:
    """fp16 logits: ring through a CUDA graph (eager forward) with the kernels vs strict eager."""
    from streamllm.decode import EagerDecoder, GraphDecoder, make_cache
    from streamllm.kernels.integration import TritonGraphDecoder
    from streamllm.strategies import make_strategy

    ids = torch.randint(0, model.config.vocab_size, (tokens,), generator=torch.Generator().manual_seed(7)).to(device)
    strict = make_strategy("strict", sink=4, window=128)
    ring = dataclasses.replace(strict, cache="ring")

    def logits_of(spec, factory) -> torch.Tensor:
        cache = make_cache(spec, model)
        decoder = factory(model, cache)
        out = []
        with torch.inference_mode():
            for t in range(tokens - 1):
                logits, _ = decoder.step(ids[t : t + 1].view(1, 1))
                out.append(logits.float())
        return torch.stack(out)

    ref = logits_of(strict, EagerDecoder)
    ring_cublas = logits_of(ring, lambda m, c: GraphDecoder(m, c, compiled=False))
    ring_triton = logits_of(ring, lambda m, c: TritonGraphDecoder(m, c, compiled=False))
    ring_triton_unfused = logits_of(ring, lambda m, c: TritonGraphDecoder(m, c, compiled=False, fuse_ring=False,
                                                                          fuse_norm=False))
    model.float()
    try:
        ref32 = logits_of(strict, EagerDecoder)
    finally:
        model.half()
    target = ids[1:].long()

    def compare(a: torch.Tensor, b: torch.Tensor) -> dict:
        nll_a = -torch.log_softmax(a, -1).gather(-1, target[:, None]).squeeze(-1)
        nll_b = -torch.log_softmax(b, -1).gather(-1, target[:, None]).squeeze(-1)
        return {"max_abs_logit_diff": float((a - b).abs().max()), "rel_l2": float((a - b).norm() / b.norm()),
                "argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
                "max_abs_nll_diff": float((nll_a - nll_b).abs().max()),
                "mean_abs_nll_diff": float((nll_a - nll_b).abs().mean())}

    # The first eviction comes with token S + W (0-based): the logits after it are what the
    # issue's ">= 150 tokens past the first eviction" counts.
    result = {"sink": 4, "window": 128, "tokens": tokens, "steps_past_first_eviction": tokens - 1 - (4 + 128),
              "ring_triton_vs_strict_fp16": compare(ring_triton, ref),
              "ring_triton_vs_strict_fp32": compare(ring_triton, ref32),
              "ring_triton_unfused_vs_strict_fp32": compare(ring_triton_unfused, ref32),
              "ring_cublas_vs_strict_fp32": compare(ring_cublas, ref32),
              "strict_fp16_vs_strict_fp32": compare(ref, ref32)}
    fused, cublas = result["ring_triton_vs_strict_fp32"], result["ring_cublas_vs_strict_fp32"]
    # The CPU test's criterion (tests/test_kernels.py::test_fused_ring_logits_within_the_plain_rings_distance).
    result["fused_within_1.5x_cublas_distance"] = (
        fused["max_abs_logit_diff"] <= 1.5 * cublas["max_abs_logit_diff"] and fused["rel_l2"] <= 1.5 * cublas["rel_l2"])
    print(f"  {result['steps_past_first_eviction']} steps past the first eviction; fused Triton ring within 1.5x "
          f"of the cuBLAS ring's distance to strict fp32: {result['fused_within_1.5x_cublas_distance']}", flush=True)
    for key, r in result.items():
        if isinstance(r, dict):
            print(f"  {key:30s} max|dlogit| {r['max_abs_logit_diff']:.3g} rel {r['rel_l2']:.2g} "
                  f"argmax {r['argmax_agreement']:.4f} max|dNLL| {r['max_abs_nll_diff']:.3g}", flush=True)
    return result


def print_tables(report: dict) -> None:
    bw = report["copy_bandwidth_Bps"]
    print(f"\n{report['device']}  torch {report['torch']}  triton {report['triton']}  copy {bw / 1e12:.3f} TB/s")
    print(f"{'model':20s} {'kernel':58s} {'MB':>7s} {'triton us':>9s} {'GB/s':>6s} {'%copy':>6s} {'ref us':>8s} "
          f"{'GB/s':>6s} {'%copy':>6s} {'rel err':>8s}  best stream-K us")
    for r in report["kernels"]:
        stream_k = f"{r['best_stream_k_s'] * 1e6:.1f}" if "best_stream_k_s" in r else "-"
        print(f"{r.get('model', ''):20s} {r['kernel']:58s} {r['bytes'] / 1e6:7.1f} {r['triton_s'] * 1e6:9.1f} "
              f"{r['triton_GBps']:6.0f} {r['triton_pct_copy']:6.1f} {r['cublas_s'] * 1e6:8.1f} {r['cublas_GBps']:6.0f} "
              f"{r['cublas_pct_copy']:6.1f} {r['rel_err']:8.1e}  {stream_k}")
    for key in [k for k in report if k.startswith("e2e")]:
        print_e2e(report[key])


def print_e2e(e2e: dict) -> None:
    print(f"\nend to end: {e2e['model']} fp16, S={e2e['sink']} W={e2e['window']}")
    for name, r in e2e["results"].items():
        print(f"{name:32s} {r['tpot_ms']:8.3f} median {r['tpot_ms_median']:.3f} p90 {r['tpot_ms_p90']:.3f} "
              f"warm-up {r['warmup_ms'] / 1e3:.0f}s  floor {r['floor_ms']:.3f} ({r['step_bytes'] / 1e9:.2f} GB)"
              f"  /floor {r['tpot_ms'] / r['floor_ms']:.2f}")
    for name, r in e2e["results"].items():
        if r.get("profile"):
            print("\n".join(profile_lines(name, r["profile"], top=16)))
    for name, err in e2e["errors"].items():
        print(f"{name} FAILED: {err.strip().splitlines()[-1][:200]}")


def emit_tuned(report: dict) -> dict:
    """Best config per shape, as tuned_configs.TUNED[device] entries (rows of fused GEMV forms have
    no key of their own: the tuner keys a GEMV by its weight shape)."""
    return {report["device"]: {r["tuned_key"]: r["best"] for r in report["kernels"] if "tuned_key" in r}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--models", default=E2E_MODEL,
                    help="comma list of dummy models (shapes from their configs; kernels and --e2e for each)")
    ap.add_argument("--sweep", default="gemv,attention,ring",
                    help="kernels whose every candidate config is timed ('' : only the tuner's choice)")
    ap.add_argument("--e2e", default="ring-cudagraphs-triton,ring-cudagraphs,hf-static-compile,"
                    "noevict-ring-cudagraphs-triton",
                    help="comma list of bench catalog case ids and/or hf-static-compile ('' for none)")
    ap.add_argument("--profile", default="ring-cudagraphs-triton")
    ap.add_argument("--min-steps", type=int, default=32, help="steps per round (whole eviction cycles)")
    ap.add_argument("--rounds", type=int, default=4, help="timed rounds")
    ap.add_argument("--warmup-rounds", type=int, default=1)
    ap.add_argument("--equiv-tokens", type=int, default=300,
                    help="tokens of the logits check (S=4 W=128: the first eviction at 132; >= 283 for 150 past it)")
    ap.add_argument("--emit-tuned", action="store_true")
    args = ap.parse_args(argv)
    device = torch.device("cuda")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    import triton

    report = {"schema": "streamllm.kernel-bench/3", "command": " ".join(["python -m scripts.kernel_bench",
                                                                        *(argv if argv is not None else sys.argv[1:])]),
              "device": torch.cuda.get_device_name(device), "torch": torch.__version__, "triton": triton.__version__}
    started = time.perf_counter()

    def save() -> None:
        report["elapsed_s"] = time.perf_counter() - started
        report["tuning_log"] = ops.TUNING_LOG
        (out_dir / "kernel_bench.json").write_text(json.dumps(report, indent=1, default=str))

    report["copy_bandwidth_Bps"] = bw = copy_bandwidth_GBps(device, nbytes=1 << 30) * 1e9  # 1 GiB: launch cost < 1 %
    print(f"copy bandwidth {bw / 1e12:.3f} TB/s (read + write)", flush=True)
    models = [m for m in args.models.split(",") if m]
    report["models"] = models
    report["kernels"] = []
    # One model at a time, kernels then end to end: a call cut short keeps whole models.
    for i, model in enumerate(models):
        gemvs, attention = model_shapes(model_config(model))
        report["kernels"] += bench_gemv(device, bw, "gemv" in args.sweep, gemvs, model)
        save()
        report["kernels"] += bench_attention(device, bw, "attention" in args.sweep, attention, model)
        save()
        if attention.sinks:
            report["kernels"] += bench_ring_attention(device, bw, "ring" in args.sweep, attention, model)
            save()
            report.setdefault("ramp", []).append(attention_ramp(device, bw, attention, model))
            save()
        if args.emit_tuned:
            report["tuned"] = emit_tuned(report)
            print("TUNED =", json.dumps(report["tuned"]), flush=True)
        if args.e2e:
            end_to_end(device, args, report, save, model, "e2e" if i == 0 else f"e2e:{model}")
    save()
    print_tables(report)
    print_attention_sweep(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
