"""The launch configuration of every kernel mode, per row class: written by scripts/pin_configs.py
from bench/results/compile-sm90/check_compile.json (sm_90, Triton 3.9.0; the compiled code's
evidence: fits 163 KiB of shared memory, fewest spilled bytes, HGMMA, largest tile). Do not edit by hand.

grouped_mm (memory): 16x256x128 s3 w8, stack 0 B, HGMMA 0, shared 136 KiB
grouped_mm (compute): 128x128x64 s4 w8, stack 0 B, HGMMA 4, shared 128 KiB
grouped_mm dX (w transposed) (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, shared 120 KiB
grouped_mm dX (w transposed) (compute): 128x256x64 s3 w8, stack 0 B, HGMMA 4, shared 144 KiB
up + GELU, gathered, saving pre (memory): 16x256x128 s3 w8, stack 0 B, HGMMA 0, shared 136 KiB
up + GELU, gathered, saving pre (compute): 128x128x64 s4 w8, stack 0 B, HGMMA 4, shared 128 KiB
up + gate + SwiGLU, gathered (memory): 16x256x128 s3 w8, stack 24 B, HGMMA 0, shared 136 KiB
up + gate + SwiGLU, gathered (compute): 64x128x64 s4 w4, stack 32 B, HGMMA 8, shared 96 KiB
up + GELU, gathered (inference) (memory): 16x256x128 s3 w8, stack 0 B, HGMMA 0, shared 136 KiB
up + GELU, gathered (inference) (compute): 128x128x64 s4 w8, stack 0 B, HGMMA 4, shared 128 KiB
up + gate + SwiGLU, gathered (inference) (memory): 16x256x128 s3 w8, stack 24 B, HGMMA 0, shared 136 KiB
up + gate + SwiGLU, gathered (inference) (compute): 128x128x64 s4 w8, stack 8 B, HGMMA 8, shared 128 KiB
down, weighted scatter (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, shared 120 KiB
down, weighted scatter (compute): 128x128x64 s4 w8, stack 0 B, HGMMA 4, shared 128 KiB
GELU backward epilogue (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, shared 120 KiB
GELU backward epilogue (compute): 128x128x64 s4 w8, stack 136 B, HGMMA 4, shared 128 KiB
SwiGLU backward epilogue (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, shared 120 KiB
SwiGLU backward epilogue (compute): 64x256x64 s4 w8, stack 72 B, HGMMA 4, shared 160 KiB
GELU dX, scatter (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, shared 120 KiB
GELU dX, scatter (compute): 128x256x64 s3 w8, stack 0 B, HGMMA 4, shared 144 KiB
SwiGLU dX, two pairs, scatter (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, shared 120 KiB
SwiGLU dX, two pairs, scatter (compute): 128x256x64 s3 w8, stack 0 B, HGMMA 8, shared 144 KiB
up + GELU, int8 W (memory): 16x64x256 s4 w4, stack 24 B, HGMMA 0, shared 72 KiB
up + GELU, int8 W (compute): 128x128x64 s4 w8, stack 0 B, HGMMA 4, shared 104 KiB
up + gate + SwiGLU, fp8 W (memory): 16x256x128 s3 w8, stack 8 B, HGMMA 0, shared 72 KiB
up + gate + SwiGLU, fp8 W (compute): 128x128x64 s4 w8, stack 8 B, HGMMA 8, shared 104 KiB
down, weighted scatter, int8 W (memory): 32x128x128 s4 w4, stack 24 B, HGMMA 0, shared 72 KiB
down, weighted scatter, int8 W (compute): 128x256x64 s3 w8, stack 0 B, HGMMA 4, shared 112 KiB
down, weighted scatter, fp8 W (memory): 16x256x128 s3 w8, stack 0 B, HGMMA 0, shared 72 KiB
down, weighted scatter, fp8 W (compute): 128x256x64 s3 w8, stack 0 B, HGMMA 4, shared 112 KiB
up + gate + SwiGLU, int4 W (memory): 16x128x128 s4 w4, stack 8 B, HGMMA 0, shared 94 KiB
up + gate + SwiGLU, int4 W (compute): 128x128x64 s4 w8, stack 0 B, HGMMA 8, shared 106 KiB
up + GELU, int4 W (memory): 16x256x128 s3 w8, stack 0 B, HGMMA 0, shared 138 KiB
up + GELU, int4 W (compute): 128x128x64 s4 w8, stack 0 B, HGMMA 4, shared 106 KiB
down, weighted scatter, int4 W (memory): 16x256x128 s3 w8, stack 0 B, HGMMA 0, shared 138 KiB
down, weighted scatter, int4 W (compute): 128x128x64 s4 w8, stack 0 B, HGMMA 4, shared 106 KiB
dW plain (compute): 64x256x128 s3 w8, stack 0 B, HGMMA 4, shared 144 KiB
dW gathered A (compute): 64x256x128 s3 w8, stack 0 B, HGMMA 4, shared 96 KiB
dW gathered, scaled B (compute): 64x256x128 s3 w8, stack 0 B, HGMMA 4, shared 96 KiB
"""

ROWS = {
    'GATHER=0 DUAL=0 PAIR2=0 EPI=0 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=0 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 16, 'BLOCK_N': 256, 'BLOCK_K': 128, 'num_stages': 3, 'num_warps': 8, 'GROUP_M': 1}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 128, 'BLOCK_K': 64, 'num_stages': 4, 'num_warps': 8, 'GROUP_M': 8}},
    'GATHER=0 DUAL=0 PAIR2=0 EPI=0 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=0 TRANSPOSED_W=1': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'num_stages': 4, 'num_warps': 4, 'GROUP_M': 1}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 256, 'BLOCK_K': 64, 'num_stages': 3, 'num_warps': 8, 'GROUP_M': 8}},
    'GATHER=1 DUAL=0 PAIR2=0 EPI=1 SAVE_PRE=1 SCALE=0 SCATTER=0 WQ=0 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 16, 'BLOCK_N': 256, 'BLOCK_K': 128, 'num_stages': 3, 'num_warps': 8, 'GROUP_M': 1}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 128, 'BLOCK_K': 64, 'num_stages': 4, 'num_warps': 8, 'GROUP_M': 8}},
    'GATHER=1 DUAL=1 PAIR2=0 EPI=2 SAVE_PRE=1 SCALE=0 SCATTER=0 WQ=0 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 16, 'BLOCK_N': 256, 'BLOCK_K': 128, 'num_stages': 3, 'num_warps': 8, 'GROUP_M': 1}, 'compute': {'BLOCK_M': 64, 'BLOCK_N': 128, 'BLOCK_K': 64, 'num_stages': 4, 'num_warps': 4, 'GROUP_M': 8}},
    'GATHER=1 DUAL=0 PAIR2=0 EPI=1 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=0 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 16, 'BLOCK_N': 256, 'BLOCK_K': 128, 'num_stages': 3, 'num_warps': 8, 'GROUP_M': 1}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 128, 'BLOCK_K': 64, 'num_stages': 4, 'num_warps': 8, 'GROUP_M': 8}},
    'GATHER=1 DUAL=1 PAIR2=0 EPI=2 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=0 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 16, 'BLOCK_N': 256, 'BLOCK_K': 128, 'num_stages': 3, 'num_warps': 8, 'GROUP_M': 1}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 128, 'BLOCK_K': 64, 'num_stages': 4, 'num_warps': 8, 'GROUP_M': 8}},
    'GATHER=0 DUAL=0 PAIR2=0 EPI=0 SAVE_PRE=0 SCALE=1 SCATTER=1 WQ=0 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'num_stages': 4, 'num_warps': 4, 'GROUP_M': 1}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 128, 'BLOCK_K': 64, 'num_stages': 4, 'num_warps': 8, 'GROUP_M': 8}},
    'GATHER=1 DUAL=0 PAIR2=0 EPI=3 SAVE_PRE=1 SCALE=1 SCATTER=0 WQ=0 TRANSPOSED_W=1': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'num_stages': 4, 'num_warps': 4, 'GROUP_M': 1}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 128, 'BLOCK_K': 64, 'num_stages': 4, 'num_warps': 8, 'GROUP_M': 8}},
    'GATHER=1 DUAL=0 PAIR2=0 EPI=4 SAVE_PRE=1 SCALE=1 SCATTER=0 WQ=0 TRANSPOSED_W=1': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'num_stages': 4, 'num_warps': 4, 'GROUP_M': 1}, 'compute': {'BLOCK_M': 64, 'BLOCK_N': 256, 'BLOCK_K': 64, 'num_stages': 4, 'num_warps': 8, 'GROUP_M': 8}},
    'GATHER=0 DUAL=0 PAIR2=0 EPI=0 SAVE_PRE=0 SCALE=0 SCATTER=1 WQ=0 TRANSPOSED_W=1': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'num_stages': 4, 'num_warps': 4, 'GROUP_M': 1}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 256, 'BLOCK_K': 64, 'num_stages': 3, 'num_warps': 8, 'GROUP_M': 8}},
    'GATHER=0 DUAL=0 PAIR2=1 EPI=0 SAVE_PRE=0 SCALE=0 SCATTER=1 WQ=0 TRANSPOSED_W=1': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'num_stages': 4, 'num_warps': 4, 'GROUP_M': 1}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 256, 'BLOCK_K': 64, 'num_stages': 3, 'num_warps': 8, 'GROUP_M': 8}},
    'GATHER=1 DUAL=0 PAIR2=0 EPI=1 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=1 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 16, 'BLOCK_N': 64, 'BLOCK_K': 256, 'num_stages': 4, 'num_warps': 4, 'GROUP_M': 1}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 128, 'BLOCK_K': 64, 'num_stages': 4, 'num_warps': 8, 'GROUP_M': 8}},
    'GATHER=1 DUAL=1 PAIR2=0 EPI=2 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=1 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 16, 'BLOCK_N': 256, 'BLOCK_K': 128, 'num_stages': 3, 'num_warps': 8, 'GROUP_M': 1}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 128, 'BLOCK_K': 64, 'num_stages': 4, 'num_warps': 8, 'GROUP_M': 8}},
    'GATHER=0 DUAL=0 PAIR2=0 EPI=0 SAVE_PRE=0 SCALE=1 SCATTER=1 WQ=1 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 16, 'BLOCK_N': 256, 'BLOCK_K': 128, 'num_stages': 3, 'num_warps': 8, 'GROUP_M': 1}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 256, 'BLOCK_K': 64, 'num_stages': 3, 'num_warps': 8, 'GROUP_M': 8}},
    'GATHER=1 DUAL=1 PAIR2=0 EPI=2 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=2 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 16, 'BLOCK_N': 128, 'BLOCK_K': 128, 'num_stages': 4, 'num_warps': 4, 'GROUP_M': 1}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 128, 'BLOCK_K': 64, 'num_stages': 4, 'num_warps': 8, 'GROUP_M': 8}},
    'GATHER=1 DUAL=0 PAIR2=0 EPI=1 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=2 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 16, 'BLOCK_N': 256, 'BLOCK_K': 128, 'num_stages': 3, 'num_warps': 8, 'GROUP_M': 1}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 128, 'BLOCK_K': 64, 'num_stages': 4, 'num_warps': 8, 'GROUP_M': 8}},
    'GATHER=0 DUAL=0 PAIR2=0 EPI=0 SAVE_PRE=0 SCALE=1 SCATTER=1 WQ=2 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 16, 'BLOCK_N': 256, 'BLOCK_K': 128, 'num_stages': 3, 'num_warps': 8, 'GROUP_M': 1}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 128, 'BLOCK_K': 64, 'num_stages': 4, 'num_warps': 8, 'GROUP_M': 8}},
}

DW = {
    'GATHER_A=0 GATHER_B=0 SCALE_B=0': {'compute': {'BLOCK_M': 64, 'BLOCK_N': 256, 'BLOCK_K': 128, 'num_stages': 3, 'num_warps': 8}},
    'GATHER_A=1 GATHER_B=0 SCALE_B=0': {'compute': {'BLOCK_M': 64, 'BLOCK_N': 256, 'BLOCK_K': 128, 'num_stages': 3, 'num_warps': 8}},
    'GATHER_A=0 GATHER_B=1 SCALE_B=1': {'compute': {'BLOCK_M': 64, 'BLOCK_N': 256, 'BLOCK_K': 128, 'num_stages': 3, 'num_warps': 8}},
}
