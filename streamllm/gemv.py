"""Batch-1 linears as reductions, so inductor writes the matrix-vector kernels (gpt-fast's trick).

At batch 1 every decode matmul is a matrix-vector product that only has to stream its weights
once. cuBLAS picks split-K GEMM kernels for these shapes that stay well below copy bandwidth;
written as `(x * W).sum(-1)` the product becomes one Triton reduction
per linear, which inductor's coordinate-descent tuning is meant to push toward bandwidth and into which
the bias and the next elementwise op fuse. transformers' forwards call `nn.Linear` modules, so the
swap is a per-instance `forward` override for the duration of tracing: nothing is copied, the
weights stay where they are, and the eager model is untouched outside the context.

On the H100 it is slower than cuBLAS for Pythia-2.8b and tunes differently from one process to
the next (docs/findings.md); kept as an option and a suite case so the negative result stays
measured, not as the default.

Plain floating-point weights and torchao's per-row INT8 weights (IntxUnpackedToInt8Tensor, what
`IntxWeightOnlyConfig(weight_dtype=torch.int8, version=2)` makes) are rewritten; the INT8 form
dequantizes inside the reduction, so it streams one byte per weight instead of torchao's
dequantize-then-matmul. Other weights keep their linear; inputs with more than one row (prefill)
keep `F.linear`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

# Inductor's own M=1 matmul decomposition is gated on this flag too ("our matrix vector
# multiplies only achieve peak bandwidth with coordinate descent tuning", inductor/decomposition.py).
INDUCTOR_OPTIONS = {"coordinate_descent_tuning": True}


def _reduce(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            row_scale: torch.Tensor | None = None) -> torch.Tensor:
    """sum(x * weight) per output row (times row_scale) + bias, accumulated in float32 (like cuBLAS)."""
    y = (x.unsqueeze(-2).float() * weight).sum(-1)
    if row_scale is not None:
        y = y * row_scale
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def reduction_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear for one row of `x`, as a multiply + sum."""
    if x.numel() != x.shape[-1]:
        return F.linear(x, weight, bias)
    return _reduce(x, weight.float(), bias)


def int8_reduction_linear(x: torch.Tensor, weight, bias: torch.Tensor | None) -> torch.Tensor:
    """reduction_linear for a per-row INT8 weight: sum(x * (q - zero)) * scale."""
    if x.numel() != x.shape[-1]:
        return F.linear(x, weight, bias)
    q = weight.qdata.float() - weight.zero_point.float()
    return _reduce(x, q, bias, row_scale=weight.scale.float().squeeze(-1))


def weight_kind(module: torch.nn.Module) -> str | None:
    """'float' or 'int8' where `module` is a linear this module can rewrite, else None."""
    if not isinstance(module, torch.nn.Linear):
        return None
    weight = module.weight
    if type(weight.data) is torch.Tensor:
        return "float" if weight.dtype.is_floating_point else None
    qdata = getattr(weight, "qdata", None)
    per_row = tuple(getattr(weight, "block_size", ())) == (1, weight.shape[-1])
    if type(weight).__name__ == "IntxUnpackedToInt8Tensor" and per_row and qdata.dtype == torch.int8:
        return "int8"
    return None


@contextmanager
def reduction_linears(model: torch.nn.Module) -> Iterator[int]:
    """Inside: every plain nn.Linear of `model` computes batch-1 products by `reduction_linear`.

    Yields how many linears were rewritten; restores the original forwards on exit.
    """
    patched = [(m, kind) for m in model.modules() if (kind := weight_kind(m)) is not None]
    for module, kind in patched:
        # Bound per instance: dynamo traces through it like the class's own forward.
        module.forward = _bound(module, int8_reduction_linear if kind == "int8" else reduction_linear)
    try:
        yield len(patched)
    finally:
        for module, _ in patched:
            del module.forward


def _bound(module: torch.nn.Linear, linear):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return linear(x, module.weight, module.bias)

    return forward
