"""The parallel evaluator's attention function and its per-chunk plan
(docs/semantics.md#parallel-evaluation).

For every strategy whose context schedule is known in advance, the context of query t is the
sinks [0, S) plus a contiguous window [a_t, t]. Token j's K/V depend only on j's own context, so
one forward over a chunk of queries computes the same per-token NLL as the token loop when each
query attends exactly its context, with the scores the token loop would see:

* window entries: under pos-shift the slot distance |C_t| - slot(j) equals the text distance
  t - j (the window is contiguous), so q and k rotated at absolute positions t and j give the
  token loop's scores;
* sinks (separate from the window): they sit at slots i = 0..S-1, so the query is rotated at its
  cache position |C_t| instead of t for that block (shift strategies; dense and no-shift use t).

Where the rotation happens follows where the token loop's angles come from:
* dense and no-shift: the token loop feeds absolute positions, so we feed them too and let the
  model rotate q and k itself (bit-identical cos/sin; sinks sit at i in both);
* shift strategies: the token loop only ever sees positions <= S+W+R, whose float32 angles are
  accurate, while float32 angles t * inv_freq lose precision as t grows (the highest frequency
  is off by ~1e-3 rad at t = 20k). So the model is fed position 0 (an exact identity rotation)
  and our attention function rotates q and k at t, and q at |C_t| for the sinks, with angles
  computed in float64 from the model's RoPE parameters.

The attention function is registered once with transformers' `AttentionInterface` under
`ATTENTION_NAME`; it is stateless and finds its per-call state (the chunk plan and the K/V
store) in a keyword argument that `model(...)` forwards to every attention call. The model's
own attention implementation is restored after each evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .parallel_schedule import Schedule
from .rope import RopeSpec, apply_rotation

ATTENTION_NAME = "streamllm_parallel"


CONTEXT_KWARG = "streamllm_parallel_context"


@dataclass(frozen=True)
class ChunkPlan:
    start: int  # queries are tokens [start, stop)
    stop: int
    key_start: int  # window keys of this chunk are tokens [key_start, stop)
    keep_from: int  # first token a later chunk's window still needs
    window_bias: torch.Tensor  # [L, stop - key_start]: 0 where a_t <= j <= t, -inf elsewhere
    sink_bias: torch.Tensor | None  # [L, n_sinks]: 0 where i < min(S, a_t); None: no sink block
    # cos/sin at absolute positions [start, stop); None: the model already rotated q/k there
    rot_abs: tuple[torch.Tensor, torch.Tensor] | None
    rot_sink_query: tuple[torch.Tensor, torch.Tensor] | None  # cos/sin at |C_t|; None: the sinks use q_abs

    @property
    def sinks(self) -> int:
        return 0 if self.sink_bias is None else self.sink_bias.shape[-1]


def plan_chunk(plan: Schedule, start: int, stop: int, rope: RopeSpec | None, device: torch.device) -> ChunkPlan:
    """Masks and rotations of queries [start, stop); `rope` None: absolute positions, the model rotates."""
    t = np.arange(start, stop)
    a = plan.window_start[start:stop]
    key_start = int(a[0])  # a_t never decreases
    keep_from = int(plan.window_start[stop]) if stop < len(plan) else stop
    j = np.arange(key_start, stop)
    window_ok = (j[None, :] >= a[:, None]) & (j[None, :] <= t[:, None])
    used = plan.sinks_used(t)
    n_sinks = int(used.max())
    sink_bias = _bias(np.arange(n_sinks)[None, :] < used[:, None], device) if n_sinks else None
    rot_abs = rot_sink = None
    if rope is not None:
        rot_abs = rope.cos_sin(torch.from_numpy(t).double(), torch.float32, device)
        if n_sinks:
            rot_sink = rope.cos_sin(torch.from_numpy(plan.cache_length[start:stop]).double(), torch.float32, device)
    return ChunkPlan(start, stop, key_start, keep_from, _bias(window_ok, device), sink_bias, rot_abs, rot_sink)


def _bias(keep: np.ndarray, device: torch.device) -> torch.Tensor:
    bias = torch.zeros(keep.shape, dtype=torch.float32)
    bias.masked_fill_(~torch.from_numpy(keep), float("-inf"))
    return bias.to(device)


@dataclass
class LayerStore:
    """K/V of earlier tokens one layer still needs, keys rotated at absolute positions."""

    keys: torch.Tensor | None = None  # [B, Hkv, n, D] for tokens [start, start + n)
    values: torch.Tensor | None = None
    start: int = 0
    sink_keys: torch.Tensor | None = None  # tokens [0, min(S, seen)); slot i == position i
    sink_values: torch.Tensor | None = None


@dataclass
class ParallelContext:
    """Per-evaluation state handed to the attention function through `model(...)` kwargs."""

    rope: RopeSpec | None  # None: absolute positions, q/k arrive rotated by the model
    sink: int
    layers: dict[int, LayerStore] = field(default_factory=dict)
    plan: ChunkPlan | None = None

    def attend(self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               scaling: float) -> torch.Tensor:
        """Attention output [B, L, H, D] of the current chunk's q/k/v [B, H(kv), L, D], as the model gave
        them: un-rotated for shift strategies (position 0), rotated at t for absolute ones."""
        plan = self.plan
        if plan is None:
            raise RuntimeError("ParallelContext.attend called outside a chunk")
        store = self.layers.setdefault(layer, LayerStore(start=plan.start))
        q_abs, k_abs = self._rotate(query, plan.rot_abs), self._rotate(key, plan.rot_abs)
        self._remember_sinks(store, k_abs, value, plan)
        keys, values = self._window_kv(store, k_abs, value, plan)

        scores = _grouped_scores(q_abs, keys, scaling) + plan.window_bias
        if plan.sinks:
            # Sinks sit at slots 0..S-1: the query scores them from its cache position |C_t|.
            q_sink = q_abs if plan.rot_sink_query is None else self._rotate(query, plan.rot_sink_query)
            sink_scores = _grouped_scores(q_sink, store.sink_keys[:, :, : plan.sinks], scaling) + plan.sink_bias
            scores = torch.cat((sink_scores, scores), dim=-1)
            values = torch.cat((store.sink_values[:, :, : plan.sinks], values), dim=-2)
        probs = torch.softmax(scores, dim=-1).to(values.dtype)
        return _grouped_output(probs, values, query.shape[1])

    def _rotate(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        return x if cos_sin is None else apply_rotation(x, *cos_sin, self.rope.rotary_dim)

    @staticmethod
    def _window_kv(store: LayerStore, keys: torch.Tensor, values: torch.Tensor,
                   plan: ChunkPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V of tokens [key_start, stop) for this chunk; keeps [keep_from, stop) for the next one."""
        keys, values = _append(store.keys, keys), _append(store.values, values)
        offset = plan.key_start - store.start
        keys, values = keys[:, :, offset:], values[:, :, offset:]
        keep = plan.keep_from - plan.key_start
        store.keys, store.values, store.start = keys[:, :, keep:], values[:, :, keep:], plan.keep_from
        return keys, values

    def _remember_sinks(self, store: LayerStore, keys: torch.Tensor, values: torch.Tensor, plan: ChunkPlan) -> None:
        # Sink keys are rotated at i == their slot, so the absolute-frame keys serve as they are.
        wanted = min(self.sink, plan.stop) - plan.start
        if wanted <= 0:
            return
        store.sink_keys = _append(store.sink_keys, keys[:, :, :wanted])
        store.sink_values = _append(store.sink_values, values[:, :, :wanted])


def _append(old: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
    return new if old is None or old.shape[-2] == 0 else torch.cat((old, new), dim=-2)


def _grouped_scores(query: torch.Tensor, keys: torch.Tensor, scaling: float) -> torch.Tensor:
    """float32 scores [B, Hkv, G, L, K] with GQA groups kept as a view (no repeated K/V)."""
    b, heads, length, dim = query.shape
    kv_heads = keys.shape[1]
    groups = heads // kv_heads
    q = (query * scaling).reshape(b, kv_heads, groups * length, dim)
    scores = torch.matmul(q, keys.transpose(-1, -2)).float()
    return scores.view(b, kv_heads, groups, length, keys.shape[-2])


def _grouped_output(probs: torch.Tensor, values: torch.Tensor, heads: int) -> torch.Tensor:
    b, kv_heads, groups, length, n = probs.shape
    out = torch.matmul(probs.reshape(b, kv_heads, groups * length, n), values)
    return out.view(b, heads, length, values.shape[-1]).transpose(1, 2).contiguous()


def parallel_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                       **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention function: the mask comes from the schedule, not `attention_mask`."""
    context = kwargs.get(CONTEXT_KWARG)
    if not isinstance(context, ParallelContext):
        raise RuntimeError(f"attention implementation {ATTENTION_NAME!r} only runs inside evaluate_parallel")
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    return context.attend(module.layer_idx, query, key, value, scaling), None
