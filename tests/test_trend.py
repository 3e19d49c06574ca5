"""The report's trend reads the run history the absolute check reads: each row relative to its own
baseline, with its band."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from streamllm.harness.history import RunHistory
from streamllm.harness.trend import plot_trend, rows, trend
from streamllm.harness.verdicts import BAND_FLOOR

FP = {"device_class": "cpu", "cpu_model": "x", "cpu_count": 2, "torch_threads": 1, "torch": "t"}
T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)


def _history(tmp_path):
    hist = RunHistory(tmp_path, "cpu-abc-t1")
    levels = [(100, 50), (101, 50), (99, 51), (100, 50), (120, 50)]  # strict moves +20 % in run 5
    for i, (strict, dense) in enumerate(levels):
        moved = i == 4
        hist.append({"book/strict": _rounds(strict), "book/dense": _rounds(dense),
                     "book/strict:reference": _rounds(40.0)}, accepted=True,
                    case_accepted={"book/strict": not moved}, now=T0 + timedelta(hours=i))
    return hist


def _rounds(level: float) -> list[float]:
    """Eight rounds spread ±0.35 % around `level` (enough for Mann-Whitney to reach p < 0.002)."""
    return [level * (1 + (i - 3.5) / 1000) for i in range(8)]


def test_each_row_is_drawn_relative_to_its_own_baseline_and_band(tmp_path):
    runs = _history(tmp_path).runs()
    assert rows(runs) == ["book/dense", "book/strict"]  # reference arms are not rows
    strict = trend(runs, "book/strict")
    assert [p.ratio for p in strict[:3]] == [None, None, None]  # fewer than 3 accepted runs: no baseline
    last = strict[-1]
    assert last.ratio == pytest.approx(120 / 100) and last.flagged and not last.accepted
    assert not any(p.flagged for p in strict[:-1])  # flagged by re-judging its samples, nothing stored
    assert BAND_FLOOR <= last.band < 0.05  # a quiet A/A history (SD 0.8 %): about the floor
    assert trend(runs, "book/dense")[-1].ratio == pytest.approx(1.0, abs=0.01)


def test_the_trend_plot_is_written_from_the_history(tmp_path):
    _history(tmp_path / "history")
    out = plot_trend(tmp_path / "history", "cpu-abc-t1", tmp_path / "out" / "tpot_trend.png")
    assert out is not None and out.stat().st_size > 1000
    assert plot_trend(tmp_path / "history", "cpu-none-t1", tmp_path / "none.png") is None
