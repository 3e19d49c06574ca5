"""The --sweep glue: which cases each sweep selects, that the context sweep's arms straddle the
trained context as designed, and that the report draws the sweep curves and the phase A plots.
Pure checks and a synthetic run JSON: no model is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.catalog import ALL_SWEEPS, SWEEPS, BenchCase, build_catalog, context_cases, select
from bench.findings import FINDINGS
from bench.suite import Suite, SuiteOptions
from streamllm.harness.records import RUN_SCHEMA
from streamllm.harness.report import build_report
from streamllm.harness.report_runs import read_run
from streamllm.strategies import StrategyError, StrategySpec

S, W, P = 4, 124, 8192


def ids(selection: str, positions: int | None = P) -> list[str]:
    return [c.id for c in select(build_catalog(S, W, context_positions=positions), selection, "cpu")]


def test_each_sweep_selects_its_points_with_dense_first():
    assert ids("sweep:window") == ["dense", "strict", "strict-w60", "strict-w252", "strict-w508"]
    assert ids("sweep:sinks") == ["dense", "strict", "window", "strict-s16", "strict-s32"]
    assert ids("sweep:compress") == ["dense", "strict", "lazy-c16", "lazy-c32", "lazy-c128", "lazy-c64"]
    assert ids("sweep:overlap") == ["dense", "strict", "overlap-o32", "overlap-o32-cap", "overlap-o64",
                                    "overlap-o64-cap"]
    assert ids("sweep:refresh") == ["dense", "lazy-c32", "refresh", "refresh-b16", "refresh-b32"]
    assert ids("sweep:b2") == ["dense", "strict", "lazy-c16", "lazy-c32", "static", "ring", "lazy-c16-static",
                               "lazy-c32-static"]
    assert ids("sweep:context") == ["dense", "ctx-strict-fit", "ctx-lazy-fit", "ctx-strict-beyond-w",
                                    "ctx-lazy-beyond", "ctx-strict-maxpos"]
    every = set(ids("sweep:all"))
    assert not any(i.startswith("ctx-") for i in every)  # context needs its own text length
    for name in ALL_SWEEPS:
        assert set(ids(f"sweep:{name}")) <= every
    with pytest.raises(ValueError, match="unknown sweep"):
        ids("sweep:nope")
    with pytest.raises(ValueError, match="no cases"):
        ids("sweep:context", positions=None)  # the arms need the model's max positions


def test_default_and_all_selections_are_unchanged_by_the_sweeps():
    catalog = build_catalog(S, W, context_positions=P)
    assert not any(c.sweep_only for c in select(catalog, "default", "cpu"))
    assert not any(c.sweep_only for c in select(catalog, "all", "cpu"))  # the GPU job's `all`
    assert all(not c.default for c in catalog if c.sweep_only)


def test_b2_matrix_covers_strict_and_lazy_on_dynamic_and_static_and_ring_strict_only():
    cases = select(build_catalog(S, W), "sweep:b2", "cpu")
    cells = {(c.spec.name, c.spec.compress_every, c.spec.cache) for c in cases if c.id != "dense"}
    for cache in ("dynamic", "static"):
        assert {("strict", 1, cache), ("lazy", 16, cache), ("lazy", 32, cache)} <= cells
    assert {cell for cell in cells if cell[2] == "ring"} == {("strict", 1, "ring")}


def test_overlap_under_auto_cap_keeps_the_cache_size():
    by_id = {c.id: c for c in build_catalog(S, W)}
    for o in (32, 64):
        capped, grown = by_id[f"overlap-o{o}-cap"].spec, by_id[f"overlap-o{o}"].spec
        assert capped.effective_window == W and capped.capacity == by_id["strict"].spec.capacity
        assert grown.effective_window == W + o


@pytest.mark.parametrize("positions", [8192, 2048])
def test_context_arms_straddle_the_trained_context(positions):
    arms = {c.id: c.spec for c in context_cases(positions, sink=S)}
    last = positions - 1  # largest trained position id
    fit, lazy_fit = arms["ctx-strict-fit"], arms["ctx-lazy-fit"]
    assert fit.window == lazy_fit.window and fit.max_position <= last and lazy_fit.max_position == last
    beyond, strict_w, maxpos = arms["ctx-lazy-beyond"], arms["ctx-strict-beyond-w"], arms["ctx-strict-maxpos"]
    assert beyond.sink + beyond.window <= positions  # S+W fits ...
    assert beyond.max_position > last  # ... only the lazy cycle's last R-1 positions cross
    assert strict_w.window == beyond.window and strict_w.max_position == positions  # S+W = P
    assert maxpos.compress_every == 1 and maxpos.max_position == beyond.max_position  # same largest position
    assert maxpos.window == beyond.window + beyond.compress_every - 1
    beyond.validate(positions)  # S+W fits: allowed without asking
    with pytest.raises(StrategyError, match="exceeds the model"):
        StrategySpec("strict", sink=S, window=maxpos.window).validate(positions)  # needs allow_beyond_context


def test_context_arms_skip_on_a_short_text(tmp_path):
    suite = Suite(SuiteOptions(model="tiny", datasets=("synthetic",), tokens=1024, baselines_dir=str(tmp_path),
                               report_dir=None, threads=1), tmp_path)
    arm = context_cases(P, sink=S)[0]
    assert "needs --tokens >= 10240" in suite.too_short(arm)
    assert suite.too_short(BenchCase("strict", arm.spec)) is None


def test_findings_reference_cases_that_exist_at_their_geometry():
    for spec in FINDINGS:
        catalog = build_catalog(spec.geometry.get("sink", S), spec.geometry.get("window", W), context_positions=P)
        known = {c.id for c in catalog}
        assert spec.case in known and spec.reference in known, spec.finding.name
    assert set(SWEEPS) == {*ALL_SWEEPS, "context", "gpu"}  # context and gpu run only by name


def _synthetic_run(path: Path) -> Path:
    rng = np.random.default_rng(0)
    n = 400
    nll = rng.gamma(2.0, 1.0, n)
    prunes = list(range(60, n, 32))
    for p in prunes:
        nll[p + 1 : p + 4] += 2.0  # a spike after each eviction: the aligned curve must show it
    kv = [min(t + 1, 64 + (t % 32)) for t in range(n)]
    common = {"dataset": "book", "verdicts": {"a": "pass", "b": "pass", "c": "-"}, "checks": [],
              "tpot_ms_median": 10.0, "skipped": None}
    results = [
        {**common, "case": "dense", "label": "dense", "ppl": 7.0, "ppl_delta_vs_dense_pct": 0.0, "tpot_ms_mean": 20.0,
         "speedup": 1.0, "sweeps": [], "trace": {"nll": list(rng.gamma(2.0, 1.0, n)), "prune_steps": []}},
        {**common, "case": "lazy-c32", "label": "lazy-s4-w60-c32", "ppl": 7.5, "ppl_delta_vs_dense_pct": 7.1,
         "tpot_ms_mean": 10.0, "speedup": 2.0, "sweeps": ["compress"], "timing_positions": list(range(200, 264)),
         "timing_step_ms": [10.0] * 64, "evaluation": {"spikes": None},
         "trace": {"nll": nll.tolist(), "prune_steps": prunes, "kv_length": kv, "step_ms": [None] * n}},
    ]
    run = {"schema": RUN_SCHEMA, "created": "2026-11-22T10:00:00+00:00", "options": {"sweep": "compress"},
           "results": results}
    out = path / "run.json"
    out.write_text(json.dumps(run))
    return out


def test_report_writes_sweep_curve_aligned_nll_and_diagnostics(tmp_path):
    run = read_run(_synthetic_run(tmp_path))
    summary = build_report(run, [run], tmp_path / "out")
    for name in ("nll_aligned_book.png", "diagnostics_book.png", "sweep_compress_book.png"):
        assert name in summary["plots"] and (tmp_path / "out" / name).stat().st_size > 1000
    lazy = next(d for d in summary["diagnostics"] if d["case"] == "lazy-c32")
    assert lazy["prune_events"] == len(run.results[1]["trace"]["prune_steps"]) and lazy["events"]
    assert np.mean([e["peak"] for e in lazy["events"]]) > 1.0  # the injected spikes are found
    assert "Phase A diagnostics" in (tmp_path / "out" / "report.md").read_text()


def test_sweep_curve_follows_the_swept_parameter(tmp_path):
    from streamllm.harness.report_cost_plots import sweep_rows

    run = read_run(_synthetic_run(tmp_path))
    base = run.results[1]
    run.data["results"] = [{**base, "case": f"lazy-c{r}", "params": {"compress_every": r}} for r in (128, 16, 64)]
    assert [r["case"] for r in sweep_rows(run, "compress", "book")] == ["lazy-c16", "lazy-c64", "lazy-c128"]
