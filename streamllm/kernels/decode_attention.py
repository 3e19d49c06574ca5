"""Split-KV attention for one query token over a fixed cache buffer (flash-decoding).

q [1, H, 1, D], K/V [1, KVH, S, D] (the static/ring cache's per-layer buffers), an optional
additive mask over the S slots ([1, 1, 1, S]: 0 where a token lives, dtype-min elsewhere, as
FixedCache keeps it), H = KVH * GROUP (GQA). Output [1, 1, H, D], the layout transformers'
attention functions return.

One query reads the whole cache once, so attention is a bandwidth problem: 0.67 GB per Pythia-2.8b
step over 32 layers. cuDNN's SDPA runs one CTA per head (32 CTAs on 132 SMs: 1.6 TB/s in the
profile). Here the slots are split over programs: grid (KVH, SPLITS), each program covers a
balanced range of whole BLOCK_S tiles of one KV head for all GROUP query heads that share it (the
K/V tile is loaded once for the group), with an online softmax in base 2 (scores scaled by log2 e);
the tile loop can be software-pipelined (`num_stages`: tiles in flight ahead of the one reduced). Both
products (q k^T and p v) are tl.dot on the tensor cores with the group padded to 16 rows: the
first version multiplied and reduced [G, BLOCK_S, D] tensors in registers and reached only 35-42 %
of copy bandwidth on the H100 (20 us per Pythia layer, slower than cuDNN's 16 us). The
per-split (max, sum, unnormalized output) go to a float32 workspace and, as in the GEMV's split-K,
the last program of a KV head (per-head counter, acq_rel) merges them and resets the counter: one
launch per layer, graph-replayable (merge="last"). merge="kernel" instead launches a small merge
kernel (one program per KV head) right after, on the same stream: no atomics or serialized tail in
the split kernel, one launch more; which one wins is for the sweep to say.

The running max starts at a finite -1e30 instead of -inf, so a split whose slots are all past S or
all masked carries max -1e30 (or ~-9.4e4 for an fp16 mask) and merges with weight exp2(m - M) = 0
instead of producing NaN (inf - inf).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


MERGES = ("last", "kernel")


@dataclass(frozen=True)
class AttentionConfig:
    """One launch shape. `target_splits` programs per KV head (fewer only when there are fewer
    BLOCK_S tiles than that), `num_stages` the software-pipeline depth of the K/V tile loop (None:
    the loop is not annotated and gets Triton's launch default, 3 on CUDA: the behaviour before the
    field existed), `merge` who combines the per-split partials: "last" the last program of each KV
    head (one launch), "kernel" a second small launch right after (no atomics, no serialized tail
    inside the main kernel, one more launch)."""

    block_s: int = 32
    target_splits: int = 16
    num_warps: int = 4
    num_stages: int | None = None
    merge: str = "last"

    def __post_init__(self) -> None:
        if self.merge not in MERGES:
            raise ValueError(f"merge must be one of {MERGES}, not {self.merge!r}")
        if self.num_stages is not None and self.num_stages < 1:
            raise ValueError(f"num_stages must be >= 1 or None, not {self.num_stages}")

    def layout(self, slots: int) -> tuple[int, int]:
        """(BLOCK_S tiles over the slots, splits). Split i covers tiles [i T / splits, (i + 1) T / splits):
        balanced to within one tile, so the split count is what was asked for (wave quantization:
        kv_heads x splits programs is what the config picks) instead of whatever whole-tile rounding
        leaves (2052 slots in 64-slot tiles asked for 16 splits used to give 11)."""
        tiles = triton.cdiv(slots, self.block_s)
        return tiles, max(1, min(self.target_splits, tiles))

    def max_tiles_per_split(self, slots: int) -> int:
        tiles, splits = self.layout(slots)
        return triton.cdiv(tiles, splits)


@triton.jit
def _online_softmax(q, m, l_sum, acc, k, v, s, s_ok, mask_ptr, qk_scale, stride_ms,
                    HAS_MASK: tl.constexpr, PRECISION: tl.constexpr):
    """The running (max, sum, output) updated with one loaded K/V tile of slots `s`."""
    scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # [G, BLOCK_S], base 2
    if HAS_MASK:
        bias = tl.maximum(tl.load(mask_ptr + s * stride_ms, mask=s_ok, other=0.0).to(tl.float32), -1.0e30)
        scores += bias[None, :] * 1.4426950408889634
    scores = tl.where(s_ok[None, :], scores, float("-inf"))
    m_new = tl.maximum(m, tl.max(scores, axis=1))
    alpha = tl.math.exp2(m - m_new)
    p = tl.math.exp2(scores - m_new[:, None])
    l_sum = l_sum * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_sum, acc


@triton.jit
def _attend_tile(q, m, l_sum, acc, k_base, v_base, mask_ptr, s0, S, qk_scale,
                 stride_ks, stride_vs, stride_ms, d, d_ok,
                 BLOCK_S: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr):
    """One BLOCK_S tile of the online softmax (base 2): the running (max, sum, output) updated."""
    s = s0 + tl.arange(0, BLOCK_S)
    s_ok = s < S
    kv_mask = s_ok[:, None] & d_ok[None, :]
    k = tl.load(k_base + s[:, None] * stride_ks + d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_base + s[:, None] * stride_vs + d[None, :], mask=kv_mask, other=0.0)
    return _online_softmax(q, m, l_sum, acc, k, v, s, s_ok, mask_ptr, qk_scale, stride_ms, HAS_MASK, PRECISION)


@triton.jit
def _merge_splits(part_o_ptr, part_ml_ptr, out_ptr, kvh, stride_oh,
                  GROUP: tl.constexpr, BLOCK_GC: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
                  SPLITS: tl.constexpr, BLOCK_SPLITS: tl.constexpr, CHUNK: tl.constexpr):
    """out rows of KV head `kvh` from its SPLITS partials. .cg: the partials were written by other
    programs (other SMs) of this launch or the previous one; read them from L2, not a stale L1.
    The [splits, GC, D] partial outputs are reduced CHUNK splits at a time: loaded all at once
    (64 splits x 128 fp32 = 128 registers a thread at 2 warps) they would spill, and in the
    merge="last" kernel the merge branch's register count caps the occupancy of the whole kernel."""
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    gc = tl.arange(0, BLOCK_GC)
    gc_ok = gc < GROUP
    sp = tl.arange(0, BLOCK_SPLITS)
    sp_ok = sp < SPLITS
    ml_all = part_ml_ptr + (kvh * BLOCK_SPLITS + sp) * (2 * BLOCK_GC)
    # Padding (splits past SPLITS, rows past GROUP: never written) reads as max -1e30, sum 1, output 0:
    # weight 0 next to a real split, and a finite (unstored) 0 in a padded row instead of garbage.
    ok = sp_ok[:, None] & gc_ok[None, :]
    ms = tl.load(ml_all[:, None] + gc[None, :], mask=ok, other=-1.0e30, cache_modifier=".cg")
    ls = tl.load(ml_all[:, None] + BLOCK_GC + gc[None, :], mask=ok, other=1.0, cache_modifier=".cg")
    m_all = tl.max(ms, axis=0)  # [GC]
    denom = tl.sum(tl.math.exp2(ms - m_all[None, :]) * ls, axis=0)
    out = tl.zeros((BLOCK_GC, BLOCK_D), dtype=tl.float32)
    for c in range(0, SPLITS, CHUNK):
        spc = c + tl.arange(0, CHUNK)
        spc_ok = spc < SPLITS
        mlc = part_ml_ptr + (kvh * BLOCK_SPLITS + spc) * (2 * BLOCK_GC)
        okc = spc_ok[:, None] & gc_ok[None, :]
        mc = tl.load(mlc[:, None] + gc[None, :], mask=okc, other=-1.0e30, cache_modifier=".cg")
        w = tl.math.exp2(mc - m_all[None, :])  # [CHUNK, GC]; 0 for padding and for empty/masked splits
        o_c = part_o_ptr + (kvh * BLOCK_SPLITS + spc) * (BLOCK_GC * BLOCK_D)
        os_ = tl.load(o_c[:, None, None] + gc[None, :, None] * BLOCK_D + d[None, None, :],
                      mask=okc[:, :, None], other=0.0, cache_modifier=".cg")
        out += tl.sum(w[:, :, None] * os_, axis=0)
    out = out / denom[:, None]
    heads_c = kvh * GROUP + gc
    tl.store(out_ptr + heads_c[:, None] * stride_oh + d[None, :], out.to(out_ptr.dtype.element_ty),
             mask=gc_ok[:, None] & d_ok[None, :])


@triton.jit
def _decode_attention_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, part_o_ptr, part_ml_ptr, count_ptr,
    stride_qh, stride_kh, stride_ks, stride_vh, stride_vs, stride_ms, stride_oh,
    S, qk_scale,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_GC: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_S: tl.constexpr, TILES: tl.constexpr, SPLITS: tl.constexpr, BLOCK_SPLITS: tl.constexpr,
    HAS_MASK: tl.constexpr, PRECISION: tl.constexpr, LOOP_STAGES: tl.constexpr, MERGE_LAST: tl.constexpr,
    MERGE_CHUNK: tl.constexpr,
):
    kvh = tl.program_id(0)
    split = tl.program_id(1)
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    g_ok = g < GROUP
    d_ok = d < D
    heads = kvh * GROUP + g
    # The group's query rows, padded to 16 (the smallest tl.dot tile): both products run on the
    # tensor cores, so the padding costs nothing in a kernel bound by the K/V read.
    q = tl.load(q_ptr + heads[:, None] * stride_qh + d[None, :], mask=g_ok[:, None] & d_ok[None, :], other=0.0)
    m = tl.full((BLOCK_G,), -1.0e30, dtype=tl.float32)
    l_sum = tl.zeros((BLOCK_G,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_D), dtype=tl.float32)
    k_base = k_ptr + kvh.to(tl.int64) * stride_kh
    v_base = v_ptr + kvh.to(tl.int64) * stride_vh
    # Balanced tile range of this split (see AttentionConfig.layout); at least one tile when SPLITS <= TILES.
    lo = (split * TILES // SPLITS) * BLOCK_S
    hi = ((split + 1) * TILES // SPLITS) * BLOCK_S
    if LOOP_STAGES == 0:
        # Unannotated: Triton's launch default pipelines it (num_stages 3 on CUDA), as before.
        for s0 in range(lo, hi, BLOCK_S):
            m, l_sum, acc = _attend_tile(q, m, l_sum, acc, k_base, v_base, mask_ptr, s0, S, qk_scale,
                                         stride_ks, stride_vs, stride_ms, d, d_ok, BLOCK_S, HAS_MASK, PRECISION)
    else:
        # LOOP_STAGES - 1 tiles of K and V in flight ahead of the one being reduced: each program
        # covers only a few tiles, so without it every tile is a full DRAM round trip.
        for s0 in tl.range(lo, hi, BLOCK_S, num_stages=LOOP_STAGES):
            m, l_sum, acc = _attend_tile(q, m, l_sum, acc, k_base, v_base, mask_ptr, s0, S, qk_scale,
                                         stride_ks, stride_vs, stride_ms, d, d_ok, BLOCK_S, HAS_MASK, PRECISION)

    _finish_split(acc, m, l_sum, part_o_ptr, part_ml_ptr, out_ptr, count_ptr, kvh, split, stride_oh, g, g_ok, d,
                  GROUP, BLOCK_GC, D, BLOCK_D, SPLITS, BLOCK_SPLITS, MERGE_LAST, MERGE_CHUNK)


@triton.jit
def _finish_split(acc, m, l_sum, part_o_ptr, part_ml_ptr, out_ptr, count_ptr, kvh, split, stride_oh, g, g_ok, d,
                  GROUP: tl.constexpr, BLOCK_GC: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
                  SPLITS: tl.constexpr, BLOCK_SPLITS: tl.constexpr, MERGE_LAST: tl.constexpr,
                  MERGE_CHUNK: tl.constexpr):
    """A split's partials out; with MERGE_LAST, the last split of the KV head merges them."""
    # Partials of the GROUP real rows only: [KVH, BLOCK_SPLITS, BLOCK_GC, BLOCK_D] and
    # [KVH, BLOCK_SPLITS, 2, BLOCK_GC] (BLOCK_GC = GROUP rounded to a power of 2).
    o_base = part_o_ptr + (kvh * BLOCK_SPLITS + split) * (BLOCK_GC * BLOCK_D)
    tl.store(o_base + g[:, None] * BLOCK_D + d[None, :], acc, mask=g_ok[:, None])
    ml_base = part_ml_ptr + (kvh * BLOCK_SPLITS + split) * (2 * BLOCK_GC)
    tl.store(ml_base + g, m, mask=g_ok)
    tl.store(ml_base + BLOCK_GC + g, l_sum, mask=g_ok)
    if MERGE_LAST:
        tl.debug_barrier()
        arrived = tl.atomic_add(count_ptr + kvh, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLITS - 1:
            _merge_splits(part_o_ptr, part_ml_ptr, out_ptr, kvh, stride_oh,
                          GROUP, BLOCK_GC, D, BLOCK_D, SPLITS, BLOCK_SPLITS, MERGE_CHUNK)
            tl.atomic_xchg(count_ptr + kvh, 0, sem="relaxed", scope="gpu")


@triton.jit
def _merge_kernel(part_o_ptr, part_ml_ptr, out_ptr, stride_oh,
                  GROUP: tl.constexpr, BLOCK_GC: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
                  SPLITS: tl.constexpr, BLOCK_SPLITS: tl.constexpr, CHUNK: tl.constexpr):
    """merge="kernel": one program per KV head, launched on the same stream after the split kernel
    (stream order is the only synchronisation: graph-replayable, no counters)."""
    _merge_splits(part_o_ptr, part_ml_ptr, out_ptr, tl.program_id(0), stride_oh,
                  GROUP, BLOCK_GC, D, BLOCK_D, SPLITS, BLOCK_SPLITS, CHUNK)


def _merge_chunk(block_splits: int, block_gc: int, block_d: int, num_warps: int) -> int:
    """Splits merged per step: about 32 fp32 registers a thread for the [chunk, GC, D] partials."""
    return max(1, min(block_splits, (1024 * num_warps) // (block_gc * block_d)))


MERGE_KERNEL_WARPS = 4


_WORKSPACE: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _workspace(device: torch.device, kv_heads: int, block_splits: int, block_g: int, block_d: int):
    key = (device, kv_heads, block_splits, block_g, block_d)
    ws = _WORKSPACE.get(key)
    if ws is None:
        ws = (torch.empty(kv_heads * block_splits * block_g * block_d, dtype=torch.float32, device=device),
              torch.empty(kv_heads * block_splits * 2 * block_g, dtype=torch.float32, device=device),
              torch.zeros(kv_heads, dtype=torch.int32, device=device))
        _WORKSPACE[key] = ws
    return ws


@dataclass(frozen=True)
class LaunchPlan:
    """Block sizes and split layout of one attention launch (shared by the fused ring kernel)."""

    group: int
    block_gc: int  # GROUP rounded to a power of 2: the partials' rows
    block_g: int  # ... and at least 16, the smallest tl.dot tile
    block_d: int
    tiles: int
    splits: int
    block_splits: int

    @classmethod
    def of(cls, heads: int, kv_heads: int, slots: int, head_dim: int, cfg: AttentionConfig) -> LaunchPlan:
        group = heads // kv_heads
        block_gc = triton.next_power_of_2(group)
        tiles, splits = cfg.layout(slots)
        return cls(group, block_gc, max(16, block_gc), max(16, triton.next_power_of_2(head_dim)), tiles, splits,
                   triton.next_power_of_2(splits))

    def workspace(self, device: torch.device, kv_heads: int):
        return _workspace(device, kv_heads, self.block_splits, self.block_gc, self.block_d)

    def merge_chunk(self, num_warps: int) -> int:
        return _merge_chunk(self.block_splits, self.block_gc, self.block_d, num_warps)

    def merge_kernel(self, part_o: torch.Tensor, part_ml: torch.Tensor, out: torch.Tensor, kv_heads: int,
                     head_dim: int) -> None:
        """merge="kernel": the split partials combined by a second launch on the same stream."""
        _merge_kernel[(kv_heads,)](part_o, part_ml, out, out.stride(2),
                                   GROUP=self.group, BLOCK_GC=self.block_gc, D=head_dim, BLOCK_D=self.block_d,
                                   SPLITS=self.splits, BLOCK_SPLITS=self.block_splits,
                                   CHUNK=self.merge_chunk(MERGE_KERNEL_WARPS), num_warps=MERGE_KERNEL_WARPS)


def launch_decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                            scale: float, out: torch.Tensor, cfg: AttentionConfig) -> torch.Tensor:
    """out [1, 1, H, D] = softmax(q k^T * scale + mask) v for q [1, H, 1, D], k/v [1, KVH, S, D]."""
    _, heads, q_len, head_dim = q.shape
    _, kv_heads, slots, _ = k.shape
    if q_len != 1 or q.shape[0] != 1 or heads % kv_heads:
        raise ValueError(f"one query token of batch 1 with heads divisible by kv heads (q {tuple(q.shape)})")
    for t in (q, k, v):
        if t.stride(-1) != 1:
            raise ValueError("the head dimension must be contiguous")
    plan = LaunchPlan.of(heads, kv_heads, slots, head_dim, cfg)
    part_o, part_ml, count = plan.workspace(q.device, kv_heads)
    stride_ms = 0
    if mask is not None:
        stride_ms = mask.stride(-1)
    merge_last = cfg.merge == "last"
    _decode_attention_kernel[(kv_heads, plan.splits)](
        q, k, v, mask if mask is not None else q, out, part_o, part_ml, count,
        q.stride(1), k.stride(1), k.stride(2), v.stride(1), v.stride(2), stride_ms, out.stride(2),
        slots, scale * LOG2E,
        GROUP=plan.group, BLOCK_G=plan.block_g, BLOCK_GC=plan.block_gc, D=head_dim, BLOCK_D=plan.block_d,
        BLOCK_S=cfg.block_s, TILES=plan.tiles, SPLITS=plan.splits, BLOCK_SPLITS=plan.block_splits,
        HAS_MASK=mask is not None, PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        LOOP_STAGES=cfg.num_stages or 0, MERGE_LAST=merge_last, MERGE_CHUNK=plan.merge_chunk(cfg.num_warps),
        num_warps=cfg.num_warps,
    )
    if not merge_last:
        plan.merge_kernel(part_o, part_ml, out, kv_heads, head_dim)
    return out


# -- what the tuner and scripts/kernel_bench.py --sweep attention try ----------------------------
WAVES = (1, 2, 4, 8, 16)
# WAVES as split counts for 32 KV heads on 132 SMs (H100/H200 SXM): 32 x 33 = 1056 = 8 x 132.
FALLBACK_SPLITS = (4, 8, 16, 33, 66)
WARPS_FOR_BLOCK = {32: (2, 4), 64: (4, 8), 128: (4, 8), 256: (8,)}
# Pipelined K+V stages must fit next to the dot's staging buffers in the 227 KB of an H100/H200 SM.
SMEM_BUDGET = 160 << 10


def split_targets(kv_heads: int | None = None, sms: int | None = None) -> tuple[int, ...]:
    """Split counts that make kv_heads x splits a whole number of waves over `sms` (floored, so a
    program never spills into a nearly empty extra wave); FALLBACK_SPLITS without the device."""
    if not kv_heads or not sms:
        return FALLBACK_SPLITS
    return tuple(dict.fromkeys(max(1, w * sms // kv_heads) for w in WAVES))


def candidate_configs(slots: int, group: int, *, kv_heads: int | None = None, head_dim: int | None = None,
                      sms: int | None = None, elem_bytes: int = 2) -> list[AttentionConfig]:
    """See _candidates; cached because ops.attention_config asks on every (eager) call."""
    return list(_candidates(slots, kv_heads, head_dim, sms, elem_bytes))


@lru_cache(maxsize=64)
def _candidates(slots: int, kv_heads: int | None, head_dim: int | None, sms: int | None,
                elem_bytes: int) -> tuple[AttentionConfig, ...]:
    """Deterministic list (same arguments, same list) for the tuner and the sweep, pruned to what can win:
    - BLOCK_S 32 only where a split is at most 5 tiles (long loops of small tiles lose to 64-slot tiles);
    - num_warps by tile (2 warps cannot keep a 128-slot tile's loads in flight, 8 warps idle on 32);
    - num_stages only up to the tile count of the longest split (a 1-tile loop has nothing to
      pipeline) and within SMEM_BUDGET (stages x BLOCK_S x BLOCK_D x K+V);
    - target splits that give the same layout as an earlier one for this slot count are dropped;
    - merge="kernel" once per layout (first warps, deepest stages): it changes only the tail."""
    block_d = max(16, triton.next_power_of_2(head_dim or 128))
    configs: list[AttentionConfig] = []
    for block_s, warps_options in WARPS_FOR_BLOCK.items():
        seen: set[tuple[int, int]] = set()
        for target in split_targets(kv_heads, sms):
            cfg = AttentionConfig(block_s, target)
            layout = cfg.layout(slots)
            per = cfg.max_tiles_per_split(slots)
            if layout in seen or (block_s == 32 and per > 5):
                continue
            seen.add(layout)
            stage_bytes = block_s * block_d * 2 * elem_bytes
            stages = [s for s in (1, 2, 3) if s <= max(1, per) and s * stage_bytes <= SMEM_BUDGET] or [1]
            for warps in warps_options:
                configs += [AttentionConfig(block_s, target, warps, s) for s in stages]
            configs.append(AttentionConfig(block_s, target, warps_options[0], stages[-1], "kernel"))
    return tuple(configs)


def default_config(slots: int, group: int) -> AttentionConfig:
    return AttentionConfig(block_s=64, target_splits=16, num_warps=4)


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                        scale: float) -> torch.Tensor:
    """SDPA in float32 with K/V repeated for GQA; [1, 1, H, D] like the kernel."""
    group = q.shape[1] // k.shape[1]
    k = k.float().repeat_interleave(group, dim=1)
    v = v.float().repeat_interleave(group, dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(
        q.float(), k, v, attn_mask=None if mask is None else mask.float(), scale=scale)
    return out.transpose(1, 2).to(q.dtype)
