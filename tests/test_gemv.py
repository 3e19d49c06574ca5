"""Batch-1 linears as reductions (streamllm.gemv): same numbers as nn.Linear, nothing left behind."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from streamllm.gemv import reduction_linear, reduction_linears, weight_kind


@pytest.mark.parametrize("bias", [True, False])
def test_reduction_linear_equals_linear(bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 48, generator=g)
    w = torch.randn(20, 48, generator=g)
    b = torch.randn(20, generator=g) if bias else None
    y = reduction_linear(x, w, b)
    assert y.shape == (1, 1, 20)
    torch.testing.assert_close(y, F.linear(x, w, b), rtol=1e-5, atol=1e-5)


def test_reduction_linear_leaves_prefill_to_linear():
    x = torch.randn(1, 5, 8)
    w = torch.randn(3, 8)
    assert torch.equal(reduction_linear(x, w, None), F.linear(x, w))


def test_model_logits_unchanged_and_forwards_restored(tiny_model):
    model = tiny_model.model
    ids = torch.tensor([[5]])
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        with reduction_linears(model) as count:
            got = model(input_ids=ids).logits
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert count == len(linears) > 0
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert all("forward" not in m.__dict__ for m in linears)


def test_int8_weights_dequantize_inside_the_reduction():
    pytest.importorskip("torchao")
    from torchao.quantization import IntxWeightOnlyConfig, quantize_

    layer = torch.nn.Linear(64, 32)
    torch.nn.init.normal_(layer.weight, std=0.1)
    quantize_(torch.nn.Sequential(layer), IntxWeightOnlyConfig(weight_dtype=torch.int8, version=2))
    assert weight_kind(layer) == "int8"
    x = torch.randn(1, 1, 64)
    with torch.no_grad():
        ref = layer(x)  # torchao's own dequantize + linear
        with reduction_linears(layer):
            got = layer(x)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_other_modules_are_left_alone():
    assert weight_kind(torch.nn.Conv1d(2, 2, 1)) is None
    assert weight_kind(torch.nn.Linear(2, 2)) == "float"
