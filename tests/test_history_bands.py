"""The absolute history check can fail: its band comes from runs of the same fingerprint and the
same library versions, with a robust (median/MAD) spread; a band a 3x slowdown passes is not a
check. Built from the tracked `history/` (read only: nothing here writes into it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamllm.harness.history import RunHistory
from streamllm.harness.history_runs import VERSION_FIELDS, version_set
from streamllm.harness.judge_history import HistoryInputs, check_history
from streamllm.harness.verdicts import FAIL, MUST_CATCH, NOT_CHECKED, PASS, robust_band

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ":reference"


def _tracked_cpu_history() -> RunHistory:
    cpu = sorted(p.name for p in (ROOT / "history").iterdir() if p.name.startswith("cpu-"))
    assert cpu, "no tracked CPU history"
    return RunHistory(ROOT / "history", cpu[0])


def _judge(history: RunHistory, slowdown: float) -> dict[str, object]:
    """Every case of the latest run, `slowdown` times slower, its reference arm as it was."""
    latest = history.runs()[-1]
    out = {}
    for case, run in latest.cases.items():
        if case.endswith(REFERENCE):
            continue
        ref = latest.cases.get(case + REFERENCE)
        out[case] = check_history(history, case, [x * slowdown for x in run.samples], what=case, clock="wall time",
                                  floor=0.10, k=5, nightly=False, versions=latest.fingerprint,
                                  inputs=HistoryInputs(reference_case=case + REFERENCE,
                                                       reference_samples=list(ref.samples) if ref else None))
    return out


def test_the_baseline_holds_only_runs_of_the_same_library_versions():
    history = _tracked_cpu_history()
    latest = history.runs()[-1]
    versions = {r.number: version_set(r.fingerprint) for r in history.runs()}
    assert len(set(versions.values())) > 1  # the tracked history spans a library upgrade
    case = next(c for c in latest.cases if not c.endswith(REFERENCE))
    base = history.baseline(case, 5, versions=latest.fingerprint)
    assert base.ok and all(versions[n] == version_set(latest.fingerprint) for n in base.runs)
    everything = history.baseline(case, 20)
    assert set(everything.runs) - set(base.runs)  # without the filter other versions' runs come in
    unversioned = history.baseline(case, 5, versions={"torch": latest.fingerprint.get("torch")})
    assert not unversioned.ok and "(0 such run(s))" in unversioned.reason  # no versions stored: no match
    assert set(VERSION_FIELDS) == {"torch", "transformers"}


def test_same_speed_passes_on_the_tracked_history():
    verdicts = {c: chk.verdict for c, chk in _judge(_tracked_cpu_history(), 1.0).items()}
    assert verdicts and set(verdicts.values()) == {PASS}, verdicts


def test_a_3x_slowdown_fails_every_row_of_the_tracked_history():
    checks = _judge(_tracked_cpu_history(), 3.0)
    assert all(c.verdict == FAIL for c in checks.values()), [c.message for c in checks.values() if c.verdict != FAIL]


def test_a_1_5x_slowdown_fails_every_row_whose_band_is_narrower_than_it():
    """A row's band comes from 3 runs' median/MAD, so a noisy row can be wider than 50 %: that row
    may pass 1.5x (it is named in the band's source), every other row fails."""
    checks = _judge(_tracked_cpu_history(), 1.5)
    narrow = {c: chk for c, chk in checks.items() if chk.details["band"] < 0.5}
    assert len(narrow) >= 0.75 * len(checks), {c: chk.details["band"] for c, chk in checks.items()}
    assert all(chk.verdict == FAIL for chk in narrow.values()), [c.message for c in narrow.values()
                                                                if c.verdict != FAIL]


def test_one_disturbed_run_does_not_widen_the_band():
    quiet = [44.0, 44.5, 43.8, 44.2, 44.1]
    disturbed = [44.0, 44.5, 89.0, 44.2, 44.1]  # one run on a host 2x slower
    assert robust_band(disturbed).width == pytest.approx(robust_band(quiet).width, rel=0.5)
    assert robust_band(disturbed).width < 0.1


def _history(tmp_path: Path, medians: list[float], fingerprint: dict) -> RunHistory:
    history = RunHistory(tmp_path, "cpu-test-t1")
    for m in medians:
        history.append({"book/strict": [m * (1 + 0.001 * i) for i in range(-4, 4)]}, accepted=True,
                       fingerprint=fingerprint)
    return history


def test_a_history_band_a_3x_slowdown_passes_is_not_checked(tmp_path):
    fp = {"torch": "2.13.0+cpu", "transformers": "5.25.0"}
    history = _history(tmp_path, [20.0, 44.0, 100.0], fp)  # runs that disagree 5x
    check = check_history(history, "book/strict", [300.0] * 8, what="strict", clock="wall time", floor=0.10, k=5,
                          nightly=False, versions=fp)
    assert check.verdict == NOT_CHECKED and f"{MUST_CATCH:g}x" in check.message and "cannot fail" in check.message
    other = check_history(history, "book/strict", [300.0] * 8, what="strict", clock="wall time", floor=0.10, k=5,
                          nightly=False, versions={**fp, "transformers": "5.26.0"})
    assert other.verdict == NOT_CHECKED and "transformers 5.26.0" in other.message  # another version set: building
