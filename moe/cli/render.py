"""render: a line of text drawn as the vision model sees it (moe/vision/render.py), as a PNG."""

from __future__ import annotations

import pathlib

from moe.cli.common import EXIT_OK


def add_parser(sub) -> None:
    r = sub.add_parser("render", help="draw a line of text as a vision model sees it (a grayscale PNG)")
    r.add_argument("text", help="up to 32 printable ASCII characters")
    r.add_argument("--out", required=True, help="the PNG to write")
    r.add_argument("--config", default="tiny-vision", help="a vision preset (its image size)")
    r.add_argument("--seed", type=int, help="augmentation seed (shift, ink, noise); default: none")
    r.set_defaults(func=run)


def run(args) -> int:
    from PIL import Image

    from moe.config import load_config
    from moe.vision.render import render_line

    v = load_config(args.config).vision
    if v is None:
        raise ValueError(f"config {args.config!r} has no [vision] table: give a vision preset, e.g. tiny-vision")
    pixels = render_line(args.text, args.seed, v.image_height, v.image_width)
    out = pathlib.Path(args.out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(out, format="PNG")
    except OSError as e:
        raise ValueError(f"cannot write {str(out)!r}: {e.strerror or e}") from None
    print(
        f"wrote {out} ({v.image_width} x {v.image_height} pixels, grayscale"
        f"{f', augmentation seed {args.seed}' if args.seed is not None else ', no augmentation'})"
    )
    return EXIT_OK
