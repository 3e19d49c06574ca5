"""The work-record file (streamllm/harness/schema/workrecord.py): a pydantic model with a
schema_version; round trip; a corrupt or old-schema file is one line naming the file and the fix,
exit 2 at the CLI, and the file is left as it was."""

from __future__ import annotations

import json

import pytest

from streamllm.harness.cli import main
from streamllm.harness.countcases import CountCase, compare_records, write_record
from streamllm.harness.schema.workrecord import (
    SCHEMA_VERSION,
    WorkRecord,
    WorkRecordError,
    load_work_record,
    parse_stored_counts,
)
from streamllm.harness.workrecord import WorkCounts

COUNTS = {"steps": 8, "ops": {"aten.cat": 16, "aten.mm": 80}, "bytes_read": 8000, "bytes_written": 800,
          "syncs": {"aten.item": 8}}


def _record(**extra) -> dict:
    return {"schema_version": SCHEMA_VERSION, "torch": "2.x", "transformers": "5.25.0", "library": "/x/streamllm",
            "results": [{"label": "strict", "case": CountCase().to_json(), "counts": COUNTS, "filled_by": "chunked",
                         "seconds": 1.5}, {"label": "ring", "case": CountCase().to_json(), "error": "TypeError: x"}],
            **extra}


def test_round_trip(tmp_path):
    record = WorkRecord.model_validate(_record())
    path = tmp_path / "counts.json"
    write_record(path, record)
    again = load_work_record(path)
    assert again == record and again.schema_version == SCHEMA_VERSION
    assert not again.ok and again.why_not() == "ring: TypeError: x"
    assert again.entry("strict").ok and WorkCounts.from_raw(again.entry("strict").counts).total_ops == 96
    assert compare_records(again, again)[0].lines == []


def test_stored_counts_in_the_committed_form_still_read():
    """Baselines and run records keep WorkCounts.to_json's form (schema tag and key): unchanged."""
    work = WorkCounts.from_raw(COUNTS)
    assert WorkCounts.from_json(json.loads(json.dumps(work.to_json()))) == work
    assert parse_stored_counts(work.to_json(), "x").steps == 8


OLD = {"torch": "2.x", "results": [{"label": "strict", "status": "ok",
                                     "counts": {"schema": "streamllm.workcounts/1", **COUNTS}}]}


@pytest.mark.parametrize("content, said", [
    ("{not json", "not JSON"),
    (json.dumps([1, 2]), "not a work record"),
    (json.dumps(OLD), "before work records had a schema_version"),
    (json.dumps(_record(schema_version=99)), "schema_version 99"),
    (json.dumps(_record(results=[{"label": "s", "case": {}, "counts": {**COUNTS, "steps": 0}}])), "corrupt"),
    (json.dumps(_record(results=[{"label": "s", "case": {}, "counts": {**COUNTS, "ops": {"aten.mm": -1}}}])),
     "corrupt"),
    (json.dumps(_record(verdict="same")), "corrupt"),  # no verdict field: the record holds what was measured
])
def test_a_bad_file_is_one_line_with_the_fix_and_stays_untouched(tmp_path, content, said):
    path = tmp_path / "counts.json"
    path.write_text(content)
    with pytest.raises(WorkRecordError) as err:
        load_work_record(path)
    message = str(err.value)
    assert said in message and str(path) in message and "streamllm count --json" in message
    assert "\n" not in message
    assert path.read_text() == content


def test_the_cli_exits_2_on_a_bad_record_before_counting(tmp_path, capsys):
    path = tmp_path / "old.json"
    path.write_text(json.dumps(OLD))
    before = path.read_bytes()
    assert main(["count", "--against", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "schema_version" in err and len(err.strip().splitlines()) == 1
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
