"""Triton kernels for the batch-1 decode step (issue #13): GEMV, split-KV decode attention.

- `gemv`: y = act(W norm(x) + b) + residuals for one token, split over K or stream-K where the
  matrix is short, LayerNorm / RMSNorm prologue, bias / GELU / Llama's silu(gate) * up / residual
  adds fused;
- `decode_attention`: flash-decoding over the fixed cache buffers (sinks + ring), GQA, additive mask;
- `ring_attention`: decode attention with the ring's step fused in (the new token's rotary, its
  cache write, the sinks' re-rotation);
- `ops`: the kernels as torch custom ops with a per-shape config tuner;
- `integration`: `TritonKernels(model)`, a context manager that routes a model *instance*'s batch-1
  linears, MLPs and attention through the kernels while a decode step is traced and captured, and
  `TritonGraphDecoder`, GraphDecoder with it.

Triton ships with CUDA builds of torch; on CPU the kernels run only under Triton's interpreter
(`TRITON_INTERPRET=1` set before this package is imported), for tests. Importing this package
needs no Triton; `available(device)` says whether the kernels can run, and why not.
"""

from __future__ import annotations

import importlib.util
import os

import torch

TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def unavailable_reason(device: torch.device | str) -> str | None:
    """None if the kernels can run on `device`, else why not (for errors and test skips)."""
    device = torch.device(device)
    if not TRITON_INSTALLED:
        return "triton is not installed (CUDA builds of torch ship it; on CPU: pip install triton)"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and interpreted():
        return None
    return f"Triton kernels need a CUDA device, or TRITON_INTERPRET=1 on CPU (device {device})"


def available(device: torch.device | str) -> bool:
    return unavailable_reason(device) is None
