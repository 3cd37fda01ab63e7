"""Image files and pixel arrays -> the tensors the encoder reads, checked and sized.

    to_tensor(pixels, vision)   uint8 [H, W] or [H, W, C] -> float [C, H', W'] in [0, 1]
    load_image(path, vision)    a file (PNG, JPEG, ...) -> the same

Sizing: an image of another height is resized (aspect ratio kept) to vision.image_height; its width
is then padded with white to a multiple of patch_size, and refused if wider than vision.image_width.
A colour image for a grayscale encoder (and the reverse) is converted, as Pillow converts modes.
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch

from moe.config import VisionConfig


def _to_mode(image, v: VisionConfig):
    return image.convert("L" if v.channels == 1 else "RGB")


def load_image(path, v: VisionConfig) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"image {str(path)!r}: no such file")
    try:
        with Image.open(path) as image:
            image.load()
            return from_pil(image, v, str(path))
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"image {str(path)!r} is not an image Pillow can read ({type(e).__name__}: {e})") from None


def to_tensor(pixels: np.ndarray, v: VisionConfig) -> torch.Tensor:
    from PIL import Image

    return from_pil(Image.fromarray(np.asarray(pixels, dtype=np.uint8)), v, "the pixel array")


def from_pil(image, v: VisionConfig, what: str) -> torch.Tensor:
    from PIL import Image

    if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"):
        raise ValueError(f"{what}: image mode {image.mode!r} is not one this reads (grayscale or RGB)")
    image = _to_mode(image, v)
    w, h = image.size
    if h != v.image_height:  # resize to the encoder's height, keeping the aspect ratio
        w = max(1, round(w * v.image_height / h))
        image = image.resize((w, v.image_height), Image.Resampling.BILINEAR)
    padded = -(-w // v.patch_size) * v.patch_size
    if padded > v.image_width:
        raise ValueError(
            f"{what}: {w} pixels wide at height {v.image_height}, wider than vision.image_width "
            f"({v.image_width}); crop it or use a config with wider images"
        )
    pixels = np.full((v.image_height, padded, v.channels), 255, dtype=np.uint8)
    pixels[:, :w] = np.asarray(image, dtype=np.uint8).reshape(v.image_height, w, v.channels)
    return torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0


def batch_images(images: list[torch.Tensor]) -> torch.Tensor:
    """[C, H, W] images of one height -> [N, C, H, max W], the narrower padded with white."""
    W = max(im.shape[-1] for im in images)
    return torch.stack([torch.nn.functional.pad(im, (0, W - im.shape[-1]), value=1.0) for im in images])


def check_images(cfg, prompt: list[int], images) -> None:
    """A request's images against its model and prompt: one per placeholder, each [C, H, W] floats at
    the encoder's height (load_image sizes a file so). Raises a ValueError naming the problem."""
    if images is not None and not isinstance(images, (list, tuple)):
        raise ValueError(f"images must be a list of [C, H, W] tensors, got {type(images).__name__}")
    images = list(images or ())
    v = cfg.vision
    if v is None:
        if images:
            raise ValueError(
                f"model {cfg.name!r} reads no images (its config has no [vision] table), got {len(images)}"
            )
        return
    placeholders = sum(t == v.image_token for t in prompt)
    if placeholders != len(images):
        raise ValueError(
            f"the prompt holds {placeholders} image placeholder(s) (token {v.image_token}) but "
            f"{len(images)} image(s) came with it: give one image per placeholder, in order"
        )
    for i, im in enumerate(images):
        if not isinstance(im, torch.Tensor) or not im.is_floating_point() or im.dim() != 3:
            raise ValueError(
                f"image {i}: expected a float tensor [C, H, W] (moe.vision.images.load_image makes one), "
                f"got {type(im).__name__} {getattr(im, 'shape', '')}"
            )
        C, H, W = im.shape
        if C != v.channels or H != v.image_height or W > v.image_width or W % v.patch_size or not W:
            raise ValueError(
                f"image {i} is {C} x {H} x {W}; this model reads {v.channels} x {v.image_height} x W, "
                f"W a multiple of {v.patch_size} up to {v.image_width} (load_image resizes and pads to it)"
            )
        if not torch.isfinite(im).all():
            raise ValueError(f"image {i} holds inf or NaN pixels")
