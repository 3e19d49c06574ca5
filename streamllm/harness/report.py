"""`streamllm report`: render the bench suite's run JSON into a report a person (or the nightly
runner's artifacts page) reads.

Input: the run files `pytest bench` writes to `out/runs/<UTC stamp>-<device>-<pid>.json`
(schema `streamllm.bench-run/2`, records.RUN_SCHEMA: options, fingerprint, one entry per (strategy, dataset) with
PPL, TPOT, speedup, the checks and their verdicts, the (b) signals — work counts, the same-run
ratio to a reference arm, the reference arm's timing — per-token NLL and prune events).

Output (default `out/report/`):
  report.md       verdict table per dataset, the (b) evidence per case, every non-passing check's
                  message, findings, spike diagnostics, plots
  report.html     the same markdown converted by the `markdown` package, PNGs beside it
  summary.json    the machine-readable summary (what a dashboard would ingest)
  ppl_vs_tpot.png, nll_<dataset>.png (per-token NLL with prune events), nll_aligned_<dataset>.png
  (mean NLL around prune events), tpot_trend.png (each row of this machine's run history relative to its own baseline, on its own
  scale, with the band the absolute check applied)

The page text lives in Jinja2 templates (`streamllm/templates/report.md.j2`, `report.html.j2`);
this module builds the view model they render: every number formatted here, every verdict taken
from a check's `verdict` field (never parsed back out of a label), spike metrics from
`streamllm.spikes`, work summaries from `streamllm.harness.workrecord`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bands import Coverage, key_coverage, store_records
from .judge import run_outcome
from .records import DEFAULT_REPORT_DIR, RUN_PASS
from .report_plots import (  # noqa: F401  (re-exported: the figures are part of the report's API)
    _delta_view,
    _interval_text,
    amortisation_rows,
    delta_diagnostics,
    delta_traces,
    diagnostics,
    label_points,
    plot_amortisation,
    plot_diagnostics,
    plot_nll,
    plot_nll_aligned,
    plot_nll_delta,
    plot_nll_delta_aligned,
    plot_ppl_vs_tpot,
    plot_sweep,
    sweep_rows,
)
from .report_runs import ReportError, Run, _check, _datasets, _fmt, failed, load_runs, read_run  # noqa: F401
from .trend import plot_trend
from .verdicts import (
    DEVICE_TIME_CHECK,
    FALLBACK_BAND,
    FALSE_ALARM_PER_RUN,
    GUARD_SLOWDOWN,
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
    armed_summary,
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


def _case_row(r: dict) -> CaseRow:
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


def work_summary(r: dict) -> str | None:
    """The result's work counts as one line per step (`WorkCounts.summary`), or why not."""
    work = r.get("work")
    if not work:
        return None
    from .schema.workrecord import WorkRecordError
    from .workrecord import WorkCounts

    try:
        return WorkCounts.from_json(work, source=f"{r.get('label')} work").summary()
    except WorkRecordError as exc:
        return f"unreadable: {exc}"


def _ratio_text(ratio: dict | None) -> str:
    if not ratio:
        return "-"
    return f"{_fmt(ratio.get('ratio'), '.3f')} [{_fmt(ratio.get('low'), '.3f')}, {_fmt(ratio.get('high'), '.3f')}]"


def _evidence(r: dict) -> Evidence | None:
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


def _band_power(r: dict) -> list[BandPower]:
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


def _problems(run: Run) -> list[Problem]:
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


def _findings(run: Run) -> list[FindingLine]:
    return [FindingLine(Verdict.of_check(c), r["dataset"], str(c.get("message")))
            for r in run.results for c in r.get("checks") or []
            if c.get("kind") == "finding" and c.get("verdict") != NOT_APPLICABLE]


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


def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("streamllm.harness", "templates"), autoescape=False,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    # A table cell is one line without a bare "|": messages and labels must not break the table.
    env.filters["cell"] = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    return env


def _head(run: Run, summary: dict) -> dict:
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


def _diagnostics_view(diag: list[dict]) -> list[dict]:
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


def _power_tables(run: Run) -> list[DatasetTable]:
    return [DatasetTable(ds, rows) for ds in _datasets(run)
            if (rows := [b for r in run.results if r["dataset"] == ds and not r.get("skipped") for b in _band_power(r)])]


def coverage(run: Run, baselines_dir: str | Path | None) -> list[Coverage]:
    """Leave-one-out coverage of the bands of every ratio key this run was judged under, from the
    baseline store (None or a missing store: none; docs/bands.md holds the tracked figures)."""
    if baselines_dir is None or not Path(baselines_dir).is_dir():
        return []
    from .baselines import BaselineStore

    keys = sorted({str(k) for r in run.results if (k := ((_check(r, RATIO_CHECK) or {}).get("details") or {}).get("key"))})
    if not keys:
        return []
    records = store_records(BaselineStore(Path(baselines_dir)))
    return [c for key in keys if (c := key_coverage(records, key)) is not None]


def render_markdown(run: Run, summary: dict, plots: list[Path], coverages: list[Coverage] | None = None) -> str:
    datasets = _datasets(run)
    tables = [DatasetTable(ds, [_case_row(r) for r in run.results if r["dataset"] == ds]) for ds in datasets]
    evidence = [DatasetTable(ds, rows) for ds in datasets
                if (rows := [e for r in run.results if r["dataset"] == ds and (e := _evidence(r))])]
    power = _power_tables(run)
    return _environment().get_template("report.md.j2").render(
        head=_head(run, summary), columns=COLUMNS, datasets=tables, evidence=evidence, problems=_problems(run),
        power=power, coverages=coverages or [], false_alarm_per_run=f"{FALSE_ALARM_PER_RUN:.0%}",
        guard=f"{GUARD_SLOWDOWN:.0%}", has_trend=any(p.name == "tpot_trend.png" for p in plots),
        findings=_findings(run), diagnostics=_diagnostics_view(summary.get("diagnostics") or []),
        delta_spikes=_delta_view(summary.get("delta_spikes") or []), plots=plots)


def render_html(markdown_text: str) -> str:
    """report.md as a page: the `markdown` package (tables), raw HTML in the text escaped."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables", _escape_html_extension()], output_format="html")
    return _environment().get_template("report.html.j2").render(title="streamllm benchmark report", body=body)


def _escape_html_extension():
    """A markdown extension that treats raw HTML as text: check messages can contain "<" (`p <
    0.002`), and nothing in a run file should become markup in the page. (Built on first use:
    `markdown` is imported only when a report is rendered.)"""
    from markdown.extensions import Extension

    class EscapeHtml(Extension):
        def extendMarkdown(self, md) -> None:  # noqa: N802 (markdown's API)
            md.preprocessors.deregister("html_block")
            md.inlinePatterns.deregister("html")

    return EscapeHtml()


def build_report(run: Run, history: list[Run], out_dir: str | Path, history_dir: str | Path | None = None,
                 baselines_dir: str | Path | None = None) -> dict:
    """Write report.md, report.html, summary.json and the PNGs into `out_dir`; returns the summary."""
    from ..results import write_json_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):  # a report is one run: stale plots of other datasets would mislead
        old.unlink()
    plots = [plot_ppl_vs_tpot(run, out / "ppl_vs_tpot.png")]
    sweeps = sorted({s for r in run.results for s in (r.get("sweeps") or [])
                     if (run.data.get("options") or {}).get("sweep")})
    for dataset in _datasets(run):
        plots.append(plot_nll(run, dataset, out / f"nll_{dataset}.png"))
        plots.append(plot_nll_aligned(run, dataset, out / f"nll_aligned_{dataset}.png"))
        plots.append(plot_nll_delta(run, dataset, out / f"nll_delta_{dataset}.png"))
        plots.append(plot_nll_delta_aligned(run, dataset, out / f"nll_delta_aligned_{dataset}.png"))
        if "compress" in sweeps:
            plots.append(plot_amortisation(run, dataset, out / f"amortisation_{dataset}.png"))
        plots.append(plot_diagnostics(run, dataset, out / f"diagnostics_{dataset}.png"))
        plots += [plot_sweep(run, sweep, dataset, out / f"sweep_{sweep}_{dataset}.png") for sweep in sweeps]
    if history_dir is not None and run.data.get("fingerprint_id"):
        # the band the absolute check applied: the run's own K and floor (its --tpot-tolerance)
        conditions = (run.data.get("raw") or {}).get("conditions") or {}
        plots.append(plot_trend(history_dir, run.data["fingerprint_id"], out / "tpot_trend.png",
                                k=int(conditions.get("history_k") or 5),
                                floor=float(conditions.get("tpot_tolerance") or FALLBACK_BAND)))
    made = [p for p in plots if p is not None]
    summary = summarize(run)
    summary["plots"] = [p.name for p in made]
    summary["diagnostics"] = diagnostics(run)
    summary["delta_spikes"] = delta_diagnostics(run)
    coverages = coverage(run, baselines_dir)
    summary["band_power"] = [{"dataset": ds.name, **b.__dict__, "verdict": b.verdict.text}
                             for ds in _power_tables(run) for b in ds.rows]
    summary["loo_coverage"] = [{"key": c.key, "rows": c.rows, "processes": c.processes,
                                "levels": [{"level": lvl, "inside": n} for lvl, n in c.levels]} for c in coverages]
    text = render_markdown(run, summary, made, coverages)
    (out / "report.md").write_text(text, encoding="utf-8")
    (out / "report.html").write_text(render_html(text), encoding="utf-8")
    write_json_atomic(out / "summary.json", summary).chmod(0o644)  # an artifact: readable like its siblings
    return summary


def run_report(runs_dir: str | Path = f"{DEFAULT_REPORT_DIR}/runs", run_file: str | Path | None = None,
               out_dir: str | Path = f"{DEFAULT_REPORT_DIR}/report", history_dir: str | Path = "history",
               baselines_dir: str | Path | None = "baselines") -> tuple[Path, dict]:
    """The newest run under `runs_dir` (or `run_file`) rendered into `out_dir`."""
    history = load_runs(runs_dir)
    if run_file is not None:
        run = read_run(run_file)
    elif history:
        run = history[-1]
    else:
        raise ReportError(f"no bench run under {runs_dir}: run `pytest bench` first (it writes {runs_dir}/*.json)")
    return Path(out_dir) / "report.md", build_report(run, history, out_dir, history_dir, baselines_dir)

