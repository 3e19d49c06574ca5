"""A slowdown both arms share (code they both run: our decode glue, the model's forward) cancels in
the same-run ratio; the absolute history check catches it when the run's torch-only calibration
arm held still, and calls it the machine's (inconclusive, re-based) when that arm moved too."""

from __future__ import annotations

import numpy as np
import pytest

from streamllm.calibration import CalibrationArm
from streamllm.harness.baseline_record import BaselineKey, BaselineRecord
from streamllm.harness.baselines import BaselineStore
from streamllm.harness.history import RunHistory
from streamllm.harness.history_runs import CALIBRATION_CASE, REFERENCE_SUFFIX
from streamllm.harness.judge_history import HistoryInputs, check_history
from streamllm.harness.judge_lookup import lookup
from streamllm.harness.judge_ratio import check_ratio_vs_baseline
from streamllm.harness.verdicts import FAIL, INCONCLUSIVE, PASS

FP = {"device_class": "cpu", "cpu_model": "Test CPU", "torch": "2.13.0", "transformers": "5.25.0"}
CASE = "book/strict"


def samples(level: float, rng, n: int = 16) -> list[float]:
    return (level * (1 + rng.normal(0, 0.01, n))).tolist()


def history_at_one(tmp_path, rng) -> RunHistory:
    history = RunHistory(tmp_path / "history", "cpu-test-t1")
    for _ in range(3):
        history.append({CASE: samples(10.0, rng), CASE + REFERENCE_SUFFIX: samples(8.0, rng),
                        CALIBRATION_CASE: samples(2.0, rng)}, accepted=True, fingerprint=FP)
    return history


def judge(history, rng, *, both: float, calibration: float):
    return check_history(history, CASE, samples(10.0 * both, rng), what="strict on book", clock="wall time",
                         floor=0.10, k=5, nightly=False, versions=FP,
                         inputs=HistoryInputs(reference_case=CASE + REFERENCE_SUFFIX,
                                              reference_samples=samples(8.0 * both, rng),
                                              calibration_case=CALIBRATION_CASE,
                                              calibration_samples=samples(2.0 * calibration, rng)))


@pytest.mark.parametrize("slowdown", [1.5, 3.0])
def test_a_slowdown_both_arms_share_fails_when_torch_alone_held_still(tmp_path, slowdown):
    rng = np.random.default_rng(0)
    history = history_at_one(tmp_path, rng)
    case, reference = samples(10.0 * slowdown, rng), samples(8.0 * slowdown, rng)
    # the same-run ratio cannot see it: both arms moved together
    store = BaselineStore(tmp_path / "baselines")
    key = BaselineKey(model="m", model_revision="r", dtype="float32", dataset="book", dataset_sha256="sha",
                      tokens=64, strategy="strict", params={"name": "strict"})
    store.update([BaselineRecord(key, 10.0, float(np.log(10.0)), "cpu", tpot_ratio={"k": [1.25]})])
    ratio = check_ratio_vs_baseline(case, reference, lookup(store, key), key="k", updating=False, what="strict")
    assert ratio.verdict == PASS, ratio.message
    absolute = judge(history, rng, both=slowdown, calibration=1.0)
    assert absolute.verdict == FAIL, absolute.message
    assert "reference arm moved too" in absolute.message and "calibration arm held still" in absolute.message
    assert absolute.details["record"][CASE] != "not checked"  # the flagged run does not re-base the history


def test_when_torch_alone_moved_too_it_is_the_machine(tmp_path):
    rng = np.random.default_rng(1)
    absolute = judge(history_at_one(tmp_path, rng), rng, both=1.5, calibration=1.5)
    assert absolute.verdict == INCONCLUSIVE and "so did the torch-only calibration arm" in absolute.message
    assert set(absolute.details["record"].values()) == {"not checked"}  # this run re-bases the history


def test_no_calibration_history_is_not_a_fail(tmp_path):
    rng = np.random.default_rng(2)
    history = RunHistory(tmp_path / "history", "cpu-test-t1")
    for _ in range(3):
        history.append({CASE: samples(10.0, rng), CASE + REFERENCE_SUFFIX: samples(8.0, rng)}, accepted=True,
                       fingerprint=FP)
    absolute = judge(history, rng, both=1.5, calibration=1.0)
    assert absolute.verdict == INCONCLUSIVE and "calibration arm has no history" in absolute.message


def test_the_calibration_arm_times_torch_alone():
    arm = CalibrationArm("cpu", size=256, repeats=2)
    taken = arm.measure(rounds=3)
    assert len(taken) == 3 and all(t > 0 for t in taken) and arm.samples == taken
