"""Bands with a stated false-alarm rate (streamllm.harness.bands, docs/bands.md): the pooled
variance, the prediction interval, MDE90, the full rule simulated as the suite runs it, checks
that cannot fail, and ratios keyed by CPU model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from streamllm.harness.band_prior import Prior, fit_prior
from streamllm.harness.band_rows import store_records, stored_runs
from streamllm.harness.band_simulation import SimRow, rows_from_store, simulate_run
from streamllm.harness.bands import guards, mde90, prediction_band, row_mde90, sidak_alpha
from streamllm.harness.baseline_record import BaselineKey, BaselineRecord
from streamllm.harness.baselines import BaselineStore
from streamllm.harness.judge_lookup import Lookup
from streamllm.harness.judge_ratio import check_ratio_vs_baseline
from streamllm.harness.records import Check
from streamllm.harness.table import armed
from streamllm.harness.verdicts import (
    FAIL,
    FALSE_ALARM_PER_RUN,
    INCONCLUSIVE,
    MDE_POWER,
    NOT_CHECKED,
    PASS,
    PREDICTION_FLOOR,
    WORK_CHECK,
    ratio_key,
)

ROOT = Path(__file__).resolve().parents[1]


def _tracked_records() -> list[BaselineRecord]:
    return store_records(BaselineStore(ROOT / "baselines"))


def _tracked_cpu_key() -> str:
    """The ratio key of the CPU model that recorded the tracked CPU ratios (read, not assumed)."""
    for record in _tracked_records():
        for fp in record.fingerprints.values():
            key = ratio_key(fp, int(fp.get("torch_threads") or 1))
            if fp.get("device_class") == "cpu" and stored_runs(record, "tpot_ratio", key).values:
                return key
    raise AssertionError("no tracked CPU ratios")


# -- the pieces -----------------------------------------------------------------------------------
def test_fit_prior_recovers_the_variance_and_degrees_of_freedom_it_was_drawn_from():
    rng = np.random.default_rng(3)
    s0_sq, d0, df = 1e-4, 6.0, 6
    sigma_sq = d0 * s0_sq / rng.chisquare(d0, 400)  # Smyth's model: scaled inverse chi-square
    s_sq = sigma_sq * rng.chisquare(df, 400) / df
    prior = fit_prior([(s, df) for s in s_sq])
    assert prior.s0_sq == pytest.approx(s0_sq, rel=0.25)
    assert 3.0 < prior.d0 < 12.0, prior
    same = fit_prior([(s, df) for s in s0_sq * rng.chisquare(df, 400) / df])  # one shared variance
    assert same.d0 > 100 and same.s0_sq == pytest.approx(s0_sq, rel=0.1)  # near-complete pooling
    assert fit_prior([(1e-4, 6), (2e-4, 6)]) is None  # too few rows to pool


def test_sidak_level_keeps_a_run_of_m_rows_at_the_stated_rate():
    for m in (1, 5, 17, 40):
        alpha = sidak_alpha(m)
        assert 1 - (1 - alpha) ** m == pytest.approx(FALSE_ALARM_PER_RUN)


def test_band_is_the_moderated_student_prediction_interval():
    values = [1.00, 1.01, 0.995, 1.004, 0.99, 1.012, 1.0]
    prior = Prior(1.2e-4, 5.0, 17)
    band = prediction_band(values, prior, 17)
    logs = np.log(values)
    n = len(values)
    s_tilde_sq = (5.0 * 1.2e-4 + (n - 1) * logs.var(ddof=1)) / (5.0 + n - 1)
    alpha = 1 - (1 - FALSE_ALARM_PER_RUN) ** (1 / 17)
    half = stats.t.ppf(1 - alpha / 2, 5.0 + n - 1) * math.sqrt(s_tilde_sq) * math.sqrt(1 + 1 / n)
    assert band.log_half == pytest.approx(half, rel=1e-9)
    assert band.centre == pytest.approx(math.exp(logs.mean()))
    assert band.can_fail and "Šidák over 17 rows" in band.source
    tiny = prediction_band([1.0, 1.0001, 0.9999, 1.0], None, 1)
    assert tiny.floored and tiny.log_half == PREDICTION_FLOOR
    assert prediction_band([1.0, 1.1], None, 1) is None  # two values, no prior: nothing to stand on


def test_mde90_is_the_power_of_the_band_it_summarizes():
    """At the MDE90 of each simulated recording, a new process drawn from the same model lands
    beyond the band's edge ~90 % of the time (Smyth's model, so the statistic is noncentral t)."""
    rng = np.random.default_rng(5)
    prior = Prior(1e-4, 5.0, 17)
    caught, trials = 0, 3000
    for _ in range(trials):
        sigma = math.sqrt(prior.d0 * prior.s0_sq / rng.chisquare(prior.d0))
        stored = np.exp(rng.normal(0, sigma, 7))
        band = prediction_band(stored, prior, 17)
        delta = math.log1p(mde90(band))
        new = rng.normal(delta, sigma)
        caught += math.log(1 / band.centre) + new > band.log_half
    rate = caught / trials
    # the plug-in of s̃ for σ makes it approximate: within 4 points of MDE_POWER
    assert abs(rate - MDE_POWER) < 0.04, rate
    assert guards(0.049) and not guards(0.051)


def test_row_mde90_grows_with_the_rows_spread_and_is_none_without_a_stated_rate():
    prior = Prior(1e-4, 5.0, 17)
    quiet = row_mde90([1.0, 1.002, 0.998, 1.001, 0.999, 1.0, 1.0], prior, 17)
    noisy = row_mde90([1.0, 1.03, 0.97, 1.02, 0.98, 1.01, 0.99], prior, 17)
    assert 0 < quiet < noisy
    assert row_mde90([1.0, 1.01, 0.99], None, 17) > row_mde90([1.0, 1.01, 0.99], prior, 17)  # pooling helps
    assert row_mde90([1.0], None, 17) is None  # the fallback band states no rate
    assert row_mde90([0.3, 1.0, 3.3], None, 17) is None  # a band that cannot fail has no MDE


# -- the full rule, simulated ------------------------------------------------------------------------
@pytest.mark.slow  # ~10-20 s of simulated nightly runs
def test_a_nightly_run_false_alarms_at_most_the_stated_rate():
    """17 rows with the tracked rows' own noise, stored processes and a new process from the same
    distribution, judged by check_ratio_vs_baseline with the rerun: whole runs with any FAIL."""
    rows = rows_from_store(_tracked_records(), _tracked_cpu_key())
    assert len(rows) >= 10
    rng = np.random.default_rng(11)
    runs = 600
    alarms = sum(any(c.verdict == FAIL for c in simulate_run(rows, rng)) for _ in range(runs))
    rate = alarms / runs
    se = math.sqrt(FALSE_ALARM_PER_RUN * (1 - FALSE_ALARM_PER_RUN) / runs)
    assert rate <= FALSE_ALARM_PER_RUN + 2.5 * se, f"{alarms} of {runs} runs false-alarmed"


@pytest.mark.parametrize("slowdown", [1.5, 3.0])
def test_a_large_slowdown_fails_every_row_with_the_typical_noise(slowdown):
    rows = rows_from_store(_tracked_records(), _tracked_cpu_key())
    rng = np.random.default_rng(int(slowdown * 10))
    checks = [c for _ in range(10) for c in simulate_run(rows, rng, slowdown=slowdown)]
    assert all(c.verdict == FAIL for c in checks), [c.message for c in checks if c.verdict != FAIL][:2]


def test_the_full_rule_catches_about_mde90_at_a_rows_mde90():
    """End to end: every row slowed by its own MDE90 (as the judge reports it) fails about 90 % of
    the time; inconclusive counts as a miss. (Approximate: the MDE plugs s̃ in for σ.)"""
    row = SimRow(sd_process=0.009, sd_round=0.013, label="strict")
    rows = [row] * 17
    rng = np.random.default_rng(2)
    mdes = [c.details["mde90"] for _ in range(20) for c in simulate_run(rows, rng)]
    mde = float(np.median(mdes))
    checks = [c for _ in range(40) for c in simulate_run(rows, rng, slowdown=1 + mde)]
    rate = sum(c.verdict == FAIL for c in checks) / len(checks)
    assert 0.8 < rate < 0.97, (mde, rate)


# -- checks that cannot fail --------------------------------------------------------------------------
def _record(values: list[float], key: str = "cpu:X-t1", **extra) -> BaselineRecord:
    bkey = BaselineKey(model="m", model_revision="r", dtype="float32", dataset="book", dataset_sha256="sha",
                       tokens=1024, strategy="strict", params={"name": "strict"})
    return BaselineRecord(bkey, 10.0, math.log(10.0), "cpu", tpot_ratio={key: values}, **extra)


def _arms(ratio: float, rng: np.random.Generator, sd: float = 0.005) -> tuple[list[float], list[float]]:
    ref = (40 * np.exp(rng.normal(0, 0.01, 16))).tolist()
    return [r * ratio * math.exp(rng.normal(0, sd)) for r in ref], ref


def test_a_band_a_3x_slowdown_passes_is_not_checked_and_not_armed():
    rng = np.random.default_rng(0)
    found = Lookup(_record([0.5, 1.0, 2.2]), Path("b.json"))  # processes that disagree 4x
    case, ref = _arms(3.0, rng)
    check = check_ratio_vs_baseline(case, ref, found, key="cpu:X-t1", updating=False, what="strict")
    assert check.verdict == NOT_CHECKED and "cannot fail" in check.message
    ok, why = armed([Check("tpot", WORK_CHECK, PASS, "m"), check])
    assert not ok and "no live TPOT check" in why
    quiet = Lookup(_record([1.0, 1.01, 0.99, 1.005]), Path("b.json"))
    assert check_ratio_vs_baseline(case, ref, quiet, key="cpu:X-t1", updating=False, what="s").verdict == FAIL


def test_outside_the_band_with_a_ci_that_includes_the_stored_value_is_rerun_then_judged():
    rng = np.random.default_rng(1)
    found = Lookup(_record([1.0, 1.01, 0.99, 1.005, 0.995]), Path("b.json"))
    noisy_case, noisy_ref = _arms(1.06, rng, sd=0.2)  # a loaded machine: CI much wider than the band
    calls = []

    def rerun():
        calls.append(1)
        return _arms(1.0, rng)

    check = check_ratio_vs_baseline(noisy_case, noisy_ref, found, key="cpu:X-t1", updating=False, what="s",
                                    rerun=rerun)
    assert calls and check.details["attempts"][0]["verdict"] == INCONCLUSIVE
    assert check.verdict in (PASS, INCONCLUSIVE) and check.verdict != FAIL


# -- keys that match what varies ----------------------------------------------------------------------
def test_ratios_are_keyed_by_cpu_model_and_threads():
    fp = {"device_class": "cpu", "cpu_model": "AMD EPYC"}
    assert ratio_key(fp, 1) == "cpu:AMD EPYC-t1"
    assert ratio_key({"device_class": "cpu", "cpu_model": "Intel(R) Xeon(R) Processor"}, 1) != ratio_key(fp, 1)
    assert ratio_key({"device_class": "cuda:NVIDIA H100", "cpu_model": "AMD EPYC"}, 1) == "cuda:NVIDIA H100"


def test_legacy_cpu_ratios_belong_to_the_cpu_model_that_recorded_them():
    """The tracked `cpu-t1` ratios were recorded by one CPU model (the only one whose fingerprint
    holds as many run medians): read as that model's; another model's row is not checked."""
    records = [r for r in _tracked_records() if r.tpot_ratio.get("cpu-t1")]
    assert records
    record = records[0]
    mine = _tracked_cpu_key()
    got = stored_runs(record, "tpot_ratio", mine)
    assert got.values == record.tpot_ratio["cpu-t1"] and "read as" in got.note
    other_models = {fp["cpu_model"] for fp in record.fingerprints.values()
                    if fp.get("device_class") == "cpu"} - {mine.removeprefix("cpu:").rsplit("-t", 1)[0]}
    assert other_models  # the tracked file holds a second CPU model's timings
    other = f"cpu:{sorted(other_models)[0]}-t1"
    rng = np.random.default_rng(0)
    case, ref = _arms(float(np.mean(got.values)), rng)
    check = check_ratio_vs_baseline(case, ref, Lookup(record, Path("b.json")), key=other, updating=False, what="x")
    assert check.verdict == NOT_CHECKED and "not this CPU model" in check.message


def test_legacy_ratios_no_single_cpu_model_could_have_recorded_are_not_used():
    fps = {"cpu-a": {"device_class": "cpu", "cpu_model": "A", "torch_threads": 1},
           "cpu-b": {"device_class": "cpu", "cpu_model": "B", "torch_threads": 1}}
    bkey = BaselineKey(model="m", model_revision="r", dtype="float32", dataset="book", dataset_sha256="sha",
                       tokens=1024, strategy="strict", params={"name": "strict"})
    record = BaselineRecord(bkey, 10.0, math.log(10.0), "cpu", fingerprints=fps,
                            tpot_runs_ms={"cpu-a": [40.0, 41.0, 40.5], "cpu-b": [60.0, 61.0, 60.5]},
                            tpot_ratio={"cpu-t1": [1.0, 1.01, 0.99]})
    got = stored_runs(record, "tpot_ratio", "cpu:A-t1")
    assert got.values == [] and "2 (A, B) CPU model(s) could have recorded them" in got.note
    record.tpot_runs_ms["cpu-b"] = [60.0]  # only A recorded three runs
    assert stored_runs(record, "tpot_ratio", "cpu:A-t1").values == [1.0, 1.01, 0.99]
    assert stored_runs(record, "tpot_ratio", "cpu:B-t1").values == []
    record.tpot_ratio["cpu:A-t1"] = [1.002]  # recorded after the re-keying: both read
    assert stored_runs(record, "tpot_ratio", "cpu:A-t1").values == [1.0, 1.01, 0.99, 1.002]


def test_graph_rows_ratios_do_not_set_their_peers_prior():
    """A graph row is judged on its device time; its same-run ratio (against a host-bound eager
    reference, 0.12-0.18 across three H100 processes) is never judged and must not widen or narrow
    the prior the other rows' ratio bands pool."""
    from streamllm.harness.band_rows import key_group

    quiet = [_record([1.0, 1.01, 0.99]), _record([1.2, 1.21, 1.19]), _record([0.8, 0.805, 0.795])]
    graph = _record([0.118, 0.178, 0.169], device_time_ms={"wk-1": [3.67, 3.54, 3.55]})
    alone = key_group(quiet, "tpot_ratio", "cpu:X-t1")
    with_graph = key_group([*quiet, graph], "tpot_ratio", "cpu:X-t1")
    assert with_graph.rows == alone.rows == 3
    assert with_graph.prior == alone.prior


def test_leave_one_out_counts_only_processes_a_band_could_be_built_for():
    from streamllm.harness.bands import leave_one_out

    got = leave_one_out([("a", [1.0]), ("b", [2.0]), ("c", [1.0, 1.02])], [0.9])
    assert got[0.9][1] == 0  # single processes and a pair without a prior: the fallback, not a miss
