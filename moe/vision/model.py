"""The multimodal model: the MoE language model, plus Flamingo's vision path beside it.

Legend: B text rows, T tokens, N images in the batch, M images per row (padded), C channels, H x W
pixels, P patches, L visual tokens per image, D d_model, Dv the vision width.

    images [N, C, H, W] --ViT--> patches [N, P, Dv] --Perceiver Resampler--> visual tokens [N, L, Dv]
    text: the language model (moe/model/transformer.py), with a gated cross-attention block
          (moe/vision/cross_attention.py) on the residual stream before every cross_attn_every-th block
          (counting from 1: with 2, before blocks 1, 3, 5, ... counting from 0; the last block always has one
          when cross_attn_every divides n_layers)

An image's place in the text is a placeholder token (vision.image_token), one per image; the i-th
placeholder of the batch (row by row, left to right) stands for images[i]. The language model is
the submodule `lm`, so a text checkpoint loads into it unchanged, and stage-2 training freezes it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from moe.config import ModelConfig
from moe.model.init import init_weights
from moe.model.positions import Positions
from moe.model.transformer import ModelOutput, MoETransformer
from moe.vision.cross_attention import GatedCrossAttention, Media
from moe.vision.encoder import ViT
from moe.vision.resampler import PerceiverResampler


class VisionLanguageModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vision is None:
            raise ValueError(f"config {cfg.name!r} has no [vision] table: build MoETransformer for a text model")
        self.cfg = cfg
        self.lm = MoETransformer(cfg.text_only())
        self.encoder = ViT(cfg.vision)
        self.resampler = PerceiverResampler(cfg.vision)
        # xattn[j] runs before block (j + 1) * cross_attn_every - 1: the every-th, 2 every-th, ... (from 1)
        self.xattn = nn.ModuleList(GatedCrossAttention(cfg) for _ in range(cfg.n_layers // cfg.vision.cross_attn_every))
        if self.lm.tok_emb.weight.device.type != "meta":
            self.init_weights()

    def init_weights(self, seed: int | None = None) -> None:
        """As MoETransformer.init_weights, over every parameter (gates at 0: the text model's logits)."""
        if seed is None:
            seed = int(torch.randint(2**62, (), device="cpu"))
        init_weights(self, self.cfg, seed)

    def freeze_language_model(self, frozen: bool = True) -> None:
        """Flamingo's stage 2: the language model keeps its weights; the vision path learns."""
        self.lm.requires_grad_(not frozen)

    def encode(self, images_NCHW: torch.Tensor) -> torch.Tensor:
        """Images -> visual tokens [N, L, Dv]."""
        v = self.cfg.vision
        if images_NCHW.dim() != 4 or images_NCHW.shape[1] != v.channels:
            raise ValueError(
                f"images must be [N, {v.channels}, H, W] (vision.channels = {v.channels}), got "
                f"{tuple(images_NCHW.shape)}"
            )
        H, W = images_NCHW.shape[2:]
        if H > v.image_height or W > v.image_width or H % v.patch_size or W % v.patch_size:
            raise ValueError(
                f"images of {H} x {W} pixels: at most {v.image_height} x {v.image_width} and multiples "
                f"of patch_size {v.patch_size} (moe.vision.images.load_image sizes a file to fit)"
            )
        return self.resampler(self.encoder(images_NCHW), self.encoder.columns(H, W))

    def media(self, idx_BT: torch.Tensor, images_NCHW: torch.Tensor | None = None) -> Media:
        """Where each row's images stand, and their visual tokens."""
        media_BT, offset_BT, per_row_B = Media.locate(idx_BT, self.cfg.vision.image_token)
        n = 0 if images_NCHW is None else images_NCHW.shape[0]
        placeholders = int(per_row_B.sum())
        if placeholders != n:
            raise ValueError(
                f"{placeholders} image placeholder(s) (token {self.cfg.vision.image_token}) in the text "
                f"but {n} image(s): give one image per placeholder, in order"
            )
        v = self.cfg.vision
        B, M = idx_BT.shape[0], int(per_row_B.max()) if n else 0
        dtype = self.lm.tok_emb.weight.dtype
        visual_BMLD = torch.zeros(B, M, v.n_latents, v.d_model, device=idx_BT.device, dtype=dtype)
        if n:
            visual_NLD = self.encode(images_NCHW)
            row_N = torch.repeat_interleave(torch.arange(B, device=idx_BT.device), per_row_B)
            first_B = torch.cumsum(per_row_B, 0) - per_row_B  # each row's first image in images
            slot_N = torch.arange(n, device=idx_BT.device) - first_B[row_N]
            visual_BMLD = visual_BMLD.index_put((row_N, slot_N), visual_NLD.to(dtype))
        return Media(visual_BMLD, media_BT, offset_BT)

    def forward(
        self,
        idx_BT: torch.Tensor,
        positions: Positions | None = None,
        targets: torch.Tensor | None = None,
        *,
        images: torch.Tensor | None = None,
        media: Media | None = None,
    ) -> ModelOutput:
        """As MoETransformer.forward (the same leading arguments, so the engine and generate() call both
        alike), with the images [N, C, H, W] the placeholders in idx stand for, or `media` already
        built (self.media, or a serving engine's for cached positions)."""
        if media is None:
            media = self.media(idx_BT, images)
        every = self.cfg.vision.cross_attn_every

        def cross(i: int, x_BTD: torch.Tensor) -> torch.Tensor:
            if (i + 1) % every:
                return x_BTD
            j = i // every
            return self.xattn[j](x_BTD, media, None if media.kv is None else media.kv[j])

        return self.lm(idx_BT, positions, targets, before_block=cross)

    def visual_kv(self, visual_NLD: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One sequence's images' visual tokens [M, L, Dv] -> each gated block's (K, V) [1, G, M*L, d]:
        what a serving engine caches once per sequence (they never grow)."""
        flat = visual_NLD.reshape(1, -1, visual_NLD.shape[-1])
        return [block.attn.kv(flat) for block in self.xattn]

    # The serving engine and generate() drive the language model's caches through these.
    @property
    def tok_emb(self) -> nn.Embedding:
        return self.lm.tok_emb

    def setup_caches(self, *args, **kw) -> None:
        self.lm.setup_caches(*args, **kw)

    def setup_paged_caches(self, *args, **kw) -> None:
        self.lm.setup_paged_caches(*args, **kw)

    def clear_caches(self) -> None:
        self.lm.clear_caches()

    def gates(self) -> list[tuple[float, float]]:
        """Per gated block: (tanh(attn_gate), tanh(mlp_gate))."""
        return [block.gates() for block in self.xattn]
