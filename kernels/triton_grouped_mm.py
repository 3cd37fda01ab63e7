"""Triton kernels for matmuls over experts with ragged rows, and the launchers that call them.

Legend: M sorted rows (token-expert assignments grouped by expert), K reduction width, N output
width, E experts, T tokens, A = T*k assignments; `offsets` int32 [E] are cumulative row counts
(expert g owns sorted rows offsets[g-1]:offsets[g]).

Three kernels:

`_rows_kernel`: out[r] = epilogue(a[src[r]] @ w[g(r)]) for sorted rows r, tiled over (row tile,
    column tile) pairs. The row tiles never straddle two experts: expert g has cdiv(m_g, BLOCK_M) of
    them, so an empty expert has none and costs nothing. The kernel is persistent: a fixed grid
    of programs walks the (row tile, column tile) list, finding each tile's expert from the offsets
    in registers, so a hot expert's tiles are shared out like any other's and nothing on the host
    needs the row counts (no device sync). Options, all compile-time:
    - GATHER: row r reads a[src[r]] (the token's row) instead of a[r]: no permuted copy of x.
    - DUAL: a second weight w2 feeds a second accumulator from the same A tiles (SwiGLU: up and gate in
      one K loop, each A tile loaded once and used by two dots).
    - PAIR2: a second (A, W) pair, a2 @ w2, is added into the same accumulator (SwiGLU's backward
      dX = d_up @ w_up^T + d_gate @ w_gate^T).
    - EPI: what the epilogue does with the fp32 accumulator (EPI_* below): store it; GELU or SwiGLU
      forward (optionally saving the pre-activations for backward); GELU or SwiGLU backward; or
      (EPI_PARTIAL, split-K) store the raw sums of one K slice. EPI_SPLIT = 2 runs it one column half
      at a time, which keeps the large tiles' epilogues in registers.
    - SCALE / SCATTER: multiply row r by scale[r] and store it at row dst[r] (the routing weight and
      the move back to assignment order). Every output row is written by exactly one program, so the
      result is deterministic: no atomics.
    - TMA (sm_90+): W, and A when not gathered, arrive through tensor descriptors (the copy engine,
      out-of-bounds boxes zero-filled); otherwise through pointer loads the compiler turns into
      asynchronous copies. Outputs are stored through pointers: a row tile's last rows may belong
      to the next expert, which a TMA box store would overwrite.
    - SPLIT_K (decode): when the output tiles are fewer than two waves of programs (split_k), each
      tile's K range is cut into slices computed by different programs into an fp32 workspace.

`_reduce_splits_kernel`: split-K's second pass: sums a row's slices in order (deterministic) and
    runs the epilogue.

`_dw_kernel`: dw[g] = a_g^T @ b_g for each expert: one program per (expert, K tile, N tile), each
    looping over its expert's rows (gathered on load, and A's rows scaled by the routing weight when
    asked). An expert with no rows gets exact zeros.

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

EPI_STORE, EPI_GELU, EPI_SWIGLU, EPI_GELU_BWD, EPI_SWIGLU_BWD, EPI_PARTIAL = range(6)
DSCALE_COLS = 32  # the backward epilogue writes one partial row-dot per DSCALE_COLS columns (see _rows_kernel)
MAX_BLOCK_N = 256
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def rows_class(m: int, e: int) -> int:
    """The shape class the autotuner keys on: log2 of the mean rows per expert. Decode (a few rows
    per expert) is memory-bound and wants short row tiles; prefill and training want big tiles."""
    return max(1, m // max(e, 1)).bit_length()


def _config(bm, bn, bk, stages, warps, group_m, epi_split=1):
    return triton.Config(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=group_m, EPI_SPLIT=epi_split),
                         num_stages=stages, num_warps=warps)


def _row_configs():
    if INTERPRET:  # one small config: the interpreter runs every candidate, slowly
        return [_config(16, 32, 16, 1, 4, 2, epi_split=2)]
    return [
        # compute-bound: many rows per expert; the epilogue in two column halves keeps it out of local memory
        _config(128, 256, 64, 3, 8, 8, 2), _config(128, 128, 64, 4, 8, 8, 2), _config(128, 128, 64, 3, 8, 8, 2),
        _config(128, 128, 64, 3, 4, 8, 2), _config(64, 256, 64, 4, 8, 8, 2), _config(64, 128, 64, 4, 4, 8, 2),
        _config(64, 128, 64, 4, 8, 8, 2), _config(128, 64, 64, 4, 8, 8, 2),  # (two accumulators: SwiGLU's forward)
        # memory-bound: a handful of rows per expert; wide K steps keep many weight bytes in flight
        _config(16, 64, 256, 4, 4, 1), _config(16, 128, 128, 4, 4, 1), _config(32, 128, 128, 4, 4, 1),
        _config(16, 256, 128, 3, 8, 1), _config(16, 128, 128, 4, 8, 1), _config(16, 64, 128, 4, 4, 1),
        _config(32, 64, 128, 4, 4, 1), _config(16, 128, 64, 4, 4, 1),
    ]


# Shared memory one program may use, by compute capability (H100 / A100); an unknown device gets the
# smaller. The autotuner's pruning and scripts/check_compile.py both use it.
SHARED_LIMIT = {90: 232448, 80: 166912}


def shared_estimate(config, dual: bool, w_bytes: float, a_bytes: int = 2) -> int:
    """Shared memory bytes the K loop's pipeline holds: one A tile and one (DUAL: two) W tiles per
    buffer; Triton 3 keeps num_stages buffers for warp-group MMA tiles (BLOCK_M >= 64 on sm_90) and
    num_stages - 1 otherwise (what the compile report shows to within the epilogue's scratch)."""
    bm, bn, bk = (config.kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    buffers = config.num_stages if bm >= 64 else config.num_stages - 1
    return int(buffers * (bm * bk * a_bytes + (2 if dual else 1) * bk * bn * w_bytes))


def fits(config, flags: dict, shared_limit: int) -> bool:
    """The row-count-independent pruning: two accumulators (DUAL) at most 128x128 fp32 each, so they stay
    in registers; the pipeline within shared memory; int4 K blocks within one scale group."""
    bm, bn, bk = (config.kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    dual, wq = bool(flags.get("DUAL")), int(flags.get("WQ", 0))
    w_bytes = {0: 2, 1: 1, 2: 0.5}[wq]
    return (not (dual and bm * bn > 128 * 128) and shared_estimate(config, dual, w_bytes) <= shared_limit
            and not int4_block_too_deep(bk, wq, flags.get("QGROUP", 128)))


def _device_shared_limit() -> int:
    if INTERPRET or not torch.cuda.is_available():
        return SHARED_LIMIT[90]
    return torch.cuda.get_device_properties(torch.cuda.current_device()).shared_memory_per_block_optin


def _prune_row_configs(configs, named_args, **kwargs):
    """Keep the configs whose row tile suits the mean rows per expert and that fit (see fits). At least
    one config always survives."""
    args = {**named_args, **kwargs}  # the autotuner passes positional arguments by name, keywords as keywords
    memory = memory_bound(args["ROWS_CLASS"])
    limit = _device_shared_limit()
    kept = [c for c in configs if (c.kwargs["BLOCK_M"] <= 32) == memory and fits(c, args, limit)]
    return kept or configs


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
DW_FLAGS = ("GATHER_A", "GATHER_B", "SCALE_A")


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
    """The backward epilogue writes one routing-weight partial per DSCALE_COLS columns into a buffer
    sized for MAX_BLOCK_N (dscale_buffer): a config with a wider or unaligned BLOCK_N would silently
    drop partials, so none may exist."""
    bad = [c.kwargs["BLOCK_N"] for c in configs
           if c.kwargs["BLOCK_N"] > MAX_BLOCK_N or c.kwargs["BLOCK_N"] % DSCALE_COLS]
    if bad:
        raise ValueError(f"row kernel configs with BLOCK_N {bad}: each must be a multiple of {DSCALE_COLS} and at "
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
def _load_w(w_ptr, w_desc, g, ks, k0, cols, n0, K, N, stride_wk, stride_wn, ws_ptr, stride_sg, stride_sn, dtype,
            WQ: tl.constexpr, QGROUP: tl.constexpr, TMA: tl.constexpr, W_T: tl.constexpr, BLOCK_K: tl.constexpr,
            BLOCK_N: tl.constexpr):
    """The [BLOCK_K, BLOCK_N] tile w[g][ks, cols] in `dtype`: through the tensor descriptor (TMA: the copy
    engine fetches the box, zero-filled past K and N; W_T: w[g] is stored [N, K]) or through pointers.
    Quantized W (WQ, see kernels/quantized.py) is widened as it is loaded: int8 and fp8 exactly (their
    per-column scales are applied to the accumulator afterwards, by the caller); int4 times its group's
    scale here, since that scale changes along K."""
    if TMA:
        if W_T:
            w = tl.trans(w_desc.load([g, n0, k0]).reshape(BLOCK_N, BLOCK_K))
        else:
            w = w_desc.load([g, k0, n0]).reshape(BLOCK_K, BLOCK_N)
        if WQ == 1:
            w = w.to(dtype)
    elif WQ == 2:  # int4: two per byte along K, low nibble first, stored as value + 8
        w_ok = (ks[:, None] < K) & (cols[None, :] < N)
        packed = tl.load(w_ptr + (ks // 2)[:, None] * stride_wk + cols[None, :] * stride_wn, mask=w_ok, other=8)
        nibble = (packed.to(tl.int32) >> ((ks % 2) * 4)[:, None]) & 15
        if QGROUP % BLOCK_K == 0:  # the block lies inside one group: one row of scales
            s = tl.load(ws_ptr + (k0 // QGROUP) * stride_sg + cols * stride_sn, mask=cols < N, other=0.0)[None, :]
        else:
            s = tl.load(ws_ptr + (ks // QGROUP)[:, None] * stride_sg + cols[None, :] * stride_sn, mask=w_ok,
                        other=0.0)
        w = ((nibble - 8).to(tl.float32) * s).to(dtype)
    else:
        w_ok = (ks[:, None] < K) & (cols[None, :] < N)
        w = tl.load(w_ptr + ks[:, None] * stride_wk + cols[None, :] * stride_wn, mask=w_ok, other=0.0)
        if WQ == 1:  # int8 or fp8 e4m3: every value is exact in bf16 and fp32
            w = w.to(dtype)
    return w  # one return: the compiler types every return alike, even in a pruned branch


@triton.jit
def _w_descriptor(w_ptr, E, K, N, stride_we, stride_wk, stride_wn, TMA: tl.constexpr, W_T: tl.constexpr,
                  BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    """A tensor descriptor over all of W [E, K, N] (W_T: stored as [E, N, K]), boxes of one expert's
    [BLOCK_K, BLOCK_N] tile; without TMA, w_ptr itself (the argument is then unused)."""
    if TMA:
        if W_T:
            d = tl.make_tensor_descriptor(w_ptr, shape=[E, N, K], strides=[stride_we, stride_wn, 1],
                                          block_shape=[1, BLOCK_N, BLOCK_K])
        else:
            d = tl.make_tensor_descriptor(w_ptr, shape=[E, K, N], strides=[stride_we, stride_wk, 1],
                                          block_shape=[1, BLOCK_K, BLOCK_N])
    else:
        d = w_ptr
    return d


@triton.jit
def _accumulate(acc, acc2, a_ptr, a_desc, a_rows, row0, row_ok, w_ptr, w_desc, w2_ptr, w2_desc, g, cols, n0, k_lo, k_hi,
                K, N,
                stride_am, stride_ak, stride_wk, stride_wn, ws_ptr, ws2_ptr, stride_sg, stride_sn,
                BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
                WQ: tl.constexpr, QGROUP: tl.constexpr, DUAL: tl.constexpr, TMA: tl.constexpr, A_TMA: tl.constexpr,
                W_T: tl.constexpr):
    """acc += a[a_rows, k_lo:k_hi] @ w[g][k_lo:k_hi, cols], BLOCK_K columns of A at a time (k_lo a multiple
    of BLOCK_K; k_hi one too, or K); with DUAL also acc2 += the same with w2 from the same A tile
    (SwiGLU's up and gate: A is read once).
    A_TMA: A's rows are the contiguous row0.. (not gathered) and come through a_desc."""
    for k0 in range(k_lo, k_hi, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        if A_TMA:  # rows past the expert's end belong to the next expert: read, then masked at the store
            a = a_desc.load([row0, k0])
        else:
            a = tl.load(a_ptr + a_rows[:, None] * stride_am + ks[None, :] * stride_ak,
                        mask=row_ok[:, None] & (ks[None, :] < K), other=0.0)
        w = _load_w(w_ptr, w_desc, g, ks, k0, cols, n0, K, N, stride_wk, stride_wn, ws_ptr, stride_sg, stride_sn,
                    a.dtype, WQ, QGROUP, TMA, W_T, BLOCK_K, BLOCK_N)
        if DUAL:
            w2 = _load_w(w2_ptr, w2_desc, g, ks, k0, cols, n0, K, N, stride_wk, stride_wn, ws2_ptr, stride_sg,
                         stride_sn, a.dtype, WQ, QGROUP, TMA, W_T, BLOCK_K, BLOCK_N)
        if DOT_FP32:
            a, w = a.to(tl.float32), w.to(tl.float32)
            if DUAL:
                w2 = w2.to(tl.float32)
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
        if DUAL:
            acc2 = tl.dot(a, w2, acc2, input_precision=PRECISION)
    return acc, acc2


# The key holds every compile-time mode (a variant never reuses another's choice) and stride_wn, which
# tells a transposed W (dX through W^T: stride_wn = K) from a plain one (stride_wn = 1).
@triton.autotune(configs=_row_configs(), key=["ROWS_CLASS", "K", "N", "EPI", "DUAL", "PAIR2", "WQ", "QGROUP", "GATHER",
                                               "SCATTER", "SCALE", "SAVE_PRE", "stride_wn"],
                 prune_configs_by={"early_config_prune": _prune_row_configs})
@triton.jit
def _rows_kernel(
    a_ptr, a2_ptr, src_ptr, w_ptr, w2_ptr, offsets_ptr,
    out_ptr, out2_ptr, pre_ptr, pre2_ptr, dst_ptr, scale_ptr, dscale_ptr, ws_ptr, ws2_ptr,
    K, N, E, ROWS_CLASS, DSCALE_WIDTH, K_SPLIT,
    stride_am, stride_ak, stride_we, stride_wk, stride_wn, stride_om, stride_on, stride_pm, stride_dm,
    stride_se, stride_sg, stride_sn,
    WQ: tl.constexpr, QGROUP: tl.constexpr, GATHER: tl.constexpr, DUAL: tl.constexpr, PAIR2: tl.constexpr, EPI: tl.constexpr, SAVE_PRE: tl.constexpr,
    SCALE: tl.constexpr, SCATTER: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
    TMA: tl.constexpr, TMA_STORE: tl.constexpr, W_T: tl.constexpr, E_POW2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, EPI_SPLIT: tl.constexpr, SPLIT_K: tl.constexpr,
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
    # TMA (Hopper): descriptors made once per program. A's only when its rows are not gathered (a
    # gathered tile is BLOCK_M scattered rows, which TMA cannot fetch as one box); W2's for DUAL / PAIR2.
    A_TMA: tl.constexpr = TMA and not GATHER
    w_desc = _w_descriptor(w_ptr, E, K, N, stride_we, stride_wk, stride_wn, TMA, W_T, BLOCK_K, BLOCK_N)
    w2_desc = _w_descriptor(w2_ptr, E, K, N, stride_we, stride_wk, stride_wn, TMA and (DUAL or PAIR2), W_T, BLOCK_K,
                            BLOCK_N)
    if A_TMA:
        a_desc = tl.make_tensor_descriptor(a_ptr, shape=[last, K], strides=[stride_am, 1],
                                           block_shape=[BLOCK_M, BLOCK_K])
        a2_desc = tl.make_tensor_descriptor(a2_ptr, shape=[last, K], strides=[stride_am, 1],
                                            block_shape=[BLOCK_M, BLOCK_K]) if PAIR2 else a_desc
    else:
        a_desc, a2_desc = a_ptr, a2_ptr
    # TMA_STORE: non-scattered outputs (and the saved pre-activations) leave full row tiles as TMA boxes
    TMA_OUT: tl.constexpr = TMA_STORE and not SCATTER
    TMA_PRE: tl.constexpr = TMA_STORE and SAVE_PRE and (EPI == 1 or EPI == 2)
    SUB_N: tl.constexpr = BLOCK_N // EPI_SPLIT
    out_desc = _out_descriptor(out_ptr, last * SPLIT_K, N, stride_om, TMA_OUT, BLOCK_M, SUB_N)
    out2_desc = _out_descriptor(out2_ptr, last * SPLIT_K, N, stride_om, TMA_OUT and (EPI == 4 or (EPI == 5 and DUAL)),
                                BLOCK_M, SUB_N)
    pre_desc = _out_descriptor(pre_ptr, last, N, stride_pm, TMA_PRE, BLOCK_M, SUB_N)
    pre2_desc = _out_descriptor(pre2_ptr, last, N, stride_pm, TMA_PRE and EPI == 2, BLOCK_M, SUB_N)

    n_tiles = n_row_tiles * n_col_tiles
    for tile_s in range(tl.program_id(0), n_tiles * SPLIT_K, tl.num_programs(0)):
        # Split-K (EPI_PARTIAL, decode): the tile list repeats once per K slice of K_SPLIT columns
        split, tile = tile_s // n_tiles, tile_s % n_tiles
        k_lo = split * K_SPLIT
        k_hi = tl.minimum(k_lo + K_SPLIT, K)
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

        a_rows = tl.load(src_ptr + rows, mask=row_ok, other=0).to(tl.int64) if GATHER else rows
        row0 = tl.sum(tl.where(e == g, starts, 0)) + in_g * BLOCK_M
        w_g = w_ptr + g.to(tl.int64) * stride_we
        ws_g, ws2_g = ws_ptr + g.to(tl.int64) * stride_se, ws2_ptr + g.to(tl.int64) * stride_se
        w2_g = w2_ptr + g.to(tl.int64) * stride_we
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc, acc2 = _accumulate(acc, acc, a_ptr, a_desc, a_rows, row0, row_ok, w_g, w_desc, w2_g, w2_desc, g, cols,
                                col_tile * BLOCK_N, k_lo, k_hi, K, N, stride_am, stride_ak, stride_wk, stride_wn, ws_g,
                                ws2_g, stride_sg, stride_sn, BLOCK_K, BLOCK_N, DOT_FP32, PRECISION, WQ, QGROUP, DUAL, TMA,
                                A_TMA, W_T)
        if WQ == 1:  # per-column scales, once per tile
            acc = acc * tl.load(ws_g + cols * stride_sn, mask=cols < N, other=0.0)[None, :]
            if DUAL:
                acc2 = acc2 * tl.load(ws2_g + cols * stride_sn, mask=cols < N, other=0.0)[None, :]
        if PAIR2:  # a second (A, W) pair into the same accumulator (never quantized: training only)
            acc, _ = _accumulate(acc, acc, a2_ptr, a2_desc, a_rows, row0, row_ok, w2_g, w2_desc, w2_g, w2_desc, g, cols,
                                 col_tile * BLOCK_N, k_lo, k_hi, K, N, stride_am, stride_ak, stride_wk, stride_wn, ws2_g,
                                 ws2_g,
                                 stride_sg, stride_sn, BLOCK_K, BLOCK_N, DOT_FP32, PRECISION, 0, QGROUP, False, TMA,
                                 A_TMA, W_T)

        scale = tl.load(scale_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[:, None] if SCALE else 1.0
        out_rows = tl.load(dst_ptr + rows, mask=row_ok, other=0).to(tl.int64) if SCATTER else rows
        if EPI == 5:  # EPI_PARTIAL: out is the [SPLIT_K * M, N] fp32 workspace, slice `split` first
            out_rows = rows + split * last
        full = in_g * BLOCK_M + BLOCK_M <= tl.sum(tl.where(e == g, ends - starts, 0))  # every row is g's
        out_row0 = row0 + split * last if EPI == 5 else row0
        col0 = col_tile * BLOCK_N
        if EPI_SPLIT == 2:  # the epilogue one column half at a time: half the live registers (see _halves)
            acc_l, acc_r = _halves(acc, BLOCK_M, BLOCK_N)
            acc2_l, acc2_r = _halves(acc2, BLOCK_M, BLOCK_N)
            cols_l = col0 + tl.arange(0, BLOCK_N // 2)
            part = _epilogue(acc_l, acc2_l, rows, out_rows, row_ok, cols_l, N, scale, out_ptr, out2_ptr, pre_ptr,
                             pre2_ptr, stride_pm, stride_om, stride_on, out_desc, out2_desc, pre_desc, pre2_desc,
                             out_row0, row0, col0, full, EPI, SAVE_PRE, DUAL, TMA_OUT, TMA_PRE, BLOCK_M)
            part += _epilogue(acc_r, acc2_r, rows, out_rows, row_ok, cols_l + BLOCK_N // 2, N, scale, out_ptr,
                              out2_ptr, pre_ptr, pre2_ptr, stride_pm, stride_om, stride_on, out_desc, out2_desc,
                              pre_desc, pre2_desc, out_row0, row0, col0 + BLOCK_N // 2, full, EPI, SAVE_PRE, DUAL,
                              TMA_OUT, TMA_PRE, BLOCK_M)
        else:
            part = _epilogue(acc, acc2, rows, out_rows, row_ok, cols, N, scale, out_ptr, out2_ptr, pre_ptr, pre2_ptr,
                             stride_pm, stride_om, stride_on, out_desc, out2_desc, pre_desc, pre2_desc, out_row0, row0,
                             col0, full, EPI, SAVE_PRE, DUAL, TMA_OUT, TMA_PRE, BLOCK_M)
        if EPI == 3 or EPI == 4:
            # d(routing weight of row r) = <dy_t, h_r @ w_down> = <acc_r, h_r>, summed over column tiles
            # in a fixed order on the host. This tile writes its partial at column col_tile*BLOCK_N/32 and
            # zeros over the rest of its BLOCK_N/32 columns, so whichever config ran last, every column
            # that can hold a partial is rewritten by each launch.
            j = tl.arange(0, BLOCK_N // 32)  # DSCALE_COLS
            dcols = col_tile * (BLOCK_N // 32) + j
            tl.store(dscale_ptr + rows[:, None] * stride_dm + dcols[None, :],
                     tl.where(j[None, :] == 0, part[:, None], 0.0), mask=row_ok[:, None] & (dcols[None, :] < DSCALE_WIDTH))


@triton.jit
def _halves(x, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """x[:, :BLOCK_N/2], x[:, BLOCK_N/2:] of a [BLOCK_M, BLOCK_N] tile (Triton has no slicing: reshape
    to [BLOCK_M, 2, BLOCK_N/2], move the 2 last, split). Along N the accumulator's layout splits
    without moving data between threads."""
    return tl.split(tl.permute(tl.reshape(x, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))


@triton.jit
def _put(ptr, desc, at, value, mask, row0, col0, full, TMA_OUT: tl.constexpr):
    """Store value at ptr[at] where mask holds; with TMA_OUT, a full row tile (every row its expert's)
    goes out as one TMA box at [row0, col0] instead (clipped at the output's last column by the copy
    engine). A partial tile's last rows belong to the next expert, which a box would overwrite."""
    if TMA_OUT:
        if full:
            desc.store([row0, col0], value)
        else:
            tl.store(ptr + at, value, mask=mask)
    else:
        tl.store(ptr + at, value, mask=mask)


@triton.jit
def _epilogue(acc, acc2, rows, out_rows, row_ok, cols, N, scale, out_ptr, out2_ptr, pre_ptr, pre2_ptr, stride_pm,
              stride_om, stride_on, out_desc, out2_desc, pre_desc, pre2_desc, out_row0, row0, col0, full,
              EPI: tl.constexpr, SAVE_PRE: tl.constexpr, DUAL: tl.constexpr, TMA_OUT: tl.constexpr,
              TMA_PRE: tl.constexpr, BLOCK_M: tl.constexpr):
    """Finish the [BLOCK_M, n] piece of an output tile at columns `cols` (the first is col0) from its
    fp32 accumulator(s): store, activate (saving the pre-activations), or the activation's backward.
    Stores go through _put: TMA_OUT for out/out2 (their row out_row0 first), TMA_PRE for the saved
    pre-activations (row0 first). Returns the piece's share of the routing weight's gradient, sum over
    its columns of acc * h (backward epilogues; zeros otherwise)."""
    mask = row_ok[:, None] & (cols < N)[None, :]
    pre_at = rows[:, None] * stride_pm + cols[None, :]
    out_at = out_rows[:, None] * stride_om + cols[None, :] * stride_on
    out_ty = out_ptr.dtype.element_ty
    part = tl.zeros((BLOCK_M,), dtype=tl.float32)
    if EPI == 0:  # EPI_STORE (scale is 1.0 unless SCALE)
        _put(out_ptr, out_desc, out_at, (acc * scale).to(out_ty), mask, out_row0, col0, full, TMA_OUT)
    elif EPI == 5:  # EPI_PARTIAL: the raw fp32 sums of one K slice, finished by _reduce_splits_kernel
        _put(out_ptr, out_desc, out_at, acc, mask, out_row0, col0, full, TMA_OUT)
        if DUAL:
            _put(out2_ptr, out2_desc, out_at, acc2, mask, out_row0, col0, full, TMA_OUT)
    elif EPI == 1:  # EPI_GELU: acc is the pre-activation
        if SAVE_PRE:
            _put(pre_ptr, pre_desc, pre_at, acc.to(out_ty), mask, row0, col0, full, TMA_PRE)
        _put(out_ptr, out_desc, out_at, _gelu(acc).to(out_ty), mask, out_row0, col0, full, TMA_OUT)
    elif EPI == 2:  # EPI_SWIGLU: acc is up, acc2 is gate
        if SAVE_PRE:
            _put(pre_ptr, pre_desc, pre_at, acc.to(out_ty), mask, row0, col0, full, TMA_PRE)
            _put(pre2_ptr, pre2_desc, pre_at, acc2.to(out_ty), mask, row0, col0, full, TMA_PRE)
        _put(out_ptr, out_desc, out_at, (acc * acc2 * tl.sigmoid(acc2)).to(out_ty), mask, out_row0, col0, full,
             TMA_OUT)
    else:  # EPI_GELU_BWD / EPI_SWIGLU_BWD: acc = dy @ w_down^T, the gradient of h before the routing weight
        up = tl.load(pre_ptr + pre_at, mask=mask, other=0.0).to(tl.float32)
        dh = acc * scale
        if EPI == 3:
            part = tl.sum(acc * _gelu(up), axis=1)
            _put(out_ptr, out_desc, out_at, (dh * _gelu_grad(up)).to(out_ty), mask, out_row0, col0, full, TMA_OUT)
        else:
            gate = tl.load(pre2_ptr + pre_at, mask=mask, other=0.0).to(tl.float32)
            sig = tl.sigmoid(gate)
            part = tl.sum(acc * (up * gate * sig), axis=1)
            _put(out_ptr, out_desc, out_at, (dh * gate * sig).to(out_ty), mask, out_row0, col0, full, TMA_OUT)
            _put(out2_ptr, out2_desc, out_at, (dh * up * sig * (1.0 + gate * (1.0 - sig))).to(out_ty), mask,
                 out_row0, col0, full, TMA_OUT)
    return part


@triton.jit
def _out_descriptor(ptr, rows, N, stride, ON: tl.constexpr, BLOCK_M: tl.constexpr, SUB_N: tl.constexpr):
    """A tensor descriptor over the [rows, N] output at ptr (row stride `stride`), boxes of
    [BLOCK_M, SUB_N] (one epilogue piece); without ON, ptr itself (unused)."""
    if ON:
        d = tl.make_tensor_descriptor(ptr, shape=[rows, N], strides=[stride, 1], block_shape=[BLOCK_M, SUB_N])
    else:
        d = ptr
    return d


@triton.jit
def _reduce_splits_kernel(part_ptr, part2_ptr, out_ptr, out2_ptr, dst_ptr, scale_ptr, M, N, stride_om, stride_on,
                          SPLIT_K: tl.constexpr, DUAL: tl.constexpr, EPI: tl.constexpr, SCALE: tl.constexpr,
                          SCATTER: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Split-K's second pass: sum the SPLIT_K fp32 partials of each sorted row in slice order (a fixed
    order, so the result is deterministic) and run the epilogue the unsplit launch would have run."""
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    mask = row_ok[:, None] & (cols < N)[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for split in tl.static_range(SPLIT_K):
        at = (split * M + rows)[:, None] * N + cols[None, :]
        acc += tl.load(part_ptr + at, mask=mask, other=0.0)
        if DUAL:
            acc2 += tl.load(part2_ptr + at, mask=mask, other=0.0)
    scale = tl.load(scale_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[:, None] if SCALE else 1.0
    out_rows = tl.load(dst_ptr + rows, mask=row_ok, other=0).to(tl.int64) if SCATTER else rows
    _epilogue(acc, acc2, rows, out_rows, row_ok, cols, N, scale, out_ptr, out2_ptr, out_ptr, out_ptr, 0, stride_om,
              stride_on, out_ptr, out_ptr, out_ptr, out_ptr, 0, 0, 0, False, EPI, False, DUAL, False, False, BLOCK_M)


@triton.autotune(configs=_dw_configs(), key=["ROWS_CLASS", "K", "N", "GATHER_A", "GATHER_B", "SCALE_A"])
@triton.jit
def _dw_kernel(
    a_ptr, a_src_ptr, b_ptr, b_src_ptr, scale_ptr, offsets_ptr, dw_ptr,
    K, N, ROWS_CLASS,
    stride_am, stride_ak, stride_bm, stride_bn, stride_de, stride_dk, stride_dn,
    GATHER_A: tl.constexpr, GATHER_B: tl.constexpr, SCALE_A: tl.constexpr,
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
        if SCALE_A:  # a_g^T diag(scale) b_g: scale A, the operand the MMA takes from registers (B is read
            # from shared memory, so scaling it would cost a round trip there); the product is rounded
            # once, to the input type, as torch's own backward rounds scale * dy
            scale = tl.load(scale_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
            a = (a.to(tl.float32) * scale[:, None]).to(a_ptr.dtype.element_ty)
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


TMA_ENABLED = os.environ.get("MOE_TMA", "1") != "0"  # MOE_TMA=0: pointer loads everywhere (to compare)


def _tma_ok(t: torch.Tensor, inner: int) -> bool:
    """Whether a tensor descriptor can cover t with `inner` as its unit-stride dimension: TMA needs a
    16-byte aligned base and every other stride a multiple of 16 bytes."""
    size = t.element_size()
    return (t.stride(inner) == 1 and t.data_ptr() % 16 == 0
            and all(st * size % 16 == 0 for d, st in enumerate(t.stride()) if d != inner))


def _use_tma(a, w, a2, w2, gather: bool, wq: int) -> bool:
    """TMA for W (and A when its rows are not gathered) on Hopper and later, and under the interpreter
    (which emulates it, so the CPU tests cover this path): not for packed int4 W (its K is halved and
    unpacked by hand), and only where every operand's layout allows (_tma_ok)."""
    if not TMA_ENABLED or wq == 2 or _arch(a.device.index or 0) < 90:
        return False
    w_inner = 2 if w.stride(2) == 1 else 1
    ws = [w] + ([w2] if w2 is not None else [])
    as_ = [] if gather else [a] + ([a2] if a2 is not None else [])
    return all(_tma_ok(t, w_inner) for t in ws) and all(_tma_ok(t, 1) for t in as_)


def _scratch(size: int, alignment: int, stream):
    """Triton's global scratch for tensor descriptors made inside a kernel (128 bytes per program)."""
    return torch.empty(size, dtype=torch.int8, device="cpu" if INTERPRET else "cuda")


@functools.cache
def _arch(device_index: int) -> int:
    """The pinned tables' architecture: 90 (Hopper and later: TMA, warp-group MMA) or 80 (the rest)."""
    if INTERPRET:
        return 90
    return 90 if torch.cuda.get_device_capability(device_index)[0] >= 9 else 80


def _dot_args(dtype: torch.dtype) -> dict:
    tf32 = dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    return dict(DOT_FP32=INTERPRET and dtype == torch.bfloat16, PRECISION="tf32" if tf32 else "ieee")


def _launch_rows(a, w, offsets, out, *, m: int, src=None, w2=None, a2=None, dual=False, epi=EPI_STORE,
                 pre=None, pre2=None, out2=None, dst=None, scale=None, dscale=None, ws=None, ws2=None, wq=0,
                 qgroup=128, meta=None, split=None):
    """Launch _rows_kernel over m sorted rows: out[dst[r] or r] = epilogue(a[src[r] or r] @ w[g(r)]).
    w and w2 are [E, K, N] views with any strides (w2 shares w's strides); pre/pre2/dscale are
    contiguous [m, ...] buffers. Quantized weights (wq 1: int8/fp8 with ws [E, N]; wq 2: int4 packed
    [E, K/2, N] with ws [E, K/qgroup, N]; see kernels/quantized.py) come with their scales. See the
    module doc for the options; the named steps below are the combinations the expert MLP uses.
    meta / split (scripts/tune_configs.py): launch with these meta-parameters and K slices instead of
    the pinned table's and split_k's (with split > 1, meta is the partial pass's)."""
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
        return (min(tiles * meta["SPLIT_K"], n_prog),)

    flags = dict(GATHER=src is not None, DUAL=dual, PAIR2=a2 is not None, EPI=epi, SAVE_PRE=pre is not None,
                 SCALE=scale is not None, SCATTER=dst is not None, WQ=wq)
    w_t = w.stride(2) != 1  # W read through its transpose (dX = dY W^T)
    tma = _use_tma(a, w, a2, w2, src is not None, wq)
    if tma:
        triton.set_allocator(_scratch)
    bound = rows_bound(m, E)
    forced = meta
    if AUTOTUNE and forced is None:
        kernel, meta, split = _rows_kernel, {}, 1
    else:
        from kernels.pinned_configs import ROWS

        table = ROWS[_arch(a.device.index or 0)]
        if forced is None:
            meta = pinned(table, mode_key({**flags, "TRANSPOSED_W": w_t}), bound, _row_configs())
        if split is None:
            splittable = bound == "memory" and epi <= EPI_SWIGLU and pre is None and a2 is None
            split = split_k(m, E, K, N, meta, n_prog) if splittable else 1
        if split > 1:  # the partial pass: raw sums into a workspace; scale, scatter and epilogue come after
            final = dict(out=out, out2=out2, dst=dst, scale=scale, epi=epi)
            flags.update(EPI=EPI_PARTIAL, SCALE=False, SCATTER=False)
            if forced is None:
                meta = pinned(table, mode_key({**flags, "TRANSPOSED_W": w_t}), bound, _row_configs())
            out = torch.empty(split * m, N, device=a.device, dtype=torch.float32)
            out2 = torch.empty_like(out) if dual else None
            dst = scale = None
        kernel = _rows_kernel.fn
    k_split = triton.cdiv(triton.cdiv(K, split), meta.get("BLOCK_K", 1)) * meta.get("BLOCK_K", 1)
    # TMA stores too when every output the kernel writes row-contiguously qualifies
    tma_store = tma and all(_tma_ok(t, 1) for t in (None if dst is not None else out, out2, pre, pre2) if t is not None)
    kernel[grid](
        a, a2 if a2 is not None else dummy, src if src is not None else dummy, w, w2 if w2 is not None else dummy,
        offsets, out, out2 if out2 is not None else dummy, pre if pre is not None else dummy,
        pre2 if pre2 is not None else dummy, dst if dst is not None else dummy,
        scale if scale is not None else dummy, dscale if dscale is not None else dummy,
        ws if ws is not None else dummy, ws2 if ws2 is not None else dummy,
        K, N, E, rows_class(m, E), dscale.shape[1] if dscale is not None else 0, k_split if split > 1 else K,
        a.stride(0), a.stride(1), w.stride(0), w.stride(1), w.stride(2), out.stride(0), out.stride(1),
        pre.stride(0) if pre is not None else 0, dscale.stride(0) if dscale is not None else 0,
        ws.stride(0) if ws is not None else 0, ws.stride(1) if wq == 2 else 0, ws.stride(-1) if ws is not None else 0,
        QGROUP=qgroup, E_POW2=triton.next_power_of_2(E), TMA=tma, TMA_STORE=tma_store, W_T=w_t,
        SPLIT_K=split,
        **flags, **_dot_args(a.dtype), **meta,
    )
    if split == 1:
        return out
    block_n = 32 if INTERPRET else 128
    _reduce_splits_kernel[(triton.cdiv(m, 16), triton.cdiv(N, block_n))](
        out, out2 if out2 is not None else out, final["out"], final["out2"] if final["out2"] is not None else dummy,
        final["dst"] if final["dst"] is not None else dummy, final["scale"] if final["scale"] is not None else dummy, m,
        N, final["out"].stride(0), final["out"].stride(1), SPLIT_K=split, DUAL=dual, EPI=final["epi"],
        SCALE=final["scale"] is not None, SCATTER=final["dst"] is not None, BLOCK_M=16, BLOCK_N=block_n, num_warps=4,
        num_stages=1)
    return final["out"]


def split_k(m: int, e: int, k: int, n: int, meta: dict, n_programs: int) -> int:
    """How many K slices a memory-bound launch (decode) splits into: when its output tiles are fewer
    than two waves of programs, double the slices (at most 8, each at least one BLOCK_K deep) until
    they are not. The tile count is an upper bound from the host's view (no device sync): at most m
    row tiles, and at most cdiv(m, BLOCK_M) + E of them."""
    tiles = min(m, triton.cdiv(m, meta["BLOCK_M"]) + e) * triton.cdiv(n, meta["BLOCK_N"])
    k_blocks = triton.cdiv(k, meta["BLOCK_K"])
    split = 1
    while split < 8 and tiles * split < 2 * n_programs and 2 * split <= k_blocks:
        split *= 2
    return split


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
    width = triton.cdiv(n, MAX_BLOCK_N) * (MAX_BLOCK_N // DSCALE_COLS)
    return torch.zeros(m, width, device=device, dtype=torch.float32)


def expert_xt_y(a, b, offsets, out, *, m: int, a_src=None, b_src=None, a_scale=None):
    """The weight gradients (backward steps 2-3): out[g] = a_g^T @ b_g per expert over m sorted rows,
    with a's / b's rows optionally gathered (a[a_src[r]]) and a's rows scaled by a_scale[r]. out is
    [E, K, N]."""
    E, K, N = out.shape
    if K == 0 or N == 0:
        return out
    dummy = offsets
    grid = lambda meta: (E * triton.cdiv(K, meta["BLOCK_K"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    flags = dict(GATHER_A=a_src is not None, GATHER_B=b_src is not None, SCALE_A=a_scale is not None)
    if AUTOTUNE:
        kernel, meta = _dw_kernel, {}
    else:
        from kernels.pinned_configs import DW

        table = DW[_arch(a.device.index or 0)]
        kernel, meta = _dw_kernel.fn, pinned(table, mode_key(flags, DW_FLAGS), "compute", _dw_configs())
        meta.pop("GROUP_M", None)
    kernel[grid](
        a, a_src if a_src is not None else dummy, b, b_src if b_src is not None else dummy,
        a_scale if a_scale is not None else dummy, offsets, out, K, N, rows_class(m, E),
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1), out.stride(2),
        **flags, **_dot_args(a.dtype), **meta,
    )
    return out
