"""Grouped matmul over experts with ragged rows: y[rows of g] = x[rows of g] @ w[g].

Legend: M rows (token-expert assignments, sorted by expert), K input width, N output width, E experts,
C the largest row count of any expert (padded layout only).

    x_MK    rows already sorted by expert
    w_EKN   one [K, N] matrix per expert
    offsets int32 [E], cumulative row counts: expert g owns rows offsets[g-1]:offsets[g] (offsets[-1] = M),
            the same meaning as PyTorch's grouped_mm `offs`. Experts with zero rows are legal.

`grouped_mm` checks its arguments, the offsets' values included (one device sync on a GPU), and is
differentiable in x and w. Its PyTorch path calls `torch.nn.functional.grouped_mm`
where that op accepts the inputs, and otherwise a padded batched matmul; neither loops over experts
in Python. `grouped_mm_reference` is the slow, obviously correct loop the tests hold it against.
`backend="triton"` runs the Triton kernels of the kernels/triton package instead.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "torch", "triton")
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# PyTorch's grouped GEMM: public as F.grouped_mm in recent releases, torch._grouped_mm before that.
torch_grouped_mm = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def check_grouped_mm_args(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor, *, values: bool = True) -> None:
    """Raise a ValueError naming the problem instead of computing garbage. values=False skips the
    offsets' values (non-decreasing, ending at M) where checking them costs a device sync: for
    offsets this package built itself (sort_by_expert, received counts)."""
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
    if (values or offsets.device.type == "cpu") and not torch.compiler.is_compiling():
        check_offsets(offsets, x.shape[0])  # (not while torch.compile traces: reading values breaks its graph)


def check_offsets(offsets: torch.Tensor, m: int) -> None:
    """Offsets must be non-decreasing, start at or above 0 and end at m (one device sync on a GPU)."""
    ends = offsets.tolist()
    if (ends[-1] if ends else 0) != m:
        raise ValueError(f"grouped_mm: offsets end at {ends[-1] if ends else 0} but x has {m} rows")
    if any(b < a for a, b in zip([0] + ends[:-1], ends)):
        raise ValueError(f"grouped_mm: offsets must be non-decreasing from 0, got {ends}")


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    """'auto' is Triton for CUDA tensors of a dtype the kernels take, PyTorch otherwise. An explicit
    'triton' is checked: CUDA tensors, or CPU tensors under Triton's interpreter (TRITON_INTERPRET=1)."""
    if backend not in BACKENDS:
        raise ValueError(f"expert backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if x.is_cuda and x.dtype in TRITON_DTYPES and _triton_available() else "torch"
    if backend == "triton":
        if not _triton_available():
            raise ValueError("expert backend 'triton': the triton package is not installed")
        if x.dtype not in TRITON_DTYPES:
            raise ValueError(f"expert backend 'triton' takes {TRITON_DTYPES}, got {x.dtype}; use backend='torch'")
        if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                f"expert backend 'triton' needs CUDA tensors, got {x.device} "
                "(or set TRITON_INTERPRET=1 before importing triton to run the kernels on the CPU)"
            )
    return backend


@functools.cache
def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def grouped_mm_reference(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """The slow reference: one matmul per expert, in a Python loop."""
    check_grouped_mm_args(x, w, offsets)
    ends = offsets.tolist()
    starts = [0] + ends[:-1]
    out = [x[s:e] @ w[g] for g, (s, e) in enumerate(zip(starts, ends))]
    return torch.cat(out) if out else x.new_zeros(0, w.shape[2])


def _native_ok(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether F.grouped_mm takes these operands: float32/16 or bf16, every non-unit stride and the
    data pointer a multiple of 16 bytes. On CUDA we only trust it for bf16 on Hopper or newer (its
    CUTLASS path); everything else, an A100 included, takes the padded path."""
    if torch_grouped_mm is None:
        return False
    if a.device.type == "cuda":
        dtype_ok = a.dtype == torch.bfloat16 and torch.cuda.get_device_capability(a.device) >= (9, 0)
    else:
        dtype_ok = a.device.type == "cpu" and a.dtype in (torch.float32, torch.float16, torch.bfloat16)
    size = a.element_size()
    return dtype_ok and all(
        t.data_ptr() % 16 == 0 and all(s * size % 16 == 0 for s in t.stride() if s != 1) for t in (a, b)
    )


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
    if _native_ok(x_MK, w_EKN) and not _few_rows_on_cpu(x_MK, offsets):
        return torch_grouped_mm(x_MK, w_EKN, offs=offsets)
    return _padded_mm(x_MK, w_EKN, offsets)


def _few_rows_on_cpu(x_MK: torch.Tensor, offsets: torch.Tensor) -> bool:
    """A decode step's few rows per expert run faster on the CPU as the padded batched matmul, which
    spreads the experts over the cores, than through grouped_mm, which takes its groups one after
    another on one core (64 rows over 16 experts of 128 x 256, 12 in the fullest, on 2 cores: 246
    against 404 us). With a row or two an expert (grouped_mm skips the idle ones), many rows, or
    padding past 4x the rows, grouped_mm stays."""
    M, E = x_MK.shape[0], offsets.shape[0]
    if x_MK.device.type != "cpu" or not 4 * E <= M <= 8 * E:
        return False
    ends = offsets.tolist()
    return E * max(b - a for a, b in zip([0] + ends[:-1], ends)) <= 4 * M


def _xt_dy(x_MK, dy_MN, offsets):
    if _native_ok(x_MK, dy_MN):
        return torch_grouped_mm(x_MK.t(), dy_MN, offs=offsets)
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


# Traced, the PyTorch path above would break the graph (its alignment check reads data
# pointers, F.grouped_mm's fake implementation takes only bf16 on the CPU, the padded fallback sizes
# its buffer from the data). As an opaque op it runs that same eager code inside the compiled graph.


@torch.library.custom_op("moe::grouped_mm_torch", mutates_args=())
def grouped_mm_torch(x_MK: torch.Tensor, w_EKN: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    return _mm(x_MK, w_EKN, offsets)


@grouped_mm_torch.register_fake
def _(x_MK, w_EKN, offsets):
    return x_MK.new_empty(x_MK.shape[0], w_EKN.shape[2])


@torch.library.custom_op("moe::grouped_mm_torch_backward", mutates_args=())
def grouped_mm_torch_backward(
    dy_MN: torch.Tensor, x_MK: torch.Tensor, w_EKN: torch.Tensor, offsets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    dy_MN = dy_MN.contiguous()
    return _mm(dy_MN, w_EKN.transpose(1, 2), offsets), _xt_dy(x_MK, dy_MN, offsets)


@grouped_mm_torch_backward.register_fake
def _(dy_MN, x_MK, w_EKN, offsets):
    return x_MK.new_empty(x_MK.shape), torch.empty_like(w_EKN)


def _grouped_mm_torch_grad(ctx, dy_MN):
    x_MK, w_EKN, offsets = ctx.saved_tensors
    dx, dw = grouped_mm_torch_backward(dy_MN, x_MK, w_EKN, offsets)
    return dx, dw, None


def _grouped_mm_torch_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


grouped_mm_torch.register_autograd(_grouped_mm_torch_grad, setup_context=_grouped_mm_torch_setup)


def grouped_mm(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """y [M, N] = x [M, K] (rows sorted by expert) times w [E, K, N] per expert; see the module doc."""
    check_grouped_mm_args(x, w, offsets)
    return apply_grouped_mm(x, w, offsets, backend)


def apply_grouped_mm(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor, backend: str) -> torch.Tensor:
    """grouped_mm after the checks: for callers that checked, or built the offsets themselves."""
    if resolve_backend(backend, x) == "triton":
        from kernels import ops  # the Triton path, a custom op (kernels/ops.py)

        return ops.grouped_mm(x, w, offsets)
    if torch.compiler.is_compiling():  # one opaque op in the graph, the same code inside
        return grouped_mm_torch(x, w, offsets)
    if not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)):
        return _mm(x, w, offsets)  # nothing to differentiate (serving): no autograd node
    return _GroupedMM.apply(x, w, offsets)
