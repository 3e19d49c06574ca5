"""The suite's session state and the measurement of one (strategy, dataset) case.

One `Suite` lives on the pytest config (`config.stash`), created by the top-level conftest.py
from the command-line options. It owns the loaded models (one per transform), the tokenized
texts, the memoized measurements (a finding's reference strategy is measured once and shared,
whichever test needs it first), the results for the verdict table and the run JSON, and the
records to write under --update-baselines. Nothing is module-global.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from streamllm.combinations import GRAPH_MODES
from streamllm.floor import analytic_step_bytes, floor_ms, mean_attended_slots
from streamllm.harness.baselines import (
    BaselineKey,
    BaselineRecord,
    BaselineStore,
    make_provenance,
)
from streamllm.harness.counters import WorkCounts, count_work, counter_key
from streamllm.harness.fingerprint import fingerprint_id, hardware_fingerprint
from streamllm.harness.history import RunHistory
from streamllm.harness.judges import (
    HistoryInputs,
    check_device_time,
    check_history,
    check_ppl,
    check_ratio_vs_baseline,
    check_work,
    lookup,
)
from streamllm.harness.ratio import RatioCI, ratio_ci
from streamllm.harness.records import DEFAULT_HISTORY_DIR, DEFAULT_REPORT_DIR, RUN_SCHEMA, validate_run
from streamllm.harness.stats import ppl_ratio_ci
from streamllm.harness.verdicts import (
    AGREEMENT_CHECK,
    FAIL,
    HISTORY_RAW,
    IMPROVEMENT,
    NOT_APPLICABLE,
    NOT_CHECKED,
    PASS,
    RATIO_CHECK,
    REGRESSION,
    WORK_CHECK,
    Check,
    armed,
    armed_summary,
    ratio_key,
    slice_tolerance,
    sub_checks,
    summarize,
)
from streamllm.measure import (
    DecodeSlice,
    TimingRun,
    copy_bandwidth_GBps,
    prepare_slice,
    reference_slice,
    speedup,
    steps_per_round,
    time_interleaved,
)
from streamllm.profile import WeightSets
from streamllm.results import EvalResult, write_json_atomic

from .catalog import DEFAULT_SINK, DEFAULT_TOKENS, DEFAULT_WINDOW, BenchCase, build_catalog, compile_mode
from .findings import check_finding, findings_for
from .phases import PhaseClock

NOISE_NOTE = ("CPU timings from a shared 2-core VM: other processes compete for the cores (steal time), "
              "so TPOT samples are noisy; compare only within one fingerprint")


@dataclass(frozen=True)
class SuiteOptions:
    model: str = "embedded"
    datasets: tuple[str, ...] = ("book", "wiki")
    tokens: int = DEFAULT_TOKENS
    device: str = "cpu"
    dtype: str = "float32"
    strategies: str = "default"
    sweep: str | None = None  # the --sweep names (already folded into `strategies` as sweep:NAME)
    sink: int = DEFAULT_SINK
    window: int = DEFAULT_WINDOW
    rounds: int = 8  # measured rounds of a strict case; long-cycle cases take fewer, longer ones (rounds_for)
    warmup_rounds: int = 1
    min_steps: int = 8  # steps per round, rounded up to whole eviction cycles
    update_baselines: bool = False
    # with update_baselines: add this run's timing to the stored records as one more run (pools the
    # run-to-run spread that sets the TPOT band) instead of replacing them
    append_baselines: bool = False
    baselines_dir: str = "baselines"
    report_dir: str | None = DEFAULT_REPORT_DIR  # run JSON goes to <report_dir>/runs/; None: not written
    history_dir: str = DEFAULT_HISTORY_DIR  # the run history the absolute check reads (tracked)
    threads: int | None = None
    tpot_tolerance: float = 0.10
    evaluator: str = "auto"  # auto (parallel where exact, else token loop) | token
    chunk_size: int = 512
    baseline_note: str = ""  # provenance note for --update-baselines (default: says the device)
    nightly: bool = False  # absolute TPOT: flag a row only when the previous run flagged it too
    history_k: int = 5  # absolute TPOT baseline: the last K accepted runs of this machine
    count_work: bool = True  # (b) work counters: count one cycle of separate steps per case
    # Why this run measures PPL only (--no-timing, or -n on CPU: bench/xdist.py); None: timing runs.
    no_timing: str | None = None
    device_map: str | None = None  # "auto": accelerate spreads the model over the visible GPUs
    max_memory: str | None = None  # with device_map: per-device caps, "0=20GiB,1=20GiB,cpu=64GiB"

    @property
    def dummy(self) -> bool:
        return self.model.startswith("dummy:")

    @property
    def device_type(self) -> str:
        return torch.device(self.device).type if self.device not in ("auto", None) else (
            "cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Text:
    name: str  # dataset label ("synthetic" for dummy-weight models)
    sha256: str
    ids: torch.Tensor


@dataclass
class CaseResult:
    case: BenchCase
    dataset: str
    evaluation: EvalResult | None = None
    timing: TimingRun | None = None
    reference_timing: TimingRun | None = None  # the interleaved reference arm (measure.reference_slice)
    ratio: RatioCI | None = None  # case / reference, per round, same process
    work: WorkCounts | None = None
    reference_work: WorkCounts | None = None  # the reference arm counted over the same steps
    speedup: float | None = None
    floor_ms: float | None = None  # analytic bytes a step must read / measured copy bandwidth

    @property
    def bound(self) -> str | None:
        """On CUDA: "device" when the kernels keep the GPU busy for most of a step (summed kernel
        time from the counting pass >= 80 % of wall TPOT), else "host" (launch/Python bound)."""
        busy = self.work.device_busy_us if self.work is not None else None
        if busy is None or self.timing is None or not self.work.steps:
            return None
        share = busy / self.work.steps / 1e3 / self.timing.mean_ms
        return f"{'device' if share >= 0.8 else 'host'} ({share:.0%} busy)"
    ppl_delta_vs_dense_pct: float | None = None
    slice_nll_max_abs_diff: float | None = None
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    skipped: str | None = None  # reason, when the case could not run here

    @property
    def verdicts(self) -> dict[str, str]:
        return {"a": summarize(self.checks, "ppl"), "b": summarize(self.checks, "tpot"),
                "c": summarize(self.checks, "finding")}

    def row(self) -> dict:
        ev, tm = self.evaluation, self.timing
        return {
            "dataset": self.dataset,
            "case": self.case.id,
            "label": self.case.label,
            "ppl": ev.ppl if ev else None,
            "ppl_delta_vs_dense_pct": self.ppl_delta_vs_dense_pct,
            "tpot_ms_mean": tm.mean_ms if tm else None,
            "tpot_ms_median": tm.median_ms if tm else None,
            "speedup": self.speedup,
            "tpot_over_floor": self.timing.mean_ms / self.floor_ms if self.floor_ms and self.timing else None,
            "bound": self.bound,
            "verdicts": self.verdicts if not self.skipped else {"a": "skip", "b": "skip", "c": "skip"},
            # (b) per sub-check, and whether the row is armed (work counts and a TPOT check live)
            "sub": sub_checks(self.checks) if not self.skipped else None,
            "armed": armed(self.checks)[0] if self.timing is not None else None,
            "armed_why": armed(self.checks)[1] if self.timing is not None else None,
            "skipped": self.skipped,
        }

    def to_json(self) -> dict:
        ev = self.evaluation
        out = {
            **self.row(),
            "transform": self.case.transform,
            "sweeps": list(self.case.sweeps),  # the report draws one curve per sweep
            "params": self.case.params(),
            "seconds": self.seconds,
            "slice_nll_max_abs_diff": self.slice_nll_max_abs_diff,
            "evaluation": ev.summary() if ev else None,
            "timing": self.timing.summary() if self.timing else None,
            "reference_timing": self.reference_timing.summary() if self.reference_timing else None,
            "ratio": self.ratio.as_dict() if self.ratio else None,
            "work": self.work.to_json() if self.work else None,
            "reference_work": self.reference_work.to_json() if self.reference_work else None,
            "timing_step_ms": self.timing.step_ms if self.timing else None,
            # text index and prune flag of each timed step: the phase A diagnostics put the step
            # times next to the per-token NLL and KV length
            "timing_positions": self.timing.positions if self.timing else None,
            "timing_prune_flags": self.timing.prune_flags if self.timing else None,
            "checks": [c.to_dict() for c in self.checks],
        }
        if ev is not None and ev.trace is not None:
            out["trace"] = {"nll": ev.trace.nll, "prune_steps": ev.trace.prune_steps,
                            "kv_length": ev.trace.kv_length, "evicted": ev.trace.evicted,
                            "step_ms": ev.trace.step_ms}  # NaN (null) for the parallel evaluator
        return _finite(out)


def _in_phase(name: str):
    """Book a Suite method's time to a phase of the PhaseClock."""
    def wrap(method):
        @functools.wraps(method)
        def timed(self, *args, **kwargs):
            with self.phases.phase(name):
                return method(self, *args, **kwargs)
        return timed
    return wrap


# History entry of a case's reference arm: "<dataset>/<case>:reference".
REFERENCE_SUFFIX = ":reference"


class Suite:
    def __init__(self, options: SuiteOptions, rootdir: Path):
        self.options = options
        self.rootdir = rootdir
        self.threads = options.threads or (1 if options.device_type == "cpu" else None)
        self.weights = WeightSets(options.model, options.dtype, options.device, device_map=options.device_map,
                                  max_memory=options.max_memory)
        # The context sweep's arms straddle the model's trained context, so the catalog needs it:
        # loaded (config and weights) only when that sweep is asked for.
        positions = self.model().max_positions if "sweep:context" in options.strategies else None
        self.catalog = build_catalog(options.sink, options.window, context_positions=positions)
        self.store = BaselineStore(self._under_root(options.baselines_dir))
        self.started = time.time()
        self.phases = PhaseClock()  # where the process's time goes (printed under the table)
        self.results: list[CaseResult] = []
        self.records: list[BaselineRecord] = []
        self.written: list[Path] = []  # baseline files written by the update
        self.run_file: Path | None = None
        self._texts: dict[str, Text] = {}
        self._evals: dict[tuple, EvalResult] = {}
        self._timings: dict[tuple[str, str], TimingRun] = {}
        self._references: dict[tuple[str, str], TimingRun] = {}
        self._slices: dict[tuple[str, str], DecodeSlice] = {}  # kept until a rerun is decided
        self._reference_slices: dict[tuple[str, str], DecodeSlice] = {}
        self.history_results: dict[str, list[float]] = {}  # case key -> this run's absolute samples
        self.history_verdicts: dict[str, str] = {}
        self._fingerprint: dict | None = None
        self._bandwidth: float | None = None  # GB/s, measure.copy_bandwidth_GBps
        # torch's thread count is process-wide: the suite sets it for its session and `close`
        # gives the previous value back.
        self._threads_before = torch.get_num_threads()
        if self.threads:
            # One thread by default on CPU: on a shared 2-core VM, two OpenMP threads spin-wait on
            # each other whenever one is descheduled (measured under load: 500 ms/step with 2
            # threads vs 74 ms with 1), so one thread is both faster there and far less noisy.
            torch.set_num_threads(self.threads)

    def close(self) -> None:
        """End of the session: torch's thread count back to what it was before the suite."""
        torch.set_num_threads(self._threads_before)

    @property
    def history_root(self) -> Path:
        return self._under_root(self.options.history_dir)

    def _under_root(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else self.rootdir / p

    # -- environment ---------------------------------------------------------------------------
    @property
    def fingerprint(self) -> dict:
        if self._fingerprint is None:
            self._fingerprint = hardware_fingerprint(self.options.device, threads=self.threads or torch.get_num_threads())
        return self._fingerprint

    @property
    def fingerprint_id(self) -> str:
        return fingerprint_id(self.fingerprint)

    def case(self, case_id: str) -> BenchCase:
        return next(c for c in self.catalog if c.id == case_id)

    @_in_phase("load")
    def model(self, transform: str | None = None):
        """The loaded model, one instance per weight transform (INT8 quantizes in place)."""
        return self.weights.get(transform)

    def text(self, dataset: str) -> Text:
        from streamllm.data import load_text, synthetic_ids, tokenize

        if dataset not in self._texts:
            loaded = self.model()
            if loaded.tokenizer is None:  # dummy weights: random ids, quality meaningless
                ids = synthetic_ids(loaded.model.config.vocab_size, self.options.tokens)
                self._texts[dataset] = Text("synthetic", "synthetic", ids)
            else:
                text = load_text(dataset)
                self._texts[dataset] = Text(text.name, text.sha256, tokenize(loaded.tokenizer, text, self.options.tokens))
        return self._texts[dataset]

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
            loaded = self.model(case.transform)
            text = self.text(dataset)
            use_parallel, why = False, "--evaluator token"
            if self.options.evaluator == "auto":
                from streamllm.parallel import supports_parallel

                use_parallel, why = supports_parallel(case.spec, loaded.model)
            if use_parallel:
                from streamllm.parallel import evaluate_parallel

                weights = "int8" if case.transform == "int8" else None
                shared = ("parallel", dataset, dataclasses.replace(case.spec, cache="dynamic"), weights)
                if shared not in self._evals:
                    self._evals[shared] = evaluate_parallel(loaded, text.ids, dataclasses.replace(case.spec, cache="dynamic"),
                                                            dataset=text.name, dataset_sha256=text.sha256,
                                                            chunk_size=self.options.chunk_size)
                result = self._evals[shared]
            else:
                result = self._loop(case, dataset)
                result.notes.append(f"token-loop evaluator: {why}")
            # the label carries the cache kind and transform: they are part of what was measured
            self._evals[key] = dataclasses.replace(result, strategy=case.label, params=case.params(),
                                                   notes=list(result.notes))
        return self._evals[key]

    def geometry(self, case: BenchCase) -> tuple[int, int]:
        """(steps per round, cycle) of a case."""
        return steps_per_round(case.cycle, self.options.min_steps), case.cycle

    def rounds_for(self, case: BenchCase) -> int:
        """Measured rounds: --rounds for cases whose round is --steps-per-round steps; a case whose
        eviction cycle makes its rounds k times longer takes k times fewer (at least 4), since a
        longer round is a quieter sample. Keeps every case near the same number of timed steps."""
        steps, _ = self.geometry(case)
        return max(min(4, self.options.rounds), math.ceil(self.options.rounds * self.options.min_steps / steps))

    def uses_loop(self, case: BenchCase) -> bool:
        """True when the case's PPL comes from the token loop (refresh, or --evaluator token)."""
        if self.options.evaluator != "auto":
            return True
        from streamllm.parallel import supports_parallel

        return not supports_parallel(case.spec, self.model(case.transform).model)[0]

    def new_slice(self, case: BenchCase, dataset: str, timed_steps: int | None = None,
                  real_fill: bool = False) -> DecodeSlice:
        from streamllm.decode import decoder_factory

        loaded = self.model(case.transform)
        steps, _ = self.geometry(case)
        if timed_steps is None:
            timed_steps = steps * (self.options.warmup_rounds + self.rounds_for(case))
        factory = decoder_factory(compile_mode(case), loaded.device, case.spec.cache)
        return prepare_slice(loaded, self.text(dataset).ids, case.spec, timed_steps=timed_steps,
                             decoder_factory=factory, real_fill=real_fill)

    def timing(self, case: BenchCase, dataset: str, benchmark=None) -> TimingRun:
        """Time a case interleaved with its reference arm (through pytest-benchmark when given),
        memoized per (dataset, case)."""
        key = (dataset, case.id)
        if key not in self._timings and self.uses_loop(case):
            self._loop(case, dataset, benchmark)
        if key in self._timings:
            return self._timings[key]
        steps, cycle = self.geometry(case)
        slice_ = self.new_slice(case, dataset)
        self._timings[key] = self._time(case, dataset, slice_, steps, cycle, self.rounds_for(case), benchmark)
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
        loaded = self.model(case.transform)
        reference = reference_slice(loaded, self.text(dataset).ids, self.reference_length(case, slice_))
        self._reference_slices[key] = reference
        if benchmark is not None and getattr(benchmark, "disabled", False):
            benchmark.pedantic(lambda: None)  # --benchmark-disable: pedantic would run the target once, untimed
            benchmark = None
        run, ref = time_interleaved(slice_, reference, steps=steps, cycle=cycle, rounds=rounds,
                                    warmup_rounds=self.options.warmup_rounds, benchmark=benchmark)
        self._references[key] = ref
        return run
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
        from streamllm.evaluate import build_result
        from streamllm.results import TokenTrace

        loaded = self.model(case.transform)
        text = self.text(dataset)
        steps, cycle = self.geometry(case)
        slice_ = self.new_slice(case, dataset, timed_steps=0, real_fill=True)
        fill = slice_.cursor
        rounds = min(self.rounds_for(case), slice_.remaining // steps - self.options.warmup_rounds)
        if rounds < 1:
            raise ValueError(f"{case.label}: {text.ids.numel()} tokens leave no whole round of {steps} steps after "
                             f"filling {fill}: raise --tokens")
        run = self._time(case, dataset, slice_, steps, cycle, rounds, benchmark)
        if slice_.remaining:
            slice_.run(slice_.remaining)  # the text's tail: scored, not a whole round, not a sample
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
        result = build_result(loaded, case.spec, trace, text.ids.numel(), text.name, text.sha256, "token",
                              self.options.warmup_rounds * steps)
        self._evals[key] = result
        self._timings[(dataset, case.id)] = run
        self._slices[(dataset, case.id)] = slice_
        return result

    def rerun(self, case: BenchCase, dataset: str) -> tuple[list[float], list[float]]:
        """More interleaved rounds on the same caches after an inconclusive verdict: twice the
        rounds, as far as the text allows. Returns (case samples, reference samples)."""
        steps, cycle = self.geometry(case)
        key = (dataset, case.id)
        slice_, reference = self._slices.get(key), self._reference_slices.get(key)
        if slice_ is None or reference is None:
            return [], []
        rounds = min(2 * self.rounds_for(case), slice_.remaining // steps)
        if rounds < 1:
            return [], []
        more, ref = time_interleaved(slice_, reference, steps=steps, cycle=cycle, rounds=rounds, warmup_rounds=0)
        self._timings[key].rerun_samples.extend(more.samples)
        self._references[key].rerun_samples.extend(ref.samples)
        return more.samples, ref.samples

    @_in_phase("counting")
    def count(self, case: BenchCase, dataset: str) -> tuple[WorkCounts | None, WorkCounts | None]:
        """(b) work counters: one steady-state round of separate, untimed steps of the case's own
        decoder, after its timing (feeding the text on; counts do not depend on which tokens),
        and as many steps of its reference arm (what the model's forward costs at |C| without our
        cache code: across a transformers release, case minus reference is the strategy's own work)."""
        if not self.options.count_work:
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
        steps, cycle = self.geometry(case)
        ids = slice_.ids
        start = slice_.cursor

        def step() -> object:
            # wrap around at the end of the text: the counts do not depend on the tokens fed
            t = start + (step.calls % max(1, ids.numel() - 1 - start)) if start < ids.numel() - 1 else 0
            step.calls += 1
            return slice_.decoder.step(ids[t : t + 1].view(1, 1))

        step.calls = 0
        loaded = self.model(case.transform)
        graphs = getattr(slice_.decoder, "graphs", None)
        context = slice_.cache.length if case.spec.capacity is None else None
        wkey = counter_key(loaded.model, device=loaded.device, strategy=strategy, decoder=decoder, context=context,
                           extra={"transform": case.transform, "steps": steps})
        return count_work(step, steps, cycle=cycle, warmup=cycle, device=loaded.device, graphs=graphs, key=wkey)

    # -- one case, end to end ------------------------------------------------------------------
    def run_case(self, case: BenchCase, dataset: str, benchmark) -> CaseResult:
        if self.options.no_timing:
            return self.run_ppl_only(case, dataset, benchmark)
        started = time.perf_counter()
        out = CaseResult(case, dataset)
        # timing first: for token-loop cases the timed rounds *are* the evaluation's decode steps
        timing = self.timing(case, dataset, benchmark)
        out.timing = timing
        out.reference_timing = self._references.get((dataset, case.id))
        if out.reference_timing is not None:
            out.ratio = ratio_ci(timing.samples, out.reference_timing.samples)
        evaluation = self.evaluate(case, dataset)
        out.evaluation = evaluation
        out.slice_nll_max_abs_diff = self._slice_agreement(evaluation, timing)
        dense = self.case("dense")
        if case.id != "dense":
            dense_eval = self.evaluate(dense, dataset)
            out.ppl_delta_vs_dense_pct = 100.0 * (evaluation.ppl / dense_eval.ppl - 1.0)
            out.speedup = speedup(self.timing(dense, dataset).mean_ms, timing.mean_ms)
        else:
            out.ppl_delta_vs_dense_pct, out.speedup = 0.0, 1.0
        out.floor_ms = self.step_floor_ms(case, timing)
        out.checks = self.checks(case, dataset, evaluation, timing, out)
        if self.options.update_baselines:
            self.records.append(self.baseline_record(case, dataset, evaluation, timing, out))
        self._slices.pop((dataset, case.id), None)
        self._reference_slices.pop((dataset, case.id), None)
        out.seconds = time.perf_counter() - started
        self.results.append(out)
        if benchmark is not None:
            benchmark.group = f"{self.text(dataset).name} ({self.options.model}, {self.options.tokens} tokens)"
            benchmark.extra_info.update(self.extra_info(out))
        return out

    def step_floor_ms(self, case: BenchCase, timing: TimingRun) -> float:
        """The step's memory floor: every weight once + the K/V it attends (mean over a cycle), at
        this device's measured copy bandwidth (measured once per session)."""
        loaded = self.model(case.transform)
        if self._bandwidth is None:
            self._bandwidth = copy_bandwidth_GBps(loaded.device)
        context = timing.kv_length_max - 1 if case.spec.capacity is None else None
        nbytes = analytic_step_bytes(loaded.model, mean_attended_slots(case.spec, context))
        return floor_ms(nbytes, self._bandwidth)

    def run_ppl_only(self, case: BenchCase, dataset: str, benchmark=None) -> CaseResult:
        """The case's PPL, (a) and PPL findings without timing (`options.no_timing` says why).

        The evaluation is `evaluate`, exactly as in a timed run, so the PPL is the serial run's; the
        (b) cell and timing findings are "not checked" with the reason. Token-loop cases (refresh)
        still step their reference arm inside `_loop`: its times are discarded, the NLL is the same."""
        started = time.perf_counter()
        out = CaseResult(case, dataset)
        if benchmark is not None:
            # Nothing to time: disabled, pedantic runs the no-op once and records no benchmark entry
            # (and pytest-benchmark does not warn that its fixture went unused).
            benchmark.disabled = True
            benchmark.pedantic(lambda: None)
        evaluation = out.evaluation = self.evaluate(case, dataset)
        if case.id != "dense":
            out.ppl_delta_vs_dense_pct = 100.0 * (evaluation.ppl / self.evaluate(self.case("dense"), dataset).ppl - 1.0)
        else:
            out.ppl_delta_vs_dense_pct = 0.0
        what = f"{case.label} on {evaluation.dataset}"
        found = lookup(self.store, self.key(case, evaluation))
        out.checks = [
            check_ppl(evaluation.ppl, found, device_class=self.fingerprint["device_class"], updating=False, what=what),
            Check("tpot", "(b) TPOT", NOT_CHECKED, f"{what}: TPOT not measured: {self.options.no_timing}",
                  {"not_measured": self.options.no_timing}),
            *self.finding_checks(case, dataset),
        ]
        out.seconds = time.perf_counter() - started
        self.results.append(out)
        return out

    def too_short(self, case: BenchCase) -> str | None:
        """Why this run's text is too short for the case (context arms need ~P + 2k tokens)."""
        if self.options.tokens < case.min_tokens:
            return (f"needs --tokens >= {case.min_tokens} (window {case.spec.window} ~ the model's trained context); "
                    f"this run has {self.options.tokens}")
        return None

    def skip_case(self, case: BenchCase, dataset: str, reason: str) -> None:
        self.results.append(CaseResult(case, dataset, skipped=reason))

    def _slice_agreement(self, evaluation: EvalResult, timing: TimingRun) -> float | None:
        """max |NLL(timed decode) - NLL(evaluator)| over the timed steps: do the cache being timed
        and the scored semantics agree?"""
        if not timing.positions or evaluation.trace is None or timing.fill_mode == "random":
            return None  # random K/V (timing-only fill) cannot reproduce the text's NLL
        ref = np.asarray(evaluation.trace.nll)[np.asarray(timing.positions)]
        return float(np.max(np.abs(np.asarray(timing.nll) - ref)))

    def slice_tolerance(self) -> float:
        return slice_tolerance(self.options.dtype, self.options.device_type)

    def oversubscribed(self) -> str | None:
        """On CPU: a description when other processes compete for the cores, else None."""
        if self.options.device_type != "cpu":
            return None
        load = _load_average()
        cores = self.fingerprint.get("cpu_count") or os.cpu_count() or 1
        if load is None or load[0] <= cores:
            return None
        return f"1-min load average {load[0]:.1f} on {cores} cores"

    # -- the three checks ----------------------------------------------------------------------
    def key(self, case: BenchCase, evaluation: EvalResult) -> BaselineKey:
        return BaselineKey(model=evaluation.model, model_revision=evaluation.model_revision, dtype=evaluation.dtype,
                           dataset=evaluation.dataset, dataset_sha256=evaluation.dataset_sha256,
                           tokens=evaluation.tokens, strategy=case.label, params=case.params())

    def checks(self, case: BenchCase, dataset: str, evaluation: EvalResult, timing: TimingRun,
               out: CaseResult) -> list[Check]:
        what = f"{case.label} on {evaluation.dataset}"
        found = lookup(self.store, self.key(case, evaluation))
        updating = self.options.update_baselines
        device_class = self.fingerprint["device_class"]
        checks = [check_ppl(evaluation.ppl, found, device_class=device_class, updating=updating, what=what)]
        agreement = timing and self._slice_agreement(evaluation, timing)
        if agreement is not None:
            tol = self.slice_tolerance()
            ok = agreement <= tol
            checks.append(Check(
                "ppl", AGREEMENT_CHECK, PASS if ok else FAIL,
                f"{what}: max |NLL(timed decode) - NLL({evaluation.evaluator} evaluator)| = {agreement:.2e} over "
                f"{len(timing.positions)} steps ({'within' if ok else 'OUTSIDE'} {tol:g})",
                {"max_abs_diff": agreement, "tolerance": tol}))
        checks.extend(self.tpot_checks(case, dataset, evaluation, timing, out, found))
        checks.extend(self.finding_checks(case, dataset))
        return checks

    def tpot_checks(self, case: BenchCase, dataset: str, evaluation: EvalResult, timing: TimingRun,
                    out: CaseResult, found) -> list[Check]:
        """(b) three signals, strongest first: the step's work counts (exact, any machine with this
        software), its TPOT relative to the reference arm timed in the same process (any machine of
        this device class), and its absolute TPOT against this machine's run history."""
        what = f"{case.label} on {evaluation.dataset}"
        updating = self.options.update_baselines
        checks: list[Check] = []
        out.work, out.reference_work = self.count(case, dataset)
        checks.append(check_work(out.work, found, updating=updating, what=what, reference=out.reference_work))
        busy = self.oversubscribed()
        rerun = None
        if not busy:
            def rerun() -> tuple[list[float], list[float]]:
                return self.rerun(case, dataset)
        graph = compile_mode(case) in GRAPH_MODES
        ratio = check_ratio_vs_baseline(
            timing.samples, out.reference_timing.samples if out.reference_timing else None, found,
            key=ratio_key(self.fingerprint, torch.get_num_threads()), updating=updating, what=what,
            tolerance=self.options.tpot_tolerance, rerun=rerun,
            faults=(timing.faults_per_step, out.reference_timing.faults_per_step) if out.reference_timing else None,
            not_applicable=("a CUDA-graph step is device-bound, the eager reference host-bound: their ratio "
                            "follows the host, not the step (checked by work counts and device time)") if graph else None)
        if ratio.details.get("ratio"):
            out.ratio = RatioCI(**ratio.details["ratio"])
        checks.append(ratio)
        device = timing.device_samples if timing.device_ms else None
        samples = device or timing.samples
        if graph:
            # A graph replay is device-bound by construction (decided from the row, not from a
            # measured busy share that can flip): its device time is checked against the GPU
            # model's stored processes from a machine's first run; the history stays for the rest.
            checks.append(check_device_time(device, found, key=self.device_time_key(out), updating=updating,
                                            what=what, fallback=self.options.tpot_tolerance))
        ref = out.reference_timing
        ref_samples = (ref.device_samples if ref.device_ms else ref.samples) if ref is not None else None
        name = f"{dataset}/{case.id}"
        history = RunHistory(self.history_root, self.fingerprint_id)
        absolute = check_history(history, name, samples, what=what,
                                 clock="device time (CUDA events)" if device else "wall time",
                                 floor=self.options.tpot_tolerance, k=self.options.history_k,
                                 nightly=self.options.nightly,
                                 inputs=HistoryInputs(busy=busy, reference_case=name + REFERENCE_SUFFIX,
                                                      reference_samples=ref_samples))
        # Every run enters the history: the case's samples and its reference arm's, under the
        # raw verdicts the judge chose (a move both arms share re-bases the history).
        self.history_results[name] = samples
        if ref_samples:
            self.history_results[name + REFERENCE_SUFFIX] = ref_samples
        self.history_verdicts.update(absolute.details.get("record", {}))
        checks.append(absolute)
        return checks

    @staticmethod
    def device_time_key(out: CaseResult) -> str | None:
        """Graph device time is keyed like the kernel counts: GPU model, software, config, strategy, decoder."""
        return out.work.key.kernel_id if out.work is not None and out.work.key is not None else None

    def write_history(self) -> Path | None:
        """Append this run's absolute samples to the machine's run history (never edited)."""
        if not self.history_results or self.options.report_dir is None:
            return None
        return append_history(self.history_root, self.fingerprint, self.history_results, self.history_verdicts,
                              rootdir=self.rootdir)

    @_in_phase("findings timing")
    def paired_ratio(self, case: BenchCase, other: BenchCase, dataset: str) -> RatioCI:
        """TPOT(case) / TPOT(other), the two timed step for step in fresh slices (measure.time_interleaved):
        a TPOT finding compares two strategies, and timings taken minutes apart on a shared machine
        differ by more than the finding's band (seen: strict 1.6x slower under a neighbour's load)."""
        steps = steps_per_round(math.lcm(case.cycle, other.cycle), self.options.min_steps)
        rounds = max(4, self.options.rounds * self.options.min_steps // steps)
        warmup = max(1, self.options.warmup_rounds)  # fresh slices: first calls pay one-time costs
        timed = steps * (warmup + rounds)
        arms = [self.new_slice(c, dataset, timed_steps=timed) for c in (case, other)]
        a, b = time_interleaved(arms[0], arms[1], steps=steps, cycle=steps, rounds=rounds, warmup_rounds=warmup)
        return ratio_ci(a.samples, b.samples)

    def finding_checks(self, case: BenchCase, dataset: str) -> list[Check]:
        out: list[Check] = []
        loaded = self.model()
        for spec in findings_for(case.id):
            f = spec.finding
            name = f"(c) {f.name}"
            why_not = spec.applies(model=loaded.name, dataset=self.text(dataset).name, sink=self.options.sink,
                                   window=self.options.window, tokens=self.options.tokens,
                                   device_type=self.options.device_type, dummy_weights=loaded.dummy_weights)
            if why_not:
                out.append(Check("finding", name, NOT_APPLICABLE, f"n/a: {why_not}"))
                continue
            ref_case = self.case(spec.reference)
            if f.relation != "ratio_ppl" and self.options.no_timing:
                out.append(Check("finding", name, NOT_CHECKED, f"{case.label} vs {ref_case.label}: TPOT not measured: "
                                 f"{self.options.no_timing}", {"not_measured": self.options.no_timing}))
                continue
            if f.relation == "ratio_ppl":
                s_nll = self.evaluate(case, dataset).trace.nll
                r_nll = self.evaluate(ref_case, dataset).trace.nll
                est, lo, hi = ppl_ratio_ci(s_nll, r_nll)
            else:
                paired = self.paired_ratio(case, ref_case, dataset)
                est, lo, hi = paired.ratio, paired.low, paired.high
            verdict, message = check_finding(f, est, lo, hi)
            out.append(Check("finding", name, verdict, f"{case.label} vs {ref_case.label}: {message}",
                             {"estimate": est, "ci_low": lo, "ci_high": hi, "low": f.low, "high": f.high,
                              "relation": f.relation, "reference": ref_case.label, "provenance": f.provenance}))
        return out

    # -- records -------------------------------------------------------------------------------
    def baseline_record(self, case: BenchCase, dataset: str, evaluation: EvalResult, timing: TimingRun,
                        out: CaseResult) -> BaselineRecord:
        """This run's record: PPL, the work counts, the same-run TPOT ratio and its CI (and the raw
        TPOT samples for people; absolute TPOT is judged against the run history instead)."""
        provenance = make_provenance(cwd=str(self.rootdir))
        note = self.options.baseline_note or (NOISE_NOTE if self.options.device_type == "cpu" else
                                              f"timed on {self.fingerprint.get('device_class')}")
        provenance.update({"note": note, "evaluator": evaluation.evaluator,
                           "load_average_1_5_15min": _load_average(),
                           "timing": {"rounds": timing.rounds, "steps_per_round": timing.steps_per_round,
                                      "warmup_rounds": timing.warmup_rounds, "sample": "per-cycle mean TPOT (ms)",
                                      "threads": torch.get_num_threads(), "fill": timing.fill_mode}})
        extra = {"tpot_ms_median": timing.median_ms, "spikes": evaluation.spikes}
        if out.work is not None and out.work.key is not None:
            extra["work_counts"] = {out.work.key.id: out.work.to_json()}
            if out.reference_work is not None:  # keyed by the case's counter key: the pair is one recording
                extra["reference_work_counts"] = {out.work.key.id: out.reference_work.to_json()}
        device_key = self.device_time_key(out)
        if compile_mode(case) in GRAPH_MODES and timing.device_ms and device_key is not None:
            geomean = float(np.exp(np.mean(np.log(timing.device_samples))))
            extra["device_time_ms"] = {device_key: [round(geomean, 5)]}
        if out.ratio is not None:
            rkey = ratio_key(self.fingerprint, torch.get_num_threads())
            extra["tpot_ratio"] = {rkey: [round(out.ratio.ratio, 5)]}
            extra["tpot_ratio_ci"] = {rkey: [[round(out.ratio.low, 5), round(out.ratio.high, 5)]]}
        record = BaselineRecord.from_result(evaluation, fingerprint=self.fingerprint, tpot_samples_ms=timing.samples,
                                            tpot_ms=timing.mean_ms, provenance=provenance, extra=extra)
        return dataclasses.replace(record, key=self.key(case, evaluation))

    def write_baselines(self) -> list[Path]:
        if self.records:
            self.written = self.store.update(
                self.records, append_for=self.fingerprint_id if self.options.append_baselines else None)
        return self.written

    def extra_info(self, out: CaseResult) -> dict:
        ev, tm = out.evaluation, out.timing
        return _finite({
            "strategy": out.case.label,
            "dataset": ev.dataset,
            "tokens": ev.tokens,
            "evaluator": ev.evaluator,
            "ppl": ev.ppl,
            "ppl_delta_vs_dense_pct": out.ppl_delta_vs_dense_pct,
            "tpot_ms_mean": tm.mean_ms,
            "tpot_ms_median": tm.median_ms,
            "speedup_vs_dense": out.speedup,
            "steps_per_round": tm.steps_per_round,
            "round_unit": f"one round = {tm.steps_per_round} steady-state decode steps",
            "prune_events": ev.prune_events,
            "spikes": ev.spikes,
            "verdicts": out.verdicts,
        })

    def nightly_unarmed(self) -> str | None:
        """Under --nightly: the line that fails the run when a row is not armed on a device class that
        has baselines (some row's work counts or ratio were live), else None."""
        if not self.options.nightly or self.options.update_baselines or self.options.no_timing:
            return None
        rows = [r.row() for r in self.results]
        unarmed = [r for r in rows if r.get("armed") is False]
        has_baselines = any(c.live and c.name in (WORK_CHECK, RATIO_CHECK) for r in self.results for c in r.checks)
        if not unarmed or not has_baselines:
            return None
        return (f"streamllm: --nightly: {armed_summary(rows)}; a nightly run checks every row: record the missing "
                f"baselines on this device class with `nox -s arm -- <this run's options>` (bench/README.md)")

    def time_line(self) -> str:
        """Where this process's wall time went; the warm-up steps (compile, graph capture) inside timing."""
        warm = sum((r.timing.warmup_ms / 1e3 + r.timing.fill_s) for r in self.results if r.timing is not None)
        return self.phases.line(time.time() - self.started, {"of which fill + warm-up/compile": warm})

    def run_json(self) -> dict:
        loaded = self.weights.loaded()
        return _finite({
            "schema": RUN_SCHEMA,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "runtime_s": time.time() - self.started,
            "phases_s": dict(self.phases.seconds),
            "copy_bandwidth_GBps": self._bandwidth,
            "command": " ".join([_program(), *sys.argv[1:]]),
            "options": dataclasses.asdict(self.options),
            "model": {"name": loaded.name, "revision": loaded.revision, "dummy_weights": loaded.dummy_weights,
                      "architecture": loaded.architecture} if loaded else None,
            "fingerprint": self.fingerprint,
            "fingerprint_id": self.fingerprint_id,
            "threads": torch.get_num_threads(),
            "load_average_1_5_15min": _load_average(),  # how busy the (shared) machine was
            "provenance": make_provenance(cwd=str(self.rootdir)),
            "baselines_written": [str(p) for p in self.written],
            "results": [r.to_json() for r in self.results],
        })

    def write_run(self) -> Path | None:
        if self.options.report_dir is None or not self.results:
            return None
        self.run_file = write_run_record(self._under_root(self.options.report_dir), self.options.device_type,
                                         self.run_json())
        return self.run_file


# The two writers the xdist controller shares with a serial run (bench/xdist.py merges the workers'
# parts and writes one run record and one history run through these).
def append_history(history_root: Path, fingerprint: dict, samples: dict[str, list[float]],
                   raw_verdicts: dict[str, str], *, rootdir: Path) -> Path:
    """Append one run's absolute TPOT samples to the machine's run history (never edited)."""
    history = RunHistory(history_root, fingerprint_id(fingerprint))
    verdicts = {c: v for c, v in raw_verdicts.items() if v in HISTORY_RAW}
    rejected = {c: False for c, v in verdicts.items() if v in (REGRESSION, IMPROVEMENT)}
    run = history.append(samples, accepted=True, verdicts=verdicts, case_accepted=rejected, fingerprint=fingerprint,
                         meta={"command": " ".join([_program(), *sys.argv[1:]]),
                               "provenance": make_provenance(cwd=str(rootdir))})
    return history.directory / run.filename


def write_run_record(report_root: Path, device_type: str, run: dict) -> Path:
    """Validate a run record against the library's schema and write it under <report dir>/runs/."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = report_root / "runs" / f"{stamp}-{device_type}-{os.getpid()}.json"
    return write_json_atomic(path, validate_run(run, "this run's record").to_json())


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _program() -> str:
    name = Path(sys.argv[0]).name
    return "python -m pytest" if name == "__main__.py" else name


def _finite(obj):
    """NaN/inf are not JSON: store them as null (numpy scalars become floats)."""
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
