"""Configs measured on a device, by `scripts/kernel_bench.py --emit-tuned` (keyed by device name).

Key: "kind:shape...": gemv "gemv:N:K:dtype:plain|gated", attention
"attention:KVH:GROUP:SLOTS:HEAD_DIM:dtype". Shapes missing here are timed on first use.
The GEMV entries are the fastest of 14 candidates timed inside a CUDA graph over weight copies
larger than L2 (reports/gpu-kernels.md, run 1); attention is re-timed per process.
"""

TUNED: dict[str, dict[str, dict]] = {
    "NVIDIA H100 80GB HBM3": {
        "gemv:7680:2560:float16:plain": {"block_n": 8, "block_k": 256, "split_k": 1, "num_warps": 4, "num_stages": 1},
        "gemv:2560:2560:float16:plain": {"block_n": 8, "block_k": 512, "split_k": 1, "num_warps": 4, "num_stages": 1},
        "gemv:10240:2560:float16:plain": {"block_n": 8, "block_k": 512, "split_k": 1, "num_warps": 4, "num_stages": 1},
        "gemv:2560:10240:float16:plain": {"block_n": 8, "block_k": 1024, "split_k": 1, "num_warps": 8,
                                          "num_stages": 1},
        "gemv:50304:2560:float16:plain": {"block_n": 4, "block_k": 512, "split_k": 1, "num_warps": 4, "num_stages": 1},
    },
}
