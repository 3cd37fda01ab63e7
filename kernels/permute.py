"""Token permutation for expert dispatch: sort token-expert assignments by expert, and combine the
expert outputs back into token order with the routing weights.

Legend: T tokens, k experts per token (top-k), A = T*k assignments, M assignments kept (A when
dropless), E experts, D width.

An assignment a = t*k + j is token t's j-th choice. Dropped assignments (over capacity) carry
expert id -1: they are left out of the sorted order, so no expert computes them, and they add
nothing to the combined output (the token still flows through the residual).
"""

from __future__ import annotations

import torch


def sort_by_expert(experts_A: torch.Tensor, n_experts: int, *, has_dropped: bool = False):
    """Return (order_M, offsets_E): the assignment ids grouped by expert (stable: within an expert,
    in assignment order), and int32 cumulative row counts per expert. `has_dropped=False` promises
    no -1 entries and skips the one device sync needed to trim them."""
    key_A = experts_A.masked_fill(experts_A < 0, n_experts) if has_dropped else experts_A
    order_A = torch.argsort(key_A, stable=True)
    counts = count_per_expert(key_A, n_experts + 1)[:n_experts]
    offsets_E = counts.cumsum(0).to(torch.int32)
    if has_dropped:
        order_A = order_A[: int(offsets_E[-1])]
    return order_A, offsets_E


def count_per_expert(experts_A: torch.Tensor, n_experts: int) -> torch.Tensor:
    """int64 [n_experts]: how many entries of experts_A (ids in [0, n_experts)) name each expert. A
    scatter-add into a fixed-size vector, not torch.bincount, whose output length depends on the
    values and so breaks a torch.compile graph."""
    return torch.zeros(n_experts, dtype=torch.int64, device=experts_A.device).scatter_add_(
        0, experts_A.reshape(-1).long(), torch.ones_like(experts_A.reshape(-1), dtype=torch.int64)
    )


def gather_rows(x_TD: torch.Tensor, order_M: torch.Tensor, k: int) -> torch.Tensor:
    """x_MD [M, D]: the token row of each sorted assignment, x_MD[r] = x_TD[order_M[r] // k].
    Its gradient sums each token's rows. Eagerly that is index_select's backward, index_add_: on the
    CPU a plain loop (indexing's index_put_ with accumulate cost 1.5 ms a layer at tiny's 4,096
    rows). Inductor lowers index_add_ to atomic adds (1.7 ms against 0.3 forward and backward at
    tiny's size), so under torch.compile the backward instead writes each row to its assignment's
    slot (a permutation: no two writes meet; dropped assignments' slots stay zero) and sums each
    token's k slots."""
    if torch.compiler.is_compiling():
        return _GatherRows.apply(x_TD, order_M, k)
    return x_TD.index_select(0, order_M // k)


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_TD, order_M, k):
        ctx.save_for_backward(order_M)
        ctx.T, ctx.k = x_TD.shape[0], k
        return x_TD.index_select(0, order_M // k)

    @staticmethod
    def backward(ctx, dx_MD):
        (order_M,) = ctx.saved_tensors
        dx_AD = dx_MD.new_zeros(ctx.T * ctx.k, dx_MD.shape[1]).index_copy_(0, order_M, dx_MD)
        return dx_AD.view(ctx.T, ctx.k, dx_AD.shape[-1]).sum(dim=1), None, None


def combine(y_MD: torch.Tensor, order_M: torch.Tensor, weights_TK: torch.Tensor) -> torch.Tensor:
    """out[t] = sum_j weights[t, j] * y[row of assignment t*k + j]; dropped assignments add zero.
    Deterministic: each assignment is written once (no atomics), then a fixed-order sum over k."""
    T, k = weights_TK.shape
    y_AD = y_MD.new_zeros(T * k, y_MD.shape[1]).index_copy(0, order_M, y_MD)
    acc = torch.promote_types(y_MD.dtype, torch.float32)  # sum half precision in float32
    # Multiply and sum, not einsum("tkd,tk->td"): on CPU the einsum became T tiny batched matmuls,
    # 2.5x slower forward+backward at T=2048, k=2, D=128.
    out_TD = (y_AD.view(T, k, y_AD.shape[-1]).to(acc) * weights_TK.to(acc).unsqueeze(-1)).sum(dim=1)
    return out_TD.to(y_MD.dtype)
