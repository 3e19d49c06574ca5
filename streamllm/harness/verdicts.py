"""The suite's verdicts: the words, and every tolerance, band and confidence level.

The words a check can end in, every tolerance, band and confidence level, and the pure rules built
on them (the A/A band, the ratio key, the allocator-churn rule). The judges that compare a
measurement with what is stored are in the `judge_*.py` modules; they return a `records.Check`,
and nothing downstream changes its verdict: the table (`table.py`: a row's cells, "armed") and the
report only read it. (Apart, because the stores the judges read — history, counters, stats — use
these words too.) Nothing here sees a measured value: the rules read stored values and constants
(docs/architecture.md, "The route of one TPOT sample": the route reads this module).

(a) PPL against the stored baseline: |Δ ln PPL| within the device-class pair's tolerance.
(b) The decode step's cost: its work counts (exact, keyed by software), its TPOT relative to a
    reference arm timed step for step in the same process (keyed by CPU model and threads, or GPU
    model), and its absolute TPOT against this machine's run history of the same library versions
    (or, for a row captured in a CUDA graph, the device time stored for its GPU model). Ratio and
    device-time bands have a stated false-alarm rate (streamllm.harness.bands, docs/bands.md).
(c) Findings: a relation to a reference strategy measured in the same run (bench/findings.py).

A check with no stored baseline is NOT_CHECKED, never a pass; a row is *armed* only when its
work counts and a TPOT check are live (`table.armed`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

# -- the words -------------------------------------------------------------------------------------
PASS = "pass"
FAIL = "fail"
INCONCLUSIVE = "inconclusive"  # reported, does not fail
NOT_CHECKED = "not checked"  # no baseline to compare against: never a silent pass
RECORDED = "recorded"  # --update-baselines wrote it
NOT_APPLICABLE = "n/a"
ERROR = "error"  # a baseline file is corrupt or mismatched: fails the test
MISSING = "missing"  # a case's verdicts when no result came back (a crashed xdist worker)
VERDICTS = (ERROR, FAIL, INCONCLUSIVE, NOT_CHECKED, RECORDED, PASS, NOT_APPLICABLE)  # worst first
FAILING = frozenset({FAIL, ERROR})
LIVE = frozenset({PASS, FAIL, INCONCLUSIVE, ERROR})  # compared against something stored
CHECK_KINDS = ("ppl", "tpot", "finding")
# The type of a check's verdict field (records.Check): the words above, spelled once.
VerdictWord = Literal["pass", "fail", "inconclusive", "not checked", "recorded", "n/a", "error"]

# The run history's own record of each case (stored in its files): a run moved beyond the band
# (regression / improvement), stayed inside it (pass), or had nothing to compare with; UNCONFIRMED
# is the nightly rule's word for a first flag that the previous run did not share.
REGRESSION = "regression"
IMPROVEMENT = "improvement"
UNCONFIRMED = "unconfirmed"
HISTORY_RAW = (REGRESSION, IMPROVEMENT, PASS, NOT_CHECKED)

# The (b) checks' names: the table and the report show them side by side.
WORK_CHECK = "(b) work per step vs baseline"
RATIO_CHECK = "(b) TPOT / reference, same run"
HISTORY_CHECK = "(b) TPOT vs run history"
DEVICE_TIME_CHECK = "(b) device time vs baseline"
PPL_CHECK = "(a) PPL vs baseline"
AGREEMENT_CHECK = "(a) timed decode agrees with the evaluator"
EVICTION_CHECK = "(a) eviction engaged, per the independent schedule"
OWN_PATH_CHECK = "(a) own path across the first evictions agrees with the reference"

# -- every tolerance, band and confidence level ----------------------------------------------------
# PPL is deterministic on one device class (only float noise); across classes kernels differ.
PPL_TOLERANCE_SAME_DEVICE_CLASS = 0.002  # |Δ ln PPL|
PPL_TOLERANCE_CROSS_DEVICE_CLASS = 0.01
# NLL of the timed decode vs the evaluator at the same positions: fp32 CPU agrees to ~1e-4 nats;
# half precision and GPU kernels (TF32, fused attention) differ more between chunked and 1-token.
SLICE_TOLERANCE_FP32_CPU = 2e-3
SLICE_TOLERANCE_OTHER = 5e-2
# A row's own path (its cache, decoder and kernels across the first evictions) vs the parallel
# reference: at most OWN_PATH_FACTOR x the largest |Δ NLL| between two correct paths measured in
# the same run (the eager dynamic cache vs the same reference), that gap floored per dtype below.
OWN_PATH_FACTOR = 4.0
# The smallest correct-path gap the factor applies to, per dtype: a kernel path that only reorders
# reductions (split-K GEMV, split-KV attention, Triton vs cuBLAS) moves an fp32 NLL by ~1e-5 on the
# tiny test models; in half precision one unit roundoff. A wrong sink angle by one position moves
# the embedded model's NLL by ~8e-3 (tests/test_ownpath.py), far above every floor.
OWN_PATH_NOISE_FLOOR = {"float32": 2.5e-5, "float16": 2.0**-10, "bfloat16": 2.0**-7}
# The absolute history's band and the trend plot: max(BAND_FLOOR, expm1(BAND_SDS * s)) of the
# per-process values' spread s in log space (the history takes s robustly, 1.4826 x MAD). It is
# an effect-size threshold beside Mann-Whitney's p (HISTORY_ALPHA), not a stated false-alarm
# rate; the floor keeps a lucky near-identical history from making a band narrower than a
# process resolves.
BAND_FLOOR = 0.03
BAND_SDS = 4.0
MAD_TO_SD = 1.4826  # MAD x this estimates a normal SD
# Same-run ratios and graph device times: a prediction interval with a stated false-alarm rate
# (streamllm.harness.bands, docs/bands.md). A nightly run of m rows false-alarms at most
# FALSE_ALARM_PER_RUN (Sidak: each row gets 1 - (1 - FALSE_ALARM_PER_RUN)^(1/m)).
FALSE_ALARM_PER_RUN = 0.02
# Below this half-width (log space) a band is not narrowed further: ratios are stored to 5-6
# significant digits and a recording session sees one day's drift, so a 1 % band would promise
# more than the stored values can tell (it only lowers the false-alarm rate).
PREDICTION_FLOOR = 0.01
MIN_PRIOR_ROWS = 3  # rows with a spread before a key's pooled (moderated) variance is estimated
PRIOR_DF_MAX = 1e4  # the rows agree on one variance: d0 is capped (t and normal differ by < 1e-3)
# A check that would pass a slowdown of this factor cannot fail in practice: NOT_CHECKED, not armed.
MUST_CATCH = 3.0
MDE_POWER = 0.90  # MDE90: the smallest slowdown failed this often (inconclusive counts as a miss)
GUARD_SLOWDOWN = 0.05  # a row "guards 5 %" when its MDE90 is at most this
MIN_AA_RUNS = 3  # fewer recorded processes: no spread to learn from
FALLBACK_BAND = 0.10  # the band of a row whose A/A spread is not recorded yet (named in the table)
RATIO_CONFIDENCE = 0.95  # the per-process ratio's t-interval (streamllm.harness.judge_ratio)
HISTORY_ALPHA = 0.002  # a history regression also needs Mann-Whitney p below this
FINDING_CONFIDENCE = 0.95  # bootstrap CIs of findings
HISTORY_RUNS_NEEDED = 3  # accepted runs before the history check is live
# A ratio is recorded only once its CI half-width is within this fraction of the band (else it is
# re-timed once with more rounds): half the band leaves the other half for the checks' own noise.
RECORDING_HALF_WIDTH = 0.5
# Minor page faults per step the case arm takes beyond its reference, above which a slower ratio
# is put down to the allocator (INCONCLUSIVE): 256 faults = 1 MiB of fresh pages a step. Decode
# touches no new memory at steady state; a heap fragmented by INT8's per-call dequantized weights
# grows under the case arm (docs/semantics.md). Added work is the work counts' to catch.
ALLOCATOR_CHURN_FAULTS = 256


class BaselineNotChecked(UserWarning):
    """A check had no stored baseline to compare against: reported, never a silent pass."""


class VerdictInconclusive(UserWarning):
    """A timing check stayed inconclusive after its rerun; reported, not failed."""


def ppl_tolerance(stored_device_class: str, device_class: str) -> float:
    """Tolerance on |Δ ln PPL| for a PPL measured on `device_class` vs one stored from another."""
    same = stored_device_class == device_class
    return PPL_TOLERANCE_SAME_DEVICE_CLASS if same else PPL_TOLERANCE_CROSS_DEVICE_CLASS


def slice_tolerance(dtype: str, device_type: str) -> float:
    return SLICE_TOLERANCE_FP32_CPU if dtype in ("float32", "fp32") and device_type == "cpu" else SLICE_TOLERANCE_OTHER


@dataclass(frozen=True)
class Band:
    """A TPOT band and where it came from (the table names rows whose band is not from A/A)."""

    width: float
    runs: int  # recorded processes it was derived from
    sd: float | None  # their SD in log space (None: fewer than MIN_AA_RUNS)
    robust: bool = False  # sd from the MAD (robust_band), not the sample SD

    @property
    def source(self) -> str:
        if self.sd is None:
            return f"±{self.width:.0%} fallback: {self.runs} recorded process(es), A/A needs {MIN_AA_RUNS}"
        how = "median/MAD" if self.robust else "A/A spread"
        return f"±{self.width:.1%} from the {how} of {self.runs} processes (SD {self.sd:.2%})"


def aa_band(values: Sequence[float], fallback: float = FALLBACK_BAND) -> Band:
    """max(BAND_FLOOR, BAND_SDS x SD) of the log of per-process values; `fallback` below MIN_AA_RUNS."""
    xs = np.asarray([float(v) for v in values if v and v > 0 and math.isfinite(v)], dtype=float)
    if xs.size < MIN_AA_RUNS:
        return Band(fallback, int(xs.size), None)
    sd = float(np.std(np.log(xs), ddof=1))
    return Band(max(BAND_FLOOR, math.expm1(BAND_SDS * sd)), int(xs.size), sd)


def robust_band(values: Sequence[float], fallback: float = FALLBACK_BAND) -> Band:
    """max(BAND_FLOOR, expm1(BAND_SDS x 1.4826 x MAD)) of the log of per-process values: one
    disturbed run (a host 2x slower for an hour) does not widen it; `fallback` below MIN_AA_RUNS."""
    xs = np.asarray([float(v) for v in values if v and v > 0 and math.isfinite(v)], dtype=float)
    if xs.size < MIN_AA_RUNS:
        return Band(fallback, int(xs.size), None)
    logs = np.log(xs)
    sd = MAD_TO_SD * float(np.median(np.abs(logs - np.median(logs))))
    return Band(max(BAND_FLOOR, math.expm1(BAND_SDS * sd)), int(xs.size), sd, robust=True)


def ratio_key(fingerprint: dict, threads: int) -> str:
    """What a stored TPOT ratio is comparable across: on CPU the CPU model and the thread count
    (ratios move by a few per cent between CPU models: the size of a band), on a GPU its model;
    not the machine. Ratios stored under the older `cpu-t<threads>` key are read through
    `streamllm.harness.band_rows.stored_runs`."""
    device_class = str(fingerprint.get("device_class", "unknown"))
    if device_class != "cpu":
        return device_class
    return f"cpu:{fingerprint.get('cpu_model') or 'unknown'}-t{threads}"


def allocator_churn(faults: tuple[float | None, float | None] | None) -> str | None:
    """Why a slower ratio is the allocator's (case arm faulting far more than its reference), or None."""
    if not faults or faults[0] is None or faults[1] is None:
        return None
    case, reference = faults
    if case - reference <= ALLOCATOR_CHURN_FAULTS:
        return None
    return (f"the case arm took {case:.0f} minor page faults per step, its reference {reference:.0f}: its heap grew "
            "under it (allocator state, not the step's code, which the work counts judge); re-run in a fresh process")
