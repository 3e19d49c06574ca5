"""`streamllm report` renders a bench run: its sections, the (b) evidence per case, failing checks
shown as FAIL (from the checks' verdict fields), text from run files escaped, and the committed
run files still readable. A synthetic run JSON stands in for `pytest bench`: no model is loaded."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from streamllm.harness.records import RUN_SCHEMA
from streamllm.harness.report import build_report
from streamllm.harness.report_figure import label_points
from streamllm.harness.report_render import render_markdown
from streamllm.harness.report_runs import ReportError, read_run
from streamllm.harness.report_summary import summarize
from streamllm.harness.verdicts import HISTORY_CHECK, RATIO_CHECK, WORK_CHECK
from streamllm.harness.workrecord import CounterKey, WorkCounts

ROOT = Path(__file__).resolve().parents[1]
N = 300


def _check(kind: str, name: str, verdict: str, message: str, **details) -> dict:
    return {"kind": kind, "name": name, "verdict": verdict, "message": message, "details": details}


def _work(ops: int) -> dict:
    key = CounterKey({"torch": "2.13.0", "strategy": "strict"})
    return WorkCounts(steps=8, ops={"aten.mm": 8 * ops, "aten.cat": 16}, bytes_read=8 * 1024, bytes_written=8 * 512,
                      syncs={}, key=key).to_json()


def _result(case: str, label: str, ppl: float, tpot: float, *, checks: list[dict], verdicts: dict,
            prunes: list[int] | None = None, **extra) -> dict:
    rng = np.random.default_rng(len(case))
    nll = rng.gamma(2.0, 1.0, N)
    for p in prunes or []:
        nll[p + 1 : p + 3] += 2.0
    return {"dataset": "book", "case": case, "label": label, "ppl": ppl, "ppl_delta_vs_dense_pct": 100 * (ppl / 18 - 1),
            "tpot_ms_mean": tpot, "tpot_ms_median": tpot, "speedup": 40.0 / tpot, "verdicts": verdicts,
            "skipped": None, "sweeps": [], "checks": checks, "evaluation": {"spikes": None},
            "trace": {"nll": nll.tolist(), "prune_steps": prunes or [], "kv_length": [min(t + 1, 64) for t in range(N)],
                      "step_ms": [None] * N},
            **extra}


def _b_signals(ratio: float, reference_ms: float) -> dict:
    return {"ratio": {"ratio": ratio, "low": ratio - 0.02, "high": ratio + 0.02, "pairs": 8, "confidence": 0.95,
                      "sd_log": 0.03},
            "reference_timing": {"tpot_ms_mean": reference_ms, "tpot_ms_median": reference_ms, "rounds": 8},
            "work": _work(ops=10)}


def synthetic_run(path: Path) -> Path:
    """dense passes everything; strict fails its work counts (and the message holds markup and
    a pipe); lazy-c32 is inconclusive on its ratio and a regression against history; a finding
    fails; one case is skipped. Four strategies share one TPOT and nearly one PPL: a cluster."""
    ratio_ok = _check("tpot", RATIO_CHECK, "pass", "strict: TPOT / reference 0.950 inside ±10%",
                      ratio={"ratio": 0.95, "low": 0.93, "high": 0.97}, stored_ratio=0.96, band=0.10,
                      mde90=0.045, guards_5pct=True)
    history_ok = _check("tpot", HISTORY_CHECK, "pass", "strict (host): pass", ratio=1.01, p_value=0.4, band=0.1)
    results = [
        _result("dense", "dense", 18.0, 40.0, verdicts={"a": "pass", "b": "pass", "c": "-"},
                checks=[_check("ppl", "(a) PPL vs baseline", "pass", "dense: PPL 18 inside ±0.002"),
                        _check("tpot", WORK_CHECK, "pass", "dense: work per step unchanged")]),
        _result("strict", "strict-s4-w12", 19.0, 38.0, verdicts={"a": "pass", "b": "fail", "c": "pass 1/1"},
                checks=[_check("ppl", "(a) PPL vs baseline", "pass", "strict: PPL 19 inside ±0.002"),
                        _check("tpot", WORK_CHECK, "fail", "strict: work per step changed <script>x</script> a|b",
                               diff=["+2 aten.cat per step", "+4.0 KiB written per step"]),
                        ratio_ok, history_ok,
                        _check("finding", "(c) strict vs dense", "pass", "strict vs dense: finding 'cheap': pass")],
                **_b_signals(0.95, 40.0)),
        _result("lazy-c32", "lazy-s4-w12-c32", 19.01, 38.0, prunes=list(range(60, N - 40, 32)),
                verdicts={"a": "pass", "b": "fail", "c": "fail 0/1"},
                checks=[_check("ppl", "(a) PPL vs baseline", "pass", "lazy: PPL inside"),
                        _check("tpot", RATIO_CHECK, "inconclusive", "lazy: CI straddles the band (after one rerun)",
                               ratio={"ratio": 1.09, "low": 1.0, "high": 1.2}, stored_ratio=1.0, band=0.1),
                        _check("tpot", HISTORY_CHECK, "fail", "lazy (host): regression 1.25x, p=0.001", ratio=1.25,
                               p_value=0.001, band=0.1),
                        _check("finding", "(c) lazy vs strict", "fail", "lazy vs strict: finding 'lazy is free': fail")],
                **_b_signals(1.09, 35.0)),
        *[_result(f"static-{i}", f"strict-s4-w12-static{i}", 19.0 + 0.001 * i, 38.0,
                  verdicts={"a": "pass", "b": "pass", "c": "-"}, checks=[]) for i in range(3)],
        {"dataset": "book", "case": "ring-cudagraphs", "label": "strict-s4-w12-ring+compile-cudagraphs",
         "skipped": "--compile cudagraphs needs a CUDA device", "checks": [],
         "verdicts": {"a": "skip", "b": "skip", "c": "skip"}},
    ]
    run = {"schema": RUN_SCHEMA, "created": "2026-11-25T10:00:00+00:00", "runtime_s": 12.0, "command": "pytest bench",
           "options": {"device": "cpu", "dtype": "float32", "tokens": N + 1, "sink": 4, "window": 12,
                       "datasets": ["book"]},
           "model": {"name": "tiny", "revision": "test", "dummy_weights": False}, "fingerprint_id": "cpu-test",
           "results": results}
    out = path / "run.json"
    out.write_text(json.dumps(run))
    return out


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("report")
    run = read_run(synthetic_run(tmp))
    return tmp / "out", build_report(run, [run], tmp / "out")


def _row(text: str, label: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def test_sections(rendered):
    out, summary = rendered
    text = (out / "report.md").read_text()
    for heading in ("# streamllm benchmark report", "## book", "## TPOT evidence (b)", "### book",
                    "## Checks that did not pass", "## Findings", "## Phase A diagnostics", "## Plots"):
        assert re.search(rf"^{re.escape(heading)}( \(|$)", text, flags=re.M), heading
    assert "| strategy | PPL | ΔPPL % vs dense |" in text
    assert summary["plots"][0] == "ppl_vs_tpot.png" and (out / "ppl_vs_tpot.png").stat().st_size > 1000
    assert "![ppl_vs_tpot](ppl_vs_tpot.png)" in text


def test_failing_checks_show_as_fail(rendered):
    out, summary = rendered
    text = (out / "report.md").read_text()
    assert "- overall: **FAIL**" in text and not summary["passed"]
    assert f"- **FAIL** {WORK_CHECK}: strict: work per step changed" in text
    assert "    - `+2 aten.cat per step`" in text  # what changed, under the failing work check
    assert f"- **FAIL** {HISTORY_CHECK}: lazy (host): regression" in text
    assert f"- **INCONCLUSIVE** {RATIO_CHECK}: lazy: CI straddles" in text
    assert "- **FAIL** (book) lazy vs strict: finding 'lazy is free'" in text
    assert "- **SKIPPED** strict-s4-w12-ring+compile-cudagraphs on book" in text
    # verdict cells: loud where a check of that kind failed, by the checks' verdict fields
    # (b) split into work / ratio / absolute: loud in the sub-check that failed, not in its neighbours
    # (rows written before the split carry one (b) word, shown in each column)
    assert _row(text, "strict-s4-w12")[6:] == ["pass", "**fail**", "fail", "fail", "-", "pass 1/1"]
    assert _row(text, "lazy-s4-w12-c32")[6:] == ["pass", "fail", "*fail*", "**fail**", "-", "**fail 0/1**"]
    assert _row(text, "dense")[6:] == ["pass", "pass", "pass", "pass", "-", "-"]
    failures = "\n".join(summary["failures"])
    assert WORK_CHECK in failures and HISTORY_CHECK in failures and RATIO_CHECK not in failures


def test_b_evidence_per_case(rendered):
    out, summary = rendered
    text = (out / "report.md").read_text()
    evidence = text[text.index("## TPOT evidence (b)"):text.index("## TPOT bands")]
    strict = _row(evidence, "strict-s4-w12")
    work = WorkCounts.from_json(_work(ops=10)).summary()
    assert strict == ["strict-s4-w12", work, "**fail**", "0.950 [0.930, 0.970]", "0.960 (±10%; MDE90 4.5%, guards 5 %)", "pass",
                      "40.00",
                      "1.010, p=0.4", "pass"]
    lazy = _row(evidence, "lazy-s4-w12-c32")
    assert lazy[3:] == ["1.090 [1.070, 1.110]", "1.000 (±10%)", "*inconclusive*", "35.00", "1.250, p=0.001",
                        "**fail**"]
    assert "| dense |" in evidence  # a work check alone is evidence too
    by_case = {r["case"]: r for r in summary["results"]}
    assert by_case["strict"]["work_per_step"] == work and by_case["strict"]["reference_tpot_ms"] == 40.0
    assert by_case["strict"]["ratio"]["ratio"] == 0.95
    assert by_case["lazy-c32"]["b_checks"] == {RATIO_CHECK: "inconclusive", HISTORY_CHECK: "fail"}


def test_html_from_the_markdown_escapes_run_text(rendered):
    out, _ = rendered
    page = (out / "report.html").read_text()
    assert page.startswith("<!doctype html>") and "<h2>TPOT evidence (b)</h2>" in page
    assert "<script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    assert "<td><strong>fail</strong></td>" in page and "<td><em>inconclusive</em></td>" in page
    assert '<img alt="ppl_vs_tpot" src="ppl_vs_tpot.png"' in page
    # the "|" inside the message did not split a table row: every evidence row has 9 cells
    table = page[page.index("<h3>book</h3>"):page.index("<h2>TPOT bands: false-alarm rate and power</h2>")]
    rows = re.findall(r"<tr>(.*?)</tr>", table, flags=re.S)
    assert len(rows) == 1 + 3 and all(row.count("<td>") in (0, 9) for row in rows)


def test_spikes_come_from_spikes_py(rendered):
    from streamllm.spikes import summarize as spike_summary

    _, summary = rendered
    lazy = next(d for d in summary["diagnostics"] if d["case"] == "lazy-c32")
    run = read_run(rendered[0].parent / "run.json")
    trace = next(r for r in run.results if r["case"] == "lazy-c32")["trace"]
    assert lazy["spikes"] == spike_summary(np.asarray(trace["nll"]), trace["prune_steps"]).to_dict()
    assert lazy["events"] and min(e["peak"] for e in lazy["events"]) > 0.5  # the planted spikes


def test_clustered_labels_do_not_overlap():
    """Six cases at one point (same TPOT and PPL, as strict/static/ring are): every label still
    readable, none drawn over another."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    points = [(38.0, 19.0 + 0.001 * i, f"case-{i}") for i in range(6)] + [(40.0, 18.0, "dense")]
    ax.scatter([p[0] for p in points], [p[1] for p in points])
    texts = label_points(ax, points)
    fig.canvas.draw()
    boxes = [t.get_window_extent() for t in texts]
    plt.close(fig)
    overlapping = [(texts[i].get_text(), texts[j].get_text()) for i in range(len(boxes))
                   for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]
    assert not overlapping


def committed_runs() -> list[Path]:
    return sorted(ROOT.glob("reports/**/runs/*.json"))


@pytest.mark.parametrize("path", committed_runs(), ids=lambda p: p.name)
def test_committed_runs_render(path: Path):
    try:
        run = read_run(path)
    except ReportError:
        pytest.skip(f"{path.name} is not a bench run of this schema")
    summary = summarize(run)
    text = render_markdown(run, summary, [])
    assert text.startswith("# streamllm benchmark report\n")
    for dataset in {r["dataset"] for r in run.results}:
        assert f"\n## {dataset}\n" in text
    overall = "- overall: **PASS**" if summary["passed"] else "- overall: **FAIL**"
    assert overall in text
    failing = [c for r in run.results for c in r.get("checks") or [] if c["verdict"] in ("fail", "error")]
    assert summary["passed"] == (not failing)


def test_a_run_missing_a_case_is_incomplete_never_passed(tmp_path):
    """A collected case with no result (an xdist worker crashed on it) heads the report INCOMPLETE
    and is listed as MISSING; the same run without that case passes."""
    data = json.loads(synthetic_run(tmp_path).read_text())
    passing = [r for r in data["results"] if r["case"] == "dense"]
    lost = {"dataset": "book", "case": "strict", "label": "strict-s4-w12", "missing": True,
            "skipped": "MISSING: worker gw1 crashed while running it; its result is lost",
            "verdicts": {"a": "missing", "b": "missing", "c": "missing"}}
    for results, status in ((passing, "PASS"), (passing + [lost], "INCOMPLETE")):
        out = tmp_path / status
        path = out / "run.json"
        out.mkdir()
        path.write_text(json.dumps({**data, "results": results}))
        run = read_run(path)
        summary = build_report(run, [run], out / "report")
        text = (out / "report" / "report.md").read_text()
        assert summary["status"] == status and summary["passed"] == (status == "PASS")
        assert f"- overall: **{status}**" in text
    assert summary["missing"] == ["strict-s4-w12 on book"]
    assert "- **MISSING** strict-s4-w12 on book: MISSING: worker gw1 crashed" in text
