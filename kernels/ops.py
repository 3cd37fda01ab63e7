"""The Triton paths as PyTorch custom operators (torch.library), so that torch.compile and
torch.export see each as one op with known output shapes (a fake implementation) and a registered
backward, instead of an autograd.Function whose insides the compiler cannot trace.

    moe::grouped_mm(x [M, K], w [E, K, N], offsets [E]) -> y [M, N]
    moe::grouped_mm_backward(dy, x, w, offsets) -> (dx, dw)
    (moe::grouped_mm_torch, the PyTorch path's, lives beside that path in kernels/grouped_matmul.py)
    moe::expert_mlp(x [T, D], weights [T, k], order [M], offsets [E], w_up, w_gate?, w_down, save)
        -> (y [T, D], h [M, F], pre_up [M, F] or [0], pre_gate [M, F] or [0])
    moe::expert_mlp_backward(dy, x, weights, order, offsets, w_up, w_gate?, w_down, h, pre_up, pre_gate)
        -> (dx, d_weights, dw_up, dw_gate ([0] for GELU), dw_down)

expert_mlp's extra outputs are what its backward needs (the hidden rows and, when `save`, the
pre-activations); they carry no gradient. The arguments arrive checked (kernels.grouped_matmul and
kernels.expert_mlp check them before calling). tests/kernels/test_ops.py holds every op to
torch.library.opcheck (schema, fake tensors, autograd registration, AOT dispatch) through Triton's
interpreter on the CPU.
"""

from __future__ import annotations

import torch


def _sum_over_k(rows_AD: torch.Tensor, T: int, k: int) -> torch.Tensor:
    return rows_AD.view(T, k, rows_AD.shape[-1]).sum(dim=1) if k > 1 else rows_AD


# --- the grouped GEMM ---------------------------------------------------------------------------


@torch.library.custom_op("moe::grouped_mm", mutates_args=())
def grouped_mm(x_MK: torch.Tensor, w_EKN: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    from kernels.triton.launch import grouped_rows

    return grouped_rows(x_MK, w_EKN, offsets, x_MK.new_empty(x_MK.shape[0], w_EKN.shape[2]))


@grouped_mm.register_fake
def _(x_MK, w_EKN, offsets):
    return x_MK.new_empty(x_MK.shape[0], w_EKN.shape[2])


@torch.library.custom_op("moe::grouped_mm_backward", mutates_args=())
def grouped_mm_backward(
    dy_MN: torch.Tensor, x_MK: torch.Tensor, w_EKN: torch.Tensor, offsets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """dX = dY W^T (a grouped matmul against a strided view of w), dW_g = X_g^T dY_g."""
    from kernels.triton.launch import expert_xt_y, grouped_rows

    dy_MN = dy_MN.contiguous()
    dx = grouped_rows(dy_MN, w_EKN.transpose(1, 2), offsets, x_MK.new_empty(x_MK.shape))
    dw = expert_xt_y(x_MK, dy_MN, offsets, torch.empty_like(w_EKN), m=x_MK.shape[0])
    return dx, dw


@grouped_mm_backward.register_fake
def _(dy_MN, x_MK, w_EKN, offsets):
    return x_MK.new_empty(x_MK.shape), torch.empty_like(w_EKN)


def _grouped_mm_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _grouped_mm_grad(ctx, dy_MN):
    x_MK, w_EKN, offsets = ctx.saved_tensors
    dx, dw = grouped_mm_backward(dy_MN, x_MK, w_EKN, offsets)
    return dx, dw, None


grouped_mm.register_autograd(_grouped_mm_grad, setup_context=_grouped_mm_setup)


# --- the fused expert MLP (kernels/expert_mlp.py's module doc: forward steps 1-2, backward 1-4) ---


@torch.library.custom_op("moe::expert_mlp", mutates_args=())
def expert_mlp(
    x_TD: torch.Tensor,
    weights_TK: torch.Tensor,
    order_M: torch.Tensor,
    offsets_E: torch.Tensor,
    w_up: torch.Tensor,
    w_gate: torch.Tensor | None,
    w_down: torch.Tensor,
    save: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from kernels.triton.launch import down_scatter, up_activation

    (T, k), M, (D, F_) = weights_TK.shape, order_M.numel(), w_up.shape[1:]
    swiglu = w_gate is not None
    order_M = order_M.to(torch.int32)
    src_M = torch.div(order_M, k, rounding_mode="floor")  # the token row of each sorted assignment
    scale_M = weights_TK.reshape(-1)[order_M].float()
    pre_up = x_TD.new_empty(M, F_) if save else x_TD.new_empty(0)
    pre_gate = x_TD.new_empty(M, F_) if save and swiglu else x_TD.new_empty(0)
    h_MF = up_activation(
        x_TD,
        src_M,
        w_up,
        w_gate,
        offsets_E,
        x_TD.new_empty(M, F_),
        pre_up if save else None,
        pre_gate if save and swiglu else None,
    )  # 1
    y_AD = (x_TD.new_zeros if M < T * k else x_TD.new_empty)(T * k, D)  # dropped rows are never written
    down_scatter(h_MF, w_down, offsets_E, order_M, scale_M, y_AD)  # 2
    return _sum_over_k(y_AD, T, k), h_MF, pre_up, pre_gate


@expert_mlp.register_fake
def _(x_TD, weights_TK, order_M, offsets_E, w_up, w_gate, w_down, save):
    M, F_ = order_M.shape[0], w_up.shape[2]
    return (
        x_TD.new_empty(x_TD.shape),
        x_TD.new_empty(M, F_),
        x_TD.new_empty(M, F_) if save else x_TD.new_empty(0),
        x_TD.new_empty(M, F_) if save and w_gate is not None else x_TD.new_empty(0),
    )


@torch.library.custom_op("moe::expert_mlp_backward", mutates_args=())
def expert_mlp_backward(
    dy_TD: torch.Tensor,
    x_TD: torch.Tensor,
    weights_TK: torch.Tensor,
    order_M: torch.Tensor,
    offsets_E: torch.Tensor,
    w_up: torch.Tensor,
    w_gate: torch.Tensor | None,
    w_down: torch.Tensor,
    h_MF: torch.Tensor,
    pre_up: torch.Tensor,
    pre_gate: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from kernels.triton.launch import activation_backward, dscale_buffer, dx_scatter, expert_xt_y

    (T, k), M, (D, F_) = weights_TK.shape, order_M.numel(), w_up.shape[1:]
    swiglu = w_gate is not None
    order_M = order_M.to(torch.int32)
    src_M = torch.div(order_M, k, rounding_mode="floor")
    scale_M = weights_TK.reshape(-1)[order_M].float()
    dy_TD = dy_TD.contiguous()
    # 1. d_up (, d_gate) and the routing weights' gradient
    d_up, d_gate = x_TD.new_empty(M, F_), (x_TD.new_empty(M, F_) if swiglu else None)
    dscale_MJ = dscale_buffer(M, F_, x_TD.device)
    activation_backward(
        dy_TD, src_M, w_down, offsets_E, scale_M, pre_up, pre_gate if swiglu else None, d_up, d_gate, dscale_MJ
    )
    d_weights = torch.zeros(T * k, device=x_TD.device, dtype=torch.float32)
    d_weights = d_weights.index_copy(0, order_M.long(), dscale_MJ.sum(dim=1)).view(T, k).to(weights_TK.dtype)
    # 2-3. the weight gradients
    dw_down = expert_xt_y(h_MF, dy_TD, offsets_E, torch.empty_like(w_down), m=M, b_src=src_M, a_scale=scale_M)
    dw_up = expert_xt_y(x_TD, d_up, offsets_E, torch.empty_like(w_up), m=M, a_src=src_M)
    dw_gate = (
        expert_xt_y(x_TD, d_gate, offsets_E, torch.empty_like(w_gate), m=M, a_src=src_M)
        if swiglu
        else w_up.new_empty(0)
    )
    # 4. dx, in assignment order, then summed over k
    dx_AD = (x_TD.new_zeros if M < T * k else x_TD.new_empty)(T * k, D)
    dx_scatter(d_up, d_gate, w_up, w_gate, offsets_E, order_M, dx_AD)
    return _sum_over_k(dx_AD, T, k), d_weights, dw_up, dw_gate, dw_down


@expert_mlp_backward.register_fake
def _(dy_TD, x_TD, weights_TK, order_M, offsets_E, w_up, w_gate, w_down, h_MF, pre_up, pre_gate):
    return (
        x_TD.new_empty(x_TD.shape),
        weights_TK.new_empty(weights_TK.shape),
        torch.empty_like(w_up),
        torch.empty_like(w_gate) if w_gate is not None else w_up.new_empty(0),
        torch.empty_like(w_down),
    )


def _expert_mlp_setup(ctx, inputs, output):
    x_TD, weights_TK, order_M, offsets_E, w_up, w_gate, w_down, save = inputs
    _, h_MF, pre_up, pre_gate = output
    ctx.save_for_backward(x_TD, weights_TK, order_M, offsets_E, w_up, w_gate, w_down, h_MF, pre_up, pre_gate)
    ctx.saved = save


def _expert_mlp_grad(ctx, dy_TD, *unused):  # (h and the pre-activations carry no gradient)
    if not ctx.saved:
        raise RuntimeError("moe::expert_mlp ran with save=False (no pre-activations kept), so it has no backward")
    dx, d_weights, dw_up, dw_gate, dw_down = expert_mlp_backward(dy_TD, *ctx.saved_tensors)
    has_gate = ctx.saved_tensors[5] is not None
    return dx, d_weights, None, None, dw_up, dw_gate if has_gate else None, dw_down, None


expert_mlp.register_autograd(_expert_mlp_grad, setup_context=_expert_mlp_setup)
