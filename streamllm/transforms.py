"""Model transforms that combine with any cache: INT8 weight-only MLP, and torch.compile rules.

INT8: torchao `IntxWeightOnlyConfig(weight_dtype=torch.int8, version=2)` on the MLP linears only
(GPT-NeoX `mlp.dense_h_to_4h` / `mlp.dense_4h_to_h`; Llama `mlp.gate_proj` / `up_proj` /
`down_proj`), then one forward with hooks checks the logits are finite and names the first
module whose output is not. In torchao 0.18, `version=1` is gone: `_intx_weight_only_quantize_tensor`
asserts `config.version == 2` and raises a bare AssertionError (the exploration log's NaNs came from the
old v1 path: docs/findings.md#int8); `quantize_int8_mlp` refuses it with a message instead.

"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MLP_LINEAR_NAMES = frozenset({"dense_h_to_4h", "dense_4h_to_h", "gate_proj", "up_proj", "down_proj"})


class NonFiniteLogitsError(RuntimeError):
    """A forward produced NaN/inf; the message names the first module whose output was non-finite."""


class MissingDependencyError(ImportError):
    """An optional dependency is not installed; the message says which pip command fixes it."""


def is_mlp_linear(module: torch.nn.Module, fqn: str) -> bool:
    """The filter for INT8: nn.Linear layers of the MLP blocks, nothing else (attention stays fp)."""
    parts = fqn.split(".")
    return isinstance(module, torch.nn.Linear) and "mlp" in parts and parts[-1] in MLP_LINEAR_NAMES


def quantize_int8_mlp(model: torch.nn.Module, version: int = 2) -> list[str]:
    """Quantize the MLP linears in place to INT8 weight-only; returns the quantized module names."""
    if version != 2:
        raise ValueError(
            f"IntxWeightOnlyConfig version={version} is not supported: torchao 0.18 only implements version 2 "
            "(version 1 fails an assertion there, and produced NaN logits on Pythia-2.8b: docs/findings.md#int8)"
        )
    try:
        from torchao.quantization import IntxWeightOnlyConfig, quantize_
    except ImportError as exc:
        raise MissingDependencyError(
            f"--int8 needs torchao ({exc}); install it with `pip install torchao` (or `pip install streamllm[int8]`)"
        ) from None
    names = [name for name, module in model.named_modules() if is_mlp_linear(module, name)]
    if not names:
        raise ValueError(f"no MLP linear layers found in {type(model).__name__} (looked for {sorted(MLP_LINEAR_NAMES)})")
    quantize_(model, IntxWeightOnlyConfig(weight_dtype=torch.int8, version=version), filter_fn=is_mlp_linear)
    return names


@dataclass(frozen=True)
class NonFinite:
    module: str  # leaf module whose output was first non-finite (execution order)
    layer: str | None  # the decoder layer containing it, e.g. "gpt_neox.layers.2"


def first_non_finite(model: torch.nn.Module, input_ids: torch.Tensor) -> NonFinite | None:
    """Run one forward (no cache) with hooks on every leaf module; the first non-finite output, or None."""
    found: list[str] = []

    def hook(name: str):
        def check(_module, _inputs, output):
            tensor = output[0] if isinstance(output, tuple) else output
            floating = isinstance(tensor, torch.Tensor) and tensor.is_floating_point()
            if not found and floating and not bool(torch.isfinite(tensor).all()):
                found.append(name)

        return check

    handles = [
        module.register_forward_hook(hook(name))
        for name, module in model.named_modules()
        if name and not list(module.children())
    ]
    try:
        with torch.inference_mode():
            logits = model(input_ids=input_ids, use_cache=False).logits
    finally:
        for handle in handles:
            handle.remove()
    if not found and bool(torch.isfinite(logits).all()):
        return None
    module = found[0] if found else "logits"
    return NonFinite(module=module, layer=_decoder_layer(module))


def check_finite_logits(model: torch.nn.Module, input_ids: torch.Tensor | None = None, what: str = "model") -> None:
    """Raise NonFiniteLogitsError naming the first non-finite layer, if a short forward is not finite."""
    if input_ids is None:
        device = next(model.parameters()).device
        input_ids = (torch.arange(16, device=device) * 7919 % model.config.vocab_size).view(1, -1)
    bad = first_non_finite(model, input_ids)
    if bad is not None:
        where = f"{bad.layer} ({bad.module})" if bad.layer else bad.module
        raise NonFiniteLogitsError(f"{what}: logits are not finite; first non-finite layer: {where}")


def apply_int8(model: torch.nn.Module, input_ids: torch.Tensor | None = None) -> list[str]:
    """INT8 v2 on the MLP linears, then the finite-logits check; returns the quantized module names."""
    names = quantize_int8_mlp(model)
    check_finite_logits(model, input_ids, what="INT8 v2 (MLP weight-only) model")
    return names


def _decoder_layer(name: str) -> str | None:
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in ("layers", "h") and parts[i + 1].isdigit():
            return ".".join(parts[: i + 2])
    return None
