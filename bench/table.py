"""The verdict table printed at the end of a bench run (pytest_terminal_summary) and in reports."""

from __future__ import annotations

import math

COLUMNS = ("dataset", "strategy", "PPL", "ΔPPL %", "TPOT ms mean", "TPOT ms median", "speedup", "TPOT/floor",
           "a: PPL", "b: work", "b: ratio", "b: abs", "armed", "c: findings")


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
            _num(r.get("tpot_over_floor"), ".1f"), v["a"], sub["work"], sub["ratio"], sub["absolute"],
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
    numeric = {2, 3, 4, 5, 6, 7}

    def line(values) -> str:
        return "  ".join(v.rjust(w) if i in numeric else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True)))

    return [line(columns), line(["-" * w for w in widths]), *(line(c) for c in cells)]
