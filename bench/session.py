"""A bench session: the options, the loaded models (one per weight transform), the tokenized texts,
the case catalog, the baseline store and the machine's fingerprint, each made once per process.
Everything a measurement or a judge needs to know about the run, and nothing it measured."""

from __future__ import annotations

import functools
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from streamllm.data import load_text, synthetic_ids, tokenize
from streamllm.harness.baseline_record import BaselineKey
from streamllm.harness.baselines import BaselineStore
from streamllm.harness.fingerprint import fingerprint_id, hardware_fingerprint, package_version
from streamllm.harness.history import RunHistory
from streamllm.harness.records import DEFAULT_HISTORY_DIR, DEFAULT_REPORT_DIR, RawConditions
from streamllm.harness.verdicts import FALLBACK_BAND, slice_tolerance
from streamllm.measure import steps_per_round
from streamllm.parallel_schedule import supports_parallel
from streamllm.profile import WeightSets
from streamllm.results import EvalResult

from .catalog import DEFAULT_SINK, DEFAULT_TOKENS, DEFAULT_WINDOW, BenchCase, build_catalog
from .phases import PhaseClock


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
    tpot_tolerance: float = FALLBACK_BAND  # the band of a row without an A/A spread
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


def _in_phase(name: str):
    """Book a Suite method's time to a phase of the PhaseClock."""
    def wrap(method):
        @functools.wraps(method)
        def timed(self, *args, **kwargs):
            with self.phases.phase(name):
                return method(self, *args, **kwargs)
        return timed
    return wrap



class Session:
    def __init__(self, options: SuiteOptions, rootdir: Path):
        self.options = options
        self.rootdir = rootdir
        self.threads = options.threads or (1 if options.device_type == "cpu" else None)
        self.weights = WeightSets(options.model, options.dtype, options.device, device_map=options.device_map,
                                  max_memory=options.max_memory)
        self.phases = PhaseClock()  # where the process's time goes (printed under the table)
        self.started = time.time()
        self._texts: dict[str, Text] = {}
        self._fingerprint: dict | None = None
        # torch's thread count is process-wide: the session sets it and `close` gives it back.
        self._threads_before = torch.get_num_threads()
        if self.threads:
            # One thread by default on CPU: on a shared 2-core VM two OpenMP threads spin-wait on
            # each other whenever one is descheduled (far slower and noisier than one thread).
            torch.set_num_threads(self.threads)
        # The context sweep's arms straddle the model's trained context, so the catalog needs it:
        # loaded (config and weights) only when that sweep is asked for.
        positions = self.model().max_positions if "sweep:context" in options.strategies else None
        self.catalog = build_catalog(options.sink, options.window, context_positions=positions)
        self.store = BaselineStore(self._under_root(options.baselines_dir))

    def preflight_stored(self) -> None:
        """Load every baseline file and this machine's history once, before anything is measured:
        a broken or old-schema file stops the run at its start with the loader's one line (file and
        fix), not after minutes of measuring, and nothing is written over it."""
        for path in self.store.files():
            self.store.read(path)
        RunHistory(self.history_root, self.fingerprint_id).runs()

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
        if dataset not in self._texts:
            loaded = self.model()
            if loaded.tokenizer is None:  # dummy weights: random ids, quality meaningless
                ids = synthetic_ids(loaded.model.config.vocab_size, self.options.tokens)
                self._texts[dataset] = Text("synthetic", "synthetic", ids)
            else:
                text = load_text(dataset)
                self._texts[dataset] = Text(text.name, text.sha256, tokenize(loaded.tokenizer, text, self.options.tokens))
        return self._texts[dataset]

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
        return not supports_parallel(case.spec, self.model(case.transform).model)[0]

    def too_short(self, case: BenchCase) -> str | None:
        """Why this run's text is too short for the case (context arms need ~P + 2k tokens)."""
        if self.options.tokens < case.min_tokens:
            return (f"needs --tokens >= {case.min_tokens} (window {case.spec.window} ~ the model's trained context); "
                    f"this run has {self.options.tokens}")
        return None

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


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def raw_conditions(session: Session) -> RawConditions:
    o = session.options
    return RawConditions(
        started=datetime.fromtimestamp(session.started, timezone.utc).isoformat(),
        fingerprint=session.fingerprint, fingerprint_id=session.fingerprint_id, threads=torch.get_num_threads(),
        versions={d: package_version(d) for d in ("streamllm", "torch", "transformers", "numpy")},
        device_type=o.device_type, dtype=o.dtype, tpot_tolerance=o.tpot_tolerance, history_k=o.history_k,
        nightly=o.nightly, updating=o.update_baselines, no_timing=o.no_timing,
        calibration_ms=_calibration(session))


def _calibration(session: Session) -> list[float]:
    measure = getattr(session, "measure", None)  # the Suite's measurements (a bare Session has none)
    return measure.calibration_ms if measure is not None else []
