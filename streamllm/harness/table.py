"""The verdict table: printed at the end of a bench run (serial or merged xdist, through
`bench/suite.py` `finish_run`) and by `streamllm compare` for a stored run. It only reads checks;
the verdicts come from the judge (`judge.py`). Lives in the harness because `streamllm compare`
must not import bench/."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .records import Check
from .verdicts import (
    DEVICE_TIME_CHECK,
    ERROR,
    FAIL,
    HISTORY_CHECK,
    HISTORY_RUNS_NEEDED,
    INCONCLUSIVE,
    NOT_APPLICABLE,
    NOT_CHECKED,
    PASS,
    RATIO_CHECK,
    RECORDED,
    VERDICTS,
    WORK_CHECK,
)

COLUMNS = ("dataset", "strategy", "PPL", "ΔPPL %", "TPOT ms mean", "TPOT ms median", "speedup", "TPOT/floor",
           "a: PPL", "b: work", "b: ratio", "MDE90 (*≤5%)", "b: abs", "armed", "c: findings")
NUMERIC = frozenset({2, 3, 4, 5, 6, 7, 11})  # right-aligned columns


# -- a row's cells from its checks (the words and their order are verdicts.py's) -----------------------
def worst(verdicts: Sequence[str]) -> str:
    """The worst of several verdicts (VERDICTS order); '-' for none."""
    known = [v for v in verdicts if v in VERDICTS]
    return min(known, key=VERDICTS.index) if known else "-"


def summarize(checks: Sequence[Check], kind: str) -> str:
    """One cell of the verdict table for checks of `kind`: worst verdict wins."""
    mine = [c for c in checks if c.kind == kind]
    if not mine:
        return "-"
    if kind == "finding":
        counted = [c for c in mine if c.verdict != NOT_APPLICABLE]
        if not counted:
            return NOT_APPLICABLE
        passed = sum(c.verdict == PASS for c in counted)
        return f"{worst([c.verdict for c in mine])} {passed}/{len(counted)}"
    return worst([c.verdict for c in mine])


def armed(checks: Sequence[Check]) -> tuple[bool, str]:
    """Whether a row's (b) is armed: its work counts and at least one TPOT check (same-run ratio,
    graph device time or run history) compared against something stored. With the reason."""
    by_name = {c.name: c for c in checks if c.kind == "tpot"}
    work = by_name.get(WORK_CHECK)
    timing = [by_name[n] for n in (RATIO_CHECK, DEVICE_TIME_CHECK, HISTORY_CHECK) if n in by_name]
    missing = []
    if work is None or not work.live:
        missing.append("work counts " + (work.verdict if work else "absent"))
    if not any(c.live for c in timing):
        missing.append("no live TPOT check (" + ", ".join(f"{c.name.removeprefix('(b) ')}: {sub_word(c)}"
                                                          for c in timing) + ")")
    return (not missing, "; ".join(missing) or "armed")


def sub_checks(checks: Sequence[Check]) -> dict[str, str]:
    """The (b) cell split into its sub-checks: work counts, same-run ratio, and the absolute check
    (graph device time where the row has one, else the run history)."""
    by_name = {c.name: c for c in checks if c.kind == "tpot"}
    absolute = by_name.get(DEVICE_TIME_CHECK) or by_name.get(HISTORY_CHECK)
    return {"work": sub_word(by_name.get(WORK_CHECK)), "ratio": sub_word(by_name.get(RATIO_CHECK)),
            "absolute": sub_word(absolute)}


def armed_summary(rows: Sequence[dict]) -> str:
    """The run header's word on arming: "armed 13/13 rows", or the count and the rows that are not."""
    timed = [r for r in rows if not r.get("skipped") and r.get("armed") is not None]
    unarmed = [r for r in timed if not r["armed"]]
    head = f"armed {len(timed) - len(unarmed)}/{len(timed)} rows"
    if not unarmed:
        return head
    return head + "; NOT ARMED: " + "; ".join(f"{r['dataset']}/{r['label']} ({r.get('armed_why')})" for r in unarmed)


def sub_word(check: Check | None) -> str:
    """A sub-check's cell: its verdict, and for a history still building how far it is ("history 1/3")."""
    if check is None:
        return "-"
    if check.name == HISTORY_CHECK and check.verdict == NOT_CHECKED and "runs" in check.details:
        return f"history {check.details['runs']}/{HISTORY_RUNS_NEEDED}"
    return check.verdict


def mde90_of(checks: Sequence[Check | Mapping[str, Any]]) -> tuple[float | None, bool]:
    """(MDE90, guards 5 %) of a row's band with a stated false-alarm rate: the same-run ratio
    check's, else the graph device time's (their details, `bands.mde90`); (None, False) where
    neither has one (the fallback band states no rate; a band that cannot fail has no MDE)."""
    by_name = {}
    for c in checks:
        d = c.to_dict() if isinstance(c, Check) else c
        by_name[d.get("name")] = d.get("details") or {}
    for name in (RATIO_CHECK, DEVICE_TIME_CHECK):
        details = by_name.get(name) or {}
        mde = details.get("mde90")
        if isinstance(mde, (int, float)) and math.isfinite(mde) and (details.get("prediction") or {}).get("can_fail", True):
            return float(mde), bool(details.get("guards_5pct"))
    return None, False


def _mde_cell(r: Mapping[str, Any]) -> str:
    mde, guards = (r.get("mde90"), bool(r.get("guards_5pct"))) if "mde90" in r else mde90_of(r.get("checks") or [])
    return "-" if mde is None else f"{mde:.1%}" + ("*" if guards else "")


def _num(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def table_rows(rows: list[dict]) -> list[list[str]]:
    """Cells from CaseResult.row() dicts (or the same dicts read back from a run JSON)."""
    out = []
    for r in rows:
        v = r["verdicts"]
        sub = r.get("sub") or {"work": v["b"], "ratio": v["b"], "absolute": v["b"]}  # runs before the split
        arm = r.get("armed")
        out.append([
            r["dataset"], r["label"], _num(r["ppl"], ".4f"), _num(r["ppl_delta_vs_dense_pct"], "+.2f"),
            _num(r["tpot_ms_mean"], ".2f"), _num(r["tpot_ms_median"], ".2f"), _num(r["speedup"], ".2f"),
            _num(r.get("tpot_over_floor"), ".1f"), v["a"], sub["work"], sub["ratio"], _mde_cell(r), sub["absolute"],
            "-" if arm is None else "yes" if arm else "NO", v["c"],
        ])
    return out


def format_table(rows: list[dict]) -> list[str]:
    cells = table_rows(rows)
    columns = list(COLUMNS)
    if any(r.get("bound") for r in rows):  # CUDA: host- or device-bound, from the kernel pass
        columns.append("bound")
        cells = [[*c, r.get("bound") or "-"] for c, r in zip(cells, rows, strict=True)]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(columns)]
    numeric = NUMERIC

    def line(values) -> str:
        return "  ".join(v.rjust(w) if i in numeric else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True)))

    return [line(columns), line(["-" * w for w in widths]), *(line(c) for c in cells)]


def make_row(*, dataset: str, case: str, label: str, checks: Sequence[Check], skipped: str | None = None,
             timed: bool, ppl: float | None = None, ppl_delta_vs_dense_pct: float | None = None,
             tpot_ms_mean: float | None = None, tpot_ms_median: float | None = None, speedup: float | None = None,
             floor_ms: float | None = None, bound: str | None = None) -> dict:
    """One table row (the run record's row fields): the suite and `streamllm compare` both build it
    here, so a row reads the same whichever printed it."""
    mde, guards = mde90_of(checks) if not skipped else (None, False)
    return {
        "dataset": dataset,
        "case": case,
        "label": label,
        "ppl": ppl,
        "ppl_delta_vs_dense_pct": ppl_delta_vs_dense_pct,
        "tpot_ms_mean": tpot_ms_mean,
        "tpot_ms_median": tpot_ms_median,
        "speedup": speedup,
        "tpot_over_floor": tpot_ms_mean / floor_ms if floor_ms and tpot_ms_mean else None,
        "bound": bound,
        # the power of the row's band (docs/bands.md): smallest slowdown failed 90 % of the time
        "mde90": mde,
        "guards_5pct": guards,
        "verdicts": ({"a": summarize(checks, "ppl"), "b": summarize(checks, "tpot"), "c": summarize(checks, "finding")}
                     if not skipped else {"a": "skip", "b": "skip", "c": "skip"}),
        # (b) per sub-check, and whether the row is armed (work counts and a TPOT check live)
        "sub": sub_checks(checks) if not skipped else None,
        "armed": armed(checks)[0] if timed else None,
        "armed_why": armed(checks)[1] if timed else None,
        "skipped": skipped,
    }


def bound_word(device_busy_us: float | None, steps: int | None, tpot_ms_mean: float | None) -> str | None:
    """On CUDA: "device" when the kernels keep the GPU busy for most of a step (summed kernel time
    from the counting pass >= 80 % of wall TPOT), else "host" (launch/Python bound)."""
    if device_busy_us is None or not steps or not tpot_ms_mean:
        return None
    share = device_busy_us / steps / 1e3 / tpot_ms_mean
    return f"{'device' if share >= 0.8 else 'host'} ({share:.0%} busy)"


def table_lines(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """The verdict table and its notes from result rows carrying their checks as dicts."""
    return format_table([dict(r) for r in results]) + check_notes(results)


def check_notes(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per skipped/missing cell and per check that is not a pass; the checks a PPL-only run
    did not measure are one line in all (their reason is the same for every cell)."""
    lines: list[str] = []
    not_measured: dict[str, int] = {}
    for r in results:
        if r.get("skipped"):
            lines.append(f"{'MISSING' if r.get('missing') else 'skipped'} {r['case']} on {r['dataset']}: "
                         f"{r['skipped'].removeprefix('MISSING: ')}")
        for c in r.get("checks") or []:
            reason = (c.get("details") or {}).get("not_measured")
            if reason:
                not_measured[reason] = not_measured.get(reason, 0) + 1
            elif c["verdict"] in (FAIL, ERROR, NOT_CHECKED, RECORDED, INCONCLUSIVE):
                lines.append(f"{c['verdict'].upper()}: {c['name']}: {c['message']}")
    lines += [f"NOT CHECKED: TPOT and timing findings of {n} check(s) not measured: {why}"
              for why, n in not_measured.items()]
    return lines
