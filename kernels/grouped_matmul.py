"""Grouped matmul over experts with ragged rows: y[rows of g] = x[rows of g] @ w[g].

Legend: M rows (token-expert assignments, sorted by expert), K input width, N output width, E experts,
C the largest row count of any expert (padded layout only).

    x_MK    rows already sorted by expert
    w_EKN   one [K, N] matrix per expert
    offsets int32 [E], cumulative row counts: expert g owns rows offsets[g-1]:offsets[g] (offsets[-1] = M),
            the same meaning as PyTorch's grouped_mm `offs`. Experts with zero rows are legal.

`grouped_mm` is differentiable in x and w. Its PyTorch path calls `torch.nn.functional.grouped_mm`
where that op accepts the inputs, and otherwise a padded batched matmul; neither loops over experts
in Python. `grouped_mm_reference` is the slow, obviously correct loop the tests hold it against.
The Triton kernels (a separate issue) plug in behind `backend="triton"`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "torch", "triton")


def check_grouped_mm_args(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor, check_end: bool | None = None) -> None:
    """Raise a ValueError naming the problem instead of computing garbage. Whether offsets end at M
    is checked where that costs no device sync (offsets on the CPU), or when check_end is True."""
    if x.dim() != 2 or w.dim() != 3:
        raise ValueError(f"grouped_mm expects x [M, K] and w [E, K, N], got x {tuple(x.shape)} and w {tuple(w.shape)}")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"grouped_mm: x has K={x.shape[1]} but w has K={w.shape[1]}")
    if offsets.dim() != 1 or offsets.shape[0] != w.shape[0]:
        raise ValueError(f"grouped_mm: offsets must be [E={w.shape[0]}], got {tuple(offsets.shape)}")
    if offsets.dtype != torch.int32:
        raise ValueError(f"grouped_mm: offsets must be int32, got {offsets.dtype}")
    if x.dtype != w.dtype:
        raise ValueError(f"grouped_mm: x is {x.dtype} but w is {w.dtype}")
    if not (x.device == w.device == offsets.device):
        raise ValueError(f"grouped_mm: x on {x.device}, w on {w.device}, offsets on {offsets.device}")
    if check_end is None:
        check_end = offsets.device.type == "cpu"
    if check_end and offsets.numel() and int(offsets[-1]) != x.shape[0]:
        raise ValueError(f"grouped_mm: offsets end at {int(offsets[-1])} but x has {x.shape[0]} rows")


def grouped_mm_reference(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """The slow reference: one matmul per expert, in a Python loop."""
    check_grouped_mm_args(x, w, offsets, check_end=True)
    ends = offsets.tolist()
    starts = [0] + ends[:-1]
    out = [x[s:e] @ w[g] for g, (s, e) in enumerate(zip(starts, ends))]
    return torch.cat(out) if out else x.new_zeros(0, w.shape[2])


def _native_ok(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether F.grouped_mm takes these operands: float32/16 or bf16, every non-unit stride and the
    data pointer a multiple of 16 bytes. On CUDA we only trust it for bf16 on Hopper or newer (its
    CUTLASS path); everything else, an A100 included, takes the padded path."""
    if not hasattr(F, "grouped_mm"):
        return False
    if a.device.type == "cuda":
        dtype_ok = a.dtype == torch.bfloat16 and torch.cuda.get_device_capability(a.device) >= (9, 0)
    else:
        dtype_ok = a.device.type == "cpu" and a.dtype in (torch.float32, torch.float16, torch.bfloat16)
    size = a.element_size()
    return dtype_ok and all(t.data_ptr() % 16 == 0 and all(s * size % 16 == 0 for s in t.stride() if s != 1)
                            for t in (a, b))


def _row_groups(offsets: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """For each of the m sorted rows: its expert g and its slot within that expert; and C."""
    ends = offsets.long()
    starts = torch.cat([ends.new_zeros(1), ends[:-1]])
    rows = torch.arange(m, device=offsets.device)
    group = torch.searchsorted(ends, rows, right=True)
    slot = rows - starts[group]
    capacity = int((ends - starts).max()) if ends.numel() else 0
    return group, slot, capacity


def _padded_mm(x_MK: torch.Tensor, w_EKN: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Scatter rows into [E, C, K], one batched matmul, gather back. Pays for padding, not for a loop."""
    group, slot, cap = _row_groups(offsets, x_MK.shape[0])
    x_ECK = x_MK.new_zeros(w_EKN.shape[0], cap, x_MK.shape[1])
    x_ECK[group, slot] = x_MK
    return torch.bmm(x_ECK, w_EKN)[group, slot]


def _padded_xt_dy(x_MK: torch.Tensor, dy_MN: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """dW[g] = x_g^T @ dy_g for every expert g, through the same padded layout."""
    e = offsets.shape[0]
    group, slot, cap = _row_groups(offsets, x_MK.shape[0])
    x_ECK = x_MK.new_zeros(e, cap, x_MK.shape[1])
    dy_ECN = dy_MN.new_zeros(e, cap, dy_MN.shape[1])
    x_ECK[group, slot] = x_MK
    dy_ECN[group, slot] = dy_MN
    return torch.bmm(x_ECK.transpose(1, 2), dy_ECN)


def _mm(x_MK, w_EKN, offsets):
    if _native_ok(x_MK, w_EKN):
        return F.grouped_mm(x_MK, w_EKN, offs=offsets)
    return _padded_mm(x_MK, w_EKN, offsets)


def _xt_dy(x_MK, dy_MN, offsets):
    if _native_ok(x_MK, dy_MN):
        return F.grouped_mm(x_MK.t(), dy_MN, offs=offsets)
    return _padded_xt_dy(x_MK, dy_MN, offsets)


class _GroupedMM(torch.autograd.Function):
    """Our own backward so it works for every path: dX = dY W^T (grouped), dW_g = X_g^T dY_g."""

    @staticmethod
    def forward(ctx, x_MK, w_EKN, offsets):
        ctx.save_for_backward(x_MK, w_EKN, offsets)
        return _mm(x_MK, w_EKN, offsets)

    @staticmethod
    def backward(ctx, dy_MN):
        x_MK, w_EKN, offsets = ctx.saved_tensors
        dy_MN = dy_MN.contiguous()
        dx = _mm(dy_MN, w_EKN.transpose(1, 2), offsets) if ctx.needs_input_grad[0] else None
        dw = _xt_dy(x_MK, dy_MN, offsets) if ctx.needs_input_grad[1] else None
        return dx, dw, None


def grouped_mm(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """y [M, N] = x [M, K] (rows sorted by expert) times w [E, K, N] per expert; see the module doc."""
    check_grouped_mm_args(x, w, offsets)
    if backend not in BACKENDS:
        raise ValueError(f"grouped_mm: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "triton":
        raise NotImplementedError("grouped_mm: the Triton backend is not built yet; use 'auto' or 'torch'")
    return _GroupedMM.apply(x, w, offsets)
