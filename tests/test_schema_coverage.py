"""Issue #28: every file the project reads loads through one pydantic model (streamllm/harness/schema,
`load_stored`). Pinned here by reading the source: a JSON parse (`json.load` / `json.loads`, or
pydantic's `model_validate_json` / `validate_json` on raw text) in streamllm/, bench/ or scripts/ is
in the schema loader or in ALLOWED below, each entry with why and its exact number of parses, so a
new bare parse fails and a stale entry fails too."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOADER = "streamllm/harness/schema/loader.py"
JSON_MODULES = frozenset({"json", "orjson", "ujson", "simplejson"})
RAW_TEXT_VALIDATORS = frozenset({"model_validate_json", "validate_json"})

# path -> (parses in it, why it is not `load_stored`). Keep it short and honest.
ALLOWED: dict[str, tuple[int, str]] = {
    "streamllm/harness/records.py": (1, "run records: `load_run` parses, then validates through the run record's "
                                        "own model (RunModel, re-exported by the schema package)"),
    "streamllm/harness/countrunner.py": (1, "the jobs file (schema.CountJobs), read by the runner inside other trees' "
                                            "venvs, which may import only the standard library and torch: it checks "
                                            "the schema string by hand"),
    "streamllm/harness/drift.py": (2, "a probed venv's stdout (its site-packages paths, its torch/transformers "
                                      "versions), not a file"),
    "streamllm/models.py": (1, "a shipped HF model config (streamllm/configs/*.json) handed to transformers' "
                               "AutoConfig, which checks it; the product never imports the harness"),
    "scripts/kernel_bench.py": (1, "the same shipped HF model config, for transformers' AutoConfig"),
    "scripts/convert_old_runs.py": (1, "old run records from `git show`, read before any current model fits them; "
                                       "what it writes is validated as a run record"),
}


def _round_trip(call: ast.Call) -> bool:
    """`json.loads(json.dumps(x))`: a value normalised in memory (tuples to lists), no text read."""
    arg = call.args[0] if call.args else None
    return isinstance(arg, ast.Call) and isinstance(arg.func, ast.Attribute) and arg.func.attr == "dumps"


def json_parses(source: str) -> int:
    """How many JSON parses the source makes: `<json module>.load(s)(...)`, a bare `load(s)(...)`
    imported from one, and pydantic's raw-text validators (a dumps-then-loads round trip is not one)."""
    tree = ast.parse(source)
    modules = set(JSON_MODULES)
    bare: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.asname for a in node.names if a.name in JSON_MODULES and a.asname}
        elif isinstance(node, ast.ImportFrom) and (node.module or "") in JSON_MODULES:
            bare |= {a.asname or a.name for a in node.names if a.name in ("load", "loads")}
    count = 0
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or _round_trip(node):
            continue
        func = node.func
        if isinstance(func, ast.Attribute):
            count += (func.attr in ("load", "loads") and isinstance(func.value, ast.Name) and func.value.id in modules) \
                or func.attr in RAW_TEXT_VALIDATORS
        elif isinstance(func, ast.Name):
            count += func.id in bare
    return count


def scanned() -> dict[str, int]:
    files = [*(ROOT / "streamllm").rglob("*.py"), *(ROOT / "bench").rglob("*.py"), *(ROOT / "scripts").rglob("*.py")]
    return {p.relative_to(ROOT).as_posix(): n for p in files if (n := json_parses(p.read_text(encoding="utf-8")))}


def test_every_json_parse_is_the_schema_loader_or_a_documented_exception():
    found = scanned()
    assert found.get(LOADER), "the scanner no longer sees the loader's own parse"
    unexplained = {path: n for path, n in found.items() if path != LOADER and path not in ALLOWED}
    assert unexplained == {}, "read it through streamllm.harness.schema (load_stored / read_json) or document why not"
    changed = {path: (found.get(path, 0), n) for path, (n, _) in ALLOWED.items() if found.get(path, 0) != n}
    assert changed == {}, "(found, allowed): a documented exception parses more or less than it says: update it"


def test_the_allowlist_says_why():
    assert all(len(why.split()) >= 5 for _, why in ALLOWED.values())


def test_the_scanner_sees_every_spelling():
    src = ("import json\nimport json as j\nfrom json import loads as parse, load\nfrom pydantic import TypeAdapter\n"
           "json.loads(t)\nj.load(f)\nparse(t)\nload(f)\nM.model_validate_json(t)\nTypeAdapter(M).validate_json(t)\n")
    assert json_parses(src) == 6
    assert json_parses("json.dumps(x)\nM.model_validate(d)\nread_json(p)\nyaml.load(f)\n"
                       "json.loads(json.dumps(x, default=str))\n") == 0
