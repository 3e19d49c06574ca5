"""Exact parallel (chunked) streaming evaluation (docs/semantics.md#parallel-evaluation).

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

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .compat import attention_implementation, register_attention
from .evaluate import build_result
from .measure import TimingRun
from .models import LoadedModel
from .results import EvalResult, TokenTrace
from .rope import RopeSpec, UnsupportedRopeError, apply_rotation
from .steptime import split_timing_run
from .strategies import PositionMode, StrategySpec, plan_eviction

ATTENTION_NAME = "streamllm_parallel"
CONTEXT_KWARG = "streamllm_parallel_context"


# -- the schedule: lengths only --------------------------------------------------------------
class ScheduleError(ValueError):
    """The strategy's cache is not 'sinks + one contiguous window' at some step."""


@dataclass(frozen=True)
class Schedule:
    """Per decode step t (feeds x_t): what the token loop's cache looks like.

    Before step t the cache C_t holds the sinks [0, min(S, a_t)) and the window [a_t, t - 1];
    token t attends C_t and itself.
    """

    cache_length: np.ndarray  # |C_t|
    window_start: np.ndarray  # a_t
    position: np.ndarray  # position id the token loop feeds: |C_t| (shift) or t (absolute)
    pruned: np.ndarray  # bool: the eviction after step t removed entries
    evicted: np.ndarray  # entries removed after step t (0 when not pruned)
    sink: int  # S

    def __len__(self) -> int:
        return len(self.cache_length)

    def sinks_used(self, t: int | np.ndarray) -> int | np.ndarray:
        """Sinks attended as a separate block by query t (those not already inside the window)."""
        return np.minimum(self.sink, self.window_start[t])

    @property
    def prune_steps(self) -> list[int]:
        return np.flatnonzero(self.pruned).tolist()


def schedule(spec: StrategySpec, steps: int) -> Schedule:
    """Simulate `steps` decode steps of `spec` on cache lengths only, with `plan_eviction`."""
    ok, reason = _spec_supported(spec)
    if not ok:
        raise ScheduleError(reason)
    sink = spec.sink if spec.name != "dense" else 0
    cache_length = np.zeros(steps, dtype=np.int64)
    window_start = np.zeros(steps, dtype=np.int64)
    pruned = np.zeros(steps, dtype=bool)
    evicted = np.zeros(steps, dtype=np.int64)
    length, start = 0, 0
    for t in range(steps):
        cache_length[t], window_start[t] = length, start
        length += 1
        keep = plan_eviction(spec, length, t)
        if keep is None:
            continue
        start = _window_start_after(keep, sink, start, length, t)
        pruned[t], evicted[t] = True, length - len(keep)
        length = len(keep)
    absolute = spec.position_mode is PositionMode.ABSOLUTE
    position = np.arange(steps, dtype=np.int64) if absolute else cache_length.copy()
    return Schedule(cache_length, window_start, position, pruned, evicted, sink)


def _window_start_after(keep: list[int], sink: int, start: int, length: int, step: int) -> int:
    """New window start a after evicting to `keep`; checks the cache stays 'sinks + window'.

    Slot k of C_t + [t] holds token k for the separate sinks (k < min(S, a)) and token
    a + k - min(S, a) for the window; the kept window must be a contiguous run of slots ending at
    the newest one.
    """
    separate = min(sink, start)
    head, tail = keep[:sink], keep[sink:]
    first = tail[0] if tail else length
    contiguous = tail == list(range(first, length))
    if head != list(range(sink)) or not contiguous or first < separate:
        raise ScheduleError(
            f"step {step}: eviction keeps slots that are not 'sinks + one contiguous window' "
            "(the parallel evaluator cannot honour this strategy; use the token loop)"
        )
    new_start = start + first - separate
    if 0 < new_start < sink:
        raise ScheduleError(f"step {step}: window start {new_start} falls inside the {sink} sinks")
    return new_start


# -- what the parallel evaluator can honour --------------------------------------------------
def supports_parallel(spec: StrategySpec, model: torch.nn.Module | None = None) -> tuple[bool, str]:
    """(True, "") if `evaluate_parallel` reproduces the token loop for `spec` (and `model`)."""
    ok, reason = _spec_supported(spec)
    if not ok or model is None or spec.position_mode is PositionMode.ABSOLUTE:
        return ok, reason
    try:
        RopeSpec.from_model(model)
    except UnsupportedRopeError as exc:
        return False, f"pos-shift needs a re-rotatable RoPE: {exc}"
    return True, ""


def _spec_supported(spec: StrategySpec) -> tuple[bool, str]:
    if spec.name == "refresh":
        return False, ("refresh re-inserts evicted tokens at the tail with new positions: its context is not "
                       "sinks + one contiguous window")
    # Static and ring caches hold the same token lists as the dynamic one (plan_eviction decides),
    # so their NLL is the strategy's; whether a cache kind can hold a strategy is spec.validate's job.
    return True, ""


# -- per-chunk plan, shared by all layers ----------------------------------------------------
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


# -- the attention state and computation -----------------------------------------------------
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


# -- the evaluator ---------------------------------------------------------------------------
def evaluate_parallel(
    loaded: LoadedModel,
    ids: torch.Tensor,
    spec: StrategySpec,
    *,
    dataset: str = "?",
    dataset_sha256: str = "",
    chunk_size: int = 512,
    reference: EvalResult | None = None,
    progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """Per-token NLL of `spec` in chunks of `chunk_size` queries; equals `evaluate_tokens`' NLL.

    No decode timing: step_ms is NaN (TPOT comes from the token loop).
    """
    if ids.ndim != 1:
        raise ValueError("evaluate_parallel takes one sequence (batch 1): a 1-D tensor of token ids")
    n = ids.numel()
    if n < 2:
        raise ValueError("need at least 2 tokens: one fed, one scored")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (got {chunk_size})")
    ok, reason = supports_parallel(spec, loaded.model)
    if not ok:
        raise ScheduleError(reason)
    spec.validate(loaded.max_positions, allow_beyond_context=True)
    steps = n - 1
    plan = schedule(spec, steps)
    nll = _chunked_nll(loaded, ids, plan, spec, chunk_size, progress)
    trace = TokenTrace(
        nll=nll.tolist(),
        step_ms=[float("nan")] * steps,
        kv_length=(plan.cache_length + 1).tolist(),
        position=plan.position.tolist(),
        prune_steps=plan.prune_steps,
        evicted=plan.evicted[plan.pruned].tolist(),
    )
    return build_result(loaded, spec, trace, n, dataset, dataset_sha256, "parallel", 0, reference)


def _chunked_nll(loaded: LoadedModel, ids: torch.Tensor, plan: Schedule, spec: StrategySpec, chunk_size: int,
                 progress: Callable[[int], None] | None) -> torch.Tensor:
    model, device = loaded.model, loaded.device
    shift = spec.position_mode is PositionMode.SHIFT
    rope = RopeSpec.from_model(model) if shift else None
    context = ParallelContext(rope=rope, sink=plan.sink)
    ids = ids.to(device)
    steps = len(plan)
    nll = torch.empty(steps, dtype=torch.float64)
    # Idempotent, and the function holds no state: registering it changes no behaviour elsewhere.
    register_attention(ATTENTION_NAME, parallel_attention)
    with torch.inference_mode(), attention_implementation(model, ATTENTION_NAME):
        for start in range(0, steps, chunk_size):
            stop = min(start + chunk_size, steps)
            context.plan = plan_chunk(plan, start, stop, rope, device)
            tokens = ids[start:stop].view(1, -1)
            # Shift: position 0 makes the model's RoPE an exact identity and the attention function
            # rotates with float64 angles. Absolute: the model rotates at t, as in the token loop.
            positions = torch.zeros_like(tokens) if shift else torch.arange(start, stop, device=device).view(1, -1)
            logits = model(input_ids=tokens, position_ids=positions, use_cache=False,
                           **{CONTEXT_KWARG: context}).logits
            logp = torch.log_softmax(logits[0].float(), dim=-1)
            targets = ids[start + 1 : stop + 1]
            nll[start:stop] = -logp.gather(-1, targets[:, None])[:, 0].double().cpu()
            if progress is not None:
                progress(stop)
    return nll


def with_decode_timing(result: EvalResult, timed: EvalResult) -> EvalResult:
    """`result` (parallel NLL) with TPOT, total time and speedup from a timed token-loop run.

    The parallel evaluator does not decode, so TPOT can only come from the decode loop; the two
    runs must cover the same strategy and tokens. Their NLL agreement is recorded in the notes.
    """
    if (timed.strategy, timed.tokens, timed.dataset_sha256) != (result.strategy, result.tokens, result.dataset_sha256):
        raise ValueError("decode timing must come from the same strategy, text and token count")
    delta = float(np.max(np.abs(np.asarray(result.trace.nll) - np.asarray(timed.trace.nll))))
    merged = dataclasses.replace(
        result,
        total_s=timed.total_s, warmup_s=timed.warmup_s, warmup_steps=timed.warmup_steps,
        tpot_ms_median=timed.tpot_ms_median, tpot_ms_cycle_mean=timed.tpot_ms_cycle_mean,
        steady_from=timed.steady_from, speedup=timed.speedup, step_shape=timed.step_shape,
        trace=dataclasses.replace(result.trace, step_ms=list(timed.trace.step_ms)),
        notes=[*result.notes, f"TPOT from the token loop; max |ΔNLL| parallel vs token loop = {delta:.2e}"],
    )
    return merged


def _step_shape(timing: TimingRun) -> dict | None:
    try:
        return split_timing_run(timing).to_dict()
    except ValueError:  # no whole cycle timed
        return None


def with_slice_timing(result: EvalResult, timing: TimingRun | None) -> EvalResult:
    """`result` (parallel NLL) with TPOT from a steady-state decode slice (measure.time_steady_state).

    The slice's NLL at its positions is compared with the evaluator's (same semantics, two code
    paths) and the largest difference goes into the notes. None: the text was too short."""
    if timing is None:
        return dataclasses.replace(result, notes=[*result.notes, "TPOT not measured: the text is too short for a "
                                                  "steady-state slice (fill + 2 rounds); use --timing loop"])
    ref = np.asarray(result.trace.nll)[np.asarray(timing.positions)] if timing.positions else np.empty(0)
    delta = float(np.max(np.abs(np.asarray(timing.nll) - ref))) if timing.fill_mode != "random" and ref.size else None
    agreement = f"; max |ΔNLL| slice vs parallel = {delta:.2e}" if delta is not None else ""
    return dataclasses.replace(
        result, tpot_ms_median=timing.median_ms, tpot_ms_cycle_mean=timing.mean_ms,
        step_shape=_step_shape(timing),
        notes=[*result.notes, f"TPOT from a steady-state slice: {timing.rounds} rounds x {timing.steps_per_round} "
                              f"decode steps at |C| <= {timing.kv_length_max} ({timing.fill_mode} fill){agreement}"],
    )
