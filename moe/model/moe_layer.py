"""The sparse MoE MLP: route each token to top-k experts, run the experts as grouped matmuls, combine.

Legend: T tokens, D d_model, F d_ff (one expert's width), E experts, K top-k, A = T*K assignments,
M assignments kept (A when dropless).

Expert weights are stacked per expert (Mixtral's math, transposed to [in, out] for x @ w):
    gelu:   y = gelu(x @ w_up) @ w_down
    swiglu: y = (silu(x @ w_gate) * (x @ w_up)) @ w_down
    clamped_swiglu (gpt-oss): swiglu's shape with clamps and biases (kernels/expert_mlp.py)
with w_up, w_gate [E, D, F] and w_down [E, F, D] (expert_bias: up_bias, gate_bias [E, F], down_bias
[E, D]). Hugging Face's Mixtral stores expert e as
w1 = w_gate[e].T, w3 = w_up[e].T, w2 = w_down[e].T (nn.Linear keeps [out, in]).

    x -> router (float32) -> cast to the autocast dtype -> self.experts(x, routing, weights) -> y
    (+ the shared expert's output, moe/model/shared_expert.py; router_scale_input: the experts see
    x * weight instead, and their outputs are summed unweighted, as Llama 4 computes)

The experts object is the seam (moe/model/experts.py): `LocalExperts` by default sorts the A
assignments by expert and calls `kernels.routed_mlp`, which gathers their token rows, runs grouped
matmul, activation, grouped matmul, and weights and sums the results back into token order (on a
GPU in two fused Triton kernels; see kernels/expert_mlp.py), with no Python loop over experts.
Expert and tensor parallelism replace it (moe/parallel/); the weights stay the layer's parameters.
`moe_layer_reference` below is the per-token loop the tests hold this against.

Profiler ranges (bench.profile_model sums device time by range): moe/router, then kernels'
moe/permutation (the sort and gather), moe/expert_matmuls, moe/combine.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn

from kernels.expert_mlp import ExpertBiases, activation
from kernels.ranges import profiler_range
from moe.config import ModelConfig
from moe.model.experts import LocalExperts
from moe.model.quantized import QuantizedParam
from moe.model.router import RouterOutput, TopKRouter
from moe.model.shared_expert import SharedExpert


class MoELayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        E, D, F_ = cfg.n_experts, cfg.d_model, cfg.d_ff
        self.router = TopKRouter(
            D,
            E,
            cfg.top_k,
            renormalize=cfg.router_renormalize,
            balance_coef=cfg.router_aux_loss_coef,
            z_coef=cfg.router_z_loss_coef,
            jitter=cfg.router_jitter,
            capacity_factor=cfg.capacity_factor,
            rule=cfg.router_rule,
            bias=cfg.router_bias,
            score_bias=cfg.router_score_bias,
            bias_update_rate=cfg.router_bias_update_rate,
            groups=cfg.router_groups,
            topk_groups=cfg.router_topk_groups,
            scale=cfg.router_scale,
        )
        self.shared = SharedExpert(D, cfg.shared_d_ff, cfg.activation) if cfg.shared_d_ff else None
        self.shared_gate = nn.Linear(D, 1, bias=False) if cfg.shared_gate else None
        swiglu, quant = cfg.activation != "gelu", cfg.expert_quant
        if quant == "none":
            self.w_up = nn.Parameter(torch.empty(E, D, F_))
            self.w_gate = nn.Parameter(torch.empty(E, D, F_)) if swiglu else None
            self.w_down = nn.Parameter(torch.empty(E, F_, D))
        else:  # serving a quantized checkpoint (moe/model/quantized.py): buffers, loaded, never trained
            self.w_up = QuantizedParam(quant, E, D, F_)
            self.w_gate = QuantizedParam(quant, E, D, F_) if swiglu else None
            self.w_down = QuantizedParam(quant, E, F_, D)
        # gpt-oss: each expert's projections have biases (kept unquantized in a quantized model)
        self.up_bias = nn.Parameter(torch.empty(E, F_)) if cfg.expert_bias else None
        self.gate_bias = nn.Parameter(torch.empty(E, F_)) if cfg.expert_bias and swiglu else None
        self.down_bias = nn.Parameter(torch.empty(E, D)) if cfg.expert_bias else None
        self.experts = LocalExperts(cfg.activation, cfg.expert_backend)  # the seam: see moe/model/experts.py
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        nn.init.normal_(self.router.gate.weight, std=std)
        if self.router.gate.bias is not None:
            nn.init.zeros_(self.router.gate.bias)
        for lin in (self.shared_gate, *(() if self.shared is None else (self.shared.up, self.shared.gate))):
            if lin is not None:
                nn.init.normal_(lin.weight, std=std)
        if self.shared is not None:
            nn.init.normal_(self.shared.down.weight, std=std / math.sqrt(2 * self.cfg.n_layers))
        for b in (self.up_bias, self.gate_bias, self.down_bias):
            if b is not None:
                nn.init.zeros_(b)
        if self.cfg.expert_quant != "none":
            return
        for w in (self.w_up, self.w_gate):
            if w is not None:
                nn.init.normal_(w, std=std)
        nn.init.normal_(self.w_down, std=std / math.sqrt(2 * self.cfg.n_layers))  # GPT-2 residual scaling

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterOutput]:
        """x [..., D] -> (y [..., D], the routing of its T = x[..., 0].numel() tokens)."""
        x_TD = x.reshape(-1, x.shape[-1])
        with profiler_range("moe/router"):
            r = self.router(x_TD)
        x_in, r_in = x_TD, r
        if self.cfg.router_scale_input:  # Llama 4: the expert sees x * weight, its output is not weighted
            x_in = x_TD * r.weights.to(x_TD.dtype)
            r_in = dataclasses.replace(r, weights=torch.ones_like(r.weights) if r.keep is None else r.keep.float())
        if self.cfg.expert_quant != "none":
            (x_in,) = in_autocast_dtype(x_in)
            w_up, w_gate, w_down = (None if w is None else w.quantized() for w in (self.w_up, self.w_gate, self.w_down))
        else:
            x_in, w_up, w_gate, w_down = in_autocast_dtype(x_in, self.w_up, self.w_gate, self.w_down)
        if self.up_bias is None:
            y_TD = self.experts(x_in, r_in, w_up, w_gate, w_down)
        else:  # (only LocalExperts takes biases: the parallel layouts refuse expert_bias)
            biases = ExpertBiases(*in_autocast_dtype(x_in, self.up_bias, self.gate_bias, self.down_bias)[1:])
            y_TD = self.experts(x_in, r_in, w_up, w_gate, w_down, biases=biases)
        if self.shared is not None:
            s_TD = self.shared(x_TD)
            if self.shared_gate is not None:
                s_TD = torch.sigmoid(self.shared_gate(x_TD)) * s_TD
            y_TD = y_TD + s_TD.to(y_TD.dtype)
        return y_TD.view(x.shape), r


def in_autocast_dtype(*tensors):
    """Under autocast, the tensors in its dtype (None stays None): the expert ops are not
    autocast-aware. Without autocast, the tensors as they are."""
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
    act, sh = layer.cfg.activation, layer.shared
    out_TD = torch.zeros_like(x_TD)
    for t in range(x_TD.shape[0]):
        for j in range(r.experts.shape[1]):
            e = int(r.experts[t, j])
            if r.keep is not None and not r.keep[t, j]:
                continue
            w = r.weights[t, j].to(x.dtype)
            x_in, w_out = (x_TD[t] * w, 1.0) if layer.cfg.router_scale_input else (x_TD[t], w)
            b_up, b_gate, b_down = (
                (0.0, 0.0, 0.0)
                if layer.up_bias is None
                else (layer.up_bias[e], 0.0 if layer.gate_bias is None else layer.gate_bias[e], layer.down_bias[e])
            )
            up = x_in @ layer.w_up[e] + b_up
            gate = None if layer.w_gate is None else x_in @ layer.w_gate[e] + b_gate
            out_TD[t] += w_out * (activation(act, up, gate) @ layer.w_down[e] + b_down)
        if sh is not None:
            gate = None if sh.gate is None else sh.gate.weight @ x_TD[t]
            s = sh.down.weight @ activation(act, sh.up.weight @ x_TD[t], gate)
            if layer.shared_gate is not None:
                s = torch.sigmoid(layer.shared_gate.weight[0] @ x_TD[t]) * s
            out_TD[t] += s
    return out_TD.view_as(x)
