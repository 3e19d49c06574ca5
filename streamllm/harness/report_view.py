"""The view model `streamllm report`'s templates render: every number formatted here, every verdict
taken from a check's `verdict` field (never parsed back out of a label). One row per case (the
verdict table), the (b) evidence per case, each timing check's band and power, every non-passing
check, the findings, the page head, and the spike tables (from the rows `report_spikes` computes)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .report_runs import Run, _check, _datasets, _fmt, failed, work_summary
from .verdicts import (
    DEVICE_TIME_CHECK,
    HISTORY_ALPHA,
    HISTORY_CHECK,
    INCONCLUSIVE,
    MISSING,
    MUST_CATCH,
    NOT_APPLICABLE,
    NOT_CHECKED,
    PASS,
    RATIO_CHECK,
    RECORDED,
    WORK_CHECK,
)

NEEDS_ATTENTION = frozenset({INCONCLUSIVE, NOT_CHECKED, RECORDED})


COLUMNS = ("strategy", "PPL", "ΔPPL % vs dense", "TPOT ms (cycle mean)", "TPOT ms (median)", "speedup",
           "a: PPL", "b: work", "b: ratio", "b: absolute", "armed", "c: findings")


EVENTS_SHOWN = 12  # per-event spike rows in report.md (all of them go to summary.json)


@dataclass(frozen=True)
class Verdict:
    """A verdict cell: the text shown and how loud to show it (from the checks' verdict fields)."""

    text: str
    failed: bool = False
    attention: bool = False

    @classmethod
    def of_checks(cls, text: str, checks: Iterable[dict]) -> Verdict:
        checks = list(checks)
        return cls(text, failed=any(failed(c) for c in checks),
                   attention=any(c.get("verdict") in NEEDS_ATTENTION for c in checks))

    @classmethod
    def of_check(cls, check: dict) -> Verdict:
        return cls.of_checks(str(check.get("verdict")), [check])


@dataclass(frozen=True)
class CaseRow:
    label: str
    ppl: str
    delta: str
    tpot_mean: str
    tpot_median: str
    speedup: str
    a: Verdict
    work: Verdict
    ratio: Verdict
    absolute: Verdict
    armed: str
    c: Verdict


@dataclass(frozen=True)
class CheckCell:
    verdict: Verdict
    message: str


@dataclass(frozen=True)
class Evidence:
    """One case's (b) signals: work counts, same-run ratio, reference arm, run history."""

    label: str
    work: str
    work_check: CheckCell | None
    ratio: str
    stored_ratio: str
    ratio_check: CheckCell | None
    reference_tpot: str
    history: str
    history_check: CheckCell | None


@dataclass(frozen=True)
class BandPower:
    """One timing check's band as the judge applied it: its false-alarm rate (per row, and per
    nightly run after Šidák over the key's rows), its MDE90, and whether it guards 5 % (docs/bands.md)."""

    label: str
    check: str
    band: str
    per_row: str
    per_run: str
    mde90: str
    guards: str
    verdict: Verdict


@dataclass(frozen=True)
class Problem:
    verdict: Verdict
    what: str
    message: str
    lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class FindingLine:
    verdict: Verdict
    dataset: str
    message: str


@dataclass(frozen=True)
class DatasetTable:
    name: str
    rows: list[Any] = field(default_factory=list)


def case_row(r: dict) -> CaseRow:
    if r.get("skipped"):
        skip = Verdict("skip")
        return CaseRow(r["label"], "-", "-", "-", "-", "-", skip, skip, skip, skip, "-", skip)
    texts = r.get("verdicts") or {}
    checks = r.get("checks") or []

    def cell(key: str, kind: str) -> Verdict:
        return Verdict.of_checks(str(texts.get(key, "-")), (c for c in checks if c.get("kind") == kind))

    sub = r.get("sub") or {}

    def sub_cell(key: str, *names: str) -> Verdict:
        mine = [c for c in checks if c.get("name") in names]
        return Verdict.of_checks(str(sub.get(key, texts.get("b", "-"))), mine)

    arm = r.get("armed")
    return CaseRow(r["label"], _fmt(r.get("ppl"), ".4f"), _fmt(r.get("ppl_delta_vs_dense_pct"), "+.2f"),
                   _fmt(r.get("tpot_ms_mean"), ".2f"), _fmt(r.get("tpot_ms_median"), ".2f"),
                   _fmt(r.get("speedup"), ".2f"), cell("a", "ppl"), sub_cell("work", WORK_CHECK),
                   sub_cell("ratio", RATIO_CHECK), sub_cell("absolute", HISTORY_CHECK, DEVICE_TIME_CHECK),
                   "-" if arm is None else "yes" if arm else "**NO**", cell("c", "finding"))


def _ratio_text(ratio: dict | None) -> str:
    if not ratio:
        return "-"
    return f"{_fmt(ratio.get('ratio'), '.3f')} [{_fmt(ratio.get('low'), '.3f')}, {_fmt(ratio.get('high'), '.3f')}]"


def case_evidence(r: dict) -> Evidence | None:
    work, ratio, history = _check(r, WORK_CHECK), _check(r, RATIO_CHECK), _check(r, HISTORY_CHECK)
    if r.get("skipped") or not any((work, ratio, history, r.get("work"), r.get("ratio"))):
        return None  # a run from before the (b) checks, or a case that did not run

    def cell(check: dict | None) -> CheckCell | None:
        return CheckCell(Verdict.of_check(check), check.get("message", "")) if check else None

    details = (ratio or {}).get("details") or {}
    stored = details.get("stored_ratio")
    band = details.get("band")
    stored_text = f"{stored:.3f} (±{band:.0%})" if stored is not None and band is not None else "-"
    if stored_text != "-" and details.get("mde90") is not None:
        # the band's power (docs/bands.md): the smallest slowdown caught 90 % of the time
        stored_text = stored_text[:-1] + f"; MDE90 {details['mde90']:.1%}" + (
            ", guards 5 %)" if details.get("guards_5pct") else ")")
    ref = r.get("reference_timing") or {}
    hist = (history or {}).get("details") or {}
    hist_text = "-"
    if hist.get("ratio") is not None:
        hist_text = f"{hist['ratio']:.3f}, p={_fmt(hist.get('p_value'), '.2g')}"
    return Evidence(
        label=r["label"], work=work_summary(r) or "-", work_check=cell(work),
        ratio=_ratio_text(r.get("ratio") or details.get("ratio")), stored_ratio=stored_text, ratio_check=cell(ratio),
        reference_tpot=_fmt(ref.get("tpot_ms_mean"), ".2f"), history=hist_text, history_check=cell(history))


def band_powers(r: dict) -> list[BandPower]:
    """The bands of a row's same-run ratio / device-time check and its history check, from the
    checks' details (what the judge computed: never re-derived here)."""
    out: list[BandPower] = []
    for name, short in ((RATIO_CHECK, "ratio"), (DEVICE_TIME_CHECK, "device time"), (HISTORY_CHECK, "history")):
        c = _check(r, name)
        d = (c or {}).get("details") or {}
        if c is None or d.get("band") is None:
            continue
        pred = d.get("prediction") or {}
        if name == HISTORY_CHECK:
            cannot = 1.0 + float(d["band"]) >= MUST_CATCH
            out.append(BandPower(
                r["label"], short, f"±{d['band']:.1%} median/MAD", "no stated rate",
                f"effect size + Mann-Whitney p < {HISTORY_ALPHA:g}", "-",
                f"{NOT_CHECKED}: {MUST_CATCH:g}x would pass" if cannot else "-", Verdict.of_check(c)))
        elif pred:
            alpha, rows = float(pred["alpha"]), int(pred["rows"])
            can_fail = bool(pred.get("can_fail", True))
            mde = d.get("mde90") if can_fail else None
            guards = (f"{NOT_CHECKED}: {MUST_CATCH:g}x would pass" if not can_fail
                      else "**yes**" if d.get("guards_5pct") else "no")
            out.append(BandPower(
                r["label"], short, f"±{float(pred['width']):.1%} prediction interval ({pred['n']} processes)",
                f"{alpha:.3%}", f"{1 - (1 - alpha) ** rows:.1%} (Šidák, {rows} rows)", _fmt(mde, ".1%"), guards,
                Verdict.of_check(c)))
        else:
            out.append(BandPower(r["label"], short, f"±{d['band']:.0%} fallback", "no stated rate",
                                 "no stated rate", "-", "no (no stated rate)", Verdict.of_check(c)))
    return out


def problems(run: Run) -> list[Problem]:
    """Skipped cases and every check (findings aside) whose verdict is not a pass, in run order."""
    out: list[Problem] = []
    for r in run.results:
        if r.get("missing"):  # no result came back: as loud as a failure
            out.append(Problem(Verdict(MISSING, failed=True), f"{r['label']} on {r['dataset']}", str(r["skipped"])))
        elif r.get("skipped"):
            out.append(Problem(Verdict("skipped"), f"{r['label']} on {r['dataset']}", str(r["skipped"])))
        for c in r.get("checks") or []:
            if c.get("verdict") != PASS and c.get("kind") != "finding":
                lines = tuple(str(x) for x in ((c.get("details") or {}).get("diff") or []))  # work: what changed
                out.append(Problem(Verdict.of_check(c), str(c.get("name")), str(c.get("message")), lines))
    return out


def finding_lines(run: Run) -> list[FindingLine]:
    return [FindingLine(Verdict.of_check(c), r["dataset"], str(c.get("message")))
            for r in run.results for c in r.get("checks") or []
            if c.get("kind") == "finding" and c.get("verdict") != NOT_APPLICABLE]


def page_head(run: Run, summary: dict) -> dict:
    o = run.data.get("options") or {}
    m = run.data.get("model") or {}
    fp = run.data.get("fingerprint") or {}
    dummy = " — dummy weights: PPL meaningless" if m.get("dummy_weights") else ""
    return {
        "run_name": run.path.name, "created": run.created, "runtime": _fmt(run.data.get("runtime_s"), ".0f"),
        "command": run.data.get("command", ""),
        "model": f"{m.get('name')} (revision {m.get('revision')}){dummy}",
        "device": f"{o.get('device')} {o.get('dtype')}, {fp.get('cpu_model')}, {fp.get('cpu_count')} cores, "
                  f"{run.data.get('threads')} torch threads; GPU: {fp.get('gpu') or 'none'}; "
                  f"fingerprint `{run.data.get('fingerprint_id')}`",
        "text": f"{o.get('tokens')} tokens of {', '.join(o.get('datasets') or [])}; S={o.get('sink')} W={o.get('window')}; "
                f"timing: {o.get('rounds')} rounds of >= {o.get('min_steps')} steady-state steps, "
                f"{o.get('warmup_rounds')} warm-up",
        "commit": (run.data.get("provenance") or {}).get("commit"),
        "verdict_counts": ", ".join(f"{k} {v}" for k, v in sorted(summary["verdict_counts"].items())),
        "status": summary["status"],
        "armed": summary["armed"],
        "phases": ", ".join(f"{k} {v:.0f} s" for k, v in (summary.get("phases_s") or {}).items()),
    }


def diagnostics_view(diag: list[dict]) -> list[dict]:
    rows = []
    for d in diag:
        if not d["prune_events"]:
            continue
        sp = d.get("spikes") or {}
        events = d.get("events") or []
        rows.append({
            "dataset": d["dataset"], "label": d["label"], "events": d["prune_events"],
            "kv_mean": _fmt(d["kv_mean_after_first_prune"], ".1f"),
            **{k: _fmt(sp.get(k), ".3f") for k in ("peak_mean", "peak_median", "area_mean", "width_mean",
                                                   "aligned_peak", "aligned_area")},
            "aligned_width": _fmt(sp.get("aligned_width"), "d"),
            "events_total": len(events),
            "per_event": [{"step": e["step"], "baseline": f"{e['baseline']:.3f}", "peak": f"{e['peak']:.3f}",
                           "area": f"{e['area']:.3f}", "width": e["width"]} for e in events[:EVENTS_SHOWN]],
        })
    return rows


def power_tables(run: Run) -> list[DatasetTable]:
    return [DatasetTable(ds, rows) for ds in _datasets(run)
            if (rows := [b for r in run.results if r["dataset"] == ds and not r.get("skipped") for b in band_powers(r)])]


def interval_text(value: dict | None, spec: str = "+.3f") -> str:
    if not value:
        return "-"
    return f"{value['estimate']:{spec}} ({value['low']:{spec}}..{value['high']:{spec}})"


def delta_view(rows: list[dict]) -> list[dict]:
    view = []
    for d in rows:
        sp = d.get("delta_spikes") or {}
        view.append({"dataset": d["dataset"], "label": d["label"], "events": sp.get("events", 0),
                     "level": interval_text(sp.get("level")), "excess": interval_text(sp.get("excess")),
                     "aligned_peak": interval_text(sp.get("aligned_peak"))})
    return view
