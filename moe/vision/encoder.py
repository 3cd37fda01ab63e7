"""The image encoder: a ViT. Patches of patch_size x patch_size pixels, each flattened and projected
to the encoder's width, plus a learned position per patch row and per patch column (so an image
smaller than the largest uses the first rows and columns of the tables), then pre-norm blocks of
bidirectional attention and a GELU MLP.

With vision.stem = "strips" the patches are full-height column strips instead: a 3 x 3 convolution
(S = stem_channels, GELU) and then a convolution of H x p with stride p, one token per strip (one
row of positions). A glyph of rendered text then lands in one or two tokens; 4 x 4 patches cut it
across rows, which the reading probe (bench.vision_probe) found much slower to learn to read
(with a reading window, at most 36% of characters after 600 steps in exploratory runs over patches,
against 99.7% over strips).

Legend: N images, C channels, H x W pixels, p patch_size, P = (H/p)(W/p) patches (strips: W/p),
S stem channels, D vision d_model.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
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
        if v.stem == "strips":
            self.conv = nn.Conv2d(v.channels, v.stem_channels, 3, padding=1)
            self.strip = nn.Conv2d(v.stem_channels, v.d_model, (v.image_height, v.patch_size), stride=v.patch_size)
        else:
            self.patch = nn.Linear(v.channels * v.patch_size**2, v.d_model)
        self.pos_row = nn.Parameter(torch.empty(rows, v.d_model))
        self.pos_col = nn.Parameter(torch.empty(cols, v.d_model))
        self.blocks = nn.ModuleList(EncoderBlock(v) for _ in range(v.n_layers))
        self.norm = nn.LayerNorm(v.d_model)

    def forward(self, images_NCHW: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1], [N, C, H, W] (moe/vision/images.py checks and sizes them) -> patch
        features [N, P, D]."""
        p = self.v.patch_size
        if self.v.stem == "strips":
            if images_NCHW.shape[2] != self.v.image_height:
                raise ValueError(
                    f"a strip stem reads images exactly vision.image_height = {self.v.image_height} "
                    f"pixels high, got {images_NCHW.shape[2]} (moe.vision.images.load_image sizes a file)"
                )
            strips_NDW = self.strip(F.gelu(self.conv(images_NCHW)))[:, :, 0]
            x = rearrange(strips_NDW, "n d w -> n 1 w d")
        else:
            x = self.patch(rearrange(images_NCHW, "n c (h p) (w q) -> n h w (c p q)", p=p, q=p))
        rows, cols = x.shape[1:3]
        x = x + self.pos_row[:rows, None] + self.pos_col[None, :cols]
        x_NPD = x.flatten(1, 2)
        for block in self.blocks:
            x_NPD = block(x_NPD)
        return self.norm(x_NPD)

    def columns(self, height: int, width: int) -> torch.Tensor:
        """The patch column of each of forward's P outputs for an image of height x width: [P] float."""
        rows = 1 if self.v.stem == "strips" else height // self.v.patch_size
        return torch.arange(width // self.v.patch_size, dtype=torch.float32).repeat(rows)
