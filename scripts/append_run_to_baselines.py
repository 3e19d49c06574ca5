"""Append the timings of finished suite runs (their run JSONs) to the stored baselines, as more runs.

`pytest bench --append-baselines` appends while it runs; this does the same afterwards, for runs
that were made as checks. Where a machine's TPOT level moves from one process to the next (eager
decode on a GPU is host-bound), every run of the same code is evidence of that spread, and a
baseline that has seen only some of it gives a band that the next process breaks for nothing.
Only runs whose PPL equals the stored PPL (same code) are appended (`append_run` refuses others).

    python scripts/append_run_to_baselines.py reports/gpu-h100-suite/runs/20261122T122617Z-cuda-421.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamllm.baselines import BaselineKey, BaselineRecord, BaselineStore  # noqa: E402


def records_of(run: dict) -> list[BaselineRecord]:
    """One record per timed case of a run JSON (what the suite would have appended)."""
    fid, fingerprint = run["fingerprint_id"], run["fingerprint"]
    out = []
    for result in run["results"]:
        timing, ev = result.get("timing"), result.get("evaluation")
        if not timing or not ev or not timing.get("samples_ms"):
            continue  # skipped case, or not timed
        samples = timing["samples_ms"]  # what --append-baselines stores: the run's own rounds, not a rerun's
        key = BaselineKey(model=ev["model"], model_revision=ev["model_revision"], dtype=ev["dtype"],
                          dataset=ev["dataset"], dataset_sha256=ev["dataset_sha256"], tokens=ev["tokens"],
                          strategy=result["label"], params=result["params"])
        provenance = {**run.get("provenance", {}), "command": run.get("command"), "appended_from": run.get("created")}
        out.append(BaselineRecord(
            key=key, ppl=ev["ppl"], mean_nll=ev["mean_nll"], ppl_device_class=fingerprint["device_class"],
            tpot_samples_ms={fid: samples}, tpot_ms={fid: timing["tpot_ms_mean"]},
            tpot_runs_ms={fid: [statistics.median(samples)]}, fingerprints={fid: fingerprint},
            provenance=provenance,
        ))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run JSONs written by pytest bench (REPORT_DIR/runs/*.json)")
    parser.add_argument("--baselines-dir", default="baselines")
    args = parser.parse_args(argv)
    store = BaselineStore(args.baselines_dir)
    for path in args.runs:
        run = json.loads(Path(path).read_text())
        records = records_of(run)
        written = store.update(records, append_for=run["fingerprint_id"])
        print(f"{path}: {len(records)} cases appended to {', '.join(map(str, written))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
