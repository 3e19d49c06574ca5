"""What the suite's (b) checks catch: regressions injected on purpose (bench/injections.py).

- an extra aten op per layer in one strategy's cache: its work counters fail, naming the op,
  and no other strategy's counters move;
- a 15 % slower step in one strategy: its same-run TPOT / reference ratio fails, while a
  strategy left alone passes in the same run.

Random small Llama models, CPU. The second test measures time, so it is a statistical test: the
ratio of interleaved steps in one process is what makes it reliable (tests/test_ratio.py pins the
statistic on synthetic data; scripts/inject_regression.py repeats this on the real suite).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench import injections
from bench.run_record import history_entries
from bench.suite import Suite, SuiteOptions
from conftest import tiny_llama
from streamllm.harness.baseline_record import BaselineKey
from streamllm.harness.verdicts import FAIL, NOT_CHECKED, PASS
from streamllm.models import LoadedModel


def suite(tmp_path: Path, model: LoadedModel, *, rounds: int = 3, **overrides) -> Suite:
    options = SuiteOptions(model="tiny-llama", datasets=("synthetic",), tokens=1024, sink=4, window=12,
                           rounds=rounds, warmup_rounds=1, min_steps=8, baselines_dir=str(tmp_path / "baselines"),
                           report_dir=str(tmp_path / "reports"), history_dir=str(tmp_path / "history"), **overrides)
    out = Suite(options, tmp_path)
    out.weights.use(model)
    return out


def check(result, name: str):
    return next(c for c in result.checks if c.name == name)


WORK = "(b) work per step vs baseline"
RATIO = "(b) TPOT / reference, same run"
CASES = ("strict", "lazy-c16", "static", "ring")


@pytest.mark.parametrize(("strategy", "cache_kind", "case"), [("strict", "dynamic", "strict"),
                                                              ("lazy", "dynamic", "lazy-c16"),
                                                              ("strict", "static", "static"),
                                                              ("strict", "ring", "ring")])
def test_an_extra_op_per_layer_fails_exactly_that_strategy_naming_the_op(tmp_path, strategy, cache_kind, case):
    model = tiny_llama()
    recorder = suite(tmp_path, model, update_baselines=True)
    for cid in CASES:
        recorder.run_case(recorder.case(cid), "synthetic", benchmark=None)
    recorder.write_baselines()
    injection = injections.extra_op(strategy, cache_kind)
    try:
        checker = suite(tmp_path, model)
        results = {cid: checker.run_case(checker.case(cid), "synthetic", benchmark=None) for cid in CASES}
    finally:
        injection.undo()
    layers = model.model.config.num_hidden_layers
    for cid, result in results.items():
        work = check(result, WORK)
        if cid == case:
            assert work.verdict == FAIL, work.message
            assert f"+{layers} aten.cat per step" in work.message, work.message
        else:
            assert work.verdict == PASS, work.message


@pytest.mark.parametrize("case,cache_kind", [("static", "static"), ("ring", "ring")])
def test_an_extra_full_buffer_copy_fails_that_cache_naming_the_copy(tmp_path, case, cache_kind):
    """The planted regression the GPU plan runs on the graph rows (a whole key buffer copied per
    layer and step, which no compiler may drop), caught here on the eager rows by the counts."""
    model = tiny_llama()
    recorder = suite(tmp_path, model, update_baselines=True)
    for cid in ("strict", case):
        recorder.run_case(recorder.case(cid), "synthetic", benchmark=None)
    recorder.write_baselines()
    injection = injections.extra_copy("strict", cache_kind)
    try:
        checker = suite(tmp_path, model)
        results = {cid: checker.run_case(checker.case(cid), "synthetic", benchmark=None) for cid in ("strict", case)}
    finally:
        injection.undo()
    layers = model.model.config.num_hidden_layers
    work = check(results[case], WORK)
    assert work.verdict == FAIL and f"+{layers} aten.copy_ per step" in work.message, work.message
    assert check(results["strict"], WORK).verdict == PASS  # the dynamic cache is untouched
    # a case that failed a check ran changed code: its samples never become a history level
    _, accepted = history_entries(list(results.values()))
    assert accepted.get(f"synthetic/{case}") is False and accepted.get("synthetic/strict", True) is True, accepted


def test_an_injected_run_never_writes_the_machines_history(tmp_path, monkeypatch):
    """scripts/inject_regression.py: the planted run reads the history (its check is live) and
    writes only a scratch copy of it."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("inject_regression", Path(__file__).parents[1] / "scripts" / "inject_regression.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    history = tmp_path / "history" / "cpu-x"
    history.mkdir(parents=True)
    (history / "0001.json").write_text("{}")
    seen = {}

    def fake_main(args, plugins):
        where = Path(args[args.index("--history-dir") + 1])
        seen["read"] = sorted(p.name for p in (where / "cpu-x").iterdir())
        (where / "cpu-x" / "0002.json").write_text("{}")  # what a run's end appends
        return 0

    monkeypatch.setattr(pytest, "main", fake_main)
    monkeypatch.setitem(sys.modules, "pytest", pytest)
    script.main(["none", "--", "--history-dir", str(tmp_path / "history")])
    assert seen["read"] == ["0001.json"]  # the copy holds what the machine has
    assert sorted(p.name for p in history.iterdir()) == ["0001.json"]  # and the machine's history is untouched


def test_a_15_percent_slower_step_fails_its_ratio_and_only_its_ratio(tmp_path):
    # ~2 ms steps: large enough against timer and scheduler noise on a shared 2-core machine
    model = tiny_llama(hidden=256, layers=4, intermediate=1024)
    recorder = suite(tmp_path, model, rounds=48, update_baselines=True)  # a tight recording: its CI widens the band
    for cid in ("strict", "ring"):
        recorder.run_case(recorder.case(cid), "synthetic", benchmark=None)
    recorder.write_baselines()
    injection = injections.slowdown("strict", 0.15, "dynamic")
    try:
        checker = suite(tmp_path, model, rounds=24)
        results = {cid: checker.run_case(checker.case(cid), "synthetic", benchmark=None) for cid in ("strict", "ring")}
    finally:
        injection.undo()
    slow, untouched = check(results["strict"], RATIO), check(results["ring"], RATIO)
    assert slow.verdict == FAIL, slow.message
    assert slow.details["page_faults_per_step"][0] is not None  # counted, and no churn excused it
    assert slow.details["ratio"]["ratio"] > 1.10 * slow.details["stored_ratio"], slow.details
    assert untouched.verdict == PASS, untouched.message
    # the work counters do not see a busy-wait (no extra op): only the clock-based check can
    assert check(results["strict"], WORK).verdict == PASS


def _as_if_recorded_under(baselines: Path, release: str, *, drop_reference: bool = False) -> None:
    """Re-key every stored work count as if another transformers release had recorded it (what a
    fresh install meets when transformers moved since the recording)."""
    import json

    from streamllm.harness.workrecord import CounterKey
    from streamllm.results import write_text_atomic

    def rekeyed(counts: dict) -> tuple[str, dict]:
        key = CounterKey({**counts["key"]["fields"], "transformers": release})
        return key.id, {**counts, "key": key.to_json()}

    for path in baselines.rglob("*.json"):
        data = json.loads(path.read_text())
        for record in data["records"].values():
            extra = record  # the keyed sections are fields of the record (schema.baseline)
            references = extra.pop("reference_work_counts", {})
            work, refs = {}, {}
            for old_id, counts in extra.get("work_counts", {}).items():
                new_id, work[new_id] = rekeyed(counts)
                if old_id in references and not drop_reference:
                    refs[new_id] = rekeyed(references[old_id])[1]  # keyed by the case's key, as recorded
            extra["work_counts"] = work
            extra["reference_work_counts"] = refs
        write_text_atomic(path, json.dumps(data))


def test_the_reference_arm_is_counted_only_when_the_judge_needs_it(tmp_path):
    """A recording stores the reference arm's counts; a check that finds its counter key compares
    the case alone (half of its counting); a check whose key is not stored asks for them."""
    model = tiny_llama()
    recorder = suite(tmp_path, model, update_baselines=True)
    recorded = recorder.run_case(recorder.case("strict"), "synthetic", benchmark=None)
    recorder.write_baselines()
    assert recorded.work is not None and recorded.reference_work is not None
    stored = recorder.store.lookup(BaselineKey(**recorded.raw.baseline_key))
    assert stored.reference_work_counts == {recorded.work.key.id: recorded.reference_work.to_json()}

    checker = suite(tmp_path, model)
    checked = checker.run_case(checker.case("strict"), "synthetic", benchmark=None)
    assert check(checked, WORK).verdict == PASS and checked.reference_work is None

    _as_if_recorded_under(tmp_path / "baselines", "0.0.1")
    checker = suite(tmp_path, model)
    across = checker.run_case(checker.case("strict"), "synthetic", benchmark=None)
    assert across.reference_work is not None and across.reference_work.diff(recorded.reference_work) == []
    assert check(across, WORK).verdict == PASS, check(across, WORK).message


def test_counts_recorded_under_another_transformers_release_still_check_the_strategys_own_work(tmp_path):
    """A fresh install resolves the newest transformers, so the stored counts were often recorded
    under another release. Identical counts pass; a change the release made to the model's forward
    (both arms alike) passes and is named; an extra op in our cache fails, naming the op; without
    reference-arm counts a changed step is 'not checked', never a pass."""
    model = tiny_llama()
    recorder = suite(tmp_path, model, update_baselines=True)
    for cid in ("strict", "ring"):
        recorder.run_case(recorder.case(cid), "synthetic", benchmark=None)
    recorder.write_baselines()
    _as_if_recorded_under(tmp_path / "baselines", "0.0.1")
    layers = model.model.config.num_hidden_layers

    def checked() -> dict:
        checker = suite(tmp_path, model)
        return {cid: check(checker.run_case(checker.case(cid), "synthetic", benchmark=None), WORK)
                for cid in ("strict", "ring")}

    for work in checked().values():
        assert work.verdict == PASS and "identical to the counts recorded with transformers: 0.0.1 ->" in work.message

    norm = model.model.model.norm  # the release adds an op to the forward: both arms pay it
    forward = norm.forward
    norm.forward = lambda x: forward(torch.add(x, 0))
    try:
        for work in checked().values():
            assert work.verdict == PASS, work.message
            assert "changed both arms alike: +1 aten.add per step" in work.message, work.message
        injection = injections.extra_op("strict", "dynamic")  # ... and our cache code changes too
        try:
            results = checked()
        finally:
            injection.undo()
        assert results["strict"].verdict == FAIL, results["strict"].message
        assert f"+{layers} aten.cat per step" in results["strict"].message
        assert "beyond the reference arm" in results["strict"].message
        assert results["ring"].verdict == PASS, results["ring"].message
        _as_if_recorded_under(tmp_path / "baselines", "0.0.1", drop_reference=True)
        for work in checked().values():  # nothing to tell the release's change from ours
            assert work.verdict == NOT_CHECKED and "no reference-arm counts" in work.message, work.message
    finally:
        norm.forward = forward
