"""The MoE layer's experts split over ranks (the seam of moe/model/experts.py): expert parallel (experts
spread over the ep group, tokens moved by
all-to-all) and tensor parallel (each expert's d_ff split over the tp group). Either or both.

Legend: T tokens on this rank, D d_model, F d_ff / tp, E experts, L = E / ep experts held here, k
top-k, A = T*k assignments, R rows received from the ep group.

    route all T tokens with the (replicated) router; sort the A assignments by expert
    counts_E        -> all-to-all -> counts_RL: rows each source rank sends to each local expert
    x rows [A, D]   -> all-to-all -> x_RD, grouped by source rank, then by expert within it
    regroup by local expert, run the expert MLP on local weights [L, D, F], undo the regrouping
    (tp > 1, training: sum the d_ff shards' partial outputs over the tp group)
    y_RD            -> all-to-all back -> y rows [A, D] in the order sent; combine with the routing
                       weights on the rank that owns the tokens (tp > 1, no gradients: sum the
                       partial [T, D] over the tp group only now)

The routing weights are applied only on return, so the gradient of the router sees the whole
expert output. The routing itself is unchanged: the router all-reduces its expert counts over the
data group (moe/model/router.py), so the load-balancing loss is the one a single process computes.
`parallelize` (moe/parallel/parallelize.py) installs a ParallelExperts as each MoELayer's experts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import kernels
from moe.parallel.collectives import all_to_all, copy_to_group, reduce_from_group


def _local(w):
    """The local shard of a DTensor parameter (differentiable), or the tensor itself."""
    return w.to_local() if hasattr(w, "to_local") else w


@dataclass
class ParallelExperts:
    """The experts of one MoE layer over the ep and tp groups; called like LocalExperts."""

    activation: str
    backend: str
    n_experts: int
    ep_group: object  # ProcessGroup of the ranks that share out the experts (same tp rank)
    ep: int
    tp_group: object  # ProcessGroup of the ranks that split each expert's d_ff
    tp: int

    def __call__(self, x_TD, r, w_up, w_gate, w_down) -> torch.Tensor:
        """The same function of x as one process computes, from this rank's shards of the weights."""
        w_up, w_gate, w_down = _local(w_up), _local(w_gate), _local(w_down)
        if self.tp > 1:  # the experts see x split by d_ff: each rank's share of dL/dx is summed on the way back
            x_TD = copy_to_group(x_TD, self.tp_group)
        E, L, k = self.n_experts, w_up.shape[0], r.experts.shape[1]
        order_A, offsets_E = kernels.sort_by_expert(r.experts.reshape(-1), E)
        x_AD = kernels.gather_rows(x_TD, order_A, k)
        mlp = dict(activation_name=self.activation, backend=self.backend)

        # tp > 1: the d_ff shards' partial outputs are summed over the tp group. Training sums them
        # before the combine (A rows): after it, each tp rank's gradient of the routing weights would
        # see only its d_ff slice of the outputs. Without gradients the combine is linear in them, so
        # the sum comes after it and carries T rows, k times fewer (what the figures count).
        reduce_rows = self.tp > 1 and torch.is_grad_enabled()
        if self.ep == 1:
            y_AD = kernels.sorted_mlp(x_AD, offsets_E, w_up, w_gate, w_down, **mlp)
            if reduce_rows:
                y_AD = reduce_from_group(y_AD, self.tp_group)
            return self._combined(y_AD, order_A, r.weights, reduce=self.tp > 1 and not reduce_rows)

        counts_E = torch.diff(offsets_E.long(), prepend=offsets_E.new_zeros(1).long())
        counts_RL = torch.empty_like(counts_E)  # [ep * L]: rank r's rows for my local expert l at r * L + l
        torch.distributed.all_to_all_single(counts_RL, counts_E, group=self.ep_group)
        counts_RL = counts_RL.view(self.ep, L)
        # The row all-to-all takes its split sizes as host integers (all_to_all_single has no
        # device-side splits), so this is the layer's one host sync: both lists in one copy.
        send, recv = torch.stack([counts_E.view(self.ep, L).sum(dim=1), counts_RL.sum(dim=1)]).tolist()
        x_RD = all_to_all(x_AD, recv, send, self.ep_group)

        local_expert_R = torch.repeat_interleave(
            torch.arange(L, device=x_TD.device).repeat(self.ep), counts_RL.reshape(-1)
        )
        order_R = torch.argsort(local_expert_R, stable=True)
        offsets_L = counts_RL.sum(dim=0).cumsum(0).to(torch.int32)
        y_sorted = kernels.sorted_mlp(x_RD[order_R], offsets_L, w_up, w_gate, w_down, **mlp)
        y_RD = y_sorted[torch.argsort(order_R)]  # back to the order received
        if reduce_rows:
            y_RD = reduce_from_group(y_RD, self.tp_group)
        y_AD = all_to_all(y_RD, send, recv, self.ep_group)  # (partial sums go to the same tp rank)
        return self._combined(y_AD, order_A, r.weights, reduce=self.tp > 1 and not reduce_rows)

    def _combined(self, y_AD, order_A, weights_TK, reduce: bool) -> torch.Tensor:
        y_TD = kernels.combine(y_AD, order_A, weights_TK)
        if reduce:
            y_TD = reduce_from_group(y_TD, self.tp_group)
        return y_TD
