"""Counts-only runner for one case: load, fill to steady state, warm up, count a few steps.

One file serves three callers, so that a count means the same thing in each:

- `streamllm count` imports it and counts with this checkout's library;
- `streamllm bisect` copies it (with counters.py) out of the checkout and runs it as a script
  inside a scratch checkout of each commit, where `import streamllm` is *that commit's* library;
- `streamllm drift` runs it as a script under one venv per transformers release.

As a script it runs from a copy beside counters.py (never from harness/, whose bisect.py would
shadow the standard library's on sys.path).

So it touches the library only through names that have existed since the static/ring caches
landed (fea9cf9): `strategies.make_strategy`, `models.load_model`, `data.load_text/tokenize/
synthetic_ids`, `decode.make_cache` + `decode.EagerDecoder` (the foundation's `cache.build_cache`
and a bare forward before that). It never imports streamllm.harness: old commits have no such
package, and HEAD's counters arrive as a module object (`--counters PATH` in script mode).

The cache is filled by real decode steps through the commit's own decoder (not a chunked
forward or random K/V), so every commit reaches steady state the same way whatever helpers it
has. Script mode exits 0 (counted, and equal to `--against` when given), 1 (counted, differs
from `--against`), or 125 (cannot count this commit: git bisect's "skip").
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

EXIT_SAME, EXIT_DIFFERENT, EXIT_SKIP = 0, 1, 125

# Case ids shared with the bench catalog (bench/catalog.py) and their strategy parameters.
NAMED_CASES: dict[str, dict[str, Any]] = {
    "dense": {"strategy": "dense"},
    "strict": {"strategy": "strict"},
    "window": {"strategy": "window", "sink": 0},
    "no-shift": {"strategy": "no-shift"},
    "static": {"strategy": "strict", "cache": "static"},
    "ring": {"strategy": "strict", "cache": "ring"},
}
DEFAULT_CASES = ("dense", "strict", "lazy-c32", "static", "ring")
FILLS = ("fast", "steps")


class CaseError(ValueError):
    """A case that cannot be named or sized; the message says what to pass instead."""


@dataclass(frozen=True)
class CountCase:
    """One case to count: the strategy and where it runs. `steps`/`warmup` 0: derived from the cycle."""

    strategy: str = "strict"
    sink: int = 4
    window: int = 124
    compress_every: int = 1
    cache: str = "dynamic"
    model: str = "embedded"
    dataset: str = "book"
    tokens: int = 512
    dtype: str = "float32"
    device: str = "cpu"
    steps: int = 0
    warmup: int = 0
    name: str = ""
    fill: str = "fast"  # "fast": chunked forward / random K/V like measure.prepare_slice; "steps": real decode steps

    @property
    def cycle(self) -> int:
        return max(1, self.compress_every) if self.strategy != "dense" else 1

    @property
    def counted_steps(self) -> int:
        """A whole number of eviction cycles, at least 8 steps (so a per-step op shows as 8 in the totals)."""
        n = self.steps or 8
        return self.cycle * math.ceil(n / self.cycle)

    @property
    def warmup_steps(self) -> int:
        return self.cycle * math.ceil((self.warmup or 4) / self.cycle)

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.strategy == "dense":
            return "dense"
        parts = [self.strategy, f"s{self.sink}", f"w{self.window}"]
        if self.compress_every != 1:
            parts.append(f"c{self.compress_every}")
        if self.cache != "dynamic":
            parts.append(self.cache)
        return "-".join(parts)

    def strategy_params(self) -> dict[str, Any]:
        """make_strategy's keywords; the cache kind only when not dynamic (commits before the
        fixed caches have no such field and still count the dynamic cases)."""
        if self.strategy == "dense":
            params: dict[str, Any] = {}
        elif self.strategy == "window":
            params = {"window": self.window, "sink": 0}
        else:
            params = {"sink": self.sink, "window": self.window}
            if self.compress_every != 1:
                params["compress_every"] = self.compress_every
        if self.cache != "dynamic":
            params["cache"] = self.cache
        return params

    def fill_length(self) -> int:
        """Steps of real decoding before the warm-up: the cache at capacity (dense: half the text)."""
        if self.strategy == "dense":
            return self.tokens // 2
        return self.sink + self.window + self.cycle - 1

    def check(self) -> CountCase:
        for flag, value, least in (("--tokens", self.tokens, 2), ("--window", self.window, 1),
                                   ("--sink", self.sink, 0), ("--compress-every", self.compress_every, 1),
                                   ("--steps", self.steps, 0), ("--warmup", self.warmup, 0)):
            if value < least:
                raise CaseError(f"{flag} must be >= {least} (got {value})")
        if self.fill not in FILLS:
            raise CaseError(f"fill {self.fill!r} unknown; use one of {', '.join(FILLS)}")
        need = self.fill_length() + self.warmup_steps + self.counted_steps + 1
        if need > self.tokens:
            raise CaseError(f"{self.label}: filling {self.fill_length()}, warming up {self.warmup_steps} and "
                            f"counting {self.counted_steps} steps needs {need} tokens: pass --tokens {need} or more")
        return self

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> CountCase:
        return cls(**obj)


def named_case(name: str, base: CountCase) -> CountCase:
    """`strict`, `lazy-c32`, `static`, ... (the bench catalog's ids) on `base`'s model, text and sizes."""
    key = name.strip().lower()
    if key in NAMED_CASES:
        return replace(base, **{"compress_every": 1, "cache": "dynamic", **NAMED_CASES[key]}, name=key)
    if key.startswith("lazy-c") and key[6:].isdigit() and int(key[6:]) >= 1:
        return replace(base, strategy="lazy", compress_every=int(key[6:]), cache="dynamic", name=key)
    raise CaseError(f"unknown case {name!r}; use one of {', '.join(NAMED_CASES)} or lazy-c<R> (e.g. lazy-c32)")


def parse_cases(text: str, base: CountCase) -> list[CountCase]:
    cases = [named_case(part, base) for part in text.split(",") if part.strip()]
    if not cases:
        raise CaseError(f"no case given: pass --cases with e.g. {','.join(DEFAULT_CASES)}")
    return cases


# -- the library under test --------------------------------------------------------------------
class CannotCount(RuntimeError):
    """This library (commit, release) cannot run the case: its API lacks a piece or the case fails."""


@dataclass
class Library:
    """The `streamllm` that `import streamllm` finds, reached through names that outlived refactors."""

    root: str
    strategies: ModuleType
    models: ModuleType
    data: ModuleType
    decode: ModuleType | None
    legacy_cache: ModuleType | None
    compat: ModuleType | None
    api: str

    @classmethod
    def load(cls) -> Library:
        # Imported by name at run time on purpose: which streamllm this is (HEAD, an old commit)
        # is decided by sys.path, and a missing module means "cannot count", not a crash.
        try:
            package = importlib.import_module("streamllm")
            root = Path(package.__file__).resolve().parent
            strategies = _own_module("streamllm.strategies", root)
            models = _own_module("streamllm.models", root)
            data = _own_module("streamllm.data", root)
        except Exception as exc:  # noqa: BLE001 - any failure to import is a commit we cannot count
            raise CannotCount(f"import streamllm failed: {_one_line(exc)}") from exc
        decode = legacy = None
        try:
            decode = _own_module("streamllm.decode", root)
            api = "decode.make_cache + decode.EagerDecoder"
        except ModuleNotFoundError as exc:
            if exc.name != "streamllm.decode":  # decode exists but needs something missing: say that
                raise CannotCount(f"import streamllm.decode failed: {_one_line(exc)}") from exc
            try:
                legacy = _own_module("streamllm.cache", root)
            except Exception as exc:  # noqa: BLE001
                raise CannotCount(f"neither streamllm.decode nor streamllm.cache imports: {_one_line(exc)}") from exc
            api = "cache.build_cache + model forward"
        except Exception as exc:  # noqa: BLE001
            raise CannotCount(f"import streamllm.decode failed: {_one_line(exc)}") from exc
        try:
            compat = _own_module("streamllm.compat", root)
        except ModuleNotFoundError:  # before the compat seam: the cache went in as past_key_values
            compat = None
        return cls(str(root), strategies, models, data, decode, legacy, compat, api)

    def cache_kwargs(self, model: torch.nn.Module, cache: Any) -> dict[str, Any]:
        if self.compat is not None and hasattr(self.compat, "cache_kwargs"):
            return self.compat.cache_kwargs(model, cache)
        return {"past_key_values": cache, "use_cache": True}

    def decoder(self, model: torch.nn.Module, spec: Any) -> tuple[Any, Callable[[torch.Tensor], object]]:
        """(cache, step(token)) for `spec` through this library's own decode step."""
        if self.decode is not None:
            cache = self.decode.make_cache(spec, model)
            decoder = self.decode.EagerDecoder(model, cache)
            return cache, decoder.step
        if getattr(spec, "cache", "dynamic") != "dynamic":
            raise CannotCount("this commit has no fixed caches (streamllm.decode is missing)")
        cache = self.legacy_cache.build_cache(spec, model)
        device = next(model.parameters()).device

        def step(token: torch.Tensor) -> object:
            position = torch.tensor([[cache.next_position()]], device=device)
            logits = model(input_ids=token, position_ids=position, past_key_values=cache, use_cache=True).logits
            return logits[0, -1], cache.end_step()

        return cache, step


def _own_module(name: str, root: Path) -> ModuleType:
    """`name` from the package at `root` only. A module this commit lacks must not be found
    elsewhere: an editable install's finder sits after the path finder on sys.meta_path and
    would hand over another checkout's file for it."""
    module = importlib.import_module(name)
    where = getattr(module, "__file__", None)
    if where is None or root not in Path(where).resolve().parents:
        sys.modules.pop(name, None)
        raise ModuleNotFoundError(f"No module named {name!r} in {root} (found {where})", name=name)
    return module


def drop_editable_finders() -> None:
    """Script mode: remove editable-install finders (setuptools' __editable__ hooks), so that only
    sys.path (the commit's checkout on PYTHONPATH) decides what `import streamllm.x` finds."""
    # setuptools installs the finder class itself, not an instance: read the object's own module
    sys.meta_path[:] = [f for f in sys.meta_path if not str(getattr(f, "__module__", "")).startswith("__editable__")]


@dataclass
class Prepared:
    """A case at steady state: its step, the model and what it took to get there."""

    case: CountCase
    library: Library
    model: torch.nn.Module
    device: torch.device
    step: Callable[[], object]
    load_s: float
    fill_s: float
    filled_by: str  # "random" | "chunked" | "steps"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:300]}"


def prepare(case: CountCase, library: Library, loaded_models: dict | None = None) -> Prepared:
    """Load (or reuse) the model, build the case's cache and decoder, fill by real decode steps."""
    started = time.perf_counter()
    try:
        spec = library.strategies.make_strategy(case.strategy, **case.strategy_params())
    except TypeError as exc:  # an old StrategySpec without the field this case needs (cache=...)
        raise CannotCount(f"make_strategy({case.strategy!r}, {case.strategy_params()}) failed: {_one_line(exc)}") from exc
    key = (case.model, case.dtype, case.device)
    loaded = None if loaded_models is None else loaded_models.get(key)
    if loaded is None:
        loaded = library.models.load_model(case.model, dtype=case.dtype, device=case.device)
        if loaded_models is not None:
            loaded_models[key] = loaded
    model, device = loaded.model, torch.device(loaded.device)
    if loaded.tokenizer is None:
        ids = library.data.synthetic_ids(model.config.vocab_size, case.tokens)
    else:
        ids = library.data.tokenize(loaded.tokenizer, library.data.load_text(case.dataset), case.tokens)
    flat = ids.view(-1).to(device)
    if flat.numel() < case.tokens:
        raise CannotCount(f"the text gave {flat.numel()} tokens, the case needs {case.tokens}")
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    cache, step_token = library.decoder(model, spec)
    n = case.fill_length()
    with torch.inference_mode():
        how = fill_cache(case, library, model, cache, flat, n) if case.fill == "fast" else "steps"
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
    return Prepared(case, library, model, device, step, load_s, time.perf_counter() - started, how)


def fill_cache(case: CountCase, library: Library, model: torch.nn.Module, cache: Any, ids: torch.Tensor,
               n: int) -> str:
    """Jump to steady state the way measure.prepare_slice does, where this cache allows: fixed
    caches take random K/V (`prime_random`), the dynamic cache one chunked forward (before the
    first eviction every strategy is causal attention at positions 0..n-1). Returns how it was
    filled; "steps" means neither applied and the caller decodes n tokens."""
    if hasattr(cache, "prime_random"):
        cache.prime_random(n, torch.Generator(device=ids.device).manual_seed(0))
        return "random"
    if hasattr(cache, "slots") and hasattr(cache, "seen") and hasattr(cache, "end_step"):
        model(input_ids=ids[:n].view(1, -1), position_ids=torch.arange(n, device=ids.device).view(1, -1),
              **library.cache_kwargs(model, cache))
        if case.strategy == "dense":
            cache.end_step(n)  # dense accepts a chunk: it never evicts
        else:  # streaming caches refuse a chunk in end_step; below capacity n steps would keep all n
            cache.slots = list(range(n))
            cache.seen = n
        return "chunked"
    return "steps"


def count_prepared(prepared: Prepared, counters: ModuleType) -> Any:
    """count_work over the case's steady-state steps (one warm-up first); returns WorkCounts."""
    case = prepared.case
    key = counters.counter_key(prepared.model, device=prepared.device, strategy={"case": case.label, **case.strategy_params()},
                               decoder="eager", context=case.fill_length() if case.strategy == "dense" else None,
                               extra={"steps": case.counted_steps, "runner": "streamllm.harness.countrunner"})
    return counters.count_work(prepared.step, case.counted_steps, cycle=case.cycle, warmup=case.warmup_steps,
                               device=prepared.device, key=key)


def time_prepared(prepared: Prepared, steps: int) -> list[float]:
    """Wall ms of `steps` plain decode steps (whole cycles) after the warm-up; nothing counted."""
    case = prepared.case
    steps = case.cycle * math.ceil(steps / case.cycle)
    cuda = prepared.device.type == "cuda"
    out = []
    with torch.inference_mode():
        for _ in range(case.warmup_steps):
            prepared.step()
        for _ in range(steps):
            if cuda:
                torch.cuda.synchronize(prepared.device)
            t0 = time.perf_counter()
            prepared.step()
            if cuda:
                torch.cuda.synchronize(prepared.device)
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def tpot_ms(step_ms: list[float], cycle: int) -> float:
    """The per-process statistic the timing comparison uses: the median over whole cycles of the
    cycle-mean step time (a lazy prune counted once per cycle, an odd slow cycle not dominating)."""
    rows = [step_ms[i : i + cycle] for i in range(0, len(step_ms) - cycle + 1, cycle)]
    return statistics.median(sum(r) / len(r) for r in rows)


# -- the timing comparison --------------------------------------------------------------------
@dataclass(frozen=True)
class TimingVerdict:
    """Commit vs good over alternated process pairs: per pair the ratio of their per-process medians."""

    verdict: str  # "slower" | "not slower" | "inconclusive"
    ratios: list[float]
    median: float
    low: float  # a distribution-free interval for the median ratio (order statistics)
    high: float
    coverage: float
    threshold: float

    def text(self) -> str:
        return (f"{self.verdict}: commit/good step time x{self.median:.3f} (median of {len(self.ratios)} process pairs; "
                f"{self.coverage:.0%} interval x{self.low:.3f}..x{self.high:.3f}; a call needs the interval above x1 "
                f"with the median >= x{1 + self.threshold:.2f}, or wholly below x{1 + self.threshold:.2f})")


def median_interval(values: list[float], coverage: float = 0.9) -> tuple[float, float, float]:
    """(low, high, achieved coverage) of the order-statistic interval for the median: the
    narrowest [x_(k), x_(n+1-k)] whose binomial coverage is >= `coverage` (the widest, [min, max],
    when n is too small to reach it)."""
    xs = sorted(values)
    n = len(xs)
    best = (xs[0], xs[-1], 1 - 2 * 0.5 ** n)
    for k in range(1, n // 2 + 1):
        tail = sum(math.comb(n, i) for i in range(k)) / 2 ** n
        if 1 - 2 * tail >= coverage:
            best = (xs[k - 1], xs[n - k], 1 - 2 * tail)
    return best


def timing_verdict(ratios: list[float], threshold: float = 0.05) -> TimingVerdict:
    """slower: the interval is above 1 and the median ratio is at least 1 + threshold;
    not slower: the whole interval is below 1 + threshold; else inconclusive (noise forbids a call)."""
    low, high, cov = median_interval(ratios)
    med = statistics.median(ratios)
    if low > 1.0 and med >= 1.0 + threshold:
        verdict = "slower"
    elif high < 1.0 + threshold:
        verdict = "not slower"
    else:
        verdict = "inconclusive"
    return TimingVerdict(verdict, list(ratios), med, low, high, cov, threshold)


def time_pairs(good_tree: str, commit_tree: str, script: str, base_args: list[str], pairs: int,
               python: str = sys.executable, prefix: str = "./time") -> tuple[list[float], list[dict[str, Any]]]:
    """Alternate processes good, commit, good, commit, ...; each times the cases once (--mode time).
    Returns the per-pair ratios (commit / good, of the first case's per-process median) and the
    records. A process that fails raises CannotCount."""
    ratios, runs = [], []
    for i in range(pairs):
        tpot = {}
        for side, tree in (("good", good_tree), ("commit", commit_tree)):
            out = f"{prefix}-{side}-{i}.json"
            env = {**_clean_env(), "PYTHONPATH": tree, "OMP_NUM_THREADS": "1"}
            proc = subprocess.run([python, script, *base_args, "--mode", "time", "--out", out], cwd=tree, env=env,
                                  capture_output=True, text=True)
            record = json.loads(Path(out).read_text()) if Path(out).is_file() else {}
            if proc.returncode != 0 or record.get("status") != "ok":
                raise CannotCount(f"{side} timing process failed: {record.get('error') or proc.stderr[-300:]}")
            tpot[side] = record["results"][0]["tpot_ms"]
            runs.append({"side": side, "pair": i, "tpot_ms": tpot[side]})
        ratios.append(tpot["commit"] / tpot["good"])
    return ratios, runs


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


# -- script mode -------------------------------------------------------------------------------
# The harness modules counting needs, copied together beside this runner (counters imports the
# count records of workcounts, which use the verdict words): what `copy_tools` writes.
COUNTING_MODULES = ("counters.py", "workcounts.py", "verdicts.py")


def copy_tools(dest: Path) -> Path:
    """This runner and HEAD's counting modules copied into `dest` (a package folder for them); returns
    the runner's path. Run from a copy: as a script its folder leads sys.path, and harness/ holds a
    bisect.py that would shadow the standard library's."""
    here = Path(__file__).resolve().parent
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("countrunner.py", *COUNTING_MODULES):
        (dest / name).write_bytes((here / name).read_bytes())
    (dest / "__init__.py").write_text("")
    return dest / "countrunner.py"


def load_counters(path: str) -> ModuleType:
    """HEAD's counters.py, with the modules copied beside it, as a private package that no commit's
    `streamllm` shadows."""
    directory = Path(path).resolve().parent
    package = "_streamllm_head_counting"
    spec = importlib.util.spec_from_file_location(package, directory / "__init__.py",
                                                  submodule_search_locations=[str(directory)])
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load counters from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[package] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return importlib.import_module(f"{package}.counters")


def run_timing_step(args: argparse.Namespace) -> int:
    """git bisect run's step for --timing: this commit against the good tree, alternated processes."""
    base = ["--counters", args.counters, "--cases", args.cases, "--time-steps", str(args.time_steps)]
    prefix = str(Path(args.out).with_suffix("")) + "-time"  # beside this commit's record, one file per process
    record: dict[str, Any] = {"mode": "timing"}
    try:
        ratios, runs = time_pairs(args.good_tree, os.getcwd(), str(Path(__file__).resolve()), base, args.pairs,
                                  sys.executable, prefix)
    except CannotCount as exc:
        record.update(status="skip", error=str(exc))
        _write(args.out, record)
        return EXIT_SKIP
    verdict = timing_verdict(ratios, args.threshold)
    record.update(status="ok", verdict=verdict.verdict, text=verdict.text(), ratios=ratios, runs=runs)
    _write(args.out, record)
    return {"slower": EXIT_DIFFERENT, "not slower": EXIT_SAME}.get(verdict.verdict, EXIT_SKIP)


def run_script(args: argparse.Namespace) -> int:
    if args.mode == "timing-step":
        return run_timing_step(args)
    counters = load_counters(args.counters)
    cases = [CountCase.from_json(c) for c in json.loads(Path(args.cases).read_text())]
    record: dict[str, Any] = {"python": sys.executable, "torch": torch.__version__, "results": []}
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    try:
        library = Library.load()
        record["library"], record["api"] = library.root, library.api
        record["compat"] = None if library.compat is None else library.compat.__file__
        record["transformers"] = importlib.import_module("transformers").__version__
    except CannotCount as exc:
        record.update(status="skip", error=str(exc))
        _write(args.out, record)
        return EXIT_SKIP
    loaded_models: dict = {}
    for case in cases:
        entry: dict[str, Any] = {"case": case.to_json(), "label": case.label}
        t0 = time.perf_counter()
        try:
            prepared = prepare(case, library, loaded_models)
            entry.update(load_s=prepared.load_s, fill_s=prepared.fill_s, filled_by=prepared.filled_by)
            if args.mode == "time":
                entry["step_ms"] = time_prepared(prepared, args.time_steps)
                entry["tpot_ms"] = tpot_ms(entry["step_ms"], case.cycle)
            else:
                entry["counts"] = count_prepared(prepared, counters).to_json()
            entry["status"] = "ok"
        except Exception as exc:  # noqa: BLE001 - the error is the answer: this library cannot run the case
            entry.update(status="error", error=_one_line(exc), traceback=traceback.format_exc(limit=-4))
        entry["seconds"] = time.perf_counter() - t0
        record["results"].append(entry)
    record["seconds"] = time.perf_counter() - started
    failed = [r for r in record["results"] if r["status"] != "ok"]
    record["status"] = "ok" if not failed else ("partial" if len(failed) < len(cases) else "skip")
    if failed and len(failed) == len(cases):
        record["error"] = failed[0]["error"]
    code = EXIT_SAME
    if args.against and record["status"] == "ok":
        code = compare_with(record, json.loads(Path(args.against).read_text()), counters)
    elif args.against:
        code = EXIT_SKIP
    _write(args.out, record)
    return code


def compare_with(record: dict[str, Any], reference: dict[str, Any], counters: ModuleType) -> int:
    """Each case's counts against the reference run's (same labels): 1 if any differs; the diff
    lines go into the record."""
    theirs = {r["label"]: r for r in reference.get("results", []) if r.get("status") == "ok"}
    different = False
    for entry in record["results"]:
        ref = theirs.get(entry["label"])
        if ref is None:
            entry["diff"] = None
            continue
        mine = counters.WorkCounts.from_json(entry["counts"], "this commit's counts")
        lines = mine.diff(counters.WorkCounts.from_json(ref["counts"], "the reference counts"))
        entry["diff"] = lines
        different |= bool(lines)
    record["verdict"] = "different" if different else "same"
    return EXIT_DIFFERENT if different else EXIT_SAME


def _write(path: str | None, record: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(record, indent=1, default=str))


def _head_commit() -> str:
    """The commit checked out in the working directory (git bisect's current one), or "unknown"."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def script_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="count (or time) cases with the streamllm on sys.path")
    p.add_argument("--counters", required=True, help="path of the counters.py to count with")
    p.add_argument("--cases", required=True, help="JSON file: a list of CountCase objects")
    p.add_argument("--out", required=True, help="JSON record to write; {commit} becomes the checked-out commit")
    p.add_argument("--mode", choices=("count", "time", "timing-step"), default="count",
                   help="count: work counts; time: wall ms of plain steps; timing-step: this commit vs --good-tree "
                        "in alternated processes (exit 1 slower, 0 not slower, 125 inconclusive)")
    p.add_argument("--time-steps", type=int, default=32)
    p.add_argument("--good-tree", default=None, help="timing-step: checkout of the good commit")
    p.add_argument("--pairs", type=int, default=6, help="timing-step: process pairs (good, commit)")
    p.add_argument("--threshold", type=float, default=0.05, help="timing-step: slowdown that counts (0.05 = 5%%)")
    p.add_argument("--against", default=None, help="a record of this script: exit 1 if the counts differ")
    p.add_argument("--threads", type=int, default=1)
    return p


def main(argv: list[str] | None = None) -> int:
    args = script_parser().parse_args(argv)
    drop_editable_finders()
    if "{commit}" in args.out:
        args.out = args.out.replace("{commit}", _head_commit())
    try:
        code = run_script(args)
    except BaseException as exc:  # noqa: BLE001 - git bisect run aborts on codes > 127; anything unforeseen is a skip
        record = {"status": "skip", "error": _one_line(exc), "traceback": traceback.format_exc(limit=-4)}
        _write(args.out, record)
        code = EXIT_SKIP
    return code


if __name__ == "__main__":
    raise SystemExit(main())
