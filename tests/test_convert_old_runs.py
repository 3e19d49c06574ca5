"""scripts/convert_old_runs.py: a run record of the old shape (schema /2 without `raw`, the keys of
the H200 records once tracked under reports/gpu-h200-suite/runs/) becomes a current record whose raw
part holds its measurements and none of its verdicts, and `streamllm compare` re-judges it.
Synthetic records only: no git history is read."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from streamllm.harness.compare import compare
from streamllm.harness.records import RawRun, load_run
from streamllm.harness.verdicts import FAIL, PASS, RATIO_CHECK, RECORDED

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("convert_old_runs", ROOT / "scripts" / "convert_old_runs.py")
convert_old_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(convert_old_runs)

FP = {"device_class": "cuda:Test GPU", "cpu_model": "Test CPU", "cpu_count": 16, "torch_threads": 16, "gpu": "Test GPU",
      "gpu_count": 1, "cuda": "13.0", "torch": "2.11.0+cu130", "transformers": "5.17.0", "python": "3.12.3"}
PARAMS = {"name": "strict", "sink": 4, "window": 60, "compress_every": 1, "overlap": 0, "refresh": 0, "auto_cap": None,
          "cache": "dynamic", "transform": None}


def _arm(samples: list[float]) -> dict:
    """An old record's `timing` / `reference_timing` (TimingRun.summary() then)."""
    return {"steps_per_round": 8, "cycle": 1, "rounds": len(samples), "warmup_rounds": 1,
            "tpot_ms_mean": sum(samples) / len(samples), "tpot_ms_median": sorted(samples)[len(samples) // 2],
            "device_tpot_ms": sum(samples) / len(samples), "samples_ms": samples, "device_samples_ms": samples,
            "rerun_samples_ms": [], "prunes_per_cycle": 0.0, "kv_length_max": 64, "first_step": 40, "fill_s": 0.1,
            "fill_mode": "chunked", "warmup_ms": 5.0}


def old_record(ratio: float, *, updating: bool, printed: str) -> dict:
    """One case of the old shape; `printed`: the verdict its same-run ratio check printed."""
    ref = [10.0] * 8
    case = [10.0 * ratio * (1 + 0.01 * (-1) ** i) for i in range(8)]
    nll = [2.0, 2.5, float("nan"), 3.0]
    row = {
        "dataset": "synthetic", "case": "strict", "label": "strict-s4-w60", "ppl": math.exp(2.5),
        "ppl_delta_vs_dense_pct": 1.0, "tpot_ms_mean": 10.0 * ratio, "tpot_ms_median": 10.0 * ratio, "speedup": 0.8,
        "verdicts": {"a": printed, "b": printed, "c": "-"}, "skipped": None, "transform": None, "sweeps": [],
        "params": PARAMS, "seconds": 1.0,
        "evaluation": {"strategy": "strict", "params": PARAMS, "model": "dummy:tiny", "model_revision": "config-0",
                       "dataset": "synthetic", "dataset_sha256": "synthetic", "tokens": 128, "evaluator": "parallel",
                       "device": "cuda", "dtype": "float16", "ppl": math.exp(2.5), "mean_nll": 2.5},
        "timing": _arm(case), "reference_timing": _arm(ref),
        "ratio": {"ratio": ratio, "low": ratio * 0.99, "high": ratio * 1.01, "pairs": 8, "confidence": 0.95},
        "work": None,
        "checks": [{"kind": "tpot", "name": RATIO_CHECK, "verdict": printed, "message": "printed then", "details": {}}],
        "tpot_over_floor": 2.0, "bound": "host", "slice_nll_max_abs_diff": 0.004,
        "timing_step_ms": case, "timing_positions": list(range(40, 48)), "timing_prune_flags": [False] * 8,
        "trace": {"nll": nll, "prune_steps": [], "kv_length": [1, 2, 3, 4], "evicted": [], "step_ms": [None] * 4},
    }
    return {"schema": "streamllm.bench-run/2", "created": "2026-12-04T02:18:15+00:00", "runtime_s": 10.0,
            "command": "python -m pytest bench", "options": {"device": "cuda", "dtype": "float16", "tpot_tolerance": 0.1,
                                                             "update_baselines": updating, "append_baselines": False,
                                                             "nightly": False, "history_k": 5, "no_timing": None},
            "model": {"name": "dummy:tiny"}, "fingerprint": FP, "fingerprint_id": "cuda-test",
            "copy_bandwidth_GBps": 3000.0, "threads": 16, "load_average_1_5_15min": [0.5, 0.3, 0.1],
            "provenance": {"commit": "0" * 40, "dirty": True, "environment": {"numpy": "2.5.2"}},
            "baselines_written": [], "results": [row]}


def test_converter_keeps_the_measurements_and_drops_every_verdict():
    old = old_record(2.0, updating=False, printed=FAIL)
    new = convert_old_runs.convert_record(old, "rev:reports/x/runs/r.json")
    assert all("checks" not in r or not r["checks"] for r in new["results"])
    assert all(not r.get("verdicts") for r in new["results"])
    raw = RawRun.model_validate(new["raw"])
    case = raw.cases[0]
    assert case.timing.samples_ms == old["results"][0]["timing"]["samples_ms"]
    assert case.reference.samples_ms == [10.0] * 8 and case.timing.device_samples_ms
    assert case.baseline_key["strategy"] == "strict-s4-w60" and case.baseline_key["tokens"] == 128
    assert case.nll.count == 3 and case.nll.mean == pytest.approx(2.5)  # the NaN is not a token's NLL
    assert case.own_path_nll_max_abs_diff == 0.004 and case.agreement_steps == 8
    assert case.floor_ms == pytest.approx(10.0)  # tpot / tpot_over_floor
    # never kept by the old record: absent, and named in the file
    assert case.work is None and case.reference_work is None and case.eviction is None and case.findings is None
    assert case.timing.faults_per_step is None and raw.conditions.calibration_ms == []
    made = new["converted_from"]
    assert made["source"] == "rev:reports/x/runs/r.json" and made["commit"] == "0" * 40
    assert {"eviction", "findings", "reference_work", "conditions.calibration_ms"} <= set(made["unrecoverable"])
    assert raw.conditions.device_type == "cuda" and raw.conditions.threads == 16 and not raw.conditions.updating
    assert raw.conditions.versions == {"torch": "2.11.0+cu130", "transformers": "5.17.0", "numpy": "2.5.2"}


def test_a_record_with_a_raw_part_is_not_converted():
    new = convert_old_runs.convert_record(old_record(2.0, updating=False, printed=PASS), "a")
    with pytest.raises(ValueError, match="already has a raw part"):
        convert_old_runs.convert_record(new, "b")


def _write(path: Path, record: dict) -> Path:
    path.write_text(json.dumps(convert_old_runs.convert_record(record, path.name)), encoding="utf-8")
    load_run(path)  # readable by the run record's own reader
    return path


def test_compare_rejudges_a_converted_run_from_its_samples_alone(tmp_path):
    recording = _write(tmp_path / "rec.json", old_record(2.0, updating=True, printed=RECORDED))
    same = _write(tmp_path / "same.json", old_record(2.0, updating=False, printed=FAIL))  # a wrong printed verdict
    slower = _write(tmp_path / "slower.json", old_record(2.6, updating=False, printed=PASS))

    def ratio_verdict(result) -> str:
        return next(c["verdict"] for r in result.rows for c in r["checks"] if c["name"] == RATIO_CHECK)

    recorded = compare(recording, against=str(recording))
    assert ratio_verdict(recorded) == RECORDED
    kept = compare(same, against=str(recording))
    # the printed "fail" was dropped: the verdict comes from the samples, and nothing is carried
    assert ratio_verdict(kept) == PASS and kept.judged == 0 and kept.carried == 0 and kept.exit_code == 0
    moved = compare(slower, against=str(recording))
    assert ratio_verdict(moved) == FAIL and moved.exit_code == 1


def test_tally_matches_compare_with_what_the_old_run_printed(tmp_path):
    recording = _write(tmp_path / "rec.json", old_record(2.0, updating=True, printed=RECORDED))
    old = old_record(2.6, updating=False, printed=PASS)
    rows = convert_old_runs.tally(_write(tmp_path / "slower.json", old), old, recording, None)
    ratio = next(r for r in rows if r["check"] == RATIO_CHECK)
    assert (ratio["printed"], ratio["compare"]) == (PASS, FAIL)
