"""What the vision path (moe/vision/) costs, beside the language model: parameters, FLOPs per image and
per text token, the visual tokens' K/V, and the leak's I/O remark. Imports no torch.

Legend: C channels, H x W pixels, p patch, P = (H/p)(W/p) patches, Dv vision width, Fv its MLP width,
L visual tokens (latents) per image, X gated blocks, d d_model, q = n_heads * head_dim, kv =
n_kv_heads * head_dim, Fx the gated blocks' MLP width. LayerNorms have a weight and a bias; the
patch projection has a bias; nothing else does. FLOPs count 2 per multiply-add (moe/estimates/arithmetic.py).

    encoder    C p^2 Dv + Dv (patch) + (H/p + W/p) Dv (row, column positions)
               + layers (4 Dv^2 + 2 Dv Fv + 4 Dv) + 2 Dv
    resampler  L Dv + layers (4 Dv^2 + 2 Dv Fv + 6 Dv) + 2 Dv
    gated      X (d q + 2 Dv kv + q d + 2 d Fx + 2 d + 2)          (2 tanh gates, 2 RMSNorms)

    per image   encoder  2 P (C p^2 Dv) + layers (2 P (4 Dv^2 + 2 Dv Fv) + 4 P^2 Dv)
                resampler  layers (2 L (2 Dv^2 + 2 Dv Fv) + 2 K (2 Dv^2) + 4 L K Dv),  K = P + L keys
                visual K/V  X 2 L (2 Dv kv)              (once per image, then cached)
    per text token  X (2 (d q + q d + 2 d Fx) + 4 q L)   (attending to one image's L tokens)

The reading path (vision.stem = "strips", S stem channels, P = W/p strips; vision.reading_window):
    encoder    the patch projection becomes C 9 S + S (3 x 3 convolution) + S H p Dv + Dv (strips), and
               one row of positions (1 + W/p) Dv;  FLOPs 2 H W (9 C S) + 2 P (S H p Dv)
    resampler  the latents attend to the patches only: K = P
    gated      + X 3 n_heads (each block's learned window: slope, start, width per head); the windows'
               score biases are element-wise, uncounted like the norms
"""

from __future__ import annotations

from dataclasses import dataclass

from moe.config import ModelConfig
from moe.estimates.arithmetic import count_params, forward_flops_per_token, kv_cache_bytes_per_token
from moe.estimates.units import binary_bytes, si

TEXT_BYTES_PER_TOKEN = 4  # cl100k_base averages about 4 bytes of English per token (the leak: "~4 bytes")
LEAK_VISUAL_BYTES_PER_TOKEN = 600  # the leak: "each token is ~600 bytes" for vision, against ~4 for text


@dataclass(frozen=True)
class VisionParams:
    encoder: int
    resampler: int
    gated: int  # all gated cross-attention blocks

    @property
    def total(self) -> int:
        return self.encoder + self.resampler + self.gated


def _shape(cfg: ModelConfig):
    v = cfg.vision
    if v is None:
        raise ValueError(f"config {cfg.name!r} has no [vision] table")
    rows, cols = v.patch_grid
    return (
        v,
        rows,
        cols,
        rows * cols,
        len(range(v.cross_attn_every - 1, cfg.n_layers, v.cross_attn_every)),
        v.xattn_d_ff or 4 * cfg.d_model,
    )


def count_vision_params(cfg: ModelConfig) -> VisionParams:
    v, rows, cols, _, X, Fx = _shape(cfg)
    D, F = v.d_model, v.d_ff
    d, q, kv = cfg.d_model, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    if v.stem == "strips":
        stem = (
            v.channels * 9 * v.stem_channels + v.stem_channels + v.stem_channels * v.image_height * v.patch_size * D + D
        )
    else:
        stem = v.channels * v.patch_size**2 * D + D
    encoder = stem + (rows + cols) * D + v.n_layers * (4 * D * D + 2 * D * F + 4 * D) + 2 * D
    resampler = v.n_latents * D + v.resampler_layers * (4 * D * D + 2 * D * F + 6 * D) + 2 * D
    gated = X * (d * q + 2 * D * kv + q * d + 2 * d * Fx + 2 * d + 2 + (3 * cfg.n_heads if v.reading_window else 0))
    return VisionParams(encoder, resampler, gated)


def image_flops(cfg: ModelConfig) -> dict[str, int]:
    """Forward FLOPs of one image of the largest size: encoder, resampler, and its K/V in every gated block."""
    v, _, _, P, X, _ = _shape(cfg)
    D, F, L = v.d_model, v.d_ff, v.n_latents
    kv = cfg.n_kv_heads * cfg.head_dim
    if v.stem == "strips":
        stem = (
            2 * v.image_height * v.image_width * 9 * v.channels * v.stem_channels
            + 2 * P * v.stem_channels * v.image_height * v.patch_size * D
        )
    else:
        stem = 2 * P * v.channels * v.patch_size**2 * D
    encoder = stem + v.n_layers * (2 * P * (4 * D * D + 2 * D * F) + 4 * P * P * D)
    K = P if v.reading_window else P + L  # keys: the patches (and, on Flamingo's path, the latents)
    resampler = v.resampler_layers * (2 * L * (2 * D * D + 2 * D * F) + 2 * K * 2 * D * D + 4 * L * K * D)
    return {"encoder": encoder, "resampler": resampler, "visual K/V": X * 2 * L * 2 * D * kv}


def text_token_flops(cfg: ModelConfig) -> int:
    """Forward FLOPs the gated blocks add to one text token that sees an image."""
    v, _, _, _, X, Fx = _shape(cfg)
    d, q = cfg.d_model, cfg.n_heads * cfg.head_dim
    return X * (2 * (d * q + q * d + 2 * d * Fx) + 4 * q * v.n_latents)


def visual_kv_bytes(cfg: ModelConfig, bytes_per_element: int = 2) -> int:
    """The cached cross-attention K and V of one image's visual tokens, all gated blocks."""
    v, _, _, _, X, _ = _shape(cfg)
    return X * 2 * v.n_latents * cfg.n_kv_heads * cfg.head_dim * bytes_per_element


def vision_rows(cfg: ModelConfig) -> list[tuple[str, str, str]]:
    """(quantity, value, how) rows for `python -m moe figures` of a vision config."""
    v, rows, cols, P, X, _ = _shape(cfg)
    params, text = count_vision_params(cfg), count_params(cfg.text_only())
    flops = image_flops(cfg)
    per_image = sum(flops.values())
    per_token = text_token_flops(cfg)
    kv = visual_kv_bytes(cfg)
    pixel_bytes = v.channels * v.image_height * v.image_width
    return [
        (
            "vision parameters",
            si(params.total),
            f"{params.total / text.total:.3%} on top of the language model's "
            f"{si(text.total)} (the leak: 'adds more parameters on top of the 1.8T', no figure)",
        ),
        (
            "  encoder (ViT)",
            si(params.encoder),
            f"{v.n_layers} blocks of {v.d_model}, {P} "
            + (
                f"strips of {v.image_height}x{v.patch_size} from a 3x3 convolution stem"
                if v.stem == "strips"
                else f"patches of {v.patch_size}x{v.patch_size} ({rows} x {cols})"
            )
            + f" per {v.image_height} x {v.image_width} x {v.channels} image",
        ),
        ("  Perceiver Resampler", si(params.resampler), f"{v.resampler_layers} layers, {v.n_latents} latents"),
        (
            "  gated cross-attention",
            si(params.gated),
            f"{X} blocks, one before every {v.cross_attn_every} of {cfg.n_layers}",
        ),
        ("forward FLOPs per image", si(per_image, "FLOP"), ", ".join(f"{k} {si(f, 'FLOP')}" for k, f in flops.items())),
        (
            "  in text tokens",
            f"{per_image / forward_flops_per_token(cfg.text_only()):,.1f}",
            "an image costs as much as this many text tokens through the language model",
        ),
        (
            "forward FLOPs per text token",
            f"+{si(per_token, 'FLOP')}",
            f"{per_token / forward_flops_per_token(cfg.text_only()):.2%} more than the language model's "
            f"{si(forward_flops_per_token(cfg.text_only()), 'FLOP')} (attending to one image's {v.n_latents} tokens)",
        ),
        (
            "visual K/V per image (bf16)",
            binary_bytes(kv),
            f"{X} blocks x 2 x {v.n_latents} tokens x "
            f"{cfg.n_kv_heads} K/V head(s) x {cfg.head_dim}; cached once per sequence, never grows; as much as "
            f"{kv / kv_cache_bytes_per_token(cfg):,.1f} text tokens' K/V",
        ),
        (
            "input bytes per visual token",
            f"{pixel_bytes / v.n_latents:,.0f} B",
            f"{pixel_bytes:,} bytes of 8-bit "
            f"pixels / {v.n_latents} visual tokens; the leak: ~{LEAK_VISUAL_BYTES_PER_TOKEN} B per visual token",
        ),
        (
            "input bytes per text token",
            f"~{TEXT_BYTES_PER_TOKEN} B",
            f"so a visual token carries "
            f"{pixel_bytes / v.n_latents / TEXT_BYTES_PER_TOKEN:,.0f}x a text token's input bytes (the leak: "
            f"~{LEAK_VISUAL_BYTES_PER_TOKEN / TEXT_BYTES_PER_TOKEN:.0f}x)",
        ),
    ]
