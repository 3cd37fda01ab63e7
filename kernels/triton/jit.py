"""The Triton kernels for matmuls over experts with ragged rows (the launchers are in launch.py).

Legend: M sorted rows (token-expert assignments grouped by expert), K reduction width, N output
width, E experts, T tokens, A = T*k assignments; `offsets` int32 [E] are cumulative row counts
(expert g owns sorted rows offsets[g-1]:offsets[g]).

Three kernels:

`rows_kernel`: out[r] = epilogue(a[src[r]] @ w[g(r)]) for sorted rows r, tiled over (row tile,
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
    - EPI: what the epilogue does with the fp32 accumulator (the EPI_* names of modes.py): store it;
      GELU or SwiGLU forward (optionally saving the pre-activations for backward); GELU or SwiGLU
      backward; or (EPI_PARTIAL, split-K) store the raw sums of one K slice. EPI_SPLIT = 2 runs it one
      column half at a time, which keeps the large tiles' epilogues in registers.
    - SCALE / SCATTER: multiply row r by scale[r] and store it at row dst[r] (the routing weight and
      the move back to assignment order). Every output row is written by exactly one program, so the
      result is deterministic: no atomics.
    - WQ: W quantized (the WQ_* names of modes.py), widened as it is loaded.
    - TMA (sm_90+): W, and A when not gathered, arrive through tensor descriptors (the copy engine,
      out-of-bounds boxes zero-filled); otherwise through pointer loads the compiler turns into
      asynchronous copies. Outputs are stored through pointers: a row tile's last rows may belong
      to the next expert, which a TMA box store would overwrite.
    - SPLIT_K (decode): when the output tiles are fewer than two waves of programs (split_k), each
      tile's K range is cut into slices computed by different programs into an fp32 workspace.

`reduce_splits_kernel`: split-K's second pass: sums a row's slices in order (deterministic) and
    runs the epilogue.

`dw_kernel`: dw[g] = a_g^T @ b_g for each expert: one program per (expert, K tile, N tile), each
    looping over its expert's rows (gathered on load, and A's rows scaled by the routing weight when
    asked). An expert with no rows gets exact zeros.

All accumulate in fp32. fp32 inputs use IEEE fp32 dots unless torch allows TF32
(`torch.backends.cuda.matmul.allow_tf32`), so the default matches torch.matmul. Under Triton's
interpreter (TRITON_INTERPRET=1, how the CPU tests run these kernels) bf16 dots are upcast to fp32
inside the kernel (DOT_FP32), because the interpreter's bf16 dot is wrong.

The kernels' parameters stay flat (Triton specializes each by name: unit strides, aligned pointers,
which kernels.tuning.check_compile repeats); inside, the values that travel together are bundled
into the named tuples below, and compile-time switches are passed to the helpers by keyword.
"""

from __future__ import annotations

from collections import namedtuple

import triton
import triton.language as tl

from kernels.triton.configs import dw_configs, prune_row_configs, row_configs
from kernels.triton.modes import (
    DSCALE_COLS,
    EPI_GELU,
    EPI_GELU_BWD,
    EPI_PARTIAL,
    EPI_STORE,
    EPI_SWIGLU,
    EPI_SWIGLU_BWD,
    WQ_8BIT,
    WQ_INT4,
    WQ_NONE,
)

# A [rows, K] operand: pointers (or, A_TMA, the tensor descriptor) and strides
Operand = namedtuple("Operand", ["ptr", "desc", "stride_m", "stride_k"])
# One expert's W: ptr at expert g's matrix, desc over all of W (TMA), strides; and its scales (WQ)
Weight = namedtuple("Weight", ["ptr", "desc", "stride_k", "stride_n", "scales", "stride_sg", "stride_sn"])
# The A rows of a row tile: the rows to read (gathered, or the tile's own), the first (TMA), which are real
Rows = namedtuple("Rows", ["src", "row0", "ok"])
# Where a tile lives in W: expert g, the tile's columns (the first is n0), and the bounds K and N
ColumnTile = namedtuple("ColumnTile", ["g", "cols", "n0", "K", "N"])
# Where the epilogue writes: out (and out2: DUAL's second output or SwiGLU's d_gate), the saved
# pre-activations, their strides, and their tensor descriptors (or the pointers again, when unused)
Outputs = namedtuple(
    "Outputs",
    [
        "out",
        "out2",
        "pre",
        "pre2",
        "stride_om",
        "stride_on",
        "stride_pm",
        "out_desc",
        "out2_desc",
        "pre_desc",
        "pre2_desc",
    ],
)
# One epilogue piece: its sorted rows, the rows it writes (scattered or not), which rows are real, its
# columns; and for TMA boxes the first output row, the first sorted row, the first column, and
# whether every row is the expert's (full)
Piece = namedtuple("Piece", ["rows", "out_rows", "ok", "cols", "out_row0", "row0", "col0", "full"])


@triton.jit
def _gelu(x):
    return 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))


@triton.jit
def _gelu_grad(x):
    cdf = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))
    return cdf + x * tl.exp(-0.5 * x * x) * 0.3989422804014327


@triton.jit
def _load_w(
    w,
    at,
    ks,
    k0,
    dtype,
    WQ: tl.constexpr,
    QGROUP: tl.constexpr,
    TMA: tl.constexpr,
    W_T: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """The [BLOCK_K, BLOCK_N] tile w[g][ks, cols] (w a Weight, at a ColumnTile) in `dtype`: through the
    tensor descriptor (TMA: the copy engine fetches the box, zero-filled past K and N; W_T: w[g] is
    stored [N, K]) or through pointers. Quantized W (WQ, see kernels/quantized.py) is widened as it is
    loaded: int8 and fp8 exactly (their per-column scales are applied to the accumulator afterwards, by
    the caller); int4 times its group's scale here, since that scale changes along K."""
    if TMA:
        if W_T:
            tile = tl.trans(w.desc.load([at.g, at.n0, k0]).reshape(BLOCK_N, BLOCK_K))
        else:
            tile = w.desc.load([at.g, k0, at.n0]).reshape(BLOCK_K, BLOCK_N)
        if WQ == WQ_8BIT:
            tile = tile.to(dtype)
    elif WQ == WQ_INT4:  # two per byte along K, low nibble first, stored as value + 8
        w_ok = (ks[:, None] < at.K) & (at.cols[None, :] < at.N)
        packed = tl.load(w.ptr + (ks // 2)[:, None] * w.stride_k + at.cols[None, :] * w.stride_n, mask=w_ok, other=8)
        nibble = (packed.to(tl.int32) >> ((ks % 2) * 4)[:, None]) & 15
        if QGROUP % BLOCK_K == 0:  # the block lies inside one group: one row of scales
            s = tl.load(
                w.scales + (k0 // QGROUP) * w.stride_sg + at.cols * w.stride_sn, mask=at.cols < at.N, other=0.0
            )[None, :]
        else:
            s = tl.load(
                w.scales + (ks // QGROUP)[:, None] * w.stride_sg + at.cols[None, :] * w.stride_sn, mask=w_ok, other=0.0
            )
        tile = ((nibble - 8).to(tl.float32) * s).to(dtype)
    else:
        w_ok = (ks[:, None] < at.K) & (at.cols[None, :] < at.N)
        tile = tl.load(w.ptr + ks[:, None] * w.stride_k + at.cols[None, :] * w.stride_n, mask=w_ok, other=0.0)
        if WQ == WQ_8BIT:  # int8 or fp8 e4m3: every value is exact in bf16 and fp32
            tile = tile.to(dtype)
    return tile  # one return: the compiler types every return alike, even in a pruned branch


@triton.jit
def _w_descriptor(
    w_ptr,
    E,
    K,
    N,
    stride_we,
    stride_wk,
    stride_wn,
    TMA: tl.constexpr,
    W_T: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """A tensor descriptor over all of W [E, K, N] (W_T: stored as [E, N, K]), boxes of one expert's
    [BLOCK_K, BLOCK_N] tile; without TMA, w_ptr itself (the argument is then unused)."""
    if TMA:
        if W_T:
            d = tl.make_tensor_descriptor(
                w_ptr, shape=[E, N, K], strides=[stride_we, stride_wn, 1], block_shape=[1, BLOCK_N, BLOCK_K]
            )
        else:
            d = tl.make_tensor_descriptor(
                w_ptr, shape=[E, K, N], strides=[stride_we, stride_wk, 1], block_shape=[1, BLOCK_K, BLOCK_N]
            )
    else:
        d = w_ptr
    return d


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
def _accumulate(
    acc,
    acc2,
    a,
    rows,
    w,
    w2,
    at,
    k_lo,
    k_hi,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
    WQ: tl.constexpr,
    QGROUP: tl.constexpr,
    DUAL: tl.constexpr,
    TMA: tl.constexpr,
    A_TMA: tl.constexpr,
    W_T: tl.constexpr,
):
    """acc += a[rows, k_lo:k_hi] @ w[g][k_lo:k_hi, cols] (a an Operand, rows a Rows, w a Weight, at a
    ColumnTile), BLOCK_K columns of A at a time (k_lo a multiple of BLOCK_K; k_hi one too, or K); with
    DUAL also acc2 += the same with w2 from the same A tile (SwiGLU's up and gate: A is read once).
    A_TMA: A's rows are the contiguous row0.. (not gathered) and come through a.desc."""
    for k0 in range(k_lo, k_hi, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        if A_TMA:  # rows past the expert's end belong to the next expert: read, then masked at the store
            x = a.desc.load([rows.row0, k0])
        else:
            x = tl.load(
                a.ptr + rows.src[:, None] * a.stride_m + ks[None, :] * a.stride_k,
                mask=rows.ok[:, None] & (ks[None, :] < at.K),
                other=0.0,
            )
        wt = _load_w(w, at, ks, k0, x.dtype, WQ=WQ, QGROUP=QGROUP, TMA=TMA, W_T=W_T, BLOCK_K=BLOCK_K, BLOCK_N=BLOCK_N)
        if DUAL:
            wt2 = _load_w(
                w2, at, ks, k0, x.dtype, WQ=WQ, QGROUP=QGROUP, TMA=TMA, W_T=W_T, BLOCK_K=BLOCK_K, BLOCK_N=BLOCK_N
            )
        if DOT_FP32:
            x, wt = x.to(tl.float32), wt.to(tl.float32)
            if DUAL:
                wt2 = wt2.to(tl.float32)
        acc = tl.dot(x, wt, acc, input_precision=PRECISION)
        if DUAL:
            acc2 = tl.dot(x, wt2, acc2, input_precision=PRECISION)
    return acc, acc2


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
def _epilogue(
    acc,
    acc2,
    scale,
    p,
    o,
    N,
    EPI: tl.constexpr,
    SAVE_PRE: tl.constexpr,
    DUAL: tl.constexpr,
    TMA_OUT: tl.constexpr,
    TMA_PRE: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """Finish the [BLOCK_M, n] piece p (a Piece) of an output tile from its fp32 accumulator(s), into
    the Outputs o: store, activate (saving the pre-activations), or the activation's backward. Stores
    go through _put: TMA_OUT for out/out2 (their row p.out_row0 first), TMA_PRE for the saved
    pre-activations (row p.row0 first). Returns the piece's share of the routing weight's gradient,
    sum over its columns of acc * h (backward epilogues; zeros otherwise)."""
    mask = p.ok[:, None] & (p.cols < N)[None, :]
    pre_at = p.rows[:, None] * o.stride_pm + p.cols[None, :]
    out_at = p.out_rows[:, None] * o.stride_om + p.cols[None, :] * o.stride_on
    out_ty = o.out.dtype.element_ty
    part = tl.zeros((BLOCK_M,), dtype=tl.float32)
    if EPI == EPI_STORE:  # (scale is 1.0 unless SCALE)
        _put(o.out, o.out_desc, out_at, (acc * scale).to(out_ty), mask, p.out_row0, p.col0, p.full, TMA_OUT)
    elif EPI == EPI_PARTIAL:  # the raw fp32 sums of one K slice, finished by reduce_splits_kernel
        _put(o.out, o.out_desc, out_at, acc, mask, p.out_row0, p.col0, p.full, TMA_OUT)
        if DUAL:
            _put(o.out2, o.out2_desc, out_at, acc2, mask, p.out_row0, p.col0, p.full, TMA_OUT)
    elif EPI == EPI_GELU:  # acc is the pre-activation
        if SAVE_PRE:
            _put(o.pre, o.pre_desc, pre_at, acc.to(out_ty), mask, p.row0, p.col0, p.full, TMA_PRE)
        _put(o.out, o.out_desc, out_at, _gelu(acc).to(out_ty), mask, p.out_row0, p.col0, p.full, TMA_OUT)
    elif EPI == EPI_SWIGLU:  # acc is up, acc2 is gate
        if SAVE_PRE:
            _put(o.pre, o.pre_desc, pre_at, acc.to(out_ty), mask, p.row0, p.col0, p.full, TMA_PRE)
            _put(o.pre2, o.pre2_desc, pre_at, acc2.to(out_ty), mask, p.row0, p.col0, p.full, TMA_PRE)
        _put(
            o.out,
            o.out_desc,
            out_at,
            (acc * acc2 * tl.sigmoid(acc2)).to(out_ty),
            mask,
            p.out_row0,
            p.col0,
            p.full,
            TMA_OUT,
        )
    else:  # EPI_GELU_BWD / EPI_SWIGLU_BWD: acc = dy @ w_down^T, the gradient of h before the routing weight
        up = tl.load(o.pre + pre_at, mask=mask, other=0.0).to(tl.float32)
        dh = acc * scale
        if EPI == EPI_GELU_BWD:
            part = tl.sum(acc * _gelu(up), axis=1)
            _put(o.out, o.out_desc, out_at, (dh * _gelu_grad(up)).to(out_ty), mask, p.out_row0, p.col0, p.full, TMA_OUT)
        else:
            gate = tl.load(o.pre2 + pre_at, mask=mask, other=0.0).to(tl.float32)
            sig = tl.sigmoid(gate)
            part = tl.sum(acc * (up * gate * sig), axis=1)
            _put(o.out, o.out_desc, out_at, (dh * gate * sig).to(out_ty), mask, p.out_row0, p.col0, p.full, TMA_OUT)
            _put(
                o.out2,
                o.out2_desc,
                out_at,
                (dh * up * sig * (1.0 + gate * (1.0 - sig))).to(out_ty),
                mask,
                p.out_row0,
                p.col0,
                p.full,
                TMA_OUT,
            )
    return part


# The key holds every compile-time mode (a variant never reuses another's choice) and stride_wn, which
# tells a transposed W (dX through W^T: stride_wn = K) from a plain one (stride_wn = 1).
@triton.autotune(
    configs=row_configs(),
    key=[
        "ROWS_CLASS",
        "K",
        "N",
        "EPI",
        "DUAL",
        "PAIR2",
        "WQ",
        "QGROUP",
        "GATHER",
        "SCATTER",
        "SCALE",
        "SAVE_PRE",
        "stride_wn",
    ],
    prune_configs_by={"early_config_prune": prune_row_configs},
)
@triton.jit
def rows_kernel(
    # inputs, the row maps, the offsets
    a_ptr,
    a2_ptr,
    src_ptr,
    w_ptr,
    w2_ptr,
    offsets_ptr,
    # outputs, the routing weights (read) and their gradient partials (written), W's scales
    out_ptr,
    out2_ptr,
    pre_ptr,
    pre2_ptr,
    dst_ptr,
    scale_ptr,
    dscale_ptr,
    ws_ptr,
    ws2_ptr,
    # sizes
    K,
    N,
    E,
    ROWS_CLASS,
    DSCALE_WIDTH,
    K_SPLIT,
    # strides: A, W, out, pre, dscale, W's scales
    stride_am,
    stride_ak,
    stride_we,
    stride_wk,
    stride_wn,
    stride_om,
    stride_on,
    stride_pm,
    stride_dm,
    stride_se,
    stride_sg,
    stride_sn,
    # modes (module doc)
    WQ: tl.constexpr,
    QGROUP: tl.constexpr,
    GATHER: tl.constexpr,
    DUAL: tl.constexpr,
    PAIR2: tl.constexpr,
    EPI: tl.constexpr,
    SAVE_PRE: tl.constexpr,
    SCALE: tl.constexpr,
    SCATTER: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
    TMA: tl.constexpr,
    TMA_STORE: tl.constexpr,
    W_T: tl.constexpr,
    E_POW2: tl.constexpr,
    # tiling (configs.py)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    EPI_SPLIT: tl.constexpr,
    SPLIT_K: tl.constexpr,
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
    w2_desc = _w_descriptor(
        w2_ptr, E, K, N, stride_we, stride_wk, stride_wn, TMA and (DUAL or PAIR2), W_T, BLOCK_K, BLOCK_N
    )
    if A_TMA:
        a_desc = tl.make_tensor_descriptor(
            a_ptr, shape=[last, K], strides=[stride_am, 1], block_shape=[BLOCK_M, BLOCK_K]
        )
        a2_desc = (
            tl.make_tensor_descriptor(a2_ptr, shape=[last, K], strides=[stride_am, 1], block_shape=[BLOCK_M, BLOCK_K])
            if PAIR2
            else a_desc
        )
    else:
        a_desc, a2_desc = a_ptr, a2_ptr
    # TMA_STORE: non-scattered outputs (and the saved pre-activations) leave full row tiles as TMA boxes
    TMA_OUT: tl.constexpr = TMA_STORE and not SCATTER
    TMA_PRE: tl.constexpr = TMA_STORE and SAVE_PRE and (EPI == EPI_GELU or EPI == EPI_SWIGLU)
    SUB_N: tl.constexpr = BLOCK_N // EPI_SPLIT
    out_desc = _out_descriptor(out_ptr, last * SPLIT_K, N, stride_om, TMA_OUT, BLOCK_M, SUB_N)
    out2_desc = _out_descriptor(
        out2_ptr,
        last * SPLIT_K,
        N,
        stride_om,
        TMA_OUT and (EPI == EPI_SWIGLU_BWD or (EPI == EPI_PARTIAL and DUAL)),
        BLOCK_M,
        SUB_N,
    )
    pre_desc = _out_descriptor(pre_ptr, last, N, stride_pm, TMA_PRE, BLOCK_M, SUB_N)
    pre2_desc = _out_descriptor(pre2_ptr, last, N, stride_pm, TMA_PRE and EPI == EPI_SWIGLU, BLOCK_M, SUB_N)
    outputs = Outputs(
        out_ptr, out2_ptr, pre_ptr, pre2_ptr, stride_om, stride_on, stride_pm, out_desc, out2_desc, pre_desc, pre2_desc
    )
    a = Operand(a_ptr, a_desc, stride_am, stride_ak)
    a2 = Operand(a2_ptr, a2_desc, stride_am, stride_ak)

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
        w = Weight(w_g, w_desc, stride_wk, stride_wn, ws_g, stride_sg, stride_sn)
        w2 = Weight(w2_g, w2_desc, stride_wk, stride_wn, ws2_g, stride_sg, stride_sn)
        a_tile = Rows(a_rows, row0, row_ok)
        at = ColumnTile(g, cols, col_tile * BLOCK_N, K, N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc, acc2 = _accumulate(
            acc,
            acc,
            a,
            a_tile,
            w,
            w2,
            at,
            k_lo,
            k_hi,
            BLOCK_K=BLOCK_K,
            BLOCK_N=BLOCK_N,
            DOT_FP32=DOT_FP32,
            PRECISION=PRECISION,
            WQ=WQ,
            QGROUP=QGROUP,
            DUAL=DUAL,
            TMA=TMA,
            A_TMA=A_TMA,
            W_T=W_T,
        )
        if WQ == WQ_8BIT:  # per-column scales, once per tile
            acc = acc * tl.load(ws_g + cols * stride_sn, mask=cols < N, other=0.0)[None, :]
            if DUAL:
                acc2 = acc2 * tl.load(ws2_g + cols * stride_sn, mask=cols < N, other=0.0)[None, :]
        if PAIR2:  # a second (A, W) pair into the same accumulator (never quantized: training only)
            acc, _ = _accumulate(
                acc,
                acc,
                a2,
                a_tile,
                w2,
                w2,
                at,
                k_lo,
                k_hi,
                BLOCK_K=BLOCK_K,
                BLOCK_N=BLOCK_N,
                DOT_FP32=DOT_FP32,
                PRECISION=PRECISION,
                WQ=WQ_NONE,
                QGROUP=QGROUP,
                DUAL=False,
                TMA=TMA,
                A_TMA=A_TMA,
                W_T=W_T,
            )

        scale = tl.load(scale_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[:, None] if SCALE else 1.0
        out_rows = tl.load(dst_ptr + rows, mask=row_ok, other=0).to(tl.int64) if SCATTER else rows
        if EPI == EPI_PARTIAL:  # out is the [SPLIT_K * M, N] fp32 workspace, slice `split` first
            out_rows = rows + split * last
        full = in_g * BLOCK_M + BLOCK_M <= tl.sum(tl.where(e == g, ends - starts, 0))  # every row is g's
        out_row0 = row0 + split * last if EPI == EPI_PARTIAL else row0
        col0 = col_tile * BLOCK_N
        if EPI_SPLIT == 2:  # the epilogue one column half at a time: half the live registers (see _halves)
            acc_l, acc_r = _halves(acc, BLOCK_M, BLOCK_N)
            acc2_l, acc2_r = _halves(acc2, BLOCK_M, BLOCK_N)
            cols_l = col0 + tl.arange(0, BLOCK_N // 2)
            left = Piece(rows, out_rows, row_ok, cols_l, out_row0, row0, col0, full)
            part = _epilogue(
                acc_l,
                acc2_l,
                scale,
                left,
                outputs,
                N,
                EPI=EPI,
                SAVE_PRE=SAVE_PRE,
                DUAL=DUAL,
                TMA_OUT=TMA_OUT,
                TMA_PRE=TMA_PRE,
                BLOCK_M=BLOCK_M,
            )
            # (the right half's columns are computed after the left half's epilogue, as the registers prefer:
            # computed before it, the compiler schedules the two halves differently and some tiles need more)
            right = Piece(rows, out_rows, row_ok, cols_l + BLOCK_N // 2, out_row0, row0, col0 + BLOCK_N // 2, full)
            part += _epilogue(
                acc_r,
                acc2_r,
                scale,
                right,
                outputs,
                N,
                EPI=EPI,
                SAVE_PRE=SAVE_PRE,
                DUAL=DUAL,
                TMA_OUT=TMA_OUT,
                TMA_PRE=TMA_PRE,
                BLOCK_M=BLOCK_M,
            )
        else:
            whole = Piece(rows, out_rows, row_ok, cols, out_row0, row0, col0, full)
            part = _epilogue(
                acc,
                acc2,
                scale,
                whole,
                outputs,
                N,
                EPI=EPI,
                SAVE_PRE=SAVE_PRE,
                DUAL=DUAL,
                TMA_OUT=TMA_OUT,
                TMA_PRE=TMA_PRE,
                BLOCK_M=BLOCK_M,
            )
        if EPI == EPI_GELU_BWD or EPI == EPI_SWIGLU_BWD:
            # d(routing weight of row r) = <dy_t, h_r @ w_down> = <acc_r, h_r>, summed over column tiles
            # in a fixed order on the host. This tile writes its partial at column col_tile*BLOCK_N/DSCALE_COLS
            # and zeros over the rest of its BLOCK_N/DSCALE_COLS columns, so whichever config ran last, every
            # column that can hold a partial is rewritten by each launch.
            j = tl.arange(0, BLOCK_N // DSCALE_COLS)
            dcols = col_tile * (BLOCK_N // DSCALE_COLS) + j
            partials = tl.where(j[None, :] == 0, part[:, None], 0.0)
            tl.store(
                dscale_ptr + rows[:, None] * stride_dm + dcols[None, :],
                partials,
                mask=row_ok[:, None] & (dcols[None, :] < DSCALE_WIDTH),
            )


@triton.jit
def reduce_splits_kernel(
    part_ptr,
    part2_ptr,
    out_ptr,
    out2_ptr,
    dst_ptr,
    scale_ptr,
    M,
    N,
    stride_om,
    stride_on,
    SPLIT_K: tl.constexpr,
    DUAL: tl.constexpr,
    EPI: tl.constexpr,
    SCALE: tl.constexpr,
    SCATTER: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
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
    # pointer stores only; no saved pre-activations (the unused fields repeat out_ptr)
    outputs = Outputs(out_ptr, out2_ptr, out_ptr, out_ptr, stride_om, stride_on, 0, out_ptr, out_ptr, out_ptr, out_ptr)
    piece = Piece(rows, out_rows, row_ok, cols, 0, 0, 0, False)
    _epilogue(
        acc,
        acc2,
        scale,
        piece,
        outputs,
        N,
        EPI=EPI,
        SAVE_PRE=False,
        DUAL=DUAL,
        TMA_OUT=False,
        TMA_PRE=False,
        BLOCK_M=BLOCK_M,
    )


@triton.autotune(configs=dw_configs(), key=["ROWS_CLASS", "K", "N", "GATHER_A", "GATHER_B", "SCALE_A"])
@triton.jit
def dw_kernel(
    a_ptr,
    a_src_ptr,
    b_ptr,
    b_src_ptr,
    scale_ptr,
    offsets_ptr,
    dw_ptr,
    K,
    N,
    ROWS_CLASS,
    stride_am,
    stride_ak,
    stride_bm,
    stride_bn,
    stride_de,
    stride_dk,
    stride_dn,
    GATHER_A: tl.constexpr,
    GATHER_B: tl.constexpr,
    SCALE_A: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
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
        a = tl.load(
            a_ptr + a_rows[:, None] * stride_am + ks[None, :] * stride_ak,
            mask=row_ok[:, None] & (ks[None, :] < K),
            other=0.0,
        )
        b = tl.load(
            b_ptr + b_rows[:, None] * stride_bm + ns[None, :] * stride_bn,
            mask=row_ok[:, None] & (ns[None, :] < N),
            other=0.0,
        )
        if SCALE_A:  # a_g^T diag(scale) b_g: scale A, the operand the MMA takes from registers (B is read
            # from shared memory, so scaling it would cost a round trip there); the product is rounded
            # once, to the input type, as torch's own backward rounds scale * dy
            scale = tl.load(scale_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
            a = (a.to(tl.float32) * scale[:, None]).to(a_ptr.dtype.element_ty)
        if DOT_FP32:
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(tl.trans(a), b, acc, input_precision=PRECISION)
    tl.store(
        dw_ptr + g.to(tl.int64) * stride_de + ks[:, None] * stride_dk + ns[None, :] * stride_dn,
        acc.to(dw_ptr.dtype.element_ty),
        mask=(ks[:, None] < K) & (ns[None, :] < N),
    )
