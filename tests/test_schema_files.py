"""The files the project read with bare json.loads until issue #28's last gaps: the counting runner's
jobs file (`schema.CountJobs`), `streamllm eval --per-token` output (`schema.EvalPerToken`) and
phase A's trace cache (`schema.PhaseATraces`). Each is written by its writer and read back through
its model; a broken one is one line naming the file and the fix, and stays as it was. (The device
plan's state: tests/test_device_plan.py.)"""

from __future__ import annotations

import json
import math
from argparse import Namespace
from pathlib import Path

import pytest

from streamllm.harness import countcases, countrunner
from streamllm.harness.countcases import CountCase, named_case
from streamllm.harness.schema import (
    COUNT_JOBS_SCHEMA,
    CountJobs,
    EvalOutputError,
    EvalPerToken,
    PhaseATraces,
    StoredFileError,
    load_stored,
    load_work_record,
)
from streamllm.results import EvalResult, TokenTrace, write_json_atomic

CASES = [named_case(name, CountCase(sink=4, window=28, tokens=96)).check() for name in ("strict", "lazy-c4", "ring")]


# -- the counting runner's jobs file ---------------------------------------------------------------
def test_the_runner_checks_the_schema_the_model_writes():
    assert countrunner.JOBS_SCHEMA == COUNT_JOBS_SCHEMA == CountJobs.SCHEMA


def test_run_runner_writes_a_jobs_file_that_loads_through_its_model(tmp_path, monkeypatch):
    seen: list[list[str]] = []
    monkeypatch.setattr(countcases.subprocess, "run", lambda cmd, **kw: seen.append(cmd) or
                        Namespace(stdout="", stderr="stopped here", returncode=1))
    record = countcases.run_runner(CASES, tmp_path, tmp_path / "rec.json")
    assert not record.ok and "stopped here" in record.why_not()
    jobs = Path(seen[0][seen[0].index("--jobs") + 1])
    loaded = load_stored(jobs, CountJobs)
    assert loaded.job_dicts() == [c.job() for c in CASES]
    assert countrunner.read_jobs(str(jobs)) == [c.job() for c in CASES]  # what the runner takes from it


@pytest.mark.parametrize("content", [json.dumps([c.job() for c in CASES]),  # the bare list written before /1
                                     json.dumps({"schema": "streamllm.count-jobs/0", "jobs": []})])
def test_the_runner_writes_an_error_record_for_a_jobs_file_of_another_schema(tmp_path, monkeypatch, content):
    jobs, out = tmp_path / "rec.jobs.json", tmp_path / "rec.json"
    jobs.write_text(content)
    monkeypatch.setattr(countrunner, "drop_editable_finders", lambda: None)  # keep this process's imports
    assert countrunner.main(["--jobs", str(jobs), "--out", str(out), "--threads", "0"]) == 0
    record = load_work_record(out)
    assert not record.ok and not record.results
    assert "schema" in record.error and COUNT_JOBS_SCHEMA in record.error and str(jobs) in record.error
    assert jobs.read_text() == content


def test_a_job_that_does_not_fit_the_model_is_refused_before_the_runner_starts():
    with pytest.raises(ValueError, match="steps"):
        CountJobs.of([{**CASES[0].job(), "steps": 0}])


# -- `streamllm eval --per-token` output -------------------------------------------------------------
def _result(strategy: str, timed: bool) -> EvalResult:
    nll = [2.0, 2.5, 3.0]
    trace = TokenTrace(nll=nll, step_ms=[1.0, 1.1, 1.2] if timed else [math.nan] * 3, kv_length=[1, 2, 2],
                       position=[0, 1, 2], prune_steps=[1], evicted=[1])
    return EvalResult(strategy=strategy, params={}, model="m", model_revision="r", dataset="book",
                      dataset_sha256="sha", tokens=4, tokens_scored=3, scored_range=(1, 3), evaluator="parallel",
                      device="cpu", dtype="float32", ppl=math.exp(2.5), mean_nll=2.5, total_s=math.nan,
                      warmup_s=0.0, warmup_steps=0, tpot_ms_median=math.nan, tpot_ms_cycle_mean=math.nan,
                      steady_from=2, prune_events=1, max_position=2, beyond_context=False, trace=trace)


@pytest.mark.parametrize("labels", [["strict-s4-w28"], ["dense", "strict-s4-w28"]])
def test_eval_per_token_output_loads_through_its_model(tmp_path, labels):
    """Written as `streamllm eval --per-token` writes it (streamllm/cli.py: one trace, or several
    under "results"), with the product's own EvalResult.per_token(): one trace and several."""
    traces = [_result(label, timed=i == 0).per_token() for i, label in enumerate(labels)]
    path = write_json_atomic(tmp_path / "pt.json", traces[0] if len(traces) == 1 else {"results": traces})
    loaded = load_stored(path, EvalPerToken).by_label()
    assert sorted(loaded) == sorted(labels)
    assert loaded[labels[-1]].nll == [2.0, 2.5, 3.0] and loaded[labels[-1]].prune_steps == [1]
    assert loaded[labels[0]].step_ms == [1.0, 1.1, 1.2]
    if len(labels) > 1:
        assert loaded[labels[1]].step_ms == [None, None, None]  # NaN (untimed) is stored as null


@pytest.mark.parametrize("content, said", [
    ('{"results": [', "not JSON"),
    (json.dumps({"results": [{"strategy": "s", "nll": [1.0]}]}), "results.0.tokens_scored: Field required"),
    (json.dumps({"strategy": "s", "tokens_scored": 1, "nll": ["x"], "step_ms": [None], "kv_length": [1],
                 "position": [0]}), "results.0.nll.0"),
])
def test_a_broken_per_token_file_is_one_line_naming_it_and_the_fix(tmp_path, content, said):
    path = tmp_path / "pt.json"
    path.write_text(content)
    with pytest.raises(EvalOutputError) as err:
        load_stored(path, EvalPerToken)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and said in msg and "--per-token" in msg and "\n" not in msg
    assert path.read_text() == content


# -- phase A's trace cache and its --per-token input (scripts/phase_a_delta.py) ----------------------
@pytest.fixture
def phase_a():
    from scripts import phase_a_delta

    return phase_a_delta


def test_phase_a_reads_per_token_files_and_caches_through_the_models(phase_a, tmp_path):
    chosen = phase_a.specs(4, 28, [4])
    traces = [_result(spec.label(), timed=False).per_token() for spec in chosen.values()]
    given = write_json_atomic(tmp_path / "pt.json", {"results": traces})
    args = Namespace(out=str(tmp_path / "out"), tokens=4, per_token=f"book={given}")
    got = phase_a.traces(args, None, "book", chosen)
    assert set(got) == set(chosen) and got["strict"] == {"nll": [2.0, 2.5, 3.0], "prune_steps": [1]}
    cache = tmp_path / "out" / "book-4.json"
    assert load_stored(cache, PhaseATraces).schema_version == PhaseATraces.SCHEMA
    given.unlink()  # the second call reads the cache only
    assert phase_a.traces(args, None, "book", chosen) == got


def test_phase_a_names_a_strategy_the_per_token_file_lacks(phase_a, tmp_path):
    chosen = phase_a.specs(4, 28, [4])
    given = write_json_atomic(tmp_path / "pt.json", _result("dense", timed=False).per_token())
    args = Namespace(out=str(tmp_path / "out"), tokens=4, per_token=f"book={given}")
    with pytest.raises(EvalOutputError, match=r"no trace of 'strict-s4-w28' \(it holds \['dense'\]\)"):
        phase_a.traces(args, None, "book", chosen)
    assert not (tmp_path / "out").exists()


def test_an_unversioned_phase_a_cache_is_one_line_with_the_fix_and_kept(phase_a, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    old = json.dumps({"dense": {"nll": [2.0], "prune_steps": []}})  # the cache's layout before /1
    (out / "book-4.json").write_text(old)
    with pytest.raises(StoredFileError, match=r"no schema field, this checkout reads 'streamllm.phase-a-traces/1'"
                                              r": delete it: it is a cache"):
        load_stored(out / "book-4.json", PhaseATraces)
    monkeypatch.setattr(phase_a.torch, "set_num_threads", lambda n: None)  # leave this process's threads alone
    code = phase_a.main(["--model", "embedded", "--datasets", "book", "--tokens", "4", "--also-tokens", "",
                         "--periods", "4", "--window", "28", "--no-timing", "--out", str(out)])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]  # not the loading bar
    assert code == 2 and len(errors) == 1 and errors[0].startswith(f"phase_a_delta: error: {out / 'book-4.json'}: ")
    assert (out / "book-4.json").read_text() == old
