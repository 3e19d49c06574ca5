"""Route one model instance's batch-1 work through the Triton kernels, reversibly.

`TritonKernels(model)` is a context manager. Inside it:
- every plain floating-point `nn.Linear` computes one-row inputs with `torch.ops.streamllm.gemv`
  (more rows, i.e. prefill, keep `F.linear`);
- GPT-NeoX MLPs with exact GELU run the up-projection with GELU fused into the GEMV's epilogue, and
  Llama MLPs run gate and up in one GEMV with silu(gate) * up fused (the MLP input is read once);
- attention goes to `decode_attention` (split-KV) for one query token with an additive [1, 1, 1, S]
  mask or none; anything else falls back to transformers' SDPA function.

Nothing is copied and nothing global changes: the overrides are per-instance `forward` attributes
(what streamllm.gemv does), and attention is a function registered under its own name and
selected on the instance's configs for the duration (both through streamllm.compat, the seam to
transformers). The override functions are built once per
`TritonKernels` object, so entering it again hands dynamo the same function objects (no
recompiles from fresh closures).

With `fuse_ring` (the default), GPT-NeoX and Llama attention modules fed one token with a
RingStreamingCache whose step is fusable (`RingStreamingCache.fusable`: sinks recorded, one device)
run their projection and then `ring_attention`: the new token's rotary, its write into the ring
slot and the sinks' re-rotation inside the attention launch (streamllm.kernels.ring_attention),
instead of transformers' rotary + `Cache.update` + attention; any other call keeps the module's
own forward.

`TritonGraphDecoder` is streamllm.decode.GraphDecoder with this context added while the step is
traced and captured; the replays need nothing (the kernels are in the graph).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from ..caches.ring import RingStreamingCache
from ..compat import attention_implementation
from ..compat import register_attention as compat_register_attention
from ..decode import GraphDecoder
from . import ops as _ops  # noqa: F401  (registers torch.ops.streamllm.*)
from . import unavailable_reason
from .gemv import ACT_GELU, ACT_SILU_GATED

ATTENTION_NAME = "streamllm_triton_decode"


def _kernel_mask(attention_mask: torch.Tensor | None, slots: int) -> tuple[bool, torch.Tensor | None]:
    """(usable, mask): the cache's additive [1, 1, 1, S] float mask (cut to the slots) or None is
    what the kernels take; anything else (bool masks, per-query rows) is not."""
    mask = attention_mask
    if mask is not None and mask.dim() == 4:
        mask = mask[:, :, :, :slots]
    ok = mask is None or (mask.dim() == 4 and mask.shape[:3] == (1, 1, 1) and mask.dtype.is_floating_point)
    return ok, mask


def triton_decode_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                            **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention function: split-KV kernel for one token, SDPA otherwise."""
    mask_ok, mask = _kernel_mask(attention_mask, key.shape[-2])
    one_token = query.shape[0] == 1 and query.shape[2] == 1
    if not (one_token and mask_ok) or dropout:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return torch.ops.streamllm.decode_attention(query, key, value, mask, scale), None


def register_attention() -> str:
    """Register `triton_decode_attention` under ATTENTION_NAME (idempotent); returns the name.

    transformers builds masks only for implementations in its mask registry; this name is not in
    it, so the cache's own 4-D mask (or None) reaches the function untouched.
    """
    return compat_register_attention(ATTENTION_NAME, triton_decode_attention)


def _plain_weight(weight: torch.Tensor) -> bool:
    # torchao tensor subclasses (INT8) and odd layouts keep their own linear.
    return (type(weight.data) is torch.Tensor and weight.dtype in (torch.float16, torch.bfloat16, torch.float32)
            and weight.dim() == 2 and weight.stride(1) == 1)


def _one_row(x: torch.Tensor) -> bool:
    return x.numel() == x.shape[-1]


def _linear_forward(module: torch.nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        if not _one_row(x):
            return F.linear(x, module.weight, module.bias)
        return torch.ops.streamllm.gemv(x, module.weight, module.bias)

    return forward


def _neox_mlp_forward(mlp: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    up, down = mlp.dense_h_to_4h, mlp.dense_4h_to_h

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not _one_row(x):
            return down(mlp.act(up(x)))
        h = torch.ops.streamllm.gemv(x, up.weight, up.bias, ACT_GELU)
        return torch.ops.streamllm.gemv(h, down.weight, down.bias)

    return forward


def _llama_mlp_forward(mlp: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    gate, up, down = mlp.gate_proj, mlp.up_proj, mlp.down_proj

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not _one_row(x):
            return down(mlp.act_fn(gate(x)) * up(x))
        h = torch.ops.streamllm.gemv(x, gate.weight, None, ACT_SILU_GATED, up.weight)
        return torch.ops.streamllm.gemv(h, down.weight, down.bias)

    return forward


def _mlp_override(module: torch.nn.Module, hidden_act: str | None):
    names = {n for n, _ in module.named_children()}
    if {"dense_h_to_4h", "dense_4h_to_h", "act"} <= names and hidden_act == "gelu":
        linears = (module.dense_h_to_4h, module.dense_4h_to_h)
        if all(_plain_weight(m.weight) for m in linears):
            return _neox_mlp_forward(module), linears
    if {"gate_proj", "up_proj", "down_proj", "act_fn"} <= names and hidden_act == "silu":
        linears = (module.gate_proj, module.up_proj, module.down_proj)
        if (all(_plain_weight(m.weight) for m in linears) and module.gate_proj.bias is None
                and module.up_proj.bias is None and module.gate_proj.weight.stride() == module.up_proj.weight.stride()):
            return _llama_mlp_forward(module), linears
    return None, ()


def _step_cache(kwargs: dict) -> object:
    # transformers passes the cache as `layer_past` (GPT-NeoX), `cache` (Llama) or, in older
    # releases, `past_key_values`.
    for name in ("layer_past", "cache", "past_key_values"):
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


def _fused_ring_attention(module: torch.nn.Module, project: Callable, heads: int, kv_heads: int, head_dim: int,
                          out_proj: torch.nn.Module) -> Callable[..., tuple[torch.Tensor, None]]:
    """An attention module's forward: for one token on a fusable ring, `project(hidden) -> (q, k,
    v)` ([1, heads|kv_heads, 1, D], before RoPE), then ring_attention and the output projection;
    everything else goes to the module's own forward."""
    own_forward = type(module).forward
    layer_idx = module.layer_idx
    scale = module.scaling

    def forward(hidden_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, None]:
        cache = _step_cache(kwargs)
        mask_arg = kwargs.get("attention_mask", args[0] if args else None)
        if not (isinstance(cache, RingStreamingCache) and cache.fusable and _one_row(hidden_states)):
            return own_forward(module, hidden_states, *args, **kwargs)
        mask_ok, mask = _kernel_mask(mask_arg, cache.num_slots)
        if not mask_ok:
            return own_forward(module, hidden_states, *args, **kwargs)
        cos, sin = kwargs["position_embeddings"]
        q, k, v = project(hidden_states)
        step = cache.fused_step(layer_idx)
        out = torch.ops.streamllm.ring_attention(q, k, v, cos, sin, step.keys, step.values, step.slot,
                                                 step.sink_store, step.sink_cos, step.sink_sin, step.sinks, mask,
                                                 scale)
        return out_proj(out.view(*hidden_states.shape[:-1], heads * head_dim)), None

    return forward


def _attention_override(module: torch.nn.Module, config) -> Callable | None:
    """The fused ring forward for GPT-NeoX and Llama attention modules with plain weights, else None."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if not hasattr(module, "layer_idx") or not hasattr(module, "scaling"):
        return None
    names = {n for n, _ in module.named_children()}
    if {"query_key_value", "dense"} <= names and _plain_weight(module.query_key_value.weight):
        qkv_proj, head_dim = module.query_key_value, module.head_size

        def project_neox(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            # GPT-NeoX interleaves per head: [q_h | k_h | v_h] for each head h.
            qkv = torch.ops.streamllm.gemv(x, qkv_proj.weight, qkv_proj.bias)
            return qkv.view(1, 1, heads, 3 * head_dim).transpose(1, 2).chunk(3, dim=-1)

        return _fused_ring_attention(module, project_neox, heads, heads, head_dim, module.dense)
    if {"q_proj", "k_proj", "v_proj", "o_proj"} <= names and all(
            _plain_weight(getattr(module, n).weight) for n in ("q_proj", "k_proj", "v_proj")):
        q_proj, k_proj, v_proj, head_dim = module.q_proj, module.k_proj, module.v_proj, module.head_dim

        def project_llama(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            q = torch.ops.streamllm.gemv(x, q_proj.weight, q_proj.bias).view(1, 1, heads, head_dim)
            k = torch.ops.streamllm.gemv(x, k_proj.weight, k_proj.bias).view(1, 1, kv_heads, head_dim)
            v = torch.ops.streamllm.gemv(x, v_proj.weight, v_proj.bias).view(1, 1, kv_heads, head_dim)
            return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

        return _fused_ring_attention(module, project_llama, heads, kv_heads, head_dim, module.o_proj)
    return None


class TritonKernels:
    """Context manager: `model`'s batch-1 linears / MLPs / attention on the Triton kernels."""

    def __init__(self, model: torch.nn.Module, linears: bool = True, mlp: bool = True, attention: bool = True,
                 fuse_ring: bool = True):
        device = next(model.parameters()).device
        reason = unavailable_reason(device)
        if reason:
            raise RuntimeError(reason)
        self.model = model
        hidden_act = getattr(model.config, "hidden_act", None)
        self.overrides: list[tuple[torch.nn.Module, Callable]] = []
        covered: set[int] = set()
        if mlp:
            for module in model.modules():
                forward, linears_of = _mlp_override(module, hidden_act)
                if forward is not None:
                    self.overrides.append((module, forward))
                    covered.update(id(m) for m in linears_of)
        self.fused_mlps = len(self.overrides)
        self.fused_attention = 0
        if fuse_ring and attention:
            for module in model.modules():
                forward = _attention_override(module, model.config)
                if forward is not None:
                    self.overrides.append((module, forward))
                    self.fused_attention += 1
        if linears:
            for module in model.modules():
                if isinstance(module, torch.nn.Linear) and id(module) not in covered and _plain_weight(module.weight):
                    self.overrides.append((module, _linear_forward(module)))
        self.attention = register_attention() if attention else None
        self._attention_switch: ExitStack | None = None

    def __enter__(self) -> TritonKernels:
        for module, forward in self.overrides:
            module.forward = forward
        self._attention_switch = ExitStack()
        self._attention_switch.enter_context(attention_implementation(self.model, self.attention))
        return self

    def __exit__(self, *exc) -> None:
        for module, _ in self.overrides:
            module.__dict__.pop("forward", None)
        if self._attention_switch is not None:
            self._attention_switch.close()  # every config's previous attention back
            self._attention_switch = None


class TritonGraphDecoder(GraphDecoder):
    """GraphDecoder whose traced and captured step runs the Triton kernels (--compile cudagraphs-triton),
    mask-free once the ring is full unless `attention` says otherwise; `fuse_ring` as TritonKernels."""

    def __init__(self, model: torch.nn.Module, cache, fuse_ring: bool = True, **kwargs):
        # Once every slot of the ring holds a token its mask is all zeros: pass none, and the
        # kernel runs its mask-free variant (H200, Pythia-2.8b, per layer: 11.2 us vs 13.2 with the
        # mask, reports/gpu-kernels.md). attention=None keeps the mask in every step.
        kwargs.setdefault("attention", "sdpa-maskfree")
        super().__init__(model, cache, **kwargs)
        self.kernels = TritonKernels(model, fuse_ring=fuse_ring)

    @contextmanager
    def _tracing(self) -> Iterator[None]:
        # Inside GraphDecoder's own context, so the Triton attention name wins over its choice
        # (its mask-free flag still decides whether a mask is passed).
        with super()._tracing(), self.kernels:
            yield
