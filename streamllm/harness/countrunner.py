"""The counts runner: run decode steps of some cases in a target tree, write raw histograms as JSON.

Its one job. The target is whatever `import streamllm` finds: this checkout (`streamllm count`,
imported in process), an old commit's scratch checkout (`streamllm bisect`, PYTHONPATH=that tree)
or this checkout under another transformers release's venv (`streamllm drift`). For each case it
loads the model, fills the cache to steady state, warms up and then either counts `steps` decode
steps (`--mode count`: op name -> count, bytes, syncs, CUDA kernels by name) or times plain steps
(`--mode time`: wall ms per step). It writes what it saw and nothing else: no comparison, no
verdict, no exit code that means one. Comparing records is this checkout's (`countcases.py`,
`bisect.py`, `drift.py`); the file's layout is `schema/workrecord.py`'s `WorkRecord`.

Self-contained: this file imports only the standard library, torch, transformers (through the
target) and the target's own `streamllm` product modules, plus `opcount.py` beside it (the
dispatch-mode and profiler pass, itself importing only torch), which it loads by path. Both run in
place from this checkout's streamllm/harness/; nothing is copied into the target tree, and the
runner writes nothing there (its record goes to `--out`). Run as a script it first drops its own
folder from sys.path (harness/bisect.py would shadow the standard library's bisect).

It reaches the target only through names that have existed since the static/ring caches landed
(fea9cf9): `strategies.make_strategy`, `models.load_model`, `data.load_text/tokenize/synthetic_ids`,
`decode.make_cache` + `decode.EagerDecoder` (the foundation's `cache.build_cache` and a bare
forward before that), and `compat.cache_kwargs` where it exists.

    python countrunner.py --jobs JOBS.json --out RECORD.json [--mode count|time] [--time-steps N]

JOBS.json is `schema/count_jobs.py`'s `CountJobs`: its `schema` string and a list of
`countcases.CountCase.job()` objects. Exit 0 when the record is written (whatever it says: a case
that fails, or a jobs file of another schema, holds its error), 2 on bad arguments.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.realpath(__file__))
if __name__ == "__main__" and sys.path and os.path.realpath(sys.path[0] or ".") == _HERE:
    sys.path.pop(0)  # as a script: harness/ must not lead sys.path (its bisect.py shadows the stdlib's)

import argparse  # noqa: E402
import importlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

# The runner runs in other trees' venvs and may import only the standard library, torch and the
# target's product, never pydantic or the schema package: it keeps its own copies of the schema
# strings. tests/test_workrecord_schema.py and tests/test_schema_files.py pin them equal to the models'.
WORK_RECORD_SCHEMA = "streamllm.work-record/2"  # schema/workrecord.py's WorkRecord, written by hand
JOBS_SCHEMA = "streamllm.count-jobs/1"  # schema/count_jobs.py's CountJobs, checked by hand


class CannotCount(RuntimeError):
    """The target (commit, release) cannot run the case: its API lacks a piece or the case fails."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:300]}"


def load_opcount() -> ModuleType:
    """opcount.py beside this file, as a private module no target's `streamllm` can shadow."""
    if __package__:  # imported as streamllm.harness.countrunner: this checkout's own package
        return importlib.import_module(f"{__package__}.opcount")
    name = "_streamllm_runner_opcount"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(_HERE, "opcount.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve their module through sys.modules
        spec.loader.exec_module(module)
    return sys.modules[name]


def _own_module(name: str, root: Path) -> ModuleType:
    """`name` from the package at `root` only. A module the target lacks must not be found
    elsewhere: an editable install's finder sits after the path finder on sys.meta_path and
    would hand over another checkout's file for it."""
    module = importlib.import_module(name)
    where = getattr(module, "__file__", None)
    if where is None or root not in Path(where).resolve().parents:
        sys.modules.pop(name, None)
        raise ModuleNotFoundError(f"No module named {name!r} in {root} (found {where})", name=name)
    return module


def drop_editable_finders() -> None:
    """Script mode: only sys.path (the target on PYTHONPATH) decides what `import streamllm.x` finds."""
    # setuptools installs the finder class itself, not an instance: read the object's own module
    sys.meta_path[:] = [f for f in sys.meta_path if not str(getattr(f, "__module__", "")).startswith("__editable__")]


class Library:
    """The target's `streamllm`, reached through names that outlived refactors."""

    def __init__(self) -> None:
        # Imported by name at run time on purpose: which streamllm this is (HEAD, an old commit)
        # is decided by sys.path, and a missing module means "cannot count", not a crash.
        try:
            package = importlib.import_module("streamllm")
            self.root = Path(package.__file__).resolve().parent
            self.strategies = _own_module("streamllm.strategies", self.root)
            self.models = _own_module("streamllm.models", self.root)
            self.data = _own_module("streamllm.data", self.root)
        except Exception as exc:  # noqa: BLE001 - any failure to import is a target we cannot count
            raise CannotCount(f"import streamllm failed: {_one_line(exc)}") from exc
        self.decode = self.legacy_cache = None
        try:
            self.decode = _own_module("streamllm.decode", self.root)
            self.api = "decode.make_cache + decode.EagerDecoder"
        except ModuleNotFoundError as exc:
            if exc.name != "streamllm.decode":  # decode exists but needs something missing: say that
                raise CannotCount(f"import streamllm.decode failed: {_one_line(exc)}") from exc
            try:
                self.legacy_cache = _own_module("streamllm.cache", self.root)
            except Exception as exc2:  # noqa: BLE001
                raise CannotCount(f"neither streamllm.decode nor streamllm.cache imports: {_one_line(exc2)}") from exc2
            self.api = "cache.build_cache + model forward"
        except Exception as exc:  # noqa: BLE001
            raise CannotCount(f"import streamllm.decode failed: {_one_line(exc)}") from exc
        try:
            self.compat = _own_module("streamllm.compat", self.root)
        except ModuleNotFoundError:  # before the compat seam: the cache went in as past_key_values
            self.compat = None

    def cache_kwargs(self, model: torch.nn.Module, cache: Any) -> dict[str, Any]:
        if self.compat is not None and hasattr(self.compat, "cache_kwargs"):
            return self.compat.cache_kwargs(model, cache)
        return {"past_key_values": cache, "use_cache": True}

    def decoder(self, model: torch.nn.Module, spec: Any) -> tuple[Any, Callable[[torch.Tensor], object]]:
        """(cache, step(token)) for `spec` through the target's own decode step."""
        if self.decode is not None:
            cache = self.decode.make_cache(spec, model)
            return cache, self.decode.EagerDecoder(model, cache).step
        if getattr(spec, "cache", "dynamic") != "dynamic":
            raise CannotCount("this commit has no fixed caches (streamllm.decode is missing)")
        cache = self.legacy_cache.build_cache(spec, model)
        device = next(model.parameters()).device

        def step(token: torch.Tensor) -> object:
            position = torch.tensor([[cache.next_position()]], device=device)
            logits = model(input_ids=token, position_ids=position, past_key_values=cache, use_cache=True).logits
            return logits[0, -1], cache.end_step()

        return cache, step


def fill_cache(job: dict[str, Any], library: Library, model: torch.nn.Module, cache: Any, ids: torch.Tensor,
               n: int) -> str:
    """Jump to steady state the way decode_slice.prepare_slice does, where this cache allows: fixed
    caches take random K/V (`prime_random`), the dynamic cache one chunked forward (before the
    first eviction every strategy is causal attention at positions 0..n-1). Returns how it was
    filled; "steps" means neither applied and the caller decodes n tokens."""
    if hasattr(cache, "prime_random"):
        cache.prime_random(n, torch.Generator(device=ids.device).manual_seed(0))
        return "random"
    if hasattr(cache, "slots") and hasattr(cache, "seen") and hasattr(cache, "end_step"):
        model(input_ids=ids[:n].view(1, -1), position_ids=torch.arange(n, device=ids.device).view(1, -1),
              **library.cache_kwargs(model, cache))
        if job["strategy"] == "dense":
            cache.end_step(n)  # dense accepts a chunk: it never evicts
        else:  # streaming caches refuse a chunk in end_step; below capacity n steps would keep all n
            cache.slots = list(range(n))
            cache.seen = n
        return "chunked"
    return "steps"


def prepare(job: dict[str, Any], library: Library, models: dict) -> tuple[Callable[[], object], dict[str, Any]]:
    """Load (or reuse) the model, build the job's cache and decoder, fill to steady state: (step, facts)."""
    case = job["case"]
    started = time.perf_counter()
    try:
        spec = library.strategies.make_strategy(job["strategy"], **job["params"])
    except TypeError as exc:  # an old StrategySpec without the field this case needs (cache=...)
        raise CannotCount(f"make_strategy({job['strategy']!r}, {job['params']}) failed: {_one_line(exc)}") from exc
    key = (case["model"], case["dtype"], case["device"])
    if key not in models:
        models[key] = library.models.load_model(case["model"], dtype=case["dtype"], device=case["device"])
    loaded = models[key]
    model, device = loaded.model, torch.device(loaded.device)
    if loaded.tokenizer is None:
        ids = library.data.synthetic_ids(model.config.vocab_size, case["tokens"])
    else:
        ids = library.data.tokenize(loaded.tokenizer, library.data.load_text(case["dataset"]), case["tokens"])
    flat = ids.view(-1).to(device)
    if flat.numel() < case["tokens"]:
        raise CannotCount(f"the text gave {flat.numel()} tokens, the case needs {case['tokens']}")
    load_s, started = time.perf_counter() - started, time.perf_counter()
    cache, step_token = library.decoder(model, spec)
    n = job["fill_length"]
    with torch.inference_mode():
        how = fill_cache(job, library, model, cache, flat, n) if case["fill"] == "fast" else "steps"
    position = iter(range(0 if how == "steps" else n, flat.numel() - 1))

    def step() -> object:
        t = next(position, None)
        if t is None:
            raise RuntimeError(f"ran out of text ({flat.numel()} tokens): pass more --tokens")
        return step_token(flat[t : t + 1].view(1, 1))

    if how == "steps":
        with torch.inference_mode():
            for _ in range(n):
                step()
    return step, {"load_s": load_s, "fill_s": time.perf_counter() - started, "filled_by": how, "device": device}


def time_steps(step: Callable[[], object], job: dict[str, Any], device: torch.device, steps: int) -> list[float]:
    """Wall ms of `steps` plain decode steps (whole cycles) after the warm-up; nothing counted."""
    steps = job["cycle"] * math.ceil(steps / job["cycle"])
    cuda = device.type == "cuda"
    out = []
    with torch.inference_mode():
        for _ in range(job["warmup"]):
            step()
        for _ in range(steps):
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            step()
            if cuda:
                torch.cuda.synchronize(device)
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def run_jobs(jobs: list[dict[str, Any]], mode: str = "count", steps_to_time: int = 32) -> dict[str, Any]:
    """The record (schema/workrecord.py's WorkRecord layout) of `jobs` run against the importable streamllm."""
    started = time.perf_counter()
    record: dict[str, Any] = {"schema": WORK_RECORD_SCHEMA, "mode": mode, "python": sys.executable,
                              "torch": torch.__version__, "results": []}
    try:
        library = Library()
        record.update(library=str(library.root), api=library.api,
                      compat=None if library.compat is None else library.compat.__file__,
                      transformers=importlib.import_module("transformers").__version__)
        opcount = load_opcount() if mode == "count" else None
    except CannotCount as exc:
        record.update(error=str(exc), seconds=time.perf_counter() - started)
        return record
    models: dict = {}
    for job in jobs:
        entry: dict[str, Any] = {"label": job["label"], "case": job["case"]}
        t0 = time.perf_counter()
        try:
            step, facts = prepare(job, library, models)
            device = facts.pop("device")
            entry.update(facts)
            if mode == "time":
                entry["step_ms"] = time_steps(step, job, device, steps_to_time)
            else:
                entry["counts"] = opcount.count_work(step, job["steps"], cycle=job["cycle"], warmup=job["warmup"],
                                                     device=device)
        except Exception as exc:  # noqa: BLE001 - the error is what this target gives for the case
            entry.update(error=_one_line(exc), traceback=traceback.format_exc(limit=-4))
        entry["seconds"] = time.perf_counter() - t0
        record["results"].append(entry)
    record["seconds"] = time.perf_counter() - started
    return record


def read_jobs(path: str) -> list[dict[str, Any]]:
    """The jobs of a `CountJobs` file; CannotCount when it is of another schema (a runner and a
    writer of different checkouts), which the caller writes as the record's error."""
    data = json.loads(Path(path).read_text())
    got = data.get("schema") if isinstance(data, dict) else None
    if got != JOBS_SCHEMA or not isinstance(data.get("jobs"), list):
        raise CannotCount(f"jobs file {path} has schema {got!r}, this runner reads {JOBS_SCHEMA!r}: run the runner "
                          "of the checkout that wrote it (re-run its streamllm count / bisect / drift)")
    return data["jobs"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="run decode steps of cases with the streamllm on sys.path; write raw "
                                            "histograms (or step times) as JSON")
    p.add_argument("--jobs", required=True, help="JSON file: schema/count_jobs.py's CountJobs")
    p.add_argument("--out", required=True, help="the JSON record to write")
    p.add_argument("--mode", choices=("count", "time"), default="count")
    p.add_argument("--time-steps", type=int, default=32, help="--mode time: timed steps per case")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    drop_editable_finders()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        record = run_jobs(read_jobs(args.jobs), args.mode, args.time_steps)
    except BaseException as exc:  # noqa: BLE001 - anything unforeseen is still a record: the target failed
        record = {"schema": WORK_RECORD_SCHEMA, "mode": args.mode, "error": _one_line(exc), "results": []}
    Path(args.out).write_text(json.dumps(record, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
