"""The rows kernel's compile-time modes, named. They are tl.constexpr because Triton lets jit code read
only constexpr globals; the kernel compares its EPI and WQ arguments against these names, and the
launchers pass them. int(mode) is the number the pinned table's keys show ("EPI=5")."""

import triton.language as tl

# EPI: what the epilogue does with the fp32 accumulator
EPI_STORE = tl.constexpr(0)  # store it (times the routing weight with SCALE)
EPI_GELU = tl.constexpr(1)  # GELU forward; acc is the pre-activation
EPI_SWIGLU = tl.constexpr(2)  # SwiGLU forward; acc is up, acc2 is gate
EPI_GELU_BWD = tl.constexpr(3)  # GELU backward, and the routing weight's gradient partials
EPI_SWIGLU_BWD = tl.constexpr(4)  # SwiGLU backward (d_up and d_gate), and the same partials
EPI_PARTIAL = tl.constexpr(5)  # split-K: the raw sums of one K slice, finished by the reduce kernel

# WQ: how W is stored (kernels/quantized.py)
WQ_NONE = tl.constexpr(0)  # in the activations' dtype
WQ_8BIT = tl.constexpr(1)  # int8 or fp8 e4m3, one scale per column
WQ_INT4 = tl.constexpr(2)  # int4, two per byte along K, one scale per column and K group

# The backward epilogue writes one routing-weight partial per DSCALE_COLS columns, into a buffer sized
# for MAX_BLOCK_N columns per tile (launch.dscale_buffer): every BLOCK_N must respect both. (Host code
# reads their .value: a constexpr does not do arithmetic on the right of a plain int.)
DSCALE_COLS = tl.constexpr(32)
MAX_BLOCK_N = tl.constexpr(256)
