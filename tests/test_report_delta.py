"""The report's ΔNLL plots and the compress sweep's amortisation curve
(streamllm/harness/report_nll_plots.py, report_cost_plots.py), on a synthetic run record whose
answers are planted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from streamllm.harness.records import RUN_SCHEMA
from streamllm.harness.report import build_report
from streamllm.harness.report_cost_plots import amortisation_rows, plot_amortisation
from streamllm.harness.report_runs import read_run
from streamllm.harness.report_spikes import delta_diagnostics, delta_traces

N = 1200
NORMAL_MS, PRUNE_EXTRA_MS = 10.0, 20.0


def _case(case: str, r: int, nll: np.ndarray, prunes: list[int], rng) -> dict:
    flags = ([False] * (r - 1) + [True]) * (256 // r)  # timed whole cycles, the prune ends each
    times = [NORMAL_MS + (PRUNE_EXTRA_MS if f else 0.0) + rng.normal(0, 0.2) for f in flags]
    return {"dataset": "book", "case": case, "label": case, "verdicts": {"a": "pass", "b": "pass", "c": "-"},
            "checks": [], "skipped": None, "ppl": float(np.exp(nll.mean())), "tpot_ms_mean": float(np.mean(times)),
            "tpot_ms_median": NORMAL_MS, "speedup": 1.0, "sweeps": ["compress"], "params": {"compress_every": r},
            "timing_step_ms": times, "timing_prune_flags": flags, "timing_positions": list(range(500, 756)),
            "trace": {"nll": nll.tolist(), "prune_steps": prunes}}


def synthetic_run(path: Path) -> Path:
    rng = np.random.default_rng(0)
    dense = rng.gamma(1.2, 2.0, N)  # the text's difficulty: cancels in ΔNLL
    results = [{"dataset": "book", "case": "dense", "label": "dense", "verdicts": {}, "checks": [], "skipped": None,
                "ppl": 7.0, "tpot_ms_mean": 40.0, "sweeps": [], "params": {"compress_every": 1},
                "trace": {"nll": dense.tolist(), "prune_steps": []}}]
    for r, bump in ((1, 0.0), (16, 0.0), (32, 0.5)):
        first = 127 + r
        prunes = list(range(first, N - 1, r))
        nll = dense + 0.1 + rng.normal(0, 0.02, N)
        if bump:
            for p in prunes:
                nll[p + 1 : p + 5] += bump
        results.append(_case("strict" if r == 1 else f"lazy-c{r}", r, nll, prunes, rng))
    run = {"schema": RUN_SCHEMA, "created": "2026-12-05T10:00:00+00:00", "options": {"sweep": "compress"},
           "results": results}
    out = path / "run.json"
    out.write_text(json.dumps(run))
    return out


def test_delta_summary_finds_the_planted_spike_only_where_planted(tmp_path):
    run = read_run(synthetic_run(tmp_path))
    assert [r["case"] for r, _, _ in delta_traces(run, "book")] == ["strict", "lazy-c16", "lazy-c32"]
    rows = {d["case"]: d["delta_spikes"] for d in delta_diagnostics(run)}
    assert rows["strict"]["excess"] is None  # every step evicts: the level is the number
    assert rows["strict"]["level"]["low"] < 0.1 < rows["strict"]["level"]["high"]
    assert rows["lazy-c16"]["excess"]["low"] < 0 < rows["lazy-c16"]["excess"]["high"]
    assert rows["lazy-c32"]["excess"]["low"] > 0.2  # +0.5 on 4 of the 8 horizon steps


def test_amortisation_rows_split_each_point(tmp_path):
    run = read_run(synthetic_run(tmp_path))
    rows = {row["R"]: row for row in amortisation_rows(run, "book")}
    assert sorted(rows) == [1, 16, 32]
    assert rows[1]["prune_multiple"] is None  # strict: no normal step to compare with
    for r in (16, 32):
        assert rows[r]["prune_multiple"] == pytest.approx((NORMAL_MS + PRUNE_EXTRA_MS) / NORMAL_MS, rel=0.02)
        tpot = NORMAL_MS + PRUNE_EXTRA_MS / r
        assert rows[r]["mean_ms"] == pytest.approx(tpot, rel=0.01)
        assert rows[r]["prune_share"] == pytest.approx(PRUNE_EXTRA_MS / r / tpot, rel=0.05)
        assert rows[r]["p99_ms"] > NORMAL_MS + PRUNE_EXTRA_MS / 2  # the tooth, not the mean
    assert rows[16]["prune_share"] > rows[32]["prune_share"]


def test_report_draws_delta_plots_and_the_amortisation_curve(tmp_path):
    run = read_run(synthetic_run(tmp_path))
    summary = build_report(run, [run], tmp_path / "out")
    for name in ("nll_delta_book.png", "nll_delta_aligned_book.png", "amortisation_book.png"):
        assert name in summary["plots"] and (tmp_path / "out" / name).stat().st_size > 1000
    text = (tmp_path / "out" / "report.md").read_text()
    assert "Spikes on ΔNLL against dense" in text and "| book | lazy-c32 |" in text
    assert len(summary["delta_spikes"]) == 3


def test_no_dense_no_delta_and_no_timing_no_curve(tmp_path):
    run = read_run(synthetic_run(tmp_path))
    run.data["results"] = [r for r in run.results if r["case"] != "dense"]
    assert delta_traces(run, "book") == [] and delta_diagnostics(run) == []
    for r in run.results:
        r["timing_step_ms"] = None
    assert plot_amortisation(run, "book", tmp_path / "a.png") is None
