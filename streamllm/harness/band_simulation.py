"""A nightly run of the same-run ratio check, simulated through the judge itself (docs/bands.md).

Each row has a true ratio, a between-process SD (what moves a process's ratio: heap layout, the
host) and a per-round SD (what the process's own CI sees). Its stored processes and the new
process are drawn from the same model; the new one is judged by `check_ratio_vs_baseline` with
its key's prior and row count, one rerun with more rounds included, as the suite does. The
callers (tests/test_bands.py, scripts/band_calibration.py) count false alarms (no slowdown) and
catches (a slowdown), INCONCLUSIVE counting as a miss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import special

from .band_rows import key_group, stored_runs
from .baseline_record import BaselineKey, BaselineRecord
from .judge_lookup import Lookup
from .judge_ratio import check_ratio_vs_baseline, ratio_ci
from .records import Check
from .verdicts import RATIO_CONFIDENCE

SIM_KEY = "cpu:simulated-t1"


@dataclass(frozen=True)
class SimRow:
    """One row's noise: SDs of ln(ratio) between processes and between rounds of one process."""

    sd_process: float
    sd_round: float
    stored: int = 7  # processes recorded
    rounds: int = 8  # rounds a process times (a rerun times as many again)
    label: str = "row"


def rows_from_store(records: Sequence[BaselineRecord], key: str, rounds: int = 8) -> list[SimRow]:
    """SimRows with the noise of stored rows: the per-round SD from the recorded CIs, the rest of
    the stored processes' SD between processes."""
    out = []
    for record in records:
        values = stored_runs(record, "tpot_ratio", key).values
        if len(values) < 2:
            continue
        total = float(np.var(np.log(values), ddof=1))
        cis = stored_runs(record, "tpot_ratio_ci", key).values
        halves = [0.5 * math.log(hi / lo) for lo, hi in cis if lo > 0 and hi > lo]
        t = float(special.stdtrit(rounds - 1, 0.5 + RATIO_CONFIDENCE / 2))
        sd_round = float(np.median(halves)) * math.sqrt(rounds) / t if halves else 0.0
        between = max(total - sd_round ** 2 / rounds, 0.1 * total)
        out.append(SimRow(math.sqrt(between), sd_round, len(values), rounds, record.key.strategy))
    return out


def _process(rng: np.random.Generator, row: SimRow, log_ratio: float) -> tuple:
    """One process: its per-round case and reference times, and a rerun with as many rounds."""
    offset = log_ratio + rng.normal(0.0, row.sd_process)

    def rounds() -> tuple[list[float], list[float]]:
        ref = 40.0 * np.exp(rng.normal(0.0, 0.01, row.rounds))
        case = ref * np.exp(offset + rng.normal(0.0, row.sd_round, row.rounds))
        return case.tolist(), ref.tolist()

    return rounds, offset


def _record(label: str, values: list[float], cis: list[list[float]]) -> BaselineRecord:
    key = BaselineKey(model="sim", model_revision="r", dtype="float32", dataset="sim", dataset_sha256="sha",
                      tokens=1024, strategy=label, params={"name": label})
    return BaselineRecord(key, 10.0, math.log(10.0), "cpu", tpot_ratio={SIM_KEY: values}, tpot_ratio_ci={SIM_KEY: cis})


def simulate_run(rows: Sequence[SimRow], rng: np.random.Generator, slowdown: float = 1.0,
                 rerun: bool = True) -> list[Check]:
    """One nightly run: stored processes for every row, then one new process per row `slowdown`
    times slower, judged as the suite judges it. Returns each row's Check."""
    records, truths = [], []
    for i, row in enumerate(rows):
        truth = float(rng.uniform(-0.1, 0.5))  # rows' ratios differ; only their spread matters
        values, cis = [], []
        for _ in range(row.stored):
            make, _ = _process(rng, row, truth)
            case, ref = make()
            ci = ratio_ci(case, ref)
            values.append(ci.ratio)
            cis.append([ci.low, ci.high])
        records.append(_record(f"{row.label}-{i}", values, cis))
        truths.append(truth)
    group = key_group(records, "tpot_ratio", SIM_KEY)
    checks = []
    for row, record, truth in zip(rows, records, truths, strict=True):
        make, _ = _process(rng, row, truth + math.log(slowdown))
        case, ref = make()
        checks.append(check_ratio_vs_baseline(case, ref, Lookup(record, Path("sim.json")), key=SIM_KEY,
                                              updating=False, what=record.key.strategy,
                                              rerun=make if rerun else None, prior=group.prior, rows=group.rows))
    return checks
