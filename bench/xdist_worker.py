"""The worker side of `pytest bench -n N` (bench/xdist.py): what the controller hands a worker
(`WorkerInfo`, through xdist's workerinput), and the plugin that pins the worker and keeps its
part file current after every cell (`XdistWorker`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .pinning import Pinning, apply_pinning
from .xdist_parts import part_json

WORKERINPUT_KEY = "streamllm_xdist"  # our entry in xdist's workerinput dict


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
