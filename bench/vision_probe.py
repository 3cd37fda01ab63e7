"""What limits reading: character readers trained on the same rendered lines for the same steps,
without the language model. Each predicts character j of a line from the image alone.

    aligned   told where character j is (the renderer's 6-pixel pitch from x = 4, give or take its
              2-pixel shift): a 12-pixel-wide window of raw pixels -> MLP -> the character
    attention learns where: a learned query per character position attends over the ViT's patch
              features (Flamingo's path: 4 x 4 patches, two ViT blocks of width 96, as tiny-vision
              had before its reading path), then a linear layer -> the character
    stem      learns where, over a convolutional stem (3 x 3 conv, GELU, then one token per
              full-height 4-pixel column strip) instead of the ViT: the same attention and readout
    window    the stem, with a reading-order prior added to the attention scores:
              -((column - (a j + b)) / w)^2, with a, b, w learned from a = 1, b = 0, w = 8 (Graves'
              location window; nothing about the 1.5 columns per character is given)
    resampled tiny-vision's own reading path (moe/vision/): its strip stem and one-layer resampler
              (one visual token per strip, fixed window), then the window reader over the visual
              tokens; three initialisations (seeds 0, 1, 2), since this one's step of success varies

If `aligned` reads and `attention` does not at the same step, the limit is learning where to look,
not seeing; `stem` and `window` separate the two halves of that.

    python -m bench.vision_probe --steps 600       # writes bench/results/<device>/vision_probe.{json,md}
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench import harness
from moe.config import load_config
from moe.model.init import init_weights
from moe.vision.captions import CaptionDataset
from moe.vision.encoder import ViT
from moe.vision.layers import Attention
from moe.vision.reading import ReadingWindow
from moe.vision.render import CHAR_WIDTH, MAX_CHARS
from moe.vision.resampler import PerceiverResampler

WINDOW = 12


class Aligned(nn.Module):
    def __init__(self, height: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(height * WINDOW, 256), nn.GELU(), nn.Linear(256, 256))

    def forward(self, images_N1HW):
        pixels = F.pad(images_N1HW[:, 0], (0, WINDOW), value=1.0)
        x0 = [4 + CHAR_WIDTH * j - 2 for j in range(MAX_CHARS)]
        return self.mlp(torch.stack([pixels[:, :, x : x + WINDOW].flatten(1) for x in x0], 1))


class Attending(nn.Module):
    def __init__(self, v):
        super().__init__()
        self.encoder = ViT(v)
        self.queries = nn.Parameter(torch.empty(MAX_CHARS, v.d_model))
        self.attn = Attention(v.d_model, v.d_model, v.n_heads, v.n_heads, v.d_model // v.n_heads)
        self.out = nn.Linear(v.d_model, 256)

    def forward(self, images_N1HW):
        features = self.encoder(images_N1HW)
        return self.out(self.attn(self.queries.expand(len(images_N1HW), -1, -1), features))


class Stem(nn.Module):
    """One token per full-height column strip of `strip` pixels, from a small convolutional stem."""

    def __init__(self, v, strip: int = 4, window: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(v.channels, 32, 3, padding=1)
        self.strips = nn.Conv2d(32, v.d_model, (v.image_height, strip), stride=(v.image_height, strip))
        for conv in (self.conv, self.strips):
            nn.init.kaiming_normal_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.queries = nn.Parameter(torch.randn(MAX_CHARS, v.d_model) * 0.02)
        self.wq = nn.Linear(v.d_model, v.d_model, bias=False)
        self.wk = nn.Linear(v.d_model, v.d_model, bias=False)
        self.wv = nn.Linear(v.d_model, v.d_model, bias=False)
        self.out = nn.Linear(v.d_model, 256)
        self.window = window  # the model's reading window (moe/vision/reading.py), one head
        self.reader = ReadingWindow(1, 1.0, 0.0, 8.0) if window else None

    def forward(self, images_N1HW):
        f_NCD = self.strips(F.gelu(self.conv(images_N1HW * 2 - 1))).flatten(2).transpose(1, 2)
        scores_NJC = self.wq(self.queries) @ self.wk(f_NCD).transpose(1, 2) / math.sqrt(f_NCD.shape[-1])
        if self.window:  # -((column - (a j + b)) / w)^2
            scores_NJC = scores_NJC + self.reader(torch.arange(MAX_CHARS), torch.arange(f_NCD.shape[1]))[0, 0]
        return self.out(torch.softmax(scores_NJC, -1) @ self.wv(f_NCD))


class Resampled(nn.Module):
    """tiny-vision's encoder and resampler, read by per-character queries through a learned window."""

    window = True

    def __init__(self, v):
        super().__init__()
        self.encoder, self.resampler = ViT(v), PerceiverResampler(v)
        self.queries = nn.Parameter(torch.empty(MAX_CHARS, v.d_model))
        self.attn = Attention(v.d_model, v.d_model, v.n_heads, v.n_heads, v.d_model // v.n_heads)
        self.reader = ReadingWindow(v.n_heads, 1.0, 0.0, 8.0)
        self.out = nn.Linear(v.d_model, 256)

    def forward(self, images_N1HW):
        z_NLD = self.resampler(self.encoder(images_N1HW), self.encoder.columns(*images_N1HW.shape[2:]))
        bias = self.reader(torch.arange(MAX_CHARS), torch.arange(z_NLD.shape[1]))
        return self.out(self.attn(self.queries.expand(len(images_N1HW), -1, -1), z_NLD, bias_NHQK=bias))


def train(model, data, steps: int, seed: int) -> list[dict]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    curve, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        (_, images), y = data.batch("train", 32, MAX_CHARS + 2, g)
        target = y[:, :MAX_CHARS].clone()  # the line's characters, then its newline; not the next line's
        newline = target == ord("\n")
        target[(newline.long().cumsum(1) - newline.long()) > 0] = -100
        logits = model(images)
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == steps:
            scored = target != -100
            accuracy = ((logits.argmax(-1) == target) & scored).sum().item() / scored.sum().item()
            curve.append(
                {
                    "step": step,
                    "seconds": round(time.perf_counter() - start, 1),
                    "loss": round(loss.item(), 3),
                    "char_accuracy": round(accuracy, 3),
                }
            )
            window = " (window)" if getattr(model, "window", False) else ""
            print(
                f"{type(model).__name__:9s}{window} step {step}: loss {loss.item():.3f}, "
                f"character accuracy {accuracy:.3f}",
                flush=True,
            )
    return curve


def main(argv=None) -> dict:
    ap = harness.parser(__doc__)
    ap.add_argument("--steps", type=int, default=600)
    args = ap.parse_args(argv)
    cfg = load_config("tiny-vision")
    flamingo = dict(
        cfg.vision.__dict__, stem="patches", n_layers=2, n_latents=48, resampler_layers=2, reading_window=False
    )
    plain = load_config("tiny-vision", vision=flamingo)
    data = CaptionDataset.bundled(cfg.vision)
    torch.manual_seed(0)
    attending = Attending(plain.vision)
    init_weights(attending, cfg, seed=0)
    env = harness.stamp(False)
    result = {
        "setup": {**env, "steps": args.steps, "batch": 32, "lr": 3e-3},
        "aligned": train(Aligned(cfg.vision.image_height), data, args.steps, seed=0),
        "attention": train(attending, data, args.steps, seed=0),
    }
    for name, window in (("stem", False), ("window", True)):
        torch.manual_seed(0)
        reader = Stem(cfg.vision, window=window)
        result[name] = train(reader, data, args.steps, seed=0)
        if window:
            a, b, w = (x.item() for x in reader.reader.line())
            result["window_fit"] = {"a": a, "b": b, "w": w}
            print(f"window: a {a:.3f} columns per character, b {b:.2f}, w {w:.2f}")
    for seed in range(3):
        reader = Resampled(cfg.vision)
        init_weights(reader, cfg, seed=seed)
        result[f"resampled_seed{seed}"] = train(reader, data, args.steps, seed=0)
        a, b, w = reader.reader.line()
        result[f"resampled_seed{seed}_fit"] = {"a": a.tolist(), "b": b.tolist(), "w": w.tolist()}
    harness.write_result(
        args.out,
        "vision_probe",
        result,
        markdown(result),
        by="bench.vision_probe",
        env=env,
        title="What limits reading: character readers without the language model",
    )
    return result


def markdown(result: dict) -> str:
    """Each reader's last logged step, then the reading windows it learned (a columns per character)."""
    curves = {k: v for k, v in result.items() if isinstance(v, list)}
    rows = [{"reader": name, **curve[-1]} for name, curve in curves.items()]
    per_head = lambda x: ", ".join(f"{v:.4g}" for v in x) if isinstance(x, list) else x  # noqa: E731
    fits = [
        {"reader": k.removesuffix("_fit"), **{p: per_head(x) for p, x in v.items()}}
        for k, v in result.items()
        if k.endswith("_fit")
    ]
    return (
        harness.markdown_table(rows)
        + "\nThe learned windows, -((column - (a j + b)) / w)^2 (one per head):\n\n"
        + harness.markdown_table(fits)
    )


if __name__ == "__main__":
    main()
