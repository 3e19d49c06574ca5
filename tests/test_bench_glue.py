"""The bench suite's glue: baselines missing / corrupt / foreign / edited, the timing slices, the
run JSON and the report. A tiny random Llama stands in for the model (semantics, not quality)."""

from __future__ import annotations

import json
import math
import mmap
from pathlib import Path

import pytest
import torch

from bench.catalog import build_catalog, select
from bench.suite import Suite, SuiteOptions
from conftest import tiny_llama
from streamllm.decode_slice import minor_faults, prepare_slice
from streamllm.evaluate import evaluate_tokens
from streamllm.harness.baseline_record import BaselineKey, BaselineRecord
from streamllm.harness.baselines import BaselineError, BaselineStore
from streamllm.harness.judge_lookup import Lookup, lookup
from streamllm.harness.judge_ppl import check_ppl
from streamllm.harness.judge_ratio import check_ratio_vs_baseline
from streamllm.harness.table import format_table
from streamllm.harness.verdicts import ERROR, FAIL, INCONCLUSIVE, NOT_CHECKED, PASS, RECORDED
from streamllm.measure import time_rounds
from streamllm.models import LoadedModel
from streamllm.strategies import make_strategy

SINK, WINDOW, TOKENS = 4, 12, 128


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return tiny_llama()


def make_suite(tmp_path: Path, tiny: LoadedModel, **overrides) -> Suite:
    options = SuiteOptions(model="tiny-llama", datasets=("synthetic",), tokens=TOKENS, sink=SINK, window=WINDOW,
                           rounds=3, warmup_rounds=0, min_steps=4, baselines_dir=str(tmp_path / "baselines"),
                           report_dir=str(tmp_path / "reports"), history_dir=str(tmp_path / "history"), **overrides)
    suite = Suite(options, tmp_path)
    suite.weights.use(tiny)  # the suite would load options.model by name; inject the tiny model
    return suite


def run(suite: Suite, *case_ids: str) -> dict[str, object]:
    return {cid: suite.run_case(suite.case(cid), "synthetic", benchmark=None) for cid in case_ids}


def ppl_check(result):
    return next(c for c in result.checks if c.name == "(a) PPL vs baseline")


def tpot_check(result, name: str = "(b) TPOT / reference, same run"):
    return next(c for c in result.checks if c.name == name)


# -- baselines through the suite ---------------------------------------------------------------
def test_missing_baseline_is_reported_not_checked_and_recorded_only_on_update(tmp_path, tiny):
    suite = make_suite(tmp_path, tiny)
    out = run(suite, "strict")["strict"]
    assert ppl_check(out).verdict == NOT_CHECKED and "no baseline: not checked" in ppl_check(out).message
    assert tpot_check(out).verdict == NOT_CHECKED
    assert not suite.records and not (tmp_path / "baselines").exists()  # reading never writes
    assert out.verdicts["a"] == NOT_CHECKED  # the verdict table shows it, never "pass"

    updating = make_suite(tmp_path, tiny, update_baselines=True)
    out = run(updating, "strict")["strict"]
    assert ppl_check(out).verdict == RECORDED
    written = updating.write_baselines()
    assert len(written) == 1 and written[0].is_file()


def test_two_percent_ppl_edit_fails_exactly_that_strategy(tmp_path, tiny):
    recorder = make_suite(tmp_path, tiny, update_baselines=True)
    run(recorder, "dense", "strict", "lazy-c16")
    (path,) = recorder.write_baselines()

    clean = run(make_suite(tmp_path, tiny), "dense", "strict", "lazy-c16")
    assert all(ppl_check(r).verdict == PASS for r in clean.values()), [ppl_check(r).message for r in clean.values()]

    data = json.loads(path.read_text())
    label = recorder.case("strict").label
    stored = data["records"][label]["ppl"] * 1.02
    data["records"][label]["ppl"] = stored
    path.write_text(json.dumps(data, indent=2))

    edited = run(make_suite(tmp_path, tiny), "dense", "strict", "lazy-c16")
    verdicts = {cid: ppl_check(r).verdict for cid, r in edited.items()}
    assert verdicts == {"dense": PASS, "strict": FAIL, "lazy-c16": PASS}
    message = ppl_check(edited["strict"]).message
    measured = edited["strict"].evaluation.ppl
    assert str(path.relative_to(tmp_path)) in message or str(path) in message
    assert f"{measured:.6g}" in message and f"{stored:.6g}" in message
    assert "tolerance ±0.002" in message
    assert abs(ppl_check(edited["strict"]).details["delta_ln"] - math.log(1 / 1.02)) < 1e-6


def test_corrupt_baseline_is_a_clear_error_naming_the_file(tmp_path, tiny):
    recorder = make_suite(tmp_path, tiny, update_baselines=True)
    run(recorder, "strict")
    (path,) = recorder.write_baselines()
    path.write_text(path.read_text()[:-40])  # truncated JSON

    out = run(make_suite(tmp_path, tiny), "strict")["strict"]
    check = ppl_check(out)
    assert check.verdict == ERROR and check.failed
    assert str(path) in check.message and "not JSON" in check.message
    assert "git checkout --" in check.message and "--update-baselines" in check.message

    # an update never overwrites a file that does not load: it stops with the file's error, the
    # bytes stay; once the file is deleted (the fix the message names) the update records it
    fixer = make_suite(tmp_path, tiny, update_baselines=True)
    assert ppl_check(run(fixer, "strict")["strict"]).verdict == RECORDED
    before = path.read_bytes()
    with pytest.raises(BaselineError, match="delete it and re-record"):
        fixer.write_baselines()
    assert path.read_bytes() == before
    path.unlink()
    fixer.write_baselines()
    assert ppl_check(run(make_suite(tmp_path, tiny), "strict")["strict"]).verdict == PASS


def test_ratio_of_another_device_class_is_not_checked_here(tmp_path, tiny):
    recorder = make_suite(tmp_path, tiny, update_baselines=True)
    run(recorder, "strict")
    (path,) = recorder.write_baselines()
    data = json.loads(path.read_text())
    body = next(iter(data["records"].values()))
    (mine,) = body["tpot_ratio"]
    body["tpot_ratio"] = {"NVIDIA H100 80GB HBM3": body["tpot_ratio"][mine]}
    path.write_text(json.dumps(data, indent=2))

    out = run(make_suite(tmp_path, tiny), "strict")["strict"]
    assert ppl_check(out).verdict == PASS
    ratio = tpot_check(out)
    assert ratio.verdict == NOT_CHECKED
    assert f"no stored ratio for {mine}" in ratio.message and "H100" in ratio.message
    # the work counts do not depend on the machine: still checked, and equal
    assert tpot_check(out, "(b) work per step vs baseline").verdict == PASS


def test_mismatched_dataset_text_is_an_error(tmp_path, tiny):
    recorder = make_suite(tmp_path, tiny, update_baselines=True)
    run(recorder, "strict")
    (path,) = recorder.write_baselines()
    data = json.loads(path.read_text())
    data["dataset_sha256"] = "0000000000000000"
    path.write_text(json.dumps(data, indent=2))
    check = ppl_check(run(make_suite(tmp_path, tiny), "strict")["strict"])
    assert check.verdict == ERROR and "key mismatch" in check.message and str(path) in check.message


def test_update_then_append_adds_one_ratio_run_and_keeps_the_counts(tmp_path, tiny):
    recorder = make_suite(tmp_path, tiny, update_baselines=True)
    run(recorder, "strict")
    (path,) = recorder.write_baselines()
    appender = make_suite(tmp_path, tiny, update_baselines=True, append_baselines=True)
    run(appender, "strict")
    appender.write_baselines()
    (record,) = BaselineStore(tmp_path / "baselines").read(path).records.values()
    (ratios,) = record.tpot_ratio.values()
    assert len(ratios) == 2 and all(0.2 < r < 5 for r in ratios)
    assert len(record.work_counts) == 1 and record.runs_averaged == 2


def test_a_case_that_cannot_be_a_baseline_fails_in_one_line_and_keeps_the_old_entry(tmp_path, tiny, monkeypatch):
    """--update-baselines with a non-finite PPL (any value the record's model refuses): that case fails
    with one line naming it and the fix, its row stays in the run, its stored entry is untouched,
    and the run's other rows are recorded."""
    import dataclasses

    from bench.measuring import Measurements
    from bench.run_record import UnrecordableCaseError

    first = make_suite(tmp_path, tiny, update_baselines=True)
    run(first, "strict", "window")
    (path,) = first.write_baselines()
    before = BaselineStore(tmp_path / "baselines").read(path).records
    evaluate = Measurements.evaluate

    def broken(self, case, dataset):
        ev = evaluate(self, case, dataset)
        return dataclasses.replace(ev, ppl=float("nan")) if case.id == "strict" else ev

    monkeypatch.setattr(Measurements, "evaluate", broken)
    again = make_suite(tmp_path, tiny, update_baselines=True)
    with pytest.raises(UnrecordableCaseError) as caught:
        again.run_case(again.case("strict"), "synthetic", benchmark=None)
    message = str(caught.value)
    assert "\n" not in message and "strict" in message and "--update-baselines" in message, message
    again.run_case(again.case("window"), "synthetic", benchmark=None)
    assert [r.case.id for r in again.results] == ["strict", "window"]  # the row stays in the run
    again.write_baselines()
    after = BaselineStore(tmp_path / "baselines").read(path).records
    strict = next(k for k in before if k.startswith("strict"))
    window = next(k for k in before if k.startswith("window"))
    assert after[strict] == before[strict]  # the refused row's entry as it was
    assert again.written == [path] and after[window] != before[window]  # the other row recorded anew


# -- the assertion helpers directly ------------------------------------------------------------
def _record(tmp_path: Path, samples: dict[str, list[float]], ppl: float = 20.0) -> tuple[BaselineStore, BaselineKey]:
    store = BaselineStore(tmp_path / "b")
    key = BaselineKey(model="m", model_revision="r", dtype="float32", dataset="d", dataset_sha256="sha",
                      tokens=64, strategy="strict-s4-w12", params={"name": "strict"})
    record = BaselineRecord(key, ppl, math.log(ppl), "cpu", tpot_runs_ms={k: [sorted(v)[len(v) // 2]] for k, v in samples.items()},
                            fingerprints={k: {} for k in samples})
    store.update([record])
    return store, key


def _ratio_store(tmp_path: Path, runs: list[float], key: str = "cpu-t1") -> tuple[BaselineStore, BaselineKey]:
    store = BaselineStore(tmp_path / "b")
    bkey = BaselineKey(model="m", model_revision="r", dtype="float32", dataset="d", dataset_sha256="sha",
                       tokens=64, strategy="strict-s4-w12", params={"name": "strict"})
    record = BaselineRecord(bkey, 20.0, math.log(20.0), "cpu", tpot_ratio={key: runs})
    store.update([record])
    return store, bkey


def test_ratio_helper_pass_fail_and_one_rerun_when_inconclusive(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    store, key = _ratio_store(tmp_path, [1.05])
    found = lookup(store, key)
    ref = (40 + rng.normal(0, 0.8, 16)).tolist()
    same = [r * 1.05 * (1 + rng.normal(0, 0.01)) for r in ref]
    assert check_ratio_vs_baseline(same, ref, found, key="cpu-t1", updating=False, what="x").verdict == PASS
    slow = [x * 1.15 for x in same]  # the case's own code 15 % slower, the reference not
    failed = check_ratio_vs_baseline(slow, ref, found, key="cpu-t1", updating=False, what="x")
    assert failed.verdict == FAIL and failed.details["file"].endswith(".json")
    drift = [x * 1.5 for x in same]  # the machine 50 % slower: both arms move, the ratio does not
    assert check_ratio_vs_baseline(drift, [r * 1.5 for r in ref], found, key="cpu-t1", updating=False,
                                   what="x").verdict == PASS

    calls = []

    def rerun():
        calls.append(1)
        more_ref = (40 + rng.normal(0, 0.8, 16)).tolist()
        return [r * 1.05 * 1.10 * (1 + rng.normal(0, 0.03)) for r in more_ref], more_ref

    edge_ref = [40.0] * 4
    edge = [40.0 * 1.05 * 1.10 * m for m in (0.95, 1.05, 1.10, 1.30)]  # noisy, straddles the +10 % edge
    check = check_ratio_vs_baseline(edge, edge_ref, found, key="cpu-t1", updating=False, what="x", rerun=rerun)
    assert len(calls) == 1 and len(check.details["attempts"]) == 2
    assert check.details["attempts"][0]["verdict"] == INCONCLUSIVE


def test_ratio_band_is_the_stored_runs_prediction_interval(tmp_path):
    """Band = the prediction interval of the stored per-process ratios (docs/bands.md); one stored
    run: the named fallback. Runs whose ratio moved 0.8-1.25 make a band a 3x slowdown passes: not
    checked, never a pass. A quiet A/A spread makes a tight band: a 6 % slower step fails it, inside
    a fallback ±10 % it would pass."""
    import numpy as np

    rng = np.random.default_rng(1)
    ref = (40 + rng.normal(0, 0.4, 16)).tolist()
    case = [r * 1.30 * (1 + rng.normal(0, 0.005)) for r in ref]  # 1.3x: far outside ±10 %
    store, key = _ratio_store(tmp_path, [1.0])
    assert check_ratio_vs_baseline(case, ref, lookup(store, key), key="cpu-t1", updating=False,
                                   what="x").verdict == FAIL
    store, key = _ratio_store(tmp_path / "spread", [0.8, 1.0, 1.25])  # runs whose ratio moved
    check = check_ratio_vs_baseline([x * 3 for x in case], ref, lookup(store, key), key="cpu-t1", updating=False,
                                    what="x")
    assert check.verdict == NOT_CHECKED and "cannot fail" in check.message and check.details["band"] > 2
    six = [r * 1.06 * (1 + rng.normal(0, 0.002)) for r in ref]
    store, key = _ratio_store(tmp_path / "quiet", [1.0, 1.004, 0.997, 1.002])
    tight = check_ratio_vs_baseline(six, ref, lookup(store, key), key="cpu-t1", updating=False, what="x")
    assert tight.verdict == FAIL and tight.details["band"] < 0.03, tight.message
    assert "prediction interval of 4 processes" in tight.message
    store, key = _ratio_store(tmp_path / "one", [1.0])
    loose = check_ratio_vs_baseline(six, ref, lookup(store, key), key="cpu-t1", updating=False, what="x")
    assert loose.verdict == PASS and "fallback" in loose.message


def test_a_slower_ratio_whose_case_arm_faults_is_the_allocators_not_a_regression(tmp_path):
    """Seen on CPU with INT8: some processes' heaps grow ~5 MiB a step under the case arm (2000
    page faults a step) and its ratio reads 1.3 where others read 1.03. That is INCONCLUSIVE, never
    FAIL; a case that does not fault, both arms faulting alike, or a faster ratio still fail."""
    import numpy as np

    from streamllm.harness.verdicts import ALLOCATOR_CHURN_FAULTS

    rng = np.random.default_rng(2)
    store, key = _ratio_store(tmp_path, [1.0])
    found = lookup(store, key)
    ref = (40 + rng.normal(0, 0.4, 16)).tolist()
    slow = [r * 1.30 * (1 + rng.normal(0, 0.005)) for r in ref]

    def verdict(case, faults):
        return check_ratio_vs_baseline(case, ref, found, key="cpu-t1", updating=False, what="x", faults=faults)

    churn = verdict(slow, (2000.0, 0.0))
    assert churn.verdict == INCONCLUSIVE and "2000 minor page faults" in churn.message
    assert churn.details["page_faults_per_step"] == [2000.0, 0.0]
    assert verdict(slow, (ALLOCATOR_CHURN_FAULTS - 1.0, 0.0)).verdict == FAIL
    assert verdict(slow, (2000.0, 1900.0)).verdict == FAIL  # both arms fault: the gap is the case's
    assert verdict(slow, None).verdict == FAIL
    assert verdict(slow, (None, None)).verdict == FAIL
    fast = [r * 0.7 for r in ref]
    assert verdict(fast, (2000.0, 0.0)).verdict == FAIL  # faster is never put down to the allocator
    same = [r * (1 + rng.normal(0, 0.005)) for r in ref]
    assert verdict(same, (2000.0, 0.0)).verdict == PASS


def test_a_step_that_touches_fresh_memory_is_counted_in_its_page_faults(tiny):
    """decode_slice.DecodeSlice counts each step's minor page faults; a step that keeps 8 MiB of fresh,
    written memory alive every step shows ~2048 of them, the plain step few."""
    if minor_faults() is None:
        pytest.skip("no page-fault count on this platform")
    spec = make_strategy("strict", sink=SINK, window=WINDOW)
    ids = torch.randint(0, 97, (TOKENS,), generator=torch.Generator().manual_seed(4))
    plain = time_rounds(prepare_slice(tiny, ids, spec, timed_steps=16), steps=4, cycle=1, rounds=2, warmup_rounds=1)
    growing = prepare_slice(tiny, ids, spec, timed_steps=16)
    kept, step = [], growing.decoder.step

    def step_and_grow(token):
        # 8 MiB of fresh anonymous pages, written, never freed while timing: from mmap itself, since
        # the heap may hand back pages an earlier test already touched (glibc raises its mmap
        # threshold after large frees), which fault no more
        fresh = mmap.mmap(-1, 8 << 20)
        torch.frombuffer(fresh, dtype=torch.uint8).fill_(1)
        kept.append(fresh)
        return step(token)

    growing.decoder.step = step_and_grow
    grown = time_rounds(growing, steps=4, cycle=1, rounds=2, warmup_rounds=1)
    assert len(plain.faults) == len(plain.step_ms) and plain.summary()["page_faults_per_step"] is not None
    assert plain.faults_per_step < 256 < 1500 < grown.faults_per_step


def test_ppl_helper_cross_device_tolerance(tmp_path):
    store, key = _record(tmp_path, {"cpu-aaaa": [1.0] * 5}, ppl=20.0)
    found = lookup(store, key)
    within_cross = 20.0 * math.exp(0.005)
    assert check_ppl(within_cross, found, device_class="cpu", updating=False, what="x").verdict == FAIL
    assert check_ppl(within_cross, found, device_class="cuda:NVIDIA H100", updating=False, what="x").verdict == PASS
    missing = Lookup(None, tmp_path / "nope.json")
    assert check_ppl(20.0, missing, device_class="cpu", updating=False, what="x").verdict == NOT_CHECKED


# -- timing slices -----------------------------------------------------------------------------
@pytest.mark.parametrize("name,params", [
    ("dense", {}),
    ("strict", {"sink": SINK, "window": WINDOW}),
    ("lazy", {"sink": SINK, "window": WINDOW, "compress_every": 8}),
    ("refresh", {"sink": SINK, "window": WINDOW, "compress_every": 8, "refresh": 2}),
    ("strict-static", {"sink": SINK, "window": WINDOW}),
    ("strict-ring", {"sink": SINK, "window": WINDOW}),
])
def test_filled_slice_decodes_what_the_token_loop_decodes(tiny, name, params):
    import dataclasses

    base, _, cache = name.partition("-")
    spec = make_strategy(base, **params)
    if cache:
        spec = dataclasses.replace(spec, cache=cache)
    ids = torch.randint(0, 97, (TOKENS,), generator=torch.Generator().manual_seed(3))
    reference = evaluate_tokens(tiny, ids, spec)
    cycle = spec.compress_every
    slice_ = prepare_slice(tiny, ids, spec, timed_steps=4 * cycle * 3)
    timing = time_rounds(slice_, steps=4 * cycle, cycle=cycle, rounds=2, warmup_rounds=1)
    expected = torch.tensor([reference.trace.nll[t] for t in timing.positions], dtype=torch.float64)
    assert torch.allclose(torch.tensor(timing.nll, dtype=torch.float64), expected, atol=1e-4)
    # the timed steps are at steady state: every cycle prunes once (dense never)
    assert sum(timing.prune_flags) == (0 if base == "dense" else len(timing.step_ms) // cycle)
    # one sample per round (a round is whole cycles): the unit the statistics compare
    assert len(timing.samples) == timing.rounds == len(timing.step_ms) // (4 * cycle)


# -- selection, table, run JSON and report ----------------------------------------------------
def test_selection():
    catalog = build_catalog(4, 124)
    default = [c.id for c in select(catalog, "default", "cpu")]
    assert default[0] == "dense" and "compile" not in default and "lazy-c128" not in default
    assert "compile" in [c.id for c in select(catalog, "default", "cuda")]
    assert [c.id for c in select(catalog, "lazy-c32,strict", "cpu")] == ["strict", "lazy-c32"]
    with pytest.raises(ValueError, match="unknown strategy"):
        select(catalog, "nope", "cpu")


def test_run_json_and_report(tmp_path, tiny):
    from streamllm.harness.report import run_report

    suite = make_suite(tmp_path, tiny)
    run(suite, "dense", "strict", "lazy-c16")
    lines = format_table([r.row() for r in suite.results])
    assert lines[0].split()[:2] == ["dataset", "strategy"] and len(lines) == 2 + 3
    path = suite.write_run()
    data = json.loads(path.read_text())
    assert {r["case"] for r in data["results"]} == {"dense", "strict", "lazy-c16"}
    lazy = next(r for r in data["results"] if r["case"] == "lazy-c16")
    assert len(lazy["trace"]["nll"]) == TOKENS - 1 and lazy["trace"]["prune_steps"]
    report, summary = run_report(tmp_path / "reports" / "runs", None, tmp_path / "out")
    text = report.read_text()
    assert "| strategy | PPL |" in text and "lazy-s4-w12-c16" in text and "no baseline: not checked" in text
    assert (tmp_path / "out" / "report.html").is_file() and (tmp_path / "out" / "ppl_vs_tpot.png").is_file()
    assert summary["passed"] and summary["verdict_counts"]["not checked"] >= 3
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["run"] == str(path)


def test_loop_evaluation_equals_the_token_loop(tmp_path, tiny):
    """refresh (no parallel evaluator): chunked fill + timed rounds + tail = evaluate_tokens."""
    suite = make_suite(tmp_path, tiny)
    case = suite.case("refresh")
    assert suite.uses_loop(case)
    out = run(suite, "refresh")["refresh"]
    reference = evaluate_tokens(tiny, suite.text("synthetic").ids, case.spec)
    got = out.evaluation.trace
    assert len(got.nll) == TOKENS - 1
    assert torch.allclose(torch.tensor(got.nll), torch.tensor(reference.trace.nll), atol=1e-4)
    assert got.prune_steps == reference.trace.prune_steps and got.evicted == reference.trace.evicted
    assert got.position == reference.trace.position and got.kv_length == reference.trace.kv_length
    assert out.evaluation.ppl == pytest.approx(reference.ppl, rel=1e-5)
    assert len(out.timing.samples) >= 2  # the decode rounds double as timing samples


def test_findings_pass_fail_on_either_side_and_not_applicable(tmp_path, tiny, monkeypatch):
    from bench import findings
    from bench.findings import Finding

    def spec(name, low, high, models=("tiny-llama",)):
        return findings.FindingSpec(Finding(name, "ratio_ppl", low, high, "test provenance"), case="window",
                                    reference="strict", models=models, real_weights=False)

    suite = make_suite(tmp_path, tiny)
    est = suite.evaluate(suite.case("window"), "synthetic").ppl / suite.evaluate(suite.case("strict"), "synthetic").ppl
    monkeypatch.setattr(findings, "FINDINGS", [
        spec("wide", est / 10, est * 10),
        spec("expects worse", est * 5, None),  # measured is *better* than the band: fails too
        spec("expects better", None, est / 5),
        spec("other model", 0.0, 1.0, models=("EleutherAI/pythia-2.8b",)),
    ])
    checks = {c.name: c for c in run(suite, "window")["window"].checks if c.kind == "finding"}
    assert checks["(c) wide"].verdict == PASS
    worse = checks["(c) expects worse"]
    assert worse.verdict == FAIL and "below the band" in worse.message and "test provenance" in worse.message
    assert checks["(c) expects better"].verdict == FAIL and "above the band" in checks["(c) expects better"].message
    assert checks["(c) other model"].verdict == "n/a"


def _history_run(tmp_path, tiny, monkeypatch, *, load: float, reference_level: float | None):
    """strict timed 3x slower than its three stored history runs; its reference arm's history at
    `reference_level` x the reference's measured samples (None: no reference history)."""
    import dataclasses

    import numpy as np

    import bench.session
    import bench.suite
    from streamllm.harness.history import RunHistory

    suite = make_suite(tmp_path, tiny)
    rng = np.random.default_rng(0)
    case = suite.case("strict")
    measured = suite.timing(case, "synthetic")
    reference = suite.measure.references[("synthetic", "strict")]
    history = RunHistory(suite.history_root, suite.fingerprint_id)
    for _ in range(3):  # three accepted runs at ~1 ms
        runs = {"synthetic/strict": (1.0 + rng.normal(0, 0.01, 16)).tolist()}
        if reference_level is not None:
            # A reference that moved: every measured round lies beyond its history (the tiny model's
            # rounds are ~1 ms and scatter under load, so a median-based level let one fast round
            # fall inside it); one that held still: its history sits at its median.
            level = reference_level * float(np.min(reference.samples) if reference_level < 1 else np.median(reference.samples))
            runs["synthetic/strict" + bench.suite.REFERENCE_SUFFIX] = (level * (1 + rng.normal(0, 0.002, 16))).tolist()
        # the suite's fingerprint carries the library versions: runs without them are another version set
        history.append(runs, accepted=True, fingerprint=suite.fingerprint)
    monkeypatch.setattr(bench.session, "_load_average", lambda: [load, load, load])
    timing = dataclasses.replace(measured, step_ms=(3.0 + rng.normal(0, 0.01, len(measured.step_ms))).tolist())
    out = bench.suite.CaseResult(case, "synthetic", evaluation=suite.evaluate(case, "synthetic"), timing=timing,
                                 reference_timing=reference)
    checks = suite.measure.judged(out).checks
    return suite, next(c for c in checks if c.name == "(b) TPOT vs run history")


@pytest.mark.parametrize("load,expected", [(0.5, FAIL), (9.0, INCONCLUSIVE)])
def test_history_fail_is_inconclusive_only_on_an_oversubscribed_cpu(tmp_path, tiny, monkeypatch, load, expected):
    _, absolute = _history_run(tmp_path, tiny, monkeypatch, load=load, reference_level=1.0)  # the reference held still
    assert absolute.verdict == expected, absolute.message
    assert ("oversubscribed" in absolute.message) == (expected == INCONCLUSIVE)


@pytest.mark.parametrize("reference_level,why", [(0.33, "reference arm moved alike"), (None, "no history here yet")])
def test_a_move_the_reference_arm_shares_is_the_machines(tmp_path, tiny, monkeypatch, reference_level, why):
    """Absolute TPOT 3x its history on a quiet machine fails only if the reference arm, timed step
    for step beside it, held still. Where the reference moved alike (another host behind the same
    fingerprint), or has no history to say, it is inconclusive, and the run re-bases the history."""
    from streamllm.harness.history import RunHistory

    suite, absolute = _history_run(tmp_path, tiny, monkeypatch, load=0.5, reference_level=reference_level)
    assert absolute.verdict == INCONCLUSIVE and why in absolute.message, absolute.message
    suite.write_history()
    latest = RunHistory(suite.history_root, suite.fingerprint_id).runs()[-1]
    assert latest.case_accepted("synthetic/strict")  # the new level enters the baseline


def test_ratio_band_takes_on_a_noisy_recording(tmp_path):
    """A stored ratio whose recording CI was wide (eager dense on a GPU: 3.88 [3.18, 4.74]) is
    uncertain itself: a check at 3.36 passes against it, and fails against the same value
    recorded with a tight CI."""
    store = BaselineStore(tmp_path / "b")
    key = BaselineKey(model="m", model_revision="r", dtype="float16", dataset="d", dataset_sha256="sha",
                      tokens=64, strategy="dense", params={"name": "dense"})
    ref = [20.0] * 8
    case = [20.0 * 3.36 * m for m in (0.99, 1.01, 1.0, 1.02, 0.98, 1.0, 1.01, 0.99)]
    for ci, expected in (([3.177, 4.744], PASS), ([3.85, 3.91], FAIL)):
        record = BaselineRecord(key, 20.0, math.log(20.0), "cuda",
                                tpot_ratio={"gpu": [3.882]}, tpot_ratio_ci={"gpu": [ci]})
        store.update([record])
        check = check_ratio_vs_baseline(case, ref, lookup(store, key), key="gpu", updating=False, what="dense")
        assert check.verdict == expected, check.message


def test_a_noisy_recording_is_retimed_before_it_is_stored(tmp_path):
    """--update-baselines stores the ratio every later check is centred on: a recording whose CI is
    wider than half the band is re-timed once with more rounds and stored from all its rounds; a
    tight one is stored as measured (no rerun)."""
    store = BaselineStore(tmp_path / "b")
    key = BaselineKey(model="m", model_revision="r", dtype="float16", dataset="d", dataset_sha256="sha",
                      tokens=64, strategy="dense", params={"name": "dense"})
    ref = [20.0] * 8
    noisy = [20.0 * 3.45 * m for m in (1.0, 1.5, 0.9, 1.3, 1.0, 0.95, 1.4, 1.0)]
    tight = [20.0 * 3.45 * m for m in (1.0, 1.01, 0.99, 1.0, 1.02, 0.98, 1.0, 1.01)]
    calls = []

    def rerun():
        calls.append(1)
        return [20.0 * 3.45 * m for m in (1.0, 0.99, 1.01) * 6], [20.0] * 18

    check = check_ratio_vs_baseline(noisy, ref, lookup(store, key), key="gpu", updating=True, what="dense",
                                    rerun=rerun)
    assert calls == [1] and check.details["ratio"]["pairs"] == 8 + 18
    recorded = check.details["ratio"]
    assert math.sqrt(recorded["high"] / recorded["low"]) - 1 < 0.05 < math.sqrt(
        max(noisy) / min(noisy))  # the stored CI is the combined, tighter one
    check = check_ratio_vs_baseline(tight, ref, lookup(store, key), key="gpu", updating=True, what="dense",
                                    rerun=rerun)
    assert calls == [1] and check.details["ratio"]["pairs"] == 8
    # a check (not a recording) of a noisy-but-inside run is not re-timed by this rule
    check = check_ratio_vs_baseline(noisy, ref, lookup(store, key), key="gpu", updating=False, what="dense")
    assert check.details["ratio"]["pairs"] == 8


def test_each_case_reports_its_bandwidth_floor(tmp_path, tiny):
    """TPOT / floor: the analytic bytes a step must read (weights once + the K/V it attends) over
    the measured copy bandwidth. A real step can never beat it."""
    from streamllm.floor import analytic_step_bytes, floor_ms, mean_attended_slots

    suite = make_suite(tmp_path, tiny)
    out = run(suite, "strict", "lazy-c16")
    for cid, result in out.items():
        spec = suite.case(cid).spec
        expected = floor_ms(analytic_step_bytes(tiny.model, mean_attended_slots(spec)), suite.measure.bandwidth)
        assert result.floor_ms == pytest.approx(expected)
        assert result.row()["tpot_over_floor"] > 1.0


def test_tpot_findings_time_both_strategies_step_for_step(tmp_path):
    """A TPOT finding's two strategies are timed interleaved in fresh slices: a strategy against
    itself reads about 1, and a strategy made twice as slow reads clearly higher against the
    same pair unslowed, whatever the machine did between the two measurements."""
    # ~2 ms steps: large against timer and scheduler noise on a shared 2-core machine
    import dataclasses

    from bench import injections

    suite = make_suite(tmp_path, tiny_llama(hidden=256, layers=4, intermediate=1024))
    suite.options = dataclasses.replace(suite.options, rounds=16, warmup_rounds=1)  # 16 pairs of 4-step rounds
    strict, lazy = suite.case("strict"), suite.case("lazy-c16")
    same = suite.measure.paired_ratio(strict, strict, "synthetic")
    # not "the 95 % CI covers 1": that fails one run in twenty by construction; a 15 % band around
    # 1 is what interleaving buys (unpaired timings of these steps drift by more on this machine)
    assert 0.85 < same.ratio < 1.15 and same.low < same.ratio < same.high, same
    plain = suite.measure.paired_ratio(lazy, strict, "synthetic")
    injection = injections.slowdown("lazy", 1.0, "dynamic")
    try:
        slowed = suite.measure.paired_ratio(lazy, strict, "synthetic")  # every lazy step twice as long
    finally:
        injection.undo()
    assert slowed.ratio > plain.ratio * 1.3, (slowed, plain)
