"""`streamllm compare` re-judges a stored run's eviction probe, own path, timed-decode agreement and
(c) findings from its raw record alone, and gets the verdicts the suite printed: a tiny random
Llama through the suite (dense, strict and a static or ring row), the run record written, then
compared. A planted cache bug (a static cache that does not re-rotate the keys it moves, a ring
that writes one slot off) fails in the suite and in the comparison alike."""

from __future__ import annotations

import json

import pytest
import torch

from bench import findings
from bench.findings import Finding, FindingSpec, TraceFindingSpec
from bench.suite import Suite, SuiteOptions
from conftest import tiny_llama
from streamllm.caches import RingStreamingCache, StaticStreamingCache
from streamllm.harness.compare import compare
from streamllm.harness.records import load_run
from streamllm.harness.verdicts import (
    AGREEMENT_CHECK,
    EVICTION_CHECK,
    FAIL,
    INCONCLUSIVE,
    NOT_APPLICABLE,
    OWN_PATH_CHECK,
    PASS,
)


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def _static_not_rerotated(self, delta, device):  # the moved keys keep their old angle
    return self.rope.cos_sin(torch.tensor(0.0), torch.float32, device)


def _ring_slot_off(self):  # the window's write lands one slot past where it should
    RingStreamingCache._begin_step_unmutated(self)
    if self._full:
        self._slot.copy_(self.sink + torch.remainder(self._slot - self.sink + 1, self.window + 1))


def plant(monkeypatch, bug: str | None) -> None:
    if bug == "static":
        monkeypatch.setattr(StaticStreamingCache, "_table", _static_not_rerotated)
    elif bug == "ring":
        monkeypatch.setattr(RingStreamingCache, "_begin_step_unmutated", RingStreamingCache._begin_step, raising=False)
        monkeypatch.setattr(RingStreamingCache, "_begin_step", _ring_slot_off)


def plant_findings(monkeypatch, est: float) -> None:
    """Two ratio findings around the measured strict/dense PPL ratio (one passes, one fails) and a
    one-run finding the strict row cannot give a number for (it prunes every step: inconclusive)."""
    def spec(name, low, high):
        return FindingSpec(Finding(name, "ratio_ppl", low, high, "test provenance"), case="strict",
                           reference="dense", models=("tiny-llama",), real_weights=False)

    other = FindingSpec(Finding("other model", "ratio_ppl", 0.0, 1.0, "p"), case="strict", reference="dense",
                        models=("EleutherAI/pythia-2.8b",))
    monkeypatch.setattr(findings, "FINDINGS", [spec("wide", est / 10, est * 10), spec("expects better", None, est / 5),
                                               other])
    monkeypatch.setattr(findings, "TRACE_FINDINGS", [TraceFindingSpec(
        Finding("strict prune share", "prune_share", None, 0.5, "test provenance"), case="strict",
        reference="strict", models=("tiny-llama",), real_weights=False)])


def suite_run(tmp_path, **overrides) -> Suite:
    options = SuiteOptions(model="tiny-llama", datasets=("synthetic",), tokens=160, sink=2, window=12, rounds=2,
                           warmup_rounds=0, min_steps=4, baselines_dir=str(tmp_path / "b"),
                           report_dir=str(tmp_path / "r"), history_dir=str(tmp_path / "h"), count_work=False,
                           **overrides)
    suite = Suite(options, tmp_path)
    suite.weights.use(tiny_llama())
    return suite


def as_printed(checks) -> list[tuple[str, str, str]]:
    return [(c["name"], c["verdict"], c["message"]) for c in checks]


@pytest.mark.parametrize("bug,row", [(None, "static"), ("static", "static"), ("ring", "ring")])
def test_compare_reproduces_the_suites_eviction_own_path_and_findings(tmp_path, monkeypatch, bug, row):
    plant(monkeypatch, bug)
    suite = suite_run(tmp_path)
    ppl = {c: suite.evaluate(suite.case(c), "synthetic").ppl for c in ("dense", "strict")}
    plant_findings(monkeypatch, ppl["strict"] / ppl["dense"])
    results = {cid: suite.run_case(suite.case(cid), "synthetic", benchmark=None) for cid in ("dense", "strict", row)}
    run_file = suite.write_run()
    (tmp_path / "b").mkdir(exist_ok=True)  # no baselines: (a) PPL and (b) are "not checked" in both

    stored = load_run(run_file)
    assert all(c.eviction is not None and c.findings is not None for c in stored.raw.cases)
    static = next(c for c in stored.raw.cases if c.case == row)
    assert static.own_path is not None and static.own_path.holdings and static.own_path.calibration_nll
    assert all(h.held and h.expected for h in static.own_path.holdings)  # the probe's raw data is in the record

    out = compare(run_file, baselines_dir=tmp_path / "b", history_dir=tmp_path / "h")
    rows = {r["case"]: r for r in out.rows}
    for cid, result in results.items():
        assert as_printed(rows[cid]["checks"]) == as_printed([c.to_dict() for c in result.checks]), cid
    assert out.carried == 0 and out.agree == out.judged > 0
    text = "\n".join(out.lines)
    assert "as the run printed them" not in text

    def verdict(cid, name):
        return next(c["verdict"] for c in rows[cid]["checks"] if c["name"] == name)

    assert verdict("dense", EVICTION_CHECK) == NOT_APPLICABLE and verdict("strict", EVICTION_CHECK) == PASS
    assert verdict("strict", AGREEMENT_CHECK) == PASS
    assert verdict("strict", "(c) wide") == PASS and verdict("strict", "(c) expects better") == FAIL
    assert verdict("strict", "(c) other model") == NOT_APPLICABLE
    assert verdict("strict", "(c) strict prune share") == INCONCLUSIVE
    if bug is None:
        assert verdict(row, OWN_PATH_CHECK) == PASS and verdict(row, EVICTION_CHECK) == PASS
    else:
        assert verdict(row, OWN_PATH_CHECK) == FAIL  # in the suite too: the rows are equal above
        own = next(c for c in rows[row]["checks"] if c["name"] == OWN_PATH_CHECK)
        assert "first at step" in own["message"]
    if bug == "ring":  # one slot off: the tensors hold other tokens than the schedule's
        assert verdict(row, EVICTION_CHECK) == FAIL
    assert out.exit_code == 1  # the planted "expects better" finding fails every variant


def test_an_older_record_without_the_numerics_inputs_shows_them_as_printed(tmp_path, monkeypatch):
    """A record written before the raw part kept the eviction / own-path / findings inputs: compare
    re-judges what it can and shows those checks as the run printed them, and says so."""
    suite = suite_run(tmp_path)
    suite.run_case(suite.case("strict"), "synthetic", benchmark=None)
    run_file = suite.write_run()
    data = json.loads(run_file.read_text())
    for case in data["raw"]["cases"]:
        for name in ("eviction", "own_path", "findings", "agreement_steps", "evaluator"):
            case.pop(name, None)
    run_file.write_text(json.dumps(data))
    (tmp_path / "b").mkdir(exist_ok=True)
    out = compare(run_file, baselines_dir=tmp_path / "b", history_dir=tmp_path / "h")
    names = [c["name"] for c in out.rows[0]["checks"]]
    assert len(names) == len(set(names))  # a check re-judged is not also carried
    checks = {c["name"]: c["verdict"] for c in out.rows[0]["checks"]}
    assert checks[EVICTION_CHECK] == PASS and checks[AGREEMENT_CHECK] == PASS
    assert out.carried >= 2 and any("as the run printed them" in line for line in out.lines)
