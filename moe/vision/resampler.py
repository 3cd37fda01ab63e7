"""The Perceiver Resampler (Flamingo, Alayrac et al. 2022, section 2.1): n_latents learned queries
attend to the patch features and to themselves, layer after layer, so every image becomes n_latents
visual tokens whatever its size.

Legend: N images, P patches, L latents, D vision d_model.

    z = latents                                   [L, D], the same start for every image
    per layer:  z = z + Attention(q = LN(z), kv = [LN(x); LN(z)]);  z = z + MLP(LN(z))
    out = LN(z)                                   [N, L, D]
"""

from __future__ import annotations

import torch
import torch.nn as nn

from moe.config import VisionConfig
from moe.vision.layers import MLP, Attention


class ResamplerLayer(nn.Module):
    def __init__(self, v: VisionConfig):
        super().__init__()
        self.media_norm = nn.LayerNorm(v.d_model)
        self.latent_norm = nn.LayerNorm(v.d_model)
        self.attn = Attention(v.d_model, v.d_model, v.n_heads, v.n_heads, v.d_model // v.n_heads)
        self.mlp_norm = nn.LayerNorm(v.d_model)
        self.mlp = MLP(v.d_model, v.d_ff)

    def forward(self, z_NLD, x_NPD):
        z = self.latent_norm(z_NLD)
        z_NLD = z_NLD + self.attn(z, torch.cat([self.media_norm(x_NPD), z], dim=1))
        return z_NLD + self.mlp(self.mlp_norm(z_NLD))


class PerceiverResampler(nn.Module):
    def __init__(self, v: VisionConfig):
        super().__init__()
        self.latents = nn.Parameter(torch.empty(v.n_latents, v.d_model))
        self.layers = nn.ModuleList(ResamplerLayer(v) for _ in range(v.resampler_layers))
        self.norm = nn.LayerNorm(v.d_model)

    def forward(self, x_NPD: torch.Tensor) -> torch.Tensor:
        z_NLD = self.latents.expand(x_NPD.shape[0], -1, -1)
        for layer in self.layers:
            z_NLD = layer(z_NLD, x_NPD)
        return self.norm(z_NLD)
