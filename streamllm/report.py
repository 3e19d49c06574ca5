"""`streamllm report`: render the bench suite's run JSON into a report a person (or the nightly
runner's artifacts page) reads.

Input: the run files `pytest bench` writes to `reports/runs/<UTC stamp>-<device>-<pid>.json`
(schema `streamllm.bench-run/1`: options, fingerprint, one entry per (strategy, dataset) with
PPL, TPOT, speedup, the checks and their verdicts, per-token NLL and prune events).

Output (default `reports/latest/`):
  report.md       verdict table per dataset, every non-passing check's message, findings, plots
  report.html     the same, self-contained apart from the PNGs beside it
  summary.json    the machine-readable summary (what a dashboard would ingest)
  ppl_vs_tpot.png, nll_<dataset>.png (per-token NLL with prune events), nll_aligned_<dataset>.png
  (mean NLL around prune events), tpot_history.png (TPOT across stored runs of this fingerprint)
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RUN_SCHEMA = "streamllm.bench-run/1"


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
    if not isinstance(data, dict) or data.get("schema") != RUN_SCHEMA:
        raise ReportError(f"run file {path}: not a bench run (schema {data.get('schema') if isinstance(data, dict) else None!r}, "
                          f"expected {RUN_SCHEMA!r})")
    return Run(path, data)


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


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


COLUMNS = ("strategy", "PPL", "ΔPPL % vs dense", "TPOT ms (cycle mean)", "TPOT ms (median)", "speedup",
           "a: PPL", "b: TPOT", "c: findings")


def _cells(r: dict) -> list[str]:
    v = r.get("verdicts") or {}
    if r.get("skipped"):
        return [r["label"], "-", "-", "-", "-", "-", "skip", "skip", "skip"]
    return [r["label"], _fmt(r.get("ppl"), ".4f"), _fmt(r.get("ppl_delta_vs_dense_pct"), "+.2f"),
            _fmt(r.get("tpot_ms_mean"), ".2f"), _fmt(r.get("tpot_ms_median"), ".2f"), _fmt(r.get("speedup"), ".2f"),
            v.get("a", "-"), v.get("b", "-"), v.get("c", "-")]


def summarize(run: Run) -> dict:
    results = run.results
    checks = [(r, c) for r in results for c in r.get("checks", [])]
    count = {}
    for _, c in checks:
        count[c["verdict"]] = count.get(c["verdict"], 0) + 1
    failing = [f"{r['label']} on {r['dataset']}: {c['name']}: {c['message']}" for r, c in checks
               if c["verdict"] in ("fail", "error")]
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
        "passed": not failing,
        "failures": failing,
        "results": [{k: r.get(k) for k in ("dataset", "case", "label", "ppl", "ppl_delta_vs_dense_pct", "tpot_ms_mean",
                                            "tpot_ms_median", "speedup", "verdicts", "skipped")} for r in results],
    }


# -- plots --------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a CI runner
    import matplotlib.pyplot as plt

    return plt


def plot_ppl_vs_tpot(run: Run, path: Path) -> Path | None:
    rows = [r for r in run.results if r.get("ppl") and r.get("tpot_ms_mean")]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for marker, dataset in zip("os^Dv<>", sorted({r["dataset"] for r in rows}), strict=False):
        mine = [r for r in rows if r["dataset"] == dataset]
        ax.scatter([r["tpot_ms_mean"] for r in mine], [r["ppl"] for r in mine], marker=marker, label=dataset, s=40)
        for r in mine:
            ax.annotate(r["case"], (r["tpot_ms_mean"], r["ppl"]), fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax.set_xlabel("TPOT, ms per token (whole-cycle mean, steady state)")
    ax.set_ylabel("PPL")
    ax.set_title(_title(run, "PPL vs TPOT"), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _smooth(x: np.ndarray, k: int = 32) -> np.ndarray:
    if x.size < k:
        return x
    return np.convolve(x, np.ones(k) / k, mode="valid")


def plot_nll(run: Run, dataset: str, path: Path) -> Path | None:
    rows = [r for r in run.results if r["dataset"] == dataset and r.get("trace") and not r.get("skipped")]
    if not rows:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 1.5 + 1.3 * len(rows)), sharex=True, squeeze=False)
    for ax, r in zip(axes[:, 0], rows, strict=True):
        nll = np.asarray([np.nan if v is None else v for v in r["trace"]["nll"]], dtype=float)
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
    """Mean NLL around prune events, aligned at the event (the log's phase A spike picture)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    drawn = 0
    for r in run.results:
        if r["dataset"] != dataset or not r.get("trace"):
            continue
        nll = np.asarray([np.nan if v is None else v for v in r["trace"]["nll"]], dtype=float)
        prunes = r["trace"].get("prune_steps") or []
        gaps = np.diff(prunes)
        if len(prunes) < 3 or (len(gaps) and gaps.min() < 8):
            continue  # every-step eviction has no isolated events to align on
        rows = [nll[e + 1 - before : e + 1 + after] for e in prunes if e + 1 - before >= 0 and e + 1 + after <= nll.size]
        if not rows:
            continue
        ax.plot(np.arange(-before, after), np.nanmean(rows, axis=0), label=f"{r['label']} ({len(rows)} events)")
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


def _floats(values) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=float)


def diagnosed(run: Run, dataset: str) -> dict | None:
    """The result phase A diagnoses on a dataset: the first one with isolated prune events
    (lazy / refresh: every-step eviction has no event to look at)."""
    for r in run.results:
        prunes = (r.get("trace") or {}).get("prune_steps") or []
        if r["dataset"] == dataset and not r.get("skipped") and len(prunes) >= 3 and np.diff(prunes).min() >= 8:
            return r
    return None


def event_spikes(r: dict) -> list[dict]:
    """Per-event spike metrics (streamllm.spikes) of one result's trace."""
    from .spikes import spikes

    trace = r.get("trace") or {}
    return [dict(vars(s)) for s in spikes(_floats(trace.get("nll") or []), trace.get("prune_steps") or [])]


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
    for dataset in sorted({r["dataset"] for r in run.results}):
        for r in run.results:
            if r["dataset"] != dataset or r.get("skipped") or not r.get("trace"):
                continue
            trace = r["trace"]
            kv = _floats(trace.get("kv_length") or [])
            prunes = trace.get("prune_steps") or []
            # KV drift (the log's phase A): mean attended length after the first eviction
            kv_mean = float(np.nanmean(kv[prunes[0]:])) if prunes and kv.size > prunes[0] else None
            entry = {"dataset": dataset, "case": r["case"], "label": r["label"], "prune_events": len(prunes),
                     "kv_mean_after_first_prune": kv_mean,
                     "spikes": (r.get("evaluation") or {}).get("spikes")}
            if r is diagnosed(run, dataset):
                entry["events"] = event_spikes(r)
            out.append(entry)
    return out


def plot_tpot_history(run: Run, history: list[Run], path: Path) -> Path | None:
    """TPOT of each strategy across the stored runs of the same model, options and fingerprint."""
    fid = run.data.get("fingerprint_id")

    def config(r: Run) -> tuple:
        o = r.data.get("options") or {}
        return ((r.data.get("model") or {}).get("name"), o.get("dtype"), o.get("tokens"), o.get("sink"),
                o.get("window"), o.get("min_steps"))

    # Only runs whose TPOT means the same thing: same machine, model, dtype, tokens, geometry, round size.
    same = [h for h in history if h.data.get("fingerprint_id") == fid and config(h) == config(run)]
    if run.path not in {h.path for h in same}:
        same.append(run)
    series: dict[str, list[tuple[int, float]]] = {}
    for i, h in enumerate(same):
        for r in h.results:
            if r.get("tpot_ms_mean"):
                series.setdefault(f"{r['label']} / {r['dataset']}", []).append((i, r["tpot_ms_mean"]))
    if not series:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 5))
    for name, points in sorted(series.items()):
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", ms=3, lw=1, label=name)
    ax.set_xticks(range(len(same)))
    ax.set_xticklabels([h.created[5:16].replace("T", " ") for h in same], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("TPOT ms (whole-cycle mean)")
    ax.set_title(_title(run, f"TPOT history, fingerprint {fid} ({len(same)} runs)"), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)


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
def _diagnostics_md(diag: list[dict], events_shown: int = 12) -> list[str]:
    rows = [d for d in diag if d["prune_events"]]
    if not rows:
        return []
    lines = ["## Phase A diagnostics (NLL spikes around prune events)", "",
             "Aggregate per strategy (`streamllm.spikes`: peak over the local median of the 32 steps before the "
             "event, area above it, width at half peak; aligned = the same on the event-aligned mean curve).", "",
             "| dataset | strategy | events | KV mean after 1st prune | peak mean | peak median | area mean | "
             "width mean | aligned peak | aligned area | aligned width |", "|" + "---|" * 11]
    for d in rows:
        sp = d.get("spikes") or {}
        lines.append("| " + " | ".join([d["dataset"], d["label"], str(d["prune_events"]),
                                         _fmt(d["kv_mean_after_first_prune"], ".1f")]
                                        + [_fmt(sp.get(k), ".3f") for k in ("peak_mean", "peak_median", "area_mean",
                                                                           "width_mean", "aligned_peak", "aligned_area")]
                                        + [_fmt(sp.get("aligned_width"), "d")]) + " |")
    lines.append("")
    for d in rows:
        if d.get("events"):
            lines += [f"Per event, {d['label']} on {d['dataset']} (first {events_shown} of {len(d['events'])}; all in "
                      "summary.json):", "", "| step | baseline | peak | area | width |", "|---|---|---|---|---|"]
            lines += [f"| {e['step']} | {e['baseline']:.3f} | {e['peak']:.3f} | {e['area']:.3f} | {e['width']} |"
                      for e in d["events"][:events_shown]]
            lines.append("")
    return lines


def _markdown(run: Run, summary: dict, plots: list[Path]) -> str:
    o = run.data.get("options") or {}
    m = run.data.get("model") or {}
    fp = run.data.get("fingerprint") or {}
    lines = [
        "# streamllm benchmark report",
        "",
        f"- run: `{run.path.name}` ({run.created}, {_fmt(run.data.get('runtime_s'), '.0f')} s wall)",
        f"- command: `{run.data.get('command', '')}`",
        f"- model: {m.get('name')} (revision {m.get('revision')}){' — dummy weights: PPL meaningless' if m.get('dummy_weights') else ''}",
        f"- device: {o.get('device')} {o.get('dtype')}, {fp.get('cpu_model')}, {fp.get('cpu_count')} cores, "
        f"{run.data.get('threads')} torch threads; GPU: {fp.get('gpu') or 'none'}; fingerprint `{run.data.get('fingerprint_id')}`",
        f"- text: {o.get('tokens')} tokens of {', '.join(o.get('datasets') or [])}; S={o.get('sink')} W={o.get('window')}; "
        f"timing: {o.get('rounds')} rounds of >= {o.get('min_steps')} steady-state steps, {o.get('warmup_rounds')} warm-up",
        f"- commit: `{(run.data.get('provenance') or {}).get('commit')}`; verdicts: "
        + ", ".join(f"{k} {v}" for k, v in sorted(summary["verdict_counts"].items())),
        f"- overall: **{'PASS' if summary['passed'] else 'FAIL'}**",
        "",
        "Verdicts: a = PPL vs stored baseline (and the timed decode agrees with the evaluator), "
        "b = TPOT vs stored baseline of this hardware fingerprint, c = findings vs the reference strategy "
        "in the same run (passed/applicable). Speedup = dense mean TPOT (context N/2) / strategy mean TPOT.",
        "",
    ]
    for dataset in sorted({r["dataset"] for r in run.results}):
        lines += [f"## {dataset}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(_cells(r)) + " |" for r in run.results if r["dataset"] == dataset]
        lines.append("")
    notes = []
    for r in run.results:
        if r.get("skipped"):
            notes.append(f"- **skipped** {r['label']} on {r['dataset']}: {r['skipped']}")
        for c in r.get("checks", []):
            if c["verdict"] != "pass" and c["kind"] != "finding":
                notes.append(f"- **{c['verdict']}** {c['name']}: {c['message']}")
    if notes:
        lines += ["## Checks that did not pass", "", *notes, ""]
    findings = [(r, c) for r in run.results for c in r.get("checks", []) if c["kind"] == "finding"
                and c["verdict"] != "n/a"]
    if findings:
        lines += ["## Findings", ""]
        lines += [f"- **{c['verdict']}** ({r['dataset']}) {c['message']}" for r, c in findings]
        lines.append("")
    lines += _diagnostics_md(summary.get("diagnostics") or [])
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{p.stem}]({p.name})" for p in plots]
        lines.append("")
    return "\n".join(lines)


def _html(markdown: str, run: Run, plots: list[Path]) -> str:
    """A small hand-rolled rendering (tables, lists, images): no markdown package needed."""
    out = ["<!doctype html><meta charset='utf-8'><title>streamllm report</title>",
           "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td:first-child{text-align:left}"
           ".fail,.error{background:#fdd}.pass{background:#dfd}.inconclusive,.not{background:#ffd}</style>"]
    in_table = in_list = False
    for line in markdown.splitlines():
        if line.startswith("|") and "---|" in line:
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not in_table:
                out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cells) + "</tr>")
                in_table = True
                continue
            out.append("<tr>" + "".join(f"<td class='{html.escape(c.split()[0]) if c else ''}'>{html.escape(c)}</td>"
                                        for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("- "):
            if not in_list:
                out.append("<ul>")
                in_list = True
            out.append(f"<li>{_inline(line[2:])}</li>")
            continue
        if in_list:
            out.append("</ul>")
            in_list = False
        if line.startswith("## "):
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            out.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("!["):
            src = line[line.index("(") + 1 : -1]
            out.append(f"<p><img src='{html.escape(src)}' style='max-width:100%'></p>")
        elif line:
            out.append(f"<p>{_inline(line)}</p>")
    if in_table:
        out.append("</table>")
    if in_list:
        out.append("</ul>")
    return "\n".join(out) + "\n"


def _inline(text: str) -> str:
    import re

    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def build_report(run: Run, history: list[Run], out_dir: str | Path) -> dict:
    """Write report.md, report.html, summary.json and the PNGs into `out_dir`; returns the summary."""
    from .results import write_json_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):  # a report is one run: stale plots of other datasets would mislead
        old.unlink()
    plots = [plot_ppl_vs_tpot(run, out / "ppl_vs_tpot.png")]
    sweeps = sorted({s for r in run.results for s in (r.get("sweeps") or [])
                     if (run.data.get("options") or {}).get("sweep")})
    for dataset in sorted({r["dataset"] for r in run.results}):
        plots.append(plot_nll(run, dataset, out / f"nll_{dataset}.png"))
        plots.append(plot_nll_aligned(run, dataset, out / f"nll_aligned_{dataset}.png"))
        plots.append(plot_diagnostics(run, dataset, out / f"diagnostics_{dataset}.png"))
        plots += [plot_sweep(run, sweep, dataset, out / f"sweep_{sweep}_{dataset}.png") for sweep in sweeps]
    plots.append(plot_tpot_history(run, history, out / "tpot_history.png"))
    made = [p for p in plots if p is not None]
    summary = summarize(run)
    summary["plots"] = [p.name for p in made]
    summary["diagnostics"] = diagnostics(run)
    text = _markdown(run, summary, made)
    (out / "report.md").write_text(text, encoding="utf-8")
    (out / "report.html").write_text(_html(text, run, made), encoding="utf-8")
    write_json_atomic(out / "summary.json", summary).chmod(0o644)  # an artifact: readable like its siblings
    return summary


def run_report(runs_dir: str | Path = "reports/runs", run_file: str | Path | None = None,
               out_dir: str | Path = "reports/latest") -> tuple[Path, dict]:
    """The newest run under `runs_dir` (or `run_file`) rendered into `out_dir`."""
    history = load_runs(runs_dir)
    if run_file is not None:
        run = read_run(run_file)
    elif history:
        run = history[-1]
    else:
        raise ReportError(f"no bench run under {runs_dir}: run `pytest bench` first (it writes reports/runs/*.json)")
    return Path(out_dir) / "report.md", build_report(run, history, out_dir)
