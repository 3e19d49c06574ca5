"""Configs measured on a device, by `scripts/kernel_bench.py --emit-tuned` (keyed by device name).

Key: "kind:shape...": gemv "gemv:N:K:dtype:plain|gated", attention
"attention:KVH:GROUP:SLOTS:HEAD_DIM:dtype". Shapes missing here are timed on first use.
"""

TUNED: dict[str, dict[str, dict]] = {}
