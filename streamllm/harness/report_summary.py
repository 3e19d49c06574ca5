"""summary.json's core: one run's verdict counts, status and exit code (the judge's `run_outcome`,
the one rule the terminal and pytest's exit code read too), and per result the numbers a dashboard
ingests."""

from __future__ import annotations

from .judge import run_outcome
from .records import RUN_PASS
from .report_runs import Run, work_summary
from .table import armed_summary


def summarize(run: Run) -> dict:
    results = run.results
    checks = [(r, c) for r in results for c in r.get("checks") or []]
    count: dict[str, int] = {}
    for _, c in checks:
        count[c["verdict"]] = count.get(c["verdict"], 0) + 1
    # the run's word is the judge's one rule (the terminal and pytest's exit code read it too)
    outcome = run_outcome(results, run.data.get("options") or {})
    failing = [*outcome.failing, *([outcome.unarmed] if outcome.unarmed else [])]
    missing = list(outcome.missing)
    status = outcome.status

    def result(r: dict) -> dict:
        out = {k: r.get(k) for k in ("dataset", "case", "label", "ppl", "ppl_delta_vs_dense_pct", "tpot_ms_mean",
                                     "tpot_ms_median", "speedup", "verdicts", "skipped", "ratio")}
        out["work_per_step"] = work_summary(r)
        out["reference_tpot_ms"] = (r.get("reference_timing") or {}).get("tpot_ms_mean")
        out["b_checks"] = {c["name"]: c["verdict"] for c in r.get("checks") or [] if c.get("kind") == "tpot"}
        out["armed"], out["armed_why"] = r.get("armed"), r.get("armed_why")
        return out

    return {
        "run": str(run.path),
        "created": run.created,
        "runtime_s": run.data.get("runtime_s"),
        "model": run.data.get("model"),
        "fingerprint_id": run.data.get("fingerprint_id"),
        "device_class": (run.data.get("fingerprint") or {}).get("device_class"),
        "options": run.data.get("options"),
        "commit": (run.data.get("provenance") or {}).get("commit"),
        "verdict_counts": count,
        "armed": armed_summary(results),
        "phases_s": run.data.get("phases_s"),
        "status": status,
        "passed": status == RUN_PASS,
        "exit_code": outcome.exit_code,  # what pytest exited with for this run
        "nightly_unarmed": outcome.unarmed,
        "failures": failing,
        "missing": missing,
        "results": [result(r) for r in results],
    }
