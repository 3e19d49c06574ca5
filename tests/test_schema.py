"""streamllm.harness.schema: one model per stored file, one loader. For each kind: write -> load is
equal; a corrupt file and an old schema version are one line naming the file and the fix, and the
file is left as it was; every committed file under baselines/ and history/ loads through its model;
the CLI turns a broken stored file into exit 2 without a traceback."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from streamllm.harness.baseline_record import BaselineKey, BaselineRecord
from streamllm.harness.baselines import BaselineStore
from streamllm.harness.history import RunHistory
from streamllm.harness.schema import (
    BaselineFileModel,
    HistoryRunModel,
    StoredFileError,
    XdistPart,
    load_stored,
)

ROOT = Path(__file__).resolve().parents[1]


def _baseline(tmp_path: Path) -> Path:
    key = BaselineKey(model="m", model_revision="r", dtype="float32", dataset="book", dataset_sha256="sha",
                      tokens=64, strategy="strict", params={"name": "strict"})
    record = BaselineRecord(key, 10.0, math.log(10.0), "cpu", tpot_runs_ms={"cpu-x": [40.0]},
                            fingerprints={"cpu-x": {"device_class": "cpu"}}, tpot_ratio={"cpu:X-t1": [1.01]},
                            tpot_ratio_ci={"cpu:X-t1": [[1.0, 1.02]]}, work_counts={"wk-1": {"steps": 8}})
    (path,) = BaselineStore(tmp_path / "baselines").update([record])
    assert BaselineStore(tmp_path / "baselines").lookup(key) == record
    return path


def _history(tmp_path: Path) -> Path:
    run = RunHistory(tmp_path / "history", "cpu-x").append({"a": [1.0, 2.0]}, accepted=True,
                                                          fingerprint={"torch": "2"}, meta={"command": "t"})
    assert RunHistory(tmp_path / "history", "cpu-x").runs() == [run]
    return tmp_path / "history" / "cpu-x" / run.filename


def _part(tmp_path: Path) -> Path:
    part = {"schema": XdistPart.SCHEMA, "worker": "gw0", "pid": 1,
            "pinning": {"slot": 0, "workers": 1, "gpu": None, "cores": [0], "shared": False},
            "cells": {"n": {"case": "strict", "dataset": "book", "label": "strict"}}, "complete": True,
            "records": [{"header": {"model": "m", "model_revision": "r", "dtype": "float32", "dataset": "book",
                                    "dataset_sha256": "sha", "tokens": 64},
                         "record": {"strategy": "strict", "params": {}, "ppl": 10.0, "mean_nll": 2.3,
                                    "ppl_device_class": "cpu", "runs_averaged": 1}}],
            "history": {"samples": {"a": [1.0]}, "accepted": {"a": True}, "fingerprint": {}}}
    path = tmp_path / "0-gw0.json"
    path.write_text(json.dumps(XdistPart.model_validate(part).to_json()))
    return path


KINDS = {"baseline": (_baseline, BaselineFileModel, "streamllm.baseline/1", "convert_stored_files.py"),
         "history": (_history, HistoryRunModel, "streamllm.history/1", "convert_stored_files.py"),
         "xdist part": (_part, XdistPart, "streamllm.bench-part/1", "re-run `pytest bench -n N`")}


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip(tmp_path, kind):
    make, model, _, _ = KINDS[kind]
    path = make(tmp_path)
    loaded = load_stored(path, model)
    assert loaded.schema_version == model.SCHEMA
    assert load_stored(path, model) == model.model_validate(json.loads(path.read_text()))
    assert json.loads(json.dumps(loaded.to_json())) == json.loads(path.read_text())


@pytest.mark.parametrize("kind", KINDS)
def test_corrupt_file_is_one_line_naming_file_and_fix_and_left_alone(tmp_path, kind):
    make, model, _, fix = KINDS[kind]
    path = make(tmp_path)
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    before = path.read_bytes()
    with pytest.raises(model.ERROR) as err:
        load_stored(path, model)
    msg = str(err.value)
    assert msg.startswith(f"{path}: not JSON (line ") and "\n" not in msg
    assert ("git checkout --" in msg) if kind != "xdist part" else (fix in msg)
    assert path.read_bytes() == before


@pytest.mark.parametrize("kind", KINDS)
def test_old_schema_is_one_line_naming_file_and_fix_and_left_alone(tmp_path, kind):
    make, model, old, fix = KINDS[kind]
    path = make(tmp_path)
    path.write_text(json.dumps({**json.loads(path.read_text()), "schema": old}))
    before = path.read_bytes()
    with pytest.raises(StoredFileError) as err:
        load_stored(path, model)
    msg = str(err.value)
    assert msg.startswith(f"{path}: schema {old!r}, this checkout reads {model.SCHEMA!r}: ") and "\n" not in msg
    assert fix in msg
    assert path.read_bytes() == before


@pytest.mark.parametrize("kind", KINDS)
def test_missing_required_field_names_it(tmp_path, kind):
    make, model, _, _ = KINDS[kind]
    path = make(tmp_path)
    data = json.loads(path.read_text())
    field = {"baseline": "model_revision", "history": "number", "xdist part": "worker"}[kind]
    del data[field]
    path.write_text(json.dumps(data))
    with pytest.raises(StoredFileError, match=rf"^{path}: {field}: Field required \(1 problem\(s\)\): "):
        load_stored(path, model)


@pytest.mark.parametrize("path", sorted((ROOT / "baselines").glob("*/*.json")) + sorted((ROOT / "history").glob("*/*.json")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_committed_file_loads_through_its_model(path):
    model = BaselineFileModel if path.parts[-3] == "baselines" else HistoryRunModel
    loaded = load_stored(path, model)
    assert loaded.schema_version == model.SCHEMA


@pytest.mark.parametrize("path", sorted((ROOT / "baselines").glob("*/*.json")), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_committed_baseline_re_saves_byte_identical(path, tmp_path):
    """The file format did not move when the in-memory record became the model's fields: a
    committed file loaded and dumped is the same bytes, and through the store's BaselineRecords
    the same JSON (the store sorts each work-count dict's keys, which the two SmolLM2 files,
    converted from /1, do not yet: their next update reorders those keys, nothing else)."""
    from streamllm.harness.baselines import _dumps, read_baseline_file

    text = path.read_text(encoding="utf-8")
    assert load_stored(path, BaselineFileModel).to_text() == text
    baseline = read_baseline_file(path)
    again = _dumps(baseline.header, baseline.records)
    assert json.loads(again) == json.loads(text)
    # the store's own output re-saves byte-identical (what an update leaves is a fixed point)
    copy = tmp_path / path.name
    copy.write_text(again, encoding="utf-8")
    resaved = read_baseline_file(copy)
    assert _dumps(resaved.header, resaved.records) == again


@pytest.mark.parametrize("kind", KINDS)
def test_cli_exits_2_on_a_broken_stored_file_without_traceback(tmp_path, capsys, kind):
    """A command that loads a broken stored file ends through the CLI's USER_ERRORS path: the
    loader's one line on stderr and exit 2, no traceback."""
    from streamllm import cli as product_cli
    from streamllm.harness import cli

    make, model, old, _ = KINDS[kind]
    path = make(tmp_path)
    path.write_text(json.dumps({**json.loads(path.read_text()), "schema": old}))
    code = product_cli.dispatch(cli.build_parser(), {"compare": lambda args: load_stored(path, model)},
                                cli.USER_ERRORS, ["compare", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"streamllm: error: {path}: schema {old!r}") and "Traceback" not in err
    assert err.count("\n") == 1


# a `pytest bench` child process each (~8 s): the baseline case runs with -m slow (.ci/run)
@pytest.mark.parametrize("kind", [pytest.param("baseline", marks=pytest.mark.slow), "history"])
def test_pytest_bench_stops_at_its_start_on_a_broken_stored_file(tmp_path, kind):
    """`pytest bench` with a corrupt baseline or history file: one line naming the file, exit 2,
    before anything is measured, and the file's bytes unchanged."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    baselines, history = tmp_path / "baselines", tmp_path / "history"
    broken = (baselines / "m" / "book-64-float32.json") if kind == "baseline" else (history / "cpu-x" / "0001-x.json")
    if kind == "history":
        from bench.session import Session, SuiteOptions

        fid = Session(SuiteOptions(), root).fingerprint_id
        broken = history / fid / "0001-20260101T000000Z.json"
    broken.parent.mkdir(parents=True)
    broken.write_text('{"schema": "streamllm.' + kind + '/2", ')  # cut off mid-write
    before = broken.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "pytest", "bench", "-p", "no:cacheprovider", "--collect-only", "-q",
                           "--baselines-dir", str(baselines), "--history-dir", str(history), "--strategies", "dense"],
                          cwd=root, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if "streamllm: error:" in line]
    assert len(errors) == 1 and str(broken) in errors[0] and "not JSON" in errors[0], out
    assert broken.read_bytes() == before
