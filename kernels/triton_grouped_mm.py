"""Triton kernels for matmuls over experts with ragged rows, and the launchers that call them.

Legend: M sorted rows (token-expert assignments grouped by expert), K reduction width, N output
width, E experts, T tokens, A = T*k assignments; `offsets` int32 [E] are cumulative row counts
(expert g owns sorted rows offsets[g-1]:offsets[g]).

Two kernels:

`_rows_kernel`: out[r] = epilogue(a[src[r]] @ w[g(r)]) for sorted rows r, tiled over (row tile,
    column tile) pairs. The row tiles never straddle two experts: expert g has cdiv(m_g, BLOCK_M) of
    them, so an empty expert has none and costs nothing. The kernel is persistent: a fixed grid
    of programs walks the (row tile, column tile) list, finding each tile's expert from the offsets
    in registers, so a hot expert's tiles are shared out like any other's and nothing on the host
    needs the row counts (no device sync). Options, all compile-time:
    - GATHER: row r reads a[src[r]] (the token's row) instead of a[r]: no permuted copy of x.
    - DUAL: a second weight w2 feeds a second accumulator from the same A rows (SwiGLU: gate and up in
      one launch; two K loops, so each A tile is loaded twice; see the note in the kernel).
    - PAIR2: a second (A, W) pair, a2 @ w2, is added into the same accumulator (SwiGLU's backward
      dX = d_up @ w_up^T + d_gate @ w_gate^T).
    - EPI: what the epilogue does with the fp32 accumulator (EPI_* below): store it; GELU or SwiGLU
      forward (optionally saving the pre-activations for backward); GELU or SwiGLU backward.
    - SCALE / SCATTER: multiply row r by scale[r] and store it at row dst[r] (the routing weight and
      the move back to assignment order). Every output row is written by exactly one program, so the
      result is deterministic: no atomics.

`_dw_kernel`: dw[g] = a_g^T @ b_g for each expert: one program per (expert, K tile, N tile), each
    looping over its expert's rows (gathered and scaled on load when asked). An expert with no rows
    gets exact zeros.

Both accumulate in fp32. fp32 inputs use IEEE fp32 dots unless torch allows TF32
(`torch.backends.cuda.matmul.allow_tf32`), so the default matches torch.matmul. Under Triton's
interpreter (TRITON_INTERPRET=1, how the CPU tests run these kernels) bf16 dots are upcast to fp32
inside the kernel, because the interpreter's bf16 dot is wrong.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

EPI_STORE, EPI_GELU, EPI_SWIGLU, EPI_GELU_BWD, EPI_SWIGLU_BWD = range(5)
DSCALE_BLOCK = 32  # the backward epilogue writes one partial row-dot per DSCALE_BLOCK columns (see _rows_kernel)
MAX_BLOCK_N = 256
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def rows_class(m: int, e: int) -> int:
    """The shape class the autotuner keys on: log2 of the mean rows per expert. Decode (a few rows
    per expert) is memory-bound and wants short row tiles; prefill and training want big tiles."""
    return max(1, m // max(e, 1)).bit_length()


def _config(bm, bn, bk, stages, warps, **extra):
    return triton.Config(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, **extra), num_stages=stages, num_warps=warps)


def _row_configs():
    if INTERPRET:  # one small config: the interpreter runs every candidate, slowly
        return [_config(16, 32, 16, 1, 4, GROUP_M=2)]
    return [
        # compute-bound: many rows per expert
        _config(128, 256, 64, 3, 8, GROUP_M=8), _config(128, 128, 64, 4, 8, GROUP_M=8),
        _config(128, 128, 64, 3, 4, GROUP_M=8), _config(64, 256, 64, 4, 8, GROUP_M=8),
        _config(64, 128, 64, 4, 4, GROUP_M=8),
        # memory-bound: a handful of rows per expert; wide K steps keep many weight bytes in flight
        _config(16, 64, 256, 4, 4, GROUP_M=1), _config(16, 128, 128, 4, 4, GROUP_M=1),
        _config(32, 128, 128, 4, 4, GROUP_M=1), _config(16, 256, 128, 3, 8, GROUP_M=1),
    ]


def _prune_row_configs(configs, named_args, **kwargs):
    """Keep the configs whose row tile suits the mean rows per expert; where two accumulators are live
    (DUAL: SwiGLU's gate and up), tiles of at most 128x128 fp32 each so they stay in registers; for
    int4 weights, K blocks within one scale group. At least one config always survives."""
    args = {**named_args, **kwargs}  # the autotuner passes positional arguments by name, keywords as keywords
    memory = memory_bound(args["ROWS_CLASS"])
    fits = [c for c in configs if (c.kwargs["BLOCK_M"] <= 32) == memory
            and not (args.get("DUAL") and c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] > 128 * 128)
            and not int4_block_too_deep(c.kwargs["BLOCK_K"], args.get("WQ", 0), args.get("QGROUP", 128))]
    return fits or configs


def int4_block_too_deep(block_k: int, wq: int, qgroup: int) -> bool:
    """An int4 K block deeper than its scale group needs a [BLOCK_K, BLOCK_N] tile of scales per step,
    which overflows shared memory once pipelined; within one group it needs one row."""
    return wq == 2 and qgroup % block_k != 0


# --- pinned launch configurations ------------------------------------------------------------------
# By default every launch uses the configuration kernels/pinned_configs.py names for its mode and
# row class: no autotuning in the middle of serving, nothing that breaks CUDA-graph capture, and the
# same tiles (so the same bits) on every rank. MOE_AUTOTUNE=1 turns Triton's autotuner back on.
AUTOTUNE = os.environ.get("MOE_AUTOTUNE") == "1"
ROW_FLAGS = ("GATHER", "DUAL", "PAIR2", "EPI", "SAVE_PRE", "SCALE", "SCATTER", "WQ", "TRANSPOSED_W")
DW_FLAGS = ("GATHER_A", "GATHER_B", "SCALE_B")


def mode_key(flags: dict, names=ROW_FLAGS) -> str:
    """The pinned table's key for a launch's compile-time modes (missing flags count as off/0)."""
    return " ".join(f"{n}={int(flags.get(n, 0))}" for n in names)


def memory_bound(rows_cls: int) -> bool:
    """A few rows per expert (decode, at most 48 on average): short row tiles (BLOCK_M <= 32)."""
    return (1 << (rows_cls - 1)) <= 48


def rows_bound(m: int, e: int) -> str:
    """The pinned table's row class: 'memory' or 'compute' (the autotuner's split, memory_bound)."""
    return "memory" if memory_bound(rows_class(m, e)) else "compute"


def pinned(table: dict, key: str, bound: str, candidates) -> dict:
    """The launch meta-parameters the pinned table names, or (a mode it does not list) the first
    candidate of that row class: BLOCK_*, GROUP_M, num_warps, num_stages."""
    if INTERPRET:
        c = candidates[0]  # the interpreter has one small config
    else:
        row = table.get(key, {}).get(bound)
        if row is not None:
            return dict(row)
        c = next((c for c in candidates if (c.kwargs["BLOCK_M"] <= 32) == (bound == "memory")), candidates[0])
    return dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)


def _check_block_n(configs) -> None:
    """The backward epilogue writes one routing-weight partial per DSCALE_BLOCK columns into a buffer
    sized for MAX_BLOCK_N (dscale_buffer): a config with a wider or unaligned BLOCK_N would silently
    drop partials, so none may exist."""
    bad = [c.kwargs["BLOCK_N"] for c in configs
           if c.kwargs["BLOCK_N"] > MAX_BLOCK_N or c.kwargs["BLOCK_N"] % DSCALE_BLOCK]
    if bad:
        raise ValueError(f"row kernel configs with BLOCK_N {bad}: each must be a multiple of {DSCALE_BLOCK} and at "
                         f"most MAX_BLOCK_N = {MAX_BLOCK_N}")


_check_block_n(_row_configs())


def _dw_configs():
    if INTERPRET:
        return [triton.Config(dict(BLOCK_M=16, BLOCK_K=16, BLOCK_N=32), num_stages=1, num_warps=4)]
    return [triton.Config(dict(BLOCK_M=bm, BLOCK_K=bk, BLOCK_N=bn), num_stages=s, num_warps=w)
            for bm, bk, bn, s, w in [(64, 128, 128, 3, 8), (32, 128, 128, 4, 8), (64, 64, 128, 4, 4),
                                     (64, 128, 256, 3, 8), (32, 64, 64, 4, 4)]]


@triton.jit
def _gelu(x):
    return 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))


@triton.jit
def _gelu_grad(x):
    cdf = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))
    return cdf + x * tl.exp(-0.5 * x * x) * 0.3989422804014327


@triton.jit
def _load_w(w_ptr, ks, k0, cols, K, N, stride_wk, stride_wn, ws_ptr, stride_sg, stride_sn, dtype,
            WQ: tl.constexpr, QGROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """The [BLOCK_K, BLOCK_N] tile w[ks, cols] in `dtype`. Quantized W (WQ, see kernels/quantized.py)
    is widened as it is loaded: int8 and fp8 exactly (their per-column scales are applied to the
    accumulator afterwards, by the caller); int4 times its group's scale here, since that scale
    changes along K."""
    w_ok = (ks[:, None] < K) & (cols[None, :] < N)
    if WQ == 2:  # int4: two per byte along K, low nibble first, stored as value + 8
        packed = tl.load(w_ptr + (ks // 2)[:, None] * stride_wk + cols[None, :] * stride_wn, mask=w_ok, other=8)
        nibble = (packed.to(tl.int32) >> ((ks % 2) * 4)[:, None]) & 15
        if QGROUP % BLOCK_K == 0:  # the block lies inside one group: one row of scales
            s = tl.load(ws_ptr + (k0 // QGROUP) * stride_sg + cols * stride_sn, mask=cols < N, other=0.0)[None, :]
        else:
            s = tl.load(ws_ptr + (ks // QGROUP)[:, None] * stride_sg + cols[None, :] * stride_sn, mask=w_ok,
                        other=0.0)
        w = ((nibble - 8).to(tl.float32) * s).to(dtype)
    else:
        w = tl.load(w_ptr + ks[:, None] * stride_wk + cols[None, :] * stride_wn, mask=w_ok, other=0.0)
        if WQ == 1:  # int8 or fp8 e4m3: every value is exact in bf16 and fp32
            w = w.to(dtype)
    return w  # one return: the compiler types every return alike, even in a pruned branch


@triton.jit
def _accumulate(acc, a_ptr, a_rows, row_ok, w_ptr, cols, K, N, stride_am, stride_ak, stride_wk, stride_wn, ws_ptr,
                stride_sg, stride_sn, BLOCK_K: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
                WQ: tl.constexpr, QGROUP: tl.constexpr):
    """acc += a[a_rows, :K] @ w[:K, cols], BLOCK_K columns of A at a time."""
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(a_ptr + a_rows[:, None] * stride_am + ks[None, :] * stride_ak,
                    mask=row_ok[:, None] & (ks[None, :] < K), other=0.0)
        w = _load_w(w_ptr, ks, k0, cols, K, N, stride_wk, stride_wn, ws_ptr, stride_sg, stride_sn, a.dtype,
                    WQ, QGROUP, BLOCK_K)
        if DOT_FP32:
            a, w = a.to(tl.float32), w.to(tl.float32)
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
    return acc


# The key holds every compile-time mode (a variant never reuses another's choice) and stride_wn, which
# tells a transposed W (dX through W^T: stride_wn = K) from a plain one (stride_wn = 1).
@triton.autotune(configs=_row_configs(), key=["ROWS_CLASS", "K", "N", "EPI", "DUAL", "PAIR2", "WQ", "QGROUP", "GATHER",
                                               "SCATTER", "SCALE", "SAVE_PRE", "stride_wn"],
                 prune_configs_by={"early_config_prune": _prune_row_configs})
@triton.jit
def _rows_kernel(
    a_ptr, a2_ptr, src_ptr, w_ptr, w2_ptr, offsets_ptr,
    out_ptr, out2_ptr, pre_ptr, pre2_ptr, dst_ptr, scale_ptr, dscale_ptr, ws_ptr, ws2_ptr,
    K, N, E, ROWS_CLASS, DSCALE_WIDTH,
    stride_am, stride_ak, stride_we, stride_wk, stride_wn, stride_om, stride_on, stride_pm, stride_dm,
    stride_se, stride_sg, stride_sn,
    WQ: tl.constexpr, QGROUP: tl.constexpr, GATHER: tl.constexpr, DUAL: tl.constexpr, PAIR2: tl.constexpr, EPI: tl.constexpr, SAVE_PRE: tl.constexpr,
    SCALE: tl.constexpr, SCATTER: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
    E_POW2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # The tile list, from the offsets: expert g owns row tiles tile_end[g]-tiles[g] .. tile_end[g]-1.
    e = tl.arange(0, E_POW2)
    last = tl.load(offsets_ptr + E - 1)
    ends = tl.where(e < E, tl.load(offsets_ptr + e, mask=e < E, other=0), last)
    starts = tl.where(e < E, tl.load(offsets_ptr + e - 1, mask=(e > 0) & (e < E), other=0), last)
    tiles = tl.cdiv(ends - starts, BLOCK_M)
    tile_end = tl.cumsum(tiles, 0)
    n_row_tiles = tl.sum(tiles)
    n_col_tiles = tl.cdiv(N, BLOCK_N)

    for tile in range(tl.program_id(0), n_row_tiles * n_col_tiles, tl.num_programs(0)):
        # Within a group of GROUP_M row tiles, row tiles vary fastest (a column tile's W is read by the
        # group's row tiles one after another), so the A rows and W columns a wave of programs touches
        # stay in L2 (the ordering of Triton's matmul tutorial).
        per_group = GROUP_M * n_col_tiles
        first = (tile // per_group) * GROUP_M
        group_rows = tl.minimum(n_row_tiles - first, GROUP_M)
        row_tile = first + (tile % per_group) % group_rows
        col_tile = (tile % per_group) // group_rows

        g = tl.sum((tile_end <= row_tile).to(tl.int32))  # the expert owning this row tile
        in_g = tl.sum(tl.where(e == g, tiles - tile_end, 0)) + row_tile  # its index among g's tiles
        rows = tl.sum(tl.where(e == g, starts, 0)) + in_g * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < tl.sum(tl.where(e == g, ends, 0))
        rows = rows.to(tl.int64)
        cols = col_tile * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < N

        a_rows = tl.load(src_ptr + rows, mask=row_ok, other=0).to(tl.int64) if GATHER else rows
        w_g = w_ptr + g.to(tl.int64) * stride_we
        ws_g, ws2_g = ws_ptr + g.to(tl.int64) * stride_se, ws2_ptr + g.to(tl.int64) * stride_se
        w2_g = w2_ptr + g.to(tl.int64) * stride_we
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc = _accumulate(acc, a_ptr, a_rows, row_ok, w_g, cols, K, N, stride_am, stride_ak, stride_wk, stride_wn,
                          ws_g, stride_sg, stride_sn, BLOCK_K, DOT_FP32, PRECISION, WQ, QGROUP)
        if DUAL:  # SwiGLU's gate: a second K loop over the same A rows (one loop with both weights holds
            # three tiles per pipeline stage and overflows shared memory on several shipped configs)
            acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            acc2 = _accumulate(acc2, a_ptr, a_rows, row_ok, w2_g, cols, K, N, stride_am, stride_ak, stride_wk,
                               stride_wn, ws2_g, stride_sg, stride_sn, BLOCK_K, DOT_FP32, PRECISION, WQ, QGROUP)
        if WQ == 1:  # per-column scales, once per tile
            acc = acc * tl.load(ws_g + cols * stride_sn, mask=col_ok, other=0.0)[None, :]
            if DUAL:
                acc2 = acc2 * tl.load(ws2_g + cols * stride_sn, mask=col_ok, other=0.0)[None, :]
        if PAIR2:  # a second (A, W) pair into the same accumulator (never quantized: training only)
            acc = _accumulate(acc, a2_ptr, a_rows, row_ok, w2_g, cols, K, N, stride_am, stride_ak, stride_wk,
                              stride_wn, ws2_g, stride_sg, stride_sn, BLOCK_K, DOT_FP32, PRECISION, 0, QGROUP)

        mask = row_ok[:, None] & col_ok[None, :]
        pre_at = rows[:, None] * stride_pm + cols[None, :]
        if SCALE:
            scale = tl.load(scale_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[:, None]
        out_rows = tl.load(dst_ptr + rows, mask=row_ok, other=0).to(tl.int64) if SCATTER else rows
        out_at = out_rows[:, None] * stride_om + cols[None, :] * stride_on
        out_ty = out_ptr.dtype.element_ty

        if EPI == 0:  # EPI_STORE
            if SCALE:
                acc = acc * scale
            tl.store(out_ptr + out_at, acc.to(out_ty), mask=mask)
        elif EPI == 1:  # EPI_GELU: acc is the pre-activation
            if SAVE_PRE:
                tl.store(pre_ptr + pre_at, acc.to(out_ty), mask=mask)
            tl.store(out_ptr + out_at, _gelu(acc).to(out_ty), mask=mask)
        elif EPI == 2:  # EPI_SWIGLU: acc is up, acc2 is gate
            if SAVE_PRE:
                tl.store(pre_ptr + pre_at, acc.to(out_ty), mask=mask)
                tl.store(pre2_ptr + pre_at, acc2.to(out_ty), mask=mask)
            tl.store(out_ptr + out_at, (acc * acc2 * tl.sigmoid(acc2)).to(out_ty), mask=mask)
        else:  # EPI_GELU_BWD / EPI_SWIGLU_BWD: acc = dy @ w_down^T, the gradient of h before the routing weight
            up = tl.load(pre_ptr + pre_at, mask=mask, other=0.0).to(tl.float32)
            if EPI == 3:
                h = _gelu(up)
            else:
                gate = tl.load(pre2_ptr + pre_at, mask=mask, other=0.0).to(tl.float32)
                sig = tl.sigmoid(gate)
                h = up * gate * sig
            # d(routing weight of row r) = <dy_t, h_r @ w_down> = <acc_r, h_r>, summed over column tiles
            # in a fixed order on the host. This tile writes its partial at column col_tile*BLOCK_N/32 and
            # zeros over the rest of its BLOCK_N/32 columns, so whichever config the autotuner ran last,
            # every column that can hold a partial is rewritten by each launch.
            j = tl.arange(0, BLOCK_N // 32)
            part = tl.where(j[None, :] == 0, tl.sum(acc * h, axis=1)[:, None], 0.0)
            dcols = col_tile * (BLOCK_N // 32) + j
            tl.store(dscale_ptr + rows[:, None] * stride_dm + dcols[None, :], part,
                     mask=row_ok[:, None] & (dcols[None, :] < DSCALE_WIDTH))
            dh = acc * scale
            if EPI == 3:
                tl.store(out_ptr + out_at, (dh * _gelu_grad(up)).to(out_ty), mask=mask)
            else:
                tl.store(out_ptr + out_at, (dh * gate * sig).to(out_ty), mask=mask)
                d_gate = dh * up * sig * (1.0 + gate * (1.0 - sig))
                tl.store(out2_ptr + out_at, d_gate.to(out_ty), mask=mask)


@triton.autotune(configs=_dw_configs(), key=["ROWS_CLASS", "K", "N", "GATHER_A", "GATHER_B", "SCALE_B"])
@triton.jit
def _dw_kernel(
    a_ptr, a_src_ptr, b_ptr, b_src_ptr, scale_ptr, offsets_ptr, dw_ptr,
    K, N, ROWS_CLASS,
    stride_am, stride_ak, stride_bm, stride_bn, stride_de, stride_dk, stride_dn,
    GATHER_A: tl.constexpr, GATHER_B: tl.constexpr, SCALE_B: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
):
    tiles_k, tiles_n = tl.cdiv(K, BLOCK_K), tl.cdiv(N, BLOCK_N)
    pid = tl.program_id(0)
    g = pid // (tiles_k * tiles_n)
    kt = (pid // tiles_n) % tiles_k
    nt = pid % tiles_n
    start = tl.load(offsets_ptr + g - 1, mask=g > 0, other=0)
    end = tl.load(offsets_ptr + g)
    ks = kt * BLOCK_K + tl.arange(0, BLOCK_K)
    ns = nt * BLOCK_N + tl.arange(0, BLOCK_N)

    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    for m0 in range(start, end, BLOCK_M):
        rows = (m0 + tl.arange(0, BLOCK_M)).to(tl.int64)
        row_ok = rows < end
        a_rows = tl.load(a_src_ptr + rows, mask=row_ok, other=0).to(tl.int64) if GATHER_A else rows
        b_rows = tl.load(b_src_ptr + rows, mask=row_ok, other=0).to(tl.int64) if GATHER_B else rows
        a = tl.load(a_ptr + a_rows[:, None] * stride_am + ks[None, :] * stride_ak,
                    mask=row_ok[:, None] & (ks[None, :] < K), other=0.0)
        b = tl.load(b_ptr + b_rows[:, None] * stride_bm + ns[None, :] * stride_bn,
                    mask=row_ok[:, None] & (ns[None, :] < N), other=0.0)
        if SCALE_B:
            scale = tl.load(scale_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
            b = (b.to(tl.float32) * scale[:, None]).to(b_ptr.dtype.element_ty)
        if DOT_FP32:
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(tl.trans(a), b, acc, input_precision=PRECISION)
    tl.store(dw_ptr + g.to(tl.int64) * stride_de + ks[:, None] * stride_dk + ns[None, :] * stride_dn,
             acc.to(dw_ptr.dtype.element_ty), mask=(ks[:, None] < K) & (ns[None, :] < N))


# ---------------------------------------------------------------------------------------------------
# Launchers. Tensors arrive checked (kernels.grouped_matmul / kernels.expert_mlp check them).

@functools.cache
def _num_programs(device_index: int) -> int:
    if INTERPRET:
        return 3  # several tiles per program, so the persistent loop is exercised on the CPU too
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _dot_args(dtype: torch.dtype) -> dict:
    tf32 = dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    return dict(DOT_FP32=INTERPRET and dtype == torch.bfloat16, PRECISION="tf32" if tf32 else "ieee")


def _launch_rows(a, w, offsets, out, *, m: int, src=None, w2=None, a2=None, dual=False, epi=EPI_STORE,
                 pre=None, pre2=None, out2=None, dst=None, scale=None, dscale=None, ws=None, ws2=None, wq=0,
                 qgroup=128):
    """Launch _rows_kernel over m sorted rows: out[dst[r] or r] = epilogue(a[src[r] or r] @ w[g(r)]).
    w and w2 are [E, K, N] views with any strides (w2 shares w's strides); pre/pre2/dscale are
    contiguous [m, ...] buffers. Quantized weights (wq 1: int8/fp8 with ws [E, N]; wq 2: int4 packed
    [E, K/2, N] with ws [E, K/qgroup, N]; see kernels/quantized.py) come with their scales. See the
    module doc for the options; the named steps below are the combinations the expert MLP uses."""
    E, _, N = w.shape
    K = a.shape[1]  # (a packed int4 w holds K/2 rows)
    if m == 0 or N == 0:
        return out
    if w2 is not None and w2.stride() != w.stride():
        raise ValueError(f"rows kernel: w2 strides {w2.stride()} differ from w's {w.stride()}")
    if a2 is not None and a2.stride() != a.stride():
        raise ValueError(f"rows kernel: a2 strides {a2.stride()} differ from a's {a.stride()}")
    dummy = offsets  # stands in for the pointers a mode does not use
    n_prog = _num_programs(a.device.index or 0)

    def grid(meta):
        tiles = (triton.cdiv(m, meta["BLOCK_M"]) + E) * triton.cdiv(N, meta["BLOCK_N"])  # an upper bound
        return (min(tiles, n_prog),)

    flags = dict(GATHER=src is not None, DUAL=dual, PAIR2=a2 is not None, EPI=epi, SAVE_PRE=pre is not None,
                 SCALE=scale is not None, SCATTER=dst is not None, WQ=wq)
    if AUTOTUNE:
        kernel, meta = _rows_kernel, {}
    else:
        from kernels.pinned_configs import ROWS

        key = mode_key({**flags, "TRANSPOSED_W": w.stride(2) != 1})
        kernel, meta = _rows_kernel.fn, pinned(ROWS, key, rows_bound(m, E), _row_configs())
    kernel[grid](
        a, a2 if a2 is not None else dummy, src if src is not None else dummy, w, w2 if w2 is not None else dummy,
        offsets, out, out2 if out2 is not None else dummy, pre if pre is not None else dummy,
        pre2 if pre2 is not None else dummy, dst if dst is not None else dummy,
        scale if scale is not None else dummy, dscale if dscale is not None else dummy,
        ws if ws is not None else dummy, ws2 if ws2 is not None else dummy,
        K, N, E, rows_class(m, E), dscale.shape[1] if dscale is not None else 0,
        a.stride(0), a.stride(1), w.stride(0), w.stride(1), w.stride(2), out.stride(0), out.stride(1),
        pre.stride(0) if pre is not None else 0, dscale.stride(0) if dscale is not None else 0,
        ws.stride(0) if ws is not None else 0, ws.stride(1) if wq == 2 else 0, ws.stride(-1) if ws is not None else 0,
        QGROUP=qgroup, E_POW2=triton.next_power_of_2(E), **flags, **_dot_args(a.dtype), **meta,
    )
    return out


# The named steps. Shapes: x [T, D]; h, pre-activations, d_up, d_gate [M, F]; y, dx [A, D] in
# assignment order; src_M the token of each sorted row, order_M its assignment, scale_M its weight.

def grouped_rows(a_MK, w_EKN, offsets, out_MN):
    """The plain grouped GEMM: out[r] = a[r] @ w[g(r)] (also dX = dY @ W^T through a transposed view)."""
    return _launch_rows(a_MK, w_EKN, offsets, out_MN, m=a_MK.shape[0])


def up_activation(x_TD, src_M, w_up, w_gate, offsets, h_MF, pre_up=None, pre_gate=None, quant=None):
    """Forward step 1: h[r] = act(x[src[r]] @ w_up[g] (, x[src[r]] @ w_gate[g])), the gather in the
    loads, GELU or SwiGLU in the epilogue (SwiGLU's two products from one pass over x). With pre_*
    buffers, also save the pre-activations for backward. quant: dict(ws=, ws2=, wq=, qgroup=) when
    w_up / w_gate are quantized (kernels/quantized.py)."""
    swiglu = w_gate is not None
    return _launch_rows(x_TD, w_up, offsets, h_MF, m=src_M.numel(), src=src_M, w2=w_gate, dual=swiglu,
                        epi=EPI_SWIGLU if swiglu else EPI_GELU, pre=pre_up, pre2=pre_gate, **(quant or {}))


def down_scatter(h_MF, w_down, offsets, order_M, scale_M, y_AD, quant=None):
    """Forward step 2: y[order[r]] = scale[r] * (h[r] @ w_down[g]): the routing weight and the move
    back to assignment order in the epilogue."""
    return _launch_rows(h_MF, w_down, offsets, y_AD, m=h_MF.shape[0], dst=order_M, scale=scale_M, **(quant or {}))


def activation_backward(dy_TD, src_M, w_down, offsets, scale_M, pre_up, pre_gate, d_up, d_gate, dscale):
    """Backward step 1: dh = dy[src[r]] @ w_down[g]^T, then in the epilogue the activation's backward
    (d_up, and d_gate for SwiGLU, scaled by the routing weight) and the routing weight's gradient
    <dh, h> as per-column-tile partials in dscale (see dscale_buffer)."""
    swiglu = pre_gate is not None
    return _launch_rows(dy_TD, w_down.transpose(1, 2), offsets, d_up, m=src_M.numel(), src=src_M,
                        epi=EPI_SWIGLU_BWD if swiglu else EPI_GELU_BWD, pre=pre_up, pre2=pre_gate, out2=d_gate,
                        scale=scale_M, dscale=dscale)


def dx_scatter(d_up, d_gate, w_up, w_gate, offsets, order_M, dx_AD):
    """Backward step 4: dx[order[r]] = d_up[r] @ w_up[g]^T (+ d_gate[r] @ w_gate[g]^T in the same
    accumulator), stored in assignment order."""
    swiglu = w_gate is not None
    return _launch_rows(d_up, w_up.transpose(1, 2), offsets, dx_AD, m=d_up.shape[0], dst=order_M,
                        a2=d_gate, w2=w_gate.transpose(1, 2) if swiglu else None)


def dscale_buffer(m: int, n: int, device) -> torch.Tensor:
    """The [m, width] fp32 buffer the backward epilogue writes per-column-tile partial row-dots into."""
    width = triton.cdiv(n, MAX_BLOCK_N) * (MAX_BLOCK_N // DSCALE_BLOCK)
    return torch.zeros(m, width, device=device, dtype=torch.float32)


def expert_xt_y(a, b, offsets, out, *, m: int, a_src=None, b_src=None, b_scale=None):
    """The weight gradients (backward steps 2-3): out[g] = a_g^T @ b_g per expert over m sorted rows,
    with a's / b's rows optionally gathered (a[a_src[r]]) and b's rows scaled by b_scale[r]. out is
    [E, K, N]."""
    E, K, N = out.shape
    if K == 0 or N == 0:
        return out
    dummy = offsets
    grid = lambda meta: (E * triton.cdiv(K, meta["BLOCK_K"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    flags = dict(GATHER_A=a_src is not None, GATHER_B=b_src is not None, SCALE_B=b_scale is not None)
    if AUTOTUNE:
        kernel, meta = _dw_kernel, {}
    else:
        from kernels.pinned_configs import DW

        kernel, meta = _dw_kernel.fn, pinned(DW, mode_key(flags, DW_FLAGS), "compute", _dw_configs())
        meta.pop("GROUP_M", None)
    kernel[grid](
        a, a_src if a_src is not None else dummy, b, b_src if b_src is not None else dummy,
        b_scale if b_scale is not None else dummy, offsets, out, K, N, rows_class(m, E),
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1), out.stride(2),
        **flags, **_dot_args(a.dtype), **meta,
    )
    return out
