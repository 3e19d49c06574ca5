"""Batch-1 GEMV for decode: y = act(W x + b), W [N, K] row-major as nn.Linear stores it.

At batch 1 a linear layer streams its weight once and does two flops per loaded element, so the
only thing that matters is how close the weight read gets to the copy bandwidth. The kernel is the
plain bandwidth design: each program owns BLOCK_N whole rows (contiguous K, so every thread issues
16-byte loads), keeps a [BLOCK_N, BLOCK_K] float32 product accumulator and reduces it across K once
at the end (one reduction per program instead of one per tile). K is a compile-time constant, so
the loop bounds are static and the loads of successive tiles do not wait on index arithmetic.

Split over K (SPLIT_K > 1) for short, wide matrices: the K splits of one row block write float32
partial sums into a workspace and bump a per-row-block counter; the program that arrives last
(atomic acq_rel) sums the partials, adds the bias, applies the activation, writes the output and
resets the counter to zero. One launch, no memset, and the counters are zero again after every
call, so the same kernel replays inside a CUDA graph. A second kernel to reduce the partials
would cost a launch per linear (~2-3 us each inside a graph, as much as the whole dense GEMV).

Fused epilogues: the bias, GELU (exact, erf) for GPT-NeoX's up-projection, and the gated form
silu(W1 x) * (W2 x) for Llama's gate/up pair: two weights that share one input in one pass, so the
MLP's input is read once and no elementwise kernel follows.

Rows past N are clamped to row N-1 for the loads (always valid memory, no mask on the hot load)
and masked only at the store.

Fused prologue and residual epilogue, for a decoder layer without inductor kernels between the
GEMVs: with a norm (LayerNorm or RMSNorm) every program first reduces the statistics of its input
row x over all K (the row is a few KB, served from cache to every program) and normalizes each x
tile as it loads it, rounded to the activation dtype as the model's norm module rounds its output;
with residuals the epilogue adds up to two vectors to y (GPT-NeoX's parallel residual: h + attention
+ MLP in the MLP down-projection's epilogue; Llama's h + attention in o_proj's).

Stream-K (`GemvConfig.programs` > 0): a fixed number of programs, a small multiple of the SM count,
share the row-blocks x K-tiles work units evenly: program p takes units [p U / P, (p + 1) U / P) in
row-major order, so it finishes some row blocks whole and starts or ends others part-way. For a
square 2560 x 2560 projection (the attention's dense output) the one-program-per-row-block grid
has 320 programs of 8 rows: 2.4 waves on 132 SMs, the last one 40 % full, and a short matrix has
too little work per program to hide it. A row block finished whole gets its epilogue at once; a
partial one adds its float32 sum into a workspace (atomic) and bumps the block's counter by the
tiles it covered; the program that completes the count applies the epilogue, writes the output
and zeroes the workspace rows and the counter (graph-replayable, as split-K).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

ACT_NONE, ACT_GELU, ACT_SILU_GATED = 0, 1, 2
NORM_NONE, NORM_LAYER, NORM_RMS = 0, 1, 2


@dataclass(frozen=True)
class Norm:
    """The input's normalization, done in the GEMV's prologue: LayerNorm (weight, bias) or
    RMSNorm (weight only), with the module's eps."""

    kind: int
    weight: torch.Tensor
    bias: torch.Tensor | None = None
    eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.kind not in (NORM_LAYER, NORM_RMS):
            raise ValueError(f"norm kind must be NORM_LAYER or NORM_RMS, not {self.kind}")
        if self.kind == NORM_LAYER and self.bias is None:
            raise ValueError("LayerNorm needs its bias (pass zeros for a bias-free one)")


@dataclass(frozen=True)
class GemvConfig:
    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 1
    programs: int = 0  # > 0: stream-K over this many programs (split_k must be 1)

    def fits(self, n: int, k: int, gated: bool) -> bool:
        # Splits must cover K exactly in whole tiles (no masks in the hot loop); the gated form
        # keeps two partial sets and is only written without a split.
        if gated and (self.split_k > 1 or self.programs):
            return False
        if self.programs:
            return self.split_k == 1 and k % self.block_k == 0
        if self.split_k > 1 and k % (self.block_k * self.split_k) != 0:
            return False
        return self.block_k <= max(16, triton.next_power_of_2(k))


@triton.jit
def _gelu(x):
    return 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))


@triton.jit
def _epilogue(y, y2, b_ptr, rows, ACT: tl.constexpr, HAS_BIAS: tl.constexpr,
              r1_ptr, r2_ptr, N_RES: tl.constexpr):
    if HAS_BIAS:
        y += tl.load(b_ptr + rows).to(tl.float32)
    if ACT == 1:
        y = _gelu(y)
    if ACT == 2:
        y = y / (1.0 + tl.exp(-y)) * y2
    if N_RES >= 1:
        y += tl.load(r1_ptr + rows).to(tl.float32)
    if N_RES >= 2:
        y += tl.load(r2_ptr + rows).to(tl.float32)
    return y


@triton.jit
def _norm_stats(x_ptr, eps, K: tl.constexpr, BLOCK_K: tl.constexpr, NORM: tl.constexpr):
    """(mean, rstd) of the K inputs: LayerNorm's two passes (mean, then centred squares), RMSNorm's
    one (mean 0). Nothing is read without a norm."""
    mean = 0.0
    rstd = 1.0
    if NORM == 1:
        total = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            total += tl.load(x_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
        mean = tl.sum(total, axis=0) / K
    if NORM != 0:
        squares = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            xc = tl.where(cols < K, tl.load(x_ptr + cols, mask=cols < K, other=0.0).to(tl.float32) - mean, 0.0)
            squares += xc * xc
        rstd = 1.0 / tl.sqrt(tl.sum(squares, axis=0) / K + eps)
    return mean, rstd


@triton.jit
def _normalized(x, cols, mean, rstd, x_ptr, nw_ptr, nb_ptr, K: tl.constexpr, NORM: tl.constexpr):
    """A loaded x tile (float32) normalized, rounded to the activation dtype as the model's module
    rounds its output (LayerNorm: once; Llama's RMSNorm: before and after the weight)."""
    xdt = x_ptr.dtype.element_ty
    kmask = cols < K
    if NORM == 1:
        w = tl.load(nw_ptr + cols, mask=kmask, other=0.0).to(tl.float32)
        b = tl.load(nb_ptr + cols, mask=kmask, other=0.0).to(tl.float32)
        x = ((x - mean) * rstd * w + b).to(xdt).to(tl.float32)
    if NORM == 2:
        w = tl.load(nw_ptr + cols, mask=kmask, other=0.0).to(tl.float32)
        x = ((x * rstd).to(xdt).to(tl.float32) * w).to(xdt).to(tl.float32)
    return x


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, w2_ptr, b_ptr, y_ptr, part_ptr, count_ptr, nw_ptr, nb_ptr, r1_ptr, r2_ptr,
    N, stride_wn, eps,
    K: tl.constexpr, K_SPLIT: tl.constexpr, EVEN_K: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, NORM: tl.constexpr, N_RES: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    mean, rstd = _norm_stats(x_ptr, eps, K, BLOCK_K, NORM)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    safe_rows = tl.minimum(rows, N - 1)
    row_off = safe_rows.to(tl.int64)[:, None] * stride_wn
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    k_begin = pid_k * K_SPLIT
    for k0 in range(0, K_SPLIT, BLOCK_K):
        cols = k_begin + k0 + tl.arange(0, BLOCK_K)
        if EVEN_K:
            x = tl.load(x_ptr + cols).to(tl.float32)
            # evict_first: every weight is read once per step; keep L2 for activations and K/V.
            w = tl.load(w_ptr + row_off + cols[None, :], eviction_policy="evict_first")
        else:
            kmask = cols < K
            x = tl.load(x_ptr + cols, mask=kmask, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + row_off + cols[None, :], mask=kmask[None, :], other=0.0,
                        eviction_policy="evict_first")
        if NORM != 0:
            x = _normalized(x, cols, mean, rstd, x_ptr, nw_ptr, nb_ptr, K, NORM)
        acc += w.to(tl.float32) * x[None, :]
        if ACT == 2:
            if EVEN_K:
                w2 = tl.load(w2_ptr + row_off + cols[None, :], eviction_policy="evict_first")
            else:
                w2 = tl.load(w2_ptr + row_off + cols[None, :], mask=kmask[None, :], other=0.0,
                             eviction_policy="evict_first")
            acc2 += w2.to(tl.float32) * x[None, :]
    y = tl.sum(acc, axis=1)
    y2 = tl.sum(acc2, axis=1)
    out_mask = rows < N
    if SPLIT_K == 1:
        y = _epilogue(y, y2, b_ptr, safe_rows, ACT, HAS_BIAS, r1_ptr, r2_ptr, N_RES)
        tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=out_mask)
    else:
        # Workspace rows are padded to whole row blocks: no mask needed for the partials.
        n_pad = tl.num_programs(0) * BLOCK_N
        tl.store(part_ptr + pid_k * n_pad + rows, y)
        # Every thread's partial store must precede the counter bump that publishes them.
        tl.debug_barrier()
        arrived = tl.atomic_add(count_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:
            splits = tl.arange(0, SPLIT_K)
            # .cg: read the other programs' partials from L2, never from a stale L1 line.
            parts = tl.load(part_ptr + splits[:, None] * n_pad + rows[None, :], cache_modifier=".cg")
            y = tl.sum(parts, axis=0)
            y = _epilogue(y, y2, b_ptr, safe_rows, ACT, HAS_BIAS, r1_ptr, r2_ptr, N_RES)
            tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=out_mask)
            tl.atomic_xchg(count_ptr + pid_n, 0, sem="relaxed", scope="gpu")


@triton.jit
def _gemv_streamk_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, sum_ptr, count_ptr, nw_ptr, nb_ptr, r1_ptr, r2_ptr,
    N, stride_wn, eps,
    K_TILES: tl.constexpr, UNITS: tl.constexpr, PROGRAMS: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, NORM: tl.constexpr, N_RES: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    mean, rstd = _norm_stats(x_ptr, eps, K_TILES * BLOCK_K, BLOCK_K, NORM)
    u = pid * UNITS // PROGRAMS
    u_end = (pid + 1) * UNITS // PROGRAMS
    while u < u_end:
        rb = u // K_TILES
        kt0 = u - rb * K_TILES
        kt1 = tl.minimum(K_TILES, kt0 + (u_end - u))
        rows = rb * BLOCK_N + tl.arange(0, BLOCK_N)
        safe_rows = tl.minimum(rows, N - 1)
        row_off = safe_rows.to(tl.int64)[:, None] * stride_wn
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for kt in range(kt0, kt1):
            cols = kt * BLOCK_K + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + cols).to(tl.float32)
            w = tl.load(w_ptr + row_off + cols[None, :], eviction_policy="evict_first")
            if NORM != 0:
                x = _normalized(x, cols, mean, rstd, x_ptr, nw_ptr, nb_ptr, K_TILES * BLOCK_K, NORM)
            acc += w.to(tl.float32) * x[None, :]
        y = tl.sum(acc, axis=1)
        covered = kt1 - kt0
        if covered == K_TILES:
            y = _epilogue(y, y, b_ptr, safe_rows, ACT, HAS_BIAS, r1_ptr, r2_ptr, N_RES)
            tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=rows < N)
        else:
            # Workspace rows are padded to whole row blocks: no mask for the partial sums.
            tl.atomic_add(sum_ptr + rows, y, sem="relaxed", scope="gpu")
            # Every thread's partial add must precede the counter bump that publishes it.
            tl.debug_barrier()
            arrived = tl.atomic_add(count_ptr + rb, covered, sem="acq_rel", scope="gpu")
            if arrived + covered == K_TILES:
                total = tl.load(sum_ptr + rows, cache_modifier=".cg")
                total = _epilogue(total, total, b_ptr, safe_rows, ACT, HAS_BIAS, r1_ptr, r2_ptr, N_RES)
                tl.store(y_ptr + rows, total.to(y_ptr.dtype.element_ty), mask=rows < N)
                tl.store(sum_ptr + rows, tl.zeros((BLOCK_N,), dtype=tl.float32))
                tl.atomic_xchg(count_ptr + rb, 0, sem="relaxed", scope="gpu")
        u += covered


# -- workspace: one per (device, N); split partials and self-resetting counters -------------
_WORKSPACE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _workspace(device: torch.device, n: int, cfg: GemvConfig) -> tuple[torch.Tensor, torch.Tensor]:
    blocks = triton.cdiv(n, cfg.block_n)
    stream_k = cfg.programs > 0
    key = (device, n, cfg.block_n, cfg.split_k, stream_k)
    ws = _WORKSPACE.get(key)
    if ws is None:
        # Allocated on first use (an uncaptured warm-up step); counters (and stream-K's sums)
        # start at zero and every call leaves them at zero.
        alloc = torch.zeros if stream_k else torch.empty
        ws = (alloc(cfg.split_k * blocks * cfg.block_n, dtype=torch.float32, device=device),
              torch.zeros(blocks, dtype=torch.int32, device=device))
        _WORKSPACE[key] = ws
    return ws


def launch_gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor,
                cfg: GemvConfig, act: int = ACT_NONE, weight2: torch.Tensor | None = None, norm: Norm | None = None,
                residuals: tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
    """out[N] = act(weight @ norm(x) + bias) + sum(residuals) (x: K contiguous elements); one kernel launch."""
    n, k = weight.shape
    if weight.stride(1) != 1 or (weight2 is not None and weight2.stride() != weight.stride()):
        raise ValueError("gemv needs row-major weights (nn.Linear layout)")
    if not cfg.fits(n, k, weight2 is not None):
        raise ValueError(f"{cfg} does not fit N={n} K={k}")
    if len(residuals) > 2 or any(r.numel() != n or not r.is_contiguous() for r in residuals):
        raise ValueError(f"up to two contiguous residuals of {n} elements")
    if norm is not None and (norm.weight.numel() != k or (norm.bias is not None and norm.bias.numel() != k)):
        raise ValueError(f"the norm's weight and bias must have K={k} elements")
    # Unused pointers (constexpr-dead in the kernel) get any tensor of the right device.
    nw = norm.weight if norm is not None else weight
    nb = norm.bias if norm is not None and norm.bias is not None else nw
    r1 = residuals[0] if residuals else weight
    r2 = residuals[1] if len(residuals) > 1 else weight
    prologue = {"NORM": norm.kind if norm is not None else NORM_NONE, "N_RES": len(residuals)}
    eps = norm.eps if norm is not None else 0.0
    if cfg.programs:
        part, count = _workspace(x.device, n, cfg)
        k_tiles = k // cfg.block_k
        _gemv_streamk_kernel[(cfg.programs,)](
            x, weight, bias if bias is not None else weight, out, part, count, nw, nb, r1, r2,
            n, weight.stride(0), eps,
            K_TILES=k_tiles, UNITS=triton.cdiv(n, cfg.block_n) * k_tiles, PROGRAMS=cfg.programs,
            HAS_BIAS=bias is not None, ACT=act, **prologue, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
        return out
    k_split = triton.cdiv(triton.cdiv(k, cfg.split_k), cfg.block_k) * cfg.block_k
    even_k = k_split * cfg.split_k == k
    if cfg.split_k > 1:
        part, count = _workspace(x.device, n, cfg)
    else:
        part = count = out  # unused (constexpr-dead) pointers
    grid = (triton.cdiv(n, cfg.block_n), cfg.split_k)
    _gemv_kernel[grid](
        x, weight, weight2 if weight2 is not None else weight, bias if bias is not None else weight, out,
        part, count, nw, nb, r1, r2, n, weight.stride(0), eps,
        K=k, K_SPLIT=k_split, EVEN_K=even_k, HAS_BIAS=bias is not None, ACT=act, **prologue,
        BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, SPLIT_K=cfg.split_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out


# Stream-K program counts in waves of the device's SMs (H100/H200 SXM: 132) when it is not known.
STREAM_K_WAVES = (1, 2, 4)
FALLBACK_SMS = 132


def candidate_configs(n: int, k: int, gated: bool = False, sms: int | None = None) -> list[GemvConfig]:
    """What the tuner tries: few rows per program (many programs in flight), wide K tiles; and
    stream-K over 1, 2 and 4 waves of `sms` programs where the grid would leave fewer than 8 full
    waves (a long matrix's row blocks already balance)."""
    configs = []
    for block_n, block_k, split_k, warps, stages in (
        (4, 512, 1, 4, 1), (8, 256, 1, 4, 1), (8, 512, 1, 4, 1), (16, 256, 1, 4, 1), (16, 512, 1, 8, 1),
        (32, 256, 1, 8, 1), (8, 512, 2, 4, 1), (16, 256, 2, 4, 1), (16, 512, 4, 4, 1), (32, 256, 4, 8, 1),
        (8, 1024, 1, 8, 1), (32, 128, 1, 4, 1), (8, 512, 1, 4, 3), (16, 256, 1, 4, 3),
    ):
        cfg = GemvConfig(block_n, block_k, split_k, warps, stages)
        if cfg.fits(n, k, gated):
            configs.append(cfg)
    sms = sms or FALLBACK_SMS
    if triton.cdiv(n, 8) < 8 * sms:
        for block_n, block_k, warps in ((8, 256, 4), (8, 512, 4), (16, 256, 4)):
            for waves in STREAM_K_WAVES:
                cfg = GemvConfig(block_n, block_k, 1, warps, 1, programs=waves * sms)
                if cfg.fits(n, k, gated):
                    configs.append(cfg)
    return configs


def default_config(n: int, k: int, gated: bool = False) -> GemvConfig:
    """Untuned choice (the interpreter and first calls inside a capture): many small programs."""
    block_k = min(512, max(16, triton.next_power_of_2(k)))
    return GemvConfig(block_n=8 if n >= 1024 else 4, block_k=block_k, num_warps=4 if block_k >= 256 else 1)


def normalize_reference(x: torch.Tensor, norm: Norm) -> torch.Tensor:
    """What transformers' LayerNorm / LlamaRMSNorm modules return for x (same roundings)."""
    if norm.kind == NORM_LAYER:
        return torch.nn.functional.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps)
    variance = x.float().pow(2).mean(-1, keepdim=True)
    return norm.weight * (x.float() * torch.rsqrt(variance + norm.eps)).to(x.dtype)


def interpreter_config(n: int, k: int, gated: bool = False) -> GemvConfig:
    """Under Triton's CPU interpreter every program is a Python-level pass over numpy arrays, so
    the fewest, widest programs run fastest (7x on a tiny model's decode step against
    `default_config`). The kernel tests cover the many-program layouts explicitly."""
    return GemvConfig(block_n=min(64, triton.next_power_of_2(n)), block_k=min(512, max(16, triton.next_power_of_2(k))))


def gemv_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, act: int = ACT_NONE,
                   weight2: torch.Tensor | None = None, norm: Norm | None = None,
                   residuals: tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
    """Pure-PyTorch meaning of the kernel (float32 accumulation, like cuBLAS and the kernel)."""
    if norm is not None:
        x = normalize_reference(x, norm)
    y = torch.nn.functional.linear(x.float(), weight.float(), None if bias is None else bias.float())
    if act == ACT_GELU:
        y = torch.nn.functional.gelu(y)
    elif act == ACT_SILU_GATED:
        y = torch.nn.functional.silu(y) * torch.nn.functional.linear(x.float(), weight2.float())
    for r in residuals:
        y = y + r.float().view_as(y)
    return y.to(x.dtype)
