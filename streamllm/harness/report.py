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

This module puts the report together and writes it; each part has its own module:
  report_runs.py        reading run files (`read_run`, `load_runs`) and the helpers all parts share
  report_summary.py     summary.json's status, counts and per-result numbers (`summarize`)
  report_view.py        the view model the templates render (every number formatted, every verdict
                        taken from a check's `verdict` field, never parsed back out of a label)
  report_render.py      report.md / report.html through the Jinja2 templates
                        (`streamllm/harness/templates/report.md.j2`, `report.html.j2`)
  report_spikes.py      the per-event spike rows (metrics from `streamllm.spikes`)
  report_figure.py, report_nll_plots.py, report_cost_plots.py   the PNGs; trend.py: tpot_trend.png
"""

from __future__ import annotations

from pathlib import Path

from .band_rows import store_records
from .bands import Coverage, key_coverage
from .records import DEFAULT_REPORT_DIR
from .report_cost_plots import plot_amortisation, plot_ppl_vs_tpot, plot_sweep
from .report_nll_plots import plot_diagnostics, plot_nll, plot_nll_aligned, plot_nll_delta, plot_nll_delta_aligned
from .report_render import render_html, render_markdown
from .report_runs import ReportError, Run, _check, _datasets, load_runs, read_run
from .report_spikes import delta_diagnostics, diagnostics
from .report_summary import summarize
from .report_view import power_tables
from .trend import plot_trend
from .verdicts import FALLBACK_BAND, RATIO_CHECK


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
                             for ds in power_tables(run) for b in ds.rows]
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
