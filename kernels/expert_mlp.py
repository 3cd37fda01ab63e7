"""The routed expert MLP, from token rows to token rows: gather, up-projection, activation,
down-projection, routing weight, and the sum back into token order.

Legend: T tokens, k experts per token, A = T*k assignments (a = t*k + j is token t's j-th
choice), M assignments kept, sorted by expert (order_M holds their assignment ids), E experts,
D model width, F expert width.

    gelu:   y_t = sum_j weights[t, j] * gelu(x_t @ w_up[e]) @ w_down[e]                 e = experts[t, j]
    swiglu: y_t = sum_j weights[t, j] * (silu(x_t @ w_gate[e]) * (x_t @ w_up[e])) @ w_down[e]
    clamped_swiglu (gpt-oss): act(g, u) = (clamp(u, -L, L) + 1) * g' * sigmoid(alpha g'), g' = min(g, L),
            with alpha = 1.702 and L = 7, in place of silu(g) * u; gpt-oss's experts also have biases
            (`biases`: x @ w + b for each of the three projections)

Three entry points, one computation:
    expert_mlp(x_TD, weights_TK, order_M, offsets_E, ...)  the assignments already sorted by expert
                                                            (sort_by_expert); checks everything, the
                                                            offsets' values too (a device sync on a GPU)
    routed_mlp(x_TD, weights_TK, experts_TK, ...)          sorts the assignments itself, so its
                                                            offsets need no check: the MoE layer's call
    sorted_mlp(x_MD, offsets_E, ...)                        rows already gathered and sorted; no weights

`expert_mlp_reference` composes the PyTorch ops: a gathered copy of the rows, two grouped matmuls,
the activation, and `combine`. With the Triton backend the same runs in two fused kernels and no
copies (ScatterMoE's idea, our own kernels; the steps are named in kernels/triton/launch.py):
  1. h_MF = act(x[token of row] @ w_up[e] (, w_gate[e])): the gather happens in the loads, the
     activation in the epilogue (SwiGLU: gate and up from one pass over x).
  2. y_AD[order[r]] = weight[order[r]] * (h_MF[r] @ w_down[e]): the routing weight and the move to
     assignment order in the epilogue; then y_T = sum over the k rows of y_TkD, in a fixed order.
Every output row is written once, so results are deterministic.

The backward (training) runs four steps and keeps the same no-copy, no-atomics rule:
  1. dh = dy[token] @ w_down^T with the activation's backward and the weight's gradient in the epilogue;
  2. dW_down = h^T (weight * dy[token]);
  3. dW_up (, dW_gate) = x[token]^T d_up (, d_gate);
  4. dx_AD[order[r]] = d_up[r] @ w_up^T (+ d_gate[r] @ w_gate^T), then summed over k like y.
It saves h and the pre-activations (M x F each) rather than recomputing them.

Profiler ranges: moe/permutation (the gather, PyTorch path), moe/expert_matmuls (on Triton this
includes the fused gather and scatter), moe/combine (the weighted sum over k).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from kernels.grouped_matmul import apply_grouped_mm, check_grouped_mm_args, check_offsets, resolve_backend
from kernels.permute import combine, gather_rows, sort_by_expert
from kernels.ranges import profiler_range

ACTIVATIONS = ("gelu", "swiglu", "clamped_swiglu")
FUSED_ACTIVATIONS = ("gelu", "swiglu")  # the fused Triton kernels' epilogues; the others run unfused
CLAMP_ALPHA, CLAMP_LIMIT = 1.702, 7.0  # gpt-oss's swiglu_alpha and swiglu_limit (both released models)


def activation(name: str, h_up: torch.Tensor, h_gate: torch.Tensor | None = None) -> torch.Tensor:
    if name == "clamped_swiglu":
        g = h_gate.clamp(max=CLAMP_LIMIT)
        return (h_up.clamp(-CLAMP_LIMIT, CLAMP_LIMIT) + 1) * (g * torch.sigmoid(CLAMP_ALPHA * g))
    return F.silu(h_gate) * h_up if name == "swiglu" else F.gelu(h_up)


class ExpertBiases(NamedTuple):
    """Per-expert biases of the three projections: up, gate [E, F] (gate None for GELU), down [E, D]."""

    up: torch.Tensor
    gate: torch.Tensor | None
    down: torch.Tensor


def sorted_mlp(x_MD, offsets_E, w_up, w_gate, w_down, *, activation_name: str, backend: str = "auto", biases=None):
    """The expert MLP on rows already sorted by expert, one grouped matmul per weight (biases: an
    ExpertBiases, each row adding its expert's). The offsets come from sort_by_expert or from row
    counts, so their values are checked only where that is free (on the CPU)."""
    expert_M = None if biases is None else expert_of_rows(offsets_E, x_MD.shape[0])

    def mm(a, w, b=None):
        check_grouped_mm_args(a, w, offsets_E, values=False)
        y = apply_grouped_mm(a, w, offsets_E, backend)
        return y if b is None else y + b.to(y.dtype)[expert_M]

    up, gate, down = biases if biases is not None else (None, None, None)
    h_MF = activation(activation_name, mm(x_MD, w_up, up), None if w_gate is None else mm(x_MD, w_gate, gate))
    return mm(h_MF, w_down, down)


def expert_of_rows(offsets_E: torch.Tensor, m: int) -> torch.Tensor:
    """int64 [m]: the expert each of m sorted rows belongs to (no device sync)."""
    counts_E = torch.diff(offsets_E, prepend=offsets_E.new_zeros(1))
    return torch.repeat_interleave(torch.arange(len(offsets_E), device=offsets_E.device), counts_E, output_size=m)


def _check(x_TD, weights_TK, order_M, offsets_E, w_up, w_gate, w_down, act: str, biases=None) -> None:
    E, D, F_ = w_up.shape
    if biases is not None:
        want = {"up": (E, F_), "gate": None if w_gate is None else (E, F_), "down": (E, D)}
        for name, b in biases._asdict().items():
            if (None if b is None else tuple(b.shape)) != want[name]:
                raise ValueError(
                    f"expert_mlp: the {name} bias is {None if b is None else tuple(b.shape)}, expected {want[name]}"
                )
    if act not in ACTIVATIONS:
        raise ValueError(f"expert_mlp: activation must be one of {ACTIVATIONS}, got {act!r}")
    if (w_gate is None) != (act == "gelu"):
        raise ValueError(f"expert_mlp: {act} {'takes no' if act == 'gelu' else 'needs a'} w_gate")
    for name, w, shape in (("w_gate", w_gate, (E, D, F_)), ("w_down", w_down, (E, F_, D))):
        if w is not None and tuple(w.shape) != shape:
            raise ValueError(f"expert_mlp: {name} is {tuple(w.shape)}, expected {shape} from w_up {tuple(w_up.shape)}")
    if x_TD.dim() != 2 or x_TD.shape[1] != D:
        raise ValueError(f"expert_mlp: x must be [T, D={D}], got {tuple(x_TD.shape)}")
    if weights_TK.dim() != 2 or weights_TK.shape[0] != x_TD.shape[0]:
        raise ValueError(f"expert_mlp: weights must be [T={x_TD.shape[0]}, k], got {tuple(weights_TK.shape)}")
    if order_M.dim() != 1 or order_M.numel() > weights_TK.numel():
        raise ValueError(
            f"expert_mlp: order must list at most T*k={weights_TK.numel()} assignments, got {tuple(order_M.shape)}"
        )
    if offsets_E.shape != (E,) or offsets_E.dtype != torch.int32:
        raise ValueError(f"expert_mlp: offsets must be int32 [E={E}], got {offsets_E.dtype} {tuple(offsets_E.shape)}")
    for name, t in (("w_up", w_up), ("w_gate", w_gate), ("w_down", w_down)):
        if t is not None and t.dtype != x_TD.dtype:
            raise ValueError(f"expert_mlp: x is {x_TD.dtype} but {name} is {t.dtype}")
    tensors = [t for t in (x_TD, weights_TK, order_M, offsets_E, w_up, w_gate, w_down) if t is not None]
    if len({t.device for t in tensors}) != 1:
        raise ValueError(f"expert_mlp: tensors on several devices: {sorted({str(t.device) for t in tensors})}")


def expert_mlp_reference(
    x_TD, weights_TK, order_M, offsets_E, w_up, w_gate, w_down, *, activation_name: str, biases=None
):
    """PyTorch ops, step by step: gather, sorted_mlp, combine."""
    _check(x_TD, weights_TK, order_M, offsets_E, w_up, w_gate, w_down, activation_name, biases)
    check_offsets(offsets_E, order_M.numel())
    return _composed(x_TD, weights_TK, order_M, offsets_E, w_up, w_gate, w_down, activation_name, biases)


def _composed(x_TD, weights_TK, order_M, offsets_E, w_up, w_gate, w_down, activation_name, biases, backend="torch"):
    with profiler_range("moe/permutation"):
        x_MD = gather_rows(x_TD, order_M, weights_TK.shape[1])
    with profiler_range("moe/expert_matmuls"):
        y_MD = sorted_mlp(
            x_MD, offsets_E, w_up, w_gate, w_down, activation_name=activation_name, backend=backend, biases=biases
        )
    with profiler_range("moe/combine"):
        return combine(y_MD, order_M, weights_TK)


def expert_mlp(
    x_TD,
    weights_TK,
    order_M,
    offsets_E,
    w_up,
    w_gate,
    w_down,
    *,
    activation_name: str,
    backend: str = "auto",
    biases=None,
):
    """y_TD: token t's k expert outputs, weighted and summed (see the module doc). order_M and
    offsets_E as kernels.sort_by_expert returns them; both are checked."""
    _check(x_TD, weights_TK, order_M, offsets_E, w_up, w_gate, w_down, activation_name, biases)
    check_offsets(offsets_E, order_M.numel())
    return apply_expert_mlp(
        x_TD, weights_TK, order_M, offsets_E, w_up, w_gate, w_down, activation_name, backend, biases
    )


def routed_mlp(
    x_TD,
    weights_TK,
    experts_TK,
    w_up,
    w_gate,
    w_down,
    *,
    activation_name: str,
    backend: str = "auto",
    keep_TK=None,
    biases=None,
):
    """expert_mlp from the router's choices: experts_TK [T, k] (keep_TK [T, k] False where an
    assignment was dropped for capacity). Sorts the assignments, then runs the same MLP; no device
    sync on the way (the offsets are made here, so they need no check)."""
    experts_A = experts_TK.reshape(-1) if keep_TK is None else experts_TK.masked_fill(~keep_TK, -1).reshape(-1)
    with profiler_range("moe/permutation"):
        order_M, offsets_E = sort_by_expert(experts_A, w_up.shape[0], has_dropped=keep_TK is not None)
    _check(x_TD, weights_TK, order_M, offsets_E, w_up, w_gate, w_down, activation_name, biases)
    return apply_expert_mlp(
        x_TD, weights_TK, order_M, offsets_E, w_up, w_gate, w_down, activation_name, backend, biases
    )


def apply_expert_mlp(x_TD, weights_TK, order_M, offsets_E, w_up, w_gate, w_down, activation_name, backend, biases=None):
    """expert_mlp after the checks: for callers that checked, or built the order and offsets themselves.
    The fused Triton kernels have no biases and no clamped_swiglu: those run composed, the grouped
    matmuls still on the backend asked for."""
    backend = resolve_backend(backend, x_TD)
    if backend != "triton" or biases is not None or activation_name not in FUSED_ACTIVATIONS:
        return _composed(x_TD, weights_TK, order_M, offsets_E, w_up, w_gate, w_down, activation_name, biases, backend)
    from kernels import ops  # the fused Triton path, a custom op (kernels/ops.py)

    save = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x_TD, weights_TK, w_up, w_gate, w_down)
    )
    with profiler_range("moe/expert_matmuls"):
        return ops.expert_mlp(x_TD, weights_TK, order_M, offsets_E, w_up, w_gate, w_down, save)[0]
