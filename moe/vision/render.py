"""Rendered text, the leak's "joint data (rendered LaTeX/text)": lines of the corpus drawn as grayscale
images for the model to read.

    lines = corpus_lines(text)                    pieces of 16-32 printable ASCII characters, in order
    pixels = render_line("To be, or not to be", seed=3, height=16, width=208)   uint8 [H, W]

The font is Pillow's built-in bitmap font (6 pixels a character, 11 high; no download, the same on
every machine), black on white. A line of 32 characters is 192 pixels wide. `seed` fixes the light
augmentation, so the task is reading and not matching one picture: a shift of up to 2 pixels
across and 1 down, ink from 0 to 60 gray, and Gaussian noise of std 12 gray levels. seed=None: no
augmentation (the left margin and top are 4 and 2 pixels).
"""

from __future__ import annotations

import numpy as np

MIN_CHARS, MAX_CHARS = 16, 32
CHAR_WIDTH, CHAR_HEIGHT = 6, 11
PRINTABLE = frozenset(chr(c) for c in range(32, 127))


def _font():
    from PIL import ImageFont

    return ImageFont.load_default_imagefont()  # the bitmap font: not FreeType's, whose output varies by version


def render_line(text: str, seed: int | None = None, height: int = 16, width: int = 208) -> np.ndarray:
    """`text` drawn into a height x width grayscale image, uint8 (255 white). Refuses what does not fit
    or cannot be drawn, naming it."""
    from PIL import Image, ImageDraw

    bad = sorted(set(text) - PRINTABLE)
    if bad:
        raise ValueError(f"cannot render {bad[:5]}: the bitmap font draws printable ASCII only")
    need = 4 + 2 + CHAR_WIDTH * len(text)
    if need > width or CHAR_HEIGHT + 2 + 1 > height:
        raise ValueError(
            f"{len(text)} characters need {need} x {CHAR_HEIGHT + 3} pixels; the image is {width} x {height}"
        )
    rng = np.random.default_rng(seed) if seed is not None else None
    dx, dy = (int(rng.integers(-2, 3)), int(rng.integers(0, 2))) if rng else (0, 0)
    ink = int(rng.integers(0, 61)) if rng else 0
    image = Image.new("L", (width, height), 255)
    ImageDraw.Draw(image).text((4 + dx, 2 + dy), text, font=_font(), fill=ink)
    pixels = np.asarray(image, dtype=np.float32)
    if rng:
        pixels = pixels + rng.normal(0.0, 12.0, pixels.shape)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def corpus_lines(text: str) -> list[str]:
    """The corpus's lines as pieces of MIN_CHARS-MAX_CHARS printable ASCII characters, in order: a
    longer line is wrapped at spaces, and pieces outside the range (or with other characters) are dropped."""
    out = []
    for line in text.splitlines():
        line = " ".join(line.split())
        if not line or not set(line) <= PRINTABLE:
            continue
        piece = ""
        for word in line.split(" "):
            if piece and len(piece) + 1 + len(word) > MAX_CHARS:
                out.append(piece)
                piece = word
            else:
                piece = f"{piece} {word}" if piece else word
        out.append(piece)
    return [p for p in out if MIN_CHARS <= len(p) <= MAX_CHARS]
