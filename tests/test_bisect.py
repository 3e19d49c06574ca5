"""streamllm bisect / count: the timing rule, git bisect's answers, and a bisect over a synthetic
repository whose history adds one op to a cache's step and has two commits that do not build."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from streamllm.harness import bisect, countcases
from streamllm.harness.bisect import median_interval, timing_verdict
from streamllm.harness.cli import main
from streamllm.harness.countcases import CountCase, named_case
from streamllm.harness.schema.workrecord import WorkRecord

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git executable")


# -- the timing rule ----------------------------------------------------------------------------
def test_median_interval_is_the_narrowest_with_the_coverage():
    # n = 10: [x(2), x(9)] covers 1 - 2 * 11/1024 = 97.9 %; [x(3), x(8)] only 89.1 % (< 90 %)
    low, high, coverage = median_interval([1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9])
    assert (low, high) == (1.1, 1.8)
    assert coverage == pytest.approx(1 - 22 / 1024)


def test_timing_verdicts():
    assert timing_verdict([1.20, 1.18, 1.22, 1.19, 1.25, 1.21]).verdict == "slower"
    assert timing_verdict([0.99, 1.01, 1.00, 0.98, 1.02, 1.00]).verdict == "not slower"
    # half the pairs slower by 30 %, half not at all: noise forbids a call either way
    noisy = timing_verdict([0.95, 1.3, 1.0, 1.35, 0.97, 1.32])
    assert noisy.verdict == "inconclusive"
    assert "inconclusive" in noisy.text() and "x1.05" in noisy.text()
    # surely slower, but by less than the threshold: not a regression, not clean either
    assert timing_verdict([1.02, 1.03, 1.02, 1.03, 1.02, 1.03]).verdict == "not slower"
    assert timing_verdict([1.02, 1.03, 1.02, 1.03, 1.02, 1.03], threshold=0.01).verdict == "slower"


def test_parse_bisect_output():
    sha = "d84716946469df16d724af715b9dbe6fd90e7467"
    assert bisect.parse_bisect_output(f"running x\n{sha} is the first bad commit\ncommit {sha}\n") == (sha, [])
    skipped = ("There are only 'skip'ped commits left to test.\nThe first bad commit could be any of:\n"
               "aaaaaaaaaaaa\nbbbbbbbbbbbb\nWe cannot bisect more!\n")
    assert bisect.parse_bisect_output(skipped) == (None, ["aaaaaaaaaaaa", "bbbbbbbbbbbb"])


def test_named_cases_and_sizes():
    base = CountCase(tokens=512)
    assert named_case("lazy-c32", base).compress_every == 32
    assert named_case("ring", base).cache == "ring"
    assert named_case("static", base).strategy == "strict"
    with pytest.raises(countcases.CaseError, match="unknown case"):
        named_case("lazy-32", base)
    with pytest.raises(countcases.CaseError, match="--tokens 224 or more"):
        named_case("lazy-c32", CountCase(tokens=200)).check()


# -- the command line: bad input is one line and exit 2 -------------------------------------------
@pytest.mark.parametrize("argv, fix", [
    (["count", "--cases", "nope"], "unknown case"),
    (["count", "--tokens", "100"], "pass --tokens"),
    (["count", "--against", "/nonexistent/counts.json"], "does not exist"),
    (["bisect", "--good", "no-such-rev-xyz"], "is not a commit"),
    (["bisect", "--good", "HEAD", "--pairs", "2"], "--pairs must be >= 3"),
])
def test_bad_input_exits_2_with_the_fix(argv, fix, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fix in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_compare_records_names_the_op(tmp_path):
    def record(cats: int) -> WorkRecord:
        counts = {"steps": 8, "ops": {"aten.cat": 8 * cats, "aten.mm": 16}, "bytes_read": 800, "bytes_written": 80,
                  "syncs": {}}
        return WorkRecord.model_validate({"schema": WorkRecord.SCHEMA, "results": [
            {"label": "strict", "counts": counts, "case": CountCase().to_json()}]})

    diffs = countcases.compare_records(record(3), record(1))
    assert diffs[0].lines[0] == "+2 aten.cat per step"
    assert countcases.headline(diffs) == "+2 aten.cat per step in strict"
    assert countcases.compare_records(record(1), record(1))[0].lines == []


# -- a bisect over a synthetic repository ---------------------------------------------------------
# A tiny `streamllm` with the names the runner reaches for; its cache does `EXTRA` more ops per step.
PACKAGE = {
    "streamllm/__init__.py": "",
    "streamllm/strategies.py": '''
        from dataclasses import dataclass

        @dataclass(frozen=True)
        class Spec:
            name: str
            sink: int = 1
            window: int = 3
            compress_every: int = 1
            cache: str = "dynamic"

        def make_strategy(name, **params):
            return Spec(name, **params)
        ''',
    "streamllm/models.py": '''
        from dataclasses import dataclass
        import torch

        class Config:
            vocab_size = 11
            def to_dict(self):
                return {"vocab_size": self.vocab_size}

        class Tiny(torch.nn.Module):
            def __init__(self):
                super().__init__()
                torch.manual_seed(0)
                self.config = Config()
                self.emb = torch.nn.Embedding(11, 4)
                self.out = torch.nn.Linear(4, 11)
            def forward(self, token):
                return self.out(self.emb(token))

        @dataclass
        class Loaded:
            model: torch.nn.Module
            tokenizer: object
            device: torch.device

        def load_model(name, dtype="float32", device="cpu"):
            return Loaded(Tiny().eval(), None, torch.device(device))
        ''',
    "streamllm/data.py": '''
        import torch

        def synthetic_ids(vocab_size, num_tokens, seed=0):
            return torch.arange(num_tokens) % vocab_size
        ''',
    "streamllm/decode.py": '''
        import time
        import torch

        EXTRA = 0
        SLEEP = 0.0

        class Cache:
            def __init__(self, spec):
                self.spec, self.kept = spec, torch.zeros(1, 0, 4)
            def end_step(self, hidden):
                self.kept = torch.cat([self.kept, hidden], dim=1)[:, -(self.spec.sink + self.spec.window):]
                for _ in range(EXTRA):
                    self.kept = self.kept.clone()
                return None

        def make_cache(spec, model):
            return Cache(spec)

        class EagerDecoder:
            def __init__(self, model, cache):
                self.model, self.cache = model, cache
            def step(self, token):
                if SLEEP:
                    time.sleep(SLEEP)
                hidden = self.model.emb(token)
                return self.model.out(hidden)[0, -1], self.cache.end_step(hidden)
        ''',
}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def _commit(repo: Path, message: str, files: dict[str, str]) -> str:
    for name, text in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", message)
    return _git(repo, "rev-parse", "HEAD")


@pytest.fixture
def history(tmp_path: Path) -> dict[str, str]:
    """c0 good ... c3, c4 do not import ... c6 adds one op (aten.clone) to the cache's step ... c8."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "test@example.com")
    _git(repo, "config", "user.name", "test")
    decode = textwrap.dedent(PACKAGE["streamllm/decode.py"]).lstrip()
    shas = {"c0": _commit(repo, "c0 the package", PACKAGE)}
    shas["c1"] = _commit(repo, "c1 notes", {"NOTES.md": "one\n"})
    shas["c2"] = _commit(repo, "c2 notes", {"NOTES.md": "two\n"})
    shas["c3"] = _commit(repo, "c3 a syntax error in decode", {"streamllm/decode.py": decode + "\ndef broken(:\n"})
    shas["c4"] = _commit(repo, "c4 still broken", {"NOTES.md": "four\n"})
    shas["c5"] = _commit(repo, "c5 fix the syntax error", {"streamllm/decode.py": decode})
    shas["c6"] = _commit(repo, "c6 cache: copy the window each step",
                         {"streamllm/decode.py": decode.replace("EXTRA = 0", "EXTRA = 1")})
    shas["c7"] = _commit(repo, "c7 notes", {"NOTES.md": "seven\n"})
    shas["c8"] = _commit(repo, "c8 notes", {"NOTES.md": "eight\n"})
    shas["repo"] = str(repo)
    return shas


TINY = CountCase(strategy="strict", sink=1, window=3, model="tiny", tokens=40, name="tiny-strict")


@needs_git
@pytest.mark.slow
def test_bisect_finds_the_commit_that_adds_an_op_and_skips_the_broken_ones(history, tmp_path):
    repo = Path(history["repo"])
    head_before = _git(repo, "rev-parse", "HEAD")
    plan = bisect.BisectPlan(repo=repo, good=history["c0"], bad=history["c8"], cases=[TINY], python=sys.executable,
                             workdir=tmp_path)
    said: list[str] = []
    result = bisect.run_bisect(plan, say=said.append)
    assert result.first_bad == history["c6"]
    assert result.subject == "c6 cache: copy the window each step"
    assert result.headline == "+1 aten.clone per step in tiny-strict"
    # c3 and c4 tie for git's first midpoint, so at least one broken commit is always tried; which
    # others git tries after a skip depends on the commit ids
    skipped = {t.commit for t in result.tested if t.verdict == "skip"}
    assert skipped and skipped <= {history["c3"], history["c4"]}
    assert all("SyntaxError" in t.detail for t in result.tested if t.verdict == "skip")
    assert {t.commit for t in result.tested if t.verdict == "good"} <= {history[c] for c in ("c1", "c2", "c5")}
    text = "\n".join(bisect.report(result))
    assert f"first bad commit: {history['c6'][:10]} c6 cache" in text and "skipped (could not be counted)" in text
    # the user's checkout is untouched: same HEAD, no bisect in progress, the scratch clone removed
    assert _git(repo, "rev-parse", "HEAD") == head_before
    assert not (repo / ".git" / "BISECT_LOG").exists()
    assert not list(tmp_path.glob("streamllm-bisect-*"))


@needs_git
@pytest.mark.slow
def test_bisect_with_no_change_says_so(history, tmp_path):
    plan = bisect.BisectPlan(repo=Path(history["repo"]), good=history["c0"], bad=history["c2"], cases=[TINY],
                             workdir=tmp_path)
    result = bisect.run_bisect(plan, say=lambda _: None)
    assert result.no_change and result.first_bad is None
    assert "no change in the counted work" in result.headline


@needs_git
@pytest.mark.slow
def test_bisect_refuses_an_uncountable_good(history, tmp_path):
    plan = bisect.BisectPlan(repo=Path(history["repo"]), good=history["c3"], bad=history["c8"], cases=[TINY],
                             workdir=tmp_path)
    with pytest.raises(bisect.BisectError, match="cannot be counted at --good"):
        bisect.run_bisect(plan, say=lambda _: None)


@needs_git
@pytest.mark.slow
def test_the_runner_writes_raw_histograms_and_copies_nothing_into_the_tree(history, tmp_path):
    """The runner as bisect and drift start it: run in place from this checkout, against the
    commit's package; its record holds histograms and errors, no verdict; the tree stays clean."""
    repo = Path(history["repo"])
    out = tmp_path / "out"
    out.mkdir()

    def run(commit: str, name: str) -> WorkRecord:
        _git(repo, "checkout", "-q", "--detach", commit)
        return countcases.run_runner([TINY], repo, out / f"{name}.json")

    good = run(history["c0"], "good")
    assert good.ok and good.library == str((repo / "streamllm").resolve())  # the commit's package, not ours
    # the tiny package has no compat module: none may be borrowed from an editable install of another checkout
    assert good.compat is None
    assert good.api == "decode.make_cache + decode.EagerDecoder"
    assert run(history["c1"], "c1").results[0].counts == good.results[0].counts
    c6 = run(history["c6"], "c6")
    assert countcases.compare_records(c6, good)[0].lines[0] == "+1 aten.clone per step"  # compared here
    broken = run(history["c3"], "c3")
    assert not broken.ok and "SyntaxError" in broken.why_not()
    # raw histograms only: no verdict word anywhere in what the runner wrote
    text = " ".join((out / f"{n}.json").read_text().lower() for n in ("good", "c1", "c6", "c3"))
    for word in ("pass", "fail", "regression", "verdict", "slower", "inconclusive", "same", "different"):
        assert f'"{word}' not in text, word
    raw = json.loads((out / "c6.json").read_text())
    assert set(raw["results"][0]["counts"]) <= {"steps", "ops", "bytes_read", "bytes_written", "syncs", "kernels",
                                                "memcpys", "graph_replays", "kernel_names", "device_busy_us", "notes"}
    # nothing copied or written into the target tree: no untracked file, no harness module anywhere in it
    assert _git(repo, "status", "--porcelain", "--ignored") == ""
    harness = {p.name for p in Path(countcases.__file__).parent.glob("*.py")}
    assert not [p for p in repo.rglob("*.py") if ".git" not in p.parts and p.name in harness - {"__init__.py"}]


def test_the_runner_imports_nothing_of_the_harness():
    """countrunner.py and opcount.py run inside other trees: stdlib, torch and the target's product only."""
    import ast

    allowed = {"__future__", "argparse", "collections", "contextlib", "dataclasses", "importlib", "json", "math",
               "os", "pathlib", "sys", "time", "traceback", "types", "typing", "torch"}
    for name in ("countrunner.py", "opcount.py"):
        tree = ast.parse((Path(countcases.__file__).parent / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{name}: relative import"
                assert node.module.split(".")[0] in allowed, (name, node.module)
            elif isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] in allowed for a in node.names), (name, [a.name for a in node.names])


@pytest.mark.slow
def test_fast_fill_counts_what_real_decode_steps_reach():
    """The runner jumps to steady state (a chunked forward, random K/V); the counted steps must do
    exactly the work they do after the cache was filled by real decode steps. One model load for all."""
    base = CountCase(sink=4, window=28, tokens=96)
    fast = [named_case(name, base).check() for name in ("strict", "lazy-c4", "static", "ring")]
    slow = [CountCase(**{**c.to_json(), "fill": "steps", "name": c.label + "-steps"}).check() for c in fast]
    record = countcases.count_in_process(fast + slow, threads=1)
    assert record.ok, record.why_not()
    for case in fast:
        quick, real = record.entry(case.label), record.entry(case.label + "-steps")
        assert quick.filled_by in ("chunked", "random") and real.filled_by == "steps"
        assert countcases.counts_of(quick).diff(countcases.counts_of(real)) == [], case.label


@needs_git
@pytest.mark.slow
def test_timing_bisect_finds_a_step_slower_without_more_work(tmp_path):
    """A commit that sleeps 4x longer per step (no op added): the counts bisect sees no change, the
    timing bisect alternates processes and names it."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "test@example.com")
    _git(repo, "config", "user.name", "test")
    decode = textwrap.dedent(PACKAGE["streamllm/decode.py"]).lstrip()
    good = _commit(repo, "t0 the package", {**PACKAGE, "streamllm/decode.py": decode.replace("SLEEP = 0.0", "SLEEP = 0.005")})
    _commit(repo, "t1 notes", {"NOTES.md": "one\n"})
    slow = _commit(repo, "t2 decode: wait longer", {"streamllm/decode.py": decode.replace("SLEEP = 0.0", "SLEEP = 0.02")})
    bad = _commit(repo, "t3 notes", {"NOTES.md": "three\n"})
    counts = bisect.run_bisect(bisect.BisectPlan(repo=repo, good=good, bad=bad, cases=[TINY], workdir=tmp_path),
                               say=lambda _: None)
    assert counts.no_change
    plan = bisect.BisectPlan(repo=repo, good=good, bad=bad, cases=[TINY], timing=True, pairs=3, threshold=0.5,
                             time_steps=8, workdir=tmp_path)
    result = bisect.run_bisect(plan, say=lambda _: None)
    assert result.first_bad == slow, bisect.report(result)
    assert result.headline.startswith("slower: commit/good step time x")
    assert all(t.verdict in ("good", "bad") for t in result.tested)  # a 4x step is never inconclusive
