"""Run history (streamllm.harness.history) on synthetic histories: the last-K-accepted baseline, the
p < 0.002 + band rule, the nightly two-consecutive-points rule (the previous run re-judged from its
samples, no stored verdict), and the append-only store."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from streamllm.harness.history import HistoryError, RunHistory
from streamllm.harness.history_runs import Run
from streamllm.harness.history_verdict import apply_nightly, enters_baseline, judge
from streamllm.harness.verdicts import IMPROVEMENT, NOT_CHECKED, PASS, REGRESSION, UNCONFIRMED

FP = "cpu-0123456789-t2"
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
BAND = 0.10


def rounds(rng: np.random.Generator, level: float, n: int = 10, noise: float = 0.05) -> list[float]:
    """One run's per-round TPOT: the run's level times 5 % lognormal round noise."""
    return list(level * np.exp(rng.normal(0.0, noise, n)))


def process_level(rng: np.random.Generator, ms: float = 40.0, spread: float = 0.03) -> float:
    """Each process lands at its own level (±3 %): what pooled samples of separate runs show."""
    return ms * float(np.exp(rng.normal(0.0, spread)))


def record(hist: RunHistory, results: dict[str, list[float]], *, band: float, nightly: bool = False,
           accept: bool | None = None) -> tuple[dict, Run]:
    """What a bench run does with its history (bench/run_record.append_history): check every case,
    then append the run; a case that moved beyond its band does not enter its baseline unless a
    person accepts (True) or rejects (False) the whole run on purpose."""
    judgements = {case: hist.check(case, samples, band=band, nightly=nightly) for case, samples in results.items()}
    moved = {c: False for c, j in judgements.items() if not enters_baseline(j.raw)} if accept is None else {}
    run = hist.append(results, accepted=True if accept is None else accept, case_accepted=moved)
    return judgements, run


def seeded_history(tmp_path, rng, runs: int = 5, case: str = "strict-book") -> RunHistory:
    hist = RunHistory(tmp_path, FP)
    for i in range(runs):
        hist.append({case: rounds(rng, process_level(rng))}, accepted=True, now=T0 + timedelta(days=i))
    return hist


def test_step_change_flagged_after_two_runs_in_nightly_mode(tmp_path):
    rng = np.random.default_rng(0)
    hist = seeded_history(tmp_path, rng)
    slow = 1.3  # a real 30 % regression lands and stays
    j1, run1 = record(hist, {"strict-book": rounds(rng, slow * process_level(rng))}, band=BAND, nightly=True)
    first = j1["strict-book"]
    assert first.raw == REGRESSION and first.verdict == UNCONFIRMED and not first.flagged
    assert "first point" in first.message
    assert not run1.case_accepted("strict-book")  # a case beyond its band does not enter its baseline
    j2, run2 = record(hist, {"strict-book": rounds(rng, slow * process_level(rng))}, band=BAND, nightly=True)
    second = j2["strict-book"]
    assert second.verdict == REGRESSION and second.flagged
    assert f"run #{run1.number} got regression too" in second.message
    # Without --nightly the first point is flagged at once.
    assert hist.check("strict-book", rounds(rng, slow * 40.0), band=BAND).flagged


def test_single_outlier_run_never_flagged_in_nightly_mode(tmp_path):
    for seed in range(20):
        rng = np.random.default_rng(seed)
        root = tmp_path / str(seed)
        hist = seeded_history(root, rng)
        j, _ = record(hist, {"strict-book": rounds(rng, 2.0 * process_level(rng))}, band=BAND, nightly=True)
        assert j["strict-book"].raw == REGRESSION and not j["strict-book"].flagged
        for _ in range(3):  # back to normal: nothing is ever flagged
            j, run = record(hist, {"strict-book": rounds(rng, process_level(rng))}, band=BAND, nightly=True)
            assert j["strict-book"].verdict == PASS and not j["strict-book"].flagged, j["strict-book"].message
            assert run.case_accepted("strict-book")


def test_a_a_history_no_false_alarms(tmp_path):
    """40 ordinary runs, each judged against its last 5 accepted runs: nothing flagged."""
    rng = np.random.default_rng(7)
    hist = seeded_history(tmp_path, rng, runs=3)
    for _ in range(40):
        j, _ = record(hist, {"strict-book": rounds(rng, process_level(rng))}, band=BAND)
        assert not j["strict-book"].flagged, j["strict-book"].message
    assert len(hist.runs()) == 43


def test_improvement_is_symmetric(tmp_path):
    rng = np.random.default_rng(1)
    hist = seeded_history(tmp_path, rng)
    fast = hist.check("strict-book", rounds(rng, 40.0 / 1.3), band=BAND)
    assert fast.verdict == IMPROVEMENT and fast.flagged and "accept the run on purpose" in fast.message
    # Inside the log-symmetric band [1/1.1, 1.1]: a 5 % change passes however significant.
    assert hist.check("strict-book", rounds(rng, 40.0 * 1.05, noise=0.005), band=BAND).verdict == PASS


def test_too_few_runs_not_checked_with_reason(tmp_path):
    rng = np.random.default_rng(2)
    hist = seeded_history(tmp_path, rng, runs=2)
    j = hist.check("strict-book", rounds(rng, 80.0), band=BAND)
    assert j.verdict == NOT_CHECKED and not j.flagged
    assert "2 accepted run(s)" in j.message and "need 3" in j.message and "1 more accepted run" in j.message
    assert hist.check("lazy-c32-book", rounds(rng, 40.0), band=BAND).verdict == NOT_CHECKED
    # Enough runs but too few samples for Mann-Whitney to ever reach p < 0.002: not checked either.
    few = judge([50.0, 51.0, 52.0], [40.0, 40.5, 41.0, 39.5], BAND)
    assert few.verdict == NOT_CHECKED and "cannot reach Mann-Whitney p < 0.002" in few.message


def test_baseline_pools_last_k_accepted_runs(tmp_path):
    hist = RunHistory(tmp_path, FP)
    for i, (level, ok) in enumerate([(10, True), (11, True), (12, False), (13, True), (14, True)]):
        hist.append({"a": [level, level + 0.5]}, accepted=ok, now=T0 + timedelta(hours=i))
    base = hist.baseline("a", k=3)
    assert base.runs == (2, 4, 5)  # run 3 was rejected, run 1 is older than the last 3
    assert base.samples == (11.0, 11.5, 13.0, 13.5, 14.0, 14.5)
    assert base.run_medians == (11.25, 13.25, 14.25)
    with pytest.raises(ValueError, match="min_runs"):
        hist.baseline("a", k=2, min_runs=3)


def test_append_only_store(tmp_path):
    hist = RunHistory(tmp_path, FP)
    r1 = hist.append({"a": [1.0, 2.0]}, accepted=True, now=T0, meta={"commit": "abc"})
    path1 = tmp_path / FP / r1.filename
    before = path1.read_bytes()
    r2 = hist.append({"a": [1.5]}, accepted=True, case_accepted={"a": False}, now=T0 + timedelta(seconds=1))
    assert (r1.number, r2.number) == (1, 2)
    assert r1.filename == "0001-20250101T000000Z.json" and r2.filename.startswith("0002-")
    assert path1.read_bytes() == before  # never rewritten
    again = RunHistory(tmp_path, FP).runs()
    assert [r.number for r in again] == [1, 2] and again[0] == r1 and not again[1].case_accepted("a")
    assert Run.from_json(json.loads(path1.read_text())) == r1
    # Samples and acceptance only: no verdict is written.
    assert all(set(c) == {"samples_ms", "accepted"} for c in json.loads(path1.read_text())["cases"].values())
    assert not list((tmp_path / FP).glob("*.tmp"))
    with pytest.raises(ValueError, match="finite positive"):
        hist.append({"a": [float("nan")]}, accepted=True)


def test_old_schema_files_are_refused_with_the_conversion_and_left_alone(tmp_path):
    """A `streamllm.history/1` file (it stored each case's verdict, which nothing read) is one line
    naming the file and the conversion; the file stays as it was; converted, it loads as the run."""
    from streamllm.harness.schema.history import convert_v1

    hist = RunHistory(tmp_path, FP)
    run = hist.append({"a": [1.0]}, accepted=True, now=T0)
    path = tmp_path / FP / run.filename
    old = run.to_json() | {"schema": "streamllm.history/1",
                           "cases": {"a": {"samples_ms": [1.0], "verdict": "regression", "accepted": None}}}
    path.write_text(json.dumps(old))
    before = path.read_bytes()
    with pytest.raises(HistoryError) as err:
        RunHistory(tmp_path, FP).runs()
    msg = str(err.value)
    assert msg.startswith(f"{path}: schema 'streamllm.history/1', this checkout reads 'streamllm.history/2'")
    assert "scripts/convert_stored_files.py" in msg and "\n" not in msg
    assert path.read_bytes() == before
    path.write_text(json.dumps(convert_v1(old)))
    assert RunHistory(tmp_path, FP).runs() == [run]


def test_tracked_history_loads_unchanged():
    """Every tracked history/ run loads through its model (HistoryRunModel); reading rewrites nothing."""
    root = Path(__file__).resolve().parents[1] / "history"
    dirs = sorted(d for d in root.iterdir() if d.is_dir())
    assert dirs, f"no history under {root}"
    for d in dirs:
        before = {p: p.read_bytes() for p in d.glob("*.json")}
        runs = RunHistory(root, d.name).runs()
        assert runs and len(runs) == len(before)
        assert {p: p.read_bytes() for p in d.glob("*.json")} == before


def test_concurrent_appends_take_distinct_numbers(tmp_path):
    hist_dir = tmp_path

    def worker(i: int) -> None:
        RunHistory(hist_dir, FP).append({"a": [float(i + 1)]}, accepted=True)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.number for r in RunHistory(hist_dir, FP).runs()) == list(range(1, 9))


def test_malformed_files_fail_with_the_fix(tmp_path):
    hist = RunHistory(tmp_path, FP)
    run = hist.append({"a": [1.0]}, accepted=True, now=T0)
    path = tmp_path / FP / run.filename
    (tmp_path / FP / "README.md").write_text("ignored")
    path.write_text("{not json")
    with pytest.raises(HistoryError, match=r"0001-.*: not JSON \(line 1.*git checkout") as err:
        RunHistory(tmp_path, FP).runs()
    assert "\n" not in str(err.value)
    good = run.to_json()
    for broken, match in [
        (good | {"accepted": "yes"}, "accepted: Input should be a valid boolean"),
        (good | {"schema": "x/1"}, "schema 'x/1', this checkout reads"),
        (good | {"cases": {"a": {"samples_ms": [-1.0]}}}, r"cases\.a\.samples_ms\.0: Input should be greater than 0"),
        (good | {"cases": {"a": {"samples_ms": []}}}, r"cases\.a\.samples_ms: List should have at least 1"),
        (good | {"cases": {"a": {"samples_ms": [1.0], "accepted": "no"}}}, r"cases\.a\.accepted"),
        (good | {"timestamp": "yesterday"}, "not ISO 8601"),
        (good | {"extra_field": 1}, "extra_field: Extra inputs are not permitted"),
        (good | {"number": 7}, "does not match its run number"),
        (good | {"fingerprint_id": "cuda-x"}, "stored under"),
    ]:
        path.write_text(json.dumps(broken))
        with pytest.raises(HistoryError, match=match):
            RunHistory(tmp_path, FP).runs()


def test_nightly_rule_unit():
    j = judge([50.0 + i / 10 for i in range(10)], [40.0 + i / 10 for i in range(10)], BAND, case="x")
    assert j.raw == REGRESSION and j.p_value < 0.002 and j.ratio == pytest.approx(1.25, rel=0.01)
    assert apply_nightly(j, None).verdict == UNCONFIRMED
    assert apply_nightly(j, PASS).verdict == UNCONFIRMED
    assert apply_nightly(j, IMPROVEMENT).verdict == UNCONFIRMED  # opposite direction: not two points
    assert apply_nightly(j, REGRESSION, 4).flagged
    ok = judge([40.0 + i / 10 for i in range(10)], [40.0 + i / 10 for i in range(10)], BAND)
    assert apply_nightly(ok, REGRESSION).verdict == PASS


def test_one_moved_case_does_not_reject_the_others(tmp_path):
    rng = np.random.default_rng(3)
    hist = RunHistory(tmp_path, FP)
    for i in range(3):
        hist.append({"a": rounds(rng, 40.0), "b": rounds(rng, 20.0)}, accepted=True, now=T0 + timedelta(days=i))
    j, run = record(hist, {"a": rounds(rng, 60.0), "b": rounds(rng, 20.0)}, band=BAND, nightly=True)
    assert j["a"].raw == REGRESSION and j["b"].raw == PASS
    assert run.accepted and not run.case_accepted("a") and run.case_accepted("b")
    assert hist.baseline("b", k=3).runs == (2, 3, 4) and hist.baseline("a", k=3).runs == (1, 2, 3)
    # A person accepts the new level on purpose: it becomes the baseline.
    _, run = record(hist, {"a": rounds(rng, 60.0), "b": rounds(rng, 20.0)}, band=BAND, accept=True)
    assert run.case_accepted("a") and hist.baseline("a", k=3).runs == (2, 3, 5)
    # A disturbed run rejected on purpose enters no baseline.
    _, run = record(hist, {"a": rounds(rng, 60.0), "b": rounds(rng, 20.0)}, band=BAND, accept=False)
    assert not run.case_accepted("b") and run.number not in hist.baseline("b").runs


def test_nightly_rejudges_the_previous_samples_not_a_stored_verdict(tmp_path):
    """The previous point is the previous run's samples judged against the baseline it had (a run
    file stores no verdict): ordinary samples confirm nothing; slow samples kept out of the
    baseline do confirm."""
    rng = np.random.default_rng(11)
    hist = seeded_history(tmp_path, rng)
    calm = hist.append({"strict-book": rounds(rng, process_level(rng))}, accepted=True, now=T0 + timedelta(days=9))
    hist = RunHistory(tmp_path, FP)
    j = hist.check("strict-book", rounds(rng, 1.3 * process_level(rng)), band=BAND, nightly=True)
    assert j.raw == REGRESSION and j.verdict == UNCONFIRMED and not j.flagged
    assert f"run #{calm.number} got pass" in j.message

    rng = np.random.default_rng(12)
    hist = seeded_history(tmp_path / "b", rng)
    slow = hist.append({"strict-book": rounds(rng, 1.3 * process_level(rng))}, accepted=True,
                       case_accepted={"strict-book": False}, now=T0 + timedelta(days=9))
    hist = RunHistory(tmp_path / "b", FP)
    prev, raw = hist.previous_verdict("strict-book", band=BAND)
    assert prev == slow and raw == REGRESSION
    j = hist.check("strict-book", rounds(rng, 1.3 * process_level(rng)), band=BAND, nightly=True)
    assert j.verdict == REGRESSION and j.flagged and f"run #{slow.number} got regression too" in j.message


def test_nightly_previous_point_uses_that_runs_baseline_and_acceptance(tmp_path):
    """The previous run is judged against the runs before it (not the later ones), with the band
    `band_of` gives for that baseline; a move it let into its baseline (re-based: its reference arm
    moved alike) is no first point."""
    rng = np.random.default_rng(13)
    hist = seeded_history(tmp_path, rng)
    rebased = hist.append({"strict-book": rounds(rng, 1.3 * process_level(rng))}, accepted=True,
                          now=T0 + timedelta(days=9))
    prev, raw = hist.previous_verdict("strict-book", band=BAND)
    assert prev == rebased and raw == NOT_CHECKED
    # Kept out instead: the same samples are a first point, judged with the band of that run's baseline.
    rng = np.random.default_rng(13)
    hist = seeded_history(tmp_path / "b", rng)
    kept_out = hist.append({"strict-book": rounds(rng, 1.3 * process_level(rng))}, accepted=True,
                           case_accepted={"strict-book": False}, now=T0 + timedelta(days=9))
    seen: list[tuple[float, ...]] = []
    prev, raw = hist.previous_verdict("strict-book", band=BAND, band_of=lambda m: seen.append(tuple(m)) or BAND)
    assert prev == kept_out and raw == REGRESSION
    assert seen == [hist.baseline("strict-book").run_medians]  # runs 1-5: the baseline run #6 had
    # A band so wide the move is inside it: that run passed, so nothing to confirm.
    assert hist.previous_verdict("strict-book", band=BAND, band_of=lambda m: 1.0)[1] == PASS
