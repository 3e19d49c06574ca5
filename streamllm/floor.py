"""The memory floor of a decode step: the bytes it must read, and how long streaming them takes.

gpt-fast prints bandwidth beside every timing; this is the model behind that number. A step reads
every weight once and the K/V of the entries it attends to; activations are KBs at batch 1.
"""

from __future__ import annotations

from typing import Any

import torch

from .strategies import plan_eviction


def _tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor occupies; tensor subclasses (torchao INT8 weights) by their inner tensors."""
    if hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = t.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def kv_bytes_per_slot(model: torch.nn.Module, kv_dtype: torch.dtype | None = None) -> int:
    """K + V bytes of one cache slot over all layers."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    dtype = kv_dtype or next(model.parameters()).dtype
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * cfg.num_hidden_layers * kv_heads * head_dim * itemsize


def analytic_step_bytes(model: torch.nn.Module, cache_slots: float, *, kv_dtype: torch.dtype | None = None) -> int:
    """Bytes one decode step must read from memory at the least: every weight once, plus the K/V
    of the `cache_slots` entries it attends to (|C_t| + 1; for lazy eviction the cycle's mean,
    `mean_attended_slots`).

    An untied input embedding counts one row (the step gathers one token's row), a tied one the
    whole matrix (the LM head reads it all). Activations are ignored (KBs at batch 1).
    """
    params = {id(p): p for p in model.parameters()}
    total = sum(_tensor_bytes(p) for p in params.values())
    emb_in = model.get_input_embeddings()
    emb_out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    w_in = getattr(emb_in, "weight", None)
    w_out = getattr(emb_out, "weight", None) if emb_out is not None else None
    if w_in is not None and (w_out is None or w_in.data_ptr() != w_out.data_ptr()):
        total -= _tensor_bytes(w_in) - _tensor_bytes(w_in) // max(1, w_in.shape[0])
    return int(total + round(cache_slots * kv_bytes_per_slot(model, kv_dtype)))


def mean_attended_slots(spec: Any, context: int | None = None) -> float:
    """Mean number of entries a steady-state step attends to (|C_t| + 1) over one eviction cycle,
    from the strategy's own eviction rule. Dense has no steady state: pass `context` (|C_t|)."""
    if spec.capacity is None:
        if context is None:
            raise ValueError("dense has no steady state: pass context=|C_t| at the counted steps")
        return float(context + 1)
    period = max(1, spec.compress_every)
    length, attended = 0, []
    horizon = spec.capacity + 4 * period + 1
    for t in range(horizon):
        length += 1  # append x_t; the step attended `length` entries
        attended.append(length)
        keep = plan_eviction(spec, length, t)
        if keep is not None:
            length = len(keep)
    tail = attended[-2 * period:]  # two whole cycles at steady state
    return sum(tail) / len(tail)


def floor_ms(nbytes: float, bandwidth_GBps: float) -> float:
    """Time to stream `nbytes` at `bandwidth_GBps` (1 GB = 1e9 B): the step's memory floor."""
    if bandwidth_GBps <= 0:
        raise ValueError(f"bandwidth must be > 0 GB/s, got {bandwidth_GBps}")
    return nbytes / (bandwidth_GBps * 1e9) * 1e3

