"""Expert matmul and token permutation ops. Imports only torch (and, later, triton); never `moe`."""

from kernels.grouped_matmul import BACKENDS, grouped_mm, grouped_mm_reference
from kernels.permute import combine, sort_by_expert

__all__ = ["BACKENDS", "grouped_mm", "grouped_mm_reference", "sort_by_expert", "combine"]
