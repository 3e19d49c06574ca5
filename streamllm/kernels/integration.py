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
own forward. With `fuse_norm` (the default), GPT-NeoX (parallel residual) and Llama decoder layers
fed one token run their norms in the prologues of the GEMVs that read them and their residual
adds in the epilogues of the GEMVs that end each branch (`_layer_forward`), so no inductor
reduction or add kernel is left between them; the final norm before the head stays the model's.

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
from .gemv import ACT_GELU, ACT_SILU_GATED, NORM_LAYER, NORM_RMS, Norm

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


def _norm_spec(module: torch.nn.Module | None) -> Norm | None:
    """The GEMV-prologue form of a LayerNorm (with weight and bias) or an RMSNorm module (Llama
    family: a `weight` and a `variance_epsilon`), else None."""
    if isinstance(module, torch.nn.LayerNorm):
        if module.weight is None or module.bias is None or len(module.normalized_shape) != 1:
            return None
        return Norm(NORM_LAYER, module.weight, module.bias, module.eps)
    weight, eps = getattr(module, "weight", None), getattr(module, "variance_epsilon", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 1 and eps is not None and "RMSNorm" in type(module).__name__:
        return Norm(NORM_RMS, weight, None, float(eps))
    return None


def _gemv(x: torch.Tensor, linear: torch.nn.Module, act: int = 0, weight2: torch.Tensor | None = None,
          norm: Norm | None = None, residual: torch.Tensor | None = None,
          residual2: torch.Tensor | None = None) -> torch.Tensor:
    if norm is None:
        return torch.ops.streamllm.gemv(x, linear.weight, linear.bias, act, weight2, residual=residual,
                                        residual2=residual2)
    return torch.ops.streamllm.gemv(x, linear.weight, linear.bias, act, weight2, norm.weight, norm.bias, norm.kind,
                                    norm.eps, residual, residual2)


def _attention_forward(module: torch.nn.Module, project: Callable, heads: int, head_dim: int,
                       out_proj: torch.nn.Module, fuse_ring: bool) -> Callable[..., tuple[torch.Tensor, None]]:
    """An attention module's forward. For one token on a fusable ring (with `fuse_ring`):
    `project(hidden, norm) -> (q, k, v)` ([1, heads|kv_heads, 1, D], before RoPE), ring_attention,
    and the output projection with `residual` added in its epilogue. Everything else goes to the
    module's own forward. `norm` / `residual` are passed only by this module's layer override
    (`_layer_forward`): the input is then the layer's un-normalized hidden state."""
    own_forward = type(module).forward
    layer_idx = module.layer_idx
    scale = module.scaling

    def forward(hidden_states: torch.Tensor, *args, norm: torch.nn.Module | None = None,
                residual: torch.Tensor | None = None, **kwargs) -> tuple[torch.Tensor, None]:
        cache = _step_cache(kwargs)
        fused = (fuse_ring and not args and isinstance(cache, RingStreamingCache) and cache.fusable
                 and _one_row(hidden_states) and _kernel_mask(kwargs.get("attention_mask"), cache.num_slots)[0])
        if not fused:
            x = hidden_states if norm is None else norm(hidden_states)
            out, weights = own_forward(module, x, *args, **kwargs)
            return (out if residual is None else out + residual), weights
        cos, sin = kwargs["position_embeddings"]
        q, k, v = project(hidden_states, _norm_spec(norm))
        # The step's state first (layer 0 opens the new slot in the mask), then the mask is read.
        step = cache.fused_step(layer_idx)
        _, mask = _kernel_mask(kwargs.get("attention_mask"), cache.num_slots)
        out = torch.ops.streamllm.ring_attention(q, k, v, cos, sin, step.keys, step.values, step.slot,
                                                 step.sink_store, step.sink_cos, step.sink_sin, step.sinks, mask,
                                                 scale)
        out = out.view(*hidden_states.shape[:-1], heads * head_dim)
        return _gemv(out, out_proj, residual=residual), None

    return forward


def _attention_override(module: torch.nn.Module, config, fuse_ring: bool) -> Callable | None:
    """The forward above for GPT-NeoX and Llama attention modules with plain weights, else None."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if not hasattr(module, "layer_idx") or not hasattr(module, "scaling"):
        return None
    names = {n for n, _ in module.named_children()}
    if {"query_key_value", "dense"} <= names and all(
            _plain_weight(getattr(module, n).weight) for n in ("query_key_value", "dense")):
        qkv_proj, head_dim = module.query_key_value, module.head_size

        def project_neox(x: torch.Tensor, norm: Norm | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            # GPT-NeoX interleaves per head: [q_h | k_h | v_h] for each head h.
            qkv = _gemv(x, qkv_proj, norm=norm)
            return qkv.view(1, 1, heads, 3 * head_dim).transpose(1, 2).chunk(3, dim=-1)

        return _attention_forward(module, project_neox, heads, head_dim, module.dense, fuse_ring)
    if {"q_proj", "k_proj", "v_proj", "o_proj"} <= names and all(
            _plain_weight(getattr(module, n).weight) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
        q_proj, k_proj, v_proj, head_dim = module.q_proj, module.k_proj, module.v_proj, module.head_dim

        def project_llama(x: torch.Tensor, norm: Norm | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            # Three GEMVs, each normalizing the (few-KB) input in its own prologue.
            q = _gemv(x, q_proj, norm=norm).view(1, 1, heads, head_dim)
            k = _gemv(x, k_proj, norm=norm).view(1, 1, kv_heads, head_dim)
            v = _gemv(x, v_proj, norm=norm).view(1, 1, kv_heads, head_dim)
            return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

        return _attention_forward(module, project_llama, heads, head_dim, module.o_proj, fuse_ring)
    return None


def _layer_forward(layer: torch.nn.Module, attention: Callable, hidden_act: str | None) -> Callable | None:
    """A decoder layer's forward for one token with no inductor kernel between the GEMVs: the norms
    in the prologues of the GEMVs that read them, the residual adds in the epilogues of the GEMVs
    that end each branch. GPT-NeoX with parallel residual (attention and MLP both read the layer
    input h, each through its own LayerNorm; h + attention + MLP in the down-projection's
    epilogue) and Llama (RMSNorms; h + attention in o_proj's epilogue, + MLP in down's)."""
    own_forward = type(layer).forward
    children = dict(layer.named_children())
    mlp = children.get("mlp")
    ln1, ln2 = children.get("input_layernorm"), children.get("post_attention_layernorm")
    if mlp is None or _norm_spec(ln1) is None or _norm_spec(ln2) is None:
        return None
    post = _norm_spec(ln2)
    if getattr(layer, "use_parallel_residual", False) and _mlp_override(mlp, hidden_act)[0] is not None \
            and hasattr(mlp, "dense_h_to_4h"):
        up, down = mlp.dense_h_to_4h, mlp.dense_4h_to_h

        def neox(hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            if args or not _one_row(hidden_states):
                return own_forward(layer, hidden_states, *args, **kwargs)
            attn_out, _ = attention(hidden_states, norm=ln1, **kwargs)
            h = _gemv(hidden_states, up, ACT_GELU, norm=post)
            return _gemv(h, down, residual=attn_out, residual2=hidden_states)

        return neox
    if hasattr(mlp, "gate_proj") and _mlp_override(mlp, hidden_act)[0] is not None:
        gate, up, down = mlp.gate_proj, mlp.up_proj, mlp.down_proj

        def llama(hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            if args or not _one_row(hidden_states):
                return own_forward(layer, hidden_states, *args, **kwargs)
            h1, _ = attention(hidden_states, norm=ln1, residual=hidden_states, **kwargs)
            gated = _gemv(h1, gate, ACT_SILU_GATED, up.weight, norm=post)
            return _gemv(gated, down, residual=h1)

        return llama
    return None


class TritonKernels:
    """Context manager: `model`'s batch-1 linears / MLPs / attention on the Triton kernels;
    `fuse_ring` / `fuse_norm` as in the module docstring (`fused_attention` / `fused_layers`
    count the modules that got them)."""

    def __init__(self, model: torch.nn.Module, linears: bool = True, mlp: bool = True, attention: bool = True,
                 fuse_ring: bool = True, fuse_norm: bool = True):
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
        self.fused_attention = self.fused_layers = 0
        if attention and (fuse_ring or fuse_norm):
            attention_forwards = {}
            for module in model.modules():
                forward = _attention_override(module, model.config, fuse_ring)
                if forward is not None:
                    self.overrides.append((module, forward))
                    attention_forwards[id(module)] = forward
            self.fused_attention = len(attention_forwards) if fuse_ring else 0
            if fuse_norm and mlp:
                for layer in model.modules():
                    attn = next((attention_forwards[id(c)] for c in layer.children() if id(c) in attention_forwards),
                                None)
                    forward = _layer_forward(layer, attn, hidden_act) if attn is not None else None
                    if forward is not None:
                        self.overrides.append((layer, forward))
                        self.fused_layers += 1
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
    mask-free once the ring is full unless `attention` says otherwise; `fuse_ring` / `fuse_norm` as
    TritonKernels."""

    def __init__(self, model: torch.nn.Module, cache, fuse_ring: bool = True, fuse_norm: bool = True, **kwargs):
        # Once every slot of the ring holds a token its mask is all zeros: pass none, and the
        # kernel runs its faster mask-free variant. attention=None keeps the mask in every step.
        kwargs.setdefault("attention", "sdpa-maskfree")
        super().__init__(model, cache, **kwargs)
        self.kernels = TritonKernels(model, fuse_ring=fuse_ring, fuse_norm=fuse_norm)

    @contextmanager
    def _tracing(self) -> Iterator[None]:
        # Inside GraphDecoder's own context, so the Triton attention name wins over its choice
        # (its mask-free flag still decides whether a mask is passed).
        with super()._tracing(), self.kernels:
            yield
