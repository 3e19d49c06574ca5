"""Rows captured in a CUDA graph, checked without a GPU: kernel counts by name, and the device time
stored for a GPU model (both built from fakes of what the profiler and CUDA events report)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from streamllm.harness.baseline_record import BaselineKey, BaselineRecord
from streamllm.harness.baselines import BaselineStore
from streamllm.harness.judge_device_time import check_device_time
from streamllm.harness.judge_lookup import lookup
from streamllm.harness.opcount import _device_events
from streamllm.harness.table import armed
from streamllm.harness.verdicts import DEVICE_TIME_CHECK, FAIL, NOT_CHECKED, PASS, RATIO_CHECK, WORK_CHECK
from streamllm.harness.work_compare import compare_counts
from streamllm.harness.workrecord import WorkCounts

KEY = "cuda-kernels-abc"  # a kernel counter key id: GPU model + software + config + strategy + decoder


@dataclass(frozen=True)
class FakeRange:
    us: float

    def elapsed_us(self) -> float:
        return self.us


@dataclass
class FakeEvent:
    name: str
    device_type: object = torch.autograd.DeviceType.CUDA
    time_range: FakeRange = FakeRange(2.0)


def counts(names: dict[str, int], steps: int = 4) -> WorkCounts:
    return WorkCounts(steps=steps, ops={"aten.mm": 8}, bytes_read=0, bytes_written=0, syncs={},
                      kernels=sum(names.values()), memcpys=0, graph_replays=steps, kernel_names=names)


def test_device_events_count_kernels_by_name():
    events = [FakeEvent("gemv_kernel"), FakeEvent("gemv_kernel"), FakeEvent("attn_kernel"),
              FakeEvent("Memcpy DtoD"), FakeEvent("cpu_op", device_type=torch.autograd.DeviceType.CPU)]
    kernels, copies, busy, names = _device_events(events)
    assert (kernels, copies, busy) == (3, 1, 8.0)
    assert names == {"gemv_kernel": 2, "attn_kernel": 1}


def test_an_extra_copy_kernel_fails_and_is_named():
    stored = counts({"gemv_kernel": 4 * 129, "attn_kernel": 4 * 32})
    measured = counts({"gemv_kernel": 4 * 129, "attn_kernel": 4 * 32, "copy_kernel": 4})
    verdict = compare_counts(measured, stored, label="ring-cudagraphs: work per step")
    assert verdict.verdict == FAIL and any("+1 kernel copy_kernel per step" in line for line in verdict.lines)
    # a swap with the same total is still a change: the names say which kernels
    swapped = counts({"gemv_kernel": 4 * 128, "attn_kernel": 4 * 32, "cublas_gemv": 4})
    assert compare_counts(swapped, stored, label="x").verdict == FAIL
    assert compare_counts(counts(dict(stored.kernel_names)), stored, label="x").verdict == PASS


def test_inductor_kernels_compare_by_family_so_a_planted_copy_reads_as_one_line():
    """What the H100 showed (2026-12-07): a copy kernel planted per layer shifts inductor's per-graph
    index of every later kernel (`..._14` -> `..._15`). Compared by family (name without its
    index) the change is the copy alone; a kernel family that really changes still fails."""
    stored = counts({"triton_poi_fused_add_cat_13": 4 * 32, "triton_red_fused_mean_14": 4 * 32, "gemv_kernel": 4 * 129})
    renumbered = counts({"triton_poi_fused_add_cat_14": 4 * 32, "triton_red_fused_mean_15": 4 * 32, "gemv_kernel": 4 * 129})
    assert compare_counts(renumbered, stored, label="x").verdict == PASS
    planted = counts({**renumbered.kernel_names, "triton_poi_fused_copy__13": 4 * 32})
    verdict = compare_counts(planted, stored, label="x")
    kernel_lines = [line for line in verdict.lines if " kernel " in line]
    assert verdict.verdict == FAIL and kernel_lines == ["+32 kernel triton_poi_fused_copy_ per step"], verdict.lines
    fewer = counts({"triton_poi_fused_add_cat_14": 4 * 31, "triton_red_fused_mean_15": 4 * 32, "gemv_kernel": 4 * 129})
    assert compare_counts(fewer, stored, label="x").verdict == FAIL


def test_kernel_names_round_trip_and_older_records_read():
    c = counts({"gemv_kernel": 8})
    again = WorkCounts.from_json(c.to_json())
    assert again.kernel_names == {"gemv_kernel": 8}
    old = c.to_json()
    del old["kernel_names"]
    assert WorkCounts.from_json(old).kernel_names is None  # recorded before names: totals still compare


def _device_store(tmp_path: Path, runs: list[float]) -> tuple[BaselineStore, BaselineKey]:
    store = BaselineStore(tmp_path / "b")
    bkey = BaselineKey(model="m", model_revision="r", dtype="float16", dataset="synthetic", dataset_sha256="sha",
                       tokens=4096, strategy="strict-s4-w2044", params={"name": "strict"})
    record = BaselineRecord(bkey, 20.0, math.log(20.0), "cuda:H100", device_time_ms={KEY: runs})
    store.update([record])
    return store, bkey


def test_device_time_is_checked_from_a_machines_first_run(tmp_path):
    rng = np.random.default_rng(0)
    store, key = _device_store(tmp_path, [3.36, 3.37, 3.35, 3.36])  # four processes, two machines
    found = lookup(store, key)
    same = (3.36 * (1 + rng.normal(0, 0.002, 16))).tolist()
    ok = check_device_time(same, found, key=KEY, updating=False, what="ring-cudagraphs", fallback=0.10)
    assert ok.verdict == PASS and ok.name == DEVICE_TIME_CHECK and ok.details["band"] < 0.03, ok.message
    assert "prediction interval of 4 processes" in ok.message
    slow = [x * 1.05 for x in same]  # a step 5 % slower on the device
    assert check_device_time(slow, found, key=KEY, updating=False, what="x", fallback=0.10).verdict == FAIL
    other = check_device_time(same, found, key="cuda-kernels-other-gpu", updating=False, what="x", fallback=0.10)
    assert other.verdict == NOT_CHECKED and "no stored device time" in other.message


def test_device_time_recordings_append_one_process_each(tmp_path):
    store, key = _device_store(tmp_path, [3.36])
    more = BaselineRecord(key, 20.0, math.log(20.0), "cuda:H100", device_time_ms={KEY: [3.38]},
                          tpot_runs_ms={"cuda-abc": [3.405]})
    store.update([more], append_for="cuda-abc")
    assert store.lookup(key).device_time_ms[KEY] == [3.36, 3.38]


def test_a_graph_row_is_armed_by_its_kernel_counts_and_device_time():
    def c(name, verdict):
        from streamllm.harness.records import Check

        return Check("tpot", name, verdict, "m")

    assert armed([c(WORK_CHECK, PASS), c(RATIO_CHECK, "n/a"), c(DEVICE_TIME_CHECK, PASS)])[0]
    ok, why = armed([c(WORK_CHECK, PASS), c(RATIO_CHECK, "n/a"), c(DEVICE_TIME_CHECK, NOT_CHECKED)])
    assert not ok and "device time" in why
