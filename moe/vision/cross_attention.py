"""Gated cross-attention (Flamingo's GATED XATTN-DENSE): text tokens attend to the visual tokens of
their image, and the result enters the residual stream through tanh gates that start at 0.

Legend: B text rows, T tokens, M images per row (padded), L visual tokens per image, D the language
model's d_model, Dv the visual tokens' width.

    x = x + tanh(attn_gate) * CrossAttention(q = RMSNorm(x), kv = visual tokens, media mask)
    x = x + tanh(mlp_gate)  * MLP(RMSNorm(x))

With both gates at 0 the block adds exactly 0.0 to every element, so a model whose blocks are all
fresh computes the language model's logits bit for bit (tests/vision/test_vision.py checks it in float64).

With vision.reading_window, the attention adds a reading-order window (moe/vision/reading.py): the
token d tokens after its image's placeholder looks at that image's visual tokens near a d + b (the
resampler keeps them in reading order). It starts at vision.reading_slope, reading_start and
reading_width: by default a = 1, b = 0, w = 8 visual tokens, which say nothing about the renderer's pitch.

Media masking: a token sees only the visual tokens of the latest image at or before it in its row
(media_BT, its row-local image index; -1 before the first image, where the attention adds nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from moe.config import ModelConfig
from moe.vision.layers import MLP, Attention
from moe.vision.reading import ReadingWindow


@dataclass
class Media:
    """What the gated blocks read: each row's images as visual tokens, which image each token sees, and
    how far the token stands from that image's placeholder."""

    visual_BMLD: torch.Tensor  # [B, M, L, Dv], a row with fewer than M images is padded (never seen)
    media_BT: torch.Tensor  # int64 [B, T]: the row-local index of the latest image at or before the token, or -1
    offset_BT: torch.Tensor  # int64 [B, T]: tokens since that image's placeholder (0 at it), -1 before any
    kv: list | None = None  # per gated block, the visual tokens' (K, V) [B, G, M*L, d] computed once (serving)

    @staticmethod
    def locate(idx_BT: torch.Tensor, image_token: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(media_BT, offset_BT, images per row [B]) from where the image placeholders stand."""
        is_image = idx_BT == image_token
        count_BT = is_image.long().cumsum(dim=1)
        pos_BT = torch.arange(idx_BT.shape[1], device=idx_BT.device).expand_as(idx_BT)
        last_BT = torch.where(is_image, pos_BT, -1).cummax(dim=1).values if idx_BT.shape[1] else pos_BT
        offset_BT = torch.where(last_BT >= 0, pos_BT - last_BT, -1)
        return count_BT - 1, offset_BT, count_BT[:, -1] if idx_BT.shape[1] else torch.zeros_like(idx_BT[:, 0])

    @staticmethod
    def at_positions(prompt_media, positions: list[int]) -> tuple[list[int], list[int]]:
        """(media, offset) of a sequence's tokens at `positions`, given its prompt's (media_P, offset_P)
        lists: generated tokens stay with the prompt's last image (a generated placeholder opens none)."""
        media_P, offset_P = prompt_media
        n = len(media_P)
        media = [media_P[p] if p < n else media_P[-1] for p in positions]
        offset = [offset_P[p] if p < n else (offset_P[-1] + p - n + 1 if media_P[-1] >= 0 else -1) for p in positions]
        return media, offset

    def mask(self) -> torch.Tensor:
        """[B, T, M*L] bool: True where a token may see a visual token. A token before any image sees
        every key (so softmax stays finite); its output is zeroed by the caller."""
        B, M, L, _ = self.visual_BMLD.shape
        image_of_key = torch.arange(M, device=self.media_BT.device).repeat_interleave(L)
        return (self.media_BT[..., None] == image_of_key) | (self.media_BT[..., None] < 0)


class GatedCrossAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        v = cfg.vision
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg.d_model, v.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim)  # MQA like the LM
        self.attn_gate = nn.Parameter(torch.zeros(()))
        # A learned query per distance from the image (vision.query_offsets > 0): where in the image a
        # token reads depends on how far it stands from the image, which a frozen language model with
        # rotary positions does not hold in its residual stream (see the README's vision section).
        self.offset_emb = nn.Embedding(v.query_offsets, cfg.d_model) if v.query_offsets else None
        self.window = (
            ReadingWindow(cfg.n_heads, v.reading_slope, v.reading_start, v.reading_width) if v.reading_window else None
        )
        self.mlp_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = MLP(cfg.d_model, v.xattn_d_ff or 4 * cfg.d_model)
        self.mlp_gate = nn.Parameter(torch.zeros(()))

    def forward(self, x_BTD: torch.Tensor, media: Media, kv=None) -> torch.Tensor:
        """kv: this block's (K, V) of media's visual tokens, when already computed."""
        B, M, L, Dv = media.visual_BMLD.shape
        if M:  # no image in the batch: the attention adds nothing
            seen_BT1 = (media.media_BT >= 0)[..., None].to(x_BTD.dtype)
            q_BTD = self.attn_norm(x_BTD)
            if self.offset_emb is not None:
                q_BTD = q_BTD + self.offset_emb(media.offset_BT.clamp(0, self.offset_emb.num_embeddings - 1))
            bias = None
            if self.window is not None:  # each key's place within its image: 0 .. L-1, image after image
                bias = self.window(media.offset_BT, torch.arange(L, device=x_BTD.device).repeat(M))
            y_BTD = self.attn(q_BTD, media.visual_BMLD.reshape(B, M * L, Dv), media.mask(), kv=kv, bias_NHQK=bias)
            x_BTD = x_BTD + torch.tanh(self.attn_gate) * (y_BTD * seen_BT1)
        return x_BTD + torch.tanh(self.mlp_gate) * self.mlp(self.mlp_norm(x_BTD))

    def gates(self) -> tuple[float, float]:
        """(tanh(attn_gate), tanh(mlp_gate)): how much of each branch the residual stream takes."""
        return float(torch.tanh(self.attn_gate.detach())), float(torch.tanh(self.mlp_gate.detach()))
