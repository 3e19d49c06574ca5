"""Writing one run: a case's result, its baseline record (under --update/--append-baselines), the
run record `streamllm report` reads, and the entries the run appends to the machine's history."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from streamllm.combinations import GRAPH_MODES
from streamllm.harness.baseline_record import BaselineRecord
from streamllm.harness.fingerprint import fingerprint_id
from streamllm.harness.history import RunHistory
from streamllm.harness.history_runs import REFERENCE_SUFFIX
from streamllm.harness.history_verdict import enters_baseline
from streamllm.harness.provenance import make_provenance
from streamllm.harness.records import (
    RUN_SCHEMA,
    RawRun,
    validate_run,
)
from streamllm.harness.verdicts import HISTORY_CHECK, ratio_key
from streamllm.measure import TimingRun
from streamllm.results import EvalResult, write_json_atomic

from .catalog import BenchCase, compile_mode
from .measuring import CaseResult, finite
from .session import Session, _load_average, raw_conditions

NOISE_NOTE = ("CPU timings from a shared 2-core VM: other processes compete for the cores (steal time), "
              "so TPOT samples are noisy; compare only within one fingerprint")







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
    return BaselineRecord.from_result(evaluation, fingerprint=session.fingerprint, tpot_samples_ms=timing.samples,
                                      provenance=provenance, key=session.key(case, evaluation), **sections)


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



