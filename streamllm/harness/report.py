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
  (mean NLL around prune events), tpot_trend.png (each row of this machine's run history relative to its own baseline, with its band)

The page text lives in Jinja2 templates (`streamllm/templates/report.md.j2`, `report.html.j2`);
this module builds the view model they render: every number formatted here, every verdict taken
from a check's `verdict` field (never parsed back out of a label), spike metrics from
`streamllm.spikes`, work summaries from `streamllm.counters`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import spikes as spike_metrics
from ..steptime import split_step_times
from .records import DEFAULT_REPORT_DIR, RUN_PASS, RunRecordError, run_status, validate_run
from .trend import plot_trend
from .verdicts import (
    DEVICE_TIME_CHECK,
    FAILING,
    HISTORY_CHECK,
    INCONCLUSIVE,
    MISSING,
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


class ReportError(ValueError):
    """No run to report, or a run file that is not a bench run; the message names the file."""


@dataclass
class Run:
    path: Path
    data: dict

    @property
    def created(self) -> str:
        return self.data.get("created", "")

    @property
    def results(self) -> list[dict]:
        return self.data.get("results", [])


def read_run(path: str | Path) -> Run:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"run file {path}: cannot be read as JSON ({exc})") from None
    try:
        return Run(path, validate_run(data, f"run file {path}").to_json())
    except RunRecordError as exc:
        raise ReportError(str(exc)) from None


def load_runs(runs_dir: str | Path) -> list[Run]:
    """Every readable run under `runs_dir`, oldest first (unreadable files are skipped: history
    is best effort, the run being reported is read strictly)."""
    runs = []
    for p in sorted(Path(runs_dir).glob("*.json")):
        try:
            runs.append(read_run(p))
        except ReportError:
            continue
    return sorted(runs, key=lambda r: r.created)


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def failed(check: dict) -> bool:
    """Whether a check fails its test: the record's own `failed` flag where it carries one, else
    its verdict field."""
    return bool(check["failed"]) if "failed" in check else check.get("verdict") in FAILING


def _check(r: dict, name: str) -> dict | None:
    return next((c for c in r.get("checks") or [] if c.get("name") == name), None)


# -- the view model the templates render ------------------------------------------------------
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
    from .counters import CounterError, WorkCounts

    try:
        return WorkCounts.from_json(work, source=f"{r.get('label')} work").summary()
    except CounterError as exc:
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
    ref = r.get("reference_timing") or {}
    hist = (history or {}).get("details") or {}
    hist_text = "-"
    if hist.get("ratio") is not None:
        hist_text = f"{hist['ratio']:.3f}, p={_fmt(hist.get('p_value'), '.2g')}"
    return Evidence(
        label=r["label"], work=work_summary(r) or "-", work_check=cell(work),
        ratio=_ratio_text(r.get("ratio") or details.get("ratio")), stored_ratio=stored_text, ratio_check=cell(ratio),
        reference_tpot=_fmt(ref.get("tpot_ms_mean"), ".2f"), history=hist_text, history_check=cell(history))


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


def _datasets(run: Run) -> list[str]:
    return sorted({r["dataset"] for r in run.results})


def summarize(run: Run) -> dict:
    results = run.results
    checks = [(r, c) for r in results for c in r.get("checks") or []]
    count: dict[str, int] = {}
    for _, c in checks:
        count[c["verdict"]] = count.get(c["verdict"], 0) + 1
    failing = [f"{r['label']} on {r['dataset']}: {c['name']}: {c['message']}" for r, c in checks if failed(c)]
    missing = [f"{r['label']} on {r['dataset']}" for r in results if r.get("missing")]
    status = run_status(failing, missing)

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
        "failures": failing,
        "missing": missing,
        "results": [result(r) for r in results],
    }


# -- plots --------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a CI runner
    import matplotlib.pyplot as plt

    return plt


def plot_ppl_vs_tpot(run: Run, path: Path) -> Path | None:
    """PPL against TPOT, one point per (case, dataset), each labelled with its case."""
    rows = [r for r in run.results if r.get("ppl") and r.get("tpot_ms_mean")]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 6))
    for marker, dataset in zip("os^Dv<>", sorted({r["dataset"] for r in rows}), strict=False):
        mine = [r for r in rows if r["dataset"] == dataset]
        ax.scatter([r["tpot_ms_mean"] for r in mine], [r["ppl"] for r in mine], marker=marker, label=dataset, s=40)
    ax.set_xlabel("TPOT, ms per token (whole-cycle mean, steady state)")
    ax.set_ylabel("PPL")
    ax.set_title(_title(run, "PPL vs TPOT"), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    label_points(ax, [(r["tpot_ms_mean"], r["ppl"], r["case"]) for r in rows])
    return _save(fig, path)


def label_points(ax, points: Sequence[tuple[float, float, str]], fontsize: int = 7) -> list:
    """Label each point so no two labels overlap. Cases often cluster (same cost, nearly the same
    PPL): adjustText moves the labels apart and off the markers, with a leader line back to their
    point (deterministic: it seeds its own jitter). Returns the Text artists."""
    from adjustText import adjust_text

    texts = [ax.text(x, y, label, fontsize=fontsize) for x, y, label in points]
    if texts:
        adjust_text(texts, x=[p[0] for p in points], y=[p[1] for p in points], ax=ax, expand=(1.3, 1.6),
                    arrowprops={"arrowstyle": "-", "color": "0.45", "lw": 0.5})
    return texts


def _smooth(x: np.ndarray, k: int = 32) -> np.ndarray:
    if x.size < k:
        return x
    return np.convolve(x, np.ones(k) / k, mode="valid")


def _floats(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=float)


def _isolated(prunes: Sequence[int], min_gap: int = 8) -> bool:
    """Prune events far enough apart to look at one by one (lazy, refresh); every-step eviction
    (strict) has no isolated event to align on."""
    return len(prunes) >= 3 and int(np.diff(prunes).min()) >= min_gap


def plot_nll(run: Run, dataset: str, path: Path) -> Path | None:
    rows = [r for r in run.results if r["dataset"] == dataset and r.get("trace") and not r.get("skipped")]
    if not rows:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 1.5 + 1.3 * len(rows)), sharex=True, squeeze=False)
    for ax, r in zip(axes[:, 0], rows, strict=True):
        nll = _floats(r["trace"]["nll"])
        prunes = r["trace"].get("prune_steps") or []
        ax.plot(np.arange(nll.size), nll, color="0.8", lw=0.5)
        sm = _smooth(nll)
        ax.plot(np.arange(sm.size) + (nll.size - sm.size) // 2, sm, color="C0", lw=1.2)
        if 0 < len(prunes) <= 200:  # sparse (lazy) events as lines; every-step eviction as a band
            for p in prunes:
                ax.axvline(p, color="C3", lw=0.5, alpha=0.6)
        elif prunes:
            ax.axvspan(prunes[0], prunes[-1], color="C3", alpha=0.06)
        ax.set_ylabel("NLL", fontsize=8)
        ax.text(0.005, 0.95, f"{r['label']}  PPL {_fmt(r.get('ppl'), '.3f')}  prunes {len(prunes)}",
                transform=ax.transAxes, fontsize=8, va="top")
    axes[-1, 0].set_xlabel("decode step t (scores x_{t+1}); red: prune events (band: every step)")
    fig.suptitle(_title(run, f"per-token NLL, {dataset} (grey raw, blue 32-token mean)"), fontsize=9)
    return _save(fig, path, dpi=100)


def plot_nll_aligned(run: Run, dataset: str, path: Path, before: int = 16, after: int = 32) -> Path | None:
    """Mean NLL around prune events, aligned at the event (`spikes.aligned_mean`; the exploration
    log's phase A picture, docs/findings.md#spikes)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    drawn = 0
    for r in run.results:
        if r["dataset"] != dataset or not r.get("trace"):
            continue
        prunes = r["trace"].get("prune_steps") or []
        if not _isolated(prunes):
            continue
        nll = _floats(r["trace"]["nll"])
        curve = spike_metrics.aligned_mean(nll, prunes, before=before, after=after)
        if curve is None:
            continue
        events = sum(1 for e in prunes if e + 1 - before >= 0 and e + 1 + after <= nll.size)
        ax.plot(np.arange(-before, after), curve, label=f"{r['label']} ({events} events)")
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.axvline(0, color="C3", lw=0.8)
    ax.set_xlabel("steps after the prune event (0 = first prediction after eviction)")
    ax.set_ylabel("mean NLL over events")
    ax.set_title(_title(run, f"NLL around prune events, {dataset}"), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


# The StrategySpec field a sweep varies: its points are drawn in that order (catalog order puts
# the default cases first, e.g. lazy-c128 before the sweep-only lazy-c64).
SWEEP_AXIS = {"window": "window", "sinks": "sink", "compress": "compress_every", "overlap": "overlap",
              "refresh": "refresh"}


def sweep_rows(run: Run, sweep: str, dataset: str) -> list[dict]:
    """The measured points of one sweep on one dataset, dense excluded, ordered along the swept
    parameter where there is one (else in run order)."""
    rows = [r for r in run.results if r["dataset"] == dataset and sweep in (r.get("sweeps") or [])
            and not r.get("skipped") and r.get("case") != "dense"]
    axis = SWEEP_AXIS.get(sweep)
    if axis:
        rows.sort(key=lambda r: (r.get("params") or {}).get(axis) or 0)  # stable: ties keep run order
    return rows


def plot_sweep(run: Run, sweep: str, dataset: str, path: Path) -> Path | None:
    """One sweep's curve: PPL change and speedup vs the dense baseline, one point per case."""
    rows = sweep_rows(run, sweep, dataset)
    if not rows:
        return None
    plt = _plt()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 1.1 * len(rows) + 2), 6), sharex=True)
    x = np.arange(len(rows))
    top.plot(x, [r.get("ppl_delta_vs_dense_pct") for r in rows], marker="o", color="C0")
    top.set_ylabel("ΔPPL % vs dense")
    bottom.plot(x, [r.get("speedup") for r in rows], marker="s", color="C1")
    bottom.set_ylabel("speedup vs dense (TPOT)")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    bottom.set_xticks(x)
    bottom.set_xticklabels([r["label"] for r in rows], rotation=30, ha="right", fontsize=7)
    top.set_title(_title(run, f"sweep {sweep}, {dataset}"), fontsize=9)
    return _save(fig, path)


# -- ΔNLL against dense and the amortisation curve (issue 24; docs/findings.md#spikes, #step-time) ----
def _dense_nll(run: Run, dataset: str) -> np.ndarray | None:
    for r in run.results:
        if r["dataset"] == dataset and r.get("case") == "dense" and (r.get("trace") or {}).get("nll"):
            return _floats(r["trace"]["nll"])
    return None


def delta_traces(run: Run, dataset: str) -> list[tuple[dict, np.ndarray, list[int]]]:
    """(result, ΔNLL against dense at the same tokens, prune steps) of every evicting result on a
    dataset; empty when the run has no dense trace there (ΔNLL needs it)."""
    dense = _dense_nll(run, dataset)
    if dense is None:
        return []
    out = []
    for r in run.results:
        trace = r.get("trace") or {}
        prunes = trace.get("prune_steps") or []
        if r["dataset"] != dataset or r.get("skipped") or r.get("case") == "dense" or not prunes:
            continue
        nll = _floats(trace.get("nll") or [])
        if nll.size == dense.size:
            out.append((r, spike_metrics.delta_nll(nll, dense), prunes))
    return out


def delta_diagnostics(run: Run) -> list[dict]:
    """ΔNLL spike summary (`spikes.summarize_delta`) per evicting result: summary.json and report.md."""
    out = []
    for dataset in _datasets(run):
        for r, delta, prunes in delta_traces(run, dataset):
            found = spike_metrics.summarize_delta(delta, prunes)
            out.append({"dataset": dataset, "case": r["case"], "label": r["label"], "prune_events": len(prunes),
                        "delta_spikes": found.to_dict() if found else None})
    return out


def _interval_text(value: dict | None, spec: str = "+.3f") -> str:
    if not value:
        return "-"
    return f"{value['estimate']:{spec}} ({value['low']:{spec}}..{value['high']:{spec}})"


def _delta_view(rows: list[dict]) -> list[dict]:
    view = []
    for d in rows:
        sp = d.get("delta_spikes") or {}
        view.append({"dataset": d["dataset"], "label": d["label"], "events": sp.get("events", 0),
                     "level": _interval_text(sp.get("level")), "excess": _interval_text(sp.get("excess")),
                     "aligned_peak": _interval_text(sp.get("aligned_peak"))})
    return view


def plot_nll_delta(run: Run, dataset: str, path: Path) -> Path | None:
    """Per-token ΔNLL against dense (the text's own difficulty removed), 32-token mean, events marked."""
    rows = delta_traces(run, dataset)
    if not rows:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 1.5 + 1.3 * len(rows)), sharex=True, squeeze=False)
    for ax, (r, delta, prunes) in zip(axes[:, 0], rows, strict=True):
        ax.plot(np.arange(delta.size), delta, color="0.8", lw=0.5)
        sm = _smooth(delta)
        ax.plot(np.arange(sm.size) + (delta.size - sm.size) // 2, sm, color="C0", lw=1.2)
        ax.axhline(0, color="k", lw=0.5)
        if len(prunes) <= 200:
            for p in prunes:
                ax.axvline(p, color="C3", lw=0.5, alpha=0.6)
        else:
            ax.axvspan(prunes[0], prunes[-1], color="C3", alpha=0.06)
        steady = delta[prunes[0] + 1:]
        ax.set_ylim(*np.nanpercentile(delta, [1, 99]) * 1.2)
        ax.set_ylabel("ΔNLL", fontsize=8)
        ax.text(0.005, 0.95, f"{r['label']}  mean ΔNLL after 1st prune {np.nanmean(steady):+.3f}  prunes {len(prunes)}",
                transform=ax.transAxes, fontsize=8, va="top")
    axes[-1, 0].set_xlabel("decode step t; red: prune events (band: every step)")
    fig.suptitle(_title(run, f"ΔNLL = NLL − NLL_dense per token, {dataset} (grey raw, blue 32-token mean)"),
                 fontsize=9)
    return _save(fig, path, dpi=100)


def plot_nll_delta_aligned(run: Run, dataset: str, path: Path, before: int = 16, after: int = 32) -> Path | None:
    """Mean ΔNLL around prune events, aligned at the event; every-step eviction (strict) as its
    level, the number that stands for it (`spikes.summarize_delta`)."""
    rows = delta_traces(run, dataset)
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    x = np.arange(-before, after)
    for i, (r, delta, prunes) in enumerate(rows):
        color = f"C{i % 10}"
        curve = spike_metrics.aligned_delta(delta, prunes, before=before, after=after) if _isolated(prunes) else None
        if curve is None:
            level = float(np.nanmean(delta[prunes[0] + 1:]))
            ax.plot(x, np.full(x.size, level), color=color, ls="--", label=f"{r['label']} (level: every step evicts)")
            continue
        events = sum(1 for e in prunes if e + 1 - before >= 0 and e + 1 + after <= delta.size)
        ax.plot(x, curve, color=color, label=f"{r['label']} ({events} events)")
    ax.axvline(0, color="C3", lw=0.8)
    ax.set_xlabel("steps after the prune event (0 = first prediction after eviction)")
    ax.set_ylabel("mean ΔNLL vs dense over events")
    ax.set_title(_title(run, f"ΔNLL around prune events, {dataset}"), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def amortisation_rows(run: Run, dataset: str, sweep: str = "compress") -> list[dict]:
    """Per point of the compress sweep with timed steps: R and its step-time split (`steptime`)."""
    out = []
    for r in sweep_rows(run, sweep, dataset):
        times, flags = r.get("timing_step_ms"), r.get("timing_prune_flags")
        if not times or not flags or len(times) != len(flags) or any(t is None for t in times):
            continue
        cycle = int((r.get("params") or {}).get("compress_every") or 1)
        try:
            split = split_step_times(times, flags, cycle)
        except ValueError:  # fewer steps than one cycle: nothing to split
            continue
        out.append({"label": r["label"], "R": cycle, **split.to_dict()})
    return out


def plot_amortisation(run: Run, dataset: str, path: Path, sweep: str = "compress") -> Path | None:
    """The amortisation curve: TPOT, the p99 step and the prune step's own time against R (top),
    the prune step as a multiple of a normal step and its amortised share of TPOT (bottom)."""
    rows = amortisation_rows(run, dataset, sweep)
    if not rows:
        return None
    plt = _plt()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6.5), sharex=True)
    rs = np.array([row["R"] for row in rows], dtype=float)
    top.plot(rs, [row["mean_ms"] for row in rows], marker="o", label="TPOT (whole-cycle mean)")
    top.plot(rs, [row["p99_ms"] for row in rows], marker="^", label="p99 step")
    top.plot(rs, [row["median_ms"] for row in rows], marker=".", ls=":", label="median step")
    pr = [(row["R"], row["prune_ms"]) for row in rows if row["prune_ms"] is not None]
    if pr:
        top.plot(*zip(*pr, strict=True), marker="v", ls="--", label="prune step (mean)")
    dense = next((r for r in run.results if r["dataset"] == dataset and r.get("case") == "dense"
                  and r.get("tpot_ms_mean")), None)
    if dense is not None:
        top.axhline(dense["tpot_ms_mean"], color="0.5", lw=0.8, ls="--", label="dense TPOT")
    top.set_ylabel("ms per step")
    top.legend(fontsize=8)
    split = [row for row in rows if row["prune_multiple"] is not None]
    if split:
        xs = [row["R"] for row in split]
        bottom.plot(xs, [row["prune_multiple"] for row in split], marker="o", color="C3", label="prune / normal step")
        bottom.set_ylabel("prune step / normal step", color="C3")
        share = bottom.twinx()
        share.plot(xs, [100 * row["prune_share"] for row in split], marker="s", color="C2", label="prune share")
        share.set_ylabel("prune's amortised share of TPOT, %", color="C2")
    for ax in (top, bottom):
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    bottom.set_xticks(rs)
    bottom.set_xticklabels([str(int(r)) for r in rs])
    bottom.set_xlabel("R = compress_every (1 = strict)")
    top.set_title(_title(run, f"amortisation of the prune, sweep {sweep}, {dataset}"), fontsize=9)
    return _save(fig, path)


def diagnosed(run: Run, dataset: str) -> dict | None:
    """The result phase A diagnoses on a dataset: the first one with isolated prune events
    (lazy / refresh: every-step eviction has no event to look at)."""
    for r in run.results:
        prunes = (r.get("trace") or {}).get("prune_steps") or []
        if r["dataset"] == dataset and not r.get("skipped") and _isolated(prunes):
            return r
    return None


def event_spikes(r: dict) -> list[dict]:
    """Per-event spike metrics (streamllm.spikes) of one result's trace."""
    trace = r.get("trace") or {}
    return [dict(vars(s)) for s in spike_metrics.spikes(_floats(trace.get("nll") or []), trace.get("prune_steps") or [])]


def plot_diagnostics(run: Run, dataset: str, path: Path) -> Path | None:
    """Phase A for one run: per-token NLL, KV length and step time, prune events marked."""
    r = diagnosed(run, dataset)
    if r is None:
        return None
    trace = r["trace"]
    nll = _floats(trace["nll"])
    prunes = trace.get("prune_steps") or []
    kv = trace.get("kv_length") or []
    step_ms = _floats(trace.get("step_ms") or [])
    if not np.isfinite(step_ms).any() and r.get("timing_positions"):
        # parallel evaluator: no per-token times; the timed decode steps are at their text positions
        tx, ty = r["timing_positions"], _floats(r["timing_step_ms"])
    else:
        tx, ty = np.arange(step_ms.size), step_ms
    plt = _plt()
    fig, axes = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
    axes[0].plot(nll, color="0.75", lw=0.5)
    sm = _smooth(nll)
    axes[0].plot(np.arange(sm.size) + (nll.size - sm.size) // 2, sm, color="C0", lw=1.2)
    axes[0].set_ylabel("NLL (grey raw, blue 32-mean)", fontsize=8)
    axes[1].plot(np.arange(len(kv)), kv, color="C2", lw=1)
    axes[1].set_ylabel("KV length |C_t|+1", fontsize=8)
    axes[2].plot(tx, ty, ".", ms=3, color="C1")
    axes[2].set_ylabel("step ms (timed steps)", fontsize=8)
    for ax in axes:
        for p in prunes:
            ax.axvline(p, color="C3", lw=0.4, alpha=0.5)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("decode step t; red: prune events")
    fig.suptitle(_title(run, f"phase A diagnostics: {r['label']} on {dataset}"), fontsize=9)
    return _save(fig, path, dpi=100)


def diagnostics(run: Run) -> list[dict]:
    """Aggregate spike metrics per result and per-event metrics of the diagnosed result."""
    out = []
    for dataset in _datasets(run):
        chosen = diagnosed(run, dataset)
        for r in run.results:
            if r["dataset"] != dataset or r.get("skipped") or not r.get("trace"):
                continue
            trace = r["trace"]
            kv = _floats(trace.get("kv_length") or [])
            prunes = trace.get("prune_steps") or []
            # KV drift (the exploration log's phase A, docs/findings.md#spikes): mean attended
            # length after the first eviction
            kv_mean = float(np.nanmean(kv[prunes[0]:])) if prunes and kv.size > prunes[0] else None
            summary = (r.get("evaluation") or {}).get("spikes")
            if summary is None and prunes:  # a run that did not store them: the same metrics, from spikes.py
                found = spike_metrics.summarize(_floats(trace.get("nll") or []), prunes)
                summary = found.to_dict() if found else None
            entry = {"dataset": dataset, "case": r["case"], "label": r["label"], "prune_events": len(prunes),
                     "kv_mean_after_first_prune": kv_mean, "spikes": summary}
            if r is chosen:
                entry["events"] = event_spikes(r)
            out.append(entry)
    return out


def _save(fig, path: Path, dpi: int = 110) -> Path:
    """Lay out, write and close one figure (closed: a report draws many, pyplot keeps them all)."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)
    return path


def _title(run: Run, what: str) -> str:
    m = run.data.get("model") or {}
    o = run.data.get("options") or {}
    return f"{what} — {m.get('name', '?')}, {o.get('device')} {o.get('dtype')}, {o.get('tokens')} tokens, " \
           f"S={o.get('sink')} W={o.get('window')}, {run.created}"


# -- documents ----------------------------------------------------------------------------------
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


def render_markdown(run: Run, summary: dict, plots: list[Path]) -> str:
    datasets = _datasets(run)
    tables = [DatasetTable(ds, [_case_row(r) for r in run.results if r["dataset"] == ds]) for ds in datasets]
    evidence = [DatasetTable(ds, rows) for ds in datasets
                if (rows := [e for r in run.results if r["dataset"] == ds and (e := _evidence(r))])]
    return _environment().get_template("report.md.j2").render(
        head=_head(run, summary), columns=COLUMNS, datasets=tables, evidence=evidence, problems=_problems(run),
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


def build_report(run: Run, history: list[Run], out_dir: str | Path, history_dir: str | Path | None = None) -> dict:
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
        plots.append(plot_trend(history_dir, run.data["fingerprint_id"], out / "tpot_trend.png"))
    made = [p for p in plots if p is not None]
    summary = summarize(run)
    summary["plots"] = [p.name for p in made]
    summary["diagnostics"] = diagnostics(run)
    summary["delta_spikes"] = delta_diagnostics(run)
    text = render_markdown(run, summary, made)
    (out / "report.md").write_text(text, encoding="utf-8")
    (out / "report.html").write_text(render_html(text), encoding="utf-8")
    write_json_atomic(out / "summary.json", summary).chmod(0o644)  # an artifact: readable like its siblings
    return summary


def run_report(runs_dir: str | Path = f"{DEFAULT_REPORT_DIR}/runs", run_file: str | Path | None = None,
               out_dir: str | Path = f"{DEFAULT_REPORT_DIR}/report", history_dir: str | Path = "history") -> tuple[Path, dict]:
    """The newest run under `runs_dir` (or `run_file`) rendered into `out_dir`."""
    history = load_runs(runs_dir)
    if run_file is not None:
        run = read_run(run_file)
    elif history:
        run = history[-1]
    else:
        raise ReportError(f"no bench run under {runs_dir}: run `pytest bench` first (it writes {runs_dir}/*.json)")
    return Path(out_dir) / "report.md", build_report(run, history, out_dir, history_dir)
