"""MXFP4, the format of gpt-oss's released expert weights, dequantized on import.

OCP Microscaling (MX) FP4: blocks of 32 values share one 8-bit power-of-two scale (E8M0, bias
127); each value is FP4 E2M1, 4 bits: sign, 2 exponent bits, 1 mantissa bit:

    bits s e1 e0 m   value = (-1)^s * (m / 2)            when e = 0 (0, 0.5)
                     value = (-1)^s * (1 + m / 2) 2^(e-1) otherwise (1, 1.5, 2, 3, 4, 6)

gpt-oss stores each projection as <name>_blocks uint8 [E, N, K / 32, 16] (two values a byte, the
low nibble first, along the input K) and <name>_scales uint8 [E, N, K / 32]; the weight is
w[e, k, n] = value(nibble) * 2^(scale - 127), returned as [E, K, N], the layout of the
unquantized gate_up_proj [E, D, 2F] and down_proj [E, F, D].
"""

from __future__ import annotations

import torch

BLOCK = 32  # values per scale


def fp4_values() -> torch.Tensor:
    """float32 [16]: the E2M1 value of each 4-bit code, from its bits."""
    code = torch.arange(16)
    sign = 1 - 2 * (code >> 3)
    e, m = (code >> 1) & 3, (code & 1).float()
    magnitude = torch.where(e == 0, m / 2, (1 + m / 2) * torch.exp2(e.float() - 1))
    return sign * magnitude


def dequantize(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """[E, K, N] in `dtype` from blocks uint8 [E, N, K/32, 16] and scales uint8 [E, N, K/32]."""
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8 or blocks.dim() != 4:
        raise ValueError(
            f"MXFP4 blocks must be uint8 [E, N, K/32, 16] and scales uint8 [E, N, K/32], got "
            f"{blocks.dtype} {tuple(blocks.shape)} and {scales.dtype} {tuple(scales.shape)}"
        )
    if blocks.shape[-1] != BLOCK // 2 or tuple(blocks.shape[:-1]) != tuple(scales.shape):
        raise ValueError(
            f"MXFP4 blocks {tuple(blocks.shape)} and scales {tuple(scales.shape)} disagree: blocks hold "
            f"{BLOCK // 2} bytes per scale"
        )
    E, N, G, _ = blocks.shape
    lut = fp4_values()
    codes = torch.stack([blocks & 0x0F, blocks >> 4], dim=-1).long()  # [E, N, G, 16, 2]: low nibble first
    values = lut[codes].reshape(E, N, G, BLOCK)
    values = torch.ldexp(values, scales.long()[..., None] - 127)  # exact: a power of two
    return values.reshape(E, N, G * BLOCK).transpose(1, 2).to(dtype).contiguous()


def quantize(w_EKN: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(blocks, scales) whose dequantization is the nearest MXFP4 values to w (round to nearest, the
    scale the smallest power of two that fits each block's largest magnitude in 6): for tests and
    for writing checkpoints in gpt-oss's format."""
    E, K, N = w_EKN.shape
    if K % BLOCK:
        raise ValueError(f"MXFP4 needs the input width K a multiple of {BLOCK}, got {K}")
    w = w_EKN.float().transpose(1, 2).reshape(E, N, K // BLOCK, BLOCK)
    amax = w.abs().amax(dim=-1).clamp(min=2.0**-126)
    exponent = torch.ceil(torch.log2(amax / 6.0)).clamp(-127, 127)  # amax / 2^exponent <= 6
    scaled = w / torch.exp2(exponent)[..., None]
    lut = fp4_values()
    codes = (scaled[..., None] - lut).abs().argmin(dim=-1)  # nearest code (ties: the lower one)
    pairs = codes.reshape(E, N, K // BLOCK, BLOCK // 2, 2)
    blocks = (pairs[..., 0] | (pairs[..., 1] << 4)).to(torch.uint8)
    return blocks, (exponent + 127).to(torch.uint8)
