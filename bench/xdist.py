"""`pytest bench -n N` (pytest-xdist): one worker per GPU, the host's cores split, one merged run.

Roles (xdist's): the *controller* is the process without `config.workerinput`; it never collects
or runs a test. Each *worker* runs its share of the cells in its own `Suite`.

- Pinning: the controller plans one `Pinning` per worker slot (`plan_pinning`): on CUDA the
  slot's GPU (an entry of the caller's own CUDA_VISIBLE_DEVICES list, so `CUDA_VISIBLE_DEVICES=2,3
  pytest bench -n 2` uses GPUs 2 and 3) and on every device a disjoint block of the caller's cores.
  The worker applies it in its pytest_configure (`apply_pinning`), before anything in it touches
  CUDA: CUDA reads CUDA_VISIBLE_DEVICES once, at its initialisation, so each worker sees one GPU
  (`cuda:0`) and eager host-bound decode does not contend for cores.
- Timing on CPU: workers on one CPU share its cores, caches and memory bandwidth, so their TPOT
  would measure each other (the suite's threads already spin-wait badly on a shared 2-core VM).
  Under -n on CPU the workers therefore run PPL only (`cpu_timing_refusal`): the same evaluators
  as a serial run, so every cell's PPL equals the serial one; (b) and timing findings are "not
  checked" with the reason, and the run says so. TPOT needs a serial run.
- Distribution: xdist's default `--dist load`. Each worker's Suite loads the model once (INT8 at
  most once more), whichever cells it gets. `--dist loadgroup` also keeps the INT8 cells on one
  worker (one quantized copy; conftest adds `xdist_group("int8")`), but xdist's scope schedulers
  re-queue a crashed cell on the replacement worker, so a deterministic crash (OOM) repeats until
  --max-worker-restart stops the session; `load` drops the crashed cell and runs the rest.
- pytest-benchmark disables itself under xdist. The suite does not depend on it: its timing is
  `streamllm.measure.time_interleaved`, which runs its own clock when the fixture is disabled.
- One run, one report: after every cell a worker rewrites its *part* (`<parts dir>/<slot>-<worker>.json`,
  atomically): its run record, baseline records and run-history samples so far. The controller
  merges the parts (`merge_parts`; their model is `streamllm.harness.schema.XdistPart`) into one run record (validated), one verdict table, one history
  append and one baseline update; workers never write baselines, history or runs/. A worker that
  crashes loses only the cell it was running (its part holds every cell it finished); the merged
  record lists every collected cell with no result as a MISSING row.

Modules: `pinning.py` (plan and apply each slot's GPU and cores), `xdist_worker.py` (the worker's
plugin), `xdist_parts.py` (a part file written and read back), `xdist_merge.py` (the parts merged
into one run record); this module is the controller's plugin.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .pinning import Pinning, cpu_timing_refusal, cuda_requested, gpu_count, plan_pinning
from .xdist_merge import BENCHMARK_NOTE, Merged, merge_parts
from .xdist_parts import read_parts
from .xdist_worker import WORKERINPUT_KEY, WorkerInfo

if TYPE_CHECKING:  # the suite (torch, models) loads only when a run ends: conftest imports this module
    from .suite import FinishPlan, RunEnd


class XdistController:
    """Registered in the controller's pytest_configure under -n: plans the pinning, hands each
    worker its slot, merges the parts, prints the one verdict table."""

    def __init__(self, config: pytest.Config, workers: int, loadgroup: bool):
        from streamllm.harness.fingerprint import usable_cores

        self.config = config
        self.started = time.time()
        device = config.getoption("--device")
        self.cuda = cuda_requested(device)
        if self.cuda and device not in ("cuda", "auto"):
            raise pytest.UsageError(f"--device {device} with -n {workers}: each worker sees one GPU as cuda:0; "
                                    "pass --device cuda (pick GPUs with CUDA_VISIBLE_DEVICES)")
        if config.getoption("--device-map") and workers > 1:
            raise pytest.UsageError("--device-map spreads one model over the GPUs, -n pins each worker to one GPU: "
                                    "run a split model without -n")
        try:
            cores = os.sched_getaffinity(0)
        except AttributeError:
            cores = set(range(os.cpu_count() or 1))
        try:
            self.plan = plan_pinning(workers, cuda=self.cuda, cores=cores,
                                     visible_env=os.environ.get("CUDA_VISIBLE_DEVICES"),
                                     gpu_count=gpu_count() if self.cuda else 0)
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
        self.timing_refused = cpu_timing_refusal("cuda" if self.cuda else "cpu", workers, usable_cores())
        if self.timing_refused and (config.getoption("--update-baselines") or config.getoption("--append-baselines")):
            raise pytest.UsageError("--update-baselines / --append-baselines record TPOT, which -n on CPU does not "
                                    f"measure ({self.timing_refused.split(':')[0]}): record baselines without -n")
        self.loadgroup = loadgroup
        report_dir = config.getoption("--report-dir")
        root = Path(report_dir) if report_dir else Path(tempfile.gettempdir())
        root = root if root.is_absolute() else config.rootpath / root
        # under the report dir, outside runs/ (the report reads every file there)
        self.parts_dir = root / ".xdist-parts" / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        self.slots: dict[int, str | None] = {p.slot: None for p in self.plan}
        self.collected: list[str] = []
        self.crashed: dict[str, str] = {}
        self.down_errors: dict[str, str] = {}
        self.merged: Merged | None = None
        self.end: RunEnd | None = None  # what finish_run wrote and printed
        self.error: str | None = None

    # xdist hooks
    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node) -> None:
        # a restarted worker (after a crash) takes the slot its predecessor freed
        slot = next((s for s, w in sorted(self.slots.items()) if w is None), None)
        if slot is None:
            raise RuntimeError(f"no free worker slot for {node.gateway.id}: {self.slots}")
        self.slots[slot] = node.gateway.id
        info = WorkerInfo(self.plan[slot], str(self.parts_dir), self.loadgroup, self.timing_refused)
        node.workerinput[WORKERINPUT_KEY] = info.to_json()

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        for slot, worker in self.slots.items():
            if worker == node.gateway.id:
                self.slots[slot] = None
        if error:
            self.down_errors[node.gateway.id] = str(error)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids: Sequence[str]) -> None:
        if not self.collected:
            self.collected = list(ids)

    @pytest.hookimpl(optionalhook=True)
    def pytest_handlecrashitem(self, crashitem: str, report, sched) -> None:
        node = getattr(report, "node", None)  # xdist sets the crashed WorkerController here
        self.crashed[crashitem] = node.gateway.id if node is not None else "?"

    # pytest hooks
    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        lines = [f"streamllm xdist: {len(self.plan)} workers, dist {config.getoption('dist')}",
                 *(f"  {p.describe()}" for p in self.plan), f"  {BENCHMARK_NOTE}"]
        if self.timing_refused:
            lines.append(f"  TIMING NOT RUN: {self.timing_refused}")
        return lines

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.collected or not any(cell.startswith("bench") or "test_strategy[" in cell
                                         for cell in self.collected):
            shutil.rmtree(self.parts_dir, ignore_errors=True)
            return
        parts = read_parts(self.parts_dir)
        if not parts:
            return
        self.merged = merge_parts(parts, self.collected, self.crashed, command=_command(),
                                  runtime_s=time.time() - self.started, timing_refused=self.timing_refused)
        try:
            from .suite import finish_run  # inside: an import error keeps the parts too

            self.end = finish_run(self.merged.run, self.merged.records, self.merged.history, self._plan())
        except Exception as exc:  # noqa: BLE001 - keep the parts for a person to look at, say why
            self.error = f"merge not written ({type(exc).__name__}: {exc}); worker parts kept in {self.parts_dir}"
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
            return
        if self.end.outcome.exit_code and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED  # the serial run's rule (conftest.py)
        shutil.rmtree(self.parts_dir, ignore_errors=True)

    def _plan(self) -> FinishPlan:
        from streamllm.harness.baselines import BaselineStore

        from .suite import FinishPlan

        get = self.config.getoption
        rootdir = self.config.rootpath

        def under_root(path: str) -> Path:
            return Path(path) if Path(path).is_absolute() else rootdir / path

        updating = get("--update-baselines") or get("--append-baselines")
        report_dir = get("--report-dir") or None
        return FinishPlan(store=BaselineStore(under_root(get("--baselines-dir"))) if updating else None,
                          append=bool(get("--append-baselines")), history_root=under_root(get("--history-dir") or "history"),
                          report_root=under_root(report_dir) if report_dir else None,
                          device_type="cuda" if self.cuda else "cpu", rootdir=rootdir)

    def pytest_terminal_summary(self, terminalreporter, config: pytest.Config) -> None:
        tr = terminalreporter
        if self.merged is None and self.error is None:
            return
        tr.section("streamllm verdicts (merged from xdist workers)")
        if self.merged is not None:
            run = self.merged.run
            o = run.get("options") or {}
            name = (run.get("model") or {}).get("name") or o.get("model")
            tr.write_line(f"{name} on {o.get('device')} {o.get('dtype')}, {o.get('tokens')} tokens, S={o.get('sink')} "
                          f"W={o.get('window')}; {len(self.plan)} workers; wall {time.time() - self.started:.0f} s")
            tr.write_line(BENCHMARK_NOTE)
            if self.timing_refused:
                tr.write_line(f"TIMING NOT RUN: {self.timing_refused}")
            for worker in run["xdist"]["workers"]:
                pin = worker.get("pinning") or {}
                tr.write_line(f"  {worker['worker']}: {Pinning(**{**pin, 'cores': tuple(pin.get('cores', ()))}).describe() if pin else '?'}"
                              f", {worker['cells']} cells" + ("" if worker["complete"] else ", INCOMPLETE (crashed?)"))
            if self.merged.missing:
                tr.write_line(f"MISSING {len(self.merged.missing)} cell(s): {', '.join(self.merged.missing)}")
        if self.end is not None:  # the same lines a serial run prints (bench/suite.py finish_run)
            for line in self.end.lines:
                tr.write_line(line, red=line == self.end.outcome.unarmed, bold=line == self.end.outcome.unarmed)
        if self.error:
            tr.write_line(f"ERROR: {self.error}")


def _command() -> str:
    name = Path(sys.argv[0]).name
    return " ".join(["python -m pytest" if name == "__main__.py" else name, *sys.argv[1:]])
