"""Top-level pytest configuration: the benchmark suite's options, fixtures and reporting.

    pytest bench                                    # the CPU main job: embedded default, book + wiki
    pytest bench --benchmark-autosave               # ... and keep pytest-benchmark's run in .benchmarks/
    pytest bench --benchmark-compare                # compare with the last saved run
    pytest bench --update-baselines                  # re-record baselines/ on purpose
    pytest bench --model dummy:pythia-2.8b --device cuda --dtype float16   # GPU timing
    pytest bench --sweep compress                   # one of the log's sweeps (bench/catalog.py SWEEPS)
    pytest bench -n 2 --device cuda                 # pytest-xdist: one worker per GPU, one merged run (bench/xdist.py)

Everything here is cheap to import: the suite (torch, models) loads only when a bench test runs,
so `pytest tests` pays nothing for it. See bench/README.md for what each option means.
"""

from __future__ import annotations

import sys

import pytest

from bench.pinning import gpu_count
from bench.xdist import XdistController
from bench.xdist_worker import XdistWorker, worker_info

SUITE_KEY = pytest.StashKey["object"]()


def default_rounds(device: str | None) -> int:
    """8 measured rounds on CPU, 6 on a GPU (at least 6 pairs per row: the t-interval's df)."""
    return 6 if device is not None and device.startswith("cuda") else 8


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("streamllm bench", "streamllm benchmark suite (pytest bench)")
    group.addoption("--model", default="embedded",
                    help="embedded | HUB_ID | DIR | dummy:CONFIG (default: embedded; dummy = timing only)")
    group.addoption("--dataset", default="book,wiki",
                    help="comma list: book, wiki (embedded), wikitext, pg19 (need the hub), or text file paths")
    group.addoption("--tokens", type=int, default=None, help="first N tokens of each text (default 1024)")
    group.addoption("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default: cpu)")
    group.addoption("--dtype", default="float32", help="float32 | float16 | bfloat16 (default: float32)")
    group.addoption("--strategies", default="default",
                    help="default | all | comma list of case ids (see bench/catalog.py); 'default,lazy-c128' adds one")
    group.addoption("--sink", type=int, default=None, help="attention sinks S (default 4)")
    group.addoption("--window", type=int, default=None, help="recent window W (default 124)")
    group.addoption("--rounds", type=int, default=None,
                    help="measured rounds of a strict case, each interleaved with its reference (default 8 on "
                         "CPU; 6 on CUDA, whose per-round ratios are ~20x tighter: an inconclusive CI still "
                         "gets more rounds)")
    group.addoption("--warmup-rounds", type=int, default=1, help="warm-up rounds, excluded (default 1)")
    group.addoption("--steps-per-round", type=int, default=8,
                    help="decode steps per round, rounded up to whole eviction cycles (default 8)")
    group.addoption("--update-baselines", action="store_true",
                    help="write this run's PPL and TPOT into baselines/ (the only way baselines change)")
    group.addoption("--append-baselines", action="store_true",
                    help="add this run's TPOT to the stored baselines of this machine as one more run (PPL must "
                         "match); run it in a few separate processes so the TPOT band learns the run-to-run spread")
    group.addoption("--nightly", action="store_true",
                    help="absolute TPOT vs run history: flag a row only when the previous run flagged it too")
    group.addoption("--no-work-counts", action="store_true",
                    help="skip the (b) work counters (each case counts one round of separate steps)")
    group.addoption("--baselines-dir", default="baselines", help="baseline store root (default: baselines)")
    group.addoption("--report-dir", default="out",
                    help="the run JSON goes to REPORT_DIR/runs/ for `streamllm report` (default: out, ignored by "
                         "git; '' to skip)")
    group.addoption("--history-dir", default="history",
                    help="the run history the absolute TPOT check reads and appends to (default: history, tracked)")
    group.addoption("--threads", type=int, default=None, help="torch CPU threads (default: 1 on CPU, torch's on GPU)")
    group.addoption("--tpot-tolerance", type=float, default=0.10, help="TPOT ratio / history band (default ±10%%)")
    group.addoption("--sweep", default=None,
                    help="run a sweep instead of --strategies: window | sinks | compress | overlap | refresh | b2 | "
                         "context | gpu | all (all but context and gpu), comma list allowed; see bench/catalog.py SWEEPS")
    group.addoption("--evaluator", default="auto", choices=("auto", "token"),
                    help="PPL evaluator: auto (parallel where exact, else token loop) or token (always the loop)")
    group.addoption("--no-timing", action="store_true",
                    help="PPL only: no TPOT, work counts or timing findings (they show 'not checked'); implied by "
                         "-n on CPU, where workers would time each other")
    group.addoption("--device-map", default=None,
                    help="auto: spread the model over the visible GPUs with accelerate (models larger than one GPU)")
    group.addoption("--max-memory", default=None,
                    help="with --device-map: per-device caps, e.g. 0=20GiB,1=20GiB (forces a split for tests)")


def _options(config: pytest.Config):
    from bench.catalog import CONTEXT_TOKENS, DEFAULT_SINK, DEFAULT_TOKENS, DEFAULT_WINDOW
    from bench.suite import SuiteOptions

    get = config.getoption
    model = get("--model")
    strategies, sweeps = get("--strategies"), [s.strip() for s in (get("--sweep") or "").split(",") if s.strip()]
    if sweeps:
        # a sweep replaces the default selection; explicitly named --strategies are added to it
        named = "" if strategies == "default" else "," + strategies
        strategies = ",".join(f"sweep:{s}" for s in sweeps) + named
    # the context sweep's window is the model's whole trained context: it needs ~10k tokens
    tokens = get("--tokens") or (CONTEXT_TOKENS if "context" in sweeps else DEFAULT_TOKENS)
    datasets = tuple(d.strip() for d in get("--dataset").split(",") if d.strip())
    if model.startswith("dummy:"):
        datasets = ("synthetic",)  # no tokenizer: random ids stand in for text (timing only)
    if get("--update-baselines") and get("--append-baselines"):
        raise pytest.UsageError("--update-baselines replaces the stored records, --append-baselines adds a run to "
                                "them: pick one")
    info = worker_info(config)
    no_timing = info.timing_refused if info is not None else None
    if get("--no-timing"):
        no_timing = "--no-timing (PPL only)"
    if no_timing and (get("--update-baselines") or get("--append-baselines")):
        raise pytest.UsageError(f"--update-baselines / --append-baselines record TPOT, which this run does not measure "
                                f"({no_timing})")
    return SuiteOptions(
        model=model, datasets=datasets, tokens=tokens, device=get("--device"),
        dtype=get("--dtype"), strategies=strategies, sweep=",".join(sweeps) or None,
        sink=DEFAULT_SINK if get("--sink") is None else get("--sink"),
        window=DEFAULT_WINDOW if get("--window") is None else get("--window"),
        rounds=get("--rounds") or default_rounds(get("--device")), warmup_rounds=get("--warmup-rounds"), min_steps=get("--steps-per-round"),
        update_baselines=get("--update-baselines") or get("--append-baselines"),
        append_baselines=get("--append-baselines"), nightly=get("--nightly"),
        count_work=not get("--no-work-counts"), baselines_dir=get("--baselines-dir"),
        report_dir=get("--report-dir") or None, history_dir=get("--history-dir"), threads=get("--threads"), tpot_tolerance=get("--tpot-tolerance"),
        evaluator=get("--evaluator"), no_timing=no_timing, device_map=get("--device-map"),
        max_memory=get("--max-memory"),
    )


def _suite(config: pytest.Config):
    """The session's Suite, created on first use (only bench tests need it)."""
    suite = config.stash.get(SUITE_KEY, None)
    if suite is None:
        from bench.suite import Suite

        suite = Suite(_options(config), config.rootpath)
        config.stash[SUITE_KEY] = suite
    return suite


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "bench_case" not in metafunc.fixturenames:
        return
    from bench.catalog import datasets_for, select

    suite = _suite(metafunc.config)
    try:
        cases = select(suite.catalog, suite.options.strategies, suite.options.device_type)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    # Strategy-major order: dense first (the speedup reference), a transformed model is loaded once.
    options = suite.options
    pairs = [(case, dataset) for case in cases for dataset in datasets_for(case, options.datasets, options.strategies)]
    info = worker_info(metafunc.config)
    grouped = info is not None and info.loadgroup

    def marks(case) -> list:
        # sweep points carry the `sweep` marker (`-m "not sweep"` drops them from a mixed selection)
        out = [pytest.mark.sweep] if case.sweep_only else []
        if grouped and case.transform == "int8":
            # under xdist --dist loadgroup the INT8 cells share one worker: one quantized copy of
            # the model instead of one per worker (compile modes wrap the step, not the weights)
            out.append(pytest.mark.xdist_group("int8"))
        return out

    params = [pytest.param(case, dataset, id=f"{case.id}-{dataset}", marks=marks(case)) for case, dataset in pairs]
    metafunc.parametrize(("bench_case", "bench_dataset"), params)


@pytest.fixture(scope="session")
def bench_suite(request: pytest.FixtureRequest):
    return _suite(request.config)


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """CPU and GPU details, and the suite's hardware fingerprint: the one the verdict table and the
    history use (computed once, by the suite, with the thread count the suite times with)."""
    suite = _suite(config)
    machine_info["streamllm"] = {"fingerprint_id": suite.fingerprint_id, **suite.fingerprint}


# -- pytest-xdist (bench/xdist.py) ------------------------------------------------------------------
def pytest_sessionstart(session: pytest.Session) -> None:
    """A bench run loads its stored files before collecting: a broken one is one line naming the
    file and the fix, exit 2, before anything is measured (and nothing is written over it)."""
    config = session.config
    if hasattr(config, "workerinput") or not _runs_bench(config):
        return
    from streamllm.harness.schema import StoredFileError

    try:
        _suite(config).preflight_stored()
    except StoredFileError as exc:
        sys.stderr.write(f"streamllm: error: {exc}\n")
        pytest.exit("stored file unreadable", returncode=2)


def pytest_configure(config: pytest.Config) -> None:
    info = worker_info(config)
    if info is not None:  # an xdist worker our controller started: pin it before CUDA starts
        config.pluginmanager.register(XdistWorker(config, info, lambda: config.stash.get(SUITE_KEY, None)),
                                      "streamllm-xdist-worker")
    elif (not hasattr(config, "workerinput") and config.getoption("dist", "no") != "no"
          and config.getoption("tx", None) and not config.getoption("collectonly") and _runs_bench(config)):
        # the xdist controller: xdist's own (trylast) pytest_configure registers its DSession on
        # exactly this condition
        workers = len(config.getoption("tx"))
        config.pluginmanager.register(XdistController(config, workers, config.getoption("dist") == "loadgroup"),
                                      "streamllm-xdist-controller")


def _runs_bench(config: pytest.Config) -> bool:
    """The command line names the suite (bench/ or a path in it, or the whole repository): `pytest
    tests -n 2` keeps plain xdist (no pinning, no merge)."""
    from pathlib import Path

    bench = (config.rootpath / "bench").resolve()
    for arg in config.args:
        path = Path(arg.split("::")[0])
        path = (path if path.is_absolute() else Path(config.invocation_params.dir) / path).resolve()
        if path == bench or bench in path.parents or path in bench.parents:
            return True
    return False


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """`-n auto` with --device cuda (or auto on a GPU host): one worker per visible GPU (None: xdist's own rule)."""
    import os

    from bench.pinning import cuda_requested, visible_gpus

    if cuda_requested(config.getoption("--device")):
        return len(visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), gpu_count())) or None
    return None


RUN_END_KEY = pytest.StashKey["object"]()


def pytest_sessionfinish(session: pytest.Session) -> None:
    if hasattr(session.config, "workerinput"):
        return  # an xdist worker: its part goes to the controller, which finishes the one run (bench/xdist.py)
    suite = session.config.stash.get(SUITE_KEY, None)
    if suite is None or not suite.results:
        return
    end = suite.finish()  # bench/suite.py finish_run: the same end as the xdist controller's
    session.config.stash[RUN_END_KEY] = end
    if end.outcome.exit_code and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED  # e.g. --nightly with an unarmed row


def pytest_unconfigure(config: pytest.Config) -> None:
    suite = config.stash.get(SUITE_KEY, None)
    if suite is not None:
        suite.close()  # after the terminal summary (which reads the suite), the process-wide state goes back


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    suite = config.stash.get(SUITE_KEY, None)
    end = config.stash.get(RUN_END_KEY, None)
    if suite is None or end is None:
        return
    import time

    tr = terminalreporter
    o = suite.options
    loaded = suite.weights.loaded()
    name = loaded.name if loaded else o.model
    tr.section("streamllm verdicts")
    tr.write_line(f"{name} on {o.device} {o.dtype}, {o.tokens} tokens, S={o.sink} W={o.window}, "
                  f"fingerprint {suite.fingerprint_id}; {o.rounds} rounds x >= {o.min_steps} steps; "
                  f"wall {time.time() - suite.started:.0f} s")
    if o.no_timing:
        tr.write_line(f"TIMING NOT RUN: {o.no_timing}")
    tr.write_line(suite.time_line())
    tr.write_line(suite.rows_line())
    for line in end.lines:
        tr.write_line(line, red=line == end.outcome.unarmed, bold=line == end.outcome.unarmed)
