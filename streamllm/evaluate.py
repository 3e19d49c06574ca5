"""Token-by-token streaming evaluator: the reference for every other evaluator.

Step t feeds x_t at the strategy's position, scores x_{t+1} (NLL_t = -log p(x_{t+1})), then
lets the cache evict. Each step's forward + eviction is timed with the device synchronized
before the clock is read; NLL arithmetic happens outside the timed region.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .caches import AnyCache, make_cache
from .decode import DecoderFactory, EagerDecoder
from .decode_slice import Clock
from .measure import speedup as tpot_speedup
from .measure import tpot_ms
from .models import LoadedModel
from .results import EvalResult, TokenTrace, ppl_from_nll
from .spikes import summarize
from .steptime import step_shape
from .strategies import StrategySpec

CacheFactory = Callable[[StrategySpec, torch.nn.Module], AnyCache]


@dataclass(frozen=True)
class DecodeOptions:
    warmup_steps: int = 8  # excluded from TPOT and total time (reported as warmup_s)
    time_steps: bool = True


def evaluate_tokens(
    loaded: LoadedModel,
    ids: torch.Tensor,
    spec: StrategySpec,
    *,
    dataset: str = "?",
    dataset_sha256: str = "",
    options: DecodeOptions = DecodeOptions(),
    cache_factory: CacheFactory = make_cache,
    decoder_factory: DecoderFactory | None = None,
    reference: EvalResult | None = None,
    progress: Callable[[int], None] | None = None,
) -> EvalResult:
    if ids.ndim != 1:
        raise ValueError("evaluate_tokens takes one sequence (batch 1): a 1-D tensor of token ids")
    n = ids.numel()
    if n < 2:
        raise ValueError("need at least 2 tokens: one fed, one scored")
    model, device = loaded.model, loaded.device
    spec.validate(loaded.max_positions, allow_beyond_context=True)
    cache = cache_factory(spec, model)
    # eager by default; --compile picks a compiled or CUDA-graph decoder (decode.py)
    decoder = (decoder_factory or EagerDecoder)(model, cache)
    ids = ids.to(device)
    steps = n - 1
    nll = torch.empty(steps, dtype=torch.float64)
    step_ms = np.full(steps, np.nan)
    kv_length = np.empty(steps, dtype=np.int64)
    position = np.empty(steps, dtype=np.int64)
    prune_steps: list[int] = []
    evicted: list[int] = []
    clock = Clock(device)

    with torch.inference_mode():
        for t in range(steps):
            pos = cache.next_position()
            position[t] = pos
            kv_length[t] = cache.length + 1
            token = ids[t : t + 1].view(1, 1)
            if options.time_steps:
                (logits, event), step_ms[t], _ = clock.time(lambda: decoder.step(token))  # noqa: B023
            else:
                logits, event = decoder.step(token)  # forward + the cache's end_step (eviction)
            logp = torch.log_softmax(logits.float(), dim=-1)
            nll[t] = -logp[ids[t + 1]].item()
            if event is not None:
                prune_steps.append(t)
                evicted.append(event.evicted)
            if progress is not None:
                progress(t + 1)

    trace = TokenTrace(
        nll=nll.tolist(),
        step_ms=step_ms.tolist(),
        kv_length=kv_length.tolist(),
        position=position.tolist(),
        prune_steps=prune_steps,
        evicted=evicted,
    )
    return build_result(loaded, spec, trace, n, dataset, dataset_sha256, "token", options.warmup_steps, reference)


def build_result(
    loaded: LoadedModel,
    spec: StrategySpec,
    trace: TokenTrace,
    tokens: int,
    dataset: str,
    dataset_sha256: str,
    evaluator: str,
    warmup_steps: int,
    reference: EvalResult | None = None,
) -> EvalResult:
    nll = np.asarray(trace.nll)
    ppl, mean_nll = ppl_from_nll(nll)
    timing = steady_state_timing(np.asarray(trace.step_ms), trace.prune_steps, warmup_steps)
    max_position = int(max(trace.position))
    notes: list[str] = []
    beyond = loaded.max_positions is not None and max_position >= loaded.max_positions
    if beyond:
        notes.append(f"position ids reached {max_position} >= the model's {loaded.max_positions} trained positions")
    if loaded.dummy_weights:
        notes.append("dummy weights: PPL is meaningless, timing only")
    found = summarize(nll, trace.prune_steps)
    result = EvalResult(
        strategy=spec.label(),
        params=spec.params(),
        model=loaded.name,
        model_revision=loaded.revision,
        dataset=dataset,
        dataset_sha256=dataset_sha256,
        tokens=tokens,
        tokens_scored=tokens - 1,
        scored_range=(1, tokens - 1),
        evaluator=evaluator,
        device=str(loaded.device),
        dtype=str(loaded.dtype).removeprefix("torch."),
        ppl=ppl,
        mean_nll=mean_nll,
        total_s=timing.total_s,
        warmup_s=timing.warmup_s,
        warmup_steps=warmup_steps,
        tpot_ms_median=timing.median_ms,
        tpot_ms_cycle_mean=timing.cycle_mean_ms,
        steady_from=timing.steady_from,
        prune_events=len(trace.prune_steps),
        max_position=max_position,
        beyond_context=beyond,
        raw_nll_spikes=found.to_dict() if found else None,
        step_shape=step_shape(trace.step_ms, [t in set(trace.prune_steps) for t in range(len(trace.step_ms))],
                              max(1, spec.compress_every) if spec.capacity is not None else 1, timing.steady_from),
        notes=notes,
        trace=trace,
    )
    if reference is not None:
        result.speedup = speedup(reference, result)
    return result


@dataclass(frozen=True)
class SteadyTiming:
    total_s: float
    warmup_s: float
    median_ms: float
    cycle_mean_ms: float
    steady_from: int


def steady_state_timing(step_ms: np.ndarray, prune_steps: list[int], warmup_steps: int) -> SteadyTiming:
    """TPOT at steady state (cache full); whole eviction cycles for the mean (design-notes §4).

    Steady state starts after the first eviction (or after warm-up when nothing is evicted).
    The cycle mean covers the steps after the first eviction up to and including the last one,
    so every slow pruning step is counted once per cycle; a median alone would hide it.
    """
    if np.all(np.isnan(step_ms)):
        nan = float("nan")
        return SteadyTiming(nan, nan, nan, nan, 0)
    warm = min(warmup_steps, len(step_ms) - 1)
    total_s = float(np.nansum(step_ms[warm:]) / 1e3)
    warmup_s = float(np.nansum(step_ms[:warm]) / 1e3)
    first = prune_steps[0] + 1 if prune_steps else warm
    first = max(first, warm)
    steady = step_ms[first:] if first < len(step_ms) else step_ms[warm:]
    median = float(np.median(steady))
    cycles = [p for p in prune_steps if p >= first]
    # whole cycles, from the first steady step to the last prune: each prune counted once
    cycle_mean = tpot_ms(step_ms[first : cycles[-1] + 1]) if cycles else tpot_ms(steady)
    return SteadyTiming(total_s, warmup_s, median, cycle_mean, int(first))


def speedup(reference: EvalResult, result: EvalResult) -> float | None:
    """measure.speedup of two results on the same text: reference TPOT / this TPOT."""
    if reference.tokens != result.tokens or reference.dataset_sha256 != result.dataset_sha256:
        raise ValueError("speedup needs the reference run on the same text and token count")
    return tpot_speedup(reference.tpot_ms_cycle_mean, result.tpot_ms_cycle_mean)
