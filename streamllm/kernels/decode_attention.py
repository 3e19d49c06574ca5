"""Split-KV attention for one query token over a fixed cache buffer (flash-decoding).

q [1, H, 1, D], K/V [1, KVH, S, D] (the static/ring cache's per-layer buffers), an optional
additive mask over the S slots ([1, 1, 1, S]: 0 where a token lives, dtype-min elsewhere, as
FixedCache keeps it), H = KVH * GROUP (GQA). Output [1, 1, H, D], the layout transformers'
attention functions return.

One query reads the whole cache once, so attention is a bandwidth problem: 0.67 GB per Pythia-2.8b
step over 32 layers. cuDNN's SDPA runs one CTA per head (32 CTAs on 132 SMs: 1.6 TB/s in the
profile). Here the slots are split over programs: grid (KVH, SPLITS), each program covers
SLOTS_PER_SPLIT slots of one KV head for all GROUP query heads that share it (the K/V tile is
loaded once for the group), with an online softmax in base 2 (scores scaled by log2 e). Both
products (q k^T and p v) are tl.dot on the tensor cores with the group padded to 16 rows: the
first version multiplied and reduced [G, BLOCK_S, D] tensors in registers and reached only 35-42 %
of copy bandwidth on the H100 (20 us per Pythia layer, slower than cuDNN's 16 us). The
per-split (max, sum, unnormalized output) go to a float32 workspace and, as in the GEMV's split-K,
the last program of a KV head (per-head counter, acq_rel) merges them and resets the counter: one
launch per layer, graph-replayable.

The running max starts at a finite -1e30 instead of -inf, so a split whose slots are all past S or
all masked carries max -1e30 (or ~-9.4e4 for an fp16 mask) and merges with weight exp2(m - M) = 0
instead of producing NaN (inf - inf).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class AttentionConfig:
    block_s: int = 32
    target_splits: int = 16
    num_warps: int = 4

    def layout(self, slots: int) -> tuple[int, int]:
        """(slots per split, splits): whole BLOCK_S tiles per split, about target_splits splits."""
        per = triton.cdiv(triton.cdiv(slots, self.target_splits), self.block_s) * self.block_s
        return per, triton.cdiv(slots, per)


@triton.jit
def _decode_attention_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, part_o_ptr, part_ml_ptr, count_ptr,
    stride_qh, stride_kh, stride_ks, stride_vh, stride_vs, stride_ms, stride_oh,
    S, qk_scale,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_GC: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_S: tl.constexpr, SLOTS_PER_SPLIT: tl.constexpr, SPLITS: tl.constexpr, BLOCK_SPLITS: tl.constexpr,
    HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
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
    start = split * SLOTS_PER_SPLIT
    for s0 in range(0, SLOTS_PER_SPLIT, BLOCK_S):
        s = start + s0 + tl.arange(0, BLOCK_S)
        s_ok = s < S
        kv_mask = s_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + s[:, None] * stride_ks + d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + s[:, None] * stride_vs + d[None, :], mask=kv_mask, other=0.0)
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
        m = m_new

    # Partials of the GROUP real rows only: [KVH, BLOCK_SPLITS, BLOCK_GC, BLOCK_D] and
    # [KVH, BLOCK_SPLITS, 2, BLOCK_GC] (BLOCK_GC = GROUP rounded to a power of 2).
    o_base = part_o_ptr + (kvh * BLOCK_SPLITS + split) * (BLOCK_GC * BLOCK_D)
    tl.store(o_base + g[:, None] * BLOCK_D + d[None, :], acc, mask=g_ok[:, None])
    ml_base = part_ml_ptr + (kvh * BLOCK_SPLITS + split) * (2 * BLOCK_GC)
    tl.store(ml_base + g, m, mask=g_ok)
    tl.store(ml_base + BLOCK_GC + g, l_sum, mask=g_ok)
    tl.debug_barrier()
    arrived = tl.atomic_add(count_ptr + kvh, 1, sem="acq_rel", scope="gpu")
    if arrived == SPLITS - 1:
        gc = tl.arange(0, BLOCK_GC)
        gc_ok = gc < GROUP
        sp = tl.arange(0, BLOCK_SPLITS)
        sp_ok = sp < SPLITS
        ml_all = part_ml_ptr + (kvh * BLOCK_SPLITS + sp) * (2 * BLOCK_GC)
        ms = tl.load(ml_all[:, None] + gc[None, :], mask=sp_ok[:, None], other=-1.0e30, cache_modifier=".cg")
        ls = tl.load(ml_all[:, None] + BLOCK_GC + gc[None, :], mask=sp_ok[:, None], other=0.0, cache_modifier=".cg")
        m_all = tl.max(ms, axis=0)  # [GC]
        w = tl.math.exp2(ms - m_all[None, :])  # [SPLITS, GC]
        denom = tl.sum(w * ls, axis=0)
        o_all = part_o_ptr + (kvh * BLOCK_SPLITS + sp) * (BLOCK_GC * BLOCK_D)
        os_ = tl.load(o_all[:, None, None] + gc[None, :, None] * BLOCK_D + d[None, None, :],
                      mask=sp_ok[:, None, None], other=0.0, cache_modifier=".cg")
        out = tl.sum(w[:, :, None] * os_, axis=0) / denom[:, None]
        heads_c = kvh * GROUP + gc
        tl.store(out_ptr + heads_c[:, None] * stride_oh + d[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=gc_ok[:, None] & d_ok[None, :])
        tl.atomic_xchg(count_ptr + kvh, 0, sem="relaxed", scope="gpu")


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
    group = heads // kv_heads
    block_gc = triton.next_power_of_2(group)
    block_g = max(16, block_gc)
    block_d = max(16, triton.next_power_of_2(head_dim))
    per_split, splits = cfg.layout(slots)
    block_splits = triton.next_power_of_2(splits)
    part_o, part_ml, count = _workspace(q.device, kv_heads, block_splits, block_gc, block_d)
    stride_ms = 0
    if mask is not None:
        stride_ms = mask.stride(-1)
    _decode_attention_kernel[(kv_heads, splits)](
        q, k, v, mask if mask is not None else q, out, part_o, part_ml, count,
        q.stride(1), k.stride(1), k.stride(2), v.stride(1), v.stride(2), stride_ms, out.stride(2),
        slots, scale * LOG2E,
        GROUP=group, BLOCK_G=block_g, BLOCK_GC=block_gc, D=head_dim, BLOCK_D=block_d,
        BLOCK_S=cfg.block_s, SLOTS_PER_SPLIT=per_split, SPLITS=splits, BLOCK_SPLITS=block_splits,
        HAS_MASK=mask is not None, PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=cfg.num_warps,
    )
    return out


def candidate_configs(slots: int, group: int) -> list[AttentionConfig]:
    return [AttentionConfig(bs, splits, warps) for bs in (32, 64, 128) for splits in (8, 16, 32) for warps in (2, 4)]


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
