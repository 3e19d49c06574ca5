"""report.md and report.html from the view model: the Jinja2 templates
(`streamllm/harness/templates/report.md.j2`, `report.html.j2`) hold the page text; the HTML page is
the markdown converted by the `markdown` package, raw HTML in the text escaped."""

from __future__ import annotations

from pathlib import Path

from .bands import Coverage
from .report_runs import Run, _datasets
from .report_view import (
    COLUMNS,
    DatasetTable,
    case_evidence,
    case_row,
    delta_view,
    diagnostics_view,
    finding_lines,
    page_head,
    power_tables,
    problems,
)
from .verdicts import FALSE_ALARM_PER_RUN, GUARD_SLOWDOWN


def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("streamllm.harness", "templates"), autoescape=False,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    # A table cell is one line without a bare "|": messages and labels must not break the table.
    env.filters["cell"] = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    return env


def render_markdown(run: Run, summary: dict, plots: list[Path], coverages: list[Coverage] | None = None) -> str:
    datasets = _datasets(run)
    tables = [DatasetTable(ds, [case_row(r) for r in run.results if r["dataset"] == ds]) for ds in datasets]
    evidence = [DatasetTable(ds, rows) for ds in datasets
                if (rows := [e for r in run.results if r["dataset"] == ds and (e := case_evidence(r))])]
    power = power_tables(run)
    return _environment().get_template("report.md.j2").render(
        head=page_head(run, summary), columns=COLUMNS, datasets=tables, evidence=evidence, problems=problems(run),
        power=power, coverages=coverages or [], false_alarm_per_run=f"{FALSE_ALARM_PER_RUN:.0%}",
        guard=f"{GUARD_SLOWDOWN:.0%}", has_trend=any(p.name == "tpot_trend.png" for p in plots),
        findings=finding_lines(run), diagnostics=diagnostics_view(summary.get("diagnostics") or []),
        delta_spikes=delta_view(summary.get("delta_spikes") or []), plots=plots)


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
