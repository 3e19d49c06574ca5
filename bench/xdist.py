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
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from streamllm.harness.schema.xdist_part import PART_SCHEMA, XdistPart
from streamllm.harness.table import check_notes, table_lines  # noqa: F401  (re-exported: tests read the table here)
from streamllm.harness.verdicts import MISSING

from .finish import FinishPlan, RunEnd, finish_run, merge_history  # noqa: F401  (merge_history re-exported)

WORKERINPUT_KEY = "streamllm_xdist"  # our entry in xdist's workerinput dict
BENCHMARK_NOTE = ("pytest-benchmark disables itself under xdist (its own rule); the suite's TPOT and verdicts "
                  "do not use it: streamllm.measure times each step with its own clock")


# -- pure planning -------------------------------------------------------------------------------
def visible_gpus(env: str | None, count: int) -> list[str]:
    """The caller's GPU list: the entries of its CUDA_VISIBLE_DEVICES (indices, UUIDs or MIG ids,
    kept verbatim), or 0..count-1 when it is unset. An empty variable hides every GPU."""
    if env is None:
        return [str(i) for i in range(count)]
    entries = [e.strip() for e in env.split(",")]
    # CUDA stops at the first invalid entry ("-1" is the documented way to hide the rest)
    out: list[str] = []
    for entry in entries:
        if not entry or entry.startswith("-"):
            break
        out.append(entry)
    return out


def worker_gpus(visible: Sequence[str], workers: int) -> list[str]:
    """One visible GPU per worker, in the caller's order. More workers than GPUs would put two
    timed workers on one card: refused (ValueError naming the fix)."""
    if workers < 1:
        raise ValueError("need at least one worker")
    if workers > len(visible):
        raise ValueError(f"-n {workers} with {len(visible)} visible GPU(s) ({','.join(visible) or 'none'}): one "
                         f"worker per GPU, so use -n {len(visible) or 0} (or -n auto)")
    return list(visible[:workers])


def split_cores(cores: Iterable[int], workers: int) -> list[tuple[int, ...]]:
    """Disjoint contiguous blocks of `cores` (sorted), sizes differing by at most one, in slot order.

    With fewer cores than workers each worker gets one core, round-robin (shared: see
    `cores_shared`); the caller decides whether that is acceptable."""
    pool = sorted(set(cores))
    if workers < 1:
        raise ValueError("need at least one worker")
    if not pool:
        raise ValueError("no cores to split")
    if workers >= len(pool):
        return [(pool[i % len(pool)],) for i in range(workers)]
    base, extra = divmod(len(pool), workers)
    out, start = [], 0
    for slot in range(workers):
        size = base + (1 if slot < extra else 0)
        out.append(tuple(pool[start : start + size]))
        start += size
    return out


def cores_shared(blocks: Sequence[Sequence[int]]) -> bool:
    seen: set[int] = set()
    for block in blocks:
        if seen & set(block):
            return True
        seen |= set(block)
    return False


@dataclass(frozen=True)
class Pinning:
    """What one worker slot gets: its GPU (an entry of the caller's CUDA_VISIBLE_DEVICES; None on
    CPU) and its cores (threads = cores)."""

    slot: int
    workers: int
    gpu: str | None
    cores: tuple[int, ...]
    shared: bool = False  # some core is also another worker's

    @property
    def threads(self) -> int:
        return len(self.cores)

    def describe(self) -> str:
        where = f"GPU {self.gpu}" if self.gpu is not None else "CPU"
        cores = _ranges(self.cores)
        return f"slot {self.slot}: {where}, cores {cores} ({self.threads} thread{'s' * (self.threads != 1)})" + (
            ", cores SHARED with another worker" if self.shared else "")


def plan_pinning(workers: int, *, cuda: bool, cores: Iterable[int], visible_env: str | None = None,
                 gpu_count: int = 0) -> list[Pinning]:
    """One Pinning per worker slot. On CUDA: GPUs from the caller's list (`worker_gpus`)."""
    blocks = split_cores(cores, workers)
    shared = cores_shared(blocks)
    gpus: list[str | None] = (list(worker_gpus(visible_gpus(visible_env, gpu_count), workers)) if cuda
                              else [None] * workers)
    return [Pinning(slot, workers, gpus[slot], blocks[slot], shared) for slot in range(workers)]


def cpu_timing_refusal(device_type: str, workers: int, cores: int) -> str | None:
    """Why timing does not run under -n on this device (None: it runs)."""
    if device_type != "cpu" or workers <= 1:
        return None
    return (f"-n {workers} on CPU: the workers share this machine's {cores} cores, caches and memory bandwidth, "
            "so their TPOT would measure each other; PPL only (the serial run's evaluators), run without -n for TPOT")


def cuda_requested(device: str | None) -> bool:
    """--device asks for CUDA, without initialising CUDA here (`auto`: torch's NVML-based count)."""
    if device is None or device == "cpu":
        return False
    if device.startswith("cuda"):
        return True
    if device == "auto":
        return gpu_count() > 0
    return False


def gpu_count() -> int:
    """GPUs the caller sees. torch.cuda.device_count() asks NVML first and does not initialise
    CUDA, so the workers this process starts still choose their devices."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.version.cuda else 0


def _ranges(cores: Sequence[int]) -> str:
    parts, run = [], []
    for c in sorted(cores):
        if run and c != run[-1] + 1:
            parts.append(run)
            run = []
        run.append(c)
    if run:
        parts.append(run)
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in parts)


# -- the worker side ------------------------------------------------------------------------------
def apply_pinning(pinning: Pinning, environ: dict[str, str] | None = None,
                  setaffinity: Callable[[int, set[int]], None] | None = None) -> list[str]:
    """Pin this process: its GPU through CUDA_VISIBLE_DEVICES (before CUDA starts), its threads to its
    cores, torch's thread count to the core count. Returns notes on what could not be applied."""
    environ = os.environ if environ is None else environ
    notes: list[str] = []
    if pinning.gpu is not None:
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            # Too late: this process already chose its devices; the slot's GPU would be ignored.
            raise RuntimeError("CUDA was initialised in this worker before the suite could pin it to "
                               f"GPU {pinning.gpu}; a plugin touched CUDA at import")
        environ["CUDA_VISIBLE_DEVICES"] = pinning.gpu
    # every library's pool sizes itself from these (OpenMP, MKL, inductor's compile workers)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        environ[var] = str(pinning.threads)
    setaffinity = setaffinity or getattr(os, "sched_setaffinity", None)
    if setaffinity is None:
        notes.append("this OS has no sched_setaffinity: cores not pinned")
    else:
        # Every thread of the process: sched_setaffinity(0) pins only the calling one, and
        # execnet's I/O thread already exists (threads started later inherit the main thread's set).
        for tid in _threads():
            try:
                setaffinity(tid, set(pinning.cores))
            except OSError as exc:  # a thread that exited meanwhile, or cores outside our cgroup
                notes.append(f"thread {tid}: {exc}")
    import torch

    torch.set_num_threads(pinning.threads)
    return notes


def _threads() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


@dataclass
class WorkerInfo:
    """What the controller hands one worker (through xdist's workerinput: plain JSON types)."""

    pinning: Pinning
    parts_dir: str
    loadgroup: bool
    timing_refused: str | None

    def to_json(self) -> dict:
        return {"pinning": dataclasses.asdict(self.pinning), "parts_dir": self.parts_dir,
                "loadgroup": self.loadgroup, "timing_refused": self.timing_refused}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WorkerInfo:
        p = dict(data["pinning"])
        p["cores"] = tuple(p["cores"])
        return cls(Pinning(**p), str(data["parts_dir"]), bool(data["loadgroup"]), data.get("timing_refused"))


def worker_info(config: pytest.Config) -> WorkerInfo | None:
    """This worker's WorkerInfo, or None outside an xdist worker started by our controller."""
    data = getattr(config, "workerinput", {}).get(WORKERINPUT_KEY)
    return WorkerInfo.from_json(data) if data else None


def cell_id(nodeid: str) -> str:
    """`bench/test_strategies.py::test_strategy[strict-s16-book]@int8` -> `strict-s16-book`."""
    base = nodeid.split("@", 1)[0] if "]@" in nodeid else nodeid
    return base[base.rindex("[") + 1 : -1] if base.endswith("]") and "[" in base else base


def record_to_json(record) -> dict:
    """A BaselineRecord as a part's entry (schema.PartRecord: the baseline file's header and record)."""
    return {"header": record.key.header(), "record": record.stored().model_dump(mode="json")}


def record_from_json(data: Mapping[str, Any]):
    from streamllm.harness.baselines import BaselineRecord
    from streamllm.harness.schema import PartRecord

    part = PartRecord.model_validate(data, strict=False)
    return BaselineRecord.from_stored(part.header.header(), part.record)


def part_json(suite, *, worker: str, info: WorkerInfo, cells: Mapping[str, Mapping[str, str]], complete: bool,
              notes: Sequence[str] = ()) -> dict:
    """One worker's part: its run record so far (validated like any run), baseline records and history."""
    from streamllm.harness.records import validate_run

    run = validate_run(suite.run_json(), f"worker {worker}'s run record").to_json() if suite is not None else None
    part = {
        "schema": PART_SCHEMA,
        "worker": worker,
        "pid": os.getpid(),
        "pinning": dataclasses.asdict(info.pinning),
        # what this worker saw after pinning: a record that each one ran on its own card
        "visible": {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"), "gpus": _gpus_seen(),
                    "cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None},
        "cells": dict(cells),  # every cell this worker collected: nodeid -> {case, dataset}
        "complete": complete,
        "notes": list(notes),
        "run": run,
        "records": [record_to_json(r) for r in suite.records] if suite is not None else [],
        "history": {"samples": dict(suite.history_results), "accepted": dict(suite.history_accepted),
                    "fingerprint": suite.fingerprint} if suite is not None and suite.history_results else None,
    }
    return XdistPart.model_validate(part, strict=False).to_json()  # the model the controller reads back


def _gpus_seen() -> list[str]:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


class XdistWorker:
    """Registered in a worker's pytest_configure: pins it, then keeps its part file current."""

    def __init__(self, config: pytest.Config, info: WorkerInfo, suite_getter: Callable[[], object | None]):
        from streamllm.results import write_json_atomic

        self.config, self.info, self._suite = config, info, suite_getter
        self.worker = config.workerinput["workerid"]
        self.notes = apply_pinning(info.pinning)
        self.path = Path(info.parts_dir) / f"{info.pinning.slot}-{self.worker}.json"
        self._write = write_json_atomic
        self._cells: dict[str, dict[str, str]] = {}
        self._written = -1

    def write(self, complete: bool = False) -> None:
        suite = self._suite()
        count = len(suite.results) if suite is not None else 0
        if not complete and count == self._written:
            return
        self._write(self.path, part_json(suite, worker=self.worker, info=self.info, cells=self._cells,
                                         complete=complete, notes=self.notes))
        self._written = count

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        for item in session.items:
            callspec = getattr(item, "callspec", None)
            if callspec is not None and "bench_case" in callspec.params:
                self._cells[item.nodeid] = {"case": callspec.params["bench_case"].id,
                                            "dataset": callspec.params["bench_dataset"],
                                            "label": callspec.params["bench_case"].label}
        if self._cells:  # a part from the start: a worker that crashes on its first cell still names its cells
            self.write(complete=False)

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logfinish(self, nodeid: str, location) -> None:
        if self._cells:
            self.write()

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self._cells:
            self.write(complete=True)


# -- merging -------------------------------------------------------------------------------------
@dataclass
class Merged:
    run: dict  # the run record (not yet validated)
    records: list  # BaselineRecord
    history: list[tuple[dict, dict[str, list[float]], dict[str, bool]]]  # (fingerprint, samples, accepted)
    missing: list[str] = field(default_factory=list)  # cell ids with no result


def read_parts(parts_dir: Path) -> list[dict]:
    """Every part in `parts_dir` (validated by `schema.XdistPart`, through the one loader), in slot
    order. A part that does not load is kept as an entry naming the file and why (its worker's
    cells then come out MISSING), not raised: the other workers' cells are still merged."""
    from streamllm.harness.schema import StoredFileError, load_stored

    parts = []
    for path in sorted(parts_dir.glob("*.json")):
        try:
            parts.append(load_stored(path, XdistPart).to_json())
        except StoredFileError as exc:
            parts.append({"schema": PART_SCHEMA, "worker": path.stem, "unreadable": str(exc), "cells": {}})
    return sorted(parts, key=lambda p: ((p.get("pinning") or {}).get("slot", 0), str(p.get("worker"))))


def merge_parts(parts: Sequence[Mapping[str, Any]], collected: Sequence[str], crashed: Mapping[str, str], *,
                command: str, runtime_s: float, timing_refused: str | None = None) -> Merged:
    """One run record from the workers' parts, in collection order.

    `collected`: the nodeids xdist collected (every worker collects the same list); `crashed`:
    nodeid -> worker id that crashed running it. A collected cell with no result in any part
    becomes a MISSING row (skipped, with the reason) so the table and the report name it."""
    runs = [p for p in parts if p.get("run")]
    cells: dict[str, dict[str, str]] = {}
    for p in parts:
        cells.update(p.get("cells") or {})
    by_cell: dict[str, dict] = {}
    for p in runs:
        for r in p["run"]["results"]:
            by_cell.setdefault(f"{r['case']}-{r['dataset']}", {**r, "worker": p["worker"]})
    order = [cell_id(n) for n in collected] or list(by_cell)
    nodeid_of = {cell_id(n): n for n in collected}
    raw_by_cell: dict[str, dict] = {}
    for p in runs:
        for c in (p["run"].get("raw") or {}).get("cases") or []:
            raw_by_cell.setdefault(f"{c['case']}-{c['dataset']}", c)
    results, missing, raw_cases = [], [], []
    for cid in order:
        if cid in by_cell:
            results.append(by_cell.pop(cid))
            if cid in raw_by_cell:
                raw_cases.append(raw_by_cell.pop(cid))
            continue
        nodeid = nodeid_of.get(cid, cid)
        meta = cells.get(nodeid) or {}
        worker = crashed.get(nodeid)
        why = (f"MISSING: worker {worker} crashed while running it; its result is lost (the other cells of that "
               "worker are kept)") if worker else "MISSING: no worker reported a result (stopped early or interrupted)"
        case, dataset = meta.get("case"), meta.get("dataset")
        if case is None:
            case, _, dataset = cid.rpartition("-")
        results.append({"dataset": dataset, "case": case, "label": meta.get("label", case), "skipped": why,
                        "ppl": None, "ppl_delta_vs_dense_pct": None, "tpot_ms_mean": None, "tpot_ms_median": None,
                        "speedup": None, "verdicts": {"a": MISSING, "b": MISSING, "c": MISSING}, "missing": True})
        raw_cases.append({"case": case, "dataset": dataset, "label": meta.get("label", case), "text": dataset,
                          "baseline_key": {}, "skipped": why})
        missing.append(cid)
    results.extend(by_cell.values())  # results of cells not collected here (should not happen): kept
    raw_cases.extend(raw_by_cell.values())
    base = dict(runs[0]["run"]) if runs else {"schema": _run_schema(), "options": {}, "fingerprint": {},
                                               "fingerprint_id": None, "model": None}
    base.update({
        "created": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "runtime_s": runtime_s,
        "command": command,
        "results": results,
        "xdist": {
            "workers": [{"worker": p.get("worker"), "pid": p.get("pid"), "pinning": p.get("pinning"),
                         "visible": p.get("visible"),
                         "complete": p.get("complete", False), "notes": p.get("notes", []),
                         "unreadable": p.get("unreadable"),
                         "fingerprint_id": (p.get("run") or {}).get("fingerprint_id"),
                         "threads": (p.get("run") or {}).get("threads"),
                         "runtime_s": (p.get("run") or {}).get("runtime_s"),
                         "cells": len((p.get("run") or {}).get("results", []))} for p in parts],
            "missing": missing,
            "timing": timing_refused or "timed in each worker",
            "benchmark": BENCHMARK_NOTE,
        },
    })
    if base.get("raw"):
        # one raw record: the first worker's conditions (workers of one run share options and, on
        # like GPUs, the fingerprint), every worker's cases in collection order
        base["raw"] = {**base["raw"], "cases": raw_cases}
    records = [record_from_json(r) for p in parts for r in p.get("records") or []]
    history = [(p["history"]["fingerprint"], p["history"]["samples"], p["history"]["accepted"])
               for p in parts if p.get("history")]
    return Merged(base, records, history, missing)


def _run_schema() -> str:
    from streamllm.harness.records import RUN_SCHEMA

    return RUN_SCHEMA


# -- the controller side ---------------------------------------------------------------------------
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
        if self.end is not None:  # the same lines a serial run prints (bench/finish.py)
            for line in self.end.lines:
                tr.write_line(line, red=line == self.end.outcome.unarmed, bold=line == self.end.outcome.unarmed)
        if self.error:
            tr.write_line(f"ERROR: {self.error}")


def _command() -> str:
    name = Path(sys.argv[0]).name
    return " ".join(["python -m pytest" if name == "__main__.py" else name, *sys.argv[1:]])
