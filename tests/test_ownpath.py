"""A row's own path (streamllm/ownpath.py) and its judge (streamllm/harness/numerics.py): static and
ring caches decoded across their first evictions agree with the parallel reference and hold the
schedule's tokens in their tensors; planted bugs of the classes a fixed cache can have (a write to
the wrong slot, a move without re-rotation, a wrong sink angle or sign, a missing shift, a cache
whose bookkeeping evicts while its tensors do not) fail with max |ΔNLL|, the first step and its
place in the schedule."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import streamllm.caches.dynamic as dynamic_module
from conftest import tiny_llama, tiny_neox
from streamllm.caches import RingStreamingCache, StaticStreamingCache, make_cache
from streamllm.decode import EagerDecoder
from streamllm.harness.numerics import check_holdings, check_own_path, own_path_tolerance
from streamllm.harness.verdicts import FAIL, PASS, SLICE_TOLERANCE_FP32_CPU
from streamllm.ownpath import own_path, slice_steps
from streamllm.parallel import evaluate_parallel
from streamllm.schedule import TextTooShortError, first_eviction_step
from streamllm.strategies import make_strategy


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def judge(loaded, ids, spec, own):
    """The suite's own-path check: reference = parallel evaluator, calibration = eager dynamic path."""
    reference = evaluate_parallel(loaded, ids, dataclasses.replace(spec, cache="dynamic")).trace.nll
    calibration = own_path(loaded, ids, dataclasses.replace(spec, cache="dynamic"))
    tolerance, gap = own_path_tolerance(calibration, reference, "float32", cap=SLICE_TOLERANCE_FP32_CPU)
    return check_own_path(own, reference, tolerance=tolerance, calibration_gap=gap, reference="parallel", what="row")


TINY_SPECS = [make_strategy("strict", sink=2, window=8), make_strategy("lazy", sink=2, window=8, compress_every=4)]


CORRECT = [dataclasses.replace(base, cache=kind) for base in TINY_SPECS for kind in ("static", "ring", "dynamic")
           if kind != "ring" or base.compress_every == 1]  # the ring is strict only


@pytest.mark.compat  # the prefix K/V come from transformers' DynamicCache: both ends of the range
@pytest.mark.parametrize("model", [tiny_neox, tiny_llama], ids=["neox", "llama"])
@pytest.mark.parametrize("spec", CORRECT, ids=lambda s: f"{s.label()}-{s.cache}")
def test_correct_caches_agree_and_hold_the_schedule(model, spec, token_ids):
    loaded = model()
    own = own_path(loaded, token_ids, spec)
    first, last = slice_steps(spec)
    assert own.steps == tuple(range(first, last + 1)) and len(own.events) >= 3  # first + two more events
    assert all(h.matches for h in own.holdings) and own.holdings[0].step == first_eviction_step(spec)
    assert judge(loaded, token_ids, spec, own).verdict == PASS


def test_a_used_cache_is_refilled_and_reused(token_ids):
    """The suite reuses a timed slice's cache and decoder: a second own path on the same pair equals the first."""
    loaded = tiny_llama()
    spec = dataclasses.replace(TINY_SPECS[0], cache="ring")
    cache = make_cache(spec, loaded.model)
    decoder = EagerDecoder(loaded.model, cache)
    one = own_path(loaded, token_ids, spec, cache=cache, decoder=decoder)
    two = own_path(loaded, token_ids, spec, cache=cache, decoder=decoder)
    np.testing.assert_allclose(one.nll, two.nll, atol=1e-6)


def test_text_too_short_is_an_error(token_ids):
    spec = dataclasses.replace(TINY_SPECS[0], cache="static")
    with pytest.raises(TextTooShortError):
        own_path(tiny_llama(), token_ids[: first_eviction_step(spec) + 1], spec)


def test_tensors_that_keep_what_the_bookkeeping_evicted_are_caught(token_ids, monkeypatch):
    loaded = tiny_llama()
    spec = TINY_SPECS[1]
    monkeypatch.setattr(dynamic_module.StreamingCache, "_apply", lambda self, keep, length: None)
    own = own_path(loaded, token_ids, spec)
    failed = check_holdings(own, "row")
    assert failed is not None and failed.verdict == FAIL and "tensors hold other tokens" in failed.message


# -- planted bugs on the embedded model (real attention sinks: a sink bug shows in the NLL) --------
def _slot_off(base):
    class SlotOff(base):  # the window's write lands one slot past where it should
        def _begin_step(self):
            super()._begin_step()
            if self._full:
                self._slot.copy_(self.sink + torch.remainder(self._slot - self.sink + 1, self.window + 1))
    return SlotOff


def _sink_angle(delta_positions: float = 0.0, sign: float = 1.0, scale: float = 1.0):
    class SinkAngle(RingStreamingCache):  # sinks presented at the wrong angle
        def _begin_step(self):
            super()._begin_step()
            t = self.t.view(1)
            offset = (t - (self.sink + self.window)).clamp(min=0).to(torch.float64)
            offset = sign * scale * offset + delta_positions * (offset > 0)
            angles = offset * self.inv_freq
            angles = torch.cat((angles, angles))
            self.cos.copy_(angles.cos())
            self.sin.copy_(angles.sin())
    return SinkAngle


def _static_rotation(delta_extra: float):
    class Rerotate(StaticStreamingCache):  # moved keys re-rotated by the wrong amount (0: not at all)
        def _table(self, delta, device):
            return self.rope.cos_sin(torch.tensor(float(delta) * delta_extra), torch.float32, device)
    return Rerotate


class ShiftSkipped(StaticStreamingCache):  # eviction bookkeeping without moving the window
    def _evict(self, keep, length):
        self.attention_mask[..., len(keep):].fill_(self.masked_value)
        self.length_t.fill_(len(keep))
        self._sync_position()


MUTANTS = {
    "ring write one slot off": (_slot_off(RingStreamingCache), "ring"),
    "ring sink rotation sign": (_sink_angle(sign=-1.0), "ring"),
    "ring sinks not re-rotated": (_sink_angle(scale=0.0), "ring"),
    "ring sink angle one position late": (_sink_angle(delta_positions=1.0), "ring"),
    "ring sink angle one position early": (_sink_angle(delta_positions=-1.0), "ring"),
    "static moved keys not re-rotated": (_static_rotation(0.0), "static"),
    "static moved keys re-rotated twice": (_static_rotation(2.0), "static"),
    "static shift skipped": (ShiftSkipped, "static"),
}


@pytest.fixture(scope="module")
def embedded():
    from streamllm.data import load_text, tokenize
    from streamllm.models import load_model

    loaded = load_model("embedded")
    return loaded, tokenize(loaded.tokenizer, load_text("book"), 200)


# Not slow: these planted bugs and their two controls take ~40 s together on 2 cores, and they are
# the guard that a wrong cache fails its own-path check, so `pytest tests` keeps them.
@pytest.mark.parametrize("name", list(MUTANTS))
def test_planted_cache_bugs_fail_naming_the_step(embedded, name):
    loaded, ids = embedded
    cls, kind = MUTANTS[name]
    spec = make_strategy("strict", sink=4, window=60, cache=kind)
    cache = cls(spec, loaded.model)
    own = own_path(loaded, ids, spec, cache=cache, decoder=EagerDecoder(loaded.model, cache))
    numerics = judge(loaded, ids, spec, own)
    holdings = check_holdings(own, "row")
    assert numerics.verdict == FAIL or holdings is not None, f"{name}: {numerics.message}"
    if numerics.verdict == FAIL:
        first = numerics.details["first_bad_step"]
        assert f"first at step {first}" in numerics.message and "max |ΔNLL|" in numerics.message
        assert first >= first_eviction_step(spec)  # nothing differs before the cache's own eviction code runs


@pytest.mark.slow  # the embedded model; the planted-bug tests above keep the fast set's power
@pytest.mark.parametrize("kind", ["static", "ring"])
def test_the_unmutated_caches_pass_on_the_embedded_model(embedded, kind):
    loaded, ids = embedded
    spec = make_strategy("strict", sink=4, window=60, cache=kind)
    own = own_path(loaded, ids, spec)
    assert judge(loaded, ids, spec, own).verdict == PASS and check_holdings(own, "row") is None


def test_a_sink_angle_off_by_one_position_exceeds_the_tolerance(embedded):
    loaded, ids = embedded
    spec = make_strategy("strict", sink=4, window=60, cache="ring")
    cache = _sink_angle(delta_positions=1.0)(spec, loaded.model)
    own = own_path(loaded, ids, spec, cache=cache, decoder=EagerDecoder(loaded.model, cache))
    check = judge(loaded, ids, spec, own)
    assert check.verdict == FAIL and check.details["max_abs_diff"] > 4 * check.details["tolerance"]


# -- through the suite: the mutated row fails, the others pass ------------------------------------
def _mutate_ring_sign(self):
    RingStreamingCache._begin_step_unmutated(self)
    if self.rotate_sinks:
        self.sin.neg_()


def _mutate_static_rotation(self, delta, device):
    return self.rope.cos_sin(torch.tensor(0.0), torch.float32, device)


@pytest.mark.parametrize("mutated,other", [("ring", "static"), ("static", "ring")])
def test_a_planted_cache_bug_fails_its_row_in_the_suite_and_only_it(tmp_path, monkeypatch, mutated, other):
    from bench.suite import Suite, SuiteOptions
    from streamllm.harness.verdicts import EVICTION_CHECK, NOT_APPLICABLE, OWN_PATH_CHECK

    if mutated == "ring":
        monkeypatch.setattr(RingStreamingCache, "_begin_step_unmutated", RingStreamingCache._begin_step, raising=False)
        monkeypatch.setattr(RingStreamingCache, "_begin_step", _mutate_ring_sign)
    else:
        monkeypatch.setattr(StaticStreamingCache, "_table", _mutate_static_rotation)
    options = SuiteOptions(model="tiny-llama", datasets=("synthetic",), tokens=160, sink=2, window=12, rounds=2,
                           warmup_rounds=0, min_steps=4, baselines_dir=str(tmp_path / "b"),
                           report_dir=str(tmp_path / "r"), history_dir=str(tmp_path / "h"), count_work=False)
    suite = Suite(options, tmp_path)
    suite.weights.use(tiny_llama())
    results = {cid: suite.run_case(suite.case(cid), "synthetic", benchmark=None)
               for cid in ("dense", "strict", mutated, other)}

    def verdict(cid, name):
        return next((c for c in results[cid].checks if c.name == name), None)

    bad = verdict(mutated, OWN_PATH_CHECK)
    assert bad is not None and bad.verdict == FAIL, bad.message if bad else results[mutated].checks
    assert "first at step" in bad.message and "max |ΔNLL|" in bad.message
    assert verdict(other, OWN_PATH_CHECK).verdict == PASS
    assert verdict("strict", EVICTION_CHECK).verdict == PASS and verdict("dense", EVICTION_CHECK).verdict == NOT_APPLICABLE
    assert verdict("strict", OWN_PATH_CHECK) is None  # a dynamic row's own path is its timed decode
