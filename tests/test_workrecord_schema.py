"""The work-record file (streamllm/harness/schema/workrecord.py): a `StoredModel` with the schema
string `streamllm.work-record/2`, read through the one loader; round trip; a /1 file (the integer
`schema_version` key) reads as /2 with nothing lost; the runner writes the model's string; a
corrupt or unversioned file is one line naming the file and the fix, exit 2 at the CLI, and the
file is left as it was."""

from __future__ import annotations

import json

import pytest

from streamllm.harness import countrunner
from streamllm.harness.cli import main
from streamllm.harness.countcases import CountCase, compare_records, write_record
from streamllm.harness.schema import StoredModel
from streamllm.harness.schema.workrecord import (
    WORK_RECORD_SCHEMA,
    WorkRecord,
    WorkRecordError,
    load_work_record,
    parse_stored_counts,
)
from streamllm.harness.workrecord import WorkCounts

COUNTS = {"steps": 8, "ops": {"aten.cat": 16, "aten.mm": 80}, "bytes_read": 8000, "bytes_written": 800,
          "syncs": {"aten.item": 8}}


def _record(**extra) -> dict:
    return {"schema": WORK_RECORD_SCHEMA, "torch": "2.x", "transformers": "5.25.0", "library": "/x/streamllm",
            "results": [{"label": "strict", "case": CountCase().to_json(), "counts": COUNTS, "filled_by": "chunked",
                         "seconds": 1.5}, {"label": "ring", "case": CountCase().to_json(), "error": "TypeError: x"}],
            **extra}


def test_the_runner_writes_the_models_schema_string():
    """countrunner.py may not import the schema package: its copy of the string is pinned here."""
    assert countrunner.WORK_RECORD_SCHEMA == WORK_RECORD_SCHEMA == WorkRecord.SCHEMA == "streamllm.work-record/2"
    assert issubclass(WorkRecord, StoredModel)


def test_round_trip(tmp_path):
    record = WorkRecord.model_validate(_record())
    path = tmp_path / "counts.json"
    write_record(path, record)
    assert json.loads(path.read_text())["schema"] == WORK_RECORD_SCHEMA
    assert "schema_version" not in json.loads(path.read_text())
    again = load_work_record(path)
    assert again == record and again.schema_version == WORK_RECORD_SCHEMA
    assert again.to_json() == json.loads(path.read_text())
    assert not again.ok and again.why_not() == "ring: TypeError: x"
    assert again.entry("strict").ok and WorkCounts.from_raw(again.entry("strict").counts).total_ops == 96
    assert compare_records(again, again)[0].lines == []


def test_a_v1_record_reads_as_v2_with_nothing_lost(tmp_path):
    """/1 is /2's layout under the integer key `"schema_version": 1`: every field survives, the file is
    not rewritten, and saving the record writes /2."""
    v2 = _record(mode="time", python="/venv/bin/python", api="decode", compat="/x/compat.py", seconds=9.5,
                 results=[{"label": "strict", "case": CountCase().to_json(), "counts": COUNTS, "step_ms": [1.5, 2],
                           "load_s": 0.5, "fill_s": 0.25, "filled_by": "random", "seconds": 1.5},
                          {"label": "ring", "case": {}, "error": "TypeError: x", "traceback": "Traceback ..."}])
    v1 = {"schema_version": 1, **{k: v for k, v in v2.items() if k != "schema"}}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(v1, indent=1))
    before = path.read_bytes()
    record = load_work_record(path)
    assert path.read_bytes() == before
    assert record == WorkRecord.model_validate(v2)
    # nothing lost: what the file set is what the record holds, under the /2 key
    assert record.model_dump(mode="json", by_alias=True, exclude_unset=True) == json.loads(json.dumps(v2))
    write_record(tmp_path / "v2.json", record)
    assert json.loads((tmp_path / "v2.json").read_text())["schema"] == WORK_RECORD_SCHEMA
    assert load_work_record(tmp_path / "v2.json") == record


def test_stored_counts_in_the_committed_form_still_read():
    """Baselines and run records keep WorkCounts.to_json's form (schema tag and key): unchanged."""
    work = WorkCounts.from_raw(COUNTS)
    assert WorkCounts.from_json(json.loads(json.dumps(work.to_json()))) == work
    assert parse_stored_counts(work.to_json(), "x").steps == 8


OLD = {"torch": "2.x", "results": [{"label": "strict", "status": "ok",
                                     "counts": {"schema": "streamllm.workcounts/1", **COUNTS}}]}


def _v1(**extra) -> dict:
    return {"schema_version": 1, **{k: v for k, v in _record(**extra).items() if k != "schema"}}


@pytest.mark.parametrize("content, said", [
    ("{not json", "not JSON"),
    ('{"schema": "streamllm.work-record/2", "results": [', "not JSON (line 1"),  # truncated mid-write
    (json.dumps([1, 2]), "not a work record"),
    (json.dumps(OLD), "no schema field, this checkout reads 'streamllm.work-record/2'"),
    (json.dumps(_record(schema="streamllm.work-record/1")), "schema 'streamllm.work-record/1', this checkout"),
    (json.dumps(_record(schema="streamllm.work-record/3")), "schema 'streamllm.work-record/3', this checkout"),
    (json.dumps(_v1(schema_version=99)), "no schema field"),  # only /1 ever had the integer key
    (json.dumps(_v1(schema_version=True)), "no schema field"),  # JSON true == 1 in Python, but no version
    (json.dumps(_record(results=[{"label": "s", "case": {}, "counts": {**COUNTS, "steps": 0}}])),
     "results.0.counts.steps: Input should be greater than or equal to 1"),
    (json.dumps(_record(results=[{"label": "s", "case": {}, "counts": {**COUNTS, "ops": {"aten.mm": -1}}}])),
     "results.0.counts.ops.aten.mm: Input should be greater than or equal to 0"),
    (json.dumps(_v1(results=[{"label": "s", "case": {}, "counts": {**COUNTS, "steps": 0}}])),
     "results.0.counts.steps"),  # a /1 file is checked as strictly as a /2 one
    (json.dumps(_record(verdict="same")), "verdict: Extra inputs"),  # the record holds what was measured
])
def test_a_bad_file_is_one_line_with_the_fix_and_stays_untouched(tmp_path, content, said):
    path = tmp_path / "counts.json"
    path.write_text(content)
    with pytest.raises(WorkRecordError) as err:
        load_work_record(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and said in message and "streamllm count --json" in message
    assert "\n" not in message
    assert path.read_text() == content


def test_the_cli_exits_2_on_a_bad_record_before_counting(tmp_path, capsys):
    path = tmp_path / "old.json"
    path.write_text(json.dumps(OLD))
    before = path.read_bytes()
    assert main(["count", "--against", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and WORK_RECORD_SCHEMA in err and "streamllm count --json" in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    assert path.read_bytes() == before


def test_describe_prints_the_per_step_histogram():
    """`streamllm count` without --brief: the op histogram per step, largest first (it called a
    WorkCounts method that had been removed as dead code)."""
    from streamllm.harness.countcases import describe

    lines = describe(WorkRecord.model_validate(_record()), full=True)
    text = "\n".join(lines)
    assert "aten.mm   10" in text and text.index("aten.mm") < text.index("aten.cat")
    assert "ring: " in text and "cannot count: TypeError: x" in text
