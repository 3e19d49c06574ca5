"""Convert run records written before runs kept a raw part into the current run record, once, so
`streamllm compare` can re-judge them (issue #28: replaying old runs through new rules).

    python scripts/convert_old_runs.py --rev 87cca1a --paths 'reports/*/runs/*.json' --out out/replay
    python scripts/convert_old_runs.py ... --against BASELINES [--history DIR]   # + re-judge and tally

The old records (schema `streamllm.bench-run/1` and `/2` without `raw`, tracked under
`reports/*/runs/` up to 8bbe24c) are read straight from git (`git show REV:path`), never from the
tree. Each becomes a `streamllm.bench-run/2` record whose `raw` part (`records.RawRun`) holds what
the old record measured: both arms' per-round TPOT samples (rerun rounds apart), device samples,
PPL and the NLL summary, work counts, the timed decode's NLL agreement, the fingerprint, threads,
versions and the options that change judging. Its `results[]` keep the old rows' numbers but none
of their checks or verdicts: the judge reads only `raw`, and nothing the old run printed can be
carried into what compare shows. `converted_from` names the source (rev, path, the commit the run
was made at) and lists `unrecoverable`: the raw fields the old record never kept, left absent
(never invented).

With `--against`, each converted file is judged by `streamllm.harness.compare.compare` against
that baselines directory (and `--history`, the run history root, if given) and each check compare
produces is matched by name with the check the old record printed for the same (case, dataset).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's streamllm, not an installed one

from streamllm.combinations import GRAPH_MODES  # noqa: E402
from streamllm.harness.records import (  # noqa: E402
    READABLE_SCHEMAS,
    RUN_SCHEMA,
    RawArm,
    RawCase,
    RawConditions,
    RawNll,
    RawRun,
    validate_run,
)

# The raw fields no old record kept: absent (None / empty) in every converted record.
UNRECOVERABLE_RUN = {
    "conditions.calibration_ms": "the torch-only calibration arm did not exist yet",
    "conditions.versions.streamllm": "the old record names the commit (converted_from.commit), not a version",
}
UNRECOVERABLE_CASE = {
    "timing.faults_per_step / reference.faults_per_step": "page faults were not counted yet",
    "reference_work": "the reference arm's work was not counted yet",
    "eviction": "no eviction check's inputs (strategy spec, holdings) were kept",
    "own_path": "no static/ring own-path decode was kept",
    "findings": "the (c) findings' estimates and CIs were kept only inside their printed checks",
    "oversubscribed": "the load was kept once per run (load_average_1_5_15min), not when each case was judged",
    "own_path_tolerance": "the judge derives it from dtype and device (the old value sits only in a printed check)",
}
# Result-row fields of the old records that are verdicts or printed judgements: never copied.
JUDGED_FIELDS = frozenset({"checks", "verdicts"})
ROW_FIELDS = ("dataset", "case", "label", "ppl", "ppl_delta_vs_dense_pct", "tpot_ms_mean", "tpot_ms_median", "speedup",
              "skipped", "transform", "sweeps", "params", "seconds", "evaluation", "timing", "reference_timing", "ratio",
              "work")


def _finite(x):
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def _arm(timing: dict | None) -> RawArm | None:
    if not timing or not timing.get("samples_ms"):
        return None
    return RawArm(samples_ms=timing["samples_ms"], rerun_samples_ms=timing.get("rerun_samples_ms") or [],
                  device_samples_ms=timing.get("device_samples_ms") or [],
                  tpot_ms_mean=_finite(timing.get("tpot_ms_mean")), tpot_ms_median=_finite(timing.get("tpot_ms_median")))


def _nll(row: dict) -> RawNll | None:
    """The NLL summary from the evaluation's per-token trace, as bench/run_record.py computes it."""
    values = sorted(x for x in ((row.get("trace") or {}).get("nll") or []) if _finite(x) is not None)
    if not values:
        return None
    p = 0.99 * (len(values) - 1)  # numpy's default (linear) percentile
    lo = math.floor(p)
    p99 = values[lo] + (values[min(lo + 1, len(values) - 1)] - values[lo]) * (p - lo)
    return RawNll(count=len(values), mean=sum(values) / len(values), max=values[-1], p99=p99)


def _graph(row: dict) -> bool:
    """Captured in a CUDA graph: bench/catalog.py compile_mode of the row's transform."""
    transform = row.get("transform") or ""
    mode = "default" if transform == "compile" else transform.removeprefix("compile-") if transform else "none"
    return mode in GRAPH_MODES


def raw_case(row: dict) -> RawCase:
    ev = row.get("evaluation") or {}
    key = {} if not ev else {"model": ev["model"], "model_revision": ev["model_revision"], "dtype": ev["dtype"],
                             "dataset": ev["dataset"], "dataset_sha256": ev["dataset_sha256"], "tokens": ev["tokens"],
                             "strategy": row["label"], "params": row.get("params") or {}}
    timing = _arm(row.get("timing"))
    over_floor, tpot = _finite(row.get("tpot_over_floor")), _finite(row.get("tpot_ms_mean"))
    agreement = _finite(row.get("slice_nll_max_abs_diff"))
    return RawCase(
        case=row["case"], dataset=row["dataset"], label=row["label"], text=ev.get("dataset") or row["dataset"],
        baseline_key=key, graph=_graph(row), skipped=row.get("skipped"), ppl=_finite(row.get("ppl")), nll=_nll(row),
        ppl_delta_vs_dense_pct=_finite(row.get("ppl_delta_vs_dense_pct")), speedup=_finite(row.get("speedup")),
        floor_ms=tpot / over_floor if over_floor and tpot else None,
        timing=timing, reference=_arm(row.get("reference_timing")), work=row.get("work") or None,
        own_path_nll_max_abs_diff=agreement,
        agreement_steps=len(row["timing_positions"]) if agreement is not None and row.get("timing_positions") else None,
        evaluator=ev.get("evaluator"))


def raw_conditions(old: dict) -> RawConditions:
    o, fp = old.get("options") or {}, old.get("fingerprint") or {}
    env = (old.get("provenance") or {}).get("environment") or {}
    versions = {"torch": fp.get("torch") or env.get("torch"), "transformers": fp.get("transformers") or env.get("transformers"),
                "numpy": env.get("numpy")}
    return RawConditions(
        started=old["created"], fingerprint=fp, fingerprint_id=old["fingerprint_id"],
        threads=old.get("threads") or fp.get("torch_threads") or 1,
        versions={k: v for k, v in versions.items() if v is not None},
        device_type=str(o.get("device") or fp.get("device_class") or "cpu").split(":")[0], dtype=o.get("dtype") or "float32",
        tpot_tolerance=o.get("tpot_tolerance") or 0.10, history_k=o.get("history_k") or 5, nightly=bool(o.get("nightly")),
        updating=bool(o.get("update_baselines") or o.get("append_baselines")), no_timing=o.get("no_timing"))


def convert_record(old: dict, source: str, commit: str | None = None) -> dict:
    """One old run record (parsed JSON) as a current one: raw part, rows without checks, provenance."""
    if old.get("schema") not in READABLE_SCHEMAS:
        raise ValueError(f"{source}: schema {old.get('schema')!r} is not an old bench run")
    if old.get("raw") is not None:
        raise ValueError(f"{source}: already has a raw part; judge it with `streamllm compare` as it is")
    rows = old.get("results") or []
    raw = RawRun(conditions=raw_conditions(old), cases=[raw_case(r) for r in rows])
    lacking = sorted({f for r, c in zip(rows, raw.cases, strict=True) for f, missing in (
        ("reference (the interleaved reference arm)", c.timing is not None and c.reference is None),
        ("work", c.timing is not None and c.work is None),
        ("nll (no per-token trace)", c.ppl is not None and c.nll is None)) if missing and not r.get("skipped")})
    new = {key: old[key] for key in ("created", "runtime_s", "command", "options", "model", "fingerprint",
                                     "fingerprint_id", "threads", "provenance") if key in old}
    new.update({
        "schema": RUN_SCHEMA,
        "results": [{k: r[k] for k in ROW_FIELDS if k in r and k not in JUDGED_FIELDS} for r in rows],
        "raw": raw.to_json(),
        "converted_from": {
            "source": source, "schema": old["schema"], "script": "scripts/convert_old_runs.py",
            "commit": commit or (old.get("provenance") or {}).get("commit"),
            "dropped": "every row's checks and verdicts (what the old run printed); the judge reads `raw` only",
            "unrecoverable": {**UNRECOVERABLE_RUN, **UNRECOVERABLE_CASE},
            "absent_in_some_rows": lacking,
        },
    })
    return validate_run(new, source).to_json()


# -- git ------------------------------------------------------------------------------------------
def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout


def old_records(rev: str, pattern: str) -> list[tuple[str, dict]]:
    names = _git("ls-tree", "-r", "--name-only", rev).split()
    return [(n, json.loads(_git("show", f"{rev}:{n}"))) for n in sorted(names) if fnmatch.fnmatch(n, pattern)]


# -- re-judge and tally ---------------------------------------------------------------------------
def tally(new_file: Path, old: dict, baselines: Path, history: Path | None) -> list[dict]:
    """compare's checks of `new_file` against the checks `old` printed, matched by (case, dataset, name).
    `baselines`: a baselines directory, or a run record file standing in for it (no history then)."""
    from streamllm.harness.compare import compare

    if baselines.is_file():  # another (converted) run stands in for the store, as `--against RUN2` does
        result = compare(new_file, against=str(baselines), history_dir=None)
    else:
        result = compare(new_file, against="baselines", baselines_dir=baselines, history_dir=history)
    printed = {(r["case"], r["dataset"], c["name"]): c for r in old.get("results") or [] for c in r.get("checks") or []}
    out = []
    for row in result.rows:
        for check in row["checks"]:
            before = printed.get((row["case"], row["dataset"], check["name"]))
            if before is not None:
                out.append({"run": new_file.name, "case": row["case"], "dataset": row["dataset"], "check": check["name"],
                            "printed": before["verdict"], "compare": check["verdict"], "message": check["message"],
                            "printed_message": before["message"]})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", required=True, help="git revision holding the old run records")
    parser.add_argument("--paths", default="reports/*/runs/*.json", help="fnmatch glob of run records at --rev")
    parser.add_argument("--out", required=True, type=Path, help="directory for the converted records (keep it ignored: out/ or /tmp)")
    parser.add_argument("--against", type=Path, default=None, help="baselines directory (or a converted run record standing in for it): "
                        "re-judge each converted run with compare")
    parser.add_argument("--history", type=Path, default=None, help="run history root for --against (default: no history check)")
    parser.add_argument("--differing", action="store_true", help="with --against: print every check whose verdict moved")
    args = parser.parse_args(argv)
    records = old_records(args.rev, args.paths)
    if not records:
        print(f"no file at {args.rev} matches {args.paths}")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for name, old in records:
        target = args.out / Path(name).name
        target.write_text(json.dumps(convert_record(old, f"{args.rev}:{name}"), indent=1) + "\n", encoding="utf-8")
        print(f"{args.rev}:{name} -> {target}")
        if args.against is not None:
            rows += tally(target, old, args.against, args.history)
    if args.against is None:
        return 0
    counts = Counter((r["check"], r["printed"] == r["compare"]) for r in rows)
    print(f"\nre-judged against {args.against}" + (f", history {args.history}" if args.history else "") + ":")
    for check in sorted({r["check"] for r in rows}):
        agree, total = counts[(check, True)], counts[(check, True)] + counts[(check, False)]
        moved = Counter(f"{r['printed']} -> {r['compare']}" for r in rows if r["check"] == check and r["printed"] != r["compare"])
        print(f"  {check}: {agree} of {total} agree" + (f" ({', '.join(f'{k}: {v}' for k, v in moved.items())})" if moved else ""))
    if args.differing:
        for r in rows:
            if r["printed"] != r["compare"]:
                print(f"  {r['run']} {r['dataset']}/{r['case']}: {r['check']}: printed {r['printed']}, compare "
                      f"{r['compare']}: {r['message']}\n      printed then: {r['printed_message']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
