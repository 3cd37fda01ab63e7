"""The kernel variants the tools compile, choose and time: each mode of a kernel as the launchers in
kernels/triton/launch.py set its flags, named as the compile reports name it. W_TYPE (a quantized
variant's weight element type) is the compiler's business only: it is not a launch flag."""

from __future__ import annotations

import triton

from kernels.triton.configs import DW_FLAGS, ROW_FLAGS, mode_key
from kernels.triton.modes import (
    EPI_GELU,
    EPI_GELU_BWD,
    EPI_PARTIAL,
    EPI_STORE,
    EPI_SWIGLU,
    EPI_SWIGLU_BWD,
    WQ_8BIT,
    WQ_INT4,
)

ROWS_KERNEL, DW_KERNEL, REDUCE_KERNEL = "rows_kernel", "dw_kernel", "reduce_splits_kernel"  # as the reports name them
I8, FP8, U8 = dict(WQ=WQ_8BIT, W_TYPE="i8"), dict(WQ=WQ_8BIT, W_TYPE="fp8e4nv"), dict(WQ=WQ_INT4, W_TYPE="u8")

ROW_MODES = {  # name: the rows kernel's flags
    "grouped_mm": dict(),
    "grouped_mm dX (w transposed)": dict(TRANSPOSED_W=True),
    "up + GELU, gathered, saving pre": dict(GATHER=True, EPI=EPI_GELU, SAVE_PRE=True),
    "up + gate + SwiGLU, gathered": dict(GATHER=True, DUAL=True, EPI=EPI_SWIGLU, SAVE_PRE=True),
    "up + GELU, gathered (inference)": dict(GATHER=True, EPI=EPI_GELU),
    "up + gate + SwiGLU, gathered (inference)": dict(GATHER=True, DUAL=True, EPI=EPI_SWIGLU),
    "down, weighted scatter": dict(SCALE=True, SCATTER=True),
    # the backward epilogues read the saved pre-activations: SAVE_PRE is set at launch (pre is passed)
    "GELU backward epilogue": dict(GATHER=True, EPI=EPI_GELU_BWD, SCALE=True, SAVE_PRE=True, TRANSPOSED_W=True),
    "SwiGLU backward epilogue": dict(GATHER=True, EPI=EPI_SWIGLU_BWD, SCALE=True, SAVE_PRE=True, TRANSPOSED_W=True),
    "GELU dX, scatter": dict(SCATTER=True, TRANSPOSED_W=True),
    "SwiGLU dX, two pairs, scatter": dict(PAIR2=True, SCATTER=True, TRANSPOSED_W=True),
    # serving quantized experts (kernels/quantized.py): weights widened in the loads, scales in the epilogue
    "up + GELU, int8 W": dict(GATHER=True, EPI=EPI_GELU, **I8),
    "up + gate + SwiGLU, fp8 W": dict(GATHER=True, DUAL=True, EPI=EPI_SWIGLU, **FP8),
    "up + gate + SwiGLU, int8 W": dict(GATHER=True, DUAL=True, EPI=EPI_SWIGLU, **I8),
    "down, weighted scatter, int8 W": dict(SCALE=True, SCATTER=True, **I8),
    "down, weighted scatter, fp8 W": dict(SCALE=True, SCATTER=True, **FP8),
    "up + gate + SwiGLU, int4 W": dict(GATHER=True, DUAL=True, EPI=EPI_SWIGLU, **U8),
    "up + GELU, int4 W": dict(GATHER=True, EPI=EPI_GELU, **U8),
    "down, weighted scatter, int4 W": dict(SCALE=True, SCATTER=True, **U8),
    # decode's split-K first pass (memory-bound tiles only): raw fp32 sums of one K slice; scale, scatter
    # and activation come in the second pass (reduce_splits_kernel, REDUCE_MODES below)
    "split-K partials: up, gathered": dict(GATHER=True, EPI=EPI_PARTIAL),
    "split-K partials: up + gate, gathered": dict(GATHER=True, DUAL=True, EPI=EPI_PARTIAL),
    "split-K partials: down": dict(EPI=EPI_PARTIAL),
    "split-K partials: dX (w transposed)": dict(EPI=EPI_PARTIAL, TRANSPOSED_W=True),
    "split-K partials: up, int8 W": dict(GATHER=True, EPI=EPI_PARTIAL, **I8),
    "split-K partials: up + gate, fp8 W": dict(GATHER=True, DUAL=True, EPI=EPI_PARTIAL, **FP8),
    "split-K partials: up + gate, int8 W": dict(GATHER=True, DUAL=True, EPI=EPI_PARTIAL, **I8),
    "split-K partials: down, int8 W": dict(EPI=EPI_PARTIAL, **I8),
    "split-K partials: up, int4 W": dict(GATHER=True, EPI=EPI_PARTIAL, **U8),
    "split-K partials: up + gate, int4 W": dict(GATHER=True, DUAL=True, EPI=EPI_PARTIAL, **U8),
    "split-K partials: down, int4 W": dict(EPI=EPI_PARTIAL, **U8),
}
REDUCE_MODES = {  # split-K's second pass, at the one launch configuration the runtime uses (8 slices: the most)
    "split-K reduce: GELU": dict(EPI=EPI_GELU),
    "split-K reduce: SwiGLU": dict(EPI=EPI_SWIGLU, DUAL=True),
    "split-K reduce: weighted scatter": dict(EPI=EPI_STORE, SCALE=True, SCATTER=True),
}
DW_MODES = {
    "dW plain": dict(),
    "dW gathered A": dict(GATHER_A=True),
    "dW scaled A, gathered B": dict(GATHER_B=True, SCALE_A=True),
}


def launch_flags(flags: dict) -> dict:
    """A variant's flags as a launch sets them: without the compiler-only W_TYPE."""
    return {k: v for k, v in flags.items() if k != "W_TYPE"}


def variant_key(kernel: str, flags: dict) -> str:
    """The pinned table's key of a variant of `kernel` (ROWS_KERNEL or DW_KERNEL)."""
    return mode_key(launch_flags(flags), ROW_FLAGS if kernel == ROWS_KERNEL else DW_FLAGS)


def label(config: triton.Config) -> str:
    """A config as the reports name it: '128x128x64 s4 w8' (BLOCK_M x BLOCK_N x BLOCK_K, stages, warps)."""
    tiles = "x".join(str(config.kwargs[b]) for b in ("BLOCK_M", "BLOCK_N", "BLOCK_K") if b in config.kwargs)
    return f"{tiles} s{config.num_stages} w{config.num_warps}"


def memory_tile(config_label: str) -> bool:
    """Whether a reported config is a memory-bound (decode) tile: BLOCK_M <= 32."""
    return int(config_label.split("x")[0]) <= 32
