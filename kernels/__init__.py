"""Expert matmul and token permutation ops. Imports only torch (and triton, lazily: the Triton kernels
load when first asked for); never `moe`."""

from kernels.expert_mlp import expert_mlp, expert_mlp_reference, sorted_mlp
from kernels.grouped_matmul import BACKENDS, grouped_mm, grouped_mm_reference
from kernels.permute import combine, sort_by_expert

__all__ = ["BACKENDS", "grouped_mm", "grouped_mm_reference", "sort_by_expert", "combine", "expert_mlp",
           "expert_mlp_reference", "sorted_mlp"]
