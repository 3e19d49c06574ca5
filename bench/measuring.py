"""Measuring one case: its per-token NLL (the exact parallel evaluator or the token loop), its steps
timed interleaved with a reference arm, its work counted, its memory floor, and a finding's paired
timing. Memoized per (dataset, case): a finding's reference strategy is measured once, whichever
case needs it first. Only measures: what the numbers mean is bench/judging.py's business."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from streamllm.calibration import CalibrationArm, copy_bandwidth_GBps
from streamllm.decode_slice import DecodeSlice, prepare_slice, reference_slice
from streamllm.decoders import decoder_factory
from streamllm.evaluate import build_result
from streamllm.floor import analytic_step_bytes, floor_ms, mean_attended_slots
from streamllm.harness.judge_ratio import RatioCI, ratio_ci
from streamllm.harness.opcount import count_work
from streamllm.harness.workrecord import WorkCounts, counter_key
from streamllm.measure import TimingRun, steps_per_round, time_interleaved
from streamllm.ownpath import Holding, OwnPath, expected_tokens, held_tokens, layer0_values, own_path, reference_kv
from streamllm.parallel import evaluate_parallel
from streamllm.parallel_schedule import supports_parallel
from streamllm.results import EvalResult, TokenTrace

from .catalog import BenchCase, compile_mode
from .phases import PhaseClock
from .session import Session, _in_phase


class Measurements:
    def __init__(self, session: Session):
        self.session = session
        self._evals: dict[tuple, EvalResult] = {}
        self._timings: dict[tuple[str, str], TimingRun] = {}
        self.references: dict[tuple[str, str], TimingRun] = {}  # each case's reference arm
        self._slices: dict[tuple[str, str], DecodeSlice] = {}  # kept until a rerun is decided
        self._reference_slices: dict[tuple[str, str], DecodeSlice] = {}
        self.bandwidth: float | None = None  # GB/s, calibration.copy_bandwidth_GBps, once per process
        self._calibrations: dict[tuple, OwnPath] = {}
        self._layer0: dict[tuple, torch.Tensor] = {}  # (dataset, weights) -> each token's layer-0 value
        self._torch_only: CalibrationArm | None = None  # the run's calibration arm, timed after each case

    @property
    def phases(self) -> PhaseClock:
        return self.session.phases

    def release(self, case: BenchCase, dataset: str) -> None:
        """Drop the case's caches once it is judged (they were kept for a rerun)."""
        self._slices.pop((dataset, case.id), None)
        self._reference_slices.pop((dataset, case.id), None)

    # -- measurements --------------------------------------------------------------------------
    @_in_phase("PPL")
    def evaluate(self, case: BenchCase, dataset: str) -> EvalResult:
        """Per-token NLL and PPL of a case: the parallel evaluator where it is exact, else the token loop.

        Static/ring caches and torch.compile change how a step runs, not which tokens it attends,
        so for the parallel evaluator they share the dynamic strategy's evaluation (on the same
        weights); the timed decode slice then checks *their* numerics against it
        (`_slice_agreement`). Memoized: a finding's reference is evaluated once per dataset."""
        key = (dataset, case.id)
        if key not in self._evals:
            loaded = self.session.model(case.transform)
            text = self.session.text(dataset)
            use_parallel, why = False, "--evaluator token"
            if self.session.options.evaluator == "auto":
                    use_parallel, why = supports_parallel(case.spec, loaded.model)
            if use_parallel:
                weights = "int8" if case.transform == "int8" else None
                shared = ("parallel", dataset, dataclasses.replace(case.spec, cache="dynamic"), weights)
                if shared not in self._evals:
                    self._evals[shared] = evaluate_parallel(loaded, text.ids, dataclasses.replace(case.spec, cache="dynamic"),
                                                            dataset=text.name, dataset_sha256=text.sha256,
                                                            chunk_size=self.session.options.chunk_size)
                result = self._evals[shared]
            else:
                result = self._loop(case, dataset)
                result.notes.append(f"token-loop evaluator: {why}")
            # the label carries the cache kind and transform: they are part of what was measured
            self._evals[key] = dataclasses.replace(result, strategy=case.label, params=case.params(),
                                                   notes=list(result.notes))
        return self._evals[key]

    def new_slice(self, case: BenchCase, dataset: str, timed_steps: int | None = None,
                  real_fill: bool = False) -> DecodeSlice:
        loaded = self.session.model(case.transform)
        steps, _ = self.session.geometry(case)
        if timed_steps is None:
            timed_steps = steps * (self.session.options.warmup_rounds + self.session.rounds_for(case))
        factory = decoder_factory(compile_mode(case), loaded.device, case.spec.cache)
        return prepare_slice(loaded, self.session.text(dataset).ids, case.spec, timed_steps=timed_steps,
                             decoder_factory=factory, real_fill=real_fill)

    def timing(self, case: BenchCase, dataset: str, benchmark=None) -> TimingRun:
        """Time a case interleaved with its reference arm (through pytest-benchmark when given),
        memoized per (dataset, case)."""
        key = (dataset, case.id)
        if key not in self._timings and self.session.uses_loop(case):
            self._loop(case, dataset, benchmark)
        if key in self._timings:
            return self._timings[key]
        steps, cycle = self.session.geometry(case)
        slice_ = self.new_slice(case, dataset)
        self._timings[key] = self._time(case, dataset, slice_, steps, cycle, self.session.rounds_for(case), benchmark)
        self._slices[key] = slice_
        return self._timings[key]

    def reference_length(self, case: BenchCase, slice_: DecodeSlice) -> int:
        """|C| the reference arm holds: what the case attends at steady state (dense: where its slice starts)."""
        if case.spec.capacity is None:
            return slice_.cursor
        return case.spec.sink + case.spec.effective_window

    @_in_phase("timing")
    def _time(self, case: BenchCase, dataset: str, slice_: DecodeSlice, steps: int, cycle: int, rounds: int,
              benchmark) -> TimingRun:
        """The case's rounds interleaved step for step with its reference arm (measure.time_interleaved)."""
        key = (dataset, case.id)
        loaded = self.session.model(case.transform)
        reference = reference_slice(loaded, self.session.text(dataset).ids, self.reference_length(case, slice_))
        self._reference_slices[key] = reference
        if benchmark is not None and getattr(benchmark, "disabled", False):
            benchmark.pedantic(lambda: None)  # --benchmark-disable: pedantic would run the target once, untimed
            benchmark = None
        run, ref = time_interleaved(slice_, reference, steps=steps, cycle=cycle, rounds=rounds,
                                    warmup_rounds=self.session.options.warmup_rounds, benchmark=benchmark)
        self.references[key] = ref
        if self._torch_only is None:
            self._torch_only = CalibrationArm(loaded.device)
        self._torch_only.measure()
        return run

    @property
    def calibration_ms(self) -> list[float]:
        """The torch-only calibration arm's samples so far (ms; device time on CUDA)."""
        return list(self._torch_only.samples) if self._torch_only is not None else []

    @_in_phase("token loop (PPL + timing)")
    def _loop(self, case: BenchCase, dataset: str, benchmark=None) -> EvalResult:
        """Token-loop evaluation whose steady-state steps are also the timing rounds.

        The cache is filled to capacity by one chunked forward (its logits are the token loop's
        NLL for those steps: nothing is evicted before), then the rest of the text is decoded in
        rounds of whole eviction cycles through pytest-benchmark; every step's NLL is recorded
        (outside the timed region), so one pass gives both the PPL and the TPOT samples. A
        refresh run costs one token loop instead of a token loop plus a timing slice."""
        key = ("loop", dataset, case.id)
        if key in self._evals:
            return self._evals[key]
        loaded = self.session.model(case.transform)
        text = self.session.text(dataset)
        steps, cycle = self.session.geometry(case)
        slice_ = self.new_slice(case, dataset, timed_steps=0, real_fill=True)
        fill = slice_.cursor
        rounds = min(self.session.rounds_for(case), slice_.remaining // steps - self.session.options.warmup_rounds)
        if rounds < 1:
            raise ValueError(f"{case.label}: {text.ids.numel()} tokens leave no whole round of {steps} steps after "
                             f"filling {fill}: raise --tokens")
        run = self._time(case, dataset, slice_, steps, cycle, rounds, benchmark)
        if slice_.remaining and not self.session.options.dummy:
            # the text's tail: scored, not a whole round, not a sample. Dummy weights have no PPL
            # worth the tail's steps: their evaluation ends with the timed rounds.
            slice_.run(slice_.remaining)
        positions, prunes, evicted = slice_.positions, slice_.pruned, slice_.evicted
        nan = float("nan")
        trace = TokenTrace(
            nll=list(slice_.fill_nll) + list(slice_.nll),
            step_ms=[nan] * fill + list(slice_.step_ms),
            kv_length=list(range(1, fill + 1)) + list(slice_.kv_length),
            position=list(range(fill)) + list(slice_.fed_position),
            prune_steps=[t for t, p in zip(positions, prunes, strict=True) if p],
            evicted=[e for e, p in zip(evicted, prunes, strict=True) if p],
        )
        result = build_result(loaded, case.spec, trace, len(trace.nll) + 1, text.name, text.sha256, "token",
                              self.session.options.warmup_rounds * steps)
        self._evals[key] = result
        self._timings[(dataset, case.id)] = run
        self._slices[(dataset, case.id)] = slice_
        return result

    def rerun(self, case: BenchCase, dataset: str) -> tuple[list[float], list[float]]:
        """More interleaved rounds on the same caches after an inconclusive verdict: twice the
        rounds, as far as the text allows. Returns (case samples, reference samples)."""
        steps, cycle = self.session.geometry(case)
        key = (dataset, case.id)
        slice_, reference = self._slices.get(key), self._reference_slices.get(key)
        if slice_ is None or reference is None:
            return [], []
        rounds = min(2 * self.session.rounds_for(case), slice_.remaining // steps)
        if rounds < 1:
            return [], []
        more, ref = time_interleaved(slice_, reference, steps=steps, cycle=cycle, rounds=rounds, warmup_rounds=0)
        self._timings[key].rerun_samples.extend(more.samples)
        self.references[key].rerun_samples.extend(ref.samples)
        return more.samples, ref.samples

    # -- the row's own numerics and holdings (streamllm.ownpath) --------------------------------
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
    def count(self, case: BenchCase, dataset: str) -> tuple[WorkCounts | None, WorkCounts | None]:
        """(b) work counters: one steady-state round of separate, untimed steps of the case's own
        decoder, after its timing (feeding the text on; counts do not depend on which tokens),
        and as many steps of its reference arm (what the model's forward costs at |C| without our
        cache code: across a transformers release, case minus reference is the strategy's own work)."""
        if not self.session.options.count_work:
            return None, None
        key = (dataset, case.id)
        slice_ = self._slices.get(key)
        if slice_ is None:
            return None, None
        work = self._count_slice(case, slice_, case.spec, f"{compile_mode(case)}/{type(slice_.decoder).__name__}")
        reference = self._reference_slices.get(key)
        if reference is None:
            return work, None
        held = {"reference": "transformers DynamicCache", "held": reference.cache.length}
        return work, self._count_slice(case, reference, held, f"none/{type(reference.decoder).__name__}")

    def _count_slice(self, case: BenchCase, slice_, strategy, decoder: str) -> WorkCounts:
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
        raw = count_work(step, steps, cycle=cycle, warmup=cycle, device=loaded.device, graphs=graphs)
        return WorkCounts.from_raw(raw, wkey)

    def step_floor_ms(self, case: BenchCase, timing: TimingRun) -> float:
        """The step's memory floor: every weight once + the K/V it attends (mean over a cycle), at
        this device's measured copy bandwidth (measured once per session)."""
        loaded = self.session.model(case.transform)
        if self.bandwidth is None:
            self.bandwidth = copy_bandwidth_GBps(loaded.device)
        context = timing.kv_length_max - 1 if case.spec.capacity is None else None
        nbytes = analytic_step_bytes(loaded.model, mean_attended_slots(case.spec, context))
        return floor_ms(nbytes, self.bandwidth)

    @_in_phase("findings timing")
    def paired_ratio(self, case: BenchCase, other: BenchCase, dataset: str) -> RatioCI:
        """TPOT(case) / TPOT(other), the two timed step for step in fresh slices (measure.time_interleaved):
        a TPOT finding compares two strategies, and timings taken minutes apart on a shared machine
        differ by more than the finding's band."""
        steps = steps_per_round(math.lcm(case.cycle, other.cycle), self.session.options.min_steps)
        rounds = max(4, self.session.options.rounds * self.session.options.min_steps // steps)
        warmup = max(1, self.session.options.warmup_rounds)  # fresh slices: first calls pay one-time costs
        timed = steps * (warmup + rounds)
        arms = [self.new_slice(c, dataset, timed_steps=timed) for c in (case, other)]
        a, b = time_interleaved(arms[0], arms[1], steps=steps, cycle=steps, rounds=rounds, warmup_rounds=warmup)
        return ratio_ci(a.samples, b.samples)

    def slice_agreement(self, evaluation: EvalResult, timing: TimingRun) -> float | None:
        """max |NLL(timed decode) - NLL(evaluator)| over the timed steps: do the cache being timed
        and the scored semantics agree?"""
        if not timing.positions or evaluation.trace is None or timing.fill_mode == "random":
            return None  # random K/V (timing-only fill) cannot reproduce the text's NLL
        ref = np.asarray(evaluation.trace.nll)[np.asarray(timing.positions)]
        return float(np.max(np.abs(np.asarray(timing.nll) - ref)))
