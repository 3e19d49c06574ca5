"""Writing one run: a case's result, its baseline record (under --update/--append-baselines), the
run record `streamllm report` reads, and the entries the run appends to the machine's history."""

from __future__ import annotations

import dataclasses
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
from streamllm.harness.baseline_record import BaselineRecord
from streamllm.harness.fingerprint import fingerprint_id, package_version
from streamllm.harness.history import RunHistory
from streamllm.harness.history_runs import REFERENCE_SUFFIX
from streamllm.harness.history_verdict import enters_baseline
from streamllm.harness.judge_ratio import RatioCI
from streamllm.harness.provenance import make_provenance
from streamllm.harness.records import (
    RUN_SCHEMA,
    Check,
    RawCase,
    RawConditions,
    RawFinding,
    RawRun,
    validate_run,
)
from streamllm.harness.table import bound_word, make_row, summarize
from streamllm.harness.verdicts import HISTORY_CHECK, ratio_key
from streamllm.harness.workrecord import WorkCounts
from streamllm.measure import TimingRun
from streamllm.ownpath import Holding, OwnPath
from streamllm.results import EvalResult, write_json_atomic

from .catalog import BenchCase, compile_mode
from .session import Session, _load_average

NOISE_NOTE = ("CPU timings from a shared 2-core VM: other processes compete for the cores (steal time), "
              "so TPOT samples are noisy; compare only within one fingerprint")





@dataclass(frozen=True)
class CaseResult:
    """One case's result, frozen once measured and judged (bench/measuring.py `measure_case`)."""

    case: BenchCase
    dataset: str
    evaluation: EvalResult | None = None
    timing: TimingRun | None = None
    reference_timing: TimingRun | None = None  # the interleaved reference arm (decode_slice.reference_slice)
    ratio: RatioCI | None = None  # case / reference, per round, same process
    work: WorkCounts | None = None
    reference_work: WorkCounts | None = None  # the reference arm counted over the same steps
    speedup: float | None = None
    floor_ms: float | None = None  # analytic bytes a step must read / measured copy bandwidth
    ppl_delta_vs_dense_pct: float | None = None
    slice_nll_max_abs_diff: float | None = None
    own_path: OwnPath | None = None  # static/ring rows: their own decode across the first evictions
    calibration: OwnPath | None = None  # the same slice through the eager dynamic cache
    holding: Holding | None = None  # dynamic rows: what the timed slice's tensors hold at its end
    findings: list[RawFinding] | None = None  # the (c) findings as measured (bench/measure_findings.py)
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    skipped: str | None = None  # reason, when the case could not run here
    raw: RawCase | None = None  # what the judge judged (bench/measuring.py raw_case; skipped cases too)

    @property
    def bound(self) -> str | None:
        work = self.work
        return bound_word(work.device_busy_us if work else None, work.steps if work else None,
                          self.timing.mean_ms if self.timing else None)

    @property
    def verdicts(self) -> dict[str, str]:
        return {"a": summarize(self.checks, "ppl"), "b": summarize(self.checks, "tpot"),
                "c": summarize(self.checks, "finding")}

    def row(self) -> dict:
        ev, tm = self.evaluation, self.timing
        return make_row(dataset=self.dataset, case=self.case.id, label=self.case.label, checks=self.checks,
                        skipped=self.skipped, timed=tm is not None, ppl=ev.ppl if ev else None,
                        ppl_delta_vs_dense_pct=self.ppl_delta_vs_dense_pct, tpot_ms_mean=tm.mean_ms if tm else None,
                        tpot_ms_median=tm.median_ms if tm else None, speedup=self.speedup, floor_ms=self.floor_ms,
                        bound=self.bound)

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
        return finite(out)


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


def raw_run(session: Session, results: list[CaseResult]) -> RawRun:
    """The run's raw part: every case's raw record as measuring built it (a skipped case's too)."""
    missing = [f"{r.case.id} on {r.dataset}" for r in results if r.raw is None]
    if missing:
        raise ValueError(f"results without their raw record (not from Measurements.measure_case or "
                         f"Suite.skip_case): {', '.join(missing)}")
    return RawRun(conditions=raw_conditions(session), cases=[r.raw for r in results])


def device_time_key(out: CaseResult) -> str | None:
    """Graph device time is keyed like the kernel counts: GPU model, software, config, strategy, decoder."""
    return out.work.key.kernel_id if out.work is not None and out.work.key is not None else None


def history_entries(results: list[CaseResult]) -> tuple[dict[str, list[float]], dict[str, bool]]:
    """What a run appends to the history: each timed case's per-round TPOT (device time on CUDA) and
    its reference arm's, and which entries stay out of their baseline (a case that failed a check; a
    move beyond the band; a move both arms share is recorded as not checked, which re-bases the history). No verdict is stored:
    the nightly rule re-judges a past run from its samples."""
    samples: dict[str, list[float]] = {}
    accepted: dict[str, bool] = {}
    for out in results:
        if out.timing is None:
            continue
        name = f"{out.dataset}/{out.case.id}"
        samples[name] = out.timing.device_samples if out.timing.device_ms else out.timing.samples
        ref = out.reference_timing
        if ref is not None:
            samples[name + REFERENCE_SUFFIX] = ref.device_samples if ref.device_ms else ref.samples
        if any(check.failed for check in out.checks):
            # a case that failed any check (its work counts, its own path) ran changed code: its
            # samples are no level to compare later runs with
            accepted[name] = False
        for check in out.checks:
            if check.name == HISTORY_CHECK:
                accepted.update({entry: False for entry, raw in check.details.get("record", {}).items()
                                 if not enters_baseline(raw)})
    return samples, accepted


# -- records -------------------------------------------------------------------------------
def baseline_record(session: Session, case: BenchCase, dataset: str, evaluation: EvalResult, timing: TimingRun,
                    out: CaseResult) -> BaselineRecord:
    """This run's record: PPL, the work counts, the same-run TPOT ratio and its CI, and this run's
    median TPOT (absolute TPOT is judged against the run history, which keeps the samples)."""
    provenance = make_provenance(cwd=str(session.rootdir))
    note = session.options.baseline_note or (NOISE_NOTE if session.options.device_type == "cpu" else
                                          f"timed on {session.fingerprint.get('device_class')}")
    provenance.update({"note": note, "evaluator": evaluation.evaluator,
                       "load_average_1_5_15min": _load_average(),
                       "timing": {"rounds": timing.rounds, "steps_per_round": timing.steps_per_round,
                                  "warmup_rounds": timing.warmup_rounds, "sample": "per-cycle mean TPOT (ms)",
                                  "threads": torch.get_num_threads(), "fill": timing.fill_mode}})
    sections: dict = {}
    if out.work is not None and out.work.key is not None:
        sections["work_counts"] = {out.work.key.id: out.work.to_json()}
        if out.reference_work is not None:  # keyed by the case's counter key: the pair is one recording
            sections["reference_work_counts"] = {out.work.key.id: out.reference_work.to_json()}
    device_key = device_time_key(out)
    if compile_mode(case) in GRAPH_MODES and timing.device_ms and device_key is not None:
        geomean = float(np.exp(np.mean(np.log(timing.device_samples))))
        sections["device_time_ms"] = {device_key: [round(geomean, 5)]}
    if out.ratio is not None:
        rkey = ratio_key(session.fingerprint, torch.get_num_threads())
        sections["tpot_ratio"] = {rkey: [round(out.ratio.ratio, 5)]}
        sections["tpot_ratio_ci"] = {rkey: [[round(out.ratio.low, 5), round(out.ratio.high, 5)]]}
    record = BaselineRecord.from_result(evaluation, fingerprint=session.fingerprint, tpot_samples_ms=timing.samples,
                                        provenance=provenance, **sections)
    return record.model_copy(update={"key": session.key(case, evaluation)})


class UnrecordableCaseError(ValueError):
    """Under --update/--append-baselines a case whose numbers cannot be a baseline (a non-finite
    PPL, ...): the case fails in one line, stays in the run's record and table, and its stored entry
    is left as it was; the run's other rows are recorded."""


def extra_info(session: Session, out: CaseResult) -> dict:
    ev, tm = out.evaluation, out.timing
    return finite({
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
        "raw_nll_spikes": ev.raw_nll_spikes,
        "verdicts": out.verdicts,
    })


def run_json(session: Session, results: list[CaseResult], written: list[Path], bandwidth: float | None) -> dict:
    loaded = session.weights.loaded()
    return finite({
        "schema": RUN_SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "runtime_s": time.time() - session.started,
        "phases_s": dict(session.phases.seconds),
        "copy_bandwidth_GBps": bandwidth,
        "command": " ".join([_program(), *sys.argv[1:]]),
        "options": dataclasses.asdict(session.options),
        "model": {"name": loaded.name, "revision": loaded.revision, "dummy_weights": loaded.dummy_weights,
                  "architecture": loaded.architecture} if loaded else None,
        "fingerprint": session.fingerprint,
        "fingerprint_id": session.fingerprint_id,
        "threads": torch.get_num_threads(),
        "load_average_1_5_15min": _load_average(),  # how busy the (shared) machine was
        "provenance": make_provenance(cwd=str(session.rootdir)),
        "baselines_written": [str(p) for p in written],
        "results": [r.to_json() for r in results],
        "raw": raw_run(session, results).to_json(),
    })


# The two writers the xdist controller shares with a serial run (bench/xdist.py merges the workers'
# parts and writes one run record and one history run through these).
def append_history(history_root: Path, fingerprint: dict, samples: dict[str, list[float]],
                   case_accepted: dict[str, bool], *, rootdir: Path) -> Path:
    """Append one run's absolute TPOT samples and acceptance to the machine's run history (never edited)."""
    history = RunHistory(history_root, fingerprint_id(fingerprint))
    run = history.append(samples, accepted=True, case_accepted=case_accepted, fingerprint=fingerprint,
                         meta={"command": " ".join([_program(), *sys.argv[1:]]),
                               "provenance": make_provenance(cwd=str(rootdir))})
    return history.directory / run.filename



def write_run_record(report_root: Path, device_type: str, run: dict) -> Path:
    """Validate a run record against the library's schema and write it under <report dir>/runs/."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = report_root / "runs" / f"{stamp}-{device_type}-{os.getpid()}.json"
    return write_json_atomic(path, validate_run(run, "this run's record").to_json())



def _program() -> str:
    name = Path(sys.argv[0]).name
    return "python -m pytest" if name == "__main__.py" else name



def finite(obj):
    """NaN/inf are not JSON: store them as null (numpy scalars become floats)."""
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    return obj

