"""The image encoder: a ViT. Patches of patch_size x patch_size pixels, each flattened and projected
to the encoder's width, plus a learned position per patch row and per patch column (so an image
smaller than the largest uses the first rows and columns of the tables), then pre-norm blocks of
bidirectional attention and a GELU MLP.

Legend: N images, C channels, H x W pixels, p patch_size, P = (H/p)(W/p) patches, D vision d_model.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange

from moe.config import VisionConfig
from moe.vision.layers import MLP, Attention


class EncoderBlock(nn.Module):
    def __init__(self, v: VisionConfig):
        super().__init__()
        self.attn_norm = nn.LayerNorm(v.d_model)
        self.attn = Attention(v.d_model, v.d_model, v.n_heads, v.n_heads, v.d_model // v.n_heads)
        self.mlp_norm = nn.LayerNorm(v.d_model)
        self.mlp = MLP(v.d_model, v.d_ff)

    def forward(self, x_NPD):
        h = self.attn_norm(x_NPD)
        x_NPD = x_NPD + self.attn(h, h)
        return x_NPD + self.mlp(self.mlp_norm(x_NPD))


class ViT(nn.Module):
    def __init__(self, v: VisionConfig):
        super().__init__()
        self.v = v
        rows, cols = v.patch_grid
        self.patch = nn.Linear(v.channels * v.patch_size**2, v.d_model)
        self.pos_row = nn.Parameter(torch.empty(rows, v.d_model))
        self.pos_col = nn.Parameter(torch.empty(cols, v.d_model))
        self.blocks = nn.ModuleList(EncoderBlock(v) for _ in range(v.n_layers))
        self.norm = nn.LayerNorm(v.d_model)

    def forward(self, images_NCHW: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1], [N, C, H, W] (moe/vision/images.py checks and sizes them) -> patch
        features [N, P, D]."""
        p = self.v.patch_size
        patches = rearrange(images_NCHW, "n c (h p) (w q) -> n h w (c p q)", p=p, q=p)
        rows, cols = patches.shape[1:3]
        x = self.patch(patches) + self.pos_row[:rows, None] + self.pos_col[None, :cols]
        x_NPD = x.flatten(1, 2)
        for block in self.blocks:
            x_NPD = block(x_NPD)
        return self.norm(x_NPD)
