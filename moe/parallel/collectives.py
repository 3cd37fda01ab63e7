"""Differentiable collectives for the model-parallel layers.

Tensor parallelism needs Megatron's pair of conjugate operators around a split computation whose
input is replicated and whose loss is computed identically on every rank of the group:

    copy_to_group:      forward identity,     backward all-reduce (each rank's part of dL/dx summed)
    reduce_from_group:  forward all-reduce,   backward identity   (dL/dy is already whole everywhere)

torch.distributed.nn.functional.all_reduce is not `reduce_from_group`: its backward all-reduces the
gradient as well, which is right when every rank has its own loss and wrong here (tp times too big).

Expert parallelism needs all-to-all with uneven splits; its backward is the same exchange reversed.

TRAFFIC counts, per process, the seconds spent inside each of these exchanges and the bytes this
rank sends in them (an all-reduce as a ring sends 2 (n-1)/n of the tensor, an all-gather (n-1)/n of
its output; an all-to-all sends the rows bound for the other ranks), for the serving engine's
per-rank report.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Traffic:
    calls: int = 0
    seconds: float = 0.0
    bytes_sent: int = 0


TRAFFIC: defaultdict[str, Traffic] = defaultdict(Traffic)  # exchange name -> totals in this process


@contextlib.contextmanager
def counted(name: str, bytes_sent: int):
    t = time.perf_counter()
    yield
    entry = TRAFFIC[name]
    entry.calls, entry.seconds, entry.bytes_sent = (
        entry.calls + 1,
        entry.seconds + time.perf_counter() - t,
        entry.bytes_sent + bytes_sent,
    )


def _ring_bytes(x: torch.Tensor, group) -> int:
    n = dist.get_world_size(group)
    return 2 * (n - 1) * x.numel() * x.element_size() // n


def _rows_out_bytes(x: torch.Tensor, in_splits: list[int], group) -> int:
    own = in_splits[dist.get_rank(group)]
    return (sum(in_splits) - own) * (x[:1].numel() * x.element_size())


class _CopyToGroup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        with counted("all_reduce", _ring_bytes(grad, ctx.group)):
            dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromGroup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        x = x.contiguous().clone()
        with counted("all_reduce", _ring_bytes(x, group)):
            dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, out_splits, in_splits, group):
        ctx.group, ctx.out_splits, ctx.in_splits = group, out_splits, in_splits
        out = x.new_empty(sum(out_splits), *x.shape[1:])
        with counted("all_to_all", _rows_out_bytes(x, in_splits, group)):
            dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        back = grad.new_empty(sum(ctx.in_splits), *grad.shape[1:])
        with counted("all_to_all", _rows_out_bytes(grad, ctx.out_splits, ctx.group)):
            dist.all_to_all_single(back, grad.contiguous(), ctx.in_splits, ctx.out_splits, group=ctx.group)
        return back, None, None, None


def copy_to_group(x: torch.Tensor, group) -> torch.Tensor:
    return _CopyToGroup.apply(x, group)


def reduce_from_group(x: torch.Tensor, group) -> torch.Tensor:
    return _ReduceFromGroup.apply(x, group)


def all_to_all(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group) -> torch.Tensor:
    """Rows x[sum(in_splits[:r]) : sum(in_splits[:r+1])] go to rank r of the group; the result holds
    out_splits[r] rows from each rank r, in rank order."""
    return _AllToAll.apply(x, out_splits, in_splits, group)


def gather_last_dim(x_piece: torch.Tensor, group) -> torch.Tensor:
    """x [..., D] from each rank's slice [..., D / n] of it (rank r's is x[..., r D/n : (r+1) D/n]);
    no gradient (serving: a pipeline stage rebuilds its input from the tp slices it received)."""
    n = dist.get_world_size(group)
    parts = x_piece.new_empty(n * x_piece.shape[0], *x_piece.shape[1:])  # the slices stacked on dim 0
    with counted("all_gather", (n - 1) * x_piece.numel() * x_piece.element_size()):
        dist.all_gather_into_tensor(parts, x_piece.contiguous(), group=group)
    return torch.movedim(parts.view(n, *x_piece.shape), 0, -2).reshape(*x_piece.shape[:-1], n * x_piece.shape[-1])
