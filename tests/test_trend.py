"""The report's trend reads the run history the absolute check reads: each row relative to its own
baseline, with its band."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from streamllm.harness.history import RunHistory
from streamllm.harness.judge_history import check_history
from streamllm.harness.trend import draw_trend, panel, plot_trend, rows, trend
from streamllm.harness.verdicts import BAND_FLOOR, FALLBACK_BAND, NOT_CHECKED

FP = {"device_class": "cpu", "cpu_model": "x", "cpu_count": 2, "torch_threads": 1, "torch": "t",
      "transformers": "5.25.0"}
T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)


def _history(tmp_path):
    hist = RunHistory(tmp_path, "cpu-abc-t1")
    levels = [(100, 50), (101, 50), (99, 51), (100, 50), (120, 50)]  # strict moves +20 % in run 5
    for i, (strict, dense) in enumerate(levels):
        moved = i == 4
        hist.append({"book/strict": _rounds(strict), "book/dense": _rounds(dense),
                     "book/strict:reference": _rounds(40.0)}, accepted=True,
                    case_accepted={"book/strict": not moved},
                    fingerprint=FP, now=T0 + timedelta(hours=i))
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


ROUNDS = (1.0, 1.003, 0.998, 1.001, 0.999, 1.002, 0.997, 1.0)  # 8 rounds a run: Mann-Whitney can reach p < 0.002


def _stepped_history(tmp_path, step: float = 1.10) -> RunHistory:
    """Eight runs of one version set: book/quiet moves by `step` in the last run; book/int8's runs
    disagree 16x (a band no check can fail with); book/dense stays put."""
    hist = RunHistory(tmp_path, "cpu-abc-t1")
    quiet = [100.0, 100.6, 99.5, 100.2, 99.8, 100.4, 100.0]
    for i, q in enumerate([*quiet, 100.0 * step]):
        int8 = 40.0 * 2.0 ** (i % 5)  # 40 ms to 640 ms
        hist.append({"book/quiet": [q * f for f in ROUNDS], "book/int8": [int8 * f for f in ROUNDS],
                     "book/dense": [(40.0 + 0.1 * (i % 3)) * f for f in ROUNDS]},
                    accepted=True, fingerprint=FP, now=T0 + timedelta(hours=i))
    return hist


def _axes_by_row(fig) -> dict[str, object]:
    return {ax.get_title().split("\n")[0]: ax for ax in fig.axes if ax.get_title()}


def test_a_10_percent_step_is_visible_on_its_row_s_own_scale_beside_a_row_whose_band_cannot_fail(tmp_path):
    import matplotlib.pyplot as plt

    runs = _stepped_history(tmp_path).runs()
    fig = draw_trend(runs, "cpu-abc-t1")
    try:
        axes = _axes_by_row(fig)
        quiet, int8 = axes["book/quiet"], axes["book/int8"]
        last = trend(runs, "book/quiet")[-1]
        assert last.checked and last.ratio == pytest.approx(1.10, rel=0.01)
        lo, hi = quiet.get_ylim()
        assert hi - lo < 1.0  # its own scale, not the shared 35x axis
        assert lo < last.low and last.high < hi  # the band is on it
        assert lo < 1.0 < last.ratio < hi  # so is the step
        assert 0.10 / (hi - lo) > 0.5, (lo, hi)  # 10 % spans more than half the panel's height
        assert "+10" in quiet.get_title() and f"band ±{last.band:.1%}" in quiet.get_title()
        # the row whose runs disagree 16x: drawn, labelled "not checked", no band shaded
        assert not trend(runs, "book/int8")[-1].checked
        assert NOT_CHECKED in int8.get_title() and any(NOT_CHECKED in t.get_text() for t in int8.texts)
        assert all(not c.get_paths() or all(len(p.vertices) == 0 for p in c.get_paths()) for c in int8.collections)
        assert any(len(p.vertices) for c in quiet.collections for p in c.get_paths())  # the quiet row's band is
        # each row on its own scale: the quiet row's limits are not the not-checked row's
        assert quiet.get_ylim() != int8.get_ylim()
    finally:
        plt.close(fig)


def test_a_point_far_outside_its_row_s_window_is_clamped_to_the_edge_not_stretching_the_scale(tmp_path):
    runs = _stepped_history(tmp_path, step=3.0).runs()
    view = panel("book/quiet", trend(runs, "book/quiet"))
    lo, hi = view.ylim
    assert hi - lo < 1.0 and view.window[1] < 3.0  # the 3x point sits at the edge (labelled "3.00x")


def test_the_trend_draws_the_band_check_history_applied_to_each_run(tmp_path):
    """The plot's band and ratio for a run are what `check_history` judged that run with: the same
    versions filter, the same robust band, the same ratio, and "not checked" where it said so."""
    hist = _stepped_history(tmp_path / "a")
    last = hist.runs()[-1]
    replay = RunHistory(tmp_path / "b", "cpu-abc-t1")
    for run in hist.runs()[:-1]:
        replay.append(run.cases, accepted=run.accepted, fingerprint=run.fingerprint,
                      now=datetime.fromisoformat(run.timestamp))
    for case in ("book/quiet", "book/int8", "book/dense"):
        check = check_history(replay, case, list(last.cases[case].samples), what=case, clock="wall time",
                              floor=FALLBACK_BAND, k=5, nightly=False, versions=last.fingerprint)
        point = trend(hist.runs(), case)[-1]
        assert point.band == pytest.approx(check.details["band"])
        assert point.checked == (check.verdict != NOT_CHECKED)
        if point.checked:
            assert point.ratio == pytest.approx(check.details["ratio"])
            assert point.baseline_runs == tuple(check.details["baseline_runs"])


def test_runs_of_other_library_versions_do_not_enter_a_point_s_baseline(tmp_path):
    hist = RunHistory(tmp_path, "cpu-abc-t1")
    for i in range(7):
        fp = {**FP, "transformers": "5.24.0" if i < 4 else "5.25.0"}
        level = 44.0 if i < 4 else 90.0  # the upgrade (and host) moved decode 2x
        hist.append({"book/dense": [level, level + 0.2]}, accepted=True, fingerprint=fp, now=T0 + timedelta(hours=i))
    points = trend(hist.runs(), "book/dense")
    assert [p.ratio is None for p in points] == [True, True, True, False, True, True, True]
    assert points[3].baseline_runs == (1, 2, 3)
    assert "history building (2/3 accepted runs of its versions)" in panel("book/dense", points).title
