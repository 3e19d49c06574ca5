"""The package's layout rules, read from the source: no import cycle (function-level imports
included), the product never imports the regression harness, only the judge modules construct a
`Check` (the one carrier of a verdict word), and only they and a documented list of readers import
the verdict words themselves (bench/ measures and stores; it never writes a verdict). And the
route of one TPOT sample as docs/architecture.md lists it: at most 6 files to the verdict and for
`streamllm compare`, the live table's and record's no longer than today's 9, each linked to the stop before it, no other module handling the sample."""

from __future__ import annotations

import ast
import re
from itertools import pairwise
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "streamllm"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, at any depth of the file (functions included)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                # the deepest package module the import names (a name inside a module counts as the module)
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_product_never_imports_the_harness():
    graph = import_graph()
    offenders = {m: sorted(t for t in targets if t.startswith("streamllm.harness"))
                 for m, targets in graph.items() if not m.startswith("streamllm.harness")}
    assert not {m: t for m, t in offenders.items() if t}


def test_the_stored_file_schema_is_a_leaf_of_the_harness():
    """streamllm.harness.schema (the stored files' models) lives in the harness and sits under it:
    it imports the run record's models and nothing else of the package (no product module, no
    store with rules), so every reader and writer can import it without a cycle."""
    graph = import_graph()
    allowed = {"streamllm.harness.records", "streamllm.harness.verdicts"}
    offenders = {m: sorted(t for t in targets if not t.startswith("streamllm.harness.schema") and t not in allowed)
                 for m, targets in graph.items() if m.startswith("streamllm.harness.schema")}
    assert any(m.startswith("streamllm.harness.schema") for m in graph)
    assert not {m: t for m, t in offenders.items() if t}


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# -- who produces verdict words ------------------------------------------------------------------
# Issue #28: only the judge modules turn measurements into verdict words. A verdict word reaches the
# table only inside a `Check`, so the rule is read as "only these modules construct a Check".
ROOT = PACKAGE.parent
JUDGE_MODULES = frozenset({
    "streamllm/harness/judge.py", "streamllm/harness/judge_ppl.py", "streamllm/harness/judge_work.py",
    "streamllm/harness/judge_ratio.py", "streamllm/harness/judge_history.py", "streamllm/harness/judge_device_time.py",
    "streamllm/harness/numerics.py",
    "streamllm/harness/findings.py", "streamllm/harness/bands.py", "streamllm/harness/verdicts.py",
    "streamllm/harness/history_verdict.py",
})
# Documented exceptions, each with why it is still there; remove an entry when its construction
# moves into a judge module (the test fails on a stale entry).
CHECK_EXCEPTIONS: dict[str, str] = {}


def check_constructions(source: str) -> int:
    """How many `Check(...)` / `<module>.Check(...)` calls the source makes."""
    return sum(isinstance(node, ast.Call) and (
        (isinstance(node.func, ast.Name) and node.func.id == "Check")
        or (isinstance(node.func, ast.Attribute) and node.func.attr == "Check"))
        for node in ast.walk(ast.parse(source)))


def test_only_the_judge_modules_construct_checks():
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "bench").rglob("*.py"), *(ROOT / "scripts").rglob("*.py"),
             ROOT / "conftest.py"]
    builders = {p.relative_to(ROOT).as_posix() for p in files if check_constructions(p.read_text())}
    assert builders - JUDGE_MODULES - set(CHECK_EXCEPTIONS) == set(), "construct a Check outside the judge modules"
    assert set(CHECK_EXCEPTIONS) <= builders, "a documented exception constructs no Check any more: drop it"


def test_the_check_scanner_sees_both_spellings():
    assert check_constructions('Check("tpot", "x", PASS, "m")\nverdicts.Check("ppl", "y", FAIL, "m")') == 2
    assert check_constructions("checks: list[Check] = []\nisinstance(c, Check)") == 0


# -- who imports the verdict words ---------------------------------------------------------------
# The words a judge ends a check in. MISSING is not one: it marks a case whose result never came
# back (set by the run's collection, bench/xdist_merge.py), not a judgement of a measurement.
VERDICT_WORDS = frozenset({"PASS", "FAIL", "INCONCLUSIVE", "NOT_CHECKED", "RECORDED", "NOT_APPLICABLE", "ERROR"})
# Modules besides the judge modules that import a verdict word, each with why; a stale entry fails.
WORD_READERS = {
    # the judges' helpers: pure rules that judge.py / the judge_*.py modules call with the raw numbers
    "streamllm/harness/stats.py": "the CI rules the judges call (a paired CI against a band)",
    "streamllm/harness/work_compare.py": "the exact work-count comparison check_work calls",
    "streamllm/harness/bisect.py": "the timing bisect's good/bad call on a commit's paired ratios (not a suite row)",
    # the check record: its failed / unchecked flags read the words of the verdict it carries
    "streamllm/harness/records.py": "Check.unchecked reads NOT_CHECKED / RECORDED (the record, not a judge)",
    # readers: they show or count verdicts the judge produced, never produce one
    "streamllm/harness/table.py": "the terminal table colours and counts the judge's verdicts",
    "streamllm/harness/report_view.py": "streamllm report shows and marks the verdicts a run stored",
    "streamllm/harness/trend.py": "the trend plot marks points the history rule flags",
    "bench/test_strategies.py": "maps a check's stored verdict to pytest's outcome (xfail on inconclusive)",
    "scripts/band_calibration.py": "counts the FAILs of simulated checks (false-alarm rate)",
}


def verdict_words_imported(source: str) -> set[str]:
    """The verdict words a source imports from a `verdicts` module or reads as `verdicts.WORD`."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").rpartition(".")[2] == "verdicts":
            found |= {a.name for a in node.names if a.name in VERDICT_WORDS}
        elif isinstance(node, ast.Attribute) and node.attr in VERDICT_WORDS and isinstance(node.value, ast.Name) \
                and node.value.id == "verdicts":
            found.add(node.attr)
    return found


def test_only_the_judge_modules_import_the_verdict_words():
    """Issue #28: bench/ measures and stores raw numbers; the words a check ends in come from the
    judge (streamllm/harness/judge.py and the modules it calls), so a stored run re-judged by
    `streamllm compare` gets the verdicts the suite printed."""
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "bench").rglob("*.py"), *(ROOT / "scripts").rglob("*.py"),
             ROOT / "conftest.py"]
    importers = {p.relative_to(ROOT).as_posix(): words for p in files if (words := verdict_words_imported(p.read_text()))}
    outside = {m: sorted(w) for m, w in importers.items() if m not in JUDGE_MODULES and m not in WORD_READERS}
    assert outside == {}, "import a verdict word outside the judge modules (bench/ stores raw numbers only)"
    assert set(WORD_READERS) <= set(importers), "a documented reader imports no verdict word any more: drop it"


def test_the_word_scanner_sees_both_spellings():
    src = "from streamllm.harness.verdicts import PASS, Check\nfrom .verdicts import FAIL\nx = verdicts.ERROR\n"
    assert verdict_words_imported(src) == {"PASS", "FAIL", "ERROR"}
    assert verdict_words_imported("from .verdicts import MISSING, Check, RATIO_CHECK") == set()


# -- module size ------------------------------------------------------------------------------------
MAX_LINES = 400
# Files kept whole on purpose, each with why (issue #28: "except where one self-contained file is the point").
WHOLE_FILES = {
    "scripts/kernel_bench.py": "one GPU benchmark command run as a unit on a lent device; its parts share its CLI and tables",
}


def test_no_module_over_400_lines_but_the_files_kept_whole():
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "bench").rglob("*.py"), *(ROOT / "scripts").rglob("*.py"),
             ROOT / "conftest.py"]
    long = {p.relative_to(ROOT).as_posix(): n for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert {m: n for m, n in long.items() if m not in WHOLE_FILES} == {}, "split it into modules with one job each"
    assert set(WHOLE_FILES) <= set(long), "a file kept whole is short now: drop it from WHOLE_FILES"


# -- the route of one TPOT sample (issue #28) -------------------------------------------------------
ARCHITECTURE = ROOT / "docs" / "architecture.md"
ROUTE_SECTION = "## The route of one TPOT sample"
MAX_ROUTE = 6  # issue #28: clock -> raw record -> judge -> table through at most 6 files
# the live run's table and record do not meet it yet (docs/architecture.md says why): today's counts, so
# the route cannot grow back unnoticed
LIVE_CAPS = {"table": 9, "record": 9}
# The routes whose length issue #28's target applies to (the others are documented and linked, not capped).
CAPPED_ROUTES = ("verdict", "compare")
# What carries a TPOT sample between files: the clock and the decode step, the timing run and the
# TPOT definitions, the raw record's arm and case, the ratio's statistic and judge. A module that
# imports one of these takes part in some TPOT sample's route.
SAMPLE_CARRIERS = {
    "streamllm.decode_slice": {"Clock", "DecodeSlice"},
    "streamllm.measure": {"TimingRun", "collect", "time_rounds", "time_interleaved", "time_steady_state",
                          "whole_cycles", "tpot_ms", "speedup"},
    "streamllm.harness.records": {"RawArm", "RawCase", "RawRun"},
    "streamllm.harness.judge_ratio": {"ratio_ci", "RatioCI", "RatioVerdict", "check_ratio", "band_verdict",
                                      "pair_log_ratios", "check_ratio_vs_baseline"},
}
# Modules off the documented routes that import a sample carrier, each with why; each must be
# named in the route section of docs/architecture.md, and a stale entry fails.
ROUTE_NEIGHBOURS = {
    "bench/probes.py": "DecodeSlice as a type: reads the slices' caches and decoders, never their step times",
    "streamllm/calibration.py": "Clock: the torch-only calibration arm's own samples (a branch into the history check)",
    "streamllm/harness/judge_device_time.py": "ratio_ci / band_verdict on a graph row's device-time samples (a branch)",
    "streamllm/harness/numerics.py": "RawCase's (a) inputs (eviction, own path), not its timing",
    "streamllm/harness/schema/__init__.py": "re-exports the run record's models (the stored-file schema)",
    "streamllm/harness/band_simulation.py": "simulated samples through the ratio judge (docs/bands.md), none measured",
    "scripts/convert_old_runs.py": "RawArm / RawCase from an old run file's stored numbers, not a measurement",
    "streamllm/ownpath.py": "DecodeSlice: the own path's untimed decode",
    "streamllm/evaluate.py": "`streamllm eval`'s token loop: its own Clock, tpot_ms and speedup (another route)",
    "streamllm/cli.py": "`streamllm eval --timing slice`: time_steady_state (another route)",
    "streamllm/steptime.py": "the prune-step split of step times: `streamllm eval` and the trace finding's branch",
    "streamllm/parallel.py": "`streamllm eval`'s parallel evaluator reports a TimingRun (another route)",
    "streamllm/profile.py": "scripts/gpu_tpot.py's steady-state variants: time_rounds (another route)",
    "scripts/phase_a_delta.py": "time_steady_state for the phase A diagnostics (another route)",
}


def route_section() -> str:
    text = ARCHITECTURE.read_text()
    start = text.index(ROUTE_SECTION)
    end = text.find("\n## ", start + len(ROUTE_SECTION))
    return text[start:] if end < 0 else text[start:end]


def documented_routes(section: str | None = None) -> dict[str, list[str]]:
    """Each `<!-- route:NAME -->` block of the route section: the files counted, in order (the first
    backquoted path of each numbered line)."""
    section = route_section() if section is None else section
    routes = {}
    for name, body in re.findall(r"<!-- route:(\w+) -->\n(.*?)<!-- /route -->", section, re.S):
        routes[name] = [m.group(1) for line in body.splitlines() if (m := re.match(r"\d+\. `([^`]+)`", line))]
    return routes


def source_files() -> list[Path]:
    return [*PACKAGE.rglob("*.py"), *(ROOT / "bench").rglob("*.py"), *(ROOT / "scripts").rglob("*.py"),
            ROOT / "conftest.py"]


def imports_of(path: Path) -> dict[str, set[str]]:
    """Module -> the names `path` imports from it, at any depth (functions and TYPE_CHECKING blocks
    included); `import x.y` counts as importing the module itself (name "")."""
    package = ".".join(path.relative_to(ROOT).parts[:-1])  # a module's package; an __init__.py's own
    out: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                out.setdefault(a.name, set()).add("")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for a in node.names:
                out.setdefault(base, set()).add(a.name)
                out.setdefault(f"{base}.{a.name}", set()).add("")  # `from pkg import module`
    return out


def module_of(path: str) -> str:
    parts = Path(path).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def linked(a: str, b: str) -> bool:
    """Whether file b imports file a or a imports b (a type, a function: either way one calls the other)."""
    return module_of(a) in imports_of(ROOT / b) or module_of(b) in imports_of(ROOT / a)


def test_the_documented_route_is_at_most_six_files_to_the_verdict_and_for_compare():
    routes = documented_routes()
    assert set(CAPPED_ROUTES) <= set(routes), f"docs/architecture.md lists the routes {sorted(routes)}"
    for name, files in routes.items():
        assert files, f"route {name}: no files listed"
        assert len(files) == len(set(files)), f"route {name} names a file twice: {files}"
        assert all((ROOT / f).is_file() for f in files), f"route {name}: {[f for f in files if not (ROOT / f).is_file()]}"
    for name in CAPPED_ROUTES:
        assert len(routes[name]) <= MAX_ROUTE, f"route {name}: {len(routes[name])} files: {routes[name]}"
    for name, cap in LIVE_CAPS.items():
        assert len(routes[name]) <= cap, f"route {name}: {len(routes[name])} files (was {cap}): {routes[name]}"
    # the live routes share their start: the verdict's files, in order, before the table or the record
    for name in ("table", "record"):
        assert routes[name][: len(routes["verdict"])] == routes["verdict"], name


def test_each_stop_on_the_route_is_linked_to_one_before_it():
    """A documented route is a chain of imports: each file imports the types or functions of a file
    before it on the route, or is imported (called) by one: the one just before it, or, where a
    value returns to its caller (the judge's Check to bench/measuring.py, the re-judged checks to
    compare.py), an earlier one. A file listed but off the route breaks the chain, unless an earlier
    stop happens to import it for something else (bands.py, read by judge_ratio.py, would pass after
    it): the chain proves a link, not that the sample takes it; the carriers test below and the
    counting rule in docs/architecture.md do the rest."""
    for name, files in documented_routes().items():
        loose = [f for i, f in enumerate(files) if i and not any(linked(e, f) for e in files[:i])]
        assert not loose, f"route {name}: linked to no file before it: {loose}"
        # most steps go straight on: count the returns, so a route that zigzags shows up here
        returns = [b for a, b in pairwise(files) if not linked(a, b)]
        assert len(returns) <= 1, f"route {name}: more than one step back to a caller: {returns}"


def test_only_the_route_and_its_documented_neighbours_import_what_carries_a_sample():
    """What this catches: a new module that starts handling TPOT samples through the clock, the
    timing run, the raw arm or the ratio's statistic (it imports one of them) without being on a
    documented route or named, with why, as a neighbour; a neighbour that no longer imports one;
    a neighbour the route section of docs/architecture.md does not name.

    What it cannot catch: a module that receives samples without importing their carriers (plain
    floats: the history check's judge_history.py / history.py / history_verdict.py; the run record
    as a dict: report_*.py, xdist_*.py; a TimingRun read through another object:
    bench/measure_findings.py), nor a longer call path inside the listed files. Those are listed in
    the route section by hand, as branches."""
    routes = documented_routes()
    on_route = {f for files in routes.values() for f in files}
    importers = {}
    for path in source_files():
        got = {f"{m}.{n}" for m, names in imports_of(path).items() if m in SAMPLE_CARRIERS
               for n in names & SAMPLE_CARRIERS[m]}
        if got:
            importers[path.relative_to(ROOT).as_posix()] = sorted(got)
    off_route = {f: names for f, names in importers.items() if f not in on_route and f not in ROUTE_NEIGHBOURS}
    assert off_route == {}, "handles a TPOT sample off the documented route: add it to the route or ROUTE_NEIGHBOURS"
    assert set(ROUTE_NEIGHBOURS) <= set(importers), "a neighbour imports no sample carrier any more: drop it"
    section = route_section()
    assert [f for f in ROUTE_NEIGHBOURS if f"`{f}`" not in section] == [], "name each neighbour in the route section"


def test_the_route_parser_reads_numbered_files_between_the_markers():
    text = "<!-- route:demo -->\n1. `a/b.py` — one\n   more words\n2. `c.py` — two\n<!-- /route -->\n"
    assert documented_routes(text) == {"demo": ["a/b.py", "c.py"]}
