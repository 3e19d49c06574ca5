"""The bands' false-alarm rate, MDE90, "guards 5 %" and leave-one-out coverage are shown where a
person reads verdicts: the report's band section and summary.json, and the terminal table's MDE90
column. A fake run (no model) judged by the real judge against a synthetic baseline store; the
numbers shown are compared with the ones `streamllm.harness.bands` computes from the store."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from streamllm.harness.band_rows import store_group, store_records
from streamllm.harness.bands import key_coverage, row_mde90, sidak_alpha
from streamllm.harness.baseline_record import BaselineKey, BaselineRecord
from streamllm.harness.baselines import BaselineStore
from streamllm.harness.judge import judge
from streamllm.harness.records import RUN_SCHEMA, RawArm, RawCase, RawConditions, RawRun, validate_run
from streamllm.harness.report import build_report
from streamllm.harness.report_runs import read_run
from streamllm.harness.table import format_table, make_row, table_lines
from streamllm.harness.verdicts import FALSE_ALARM_PER_RUN, GUARD_SLOWDOWN, RATIO_CHECK, ratio_key

FP = {"device_class": "cpu", "cpu_model": "Test CPU", "cpu_count": 2, "torch_threads": 1, "torch": "2.13.0",
      "transformers": "5.25.0"}
RKEY = ratio_key(FP, 1)
# per row: the spread of its 7 stored processes (ln SD): two quiet rows guard 5 %, two noisy ones do not
SPREADS = {"quiet-a": 0.002, "quiet-b": 0.003, "noisy-a": 0.03, "noisy-b": 0.04, "mid": 0.01}


def _key(case: str) -> BaselineKey:
    return BaselineKey(model="fake", model_revision="r0", dtype="float32", dataset="book", dataset_sha256="00",
                       tokens=128, strategy=case, params={"case": case})


def _store(tmp: Path) -> tuple[Path, dict[str, list[float]]]:
    rng = np.random.default_rng(7)
    stored = {c: [float(math.exp(x)) for x in rng.normal(0.0, sd, 7)] for c, sd in SPREADS.items()}
    root = tmp / "baselines"
    BaselineStore(root).update([BaselineRecord(key=_key(c), ppl=10.0, mean_nll=math.log(10.0), ppl_device_class="cpu",
                                               tpot_ratio={RKEY: v}) for c, v in stored.items()])
    return root, stored


def _case(case: str, centre: float) -> RawCase:
    samples = [centre * (1 + 0.001 * (-1) ** i) for i in range(16)]
    return RawCase(case=case, dataset="book", label=case, text="book", baseline_key=_key(case).to_json(), ppl=10.0,
                   ppl_delta_vs_dense_pct=0.0, speedup=1.0,
                   timing=RawArm(samples_ms=samples, tpot_ms_mean=centre, tpot_ms_median=centre),
                   reference=RawArm(samples_ms=[1.0] * 16))


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("power")
    baselines, stored = _store(tmp)
    centres = {c: float(np.exp(np.mean(np.log(v)))) for c, v in stored.items()}
    raw = RawRun(conditions=RawConditions(started="2026-01-01T00:00:00+00:00", fingerprint=FP,
                                          fingerprint_id="cpu-test-t1", threads=1),
                 cases=[_case(c, centres[c]) for c in SPREADS])
    rows = []
    for case, v in zip(raw.cases, judge(raw, BaselineStore(baselines), None), strict=True):
        row = make_row(dataset="book", case=case.case, label=case.label, checks=v.checks, timed=True, ppl=10.0,
                       tpot_ms_mean=case.timing.tpot_ms_mean, tpot_ms_median=case.timing.tpot_ms_median)
        rows.append({**row, "checks": [c.to_dict() for c in v.checks]})
    data = {"schema": RUN_SCHEMA, "created": "2026-01-01T00:01:00+00:00", "options": {}, "fingerprint": FP,
            "fingerprint_id": "cpu-test-t1", "results": rows, "raw": raw.to_json()}
    path = tmp / "run.json"
    path.write_text(json.dumps(validate_run(data).to_json()))
    run = read_run(path)
    summary = build_report(run, [run], tmp / "out", baselines_dir=baselines)
    return tmp, baselines, stored, rows, summary


def _expected_mde(baselines: Path, stored: dict[str, list[float]], case: str) -> float:
    group = store_group(BaselineStore(baselines), "tpot_ratio", RKEY)
    return row_mde90(stored[case], group.prior, group.rows)


def _md_row(text: str, label: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {label} | ratio |"))
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def test_the_report_shows_each_row_s_false_alarm_rate_mde90_and_guard_mark(judged):
    tmp, baselines, stored, _, summary = judged
    text = (tmp / "out" / "report.md").read_text()
    section = text[text.index("## TPOT bands: false-alarm rate and power"):]
    assert "docs/bands.md" in section
    alpha = sidak_alpha(len(SPREADS))
    guarded = set()
    for case in SPREADS:
        cells = _md_row(section, case)
        mde = _expected_mde(baselines, stored, case)
        assert cells[3] == f"{alpha:.3%}"  # per row: Šidák's share of the run's rate
        assert cells[4].startswith(f"{FALSE_ALARM_PER_RUN:.1%} (Šidák, {len(SPREADS)} rows)")
        assert cells[5] == f"{mde:.1%}"
        assert cells[6] == ("**yes**" if mde <= GUARD_SLOWDOWN else "no")
        guarded |= {case} if mde <= GUARD_SLOWDOWN else set()
    assert {"quiet-a", "quiet-b"} <= guarded and not {"noisy-a", "noisy-b"} & guarded  # the mark separates them
    by_case = {b["label"]: b for b in summary["band_power"] if b["check"] == "ratio"}
    assert set(by_case) == set(SPREADS) and by_case["quiet-a"]["guards"] == "**yes**"


def test_the_report_states_the_leave_one_out_coverage_of_the_store_it_judged_against(judged):
    tmp, baselines, _, _, summary = judged
    want = key_coverage(store_records(BaselineStore(baselines)), RKEY)
    assert want is not None and want.processes == 7 * len(SPREADS)
    text = (tmp / "out" / "report.md").read_text()
    assert f"- key `{RKEY}` ({len(SPREADS)} rows, {want.processes} processes): " + "; ".join(want.lines()) in text
    assert summary["loo_coverage"][0]["processes"] == want.processes
    assert [lvl["level"] for lvl in summary["loo_coverage"][0]["levels"]][:2] == [0.90, 0.99]


def test_without_a_store_the_report_points_to_docs_for_the_coverage(judged, tmp_path):
    tmp, *_ = judged
    run = read_run(tmp / "run.json")
    build_report(run, [run], tmp_path / "out")
    assert "tracked figures are in `docs/bands.md`" in (tmp_path / "out" / "report.md").read_text()


def test_the_terminal_table_shows_mde90_with_the_guard_mark(judged):
    _, baselines, stored, rows, _ = judged
    header, _, *lines = format_table(rows)
    assert "MDE90 (*≤5%)" in header
    for case, line in zip(SPREADS, lines, strict=True):
        mde = _expected_mde(baselines, stored, case)
        assert f"{mde:.1%}{'*' if mde <= GUARD_SLOWDOWN else ''} " in line + " "
    # the same cell read back from a run record's rows (checks as dicts, no mde90 field)
    bare = [{k: v for k, v in r.items() if k not in ("mde90", "guards_5pct")} for r in rows]
    assert table_lines(bare)[:len(rows) + 2] == format_table(rows)
    # a row without a band that states a rate: "-"
    no_band = {**rows[0], "mde90": None, "guards_5pct": False}
    assert " - " in format_table([no_band])[2]
    assert RATIO_CHECK in {c["name"] for c in rows[0]["checks"]}
