"""The kernels as torch custom ops (opaque to dynamo/inductor), with a per-shape config tuner.

`torch.ops.streamllm.gemv` and `torch.ops.streamllm.decode_attention` are what the patched model
calls. As custom ops they trace under torch.compile(fullgraph=True) as one node each (a fake
implementation gives the output shape), inductor fuses the elementwise work around them, and the
compiled step captured in a CUDA graph replays the Triton launches like any other kernel.

Config choice (`choose`): on CUDA, the first call of a shape times every candidate with
`triton.testing.do_bench` (L2 flushed before each call, so a matrix that fits in the H100's 50 MB
L2 is timed cold, as in decode where the other layers' weights evict it) and keeps the fastest for
the process; `TUNED` (tuned_configs.py, measured per device name) is consulted first so a process need
not re-time. Inside a CUDA-graph capture nothing is timed: an untuned shape gets the default config;
STREAMLLM_KERNEL_TUNING=0 turns timing off altogether (tests: correctness needs no tuning).
Under Triton's CPU interpreter the default config is used (interpreting is for correctness only;
for the GEMV the interpreter's own default, the fewest programs).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
import triton

from . import decode_attention as attn
from . import gemv as gv
from . import ring_attention as ra
from .tuned_configs import TUNED

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

_CHOSEN: dict[tuple, object] = {}
TUNING_LOG: dict[str, dict[str, float]] = {}  # key -> {config repr: ms}, for scripts/kernel_bench.py


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def tuned_name(kind: str, key: tuple) -> str:
    """The TUNED entry name of a shape: "gemv:N:K:dtype:plain|gated",
    "attention:KVH:GROUP:SLOTS:HEAD_DIM:dtype:mask|nomask" (and "ring_attention:" with the same
    fields: the fused ring kernel, tuned apart)."""
    return ":".join(map(str, (kind, *key)))


def gemv_key(weight: torch.Tensor, gated: bool) -> tuple:
    n, k = weight.shape
    return (n, k, str(weight.dtype).removeprefix("torch."), "gated" if gated else "plain")


def attention_key(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> tuple:
    # With and without a mask are tuned apart: the mask's loads and adds change which launch shape
    # wins (H200, Pythia-2.8b: 128-slot tiles + merge kernel with a mask, 32-slot tiles + last-program
    # merge without; one key for both handed the mask-free call the masked pick, 13.2 vs 11.2 us).
    heads, kv_heads, slots, head_dim = q.shape[1], k.shape[1], k.shape[2], k.shape[3]
    return (kv_heads, heads // kv_heads, slots, head_dim, str(k.dtype).removeprefix("torch."),
            "mask" if mask is not None else "nomask")


def pin(kind: str, key: tuple, config) -> None:
    """Use `config` for this shape for the rest of the process (scripts/kernel_bench.py: the config
    that was fastest inside a CUDA graph, for its end-to-end rows)."""
    _CHOSEN[(kind, *key)] = config


def choose(kind: str, key: tuple, device: torch.device, candidates: Callable[[], Sequence], default,
           make_run: Callable[[], Callable[[object], None]], config_type: type):
    """The config for `key`: cached, shipped (TUNED), timed now, or the default.

    `candidates()` and `make_run()` (which allocates the timing scratch) are called only when the
    shape is timed: every eager kernel call passes through here, and a cached pick must cost a
    dict lookup, not a candidate list and an allocation."""
    full = (kind, *key)
    cached = _CHOSEN.get(full)
    if cached is not None:
        return cached
    if device.type != "cuda" or INTERPRETED or os.environ.get("STREAMLLM_KERNEL_TUNING") == "0":
        return default
    shipped = TUNED.get(_device_name(device), {}).get(tuned_name(kind, key))
    if shipped is not None:
        chosen = config_type(**shipped)
    elif torch.cuda.is_current_stream_capturing():
        return default  # no timing inside a capture; the warm-up steps should have tuned
    else:
        times = {}
        run = make_run()
        for cfg in candidates():
            try:
                times[cfg] = triton.testing.do_bench(lambda cfg=cfg: run(cfg), warmup=5, rep=20,
                                                     return_mode="median")
            except Exception as exc:  # a config that does not compile (resources) is skipped
                times[cfg] = float("inf")
                TUNING_LOG.setdefault(tuned_name(kind, key) + ":errors", {})[repr(cfg)] = repr(exc)[:200]
        TUNING_LOG[tuned_name(kind, key)] = {repr(c): t for c, t in times.items()}
        chosen = min(times, key=times.get) if times and min(times.values()) < float("inf") else default
    _CHOSEN[full] = chosen
    return chosen


def gemv_config(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, act: int,
                weight2: torch.Tensor | None) -> gv.GemvConfig:
    n, k = weight.shape
    gated = weight2 is not None
    key = gemv_key(weight, gated)

    def make_run() -> Callable[[gv.GemvConfig], None]:
        scratch = torch.empty(n, dtype=x.dtype, device=x.device)
        return lambda cfg: gv.launch_gemv(x, weight, bias, scratch, cfg, act, weight2)

    def candidates() -> list[gv.GemvConfig]:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.device.type == "cuda" else None
        return gv.candidate_configs(n, k, gated, sms=sms)

    default = gv.interpreter_config(n, k, gated) if INTERPRETED else gv.default_config(n, k, gated)
    return choose("gemv", key, x.device, candidates, default, make_run, gv.GemvConfig)


def attention_config(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                     scale: float) -> attn.AttentionConfig:
    heads, kv_heads, slots, head_dim = q.shape[1], k.shape[1], k.shape[2], k.shape[3]
    group = heads // kv_heads
    key = attention_key(q, k, mask)

    def make_run() -> Callable[[attn.AttentionConfig], None]:
        scratch = q.new_empty(1, 1, heads, head_dim)
        return lambda cfg: attn.launch_decode_attention(q, k, v, mask, scale, scratch, cfg)

    def candidates() -> list[attn.AttentionConfig]:
        # The SM count only shapes the candidate list (split counts that fill whole waves); the key
        # stays the shape: TUNED is per device name, and one name has one SM count.
        sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.device.type == "cuda" else None
        return attn.candidate_configs(slots, group, kv_heads=kv_heads, head_dim=head_dim, sms=sms,
                                      elem_bytes=k.element_size())

    return choose("attention", key, q.device, candidates, attn.default_config(slots, group), make_run,
                  attn.AttentionConfig)


def ring_attention_config(q: torch.Tensor, k_cache: torch.Tensor, mask: torch.Tensor | None,
                          make_run: Callable[[], Callable[[attn.AttentionConfig], None]]) -> attn.AttentionConfig:
    """The fused ring kernel's config: tuned apart from plain attention (its tile loop carries the
    rotary and write patches), same candidates. Timing it repeats one step's writes: the same
    values into the same slots, so the cache is unchanged by the tuner."""
    heads, kv_heads, slots, head_dim = q.shape[1], k_cache.shape[1], k_cache.shape[2], k_cache.shape[3]
    group = heads // kv_heads

    def candidates() -> list[attn.AttentionConfig]:
        sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.device.type == "cuda" else None
        return attn.candidate_configs(slots, group, kv_heads=kv_heads, head_dim=head_dim, sms=sms,
                                      elem_bytes=k_cache.element_size())

    return choose("ring_attention", attention_key(q, k_cache, mask), q.device, candidates,
                  attn.default_config(slots, group), make_run, attn.AttentionConfig)


# -- custom ops ------------------------------------------------------------------------------
def _flat(t: torch.Tensor) -> torch.Tensor:
    t = t.reshape(-1)
    return t if t.is_contiguous() else t.contiguous()


@torch.library.custom_op("streamllm::gemv", mutates_args=())
def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, act: int = 0,
         weight2: torch.Tensor | None = None, norm_weight: torch.Tensor | None = None,
         norm_bias: torch.Tensor | None = None, norm: int = 0, eps: float = 0.0,
         residual: torch.Tensor | None = None, residual2: torch.Tensor | None = None) -> torch.Tensor:
    """act(norm(x) @ weight.T + bias) + residual + residual2 for one row x [..., K] (act 2:
    silu(x W^T) * (x W2^T); norm 1 LayerNorm(norm_weight, norm_bias, eps), 2 RMSNorm(norm_weight,
    eps), 0 none). The config is the shape's (`gemv_config`): the prologue and the adds read a few
    KB beside the weight."""
    x_flat = _flat(x)
    n = weight.shape[0]
    out = torch.empty(n, dtype=x.dtype, device=x.device)
    spec = gv.Norm(norm, norm_weight, norm_bias, eps) if norm else None
    residuals = tuple(_flat(r) for r in (residual, residual2) if r is not None)
    cfg = gemv_config(x_flat, weight, bias, act, weight2)
    gv.launch_gemv(x_flat, weight, bias, out, cfg, act, weight2, norm=spec, residuals=residuals)
    return out.view(*x.shape[:-1], n)


@gemv.register_fake
def _gemv_fake(x, weight, bias=None, act=0, weight2=None, norm_weight=None, norm_bias=None, norm=0, eps=0.0,
               residual=None, residual2=None):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


@torch.library.custom_op("streamllm::decode_attention", mutates_args=())
def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                     scale: float) -> torch.Tensor:
    """[1, 1, H, D] attention output of one query token over the whole K/V buffer."""
    out = q.new_empty(1, 1, q.shape[1], q.shape[3])
    cfg = attention_config(q, k, v, mask, scale)
    return attn.launch_decode_attention(q, k, v, mask, scale, out, cfg)


@decode_attention.register_fake
def _decode_attention_fake(q, k, v, mask, scale):
    return q.new_empty(1, 1, q.shape[1], q.shape[3])


@torch.library.custom_op("streamllm::ring_attention", mutates_args=("k_cache", "v_cache"))
def ring_attention(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   k_cache: torch.Tensor, v_cache: torch.Tensor, slot: torch.Tensor, sink_store: torch.Tensor | None,
                   sink_cos: torch.Tensor | None, sink_sin: torch.Tensor | None, sinks: int,
                   mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """[1, 1, H, D] attention of one token over the ring, with its rotary, its cache write and the
    sinks' re-rotation done in the same launch (ring_attention.launch_ring_attention); writes
    k_cache / v_cache in place."""
    sink = None if sink_store is None or sinks == 0 else ra.SinkRotation(sink_store, sink_cos, sink_sin, sinks)
    out = q.new_empty(1, 1, q.shape[1], q.shape[3])

    def make_run() -> Callable[[attn.AttentionConfig], None]:
        scratch = q.new_empty(1, 1, q.shape[1], q.shape[3])
        return lambda cfg: ra.launch_ring_attention(q, k_new, v_new, cos, sin, k_cache, v_cache, slot, sink, mask,
                                                    scale, scratch, cfg)

    cfg = ring_attention_config(q, k_cache, mask, make_run)
    return ra.launch_ring_attention(q, k_new, v_new, cos, sin, k_cache, v_cache, slot, sink, mask, scale, out, cfg)


@ring_attention.register_fake
def _ring_attention_fake(q, k_new, v_new, cos, sin, k_cache, v_cache, slot, sink_store, sink_cos, sink_sin, sinks,
                         mask, scale):
    return q.new_empty(1, 1, q.shape[1], q.shape[3])
