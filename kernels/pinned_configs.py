"""The launch configuration of every kernel mode, per architecture and row class: written by
kernels/tuning/pin_configs.py from the compile reports (the compiled code's evidence: fits shared
memory, no findings, HGMMA, largest tile). Do not edit by hand.

sm_90 (bench/results/compile-sm90/check_compile.json, Triton 3.9.0):
  grouped_mm (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 8, shared 128 KiB
  grouped_mm (compute): 128x256x64 s3 w8, stack 0 B, HGMMA 4, TMA 6, shared 176 KiB
  grouped_mm dX (w transposed) (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 8, shared 128 KiB
  grouped_mm dX (w transposed) (compute): 128x256x64 s3 w8, stack 0 B, HGMMA 4, TMA 6, shared 176 KiB
  up + GELU, gathered, saving pre (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 4, shared 128 KiB
  up + GELU, gathered, saving pre (compute): 128x256x64 s3 w8, stack 0 B, HGMMA 4, TMA 3, shared 176 KiB
  up + gate + SwiGLU, gathered (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 8, shared 224 KiB
  up + gate + SwiGLU, gathered (compute): 128x128x64 s4 w8, stack 0 B, HGMMA 8, TMA 8, shared 208 KiB
  up + GELU, gathered (inference) (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 4, shared 128 KiB
  up + GELU, gathered (inference) (compute): 128x256x64 s3 w8, stack 0 B, HGMMA 4, TMA 3, shared 176 KiB
  up + gate + SwiGLU, gathered (inference) (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 8, shared 224 KiB
  up + gate + SwiGLU, gathered (inference) (compute): 128x128x64 s4 w8, stack 0 B, HGMMA 8, TMA 8, shared 208 KiB
  down, weighted scatter (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 8, shared 120 KiB
  down, weighted scatter (compute): 128x256x64 s3 w8, stack 0 B, HGMMA 4, TMA 6, shared 144 KiB
  GELU backward epilogue (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 4, shared 128 KiB
  GELU backward epilogue (compute): 128x128x64 s4 w8, stack 0 B, HGMMA 4, TMA 4, shared 144 KiB
  SwiGLU backward epilogue (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 4, shared 128 KiB
  SwiGLU backward epilogue (compute): 128x128x64 s4 w8, stack 0 B, HGMMA 4, TMA 4, shared 144 KiB
  GELU dX, scatter (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 8, shared 120 KiB
  GELU dX, scatter (compute): 128x256x64 s3 w8, stack 0 B, HGMMA 4, TMA 6, shared 144 KiB
  SwiGLU dX, two pairs, scatter (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 16, shared 120 KiB
  SwiGLU dX, two pairs, scatter (compute): 128x256x64 s3 w8, stack 0 B, HGMMA 8, TMA 12, shared 144 KiB
  up + GELU, int8 W (memory): 16x256x128 s3 w8, stack 0 B, HGMMA 0, TMA 3, shared 80 KiB
  up + GELU, int8 W (compute): 128x256x64 s3 w8, stack 0 B, HGMMA 4, TMA 3, shared 144 KiB
  up + gate + SwiGLU, fp8 W / up + gate + SwiGLU, int8 W (memory): 16x256x128 s3 w8, stack 0 B, HGMMA 0, TMA 6, shared 144 KiB
  up + gate + SwiGLU, fp8 W / up + gate + SwiGLU, int8 W (compute): 64x256x64 s4 w8, stack 0 B, HGMMA 8, TMA 8, shared 208 KiB
  down, weighted scatter, int8 W / down, weighted scatter, fp8 W (memory): 16x256x128 s3 w8, stack 0 B, HGMMA 0, TMA 6, shared 72 KiB
  down, weighted scatter, int8 W / down, weighted scatter, fp8 W (compute): 128x256x64 s3 w8, stack 0 B, HGMMA 4, TMA 6, shared 112 KiB
  up + gate + SwiGLU, int4 W (memory): 16x128x128 s4 w8, stack 0 B, HGMMA 0, TMA 0, shared 175 KiB
  up + gate + SwiGLU, int4 W (compute): 128x128x64 s4 w8, stack 0 B, HGMMA 8, TMA 0, shared 147 KiB
  up + GELU, int4 W (memory): 16x256x128 s3 w8, stack 0 B, HGMMA 0, TMA 0, shared 138 KiB
  up + GELU, int4 W (compute): 128x128x64 s4 w8, stack 0 B, HGMMA 4, TMA 0, shared 106 KiB
  down, weighted scatter, int4 W (memory): 16x256x128 s3 w8, stack 0 B, HGMMA 0, TMA 0, shared 138 KiB
  down, weighted scatter, int4 W (compute): 128x256x64 s3 w8, stack 0 B, HGMMA 4, TMA 0, shared 114 KiB
  split-K partials: up, gathered (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 4, shared 136 KiB
  split-K partials: up + gate, gathered (memory): 16x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 8, shared 212 KiB
  split-K partials: down (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 8, shared 136 KiB
  split-K partials: dX (w transposed) (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 8, shared 136 KiB
  split-K partials: up, int8 W (memory): 16x256x128 s3 w8, stack 0 B, HGMMA 0, TMA 3, shared 88 KiB
  split-K partials: up + gate, fp8 W / split-K partials: up + gate, int8 W (memory): 16x256x128 s3 w8, stack 0 B, HGMMA 0, TMA 6, shared 152 KiB
  split-K partials: down, int8 W (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 8, shared 88 KiB
  split-K partials: up, int4 W (memory): 16x256x128 s3 w8, stack 0 B, HGMMA 0, TMA 0, shared 138 KiB
  split-K partials: up + gate, int4 W (memory): 16x128x128 s4 w8, stack 0 B, HGMMA 0, TMA 0, shared 175 KiB
  split-K partials: down, int4 W (memory): 16x256x128 s3 w8, stack 0 B, HGMMA 0, TMA 0, shared 138 KiB
  dW plain (compute): 64x256x128 s3 w8, stack 0 B, HGMMA 4, TMA 0, shared 144 KiB
  dW gathered A (compute): 64x256x128 s3 w8, stack 0 B, HGMMA 4, TMA 0, shared 96 KiB
  dW scaled A, gathered B (compute): 64x256x128 s3 w8, stack 0 B, HGMMA 4, TMA 0, shared 80 KiB
sm_80 (bench/results/compile-sm80/check_compile.json, Triton 3.9.0):
  grouped_mm (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 0, shared 120 KiB
  grouped_mm (compute): 128x256x64 s3 w8, stack 0 B, HGMMA 0, TMA 0, shared 96 KiB
  grouped_mm dX (w transposed) (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 0, shared 120 KiB
  grouped_mm dX (w transposed) (compute): 128x256x64 s3 w8, stack 0 B, HGMMA 0, TMA 0, shared 96 KiB
  up + GELU, gathered, saving pre (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 0, shared 120 KiB
  up + GELU, gathered, saving pre (compute): 128x128x64 s4 w8, stack 0 B, HGMMA 0, TMA 0, shared 96 KiB
  up + gate + SwiGLU, gathered (memory): 32x64x128 s4 w4, stack 0 B, HGMMA 0, TMA 0, shared 120 KiB
  up + gate + SwiGLU, gathered (compute): 64x128x64 s4 w4, stack 0 B, HGMMA 0, TMA 0, shared 120 KiB
  up + GELU, gathered (inference) (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 0, shared 120 KiB
  up + GELU, gathered (inference) (compute): 128x256x64 s3 w8, stack 0 B, HGMMA 0, TMA 0, shared 96 KiB
  up + gate + SwiGLU, gathered (inference) (memory): 32x64x128 s4 w4, stack 0 B, HGMMA 0, TMA 0, shared 120 KiB
  up + gate + SwiGLU, gathered (inference) (compute): 64x128x64 s4 w4, stack 0 B, HGMMA 0, TMA 0, shared 120 KiB
  down, weighted scatter (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 0, shared 120 KiB
  down, weighted scatter (compute): 128x128x64 s4 w8, stack 0 B, HGMMA 0, TMA 0, shared 96 KiB
  GELU backward epilogue (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 0, shared 120 KiB
  GELU backward epilogue (compute): 128x128x64 s4 w8, stack 0 B, HGMMA 0, TMA 0, shared 96 KiB
  SwiGLU backward epilogue (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 0, shared 120 KiB
  SwiGLU backward epilogue (compute): 64x256x64 s4 w8, stack 0 B, HGMMA 0, TMA 0, shared 120 KiB
  GELU dX, scatter (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 0, shared 120 KiB
  GELU dX, scatter (compute): 128x256x64 s3 w8, stack 0 B, HGMMA 0, TMA 0, shared 96 KiB
  SwiGLU dX, two pairs, scatter (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 0, shared 120 KiB
  SwiGLU dX, two pairs, scatter (compute): 128x128x64 s4 w8, stack 0 B, HGMMA 0, TMA 0, shared 96 KiB
  up + GELU, int8 W (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 0, shared 72 KiB
  up + GELU, int8 W (compute): 128x128x64 s4 w8, stack 0 B, HGMMA 0, TMA 0, shared 72 KiB
  up + gate + SwiGLU, int8 W (memory): 16x256x128 s3 w8, stack 0 B, HGMMA 0, TMA 0, shared 136 KiB
  up + gate + SwiGLU, int8 W (compute): 64x128x64 s4 w8, stack 0 B, HGMMA 0, TMA 0, shared 72 KiB
  down, weighted scatter, int8 W (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 0, shared 72 KiB
  down, weighted scatter, int8 W (compute): 128x128x64 s4 w8, stack 0 B, HGMMA 0, TMA 0, shared 72 KiB
  up + gate + SwiGLU, int4 W (memory): 32x64x128 s4 w4, stack 0 B, HGMMA 0, TMA 0, shared 106 KiB
  up + gate + SwiGLU, int4 W (compute): 64x128x64 s4 w8, stack 0 B, HGMMA 0, TMA 0, shared 107 KiB
  up + GELU, int4 W (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 0, shared 106 KiB
  up + GELU, int4 W (compute): 128x128x64 s4 w8, stack 0 B, HGMMA 0, TMA 0, shared 90 KiB
  down, weighted scatter, int4 W (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 0, shared 106 KiB
  down, weighted scatter, int4 W (compute): 128x128x64 s4 w8, stack 0 B, HGMMA 0, TMA 0, shared 90 KiB
  split-K partials: up, gathered (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 0, shared 120 KiB
  split-K partials: up + gate, gathered (memory): 32x64x128 s4 w4, stack 0 B, HGMMA 0, TMA 0, shared 120 KiB
  split-K partials: down (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 0, shared 120 KiB
  split-K partials: dX (w transposed) (memory): 16x256x128 s3 w8, stack 0 B, HGMMA 0, TMA 0, shared 136 KiB
  split-K partials: up, int8 W (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 0, shared 72 KiB
  split-K partials: up + gate, int8 W (memory): 16x256x128 s3 w8, stack 0 B, HGMMA 0, TMA 0, shared 136 KiB
  split-K partials: down, int8 W (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 0, shared 72 KiB
  split-K partials: up, int4 W (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 0, shared 106 KiB
  split-K partials: up + gate, int4 W (memory): 32x64x128 s4 w4, stack 0 B, HGMMA 0, TMA 0, shared 106 KiB
  split-K partials: down, int4 W (memory): 32x128x128 s4 w4, stack 0 B, HGMMA 0, TMA 0, shared 106 KiB
  dW plain (compute): 64x256x128 s3 w8, stack 0 B, HGMMA 0, TMA 0, shared 80 KiB
  dW gathered A (compute): 64x256x128 s3 w8, stack 0 B, HGMMA 0, TMA 0, shared 48 KiB
  dW scaled A, gathered B (compute): 64x256x128 s3 w8, stack 0 B, HGMMA 0, TMA 0, shared 48 KiB
"""

ROWS = {
    90: {
        'GATHER=0 DUAL=0 PAIR2=0 EPI=0 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=0 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 256, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 3, 'num_warps': 8}},
        'GATHER=0 DUAL=0 PAIR2=0 EPI=0 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=0 TRANSPOSED_W=1': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 256, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 3, 'num_warps': 8}},
        'GATHER=1 DUAL=0 PAIR2=0 EPI=1 SAVE_PRE=1 SCALE=0 SCATTER=0 WQ=0 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 256, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 3, 'num_warps': 8}},
        'GATHER=1 DUAL=1 PAIR2=0 EPI=2 SAVE_PRE=1 SCALE=0 SCATTER=0 WQ=0 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 128, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 4, 'num_warps': 8}},
        'GATHER=1 DUAL=0 PAIR2=0 EPI=1 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=0 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 256, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 3, 'num_warps': 8}},
        'GATHER=1 DUAL=1 PAIR2=0 EPI=2 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=0 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 128, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 4, 'num_warps': 8}},
        'GATHER=0 DUAL=0 PAIR2=0 EPI=0 SAVE_PRE=0 SCALE=1 SCATTER=1 WQ=0 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 256, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 3, 'num_warps': 8}},
        'GATHER=1 DUAL=0 PAIR2=0 EPI=3 SAVE_PRE=1 SCALE=1 SCATTER=0 WQ=0 TRANSPOSED_W=1': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 128, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 4, 'num_warps': 8}},
        'GATHER=1 DUAL=0 PAIR2=0 EPI=4 SAVE_PRE=1 SCALE=1 SCATTER=0 WQ=0 TRANSPOSED_W=1': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 128, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 4, 'num_warps': 8}},
        'GATHER=0 DUAL=0 PAIR2=0 EPI=0 SAVE_PRE=0 SCALE=0 SCATTER=1 WQ=0 TRANSPOSED_W=1': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 256, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 3, 'num_warps': 8}},
        'GATHER=0 DUAL=0 PAIR2=1 EPI=0 SAVE_PRE=0 SCALE=0 SCATTER=1 WQ=0 TRANSPOSED_W=1': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 256, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 3, 'num_warps': 8}},
        'GATHER=1 DUAL=0 PAIR2=0 EPI=1 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=1 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 16, 'BLOCK_N': 256, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 3, 'num_warps': 8}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 256, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 3, 'num_warps': 8}},
        'GATHER=1 DUAL=1 PAIR2=0 EPI=2 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=1 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 16, 'BLOCK_N': 256, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 3, 'num_warps': 8}, 'compute': {'BLOCK_M': 64, 'BLOCK_N': 256, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 4, 'num_warps': 8}},
        'GATHER=0 DUAL=0 PAIR2=0 EPI=0 SAVE_PRE=0 SCALE=1 SCATTER=1 WQ=1 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 16, 'BLOCK_N': 256, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 3, 'num_warps': 8}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 256, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 3, 'num_warps': 8}},
        'GATHER=1 DUAL=1 PAIR2=0 EPI=2 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=2 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 16, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 8}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 128, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 4, 'num_warps': 8}},
        'GATHER=1 DUAL=0 PAIR2=0 EPI=1 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=2 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 16, 'BLOCK_N': 256, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 3, 'num_warps': 8}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 128, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 4, 'num_warps': 8}},
        'GATHER=0 DUAL=0 PAIR2=0 EPI=0 SAVE_PRE=0 SCALE=1 SCATTER=1 WQ=2 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 16, 'BLOCK_N': 256, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 3, 'num_warps': 8}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 256, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 3, 'num_warps': 8}},
        'GATHER=1 DUAL=0 PAIR2=0 EPI=5 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=0 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}},
        'GATHER=1 DUAL=1 PAIR2=0 EPI=5 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=0 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 16, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}},
        'GATHER=0 DUAL=0 PAIR2=0 EPI=5 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=0 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}},
        'GATHER=0 DUAL=0 PAIR2=0 EPI=5 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=0 TRANSPOSED_W=1': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}},
        'GATHER=1 DUAL=0 PAIR2=0 EPI=5 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=1 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 16, 'BLOCK_N': 256, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 3, 'num_warps': 8}},
        'GATHER=1 DUAL=1 PAIR2=0 EPI=5 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=1 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 16, 'BLOCK_N': 256, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 3, 'num_warps': 8}},
        'GATHER=0 DUAL=0 PAIR2=0 EPI=5 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=1 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}},
        'GATHER=1 DUAL=0 PAIR2=0 EPI=5 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=2 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 16, 'BLOCK_N': 256, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 3, 'num_warps': 8}},
        'GATHER=1 DUAL=1 PAIR2=0 EPI=5 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=2 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 16, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 8}},
        'GATHER=0 DUAL=0 PAIR2=0 EPI=5 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=2 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 16, 'BLOCK_N': 256, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 3, 'num_warps': 8}},
    },
    80: {
        'GATHER=0 DUAL=0 PAIR2=0 EPI=0 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=0 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 256, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 3, 'num_warps': 8}},
        'GATHER=0 DUAL=0 PAIR2=0 EPI=0 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=0 TRANSPOSED_W=1': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 256, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 3, 'num_warps': 8}},
        'GATHER=1 DUAL=0 PAIR2=0 EPI=1 SAVE_PRE=1 SCALE=0 SCATTER=0 WQ=0 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 128, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 4, 'num_warps': 8}},
        'GATHER=1 DUAL=1 PAIR2=0 EPI=2 SAVE_PRE=1 SCALE=0 SCATTER=0 WQ=0 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 64, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}, 'compute': {'BLOCK_M': 64, 'BLOCK_N': 128, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 4, 'num_warps': 4}},
        'GATHER=1 DUAL=0 PAIR2=0 EPI=1 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=0 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 256, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 3, 'num_warps': 8}},
        'GATHER=1 DUAL=1 PAIR2=0 EPI=2 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=0 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 64, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}, 'compute': {'BLOCK_M': 64, 'BLOCK_N': 128, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 4, 'num_warps': 4}},
        'GATHER=0 DUAL=0 PAIR2=0 EPI=0 SAVE_PRE=0 SCALE=1 SCATTER=1 WQ=0 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 128, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 4, 'num_warps': 8}},
        'GATHER=1 DUAL=0 PAIR2=0 EPI=3 SAVE_PRE=1 SCALE=1 SCATTER=0 WQ=0 TRANSPOSED_W=1': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 128, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 4, 'num_warps': 8}},
        'GATHER=1 DUAL=0 PAIR2=0 EPI=4 SAVE_PRE=1 SCALE=1 SCATTER=0 WQ=0 TRANSPOSED_W=1': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}, 'compute': {'BLOCK_M': 64, 'BLOCK_N': 256, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 4, 'num_warps': 8}},
        'GATHER=0 DUAL=0 PAIR2=0 EPI=0 SAVE_PRE=0 SCALE=0 SCATTER=1 WQ=0 TRANSPOSED_W=1': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 256, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 3, 'num_warps': 8}},
        'GATHER=0 DUAL=0 PAIR2=1 EPI=0 SAVE_PRE=0 SCALE=0 SCATTER=1 WQ=0 TRANSPOSED_W=1': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 128, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 4, 'num_warps': 8}},
        'GATHER=1 DUAL=0 PAIR2=0 EPI=1 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=1 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 128, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 4, 'num_warps': 8}},
        'GATHER=1 DUAL=1 PAIR2=0 EPI=2 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=1 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 16, 'BLOCK_N': 256, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 3, 'num_warps': 8}, 'compute': {'BLOCK_M': 64, 'BLOCK_N': 128, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 4, 'num_warps': 8}},
        'GATHER=0 DUAL=0 PAIR2=0 EPI=0 SAVE_PRE=0 SCALE=1 SCATTER=1 WQ=1 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 128, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 4, 'num_warps': 8}},
        'GATHER=1 DUAL=1 PAIR2=0 EPI=2 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=2 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 64, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}, 'compute': {'BLOCK_M': 64, 'BLOCK_N': 128, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 4, 'num_warps': 8}},
        'GATHER=1 DUAL=0 PAIR2=0 EPI=1 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=2 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 128, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 4, 'num_warps': 8}},
        'GATHER=0 DUAL=0 PAIR2=0 EPI=0 SAVE_PRE=0 SCALE=1 SCATTER=1 WQ=2 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}, 'compute': {'BLOCK_M': 128, 'BLOCK_N': 128, 'BLOCK_K': 64, 'GROUP_M': 8, 'EPI_SPLIT': 2, 'num_stages': 4, 'num_warps': 8}},
        'GATHER=1 DUAL=0 PAIR2=0 EPI=5 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=0 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}},
        'GATHER=1 DUAL=1 PAIR2=0 EPI=5 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=0 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 64, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}},
        'GATHER=0 DUAL=0 PAIR2=0 EPI=5 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=0 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}},
        'GATHER=0 DUAL=0 PAIR2=0 EPI=5 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=0 TRANSPOSED_W=1': {'memory': {'BLOCK_M': 16, 'BLOCK_N': 256, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 3, 'num_warps': 8}},
        'GATHER=1 DUAL=0 PAIR2=0 EPI=5 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=1 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}},
        'GATHER=1 DUAL=1 PAIR2=0 EPI=5 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=1 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 16, 'BLOCK_N': 256, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 3, 'num_warps': 8}},
        'GATHER=0 DUAL=0 PAIR2=0 EPI=5 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=1 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}},
        'GATHER=1 DUAL=0 PAIR2=0 EPI=5 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=2 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}},
        'GATHER=1 DUAL=1 PAIR2=0 EPI=5 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=2 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 64, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}},
        'GATHER=0 DUAL=0 PAIR2=0 EPI=5 SAVE_PRE=0 SCALE=0 SCATTER=0 WQ=2 TRANSPOSED_W=0': {'memory': {'BLOCK_M': 32, 'BLOCK_N': 128, 'BLOCK_K': 128, 'GROUP_M': 1, 'EPI_SPLIT': 1, 'num_stages': 4, 'num_warps': 4}},
    },
}

DW = {
    90: {
        'GATHER_A=0 GATHER_B=0 SCALE_A=0': {'compute': {'BLOCK_M': 64, 'BLOCK_K': 128, 'BLOCK_N': 256, 'num_stages': 3, 'num_warps': 8}},
        'GATHER_A=1 GATHER_B=0 SCALE_A=0': {'compute': {'BLOCK_M': 64, 'BLOCK_K': 128, 'BLOCK_N': 256, 'num_stages': 3, 'num_warps': 8}},
        'GATHER_A=0 GATHER_B=1 SCALE_A=1': {'compute': {'BLOCK_M': 64, 'BLOCK_K': 128, 'BLOCK_N': 256, 'num_stages': 3, 'num_warps': 8}},
    },
    80: {
        'GATHER_A=0 GATHER_B=0 SCALE_A=0': {'compute': {'BLOCK_M': 64, 'BLOCK_K': 128, 'BLOCK_N': 256, 'num_stages': 3, 'num_warps': 8}},
        'GATHER_A=1 GATHER_B=0 SCALE_A=0': {'compute': {'BLOCK_M': 64, 'BLOCK_K': 128, 'BLOCK_N': 256, 'num_stages': 3, 'num_warps': 8}},
        'GATHER_A=0 GATHER_B=1 SCALE_A=1': {'compute': {'BLOCK_M': 64, 'BLOCK_K': 128, 'BLOCK_N': 256, 'num_stages': 3, 'num_warps': 8}},
    },
}
