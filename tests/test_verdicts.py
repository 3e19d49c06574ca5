"""The verdict module: the A/A band rule, what "armed" means, and that verdict words and tolerance
constants are defined once."""

import ast
import math
import re
from pathlib import Path

import pytest

from streamllm.harness.records import Check
from streamllm.harness.table import armed, armed_summary, sub_checks
from streamllm.harness.verdicts import (
    BAND_FLOOR,
    BAND_SDS,
    DEVICE_TIME_CHECK,
    FALLBACK_BAND,
    HISTORY_CHECK,
    NOT_CHECKED,
    PASS,
    RATIO_CHECK,
    WORK_CHECK,
    aa_band,
)

ROOT = Path(__file__).resolve().parents[1]


def test_band_is_four_sds_of_the_aa_spread_never_below_the_floor():
    quiet = aa_band([1.000, 1.001, 0.999, 1.0005])
    assert quiet.width == BAND_FLOOR and quiet.runs == 4
    ratios = [1.00, 1.02, 0.98, 1.03, 0.97]
    sd = float(__import__("numpy").std(__import__("numpy").log(ratios), ddof=1))
    noisy = aa_band(ratios)
    assert noisy.width == pytest.approx(math.expm1(BAND_SDS * sd)) and noisy.width > BAND_FLOOR
    assert "A/A spread of 5 processes" in noisy.source


def test_band_without_an_aa_spread_is_the_named_fallback():
    one = aa_band([1.02])
    assert one.width == FALLBACK_BAND and one.sd is None
    assert "fallback" in one.source and "1 recorded" in one.source
    assert aa_band([1.0, 1.0], fallback=0.2).width == 0.2


def _c(name, verdict, **details):
    return Check("tpot", name, verdict, "m", details)


def test_a_row_is_armed_only_with_live_work_counts_and_a_live_tpot_check():
    assert armed([_c(WORK_CHECK, PASS), _c(RATIO_CHECK, PASS)])[0]
    assert armed([_c(WORK_CHECK, "fail"), _c(DEVICE_TIME_CHECK, "inconclusive")])[0]
    ok, why = armed([_c(WORK_CHECK, NOT_CHECKED), _c(RATIO_CHECK, PASS)])
    assert not ok and "work counts not checked" in why
    building = [_c(WORK_CHECK, PASS), _c(RATIO_CHECK, "n/a"), _c(HISTORY_CHECK, NOT_CHECKED, runs=1)]
    ok, why = armed(building)
    assert not ok and "history 1/3" in why  # a history still building is not armed, and says how far
    assert sub_checks(building) == {"work": PASS, "ratio": "n/a", "absolute": "history 1/3"}


def test_the_run_header_counts_armed_rows_and_names_the_others():
    rows = [{"dataset": "book", "label": "strict", "armed": True},
            {"dataset": "book", "label": "ring", "armed": False, "armed_why": "work counts not checked"},
            {"dataset": "book", "label": "refresh", "skipped": "too short", "armed": None}]
    line = armed_summary(rows)
    assert line.startswith("armed 1/2 rows") and "book/ring (work counts not checked)" in line
    assert armed_summary(rows[:1]) == "armed 1/1 rows"


def test_verdict_words_and_tolerances_are_defined_once():
    """Grep the package: each word and constant is assigned in verdicts.py and nowhere else."""
    names = ["PASS", "FAIL", "INCONCLUSIVE", "NOT_CHECKED", "RECORDED", "NOT_APPLICABLE", "ERROR", "MISSING",
             "REGRESSION", "IMPROVEMENT", "UNCONFIRMED", "PPL_TOLERANCE_SAME_DEVICE_CLASS", "BAND_FLOOR",
             "FALLBACK_BAND", "RATIO_CONFIDENCE", "HISTORY_ALPHA", "ALLOCATOR_CHURN_FAULTS"]
    # ("error" and "recorded" are also record field names, so they are not scanned for)
    words = {"pass", "fail", "not checked", "inconclusive", "regression", "improvement"}
    files = [*ROOT.joinpath("streamllm").rglob("*.py"), *ROOT.joinpath("bench").rglob("*.py"), ROOT / "conftest.py"]
    owner = ROOT / "streamllm" / "harness" / "verdicts.py"
    for path in files:
        text = path.read_text()
        for name in names:
            if path != owner:
                assert not re.search(rf"^{name}\s*=", text, re.M), f"{name} assigned in {path}, not verdicts.py"
        if path == owner:
            continue
        tree = ast.parse(text)
        docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
        literals = [n.value for n in ast.walk(tree)
                    if isinstance(n, ast.Constant) and n.value in words and id(n) not in docstrings]
        assert not literals, f"verdict literal(s) {literals} in {path}: use streamllm.harness.verdicts"
    assert all(re.search(rf"^{name}\s*=", owner.read_text(), re.M) for name in names)
