"""Configs measured on a device, by `scripts/kernel_bench.py --emit-tuned` (keyed by device name).

Entry names are `ops.tuned_name`'s: "gemv:N:K:dtype:plain|gated",
"attention:KVH:GROUP:SLOTS:HEAD_DIM:dtype:mask|nomask". Shapes missing here are timed on first use
(`ops.choose`). Each entry is the fastest candidate timed inside a CUDA graph over weight (or K/V)
copies larger than L2: H100 run 1 (14 GEMV candidates; attention had no entry then) and the H200
run of session 5 (64 attention candidates per mask state); reports/gpu-kernels.md has both tables.

The H200 attention entries were timed at 2052 slots and are filed under 2053, the slot count of the
ring they serve (S=4 + W=2048 + 1; kernel_bench now sweeps that shape): every candidate BLOCK_S
(32-256) cuts 2052 and 2053 slots into the same number of tiles, so each config runs the same
launch over one more K/V row.

The H100 attention entries come from the H100 run of 2026-12-05 (`python -m scripts.kernel_bench
--out $OUT --emit-tuned --equiv-tokens 150 --e2e ...` at main 87cca1a; 64 candidates per mask
state, timed at the ring's 2053 slots; its output is
shared/measurements/h100-2026-12-05-kernel_bench.{txt,json}, key "tuned"). That run emitted the
same five GEMV picks as before and, for attention, the same two picks as the H200's.
"""

_PYTHIA_2_8B_GEMV = {  # the same five picks on the H100 and the H200
    "gemv:7680:2560:float16:plain": {"block_n": 8, "block_k": 256, "split_k": 1, "num_warps": 4, "num_stages": 1},
    "gemv:2560:2560:float16:plain": {"block_n": 8, "block_k": 512, "split_k": 1, "num_warps": 4, "num_stages": 1},
    "gemv:10240:2560:float16:plain": {"block_n": 8, "block_k": 512, "split_k": 1, "num_warps": 4, "num_stages": 1},
    "gemv:2560:10240:float16:plain": {"block_n": 8, "block_k": 1024, "split_k": 1, "num_warps": 8, "num_stages": 1},
    "gemv:50304:2560:float16:plain": {"block_n": 4, "block_k": 512, "split_k": 1, "num_warps": 4, "num_stages": 1},
}

# H100 (2026-12-05 run, 2053 slots: 14.2 us with the mask, 12.6 without) and H200 (session 5, timed
# at 2052 slots: 13.2 / 11.2 us) picked the same configs.
_PYTHIA_2_8B_ATTENTION = {
    "attention:32:1:2053:80:float16:mask": {"block_s": 128, "target_splits": 33, "num_warps": 4,
                                            "num_stages": 1, "merge": "kernel"},
    "attention:32:1:2053:80:float16:nomask": {"block_s": 32, "target_splits": 16, "num_warps": 2,
                                              "num_stages": 3, "merge": "last"},
}

# The fused ring kernel (streamllm.kernels.ring_attention), H100 run of 2026-12-07 (`--emit-tuned`,
# shared/measurements/h100-2026-12-07-kernel_bench.txt, TUNED line). Without an entry the first
# graph step times every candidate (each a Triton compile): the suite's ring-cudagraphs-triton row
# took 119 s on a fresh H100 that day (reports/gpu-h100-2026-12-07.md).
_PYTHIA_2_8B_RING_H100 = {
    "ring_attention:32:1:2053:80:float16:mask": {
        "block_s": 64,
        "target_splits": 33,
        "num_warps": 4,
        "num_stages": 1,
        "merge": "kernel"
    },
    "ring_attention:32:1:2053:80:float16:nomask": {
        "block_s": 32,
        "target_splits": 16,
        "num_warps": 2,
        "num_stages": 1,
        "merge": "last"
    },
}

TUNED: dict[str, dict[str, dict]] = {
    "NVIDIA H100 80GB HBM3": {**_PYTHIA_2_8B_GEMV, **_PYTHIA_2_8B_ATTENTION, **_PYTHIA_2_8B_RING_H100},
    "NVIDIA H200": {**_PYTHIA_2_8B_GEMV, **_PYTHIA_2_8B_ATTENTION},
}
