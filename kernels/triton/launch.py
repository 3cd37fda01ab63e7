"""The launchers of the Triton kernels (jit.py) and the named steps the expert MLP and the grouped
GEMM are made of. Tensors arrive checked (kernels.grouped_matmul / kernels.expert_mlp check them).

Shapes: x [T, D]; h, pre-activations, d_up, d_gate [M, F]; y, dx [A, D] in assignment order; src_M
the token of each sorted row, order_M its assignment, scale_M its weight.
"""

from __future__ import annotations

import functools
import os

import torch
import triton

from kernels.triton import configs
from kernels.triton.jit import dw_kernel, reduce_splits_kernel, rows_kernel
from kernels.triton.modes import (
    DSCALE_COLS,
    EPI_GELU,
    EPI_GELU_BWD,
    EPI_PARTIAL,
    EPI_STORE,
    EPI_SWIGLU,
    EPI_SWIGLU_BWD,
    MAX_BLOCK_N,
    WQ_INT4,
    WQ_NONE,
)

TMA_ENABLED = os.environ.get("MOE_TMA", "1") != "0"  # MOE_TMA=0: pointer loads everywhere (to compare)


@functools.cache
def num_programs(device_index: int) -> int:
    """The persistent grid's size: one program per SM (3 under the interpreter, so the persistent loop
    is exercised on the CPU too: several tiles per program)."""
    if configs.INTERPRET:
        return 3
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@functools.cache
def arch(device_index: int) -> int:
    """The pinned tables' architecture: 90 (Hopper and later: TMA, warp-group MMA) or 80 (the rest)."""
    if configs.INTERPRET:
        return 90
    return 90 if torch.cuda.get_device_capability(device_index)[0] >= 9 else 80


def tma_ok(t: torch.Tensor, inner: int) -> bool:
    """Whether a tensor descriptor can cover t with `inner` as its unit-stride dimension: TMA needs a
    16-byte aligned base and every other stride a multiple of 16 bytes."""
    size = t.element_size()
    return (
        t.stride(inner) == 1
        and t.data_ptr() % 16 == 0
        and all(st * size % 16 == 0 for d, st in enumerate(t.stride()) if d != inner)
    )


def use_tma(a, w, a2, w2, gather: bool, wq: int) -> bool:
    """TMA for W (and A when its rows are not gathered) on Hopper and later, and under the interpreter
    (which emulates it, so the CPU tests cover this path): not for packed int4 W (its K is halved and
    unpacked by hand), and only where every operand's layout allows (tma_ok)."""
    if not TMA_ENABLED or wq == WQ_INT4 or arch(a.device.index or 0) < 90:
        return False
    w_inner = 2 if w.stride(2) == 1 else 1
    ws = [w] + ([w2] if w2 is not None else [])
    as_ = [] if gather else [a] + ([a2] if a2 is not None else [])
    return all(tma_ok(t, w_inner) for t in ws) and all(tma_ok(t, 1) for t in as_)


def _scratch(size: int, alignment: int, stream):
    """Triton's global scratch for tensor descriptors made inside a kernel (128 bytes per program)."""
    return torch.empty(size, dtype=torch.int8, device="cpu" if configs.INTERPRET else "cuda")


def _dot_args(dtype: torch.dtype) -> dict:
    tf32 = dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    return dict(DOT_FP32=configs.INTERPRET and dtype == torch.bfloat16, PRECISION="tf32" if tf32 else "ieee")


def _or(t, stand_in):
    """t, or for a mode that does not use that pointer, a stand-in (any tensor: the kernel never reads it)."""
    return t if t is not None else stand_in


def _stride(t, dim: int) -> int:
    """t's stride along dim, or 0 for an absent tensor."""
    return t.stride(dim) if t is not None else 0


def launch_rows(
    a,
    w,
    offsets,
    out,
    *,
    m: int,
    src=None,
    w2=None,
    a2=None,
    dual=False,
    epi=EPI_STORE,
    pre=None,
    pre2=None,
    out2=None,
    dst=None,
    scale=None,
    dscale=None,
    ws=None,
    ws2=None,
    wq=WQ_NONE,
    qgroup=128,
    meta=None,
    split=None,
):
    """Launch rows_kernel over m sorted rows: out[dst[r] or r] = epilogue(a[src[r] or r] @ w[g(r)]).
    w and w2 are [E, K, N] views with any strides (w2 shares w's strides); pre/pre2/dscale are
    contiguous [m, ...] buffers. Quantized weights (WQ_8BIT: int8/fp8 with ws [E, N]; WQ_INT4: packed
    [E, K/2, N] with ws [E, K/qgroup, N]; see kernels/quantized.py) come with their scales. See jit.py's
    doc for the options; the named steps below are the combinations the expert MLP uses.
    meta / split (kernels.tuning.tune_configs): launch with these meta-parameters and K slices instead
    of the pinned table's and split_k's (with split > 1, meta is the partial pass's)."""
    E, _, N = w.shape
    K = a.shape[1]  # (a packed int4 w holds K/2 rows)
    if m == 0 or N == 0:
        return out
    if w2 is not None and w2.stride() != w.stride():
        raise ValueError(f"rows kernel: w2 strides {w2.stride()} differ from w's {w.stride()}")
    if a2 is not None and a2.stride() != a.stride():
        raise ValueError(f"rows kernel: a2 strides {a2.stride()} differ from a's {a.stride()}")
    epi, wq = int(epi), int(wq)  # the modes travel as plain ints: the autotuner's and the pinned table's keys
    n_prog = num_programs(a.device.index or 0)

    def grid(meta):
        tiles = (triton.cdiv(m, meta["BLOCK_M"]) + E) * triton.cdiv(N, meta["BLOCK_N"])  # an upper bound
        return (min(tiles * meta["SPLIT_K"], n_prog),)

    flags = dict(
        GATHER=src is not None,
        DUAL=dual,
        PAIR2=a2 is not None,
        EPI=epi,
        SAVE_PRE=pre is not None,
        SCALE=scale is not None,
        SCATTER=dst is not None,
        WQ=wq,
    )
    w_t = w.stride(2) != 1  # W read through its transpose (dX = dY W^T)
    tma = use_tma(a, w, a2, w2, src is not None, wq)
    if tma:
        triton.set_allocator(_scratch)
    bound = configs.rows_bound(m, E)
    forced = meta
    if configs.AUTOTUNE and forced is None:
        kernel, meta, split = rows_kernel, {}, 1
    else:
        from kernels.pinned_configs import ROWS

        table = ROWS[arch(a.device.index or 0)]
        if forced is None:
            meta = configs.pinned(table, configs.mode_key({**flags, "TRANSPOSED_W": w_t}), bound, configs.row_configs())
        if split is None:
            splittable = bound == "memory" and epi <= EPI_SWIGLU and pre is None and a2 is None
            split = configs.split_k(m, E, K, N, meta, n_prog) if splittable else 1
        if split > 1:  # the partial pass: raw sums into a workspace; scale, scatter and epilogue come after
            final = dict(out=out, out2=out2, dst=dst, scale=scale, epi=epi)
            flags.update(EPI=int(EPI_PARTIAL), SCALE=False, SCATTER=False)
            if forced is None:
                meta = configs.pinned(
                    table, configs.mode_key({**flags, "TRANSPOSED_W": w_t}), bound, configs.row_configs()
                )
            out = torch.empty(split * m, N, device=a.device, dtype=torch.float32)
            out2 = torch.empty_like(out) if dual else None
            dst = scale = None
        kernel = rows_kernel.fn
    k_split = triton.cdiv(triton.cdiv(K, split), meta.get("BLOCK_K", 1)) * meta.get("BLOCK_K", 1)
    # TMA stores too when every output the kernel writes row-contiguously qualifies
    tma_store = tma and all(tma_ok(t, 1) for t in (None if dst is not None else out, out2, pre, pre2) if t is not None)
    dummy = offsets  # stands in for the pointers a mode does not use
    kernel[grid](
        a,
        _or(a2, dummy),
        _or(src, dummy),
        w,
        _or(w2, dummy),
        offsets,
        out,
        _or(out2, dummy),
        _or(pre, dummy),
        _or(pre2, dummy),
        _or(dst, dummy),
        _or(scale, dummy),
        _or(dscale, dummy),
        _or(ws, dummy),
        _or(ws2, dummy),
        K,
        N,
        E,
        configs.rows_class(m, E),
        dscale.shape[1] if dscale is not None else 0,
        k_split if split > 1 else K,
        a.stride(0),
        a.stride(1),
        w.stride(0),
        w.stride(1),
        w.stride(2),
        out.stride(0),
        out.stride(1),
        _stride(pre, 0),
        _stride(dscale, 0),
        _stride(ws, 0),
        ws.stride(1) if wq == WQ_INT4 else 0,
        _stride(ws, -1),
        QGROUP=qgroup,
        E_POW2=triton.next_power_of_2(E),
        TMA=tma,
        TMA_STORE=tma_store,
        W_T=w_t,
        SPLIT_K=split,
        **flags,
        **_dot_args(a.dtype),
        **meta,
    )
    if split == 1:
        return out
    reduce = configs.reduce_config()
    block_m, block_n = reduce.kwargs["BLOCK_M"], reduce.kwargs["BLOCK_N"]
    reduce_splits_kernel[(triton.cdiv(m, block_m), triton.cdiv(N, block_n))](
        out,
        _or(out2, out),
        final["out"],
        _or(final["out2"], dummy),
        _or(final["dst"], dummy),
        _or(final["scale"], dummy),
        m,
        N,
        final["out"].stride(0),
        final["out"].stride(1),
        SPLIT_K=split,
        DUAL=dual,
        EPI=final["epi"],
        SCALE=final["scale"] is not None,
        SCATTER=final["dst"] is not None,
        **reduce.kwargs,
        num_warps=reduce.num_warps,
        num_stages=reduce.num_stages,
    )
    return final["out"]


# The named steps.


def grouped_rows(a_MK, w_EKN, offsets, out_MN):
    """The plain grouped GEMM: out[r] = a[r] @ w[g(r)] (also dX = dY @ W^T through a transposed view)."""
    return launch_rows(a_MK, w_EKN, offsets, out_MN, m=a_MK.shape[0])


def up_activation(x_TD, src_M, w_up, w_gate, offsets, h_MF, pre_up=None, pre_gate=None, quant=None):
    """Forward step 1: h[r] = act(x[src[r]] @ w_up[g] (, x[src[r]] @ w_gate[g])), the gather in the
    loads, GELU or SwiGLU in the epilogue (SwiGLU's two products from one pass over x). With pre_*
    buffers, also save the pre-activations for backward. quant: dict(ws=, ws2=, wq=, qgroup=) when
    w_up / w_gate are quantized (kernels/quantized.py)."""
    swiglu = w_gate is not None
    return launch_rows(
        x_TD,
        w_up,
        offsets,
        h_MF,
        m=src_M.numel(),
        src=src_M,
        w2=w_gate,
        dual=swiglu,
        epi=EPI_SWIGLU if swiglu else EPI_GELU,
        pre=pre_up,
        pre2=pre_gate,
        **(quant or {}),
    )


def down_scatter(h_MF, w_down, offsets, order_M, scale_M, y_AD, quant=None):
    """Forward step 2: y[order[r]] = scale[r] * (h[r] @ w_down[g]): the routing weight and the move
    back to assignment order in the epilogue."""
    return launch_rows(h_MF, w_down, offsets, y_AD, m=h_MF.shape[0], dst=order_M, scale=scale_M, **(quant or {}))


def activation_backward(dy_TD, src_M, w_down, offsets, scale_M, pre_up, pre_gate, d_up, d_gate, dscale):
    """Backward step 1: dh = dy[src[r]] @ w_down[g]^T, then in the epilogue the activation's backward
    (d_up, and d_gate for SwiGLU, scaled by the routing weight) and the routing weight's gradient
    <dh, h> as per-column-tile partials in dscale (see dscale_buffer)."""
    swiglu = pre_gate is not None
    return launch_rows(
        dy_TD,
        w_down.transpose(1, 2),
        offsets,
        d_up,
        m=src_M.numel(),
        src=src_M,
        epi=EPI_SWIGLU_BWD if swiglu else EPI_GELU_BWD,
        pre=pre_up,
        pre2=pre_gate,
        out2=d_gate,
        scale=scale_M,
        dscale=dscale,
    )


def dx_scatter(d_up, d_gate, w_up, w_gate, offsets, order_M, dx_AD):
    """Backward step 4: dx[order[r]] = d_up[r] @ w_up[g]^T (+ d_gate[r] @ w_gate[g]^T in the same
    accumulator), stored in assignment order."""
    swiglu = w_gate is not None
    return launch_rows(
        d_up,
        w_up.transpose(1, 2),
        offsets,
        dx_AD,
        m=d_up.shape[0],
        dst=order_M,
        a2=d_gate,
        w2=w_gate.transpose(1, 2) if swiglu else None,
    )


def dscale_buffer(m: int, n: int, device) -> torch.Tensor:
    """The [m, width] fp32 buffer the backward epilogue writes per-column-tile partial row-dots into."""
    width = triton.cdiv(n, MAX_BLOCK_N.value) * (MAX_BLOCK_N.value // DSCALE_COLS.value)
    return torch.zeros(m, width, device=device, dtype=torch.float32)


def expert_xt_y(a, b, offsets, out, *, m: int, a_src=None, b_src=None, a_scale=None):
    """The weight gradients (backward steps 2-3): out[g] = a_g^T @ b_g per expert over m sorted rows,
    with a's / b's rows optionally gathered (a[a_src[r]]) and a's rows scaled by a_scale[r]. out is
    [E, K, N]."""
    E, K, N = out.shape
    if K == 0 or N == 0:
        return out
    grid = lambda meta: (E * triton.cdiv(K, meta["BLOCK_K"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    flags = dict(GATHER_A=a_src is not None, GATHER_B=b_src is not None, SCALE_A=a_scale is not None)
    if configs.AUTOTUNE:
        kernel, meta = dw_kernel, {}
    else:
        from kernels.pinned_configs import DW

        table = DW[arch(a.device.index or 0)]
        meta = configs.pinned(table, configs.mode_key(flags, configs.DW_FLAGS), "compute", configs.dw_configs())
        kernel = dw_kernel.fn
        meta.pop("GROUP_M", None)
    dummy = offsets
    kernel[grid](
        a,
        _or(a_src, dummy),
        b,
        _or(b_src, dummy),
        _or(a_scale, dummy),
        offsets,
        out,
        K,
        N,
        configs.rows_class(m, E),
        a.stride(0),
        a.stride(1),
        b.stride(0),
        b.stride(1),
        out.stride(0),
        out.stride(1),
        out.stride(2),
        **flags,
        **_dot_args(a.dtype),
        **meta,
    )
    return out
