"""The launch configurations of the Triton kernels and the policy that picks one: the candidate tiles,
the autotuner's pruning, the pinned table's lookup (kernels/pinned_configs.py), and split-K for decode.
Plain Python: nothing here compiles or launches a kernel.

By default every launch uses the configuration kernels/pinned_configs.py names for its mode and row
class: no autotuning in the middle of serving, nothing that breaks CUDA-graph capture, and the same
tiles (so the same bits) on every rank. MOE_AUTOTUNE=1 turns Triton's autotuner back on.
"""

from __future__ import annotations

import os

import torch
import triton

from kernels.triton.modes import DSCALE_COLS, MAX_BLOCK_N, WQ_8BIT, WQ_INT4, WQ_NONE

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
AUTOTUNE = os.environ.get("MOE_AUTOTUNE") == "1"
ROW_FLAGS = ("GATHER", "DUAL", "PAIR2", "EPI", "SAVE_PRE", "SCALE", "SCATTER", "WQ", "TRANSPOSED_W")
DW_FLAGS = ("GATHER_A", "GATHER_B", "SCALE_A")
# Shared memory one program may use, by compute capability (H100 / A100); an unknown device gets the
# smaller. The autotuner's pruning and kernels.tuning.check_compile both use it.
SHARED_LIMIT = {90: 232448, 80: 166912}
W_BYTES = {int(WQ_NONE): 2, int(WQ_8BIT): 1, int(WQ_INT4): 0.5}  # bytes per weight, by WQ


def rows_class(m: int, e: int) -> int:
    """The shape class the autotuner keys on: log2 of the mean rows per expert. Decode (a few rows
    per expert) is memory-bound and wants short row tiles; prefill and training want big tiles."""
    return max(1, m // max(e, 1)).bit_length()


def config(bm, bn, bk, stages, warps, group_m, epi_split=1) -> triton.Config:
    """A rows kernel configuration: tile BLOCK_M x BLOCK_N, K step BLOCK_K, GROUP_M row tiles per L2
    group, the epilogue in EPI_SPLIT column pieces."""
    return triton.Config(
        dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=group_m, EPI_SPLIT=epi_split),
        num_stages=stages,
        num_warps=warps,
    )


def row_configs(interpret: bool | None = None) -> list[triton.Config]:
    """The rows kernel's candidates (the autotuner's list, and what the pinned table chooses from);
    interpret=False: the GPU's list even in an interpreting process (for tools choosing for a GPU)."""
    if INTERPRET if interpret is None else interpret:  # one small config: the interpreter runs every candidate, slowly
        return [config(16, 32, 16, 1, 4, 2, epi_split=2)]
    return [
        # compute-bound: many rows per expert; the epilogue in two column halves keeps it out of local memory
        config(128, 256, 64, 3, 8, 8, 2),
        config(128, 128, 64, 4, 8, 8, 2),
        config(128, 128, 64, 3, 8, 8, 2),
        config(128, 128, 64, 3, 4, 8, 2),
        config(64, 256, 64, 4, 8, 8, 2),
        config(64, 128, 64, 4, 4, 8, 2),
        config(64, 128, 64, 4, 8, 8, 2),
        config(128, 64, 64, 4, 8, 8, 2),  # (two accumulators: SwiGLU's forward)
        # memory-bound: a handful of rows per expert; wide K steps keep many weight bytes in flight
        config(16, 64, 256, 4, 4, 1),
        config(16, 128, 128, 4, 4, 1),
        config(32, 128, 128, 4, 4, 1),
        config(16, 256, 128, 3, 8, 1),
        config(16, 128, 128, 4, 8, 1),
        config(16, 64, 128, 4, 4, 1),
        config(32, 64, 128, 4, 4, 1),
        config(16, 128, 64, 4, 4, 1),
    ]


def dw_configs(interpret: bool | None = None) -> list[triton.Config]:
    """The dW kernel's candidates (interpret as for row_configs)."""
    if INTERPRET if interpret is None else interpret:
        return [triton.Config(dict(BLOCK_M=16, BLOCK_K=16, BLOCK_N=32), num_stages=1, num_warps=4)]
    return [
        triton.Config(dict(BLOCK_M=bm, BLOCK_K=bk, BLOCK_N=bn), num_stages=s, num_warps=w)
        for bm, bk, bn, s, w in [
            (64, 128, 128, 3, 8),
            (32, 128, 128, 4, 8),
            (64, 64, 128, 4, 4),
            (64, 128, 256, 3, 8),
            (32, 64, 64, 4, 4),
        ]
    ]


def reduce_config() -> triton.Config:
    """Split-K's second pass has one launch configuration (16-row tiles, 128 columns; 32 under the
    interpreter)."""
    return triton.Config(dict(BLOCK_M=16, BLOCK_N=32 if INTERPRET else 128), num_stages=1, num_warps=4)


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
    dual, wq = bool(flags.get("DUAL")), int(flags.get("WQ", WQ_NONE))
    return (
        not (dual and bm * bn > 128 * 128)
        and shared_estimate(config, dual, W_BYTES[wq]) <= shared_limit
        and not int4_block_too_deep(bk, wq, flags.get("QGROUP", 128))
    )


def int4_block_too_deep(block_k: int, wq: int, qgroup: int) -> bool:
    """An int4 K block deeper than its scale group needs a [BLOCK_K, BLOCK_N] tile of scales per step,
    which overflows shared memory once pipelined; within one group it needs one row."""
    return bool(wq == WQ_INT4 and qgroup % block_k != 0)  # (a comparison with a constexpr is one: bool it)


def _device_shared_limit() -> int:
    if INTERPRET or not torch.cuda.is_available():
        return SHARED_LIMIT[90]
    return torch.cuda.get_device_properties(torch.cuda.current_device()).shared_memory_per_block_optin


def prune_row_configs(configs, named_args, **kwargs):
    """The autotuner's pruning: keep the configs whose row tile suits the mean rows per expert and that
    fit (see fits). At least one config always survives."""
    args = {**named_args, **kwargs}  # the autotuner passes positional arguments by name, keywords as keywords
    memory = memory_bound(args["ROWS_CLASS"])
    limit = _device_shared_limit()
    kept = [c for c in configs if (c.kwargs["BLOCK_M"] <= 32) == memory and fits(c, args, limit)]
    return kept or configs


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


def check_block_n(configs) -> None:
    """The backward epilogue writes one routing-weight partial per DSCALE_COLS columns into a buffer
    sized for MAX_BLOCK_N (launch.dscale_buffer): a config with a wider or unaligned BLOCK_N would
    silently drop partials, so none may exist."""
    cols, widest = DSCALE_COLS.value, MAX_BLOCK_N.value
    bad = [c.kwargs["BLOCK_N"] for c in configs if c.kwargs["BLOCK_N"] > widest or c.kwargs["BLOCK_N"] % cols]
    if bad:
        raise ValueError(
            f"row kernel configs with BLOCK_N {bad}: each must be a multiple of {cols} and at "
            f"most MAX_BLOCK_N = {widest}"
        )


check_block_n(row_configs())
