"""The one judge (streamllm.harness.judge), `streamllm compare`, and one finish_run for serial and
xdist: a fake run (no model) built from raw measurements, judged, stored, re-judged, reported."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.suite import FinishPlan, finish_run
from streamllm.harness.baseline_record import BaselineKey, BaselineRecord
from streamllm.harness.baselines import BaselineStore
from streamllm.harness.cli import main
from streamllm.harness.judge import judge, run_outcome
from streamllm.harness.records import RUN_SCHEMA, RawArm, RawCase, RawConditions, RawRun, validate_run
from streamllm.harness.report import build_report
from streamllm.harness.report_runs import read_run
from streamllm.harness.table import make_row, table_lines
from streamllm.harness.verdicts import FAIL, INCONCLUSIVE, PASS, RATIO_CHECK, ratio_key

ROOT = Path(__file__).resolve().parents[1]
FP = {"device_class": "cpu", "cpu_model": "Test CPU", "cpu_count": 2, "torch_threads": 1, "torch": "2.13.0",
      "transformers": "5.25.0"}
FID = "cpu-test-t1"
RKEY = ratio_key(FP, 1)  # same-run ratios are stored per CPU model


def key(case: str) -> BaselineKey:
    return BaselineKey(model="fake", model_revision="r0", dtype="float32", dataset="book", dataset_sha256="00",
                       tokens=128, strategy=case, params={"case": case})


def raw_case(case: str, *, ratio: float, ppl: float = 10.0, noise: float = 0.01, rerun: bool = False) -> RawCase:
    # alternating noise: a ratio CI of known centre and width
    ref = [1.0] * 8
    samples = [ratio * (1 + noise * (-1) ** i) for i in range(8)]
    arm = RawArm(samples_ms=samples, rerun_samples_ms=[ratio] * 16 if rerun else [], tpot_ms_mean=ratio,
                 tpot_ms_median=ratio)
    return RawCase(case=case, dataset="book", label=case, text="book", baseline_key=key(case).to_json(), ppl=ppl,
                   ppl_delta_vs_dense_pct=0.0, speedup=1.0, timing=arm,
                   reference=RawArm(samples_ms=ref, rerun_samples_ms=[1.0] * 16 if rerun else []))


def conditions(**overrides) -> RawConditions:
    return RawConditions(**{"started": "2026-01-01T00:00:00+00:00", "fingerprint": FP, "fingerprint_id": FID,
                            "threads": 1, **overrides})


def store_with(tmp: Path, ratios: dict[str, float], ppl: float = 10.0) -> Path:
    root = tmp / "baselines"
    BaselineStore(root).update([BaselineRecord(key=key(c), ppl=ppl, mean_nll=math.log(ppl), ppl_device_class="cpu",
                                               tpot_ratio={RKEY: [r]}) for c, r in ratios.items()])
    return root


def run_record(raw: RawRun, baselines: Path, path: Path, options: dict | None = None, history: Path | None = None
               ) -> Path:
    """What `pytest bench` writes: the raw part and the judged rows it printed."""
    rows = []
    for case, v in zip(raw.cases, judge(raw, BaselineStore(baselines), history), strict=True):
        row = make_row(dataset=case.dataset, case=case.case, label=case.label, checks=v.checks, timed=True,
                       ppl=case.ppl, ppl_delta_vs_dense_pct=case.ppl_delta_vs_dense_pct, speedup=case.speedup,
                       tpot_ms_mean=case.timing.tpot_ms_mean, tpot_ms_median=case.timing.tpot_ms_median)
        rows.append({**row, "checks": [c.to_dict() for c in v.checks]})
    data = {"schema": RUN_SCHEMA, "created": "2026-01-01T00:01:00+00:00", "options": options or {},
            "fingerprint": FP, "fingerprint_id": FID, "results": rows, "raw": raw.to_json()}
    path.write_text(json.dumps(validate_run(data).to_json()))
    return path


def compare(*args: str, capsys) -> tuple[int, str, str]:
    code = main(["compare", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


# -- the judge ----------------------------------------------------------------------------------------
def test_judge_wraps_the_judges_and_never_stores_a_verdict(tmp_path):
    raw = RawRun(conditions=conditions(), cases=[raw_case("strict", ratio=1.0), raw_case("lazy", ratio=1.5)])
    assert "verdict" not in json.dumps(raw.to_json())  # the raw record holds measurements only
    (strict, lazy) = judge(raw, BaselineStore(store_with(tmp_path, {"strict": 1.0, "lazy": 1.0})), None)
    by_name = {c.name: c.verdict for c in strict.checks}
    assert by_name["(a) PPL vs baseline"] == PASS and by_name[RATIO_CHECK] == PASS
    assert {c.name: c.verdict for c in lazy.checks}[RATIO_CHECK] == FAIL  # 1.5x its stored ratio


def test_an_inconclusive_ratio_asks_for_a_rerun_and_the_stored_rerun_answers_it(tmp_path):
    store = BaselineStore(store_with(tmp_path, {"strict": 1.0}))
    # CI of ~[1.09, 1.11] straddles the band edge 1.10: the judge needs more pairs, and says so
    (first,) = judge(RawRun(conditions=conditions(), cases=[raw_case("strict", ratio=1.10, noise=0.02)]), store, None)
    ratio = next(c for c in first.checks if c.name == RATIO_CHECK)
    assert ratio.verdict == INCONCLUSIVE and first.rerun is not None and first.rerun.half_width
    # the measuring loop's rerun rounds (here: 16 pairs at 1.10x... and then well inside) settle it
    settled = raw_case("strict", ratio=1.10, noise=0.02, rerun=True)
    settled.timing.rerun_samples_ms = [1.0] * 16
    (second,) = judge(RawRun(conditions=conditions(), cases=[settled]), store, None)
    assert second.rerun is None
    assert next(c for c in second.checks if c.name == RATIO_CHECK).details["attempts"][-1] != ratio.details["attempts"][0]


def test_a_busy_machine_never_asks_for_a_rerun(tmp_path):
    busy = raw_case("strict", ratio=1.10, noise=0.02)
    busy.oversubscribed = "1-min load average 5.0 on 2 cores"
    (v,) = judge(RawRun(conditions=conditions(), cases=[busy]), BaselineStore(store_with(tmp_path, {"strict": 1.0})),
                 None)
    assert v.rerun is None


# -- streamllm compare ----------------------------------------------------------------------------------
def test_compare_reprints_the_table_and_agrees_with_the_run(tmp_path, capsys):
    baselines = store_with(tmp_path, {"strict": 1.0, "lazy": 1.0})
    raw = RawRun(conditions=conditions(), cases=[raw_case("strict", ratio=1.0), raw_case("lazy", ratio=1.02)])
    path = run_record(raw, baselines, tmp_path / "run.json", history=tmp_path / "h")
    code, out, err = compare(str(path), "--baselines", str(baselines), "--history", str(tmp_path / "h"), capsys=capsys)
    assert code == 0, out + err
    table = table_lines(json.loads(path.read_text())["results"])
    assert table[0] in out and table[2] in out  # the suite's header and first row, as the run printed them
    assert "re-judged 8 stored check(s): 8 agree" in out


def test_compare_against_moved_baselines_fails_and_names_the_change(tmp_path, capsys):
    baselines = store_with(tmp_path, {"strict": 1.0})
    path = run_record(RawRun(conditions=conditions(), cases=[raw_case("strict", ratio=1.0)]), baselines,
                      tmp_path / "run.json")
    moved = store_with(tmp_path / "moved", {"strict": 0.5})  # the stored ratio halved since
    code, out, _ = compare(str(path), "--baselines", str(moved), capsys=capsys)
    assert code == 1 and "run said pass, now fail" in out


def test_compare_against_another_run(tmp_path, capsys):
    baselines = store_with(tmp_path, {"strict": 1.0})
    old = run_record(RawRun(conditions=conditions(), cases=[raw_case("strict", ratio=1.0)]), baselines,
                     tmp_path / "old.json")
    new = run_record(RawRun(conditions=conditions(), cases=[raw_case("strict", ratio=2.0)]), baselines,
                     tmp_path / "new.json")
    assert compare(str(old), "--against", str(old), capsys=capsys)[0] == 0
    code, out, _ = compare(str(new), "--against", str(old), capsys=capsys)
    assert code == 1 and "fail" in out


@pytest.mark.parametrize("content,words", [
    (None, "does not exist"),
    ("{not json", "cannot be read as JSON"),
    (json.dumps({"schema": "streamllm.bench-run/0", "created": "x"}), "schema"),
    (json.dumps({"schema": RUN_SCHEMA, "created": "x", "results": []}), "raw measurements"),
    (json.dumps({"schema": RUN_SCHEMA, "created": "x", "raw": {"conditions": {}}}), "raw.conditions"),
])
def test_compare_bad_input_is_one_line_exit_2(tmp_path, content, words, capsys):
    # in-process through the CLI's own main (the same handler as the installed command; one child
    # process below checks the real entry point, which costs ~5 s of imports per call)
    path = tmp_path / "run.json"
    if content is not None:
        path.write_text(content)
    code, _, err = compare(str(path), capsys=capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and str(path) in lines[0] and words in lines[0]
    assert "pytest bench" in lines[0]  # the fix


@pytest.mark.slow  # a child process (~5 s of imports); test_cli_errors keeps one in the fast set
def test_compare_bad_input_from_the_real_entry_point_is_one_line_exit_2(tmp_path):
    path = tmp_path / "run.json"
    path.write_text("{not json")
    out = subprocess.run([sys.executable, "-m", "streamllm.harness.cli", "compare", str(path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr and str(path) in lines[0]


def test_an_old_run_record_with_stored_checks_and_no_raw_part_names_the_fix(tmp_path, capsys):
    """Replaying old runs through new rules is `streamllm compare` on runs with a raw part (the
    replay script is gone). A record written before that part (the shape of the H100/H200 records
    once tracked under reports/*/runs/: measurements and the checks it printed, no `raw`) gets one
    line naming the file and the fix, exit 2, never a re-judging of its stored verdicts."""
    ratio_check = {"kind": "tpot", "name": RATIO_CHECK, "verdict": PASS, "message": "dense: 3.96x", "details": {}}
    old = {
        "schema": RUN_SCHEMA, "created": "2026-12-04T02:18:15+00:00", "command": "python -m pytest bench",
        "options": {"device": "cuda", "nightly": False, "update_baselines": False},
        "fingerprint": {"device_class": "cuda:NVIDIA H200"}, "fingerprint_id": "cuda-022fbfee90", "threads": 1,
        "results": [{
            "dataset": "synthetic", "case": "dense", "label": "dense", "ppl": 85699.5, "speedup": 1.0,
            "verdicts": {"a": PASS, "b": PASS, "c": "-"}, "skipped": None,
            "timing": {"rounds": 8, "samples_ms": [64.5, 63.9, 65.1, 64.0, 64.8, 63.7, 64.2, 64.9]},
            "reference_timing": {"rounds": 8, "samples_ms": [16.2, 16.1, 16.4, 16.0, 16.3, 16.2, 16.1, 16.3]},
            "checks": [ratio_check],
        }],
    }
    path = tmp_path / "20261204T021815Z-cuda-456.json"
    path.write_text(json.dumps(old))
    assert main(["compare", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "no `raw` part" in err[0], err
    assert "re-run `pytest bench`" in err[0]  # the fix: a fresh run records its raw measurements


# -- one finish_run: the terminal, summary.json, the report and the exit code agree -------------------
def _finish(tmp_path: Path, *, nightly: bool, work_counted: bool) -> tuple:
    baselines = store_with(tmp_path, {"strict": 1.0})
    raw = RawRun(conditions=conditions(nightly=nightly), cases=[raw_case("strict", ratio=1.0)])
    options = {"nightly": nightly, "update_baselines": False, "no_timing": None}
    data = json.loads(run_record(raw, baselines, tmp_path / "printed.json", options).read_text())
    if work_counted:  # a row with live work counts is armed
        for c in data["results"][0]["checks"]:
            if c["name"].startswith("(b) work"):
                c["verdict"] = PASS
        data["results"][0]["armed"] = True
    plan = FinishPlan(store=None, append=False, history_root=tmp_path / "history", report_root=tmp_path / "out",
                      device_type="cpu", rootdir=tmp_path)
    end = finish_run(data, [], [(FP, {"book/strict": [1.0, 1.1, 0.9]}, {})], plan)
    run = read_run(end.run_file)
    summary = build_report(run, [run], tmp_path / "report")
    return end, summary, (tmp_path / "report" / "report.md").read_text()


@pytest.mark.parametrize("nightly,armed,status", [(True, False, "FAIL"), (False, False, "PASS"), (True, True, "PASS")])
def test_finish_run_table_summary_report_and_exit_code_agree(tmp_path, nightly, armed, status):
    end, summary, report = _finish(tmp_path, nightly=nightly, work_counted=armed)
    failing = status == "FAIL"
    # exit code <-> summary.json
    assert end.outcome.exit_code == summary["exit_code"] == (1 if failing else 0)
    assert summary["status"] == end.outcome.status == status and summary["passed"] == (not failing)
    # terminal <-> summary.json: the one --nightly line, printed and listed as the run's failure
    printed = [line for line in end.lines if line.startswith("streamllm: --nightly")]
    assert len(printed) == int(failing) and (summary["nightly_unarmed"] == (printed[0] if printed else None))
    assert (printed[0] in summary["failures"]) if printed else not summary["failures"]
    # report <-> exit code
    assert f"- overall: **{status}**" in report
    # terminal table <-> summary.json: the row's armed cell
    row = next(line for line in end.lines if line.startswith("book"))
    assert ("NO" in row.split()) == (not armed) and summary["results"][0]["armed"] == armed


def test_xdist_nightly_fails_like_serial(tmp_path):
    """`--nightly -n 2` on CPU (PPL only in the workers) fails with the one line, as a serial
    --nightly run without timing does; summary.json says FAIL too."""
    why = "-n 2 on CPU: test"
    rows = [{**make_row(dataset="book", case="strict", label="strict", checks=[], timed=False, ppl=10.0),
             "checks": []}]
    serial = run_outcome(rows, {"nightly": True, "no_timing": why})
    assert serial.exit_code == 1 and why in serial.unarmed
    assert run_outcome(rows, {"nightly": False, "no_timing": why}).exit_code == 0


def test_xdist_controller_and_serial_suite_end_an_unarmed_nightly_alike(tmp_path):
    """The xdist controller's end (merged parts -> finish_run) and a serial Suite's end give the
    same --nightly line and exit status, and summary.json says FAIL for both. On CPU under -n the
    workers time nothing, so no row is armed."""
    import types

    from test_xdist import NODEIDS, make_suite, tiny_llama, worker_part

    from bench.xdist import XdistController

    why = "-n 2 on CPU: test"
    tiny = tiny_llama()
    parts = [worker_part(tmp_path / "p", tiny, 0, ("dense", "window"), no_timing=why, nightly=True),
             worker_part(tmp_path / "p", tiny, 1, ("strict", "lazy-c16"), no_timing=why, nightly=True)]
    config = types.SimpleNamespace(getoption=lambda name, default=None: {
        "--device": "cpu", "--update-baselines": False, "--append-baselines": False, "--report-dir": str(tmp_path / "out"),
        "--history-dir": str(tmp_path / "history"), "--baselines-dir": str(tmp_path / "baselines"),
    }.get(name, default), rootpath=tmp_path)
    controller = XdistController(config, 2, loadgroup=False)
    for part in parts:
        (controller.parts_dir / f"{part['pinning']['slot']}-{part['worker']}.json").write_text(json.dumps(part))
    controller.collected = list(NODEIDS)
    session = types.SimpleNamespace(exitstatus=pytest.ExitCode.OK)
    controller.pytest_sessionfinish(session)
    assert controller.error is None and controller.end is not None
    assert session.exitstatus == pytest.ExitCode.TESTS_FAILED  # pytest's exit code under -n
    parallel_line = controller.end.outcome.unarmed
    assert parallel_line and parallel_line in controller.end.lines

    serial = make_suite(tmp_path / "serial", tiny, no_timing=why, nightly=True)
    for case in ("dense", "window", "strict", "lazy-c16"):
        serial.run_case(serial.case(case), "synthetic", benchmark=None)
    end = serial.finish()
    assert end.outcome.exit_code == 1 and end.outcome.unarmed == parallel_line  # exactly as serial

    for run_file in (controller.end.run_file, end.run_file):
        run = read_run(run_file)
        summary = build_report(run, [run], run_file.parent / "report")
        assert summary["status"] == "FAIL" and summary["exit_code"] == 1 and summary["nightly_unarmed"] == parallel_line


def test_a_stored_run_is_judged_against_the_history_from_before_it_began(tmp_path):
    """The run appended its own samples at its end: a replay that read them would judge the run
    against itself. Three runs before the start count; the one written after does not."""
    from datetime import datetime, timedelta, timezone

    from streamllm.harness.history import RunHistory
    from streamllm.harness.verdicts import HISTORY_CHECK

    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    history = RunHistory(tmp_path / "history", FID)
    for day in (-3, -2, -1, 1):
        history.append({"book/strict": [1.0, 1.01, 0.99, 1.0]}, accepted=True, fingerprint=FP,
                       now=start + timedelta(days=day))
    raw = RawRun(conditions=conditions(started=start.isoformat()), cases=[raw_case("strict", ratio=1.0)])
    (v,) = judge(raw, BaselineStore(store_with(tmp_path, {"strict": 1.0})), tmp_path / "history")
    check = next(c for c in v.checks if c.name == HISTORY_CHECK)
    assert check.details["runs"] == 3, check.message
