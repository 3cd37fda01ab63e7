"""Shared experts: an MLP every token passes through beside the routed experts (DeepSeek's
n_shared_experts, Llama 4's shared_expert, Qwen2-MoE's behind a sigmoid gate). Several shared
experts of width F are one MLP of width n * F, so the config gives only the width (shared_d_ff).

    y = moe(x) + shared(x)                                  (shared_gate false)
    y = moe(x) + sigmoid(x @ w_score) * shared(x)           (shared_gate true; w_score [D, 1])
    shared(x) = act(x @ up (, x @ gate)) @ down             (the experts' activation)

The three projections are nn.Linear ([out, in], as Hugging Face stores them), so tensor parallelism
splits them like the attention's (column, then row: moe/parallel/parallelize.py), and the telemetry
counts the tokens they see apart from the routed experts' batches.
"""

from __future__ import annotations

import torch.nn as nn

from kernels.expert_mlp import activation


class SharedExpert(nn.Module):
    def __init__(self, d_model: int, d_ff: int, activation_name: str):
        super().__init__()
        self.activation = activation_name
        self.up = nn.Linear(d_model, d_ff, bias=False)
        self.gate = nn.Linear(d_model, d_ff, bias=False) if activation_name == "swiglu" else None
        self.down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x_TD):
        return self.down(activation(self.activation, self.up(x_TD), None if self.gate is None else self.gate(x_TD)))
