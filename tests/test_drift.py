"""streamllm drift: release parsing, the table's marks and breaks, and (opt-in) a real drift over two
transformers releases, each in a venv built over this environment's torch.

The real drift builds venvs (pip downloads transformers), so CI's default `python -m pytest tests`
skips it; run it with

    STREAMLLM_DRIFT_TESTS=1 python -m pytest tests/test_drift.py -m drift

(venvs are cached under ~/.cache/streamllm/drift, or STREAMLLM_DRIFT_VENVS).
"""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path

import pytest

from streamllm import compat
from streamllm.harness import drift
from streamllm.harness.countcases import CountCase, named_case
from streamllm.harness.schema.workrecord import WorkRecord, load_work_record


def test_releases_sorted_and_checked():
    assert drift.parse_releases("5.25.0, 5.17.0,5.20.0") == ["5.17.0", "5.20.0", "5.25.0"]
    with pytest.raises(drift.DriftError, match="at least two releases"):
        drift.parse_releases("5.25.0")
    with pytest.raises(drift.DriftError, match=f"below the lowest tested release {compat.LOWEST_TESTED}"):
        drift.parse_releases("5.10.0,5.25.0")
    assert drift.parse_releases("5.10.0,5.25.0", allow_untested=True) == ["5.10.0", "5.25.0"]
    with pytest.raises(drift.DriftError, match="pass release numbers"):
        drift.parse_releases("five,5.25.0")


def _entry(label: str, reshapes: int | None, error: str = "") -> dict:
    if reshapes is None:
        return {"label": label, "case": {}, "error": error}
    counts = {"steps": 8, "ops": {"aten.mm": 8 * 10, "aten.reshape": 8 * reshapes}, "bytes_read": 8000,
              "bytes_written": 800, "syncs": {}}
    return {"label": label, "case": {}, "counts": counts}


def _run(release: str, *entries: dict) -> drift.ReleaseRun:
    record = WorkRecord.model_validate({"schema": WorkRecord.SCHEMA, "torch": "2.x", "results": list(entries)})
    return drift.ReleaseRun(release, record, 1.0, 2.0, True)


def test_table_marks_changes_and_names_the_first_break():
    runs = [_run("5.17.0", _entry("strict", 0), _entry("static", 0)),
            _run("5.20.0", _entry("strict", 30), _entry("static", 0)),
            _run("5.23.0", _entry("strict", 30), _entry("static", None, "TypeError: update() got 'kwargs'")),
            _run("5.24.0", _entry("strict", 30), _entry("static", None, "TypeError: later"))]
    result = drift.compare_releases(runs, ["strict", "static"])
    assert result.changes == {("5.20.0", "strict"): ["+30 aten.reshape per step",
                                                     "aten ops 10 -> 40 per step (+30)"]}
    assert result.breaks == {"static": ("5.23.0", "TypeError: update() got 'kwargs'")}
    text = drift.markdown(result)
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| 5.")}
    assert "**changed** 40 ops" in rows["5.20.0"] and "**changed**" not in rows["5.24.0"]
    assert rows["5.23.0"].rstrip(" |").endswith("**fails**")
    assert "- transformers 5.20.0, strict: +30 aten.reshape per step" in text
    assert "First release that breaks a case: transformers 5.23.0 (static: TypeError: update() got 'kwargs')" in text


def test_no_change_no_break_is_said():
    runs = [_run("5.17.0", _entry("strict", 0)), _run("5.25.0", _entry("strict", 0))]
    text = drift.markdown(drift.compare_releases(runs, ["strict"]))
    assert "No release changed any case's ops, bytes or syncs." in text
    assert "No release broke a case" in text


def test_drift_json_writes_each_release_as_a_record_count_against_reads(tmp_path, monkeypatch):
    """--json keeps one work record per release under its /2 key (`"schema"`, not the field name), so
    a record cut out and saved on its own loads through `load_work_record`."""
    from streamllm.harness.cli import main

    runs = [_run(compat.LOWEST_TESTED, _entry("strict", 0)), _run("5.25.0", _entry("strict", 0))]
    monkeypatch.setattr(drift, "run_drift", lambda plan, say: drift.compare_releases(runs, ["strict"]))
    out = tmp_path / "drift.json"
    assert main(["drift", "--transformers", f"{compat.LOWEST_TESTED},5.25.0", "--cases", "strict",
                 "--json", str(out), "--venvs", str(tmp_path / "venvs")]) == 0
    saved = json.loads(out.read_text())["releases"]["5.25.0"]
    assert saved["schema"] == WorkRecord.SCHEMA and "schema_version" not in saved
    (tmp_path / "one.json").write_text(json.dumps(saved))
    assert load_work_record(tmp_path / "one.json") == runs[1].record


@pytest.mark.drift
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("STREAMLLM_DRIFT_TESTS") != "1",
                    reason="builds one venv per transformers release: set STREAMLLM_DRIFT_TESTS=1 (and -m drift)")
def test_drift_over_two_releases_in_real_venvs():
    installed = metadata.version("transformers")
    releases = drift.parse_releases(f"{compat.LOWEST_TESTED},{installed}")
    venvs = Path(os.environ.get("STREAMLLM_DRIFT_VENVS", drift.DEFAULT_VENVS)).expanduser()
    cases = [named_case("strict", CountCase(tokens=160)).check()]
    result = drift.run_drift(drift.DriftPlan(releases, cases, venvs=venvs), say=lambda _: None)
    assert [r.release for r in result.runs] == releases
    for run in result.runs:
        assert run.record.transformers == run.release  # each venv really ran its own release
        assert run.record.library == str(Path(drift.__file__).parents[1])  # ... with this checkout's library
        assert run.entry("strict").ok
    assert not result.breaks
    text = drift.markdown(result)
    assert all(f"| {r} |" in text for r in releases)
