"""Weight-only quantized expert weights for serving, and the routed expert MLP over them.

Legend as in kernels/expert_mlp.py; weights are [E, K, N] (in, out): w_up, w_gate [E, D, F], w_down [E, F, D].

Schemes, all symmetric, all "per output channel" = per column n of each expert's [K, N] matrix:
    int8   q = round(w / s) in [-127, 127],      s[e, n] = max_k |w[e, k, n]| / 127
    fp8    q = fp8_e4m3(w / s),                  s[e, n] = max_k |w[e, k, n]| / 448   (e4m3's largest)
    int4   q = round(w / s) in [-8, 7],          s[e, k // G, n] = max over the group |w| / 7, G = 128
           (group-wise along K; where 128 does not divide K, the largest power of two that does), stored two
           per byte along K: byte [e, k/2, n] = (q_even + 8) | (q_odd + 8) << 4
    w ~ q * s (dequantize). Activations stay in their dtype (bf16/fp16 on a GPU, fp32 on a CPU): W8A16.

Bytes per weight: int8 and fp8 1, int4 0.5, plus the scales (4 bytes per column, per group for int4).

    QuantizedWeight(q, scale, scheme)           the three tensors of one expert weight
    quantize(w_EKN, scheme) -> QuantizedWeight
    dequantize(qw, dtype) -> w_EKN
    quantized_mlp(x_TD, weights_TK, experts_TK, up, gate, down, activation_name, backend)  inference only
    quantized_mlp_reference(...)                 the same in float64 from the dequantized weights, per token

Backends: "triton" runs kernels/triton/launch.py's two forward steps with the dequantisation in
the weight loads (int8/fp8 widened exactly, the per-column scale applied once to the accumulator in
the epilogue; int4 unpacked and scaled per group inside the K loop). "torch" dequantizes only the
experts that received tokens, one at a time, and multiplies (on a CPU this is faster than
torch._weight_int8pack_mm for our shapes: bench/kernels.py measures both).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.expert_mlp import FUSED_ACTIVATIONS, activation
from kernels.grouped_matmul import resolve_backend
from kernels.permute import combine, sort_by_expert

SCHEMES = ("int8", "fp8", "int4")
INT4_GROUP = 128
_QMAX = {"int8": 127.0, "fp8": 448.0, "int4": 7.0}


@dataclass
class QuantizedWeight:
    q: torch.Tensor  # int8 [E, K, N] | float8_e4m3fn [E, K, N] | uint8 [E, K/2, N] (int4, packed)
    scale: torch.Tensor  # float32 [E, N] | [E, K/G, N] (int4)
    scheme: str

    @property
    def shape(self) -> tuple[int, int, int]:
        E, K, N = self.q.shape
        return (E, K * 2 if self.scheme == "int4" else K, N)

    @property
    def group(self) -> int:
        return self.shape[1] // self.scale.shape[1] if self.scheme == "int4" else self.shape[1]

    @property
    def nbytes(self) -> int:
        return self.q.numel() * self.q.element_size() + self.scale.numel() * self.scale.element_size()


def int4_group(K: int) -> int:
    """The int4 group along K: 128, or the largest power of two dividing K when 128 does not (a power
    of two, so a kernel's K block lies inside one group or spans whole ones)."""
    g = INT4_GROUP
    while K % g:
        g //= 2
    return g


def check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization {scheme!r}: choose one of {', '.join(SCHEMES)}")


def quantize(w_EKN: torch.Tensor, scheme: str) -> QuantizedWeight:
    """w [E, K, N] (any float dtype) -> its quantized form; see the module doc for the formulas."""
    check_scheme(scheme)
    if w_EKN.dim() != 3:
        raise ValueError(f"quantize: expected expert weights [E, K, N], got {tuple(w_EKN.shape)}")
    E, K, N = w_EKN.shape
    w = w_EKN.detach().float()
    if scheme == "int4":
        G = int4_group(K)
        if G < 2:
            raise ValueError(f"int4 packs two values per byte along K: K={K} must be even")
        groups = w.view(E, K // G, G, N)
        scale = (groups.abs().amax(dim=2) / _QMAX[scheme]).clamp_min(1e-12)  # [E, K/G, N]
        q = torch.round(groups / scale[:, :, None]).clamp(-8, 7).to(torch.int32).view(E, K, N) + 8
        packed = (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8)  # [E, K/2, N]
        return QuantizedWeight(packed.contiguous(), scale.contiguous(), scheme)
    scale = (w.abs().amax(dim=1) / _QMAX[scheme]).clamp_min(1e-12)  # [E, N]
    scaled = w / scale[:, None, :]
    if scheme == "int8":
        q = torch.round(scaled).clamp(-127, 127).to(torch.int8)
    else:
        q = scaled.clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    return QuantizedWeight(q.contiguous(), scale.contiguous(), scheme)


def dequantize(qw: QuantizedWeight, dtype: torch.dtype = torch.float32, experts=None) -> torch.Tensor:
    """q * s as [E, K, N] in dtype (computed in float32, or float64 when asked); `experts`: only those."""
    q, scale = (qw.q, qw.scale) if experts is None else (qw.q[experts], qw.scale[experts])
    work = torch.float64 if dtype == torch.float64 else torch.float32
    if qw.scheme == "int4":
        E, half, N = q.shape
        lo, hi = (q & 15).to(torch.int32) - 8, (q >> 4).to(torch.int32) - 8
        values = torch.stack([lo, hi], dim=2).view(E, half * 2, N).to(work)
        G = half * 2 // scale.shape[1]
        w = (values.view(E, -1, G, N) * scale.to(work)[:, :, None]).view(E, half * 2, N)
    else:
        w = q.to(work) * scale.to(work)[:, None, :]
    return w.to(dtype)


def fp8_supported(capability: tuple[int, int]) -> bool:
    """fp8 e4m3 arrived with sm_89 (Ada) and sm_90 (Hopper)."""
    return tuple(capability) >= (8, 9)


def check_device(scheme: str, capability: tuple[int, int]) -> None:
    if scheme == "fp8" and not fp8_supported(capability):
        raise ValueError(
            f"fp8 e4m3 weights need an sm_89 or newer GPU (Ada, Hopper) for the Triton kernels; this "
            f"one is sm_{capability[0]}{capability[1]}: quantize to int8 instead (the same bytes), or "
            "serve with expert_backend torch"
        )


def _check(x_TD, up: QuantizedWeight, gate: QuantizedWeight | None, down: QuantizedWeight, act: str) -> None:
    E, D, F_ = up.shape
    if (gate is None) != (act == "gelu"):
        raise ValueError(f"quantized_mlp: {act} {'takes no' if act == 'gelu' else 'needs a'} gate weight")
    for name, w, shape in (("gate", gate, (E, D, F_)), ("down", down, (E, F_, D))):
        if w is not None and w.shape != shape:
            raise ValueError(f"quantized_mlp: {name} is {w.shape}, expected {shape} from up {up.shape}")
    if len({w.scheme for w in (up, gate, down) if w is not None}) != 1:
        raise ValueError("quantized_mlp: the expert weights use different schemes")
    if x_TD.dim() != 2 or x_TD.shape[1] != D:
        raise ValueError(f"quantized_mlp: x must be [T, D={D}], got {tuple(x_TD.shape)}")


def quantized_mlp(
    x_TD,
    weights_TK,
    experts_TK,
    up: QuantizedWeight,
    gate: QuantizedWeight | None,
    down: QuantizedWeight,
    *,
    activation_name: str,
    backend: str = "auto",
    biases=None,
) -> torch.Tensor:
    """y_TD = sum_j weights[t, j] * mlp_e(x_t) over the quantized experts (no gradients: serving).
    biases (kernels.expert_mlp.ExpertBiases) stay unquantized; with them, or clamped_swiglu, the
    Triton backend dequantizes expert by expert as the PyTorch one does (its kernels have neither)."""
    _check(x_TD, up, gate, down, activation_name)
    E = up.shape[0]
    with torch.no_grad():
        order_M, offsets_E = sort_by_expert(experts_TK.reshape(-1), E)
        fused = biases is None and activation_name in FUSED_ACTIVATIONS
        if resolve_backend(backend, x_TD) == "triton" and fused:
            if x_TD.is_cuda:
                check_device(up.scheme, torch.cuda.get_device_capability(x_TD.device))
            return _triton(x_TD, weights_TK, order_M, offsets_E, up, gate, down)
        return _torch(x_TD, weights_TK, order_M, offsets_E, up, gate, down, activation_name, biases)


def _torch(x_TD, weights_TK, order_M, offsets_E, up, gate, down, activation_name, biases=None):
    x_MD = x_TD[order_M // weights_TK.shape[1]]
    y_MD = x_MD.new_empty(x_MD.shape[0], up.shape[1])
    ends = offsets_E.tolist()  # one host sync; the loop below visits only experts with rows
    for g, (s, e) in enumerate(zip([0] + ends[:-1], ends)):
        if s == e:
            continue
        one = slice(g, g + 1)

        def proj(a, w, which):  # a @ expert g's dequantized w, plus its bias where there is one
            y = a @ dequantize(w, x_TD.dtype, one)[0]
            b = None if biases is None else getattr(biases, which)
            return y if b is None else y + b[g].to(y.dtype)

        h_gate = None if gate is None else proj(x_MD[s:e], gate, "gate")
        y_MD[s:e] = proj(activation(activation_name, proj(x_MD[s:e], up, "up"), h_gate), down, "down")
    return combine(y_MD, order_M, weights_TK)


def _triton(x_TD, weights_TK, order_M, offsets_E, up, gate, down):
    from kernels.triton.launch import down_scatter, up_activation
    from kernels.triton.modes import WQ_8BIT, WQ_INT4

    (T, k), M, (_, D, F_) = weights_TK.shape, order_M.numel(), up.shape
    order_M = order_M.to(torch.int32)
    src_M = torch.div(order_M, k, rounding_mode="floor")
    scale_M = weights_TK.reshape(-1)[order_M].float()
    wq = WQ_INT4 if up.scheme == "int4" else WQ_8BIT

    def args(w, w2=None):
        return dict(ws=w.scale, ws2=None if w2 is None else w2.scale, wq=wq, qgroup=w.group)

    h_MF = up_activation(
        x_TD, src_M, up.q, None if gate is None else gate.q, offsets_E, x_TD.new_empty(M, F_), quant=args(up, gate)
    )
    y_AD = x_TD.new_empty(T * k, D)
    down_scatter(h_MF, down.q, offsets_E, order_M, scale_M, y_AD, quant=args(down))
    return y_AD.view(T, k, D).sum(dim=1) if k > 1 else y_AD


def quantized_mlp_reference(
    x_TD, weights_TK, experts_TK, up, gate, down, *, activation_name: str, biases=None
) -> torch.Tensor:
    """Token by token, in float64, from the dequantized weights: what the quantized MLP should compute."""
    _check(x_TD, up, gate, down, activation_name)
    w_up, w_down = dequantize(up, torch.float64), dequantize(down, torch.float64)
    w_gate = None if gate is None else dequantize(gate, torch.float64)
    x = x_TD.double()
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(experts_TK.shape[1]):
            e = int(experts_TK[t, j])
            b = (0.0, 0.0, 0.0) if biases is None else [0.0 if v is None else v[e].double() for v in biases]
            h_gate = None if w_gate is None else x[t] @ w_gate[e] + b[1]
            h = activation(activation_name, x[t] @ w_up[e] + b[0], h_gate)
            out[t] += float(weights_TK[t, j]) * (h @ w_down[e] + b[2])
    return out
