"""Baseline storage: schema, lookups, errors that name the file, atomic explicit updates."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from streamllm.harness.baseline_merge import append_run
from streamllm.harness.baseline_record import BaselineKey, BaselineRecord
from streamllm.harness.baselines import SCHEMA, BaselineError, BaselineStore
from streamllm.harness.fingerprint import fingerprint_id, hardware_fingerprint
from streamllm.harness.provenance import make_provenance
from streamllm.harness.stats import compare_ppl
from streamllm.harness.verdicts import FAIL, ppl_tolerance
from streamllm.results import EvalResult

FP_A = {"device_class": "cpu", "cpu_model": "Test CPU A", "cpu_count": 2, "gpu": None, "torch": "2.13.0+cpu",
        "torch_threads": 1, "python": "3.11.7"}
FP_B = {"device_class": "cuda:NVIDIA H100 80GB HBM3", "cpu_model": "Test CPU B", "cpu_count": 16,
        "gpu": "NVIDIA H100 80GB HBM3", "torch": "2.13.0+cu130"}
ID_A, ID_B = fingerprint_id(FP_A), fingerprint_id(FP_B)
PROVENANCE = {"commit": "abc123", "date": "2026-11-22T08:00:00+00:00", "command": "pytest bench", "environment": {}}


def make_key(strategy: str = "lazy-s4-w252-c32", **over) -> BaselineKey:
    fields = dict(model="SmolLM2-135M-Instruct", model_revision="config-0123456789ab", dtype="float32",
                  dataset="book", dataset_sha256="deadbeefdeadbeef", tokens=1024, strategy=strategy,
                  params={"name": strategy.split("-")[0], "sink": 4, "window": 252, "compress_every": 32,
                          "auto_cap": None})
    fields.update(over)
    return BaselineKey(**fields)


def make_record(key: BaselineKey | None = None, *, ppl: float = 17.25, fid: str = ID_A, fp: dict = FP_A,
                runs: list[float] | None = None) -> BaselineRecord:
    runs = runs if runs is not None else [80.5, 81.25]
    return BaselineRecord(key=key or make_key(), ppl=ppl, mean_nll=math.log(ppl), ppl_device_class=fp["device_class"],
                          tpot_runs_ms={fid: runs}, fingerprints={fid: fp}, runs_averaged=1, provenance=PROVENANCE,
                          tpot_ratio={"cpu:X-t1": [1.01]}, tpot_ratio_ci={"cpu:X-t1": [[1.0, 1.02]]})


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture
def store(tmp_path: Path) -> BaselineStore:
    return BaselineStore(tmp_path / "baselines")


# -- layout and round trip ------------------------------------------------------------------------


def test_round_trip_and_layout(store: BaselineStore):
    record = make_record()
    dense = make_record(make_key("dense", params={"name": "dense"}), ppl=16.5)
    paths = store.update([record, dense])
    path = store.root / "SmolLM2-135M-Instruct" / "book-1024-float32.json"
    assert paths == [path] and store.path_for(record.key) == path
    data = json.loads(path.read_text())
    assert data["schema"] == SCHEMA and sorted(data["records"]) == ["dense", "lazy-s4-w252-c32"]
    assert store.lookup(record.key) == record
    assert store.lookup(dense.key) == dense
    assert store.files() == [path]
    assert sorted(r.key.strategy for f in store.files() for r in store.read(f).records.values()) == ["dense", "lazy-s4-w252-c32"]
    # number arrays are kept on one line so diffs stay readable
    assert f'"{ID_A}": [80.5, 81.25]' in path.read_text()


def test_key_normalizes_and_ids_are_stable():
    a = make_key(dtype="torch.float32", params={"window": 252, "sink": 4, "compress_every": 32, "name": "lazy",
                                                "auto_cap": None})
    b = make_key(dtype="fp32")
    assert a == b and a.id() == b.id()
    assert a.id().startswith("SmolLM2-135M-Instruct:book-1024-float32:lazy-s4-w252-c32#")
    assert make_key(model_revision="other").id() != a.id()
    assert make_key(model="HuggingFaceTB/SmolLM2-135M").relpath() == Path("HuggingFaceTB_SmolLM2-135M/book-1024-float32.json")


def test_missing_file_or_strategy_is_none(store: BaselineStore):
    assert store.lookup(make_key()) is None  # no file at all
    store.update([make_record()])
    assert store.lookup(make_key("strict-s4-w252")) is None  # file exists, strategy not recorded
    assert store.lookup(make_key(tokens=2048)) is None  # another file


# -- errors that name the file -------------------------------------------------------------------


def test_corrupt_json_names_file_and_fix(store: BaselineStore):
    path = store.path_for(make_key())
    path.parent.mkdir(parents=True)
    path.write_text('{"schema": "streamllm.baseline/2",\n "records": {')
    with pytest.raises(BaselineError) as err:
        store.lookup(make_key())
    msg = str(err.value)
    assert msg.startswith(f"{path}: not JSON (line 2") and "\n" not in msg
    assert "git checkout" in msg and "--update-baselines" in msg


@pytest.mark.parametrize(("schema", "what"), [("streamllm.baseline/1", "schema 'streamllm.baseline/1', this checkout reads"),
                                              (None, "no schema field")])
def test_wrong_or_missing_schema(store: BaselineStore, schema, what):
    store.update([make_record()])
    path = store.path_for(make_key())
    data = json.loads(path.read_text())
    if schema is None:
        del data["schema"]
    else:
        data["schema"] = schema
    path.write_text(json.dumps(data))
    before = path.read_bytes()
    with pytest.raises(BaselineError, match=what) as err:
        store.lookup(make_key())
    assert str(err.value).startswith(str(path)) and "convert_stored_files.py" in str(err.value)
    with pytest.raises(BaselineError, match=what):  # an update does not overwrite it either
        store.update([make_record()])
    assert path.read_bytes() == before


def test_missing_field_and_wrong_type(store: BaselineStore):
    store.update([make_record()])
    path = store.path_for(make_key())
    data = json.loads(path.read_text())
    del data["records"]["lazy-s4-w252-c32"]["ppl"]
    path.write_text(json.dumps(data))
    with pytest.raises(BaselineError, match=r"records\.lazy-s4-w252-c32\.ppl: Field required.*git checkout"):
        store.lookup(make_key())
    for bad in ("17", True, float("nan"), -1.0):
        data["records"]["lazy-s4-w252-c32"]["ppl"] = bad
        path.write_text(json.dumps(data))
        with pytest.raises(BaselineError, match=r"lazy-s4-w252-c32\.ppl: Input should be"):
            store.lookup(make_key())
    data["records"]["lazy-s4-w252-c32"]["ppl"] = 17.25
    data["records"]["lazy-s4-w252-c32"]["extra"] = {}  # /1's untyped dict: refused, not ignored
    path.write_text(json.dumps(data))
    with pytest.raises(BaselineError, match="extra: Extra inputs are not permitted"):
        store.lookup(make_key())


def test_key_mismatches_are_errors_not_silent_passes(store: BaselineStore):
    store.update([make_record()])
    path = store.path_for(make_key())
    # the model or the text changed since recording: the stored numbers describe something else
    with pytest.raises(BaselineError, match="model_revision") as err:
        store.lookup(make_key(model_revision="config-ffffffffffff"))
    assert str(path) in str(err.value) and "--update-baselines" in str(err.value)
    with pytest.raises(BaselineError, match="dataset_sha256"):
        store.lookup(make_key(dataset_sha256="0000000000000000"))
    # same label, other params
    with pytest.raises(BaselineError, match="other params"):
        store.lookup(make_key(params={"name": "lazy", "sink": 4, "window": 252, "compress_every": 16}))
    # a record filed under another label
    data = json.loads(path.read_text())
    data["records"]["lazy-s4-w252-c32"]["strategy"] = "strict-s4-w252"
    path.write_text(json.dumps(data))
    with pytest.raises(BaselineError, match="key mismatch"):
        store.lookup(make_key())


def test_file_copied_under_another_name_is_a_mismatch(store: BaselineStore):
    store.update([make_record()])
    src = store.path_for(make_key())
    dst = store.path_for(make_key(tokens=2048))
    dst.write_bytes(src.read_bytes())
    with pytest.raises(BaselineError, match="belongs in") as err:
        store.lookup(make_key(tokens=2048))
    assert str(dst) in str(err.value)


# -- fingerprints ---------------------------------------------------------------------------------


def test_foreign_fingerprint_has_no_runs(store: BaselineStore):
    store.update([make_record()])
    record = store.lookup(make_key())
    assert record.tpot_runs_ms.get(ID_A) == [80.5, 81.25]
    assert record.tpot_runs_ms.get(ID_B) is None


def test_fingerprint_id_uses_only_timing_fields():
    assert fingerprint_id(FP_A) == fingerprint_id(dict(FP_A)) == ID_A
    assert ID_A.startswith("cpu-") and ID_B.startswith("cuda-")
    assert fingerprint_id({**FP_A, "python": "3.12.0", "platform": "other"}) == ID_A
    assert ID_A.endswith("-t1")  # the thread count splits CPU timings (1 vs 2 threads: two machines)
    for field, value in [("cpu_model", "Other CPU"), ("torch", "2.14.0"), ("cpu_count", 16), ("device_class", "cuda:X"),
                         ("torch_threads", 2)]:
        assert fingerprint_id({**FP_A, field: value}) != ID_A, field
    # the core count splits CPU baselines only; a GPU's timing does not hinge on it the same way
    assert fingerprint_id({**FP_B, "cpu_count": 32}) == ID_B


def test_hardware_fingerprint_on_this_machine():
    fp = hardware_fingerprint("cpu")
    assert fp["device_class"] == "cpu" and fp["gpu"] is None
    for field in ("cpu_model", "cpu_count", "torch", "transformers", "python"):
        assert fp[field], field
    assert fingerprint_id(fp) == fingerprint_id(hardware_fingerprint("cpu"))
    json.dumps(fp)  # storable as is


def test_ppl_tolerance_per_device_class():
    assert ppl_tolerance("cpu", "cpu") == 0.002
    assert ppl_tolerance("cpu", "cuda:NVIDIA H100 80GB HBM3") > 0.002


# -- updates ---------------------------------------------------------------------------------------


def test_update_merges_fingerprints_and_replaces_ppl(store: BaselineStore):
    store.update([make_record()])
    store.update([make_record(ppl=17.5, fid=ID_B, fp=FP_B, runs=[2.0, 2.1, 2.05])])
    record = store.lookup(make_key())
    assert record.ppl == 17.5 and record.ppl_device_class == FP_B["device_class"]
    assert record.tpot_runs_ms.get(ID_A) == [80.5, 81.25]  # other machine's timings kept
    assert record.tpot_runs_ms.get(ID_B) == [2.0, 2.1, 2.05]
    assert set(record.fingerprints) == {ID_A, ID_B}
    # re-recording on machine A replaces A's runs only
    store.update([make_record(runs=[70.0, 71.0, 72.0])])
    record = store.lookup(make_key())
    assert record.tpot_runs_ms.get(ID_A) == [70.0, 71.0, 72.0]
    assert record.tpot_runs_ms.get(ID_B) == [2.0, 2.1, 2.05]  # machine B's runs untouched


def test_update_after_model_change_drops_stale_records(store: BaselineStore):
    dense = make_record(make_key("dense", params={"name": "dense"}))
    store.update([make_record(), dense])
    new_key = make_key(model_revision="config-ffffffffffff")
    with pytest.warns(UserWarning, match="dropping its records"):
        store.update([make_record(new_key)])
    assert store.lookup(new_key) == make_record(new_key)
    assert store.lookup(make_key("dense", params={"name": "dense"}, model_revision="config-ffffffffffff")) is None


def test_update_never_overwrites_a_corrupt_file(store: BaselineStore):
    path = store.path_for(make_key())
    path.parent.mkdir(parents=True)
    path.write_text("not json")
    with pytest.raises(BaselineError, match=r"not JSON \(line 1.*delete it and re-record"):
        store.update([make_record()])
    assert path.read_text() == "not json"
    path.unlink()  # the fix the message names
    store.update([make_record()])
    assert store.lookup(make_key()) == make_record()


def test_update_refuses_unusable_records(store: BaselineStore):
    with pytest.raises(ValueError, match="finite"):  # the record refuses to be built ...
        make_record(ppl=float("nan"))
    # ... and the store checks again what reaches it by another way (model_copy does not validate)
    unusable = make_record().model_copy(update={"ppl": float("nan")})
    with pytest.raises(ValueError, match="finite"):
        store.update([make_record(make_key(dataset="other")), unusable])
    with pytest.raises(ValueError, match="twice"):
        store.update([make_record(), make_record()])
    assert not store.root.exists() or not any(store.root.rglob("*.json"))


@pytest.mark.parametrize("crash", ["json.dumps", "os.fsync", "os.replace"])
def test_update_is_atomic(store: BaselineStore, monkeypatch, crash):
    store.update([make_record()])
    path = store.path_for(make_key())
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError(f"simulated crash in {crash}")

    module, name = crash.split(".")
    monkeypatch.setattr({"json": json, "os": os}[module], name, boom)
    with pytest.raises(OSError, match="simulated crash"):
        store.update([make_record(ppl=99.0)])
    monkeypatch.undo()
    assert path.read_bytes() == before  # old file intact
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left behind
    assert store.lookup(make_key()).ppl == 17.25


def test_lookup_never_modifies_files(store: BaselineStore):
    store.update([make_record()])
    corrupt = store.path_for(make_key(dataset="wiki"))
    corrupt.write_text("{broken")
    stale = store.path_for(make_key(tokens=512))
    stale.write_text(store.path_for(make_key()).read_text().replace('"schema": "streamllm.baseline/2"',
                                                                      '"schema": "streamllm.baseline/1"'))
    before = snapshot(store.root)
    assert store.lookup(make_key()) == make_record()
    assert store.lookup(make_key("dense")) is None
    for key in (make_key(dataset="wiki"), make_key(tokens=512), make_key(model_revision="other")):
        with pytest.raises(BaselineError):
            store.lookup(key)
    assert snapshot(store.root) == before


def test_edited_ppl_fails_with_message_naming_file(store: BaselineStore):
    # The acceptance check: bump a stored PPL by 2 % and exactly that comparison fails.
    store.update([make_record(), make_record(make_key("dense", params={"name": "dense"}), ppl=16.5)])
    path = store.path_for(make_key())
    data = json.loads(path.read_text())
    data["records"]["lazy-s4-w252-c32"]["ppl"] *= 1.02
    path.write_text(json.dumps(data, indent=2))
    lazy, dense = store.lookup(make_key()), store.lookup(make_key("dense", params={"name": "dense"}))
    v = compare_ppl(17.25, lazy.ppl, tolerance=ppl_tolerance(lazy.ppl_device_class, "cpu"), source=str(path))
    assert v.verdict == FAIL
    assert str(path) in v.message and "17.25" in v.message and f"{17.25 * 1.02:.6g}" in v.message and "0.002" in v.message
    assert compare_ppl(16.5, dense.ppl, source=str(path)).passed


# -- averaging and construction from a run --------------------------------------------------------


def test_record_from_result_round_trips(store: BaselineStore):
    result = EvalResult(
        strategy="lazy-s4-w252-c32", params=make_key().params, model="SmolLM2-135M-Instruct",
        model_revision="config-0123456789ab", dataset="book", dataset_sha256="deadbeefdeadbeef", tokens=1024,
        tokens_scored=1023, scored_range=(1, 1023), evaluator="token", device="cpu", dtype="float32", ppl=17.25,
        mean_nll=math.log(17.25), total_s=80.0, warmup_s=1.0, warmup_steps=8, tpot_ms_median=80.0,
        tpot_ms_cycle_mean=81.23456789, steady_from=288, prune_events=24, max_position=287, beyond_context=False,
    )
    record = BaselineRecord.from_result(result, fingerprint=FP_A, tpot_samples_ms=[80.123456789, 82.0],
                                        provenance=PROVENANCE, tpot_ratio={"cpu:X-t1": [1.01]})
    assert record.key == make_key() and record.ppl_device_class == "cpu"
    assert record.tpot_runs_ms == {ID_A: [81.0617]} and record.tpot_ratio == {"cpu:X-t1": [1.01]}
    store.update([record])
    assert store.lookup(make_key()) == record
    # the parallel evaluator has no timing: the record carries PPL only
    untimed = BaselineRecord.from_result(
        EvalResult(**{**result.__dict__, "tpot_ms_cycle_mean": float("nan")}), fingerprint=FP_A, provenance=PROVENANCE
    )
    assert untimed.tpot_runs_ms == {}
    with pytest.raises(TypeError, match="unknown baseline section"):
        BaselineRecord.from_result(result, fingerprint=FP_A, provenance=PROVENANCE, extra={"note": "x"})


def test_make_provenance_fields():
    prov = make_provenance(command="pytest bench --update-baselines", cwd=os.getcwd())
    assert prov["command"] == "pytest bench --update-baselines"
    assert prov["date"].endswith("+00:00") and prov["commit"]
    assert prov["environment"]["python"]
    json.dumps(prov)


# -- appended runs (--append-baselines) --------------------------------------------------------------


def test_append_run_pools_timing_and_keeps_the_rest(store: BaselineStore):
    store.update([make_record(runs=[81.0])])
    store.update([make_record(runs=[91.0])], append_for=ID_A)
    other = make_record(fid=ID_B, fp=FP_B, runs=[5.0])
    store.update([other])  # another machine's timing in the same record
    new = make_record(runs=[101.0])
    store.update([new], append_for=ID_A)
    got = store.lookup(make_key())
    assert got.tpot_runs_ms[ID_A] == [81.0, 91.0, 101.0]
    # the plain update of `other` replaced this ratio key; the append after it added one run
    assert got.tpot_ratio["cpu:X-t1"] == [1.01, 1.01] and got.runs_averaged == 2
    assert got.tpot_runs_ms[ID_B] == [5.0]  # the other machine keeps its timing
    assert got.provenance["appended_dates"] == [PROVENANCE["date"]]


def test_an_appended_run_without_work_counts_keeps_the_stored_counts(store: BaselineStore):
    """The device plan's appended recordings run with --no-work-counts (an append adds timing):
    the counts the first recording stored, and its reference arm's, must survive them."""
    counts = {"k1": {"steps": 8, "ops": {"aten.mm": 3}}}
    store.update([make_record().model_copy(update={"work_counts": counts, "reference_work_counts": counts})])
    store.update([make_record(runs=[99.0])], append_for=ID_A)
    got = store.lookup(make_key())
    assert got.work_counts == counts and got.reference_work_counts == counts
    assert got.tpot_runs_ms[ID_A] == [80.5, 81.25, 99.0]


def test_append_refuses_a_changed_ppl():
    with pytest.raises(ValueError, match="re-record with --update-baselines"):
        append_run(make_record(ppl=17.25), make_record(ppl=17.25 * 1.01), ID_A)


def test_append_to_a_missing_record_writes_it(store: BaselineStore):
    store.update([make_record()], append_for=ID_A)
    assert store.lookup(make_key()) == make_record()


def test_every_committed_baseline_file_reads():
    """baselines/ holds only store files: a stray file of another schema would break every reader."""
    root = Path(__file__).parents[1] / "baselines"
    store = BaselineStore(root)
    records = [(f, r) for f in store.files() for r in store.read(f).records.values()]
    assert records and all(r.tpot_runs_ms for _, r in records)
