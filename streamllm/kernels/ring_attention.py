"""Decode attention fused with its neighbours for the ring cache: rotary, cache write, sink re-rotation.

The unfused step per layer is: rotate the new token's q and k (RoPE at its position), write k and
v into the ring's slot, re-rotate the S sink keys from the sink store by the step's sink offset
and write them into slots [0, S), then attend (streamllm.caches.ring). Under inductor that is ~6
small kernels a layer around the attention kernel (0.16 ms a step on the H100 for Pythia-2.8b,
issue #22). Here one launch does all of it:

- every program rotates its KV head's query rows (GROUP heads) itself: they are a few hundred
  bytes, cheaper to recompute per split than to pass through memory;
- the program whose tile range holds the new token's slot rotates the new key, puts it and the
  new value into that tile in registers (the loaded row is stale) and stores both into the cache;
- the program(s) whose tiles hold slots [0, S) load the raw sink keys from the sink store, rotate
  them by the step's sink angles and do the same.

No other program of the launch reads those slots, so the in-register patch and the store need no
ordering; the next step's launch reads the stored rows. Rotation follows transformers' rotate_half
layout on the first ROT channels (GPT-NeoX: a quarter of the head; Llama: all of it), in float32
and rounded once to the cache dtype. The new token's cos/sin are the model's own (its rotary
module's output, any rope type); the sinks' are the ring's float32 tables, as `apply_rotation` uses.

The split layout, online softmax and merge are decode_attention's (same AttentionConfig).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..rope import apply_rotation
from .decode_attention import LOG2E, AttentionConfig, LaunchPlan, _finish_split, _online_softmax, attention_reference


@dataclass(frozen=True)
class SinkRotation:
    """The ring's sinks for one layer: raw keys [1, KVH, >= count, D] (as rotated at their own
    positions) and the step's float32 cos/sin [ROT] of the sink offset."""

    store: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    count: int


@triton.jit
def _rope(x, xp, cos, sin, sign, rot_ok):
    """rotate_half RoPE of rows x (xp: x at each column's partner), float32; columns past ROT kept."""
    return tl.where(rot_ok[None, :], x * cos[None, :] + sign[None, :] * xp * sin[None, :], x)


@triton.jit
def _ring_attention_kernel(
    q_ptr, kn_ptr, vn_ptr, cos_ptr, sin_ptr, k_ptr, v_ptr, slot_ptr, sink_ptr, scos_ptr, ssin_ptr, mask_ptr,
    out_ptr, part_o_ptr, part_ml_ptr, count_ptr,
    stride_qh, stride_knh, stride_vnh, stride_kh, stride_ks, stride_vh, stride_vs, stride_sh, stride_ss,
    stride_ms, stride_oh,
    S, qk_scale,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_GC: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
    ROT: tl.constexpr, N_SINK: tl.constexpr,
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
    dtype = k_ptr.dtype.element_ty
    # rotate_half: column d < ROT/2 pairs with d + ROT/2 (sign -), ROT/2 <= d < ROT with d - ROT/2 (+).
    half = ROT // 2
    rot_ok = d < ROT
    partner = tl.where(d < half, d + half, tl.where(rot_ok, d - half, d))
    sign = tl.where(d < half, -1.0, 1.0)
    cos = tl.load(cos_ptr + d, mask=rot_ok, other=1.0).to(tl.float32)
    sin = tl.load(sin_ptr + d, mask=rot_ok, other=0.0).to(tl.float32)

    q_rows = q_ptr + heads[:, None] * stride_qh
    q_ok = g_ok[:, None] & d_ok[None, :]
    qx = tl.load(q_rows + d[None, :], mask=q_ok, other=0.0).to(tl.float32)
    qp = tl.load(q_rows + partner[None, :], mask=q_ok, other=0.0).to(tl.float32)
    q = _rope(qx, qp, cos, sin, sign, rot_ok).to(dtype)
    # The new token's key (rotated) and value, as [1, BLOCK_D] rows.
    kn_row = kn_ptr + kvh * stride_knh
    kx = tl.load(kn_row + d[None, :], mask=d_ok[None, :], other=0.0).to(tl.float32)
    kp = tl.load(kn_row + partner[None, :], mask=d_ok[None, :], other=0.0).to(tl.float32)
    k_new = _rope(kx, kp, cos, sin, sign, rot_ok).to(dtype)
    v_new = tl.load(vn_ptr + kvh * stride_vnh + d[None, :], mask=d_ok[None, :], other=0.0).to(dtype)
    slot = tl.load(slot_ptr)
    if N_SINK > 0:
        scos = tl.load(scos_ptr + d, mask=rot_ok, other=1.0).to(tl.float32)
        ssin = tl.load(ssin_ptr + d, mask=rot_ok, other=0.0).to(tl.float32)

    m = tl.full((BLOCK_G,), -1.0e30, dtype=tl.float32)
    l_sum = tl.zeros((BLOCK_G,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_D), dtype=tl.float32)
    k_base = k_ptr + kvh.to(tl.int64) * stride_kh
    v_base = v_ptr + kvh.to(tl.int64) * stride_vh
    lo = (split * TILES // SPLITS) * BLOCK_S
    hi = ((split + 1) * TILES // SPLITS) * BLOCK_S
    for s0 in tl.range(lo, hi, BLOCK_S, num_stages=LOOP_STAGES):
        s = s0 + tl.arange(0, BLOCK_S)
        s_ok = s < S
        kv_mask = s_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + s[:, None] * stride_ks + d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + s[:, None] * stride_vs + d[None, :], mask=kv_mask, other=0.0)
        if N_SINK > 0:  # noqa: SIM102 (compile-time branch around a run-time one: Triton's `and` mixes neither)
            if s0 < N_SINK:
                is_sink = s < N_SINK
                sink_ok = is_sink[:, None] & d_ok[None, :]
                s_rows = sink_ptr + kvh.to(tl.int64) * stride_sh + s[:, None] * stride_ss
                sx = tl.load(s_rows + d[None, :], mask=sink_ok, other=0.0).to(tl.float32)
                sp = tl.load(s_rows + partner[None, :], mask=sink_ok, other=0.0).to(tl.float32)
                rotated = _rope(sx, sp, scos, ssin, sign, rot_ok).to(dtype)
                k = tl.where(is_sink[:, None], rotated, k)
                tl.store(k_base + s[:, None] * stride_ks + d[None, :], rotated, mask=sink_ok)
        if (slot >= s0) & (slot < s0 + BLOCK_S):
            is_new = (s == slot)[:, None]
            k = tl.where(is_new, k_new, k)
            v = tl.where(is_new, v_new, v)
            tl.store(k_base + slot * stride_ks + d[None, :], k_new, mask=d_ok[None, :])
            tl.store(v_base + slot * stride_vs + d[None, :], v_new, mask=d_ok[None, :])
        m, l_sum, acc = _online_softmax(q, m, l_sum, acc, k, v, s, s_ok, mask_ptr, qk_scale, stride_ms,
                                        HAS_MASK, PRECISION)

    _finish_split(acc, m, l_sum, part_o_ptr, part_ml_ptr, out_ptr, count_ptr, kvh, split, stride_oh, g, g_ok, d,
                  GROUP, BLOCK_GC, D, BLOCK_D, SPLITS, BLOCK_SPLITS, MERGE_LAST, MERGE_CHUNK)


def _rows(t: torch.Tensor, name: str) -> torch.Tensor:
    if t.stride(-1) != 1:
        raise ValueError(f"{name}: the head dimension must be contiguous")
    return t


def launch_ring_attention(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, cos: torch.Tensor,
                          sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot: torch.Tensor,
                          sinks: SinkRotation | None, mask: torch.Tensor | None, scale: float, out: torch.Tensor,
                          cfg: AttentionConfig) -> torch.Tensor:
    """One ring decode step of one layer, in one launch (two with merge="kernel"):

    q [1, H, 1, D], k_new / v_new [1, KVH, 1, D]: the new token's projections before RoPE;
    cos / sin [..., ROT]: its rotary tables (rotate_half layout); k_cache / v_cache [1, KVH, S, D]:
    the layer's ring buffers, written at `slot` (a 1-element long tensor) and, with `sinks`, at
    [0, count); mask: the cache's additive [1, 1, 1, S] mask or None. out [1, 1, H, D]."""
    _, heads, q_len, head_dim = q.shape
    _, kv_heads, slots, _ = k_cache.shape
    if q_len != 1 or q.shape[0] != 1 or heads % kv_heads or k_new.shape[1] != kv_heads or k_new.shape[2] != 1:
        raise ValueError(f"one token of batch 1, heads divisible by kv heads (q {tuple(q.shape)}, "
                         f"k {tuple(k_new.shape)}, cache {tuple(k_cache.shape)})")
    for t, name in ((q, "q"), (k_new, "k_new"), (v_new, "v_new"), (k_cache, "k_cache"), (v_cache, "v_cache")):
        _rows(t, name)
    rot = cos.shape[-1]
    cos, sin = cos.reshape(-1), sin.reshape(-1)
    if cos.numel() != rot or sin.numel() != rot or rot % 2 or rot > head_dim:
        raise ValueError(f"cos/sin must hold one position's {rot} rotary channels (head dim {head_dim})")
    plan = LaunchPlan.of(heads, kv_heads, slots, head_dim, cfg)
    part_o, part_ml, count = plan.workspace(q.device, kv_heads)
    n_sink = 0
    sink_store, scos, ssin = k_cache, cos, sin  # unused (constexpr-dead) without sinks
    if sinks is not None and sinks.count > 0:
        n_sink = sinks.count
        sink_store, scos, ssin = _rows(sinks.store, "sink store"), sinks.cos.reshape(-1), sinks.sin.reshape(-1)
        if scos.numel() != rot or ssin.numel() != rot or n_sink > sink_store.shape[2] or n_sink > slots:
            raise ValueError("the sinks' cos/sin must cover the same rotary channels, and the store all sinks")
    merge_last = cfg.merge == "last"
    _ring_attention_kernel[(kv_heads, plan.splits)](
        q, k_new, v_new, cos, sin, k_cache, v_cache, slot, sink_store, scos, ssin,
        mask if mask is not None else q, out, part_o, part_ml, count,
        q.stride(1), k_new.stride(1), v_new.stride(1), k_cache.stride(1), k_cache.stride(2), v_cache.stride(1),
        v_cache.stride(2), sink_store.stride(1), sink_store.stride(2), 0 if mask is None else mask.stride(-1),
        out.stride(2), slots, scale * LOG2E,
        GROUP=plan.group, BLOCK_G=plan.block_g, BLOCK_GC=plan.block_gc, D=head_dim, BLOCK_D=plan.block_d,
        ROT=rot, N_SINK=n_sink,
        BLOCK_S=cfg.block_s, TILES=plan.tiles, SPLITS=plan.splits, BLOCK_SPLITS=plan.block_splits,
        HAS_MASK=mask is not None, PRECISION="ieee" if k_cache.dtype == torch.float32 else "tf32",
        # The tile loop carries branches (sink and new-slot patches); None asks for no annotation,
        # which tl.range spells as num_stages=None.
        LOOP_STAGES=cfg.num_stages, MERGE_LAST=merge_last, MERGE_CHUNK=plan.merge_chunk(cfg.num_warps),
        num_warps=cfg.num_warps,
    )
    if not merge_last:
        plan.merge_kernel(part_o, part_ml, out, kv_heads, head_dim)
    return out


def rotate_half_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' apply_rotary_pos_emb for one tensor (partial rotary: the first cos.shape[-1] channels)."""
    rot = cos.shape[-1]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    half = rot // 2
    rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
    return torch.cat((x_rot * cos + rotated * sin, x_pass), dim=-1)


def ring_attention_reference(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, cos: torch.Tensor,
                             sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot: torch.Tensor,
                             sinks: SinkRotation | None, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """The unfused path in PyTorch (what the ring + transformers do), mutating the caches the same way."""
    cos_b, sin_b = cos.reshape(1, 1, 1, -1), sin.reshape(1, 1, 1, -1)
    q = rotate_half_rope(q, cos_b, sin_b)
    k_new = rotate_half_rope(k_new, cos_b, sin_b)
    if sinks is not None and sinks.count > 0:
        rotated = apply_rotation(sinks.store[:, :, : sinks.count], sinks.cos, sinks.sin, sinks.cos.shape[-1])
        k_cache[:, :, : sinks.count] = rotated
    k_cache.index_copy_(2, slot.view(1), k_new.to(k_cache.dtype))
    v_cache.index_copy_(2, slot.view(1), v_new.to(v_cache.dtype))
    return attention_reference(q.to(k_cache.dtype), k_cache, v_cache, mask, scale)
