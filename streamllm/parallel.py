"""Exact parallel (chunked) streaming evaluation (docs/semantics.md#parallel-evaluation): per-token
NLL of a strategy in chunks of queries, equal to the token loop's. The schedule of every query's
context is `parallel_schedule.py`'s; the attention function that honours it (masks, RoPE rotations,
the K/V a later chunk still needs) is `parallel_attention.py`'s, registered with transformers'
`AttentionInterface` and active only inside `evaluate_parallel` (the model's own attention
implementation is restored after each evaluation). The evaluator does not decode: TPOT is attached
from a timed decode (`with_decode_timing`, `with_slice_timing`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch

from .compat import attention_implementation, register_attention
from .evaluate import build_result
from .measure import TimingRun
from .models import LoadedModel
from .parallel_attention import ATTENTION_NAME, CONTEXT_KWARG, ParallelContext, parallel_attention, plan_chunk
from .parallel_schedule import Schedule, ScheduleError, schedule, supports_parallel
from .results import EvalResult, TokenTrace
from .rope import RopeSpec
from .steptime import split_timing_run
from .strategies import PositionMode, StrategySpec


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
