"""Expert matmul and token permutation ops. Imports only torch (and triton, lazily: the Triton kernels
load when first asked for); never `moe`.

    grouped_mm(x, w, offsets, backend=)     y[rows of g] = x[rows of g] @ w[g]; grouped_mm_reference
    expert_mlp(x, weights, order, offsets, w_up, w_gate, w_down, activation_name=, backend=)
                                            the routed expert MLP, token rows in and out; expert_mlp_reference
    routed_mlp(x, weights, experts, ...)     the same from the router's choices (sorts them itself)
    sorted_mlp(x_sorted, offsets, ...)       the MLP on rows already sorted by expert
    ExpertBiases(up, gate, down)            per-expert biases, the `biases=` of the three above
    sort_by_expert, gather_rows, combine    the permutation into expert order and back
    quantize, dequantize, quantized_mlp     weight-only int8 / fp8 / int4 experts for serving;
                                            quantized_mlp_reference (kernels/quantized.py)

The Triton paths run as the custom operators of kernels/ops.py (torch.ops.moe.*), registered when
first used.
"""

from kernels.expert_mlp import ExpertBiases, expert_mlp, expert_mlp_reference, routed_mlp, sorted_mlp
from kernels.grouped_matmul import BACKENDS, check_offsets, grouped_mm, grouped_mm_reference
from kernels.permute import combine, gather_rows, sort_by_expert
from kernels.quantized import SCHEMES, QuantizedWeight, dequantize, quantize, quantized_mlp, quantized_mlp_reference

__all__ = [
    "BACKENDS",
    "grouped_mm",
    "grouped_mm_reference",
    "check_offsets",
    "sort_by_expert",
    "gather_rows",
    "combine",
    "ExpertBiases",
    "expert_mlp",
    "expert_mlp_reference",
    "routed_mlp",
    "sorted_mlp",
    "SCHEMES",
    "QuantizedWeight",
    "quantize",
    "dequantize",
    "quantized_mlp",
    "quantized_mlp_reference",
]
