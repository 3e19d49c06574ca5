"""Calibration of the same-run ratio bands (docs/bands.md), from the stored baselines.

Leave-one-out over the stored same-machine processes: for every row of a key (CPU model) and
every stored process, the band is rebuilt without that process (its row's values and the key's
pooled prior both lose it) and the process is checked against the 90 % and 99 % prediction
intervals, and the judge's Šidák level. Coverage near the nominal level says the interval is
honest on the machine that recorded it. Then each row's band and MDE90 as the judge reports them,
and (--simulate N) the whole-run false-alarm rate of the full rule on N simulated nightly runs
with the stored rows' noise.

    python scripts/band_calibration.py [--baselines baselines] [--key "cpu:AMD EPYC-t1"] [--simulate 2000]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamllm.harness.band_prior import prior_from_rows  # noqa: E402
from streamllm.harness.band_rows import ratio_judged, store_records, stored_runs  # noqa: E402
from streamllm.harness.band_simulation import rows_from_store, simulate_run  # noqa: E402
from streamllm.harness.bands import guards, leave_one_out, mde90, prediction_band, sidak_alpha  # noqa: E402
from streamllm.harness.baselines import BaselineStore  # noqa: E402
from streamllm.harness.verdicts import FAIL, FALLBACK_BAND, GUARD_SLOWDOWN  # noqa: E402


def _ci_half(record, key: str) -> float:
    cis = stored_runs(record, "tpot_ratio_ci", key).values
    halves = [0.5 * math.log(hi / lo) for lo, hi in cis if lo > 0 and hi > lo]
    return float(np.median(halves)) if halves else 0.0


def print_coverage(rows: list[tuple[str, list[float]]], alpha: float) -> None:
    """The leave-one-out table at 90 %, 99 % and the judge's (Šidák) level."""
    print("| interval | inside | processes | coverage |")
    print("|---|---:|---:|---:|")
    for level, (inside, total) in leave_one_out(rows, [0.90, 0.99, 1 - alpha]).items():
        name = f"{level:.0%}" if level in (0.90, 0.99) else f"{level:.2%} (the judge's, Šidák)"
        print(f"| {name} | {inside} | {total} | {inside / total:.1%} |" if total else
              f"| {name} | - | 0 | no process has a band without it |")


def device_time_coverage(records: list) -> None:
    """Leave-one-out coverage of the graph rows' device-time bands (one row per kernel key: the
    GPU model and software are in it), at 90 %, 99 % and the judge's level."""
    rows = [(f"{r.key.dataset}/{r.key.strategy} [{kid}]", [float(v) for v in values])
            for r in records for kid, values in r.device_time_ms.items() if values]
    if not rows:
        sys.exit("no stored device times")
    alpha = sidak_alpha(len(rows))
    print(f"device time: {len(rows)} rows, {sum(len(v) for _, v in rows)} stored processes\n")
    print_coverage(rows, alpha)
    prior = prior_from_rows([v for _, v in rows])
    print(f"\nPrior: {prior.source if prior else 'none (fewer than 3 rows with a spread)'}\n")
    print("| row | n | SD of ln ms | s̃ | band (±) |")
    print("|---|---:|---:|---:|---:|")
    for name, values in rows:
        band = prediction_band(values, prior, len(rows))
        sd = statistics.stdev(np.log(values)) if len(values) > 1 else float("nan")
        print(f"| {name} | {len(values)} | {sd:.2%} | {band.s_tilde:.2%} | {band.width:.1%} |" if band else
              f"| {name} | {len(values)} | {sd:.2%} | - | fallback {FALLBACK_BAND:.0%} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baselines", default=str(ROOT / "baselines"))
    ap.add_argument("--key", default="cpu:AMD EPYC-t1", help="ratio key (CPU model and threads, or GPU model)")
    ap.add_argument("--simulate", type=int, default=0, help="simulated nightly runs for the false-alarm rate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device-time", action="store_true", help="the graph rows' device-time bands instead")
    args = ap.parse_args()

    records = store_records(BaselineStore(args.baselines))
    if args.device_time:
        return device_time_coverage(records)
    # graph rows are judged on their device time, never on their ratio (bands.key_rows leaves them out too)
    graph = [r for r in records if not ratio_judged(r)]
    records = [r for r in records if ratio_judged(r)]
    named = [(f"{r.key.dataset}/{r.key.strategy}", r, stored_runs(r, "tpot_ratio", args.key)) for r in records]
    named = [(name, r, got) for name, r, got in named if got.values]
    if not named:
        sys.exit(f"no stored ratios for {args.key!r}")
    if graph:
        print(f"({len(graph)} graph row(s) left out: judged on device time; see --device-time)")
    notes = sorted({got.note for _, _, got in named if got.note})
    rows = [(name, [float(v) for v in got.values]) for name, _, got in named]
    m = len(rows)
    alpha = sidak_alpha(m)
    print(f"key {args.key!r}: {m} rows, {sum(len(v) for _, v in rows)} stored processes; Šidák per-row level "
          f"{1 - alpha:.4%} for ≤2 % false alarms a run")
    for note in notes:
        print(f"  ({note})")
    loads = sorted({tuple(r.provenance.get("load_average_1_5_15min") or ()) for _, r, _ in named} - {()})
    print(f"  load average (1/5/15 min) logged at recording: {', '.join(str(list(x)) for x in loads) or 'not logged'}; "
          "appended processes did not log theirs")

    print("\nLeave-one-out coverage (each stored process against the band built without it):\n")
    print_coverage(rows, alpha)

    prior = prior_from_rows([v for _, v in rows])
    print(f"\nPrior: {prior.source if prior else 'none (fewer than 3 rows with a spread)'}\n")
    print(f"| row | n | SD of ln ratio | s̃ | band (±) | MDE90 | guards {GUARD_SLOWDOWN:.0%} |")
    print("|---|---:|---:|---:|---:|---:|:---:|")
    for name, record, got in named:
        values = [float(v) for v in got.values]
        band = prediction_band(values, prior, m)
        sd = statistics.stdev(np.log(values)) if len(values) > 1 else float("nan")
        if band is None:  # no spread and no prior: the judge's stated fallback band
            print(f"| {name} | {len(values)} | {sd:.2%} | - | fallback {FALLBACK_BAND:.0%} | - | no |")
            continue
        mde = mde90(band, _ci_half(record, args.key))
        print(f"| {name} | {band.n} | {sd:.2%} | {band.s_tilde:.2%} | {band.width:.1%} | {mde:.1%} | "
              f"{'yes' if guards(mde) else 'no'} |")

    if args.simulate:
        sim_rows = rows_from_store([r for _, r, _ in named], args.key)
        rng = np.random.default_rng(args.seed)
        alarms = sum(any(c.verdict == FAIL for c in simulate_run(sim_rows, rng)) for _ in range(args.simulate))
        rate = alarms / args.simulate
        se = math.sqrt(max(rate * (1 - rate), 1e-12) / args.simulate)
        print(f"\nSimulated nightly runs of these {m} rows (their stored noise; full rule, one rerun): "
              f"{alarms} of {args.simulate} runs false-alarmed: {rate:.2%} ± {se:.2%} (1 SE)")
        for slowdown in (1.05, 1.5, 3.0):
            checks = [c for _ in range(max(20, args.simulate // 20)) for c in simulate_run(sim_rows, rng, slowdown)]
            caught = sum(c.verdict == FAIL for c in checks) / len(checks)
            print(f"  every row {slowdown:g}x slower: {caught:.1%} of row checks fail")


if __name__ == "__main__":
    main()
