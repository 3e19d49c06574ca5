"""Which decoder runs a --compile mode: the one choice between the eager, compiled and CUDA-graph
steps of streamllm.decode and the Triton-kernel graph of streamllm.kernels (which builds on decode,
so the choice lives above both)."""

from __future__ import annotations

from functools import partial

import torch

from .combinations import check_compile
from .decode import GRAPH_OPTIONS, CompiledDecoder, DecoderFactory, EagerDecoder, GraphDecoder


def decoder_factory(compile_mode: str = "none", device: torch.device | str = "cpu",
                    cache_kind: str = "dynamic") -> DecoderFactory:
    """The decoder for a --compile mode, after refusing combinations that cannot work."""
    check_compile(compile_mode, cache_kind, torch.device(device).type)
    if compile_mode == "none":
        return EagerDecoder
    if compile_mode == "default":
        return CompiledDecoder
    if compile_mode == "cudagraphs-triton":
        # Imported here only because triton is optional: the other modes must work without it.
        from .kernels.integration import TritonGraphDecoder

        return TritonGraphDecoder
    options = GRAPH_OPTIONS[compile_mode]
    return partial(GraphDecoder, **options) if options else GraphDecoder
