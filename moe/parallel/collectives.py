"""Differentiable collectives for the model-parallel layers.

Tensor parallelism needs Megatron's pair of conjugate operators around a split computation whose
input is replicated and whose loss is computed identically on every rank of the group:

    copy_to_group:      forward identity,     backward all-reduce (each rank's part of dL/dx summed)
    reduce_from_group:  forward all-reduce,   backward identity   (dL/dy is already whole everywhere)

torch.distributed.nn.functional.all_reduce is not `reduce_from_group`: its backward all-reduces the
gradient as well, which is right when every rank has its own loss and wrong here (tp times too big).

Expert parallelism needs all-to-all with uneven splits; its backward is the same exchange reversed.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class _CopyToGroup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromGroup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        x = x.contiguous().clone()
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
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        back = grad.new_empty(sum(ctx.in_splits), *grad.shape[1:])
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
