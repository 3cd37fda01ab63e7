"""The routed expert MLP, from token rows to token rows: gather, up-projection, activation,
down-projection, routing weight, and the sum back into token order.

Legend: T tokens, k experts per token, A = T*k assignments (a = t*k + j is token t's j-th
choice), M assignments kept, sorted by expert (order_M holds their assignment ids), E experts,
D model width, F expert width.

    gelu:   y_t = sum_j weights[t, j] * gelu(x_t @ w_up[e]) @ w_down[e]                 e = experts[t, j]
    swiglu: y_t = sum_j weights[t, j] * (silu(x_t @ w_gate[e]) * (x_t @ w_up[e])) @ w_down[e]

`expert_mlp_reference` composes the PyTorch ops: a gathered copy of the rows, two grouped matmuls,
the activation, and `combine`. `expert_mlp` with the Triton backend does the same in two fused
kernels and no copies (ScatterMoE's idea, our own kernels):
  1. h_MF = act(x[token of row] @ w_up[e] (, w_gate[e])): the gather happens in the loads, the
     activation in the epilogue (SwiGLU: gate and up from one pass over x).
  2. y_AD[order[r]] = weight[order[r]] * (h_MF[r] @ w_down[e]): the routing weight and the move to
     assignment order in the epilogue; then y_T = sum over the k rows of y_TkD, in a fixed order.
Every output row is written once, so results are deterministic.

The backward (training) runs four more launches and keeps the same no-copy, no-atomics rule:
  dh = dy[token] @ w_down^T with the activation's backward and the weight's gradient in the epilogue;
  dW_down = h^T (weight * dy[token]); dW_up (, dW_gate) = x[token]^T d_up (, d_gate);
  dx_AD[order[r]] = d_up[r] @ w_up^T (+ d_gate[r] @ w_gate^T), then summed over k like y.
It saves h and the pre-activations (M x F each) rather than recomputing them.

Profiler ranges: moe/permutation (the gather, PyTorch path), moe/expert_matmuls (on Triton this
includes the fused gather and scatter), moe/combine (the weighted sum over k).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from kernels.grouped_matmul import check_offsets, grouped_mm, resolve_backend
from kernels.permute import combine

ACTIVATIONS = ("gelu", "swiglu")


def activation(name: str, h_up: torch.Tensor, h_gate: torch.Tensor | None = None) -> torch.Tensor:
    return F.silu(h_gate) * h_up if name == "swiglu" else F.gelu(h_up)


def sorted_mlp(x_MD, offsets_E, w_up, w_gate, w_down, *, activation_name: str, backend: str = "auto",
               check_end: bool = True):
    """The expert MLP on rows already sorted by expert, one grouped matmul per weight."""
    def mm(a, w):
        return grouped_mm(a, w, offsets_E, backend=backend, check_end=check_end)

    h_MF = activation(activation_name, mm(x_MD, w_up), None if w_gate is None else mm(x_MD, w_gate))
    return mm(h_MF, w_down)


def _check(x_TD, weights_TK, order_M, offsets_E, w_up, w_gate, w_down, act: str) -> None:
    E, D, F_ = w_up.shape
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
        raise ValueError(f"expert_mlp: order must list at most T*k={weights_TK.numel()} assignments, "
                         f"got {tuple(order_M.shape)}")
    if offsets_E.shape != (E,) or offsets_E.dtype != torch.int32:
        raise ValueError(f"expert_mlp: offsets must be int32 [E={E}], got {offsets_E.dtype} {tuple(offsets_E.shape)}")
    for name, t in (("w_up", w_up), ("w_gate", w_gate), ("w_down", w_down)):
        if t is not None and t.dtype != x_TD.dtype:
            raise ValueError(f"expert_mlp: x is {x_TD.dtype} but {name} is {t.dtype}")
    tensors = [t for t in (x_TD, weights_TK, order_M, offsets_E, w_up, w_gate, w_down) if t is not None]
    if len({t.device for t in tensors}) != 1:
        raise ValueError(f"expert_mlp: tensors on several devices: {sorted({str(t.device) for t in tensors})}")


def expert_mlp_reference(x_TD, weights_TK, order_M, offsets_E, w_up, w_gate, w_down, *, activation_name: str,
                         check_end: bool = True):
    """PyTorch ops, step by step: gather, sorted_mlp, combine."""
    _check(x_TD, weights_TK, order_M, offsets_E, w_up, w_gate, w_down, activation_name)
    return _composed(x_TD, weights_TK, order_M, offsets_E, w_up, w_gate, w_down, activation_name, check_end)


def _composed(x_TD, weights_TK, order_M, offsets_E, w_up, w_gate, w_down, activation_name, check_end):
    with record_function("moe/permutation"):
        x_MD = x_TD[order_M // weights_TK.shape[1]]
    with record_function("moe/expert_matmuls"):
        y_MD = sorted_mlp(x_MD, offsets_E, w_up, w_gate, w_down, activation_name=activation_name, backend="torch",
                          check_end=check_end)
    with record_function("moe/combine"):
        return combine(y_MD, order_M, weights_TK)


def expert_mlp(x_TD, weights_TK, order_M, offsets_E, w_up, w_gate, w_down, *, activation_name: str,
               backend: str = "auto", check_end: bool = True):
    """y_TD: token t's k expert outputs, weighted and summed (see the module doc). order_M and
    offsets_E come from kernels.sort_by_expert. check_end=False skips checking the offsets' values
    (a device sync on a GPU) when the caller built them with sort_by_expert."""
    _check(x_TD, weights_TK, order_M, offsets_E, w_up, w_gate, w_down, activation_name)
    if resolve_backend(backend, x_TD) != "triton":
        return _composed(x_TD, weights_TK, order_M, offsets_E, w_up, w_gate, w_down, activation_name, check_end)
    if check_end:
        check_offsets(offsets_E, order_M.numel())
    with record_function("moe/expert_matmuls"):
        return _FusedExpertMLP.apply(x_TD, weights_TK, order_M, offsets_E, w_up, w_gate, w_down)


def _sum_over_k(rows_AD: torch.Tensor, T: int, k: int) -> torch.Tensor:
    return rows_AD.view(T, k, -1).sum(dim=1) if k > 1 else rows_AD


class _FusedExpertMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_TD, weights_TK, order_M, offsets_E, w_up, w_gate, w_down):
        from kernels.triton_grouped_mm import EPI_GELU, EPI_SWIGLU, rows_mm

        (T, k), M, (E, D, F_) = weights_TK.shape, order_M.numel(), w_up.shape
        order_M = order_M.to(torch.int32)
        src_M = torch.div(order_M, k, rounding_mode="floor")  # the token row of each sorted assignment
        scale_M = weights_TK.reshape(-1)[order_M].float()
        save = any(ctx.needs_input_grad)  # grad mode is off inside forward; this says whether backward will run
        pre = [x_TD.new_empty(M, F_) for _ in range(2 if w_gate is not None else 1)] if save else [None, None]
        h_MF = x_TD.new_empty(M, F_)
        if w_gate is None:
            rows_mm(x_TD, w_up, offsets_E, h_MF, m=M, src=src_M, epi=EPI_GELU, pre=pre[0])
        else:
            rows_mm(x_TD, w_up, offsets_E, h_MF, m=M, src=src_M, w2=w_gate, dual=True, epi=EPI_SWIGLU,
                    pre=pre[0], pre2=pre[1])
        # dropped assignments are rows nobody writes: they must read as zero
        y_AD = (x_TD.new_zeros if M < T * k else x_TD.new_empty)(T * k, D)
        rows_mm(h_MF, w_down, offsets_E, y_AD, m=M, dst=order_M, scale=scale_M)
        if save:
            ctx.save_for_backward(x_TD, weights_TK, order_M, src_M, scale_M, offsets_E, w_up, w_gate, w_down, h_MF,
                                  *pre)
        with record_function("moe/combine"):
            return _sum_over_k(y_AD, T, k)

    @staticmethod
    def backward(ctx, dy_TD):
        from kernels.triton_grouped_mm import EPI_GELU_BWD, EPI_SWIGLU_BWD, dscale_buffer, expert_xt_y, rows_mm

        x_TD, weights_TK, order_M, src_M, scale_M, offsets_E, w_up, w_gate, w_down, h_MF, *pre = ctx.saved_tensors
        (T, k), M, (E, D, F_) = weights_TK.shape, order_M.numel(), w_up.shape
        dy_TD = dy_TD.contiguous()
        swiglu = w_gate is not None

        # dh from dy: the activation's backward and the routing weight's gradient in the epilogue
        d_up, d_gate = x_TD.new_empty(M, F_), (x_TD.new_empty(M, F_) if swiglu else None)
        dscale_MJ = dscale_buffer(M, F_, x_TD.device)
        rows_mm(dy_TD, w_down.transpose(1, 2), offsets_E, d_up, m=M, src=src_M, epi=EPI_SWIGLU_BWD if swiglu
                else EPI_GELU_BWD, pre=pre[0], pre2=pre[1] if swiglu else None, out2=d_gate, scale=scale_M,
                dscale=dscale_MJ)
        d_weights = torch.zeros(T * k, device=x_TD.device, dtype=torch.float32)
        d_weights = d_weights.index_copy(0, order_M.long(), dscale_MJ.sum(dim=1)).view(T, k).to(weights_TK.dtype)

        dw_down = expert_xt_y(h_MF, dy_TD, offsets_E, torch.empty_like(w_down), m=M, b_src=src_M, b_scale=scale_M)
        dw_up = expert_xt_y(x_TD, d_up, offsets_E, torch.empty_like(w_up), m=M, a_src=src_M)
        dw_gate = expert_xt_y(x_TD, d_gate, offsets_E, torch.empty_like(w_gate), m=M, a_src=src_M) if swiglu else None

        dx_AD = (x_TD.new_zeros if M < T * k else x_TD.new_empty)(T * k, D)
        rows_mm(d_up, w_up.transpose(1, 2), offsets_E, dx_AD, m=M, dst=order_M,
                a2=d_gate, w2=w_gate.transpose(1, 2) if swiglu else None)
        return _sum_over_k(dx_AD, T, k), d_weights, None, None, dw_up, dw_gate, dw_down
