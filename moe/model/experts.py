"""The MoE layer's seam: what runs the experts once the tokens are routed.

`MoELayer` (moe/model/moe_layer.py) routes its tokens and casts them, then calls its experts object:

    y_TD = layer.experts(x_TD, routing, w_up, w_gate, w_down)

with x [T, D] the tokens, `routing` the RouterOutput, and the layer's expert weights ([E, D, F],
[E, D, F] or None, [E, F, D]; or kernels.QuantizedWeight for a quantized model), and with
expert_bias a `biases=kernels.ExpertBiases(...)` keyword. It returns y [T, D]: each token's expert
outputs, weighted by its routing weights and summed. `LocalExperts` below, the default, runs every
expert in this process. Parallelism installs another object with the same call
(moe/parallel/expert_parallel.py moves the tokens to the ranks that hold their experts); the model
never imports it.
"""

from __future__ import annotations

import torch

import kernels
from moe.model.router import RouterOutput


class LocalExperts:
    """All experts here: sort the assignments by expert, the expert MLP, combine (kernels.routed_mlp)."""

    def __init__(self, activation: str, backend: str):
        self.activation, self.backend = activation, backend

    def __call__(self, x_TD, r: RouterOutput, w_up, w_gate, w_down, biases=None) -> torch.Tensor:
        mlp = dict(activation_name=self.activation, backend=self.backend, biases=biases)
        if isinstance(w_up, kernels.QuantizedWeight):  # a quantized checkpoint, served (no gradients)
            return kernels.quantized_mlp(x_TD, r.weights, r.experts, w_up, w_gate, w_down, **mlp)
        if w_up.shape[0] == 1 and r.unit_weights:  # the dense twin: every token to expert 0 at weight 1
            offsets = torch.tensor([x_TD.shape[0]], dtype=torch.int32, device=x_TD.device)
            return kernels.sorted_mlp(x_TD, offsets, w_up, w_gate, w_down, **mlp)
        return kernels.routed_mlp(
            x_TD,
            r.weights,
            r.experts,
            w_up,
            w_gate,
            w_down,
            keep_TK=r.keep,
            **mlp,
        )

    def __repr__(self) -> str:
        return f"LocalExperts({self.activation}, backend={self.backend!r})"
