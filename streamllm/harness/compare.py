"""`streamllm compare RUN [--against baselines|RUN2]`: judge a stored run again, as `asv compare` does.

The run record's raw part (`records.RawRun`) goes through the one judge (`judge.judge`) against the
baselines directory and the run history as it stood when the run began, or against another run's
raw measurements (`--against RUN2`: RUN2 stands in for the baselines, as `--update-baselines` would
have recorded them; no history). It prints the table the suite prints (`table.py`), then how many
of the re-judged checks agree with the verdicts the run printed.

The eviction probe, the own-path and timed-decode agreement and the (c) findings are re-judged from
the raw record like the rest. A record written before it kept their inputs (no `eviction` /
`findings` in its raw cases) has those checks shown as the run printed them, and says so.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .baseline_record import BaselineKey, BaselineRecord
from .baselines import BaselineStore
from .judge import TPOT_NOT_MEASURED, CaseVerdicts, judge, run_outcome
from .judge_ratio import ratio_ci
from .records import Check, RawCase, RawRun, RunModel, RunRecordError, load_run
from .table import armed_summary, bound_word, make_row, table_lines
from .verdicts import DEVICE_TIME_CHECK, HISTORY_CHECK, PPL_CHECK, RATIO_CHECK, WORK_CHECK, ratio_key
from .workrecord import WorkCounts

JUDGED = frozenset({PPL_CHECK, WORK_CHECK, RATIO_CHECK, HISTORY_CHECK, DEVICE_TIME_CHECK, TPOT_NOT_MEASURED})


@dataclass
class Comparison:
    lines: list[str] = field(default_factory=list)
    exit_code: int = 0
    agree: int = 0
    judged: int = 0
    carried: int = 0  # stored checks shown as the run printed them (an older record)
    rows: list[dict] = field(default_factory=list)  # the table's rows, each with its checks as dicts


def _raw(run: RunModel, path: Path) -> RawRun:
    if run.raw is None:
        raise RunRecordError(f"run file {path}: written before runs kept their raw measurements (no `raw` part, "
                             f"schema {run.schema_}); re-run `pytest bench` with this checkout to get one")
    return run.raw


def records_from_run(raw: RawRun) -> list[BaselineRecord]:
    """What `--update-baselines` would have recorded from this run: PPL, work counts, same-run
    ratio and device time of each measured case (under its own worker's conditions in a merged run)."""
    out = []
    for c in raw.cases:
        if c.skipped or c.ppl is None or not c.baseline_key:
            continue
        cond = raw.conditions_of(c)
        sections: dict = {}
        work = WorkCounts.from_json(c.work, source=f"{c.label} work") if c.work else None
        if work is not None and work.key is not None:
            sections["work_counts"] = {work.key.id: c.work}
            if c.reference_work:
                sections["reference_work_counts"] = {work.key.id: c.reference_work}
        if c.timing and c.reference and c.timing.samples_ms and c.reference.samples_ms and not c.graph:
            ci = ratio_ci([*c.timing.samples_ms, *c.timing.rerun_samples_ms],
                          [*c.reference.samples_ms, *c.reference.rerun_samples_ms])
            rkey = ratio_key(cond.fingerprint, cond.threads)
            sections["tpot_ratio"] = {rkey: [round(ci.ratio, 5)]}
            sections["tpot_ratio_ci"] = {rkey: [[round(ci.low, 5), round(ci.high, 5)]]}
        if c.graph and c.timing and c.timing.device_samples_ms and work is not None and work.key is not None:
            logs = [math.log(x) for x in c.timing.device_samples_ms]
            sections["device_time_ms"] = {work.key.kernel_id: [round(math.exp(sum(logs) / len(logs)), 5)]}
        out.append(BaselineRecord(key=BaselineKey(**c.baseline_key), ppl=c.ppl,
                                  mean_nll=c.nll.mean if c.nll else math.log(c.ppl),
                                  ppl_device_class=str(cond.fingerprint.get("device_class")),
                                  fingerprints={cond.fingerprint_id: cond.fingerprint}, **sections))
    return out


def _row(raw: RawCase, checks: list[Check], missing: bool) -> dict:
    t = raw.timing
    work = raw.work or {}
    row = make_row(dataset=raw.dataset, case=raw.case, label=raw.label, checks=checks, skipped=raw.skipped,
                   timed=t is not None, ppl=raw.ppl, ppl_delta_vs_dense_pct=raw.ppl_delta_vs_dense_pct,
                   tpot_ms_mean=t.tpot_ms_mean if t else None, tpot_ms_median=t.tpot_ms_median if t else None,
                   speedup=raw.speedup, floor_ms=raw.floor_ms,
                   bound=bound_word(work.get("device_busy_us"), work.get("steps"), t.tpot_ms_mean if t else None))
    return {**row, "missing": missing, "checks": [c.to_dict() for c in checks]}


def compare(run_file: str | Path, *, against: str = "baselines", baselines_dir: str | Path = "baselines",
            history_dir: str | Path | None = "history") -> Comparison:
    """Judge `run_file`'s raw part; `against`: "baselines" (the store and the history) or a run file."""
    path = Path(run_file)
    run = load_run(path)
    raw = _raw(run, path)
    out = Comparison()
    with tempfile.TemporaryDirectory(prefix="streamllm-compare-") as tmp:
        if against == "baselines":
            if not Path(baselines_dir).is_dir():
                raise RunRecordError(f"baselines directory {baselines_dir} does not exist; pass --baselines DIR "
                                     "(the --baselines-dir the run used) or --against another run file")
            store, history, source = BaselineStore(Path(baselines_dir)), history_dir, f"baselines {baselines_dir}"
            if history_dir is not None:
                source += f", history {history_dir} before {raw.conditions.started}"
        else:
            other = Path(against)
            store, history, source = BaselineStore(Path(tmp)), None, f"run {other}"
            records = records_from_run(_raw(load_run(other), other))
            if records:
                store.update(records)
        try:
            judged = judge(raw, store, history)
        except ValueError as exc:  # e.g. a fingerprint id no history directory can have
            raise RunRecordError(f"run file {path}: {exc}; re-run `pytest bench` to get a readable record") from None
    stored = {(r.case, r.dataset): r for r in run.results}
    rows, differ = [], []
    for c, v in zip(raw.cases, judged, strict=True):
        old = stored.get((c.case, c.dataset))
        # a record without the numerics' and findings' inputs: show those checks as the run printed them
        produced = {k.name for k in v.checks}
        carried = [] if _complete(c) else [k for k in (old.checks if old else [])
                                            if k.name not in JUDGED and k.name not in produced]
        if carried:
            out.carried += len(carried)
        checks = _merge(v, carried)
        rows.append(_row(c, checks, bool(old and old.missing)))
        for new in v.checks:
            before = next((k for k in (old.checks if old else []) if k.name == new.name), None)
            if before is None:
                continue
            out.judged += 1
            if before.verdict == new.verdict:
                out.agree += 1
            else:
                differ.append(f"  {c.dataset}/{c.label}: {new.name}: run said {before.verdict}, now {new.verdict}: "
                              f"{new.message}")
    outcome = run_outcome(rows, {"nightly": raw.conditions.nightly, "update_baselines": raw.conditions.updating,
                                 "no_timing": raw.conditions.no_timing})
    out.lines = [f"streamllm compare {path} against {source}; fingerprint {raw.conditions.fingerprint_id}, "
                 f"started {raw.conditions.started}", armed_summary(rows), *table_lines(rows)]
    out.lines += [f"RERUN NEEDED: {v.dataset}/{v.case}: {v.rerun.reason} (needs a relative CI half-width "
                  f"<= {v.rerun.half_width:.3g}); the stored run has no rerun rounds for it" for v in judged
                  if v.rerun is not None and v.rerun.half_width is not None]
    if outcome.unarmed:
        out.lines.append(outcome.unarmed)
    if out.carried:
        out.lines.append(f"{out.carried} eviction, own-path agreement and (c) finding check(s): as the run printed "
                         "them, not re-judged (the record predates their raw inputs)")
    if out.judged:
        out.lines.append(f"re-judged {out.judged} stored check(s): {out.agree} agree with the verdicts the run printed"
                         + (", differing:" if differ else ""))
        out.lines += differ
    out.exit_code = outcome.exit_code
    out.rows = rows
    return out


def _complete(raw: RawCase) -> bool:
    """Whether the record holds the inputs of every check the suite printed for this case."""
    return raw.skipped is not None or (raw.eviction is not None and raw.findings is not None)


def _merge(judged: CaseVerdicts, carried: list[Check]) -> list[Check]:
    """The suite's order: PPL, the eviction and agreement checks, (b), findings."""
    return [*judged.ppl, *(c for c in carried if c.kind == "ppl"), *judged.tpot, *judged.findings,
            *(c for c in carried if c.kind != "ppl")]
