"""The sparse MoE MLP: route each token to top-k experts, run the experts as grouped matmuls, combine.

Legend: T tokens, D d_model, F d_ff (one expert's width), E experts, K top-k, A = T*K assignments,
M assignments kept (A when dropless).

Expert weights are stacked per expert (Mixtral's math, transposed to [in, out] for x @ w):
    gelu:   y = gelu(x @ w_up) @ w_down
    swiglu: y = (silu(x @ w_gate) * (x @ w_up)) @ w_down
with w_up, w_gate [E, D, F] and w_down [E, F, D]. Hugging Face's Mixtral stores expert e as
w1 = w_gate[e].T, w3 = w_up[e].T, w2 = w_down[e].T (nn.Linear keeps [out, in]).

Dispatch (no Python loop over experts): sort the A assignments by expert, then `kernels.expert_mlp`
gathers their token rows, runs grouped matmul, activation, grouped matmul, and weights and sums the
results back into token order (on a GPU in two fused Triton kernels; see kernels/expert_mlp.py).
`moe_layer_reference` below is the per-token loop the tests hold this against.

Profiler ranges (scripts/profile_model.py sums device time by range): moe/router, moe/permutation
(the sort), then kernels' moe/permutation (gather), moe/expert_matmuls, moe/combine.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.profiler import record_function

import kernels
from kernels.expert_mlp import activation
from moe.config import ModelConfig
from moe.expert_parallel import parallel_moe_forward
from moe.router import RouterOutput, TopKRouter


class MoELayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        E, D, F_ = cfg.n_experts, cfg.d_model, cfg.d_ff
        self.router = TopKRouter(
            D, E, cfg.top_k, renormalize=cfg.router_renormalize, balance_coef=cfg.router_aux_loss_coef,
            z_coef=cfg.router_z_loss_coef, jitter=cfg.router_jitter, capacity_factor=cfg.capacity_factor,
        )
        self.w_up = nn.Parameter(torch.empty(E, D, F_))
        self.w_gate = nn.Parameter(torch.empty(E, D, F_)) if cfg.activation == "swiglu" else None
        self.w_down = nn.Parameter(torch.empty(E, F_, D))
        self.groups = None  # moe.expert_parallel.ExpertGroups once the experts are split over ranks
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        nn.init.normal_(self.router.gate.weight, std=std)
        for w in (self.w_up, self.w_gate):
            if w is not None:
                nn.init.normal_(w, std=std)
        nn.init.normal_(self.w_down, std=std / math.sqrt(2 * self.cfg.n_layers))  # GPT-2 residual scaling

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterOutput]:
        """x [..., D] -> (y [..., D], the routing of its T = x[..., 0].numel() tokens)."""
        if self.groups is not None:
            return parallel_moe_forward(self, x)
        x_TD = x.reshape(-1, x.shape[-1])
        with record_function("moe/router"):
            r = self.router(x_TD)
        x_TD, w_up, w_gate, w_down = self._autocast(x_TD, self.w_up, self.w_gate, self.w_down)
        common = dict(activation_name=self.cfg.activation, backend=self.cfg.expert_backend, check_end=False)
        if self.cfg.n_experts == 1 and r.keep is None:  # dense twin: all tokens to expert 0, weight 1
            offsets = torch.tensor([x_TD.shape[0]], dtype=torch.int32, device=x.device)
            with record_function("moe/expert_matmuls"):
                y_TD = kernels.sorted_mlp(x_TD, offsets, w_up, w_gate, w_down, **common)
            return y_TD.view(x.shape), r
        with record_function("moe/permutation"):
            experts_A = r.experts.reshape(-1) if r.keep is None else r.experts.masked_fill(~r.keep, -1).reshape(-1)
            order_M, offsets_E = kernels.sort_by_expert(experts_A, self.cfg.n_experts, has_dropped=r.keep is not None)
        y_TD = kernels.expert_mlp(x_TD, r.weights, order_M, offsets_E, w_up, w_gate, w_down, **common)
        return y_TD.view(x.shape), r

    @staticmethod
    def _autocast(*tensors):
        """Under autocast, run the experts in its dtype: the expert ops are not autocast-aware."""
        x = tensors[0]
        if not torch.is_autocast_enabled(x.device.type):
            return tensors
        dtype = torch.get_autocast_dtype(x.device.type)
        return tuple(None if t is None else t.to(dtype) for t in tensors)


def moe_layer_reference(layer: MoELayer, x: torch.Tensor, routing: RouterOutput | None = None) -> torch.Tensor:
    """The slow, obviously correct MoE layer: for each token, for each of its experts, run that
    expert's MLP on the token alone and add it with its routing weight. Uses the layer's own routing
    (pass `routing` to reuse one, e.g. when the router jitters), so it checks dispatch and combine.
    Differentiable, so the tests compare gradients too."""
    x_TD = x.reshape(-1, x.shape[-1])
    r = layer.router(x_TD) if routing is None else routing
    out_TD = torch.zeros_like(x_TD)
    for t in range(x_TD.shape[0]):
        for j in range(r.experts.shape[1]):
            e = int(r.experts[t, j])
            if r.keep is not None and not r.keep[t, j]:
                continue
            up = x_TD[t] @ layer.w_up[e]
            gate = None if layer.w_gate is None else x_TD[t] @ layer.w_gate[e]
            h = activation(layer.cfg.activation, up, gate)
            out_TD[t] += r.weights[t, j].to(x.dtype) * (h @ layer.w_down[e])
    return out_TD.view_as(x)
