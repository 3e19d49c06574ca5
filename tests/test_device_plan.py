"""scripts/device_plan.py dry-run on CPU: a step stopped at its time box is not done and is the only
one the next call runs; what a call did comes back under --out in at most 8 files."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def device_plan():
    spec = importlib.util.spec_from_file_location("device_plan", ROOT / "scripts" / "device_plan.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["device_plan"] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("device_plan", None)


def fake_plan(device_plan, marker: Path, slow: bool):
    """Three steps; each appends its name to `marker` when it runs; `slow`: the second overruns its box."""
    def step(name: str, seconds: float, box: int, needs=()):
        code = f"import time; open({str(marker)!r}, 'a').write('{name}\\n'); time.sleep({seconds})"
        return device_plan.Step(name, [sys.executable, "-c", code], 1, box, needs)

    return lambda report_dir: [step("a", 0, 30), step("b", 30 if slow else 0, 2, ("a",)), step("c", 0, 30, ("b",))]


def test_a_step_stopped_mid_way_is_the_only_one_rerun(device_plan, tmp_path, monkeypatch):
    marker, out, state = tmp_path / "ran.txt", tmp_path / "out", tmp_path / "state" / "state.json"
    monkeypatch.setattr(device_plan, "pack", lambda out, *rest: Path(out).mkdir(parents=True, exist_ok=True))
    args = ["--seconds", "60", "--out", str(out), "--state", str(state), "--report-dir", str(tmp_path / "runs")]

    monkeypatch.setattr(device_plan, "plan", fake_plan(device_plan, marker, slow=True))
    assert device_plan.main(args) == 0
    first = json.loads(state.read_text())
    assert set(first["done"]) == {"a"}  # b was stopped at its box; c needs b
    assert [t["step"] for t in first["tries"]] == ["a", "b"] and first["tries"][1]["exit"] is None

    monkeypatch.setattr(device_plan, "plan", fake_plan(device_plan, marker, slow=False))
    assert device_plan.main(args) == 0
    assert marker.read_text().split() == ["a", "b", "b", "c"]  # a ran once; the resume re-ran only b, then c
    assert set(json.loads(state.read_text())["done"]) == {"a", "b", "c"}


def test_what_comes_back_fits_the_device_tool(device_plan, tmp_path, monkeypatch):
    marker, out, state = tmp_path / "ran.txt", tmp_path / "out", tmp_path / "state.json"
    monkeypatch.setattr(device_plan, "plan", fake_plan(device_plan, marker, slow=False))
    assert device_plan.main(["--seconds", "60", "--out", str(out), "--state", str(state),
                             "--report-dir", str(tmp_path / "runs")]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["logs.tar.gz", "records.tar.gz", "state.json", "summary.txt"] and len(files) <= 8
    assert "done" in (out / "summary.txt").read_text()


def test_a_step_that_does_not_fit_waits_for_the_next_call(device_plan, tmp_path, monkeypatch):
    state = tmp_path / "state.json"
    monkeypatch.setattr(device_plan, "pack", lambda out, *rest: None)
    monkeypatch.setattr(device_plan, "plan", lambda report_dir: [device_plan.Step("big", [sys.executable, "-c", "0"], 900, 900)])
    assert device_plan.main(["--seconds", "60", "--out", str(tmp_path), "--state", str(state),
                             "--report-dir", str(tmp_path / "runs")]) == 0
    assert json.loads(state.read_text())["done"] == {}


def test_unknown_step_is_a_one_line_error(device_plan, capsys):
    assert device_plan.main(["--only", "nope", "--list"]) == 2
    assert "unknown step 'nope'" in capsys.readouterr().err


def test_mark_done_lets_a_fresh_checkout_resume_after_an_earlier_lease(device_plan, tmp_path, monkeypatch):
    """.device_state/ is not in git: a fresh clone marks what the committed records show was done,
    and the next call starts after it."""
    marker, state = tmp_path / "ran.txt", tmp_path / "state.json"
    monkeypatch.setattr(device_plan, "pack", lambda out, *rest: Path(out).mkdir(parents=True, exist_ok=True))
    monkeypatch.setattr(device_plan, "plan", fake_plan(device_plan, marker, slow=False))
    common = ["--state", str(state), "--report-dir", str(tmp_path / "runs")]
    assert device_plan.main(["--mark-done", "a,b", *common]) == 0
    assert device_plan.main(["--mark-done", "nope", *common]) == 2
    assert device_plan.main(["--seconds", "60", "--out", str(tmp_path / "out"), *common]) == 0
    assert marker.read_text().split() == ["c"]


# -- the state file: one model (schema.device_state), loaded through schema.load_stored ----------------
LAST_LEASE = ROOT / "tests" / "data" / "device_state_2026-12-07.json"  # .device_state/state.json of that lease


def test_the_last_lease_s_unversioned_state_loads_and_resumes_losing_nothing(device_plan, tmp_path, capsys):
    """The plan wrote {"done", "tries"} without a version before the model: it is read as /1 and the
    next save keeps every step and attempt it held."""
    state = tmp_path / "state.json"
    state.write_bytes(LAST_LEASE.read_bytes())
    old = json.loads(LAST_LEASE.read_text())
    assert device_plan.main(["--list", "--state", str(state)]) == 0
    listed = capsys.readouterr().out
    assert all(f"{name}" in listed for name in old["done"]) and state.read_bytes() == LAST_LEASE.read_bytes()
    assert device_plan.main(["--mark-done", "check-eager-a", "--state", str(state)]) == 0
    new = json.loads(state.read_text())
    assert new["schema"] == "streamllm.device-state/1"
    assert {k: {f: v[f] for f in ("seconds", "exit")} for k, v in new["done"].items() if k != "check-eager-a"} == old["done"]
    assert [{k: t[k] for k in old["tries"][0]} for t in new["tries"]] == old["tries"]
    assert new["done"]["check-eager-a"] == {"seconds": None, "exit": None, "marked": True}


@pytest.mark.parametrize("content, said", [
    ('{"done": {"record-1-compiled": {"seconds": 297.4, "exit": 0}}, "tries": [', "not JSON"),
    (json.dumps({"done": {"a": {"seconds": "x", "exit": 0}}, "tries": []}), "done.a.seconds"),
    (json.dumps({"schema": "streamllm.device-state/9", "done": {}, "tries": []}), "schema 'streamllm.device-state/9'"),
    (json.dumps([1]), "not a device plan state"),
])
def test_a_broken_state_is_one_line_naming_file_and_fix_exit_2_and_kept(device_plan, tmp_path, capsys, monkeypatch,
                                                                       content, said):
    state, marker = tmp_path / "state.json", tmp_path / "ran.txt"
    state.write_text(content)
    monkeypatch.setattr(device_plan, "plan", fake_plan(device_plan, marker, slow=False))
    for args in (["--list"], ["--mark-done", "a"], ["--seconds", "60", "--out", str(tmp_path / "out")]):
        assert device_plan.main([*args, "--state", str(state), "--report-dir", str(tmp_path / "runs")]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and str(state) in err and said in err, err
        assert "--mark-done" in err and "Traceback" not in err
        assert state.read_text() == content  # nothing overwritten
    assert not marker.exists()  # and no step ran


def test_restore_refuses_a_returned_state_that_does_not_load(device_plan, tmp_path, capsys):
    returned, state = tmp_path / "returned", tmp_path / "state.json"
    returned.mkdir()
    (returned / "records.tar.gz").write_bytes(b"")
    (returned / "state.json").write_text("{cut off")
    state.write_bytes(LAST_LEASE.read_bytes())
    assert device_plan.main(["--restore", str(returned), "--state", str(state)]) == 2
    assert str(returned / "state.json") in capsys.readouterr().err
    assert state.read_bytes() == LAST_LEASE.read_bytes()


def test_restore_refuses_a_folder_older_than_this_checkouts_state(device_plan, tmp_path, capsys):
    """Restoring the folder of an earlier call after a later one would put its older baselines/ and
    history/ back over the newer: refused in one line, exit 2, nothing unpacked, the state kept."""
    import json
    import tarfile

    returned, state = tmp_path / "returned", tmp_path / "state.json"
    returned.mkdir()
    with tarfile.open(returned / "records.tar.gz", "w:gz"):
        pass  # nothing in it: were the refusal missing, nothing would land in the checkout
    state.write_bytes(LAST_LEASE.read_bytes())
    older = json.loads(LAST_LEASE.read_text())
    dropped = sorted(older["done"])[-1]
    del older["done"][dropped]
    (returned / "state.json").write_text(json.dumps(older))
    assert device_plan.main(["--restore", str(returned), "--state", str(state)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and dropped in err and "move" in err
    assert state.read_bytes() == LAST_LEASE.read_bytes()
    # the same folder with every done step restores
    (returned / "state.json").write_bytes(LAST_LEASE.read_bytes())
    assert device_plan.main(["--restore", str(returned), "--state", str(state)]) == 0


# Steps allowed past ~120 s: each compiles the 2.8B model cold (inductor; its cache is warm after),
# or (eager-d) records lazy-c128, counting both arms over its 128-step cycle.
PAST_120_S = {"record-1-compiled", "kernels-pythia-e2e-1", "kernels-pythia-e2e-2", "record-1-eager-d"}


def test_no_step_but_a_first_compile_is_budgeted_past_120_s(device_plan):
    steps = device_plan.plan("runs")
    assert {s.name for s in steps if s.estimate_s > 120} <= PAST_120_S
    assert all(s.estimate_s <= s.box_s for s in steps)
    # every row of the nightly line is in exactly one group
    rows = [r for g in device_plan.GROUPS for r in g.rows.split(",")]
    assert len(rows) == len(set(rows)) == 15


def test_appended_recordings_skip_counting_and_checks_count(device_plan):
    for step in device_plan.plan("runs"):
        appended = "--append-baselines" in step.command
        if appended or "--nightly" in step.command or "--update-baselines" in step.command:
            assert ("--no-work-counts" in step.command) == appended, step.name


def test_the_earlier_whole_half_recording_counts_for_its_groups(device_plan, tmp_path, capsys):
    """A state written before the eager half was split (its one `record-1-eager`) resumes at the
    groups' checks, not at a second first recording."""
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"schema": "streamllm.device-state/1", "tries": [],
                                 "done": {"record-1-eager": {"seconds": 481.9, "exit": 0}}}))
    assert device_plan.main(["--list", "--state", str(state)]) == 0
    listed = dict(line.split()[0::len(line.split()) - 1] for line in capsys.readouterr().out.splitlines())
    assert {name for name, status in listed.items() if status == "done"} == {
        "record-1-eager-a", "record-1-eager-b", "record-1-eager-c", "record-1-eager-d"}
