"""What a case's checks read besides its TPOT samples, measured on the timed slice's cache and
decoder: the row's own path and calibration path (static/ring), the tokens a dynamic row's cache
holds, its work counts, its memory floor and the timed decode's agreement with the evaluator, and
the raw-record form of the (a) checks' inputs.

`SliceProbes` is the half of `bench/measuring.py`'s `Measurements` that never reads a step time:
it takes the slices' caches and decoders, a run's positions and NLL, its K/V length. So a TPOT
sample's route (docs/architecture.md, "The route of one TPOT sample") does not pass through here.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import torch

from streamllm.calibration import copy_bandwidth_GBps
from streamllm.decoders import decoder_factory
from streamllm.floor import analytic_step_bytes, floor_ms, mean_attended_slots
from streamllm.harness.opcount import count_work
from streamllm.harness.records import RawEviction, RawHolding, RawNll, RawOwnPath
from streamllm.harness.workrecord import WorkCounts, counter_key
from streamllm.ownpath import Holding, OwnPath, expected_tokens, held_tokens, layer0_values, own_path, reference_kv
from streamllm.results import EvalResult
from streamllm.strategies import StrategySpec

from .catalog import BenchCase, compile_mode
from .phases import PhaseClock
from .session import Session, _in_phase

if TYPE_CHECKING:
    from streamllm.decode_slice import DecodeSlice


class SliceProbes:
    """The row's numerics, holdings, work counts and floor, on the slices `Measurements` keeps."""

    session: Session
    _slices: dict[tuple[str, str], DecodeSlice]
    _reference_slices: dict[tuple[str, str], DecodeSlice]

    def __init__(self) -> None:
        self.bandwidth: float | None = None  # GB/s, calibration.copy_bandwidth_GBps, once per process
        self._calibrations: dict[tuple, OwnPath] = {}
        self._layer0: dict[tuple, torch.Tensor] = {}  # (dataset, weights) -> each token's layer-0 value

    @property
    def phases(self) -> PhaseClock:
        return self.session.phases

    def own_numerics(self, case: BenchCase, dataset: str) -> tuple[Holding | None, OwnPath | None, OwnPath | None]:
        """(holding, own path, calibration path): a dynamic row's end-of-slice holdings, a static or
        ring row's own path with its calibration path. Taken before counting feeds the slice more steps."""
        holding = self.holding(case, dataset)
        own = self.own_path(case, dataset)
        return holding, own, (self.calibration(case, dataset) if own is not None else None)

    def own_path(self, case: BenchCase, dataset: str) -> OwnPath | None:
        """A static or ring row's own path across its first evictions: its timed slice's cache
        refilled with the text's first tokens and decoded by the same decoder (compiled step and
        captured graphs included, so nothing recompiles). None for the other rows: a dynamic
        cache's timed slice starts from real K/V, so its timed steps are its own path already."""
        if case.spec.capacity is None or case.spec.cache == "dynamic":
            return None
        slice_ = self._slices.get((dataset, case.id))
        loaded = self.session.model(case.transform)
        with self.phases.phase("own path + probe"):
            if slice_ is None:  # not timed (--no-timing): a cache and decoder of its own
                factory = decoder_factory(compile_mode(case), loaded.device, case.spec.cache)
                return own_path(loaded, self.session.text(dataset).ids, case.spec, decoder_factory=factory)
            return own_path(loaded, self.session.text(dataset).ids, case.spec, cache=slice_.cache,
                            decoder=slice_.decoder)

    def calibration(self, case: BenchCase, dataset: str) -> OwnPath:
        """The same slice through the eager dynamic cache on the same weights: a second correct path,
        whose distance to the reference sets the own-path tolerance."""
        spec = dataclasses.replace(case.spec, cache="dynamic")
        key = (dataset, case.transform, spec)
        if key not in self._calibrations:
            with self.phases.phase("own path + probe"):
                self._calibrations[key] = own_path(self.session.model(case.transform), self.session.text(dataset).ids,
                                                   spec)
        return self._calibrations[key]

    def holding(self, case: BenchCase, dataset: str) -> Holding | None:
        """The tokens a dynamic-cache row's timed (or token-loop) slice holds after its last step,
        read from its tensors, with the schedule's. Taken before counting feeds it more steps."""
        if case.spec.capacity is None or case.spec.cache != "dynamic":
            return None
        slice_ = self._slices.get((dataset, case.id))
        if slice_ is None or slice_.cursor < 1:  # not timed: the eager path of its spec and weights
            return self.calibration(case, dataset).holdings[-1]
        with self.phases.phase("own path + probe"):
            loaded = self.session.model(case.transform)
            ids = self.session.text(dataset).ids.to(loaded.device)
            key = (dataset, self.session.weights.weights(case.transform))
            if key not in self._layer0:  # context-free: one forward of the text serves every row
                self._layer0[key] = layer0_values(reference_kv(loaded, ids, ids.numel()))
            step = slice_.cursor - 1
            return Holding(step, held_tokens(slice_.cache, self._layer0[key], ids, step),
                           expected_tokens(case.spec, slice_.cache, ids, step))

    @_in_phase("counting")
    def count(self, case: BenchCase, dataset: str) -> WorkCounts | None:
        """(b) work counters: one steady-state round of separate, untimed steps of the case's own
        decoder, after its timing (feeding the text on; counts do not depend on which tokens)."""
        if not self.session.options.count_work:
            return None
        slice_ = self._slices.get((dataset, case.id))
        if slice_ is None:
            return None
        return self._count_slice(case, slice_, case.spec, f"{compile_mode(case)}/{type(slice_.decoder).__name__}")

    @_in_phase("counting")
    def count_reference(self, case: BenchCase, dataset: str) -> WorkCounts | None:
        """As many steps of the case's reference arm (what the model's forward costs at |C| without
        our cache code: across a transformers release, case minus reference is the strategy's own
        work). Counted only when the judge asks (a recording stores it; a check whose counter key
        is stored compares the case alone): it is half of a check's counting."""
        reference = self._reference_slices.get((dataset, case.id)) if self.session.options.count_work else None
        if reference is None:
            return None
        held = {"reference": "transformers DynamicCache", "held": reference.cache.length}
        return self._count_slice(case, reference, held, f"none/{type(reference.decoder).__name__}")

    def _count_slice(self, case: BenchCase, slice_: DecodeSlice, strategy: StrategySpec | dict,
                     decoder: str) -> WorkCounts:
        steps, cycle = self.session.geometry(case)
        ids = slice_.ids
        start = slice_.cursor

        def step() -> object:
            # wrap around at the end of the text: the counts do not depend on the tokens fed
            t = start + (step.calls % max(1, ids.numel() - 1 - start)) if start < ids.numel() - 1 else 0
            step.calls += 1
            return slice_.decoder.step(ids[t : t + 1].view(1, 1))

        step.calls = 0
        loaded = self.session.model(case.transform)
        graphs = getattr(slice_.decoder, "graphs", None)
        context = slice_.cache.length if case.spec.capacity is None else None
        wkey = counter_key(loaded.model, device=loaded.device, strategy=strategy, decoder=decoder, context=context,
                           extra={"transform": case.transform, "steps": steps})
        # One uncounted step, not a whole cycle: the slice was just timed, so first-call work (RoPE
        # tables, masks, graph capture) is done, and a whole cycle's counts do not depend on the
        # phase it starts at (tests/test_counters.py). A cycle of warm-up cost a third of counting.
        raw = count_work(step, steps, cycle=cycle, warmup=1, device=loaded.device, graphs=graphs)
        return WorkCounts.from_raw(raw, wkey)

    def step_floor_ms(self, case: BenchCase, kv_length_max: int) -> float:
        """The step's memory floor: every weight once + the K/V it attends (mean over a cycle), at
        this device's measured copy bandwidth (measured once per session). `kv_length_max`: the
        timed run's largest |C_t| + 1 (a dense row's context)."""
        loaded = self.session.model(case.transform)
        if self.bandwidth is None:
            self.bandwidth = copy_bandwidth_GBps(loaded.device)
        context = kv_length_max - 1 if case.spec.capacity is None else None
        nbytes = analytic_step_bytes(loaded.model, mean_attended_slots(case.spec, context))
        return floor_ms(nbytes, self.bandwidth)

    @staticmethod
    def slice_agreement(evaluation: EvalResult, positions: list[int], nll: list[float], fill_mode: str) -> float | None:
        """max |NLL(timed decode) - NLL(evaluator)| over the timed steps (their text `positions` and
        `nll`): do the cache being timed and the scored semantics agree?"""
        if not positions or evaluation.trace is None or fill_mode == "random":
            return None  # random K/V (timing-only fill) cannot reproduce the text's NLL
        ref = np.asarray(evaluation.trace.nll)[np.asarray(positions)]
        return float(np.max(np.abs(np.asarray(nll) - ref)))


# -- the (a) checks' inputs as the raw record keeps them (bench/measuring.py raw_case) ---------------
def raw_nll(evaluation: EvalResult | None) -> RawNll | None:
    if evaluation is None or evaluation.trace is None or not evaluation.trace.nll:
        return None
    nll = np.asarray(evaluation.trace.nll, dtype=float)
    nll = nll[np.isfinite(nll)]
    if not nll.size:
        return None
    return RawNll(count=int(nll.size), mean=float(nll.mean()), max=float(nll.max()),
                  p99=float(np.percentile(nll, 99)))


def raw_holding(h: Holding | None) -> RawHolding | None:
    return None if h is None else RawHolding(step=h.step, held=list(h.held), expected=list(h.expected))


def raw_eviction(spec: StrategySpec, ev: EvalResult | None, holding: Holding | None) -> RawEviction | None:
    """The eviction check's inputs: the strategy's parameters, the evaluation's prune events and
    attended lengths, a dynamic row's end-of-slice holdings (the own path's are in `raw_own_path`)."""
    if ev is None:
        return None
    trace = ev.trace
    return RawEviction(spec=dataclasses.asdict(spec), tokens=ev.tokens,
                       prune_steps=list(trace.prune_steps) if trace is not None else None,
                       kv_length=list(trace.kv_length) if trace is not None and trace.kv_length is not None else None,
                       holding=raw_holding(holding))


def raw_own_path(own: OwnPath | None, cal: OwnPath | None, ev: EvalResult | None) -> RawOwnPath | None:
    """A static or ring row's own path, its calibration path and the evaluator's NLL at their steps."""
    if own is None:
        return None
    nll = np.asarray(ev.trace.nll, dtype=float) if ev is not None and ev.trace is not None else None
    return RawOwnPath(
        strategy=own.strategy, cache=own.cache, decoder=own.decoder, fill=own.fill, steps=list(own.steps),
        nll=[float(x) for x in own.nll], events=list(own.events), holdings=[raw_holding(h) for h in own.holdings],
        reference=f"the {ev.evaluator} evaluator" if ev is not None else None,
        reference_nll=nll[list(own.steps)].tolist() if nll is not None else None,
        calibration_steps=list(cal.steps) if cal is not None else None,
        calibration_nll=[float(x) for x in cal.nll] if cal is not None else None,
        calibration_reference_nll=nll[list(cal.steps)].tolist() if cal is not None and nll is not None else None)
