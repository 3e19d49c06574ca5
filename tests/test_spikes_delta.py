"""Spike metrics on ΔNLL against dense (streamllm/spikes.py): planted event costs are recovered
with CIs that cover them, text difficulty cancels, and strict's number is its level."""

from __future__ import annotations

import numpy as np
import pytest

from streamllm.spikes import (
    aligned_delta,
    cycle_excess,
    delta_nll,
    delta_spikes,
    spikes,
    summarize,
    summarize_delta,
)

N = 4096


def texts(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Dense NLL with a heavy tail (the text's difficulty) and small per-token context noise."""
    rng = np.random.default_rng(seed)
    dense = rng.gamma(1.2, 2.0, N)
    return dense, rng.normal(0.0, 0.05, N)


def lazy_trace(dense, noise, period: int, level: float, bump: float, width: int = 4, first: int = 255):
    events = list(range(first, N - 1, period))
    nll = dense + level + noise
    for e in events:
        nll[e + 1 : e + 1 + width] += bump
    return nll, events


def test_planted_event_cost_is_recovered_above_the_level():
    dense, noise = texts()
    nll, events = lazy_trace(dense, noise, 32, level=0.05, bump=0.4)
    d = delta_nll(nll, dense)
    s = summarize_delta(d, events)
    assert s.events >= 100
    # horizon 8, bump 0.4 on 4 steps: mean excess 0.2; level: 0.05 + 0.4*4/32 over the cycle
    assert s.excess.low < 0.2 < s.excess.high and s.excess.high - s.excess.low < 0.05
    assert s.aligned_peak.low <= 0.4 <= s.aligned_peak.high + 0.05
    assert s.level.estimate == pytest.approx(0.05 + 0.4 * 4 / 32, abs=0.01)
    assert s.pre_level == pytest.approx(0.05, abs=0.01)
    per_event = delta_spikes(d, events)
    assert len(per_event) == s.events
    assert np.mean([e.excess for e in per_event]) == pytest.approx(s.excess.estimate)
    assert np.mean([e.area for e in per_event]) == pytest.approx(1.6, abs=0.05)


def test_no_cost_no_spike_while_the_raw_metric_reads_one():
    """Eviction that costs nothing: ΔNLL sees no spike, the raw-NLL max over a gap still does."""
    dense, noise = texts(1)
    nll, events = lazy_trace(dense, noise, 32, level=0.0, bump=0.0)
    s = summarize_delta(delta_nll(nll, dense), events)
    assert s.excess.low < 0 < s.excess.high
    assert abs(s.excess.estimate) < 0.02
    raw = summarize(nll, events)
    assert raw.peak_mean > 1.0  # the text's own heavy tail, read as a spike by the old metric


def test_strict_level_is_the_number():
    dense, noise = texts(2)
    events = list(range(127, N - 1))
    d = delta_nll(dense + 0.07 + noise, dense)
    s = summarize_delta(d, events)
    assert s.excess is None and s.aligned_peak is None and s.area is None
    assert s.level.low < 0.07 < s.level.high
    assert s.level.high - s.level.low < 0.01


def test_the_bootstrap_is_seeded_and_shrinks_with_more_events():
    dense, noise = texts(3)
    nll, events = lazy_trace(dense, noise, 32, level=0.0, bump=0.3)
    d = delta_nll(nll, dense)
    assert summarize_delta(d, events) == summarize_delta(d, events)
    few = summarize_delta(d[: 255 + 32 * 8], [e for e in events if e < 255 + 32 * 7])
    many = summarize_delta(d, events)
    assert few.events < many.events
    assert (few.excess.high - few.excess.low) > (many.excess.high - many.excess.low)


def test_too_few_events_give_the_level_only():
    dense, noise = texts(4)
    nll, events = lazy_trace(dense, noise, 1024, level=0.0, bump=0.3)
    s = summarize_delta(delta_nll(nll, dense), events)
    assert s.events < 5 and s.excess is None and np.isfinite(s.level.estimate)
    assert summarize_delta(delta_nll(nll, dense), []) is None


def test_windows_stop_at_neighbouring_events():
    d = np.zeros(200)
    d[51:55] = 1.0  # after the event at 50
    kept = [e.step for e in delta_spikes(d, [50, 55, 100], lookback=8, horizon=8)]
    assert kept == [100]  # 50: horizon runs into 55; 55: lookback runs back past 50


def test_cycle_excess_compares_lazy_with_strict_at_its_mean_size():
    dense, noise = texts(5)
    lazy, events = lazy_trace(dense, noise, 32, level=0.05, bump=0.4)
    same_mean = dense + 0.05 + 0.4 * 4 / 32 + texts(6)[1]
    cheaper = dense + 0.05 + texts(7)[1]
    none = cycle_excess(lazy, same_mean, events)
    assert none.low < 0 < none.high
    more = cycle_excess(lazy, cheaper, events)
    assert more.low > 0.03 and more.estimate == pytest.approx(0.05, abs=0.01)
    with pytest.raises(ValueError, match="more tokens"):
        cycle_excess(lazy, cheaper, events[:2])


def test_delta_needs_the_same_tokens():
    with pytest.raises(ValueError, match="same tokens"):
        delta_nll(np.zeros(10), np.zeros(11))


def test_aligned_delta_is_the_mean_curve():
    d = np.zeros(300)
    for e in (100, 200):
        d[e + 1] = 1.0
    curve = aligned_delta(d, [100, 200], before=4, after=4)
    assert curve.tolist() == [0, 0, 0, 0, 1, 0, 0, 0]
    assert spikes(d, [100, 200])  # the raw per-event metric still runs on any series


@pytest.mark.slow
def test_eval_json_carries_the_spike_against_dense_and_the_step_shape(tmp_path, capsys):
    """`streamllm eval` with dense in the list: each evicting strategy's record has the ΔNLL-vs-dense
    spike (the same summarize_delta the bench judges), and the raw-NLL metric only under its own
    name; a timed run has the prune step's multiple and the p99 step."""
    import json

    import numpy as np

    from streamllm.cli import main
    from streamllm.spikes import delta_nll, summarize_delta

    out, per_token = tmp_path / "eval.json", tmp_path / "nll.json"
    assert main(["eval", "--tokens", "200", "--strategy", "dense,lazy:c16", "--sink", "4", "--window", "60",
                 "--no-progress", "--json", str(out), "--per-token", str(per_token)]) == 0
    dense, lazy = json.loads(out.read_text())["results"]
    traces = {t["strategy"]: t for t in json.loads(per_token.read_text())["results"]}
    assert dense["delta_spikes"] is None and "spikes" not in lazy and "raw_nll_spikes" in lazy
    nll = {name: np.asarray(t["nll"]) for name, t in traces.items()}
    expected = summarize_delta(delta_nll(nll[lazy["strategy"]], nll[dense["strategy"]]),
                               traces[lazy["strategy"]]["prune_steps"], cycle=16)
    assert lazy["delta_spikes"]["level"]["estimate"] == pytest.approx(expected.level.estimate)
    shape = lazy["step_shape"]
    assert shape["p99_ms"] >= shape["normal_ms"] > 0 and shape["prune_multiple"] > 0
