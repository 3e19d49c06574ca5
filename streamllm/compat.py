"""The one seam between streamllm and what moves between transformers releases.

Everything that has changed under us across transformers 5.x lives here, so that the next
change stops at one file:

- the keyword a model's forward takes its cache under (`past_key_values` until 5.2x, then
  `cache`, with the old name deprecated for removal in 5.40): `cache_kwargs`;
- registering an attention function under a name (`AttentionInterface`): `register_attention`;
  switching a model's configs to one for a block (`_attn_implementation`): `attention_implementation`;
- the rotary parameters' names in the config (`rope_theta` at the top level, later inside
  `rope_parameters`): `rope_parameter`;
- the supported range itself, and the error that names it when an upstream change breaks us
  anyway: `SUPPORTED_TRANSFORMERS`, `IncompatibleTransformersError`, `incompatibility_guard`.

The range is what CI tests from scratch at both ends (`.ci/run`, `nox -s compat`); pyproject
declares the same bounds, and a test keeps the two in agreement.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from importlib import metadata

import torch

# Lower bound: the GPU machine's release (the oldest we run on); upper: below the next major.
SUPPORTED_TRANSFORMERS = ">=5.17,<6"
LOWEST_TESTED = "5.17.0"


class IncompatibleTransformersError(RuntimeError):
    """transformers changed an interface streamllm relies on; the message names the supported range."""


# Loggers that speak once, at import, when transformers' modeling code imports torchao (its
# quantizer registry does whenever torchao is installed): torchao warns per CUDA extension a CPU
# build lacks, torch's pytree per enum torchao registers. Nothing a user can act on.
IMPORT_NOISE_LOGGERS = ("torchao", "torch.utils._pytree")


@contextmanager
def quiet_import_noise() -> Iterator[None]:
    """Raise the import-time noise loggers to ERROR for the block, then restore their levels."""
    loggers = [logging.getLogger(name) for name in IMPORT_NOISE_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def transformers_version() -> str:
    return metadata.version("transformers")


def _supported_hint() -> str:
    return (
        f"streamllm supports transformers{SUPPORTED_TRANSFORMERS} (tested at {LOWEST_TESTED} and the newest release "
        f"when this streamllm was built); installed: {transformers_version()}. "
        f"Fix: pip install 'transformers{SUPPORTED_TRANSFORMERS}' (or an older release within it), "
        "and report the break"
    )


@cache
def _cache_keyword(model_class: type) -> str:
    # Read the forward's own signature: the deprecation wrapper keeps the new name visible, and
    # older releases simply lack it. Keyed by class, so one inspect per model class.
    parameters = inspect.signature(model_class.forward).parameters
    if "cache" in parameters:
        return "cache"
    if "past_key_values" in parameters:
        return "past_key_values"
    raise IncompatibleTransformersError(
        f"{model_class.__name__}.forward takes neither `cache` nor `past_key_values`; {_supported_hint()}"
    )


def cache_kwargs(model: torch.nn.Module, cache: object) -> dict[str, object]:
    """The keyword arguments that hand `cache` to `model`'s forward, under the name it expects."""
    return {_cache_keyword(type(model)): cache, "use_cache": True}


def register_attention(name: str, function: Callable) -> str:
    """Register `function` as attention implementation `name` (idempotent); returns the name.

    transformers keeps one registry per process (AttentionInterface's global mapping): the name
    is the only thing a config can carry. Registering the same function twice is a no-op.
    """
    from transformers import AttentionInterface

    if AttentionInterface._global_mapping.get(name) is not function:
        AttentionInterface.register(name, function)
    return name


@contextmanager
def attention_implementation(model: torch.nn.Module, name: str | None) -> Iterator[None]:
    """Every config in `model` (its own and any sub-module's that carries one) on attention `name`
    for the block, then each config's previous one back; None leaves them as they are.

    The name is all a config carries (the function is in the registry, `register_attention`), and
    the forward reads it on every call: set per instance, restored, nothing global changes."""
    if name is None:
        yield
        return
    configs = {id(m.config): m.config for m in model.modules()
               if hasattr(getattr(m, "config", None), "_attn_implementation")}
    previous = {key: config._attn_implementation for key, config in configs.items()}
    try:
        for config in configs.values():
            config._attn_implementation = name
        yield
    finally:
        for key, config in configs.items():
            config._attn_implementation = previous[key]


def sdpa_attention() -> Callable:
    """transformers' own SDPA attention function."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward


def rope_parameter(config: object, name: str, default: object = None) -> object:
    """A rotary parameter (`rope_theta`, `partial_rotary_factor`, ...) wherever this release keeps it."""
    params = getattr(config, "rope_parameters", None) or {}
    if name in params:
        return params[name]
    return getattr(config, name, default)


def _raised_inside_transformers(exc: BaseException) -> bool:
    import transformers

    root = os.path.dirname(transformers.__file__)
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return last is not None and last.startswith(root)


@contextmanager
def incompatibility_guard(what: str) -> Iterator[None]:
    """Turn an interface error raised by transformers' own code into one that names the range.

    Only TypeError/AttributeError whose innermost frame is inside transformers are translated
    (an unexpected keyword, a renamed attribute): errors of ours or of the user's input pass.
    """
    try:
        yield
    except (TypeError, AttributeError) as exc:
        if not _raised_inside_transformers(exc):
            raise
        raise IncompatibleTransformersError(f"{what} failed inside transformers ({exc}); {_supported_hint()}") from exc


