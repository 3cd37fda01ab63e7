"""Reading measured: greedy transcription of rendered lines, the character error rate, and the
caption loss, for the vision model and for the two baselines stage 2 is judged against.

    cer(predictions, truths)          sum of Levenshtein distances / sum of true lengths
    transcribe(model, images)         each image's line, read greedily after its placeholder, up to "\n"
    caption_loss(model, lines, images) cross-entropy (nats per byte) of "line\n" after the placeholder
    guess_lines / text_caption_loss   the text-only model, no image: "\n", then its guess of the line

Batched through the language model's KV cache: every row is one image's placeholder and then its
transcription, so every token sees that image (media index 0 throughout).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moe.model import MoETransformer, Positions
from moe.vision.captions import CaptionDataset
from moe.vision.cross_attention import Media
from moe.vision.images import to_tensor
from moe.vision.model import VisionLanguageModel
from moe.vision.render import MAX_CHARS, render_line

NEWLINE = ord("\n")


def levenshtein(a: str, b: str) -> int:
    """Insertions, deletions and substitutions that turn a into b (one row of the DP table at a time)."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def cer(predictions: list[str], truths: list[str]) -> float:
    """Character error rate over a set of lines: total edit distance / total true characters."""
    return sum(levenshtein(p, t) for p, t in zip(predictions, truths)) / max(1, sum(len(t) for t in truths))


def held_out(dataset: CaptionDataset, n: int = 500) -> tuple[list[str], torch.Tensor]:
    """n validation lines spread over the split, each rendered with its own fixed augmentation seed
    (the same lines and pixels on every run)."""
    lines = dataset.val_lines
    picked = [lines[i * len(lines) // n] for i in range(min(n, len(lines)))]
    v = dataset.vision
    images = torch.stack(
        [to_tensor(render_line(t, 10_000 + i, v.image_height, v.image_width), v) for i, t in enumerate(picked)]
    )
    return picked, images


def _decode(ids: list[int]) -> str:
    ids = ids[: ids.index(NEWLINE)] if NEWLINE in ids else ids
    return bytes(ids).decode("utf-8", "replace")


def _greedy(lm: MoETransformer, first_BT: torch.Tensor, media: Media | None, forward, max_chars: int) -> list[str]:
    """Greedy continuation of first [B, T] through the KV cache, each row up to a newline."""
    B, T = first_BT.shape
    device = first_BT.device
    lm.setup_caches(B, T + max_chars + 1)
    try:
        logits = forward(first_BT, Positions.at(torch.arange(T, device=device)), _at(media, 0, T)).logits[:, -1]
        out, done = [], torch.zeros(B, dtype=torch.bool, device=device)
        for pos in range(T, T + max_chars + 1):
            token = logits.argmax(-1)
            out.append(token)
            done |= token == NEWLINE
            if bool(done.all()):
                break
            logits = forward(
                token[:, None], Positions.at(torch.tensor([pos], device=device)), _at(media, pos, 1)
            ).logits[:, -1]
    finally:
        lm.clear_caches()
    return [_decode(row) for row in torch.stack(out, 1).tolist()]


def _at(media: Media | None, start: int, n: int) -> Media | None:
    """The media of n tokens from position `start` of rows whose image is at position 0 (a prompt of
    one placeholder: Media.at_positions says what every later token sees)."""
    if media is None:
        return None
    index, offset = Media.at_positions(([0], [0]), list(range(start, start + n)))
    B, device = media.visual_BMLD.shape[0], media.media_BT.device
    return Media(
        media.visual_BMLD,
        torch.tensor([index], device=device).expand(B, n),
        torch.tensor([offset], device=device).expand(B, n),
    )


def _image_media(model: VisionLanguageModel, images_NCHW: torch.Tensor) -> Media:
    visual_NLD = model.encode(images_NCHW)
    zeros = torch.zeros(len(images_NCHW), 1, dtype=torch.long, device=visual_NLD.device)
    return Media(visual_NLD[:, None], zeros, zeros)  # offset_BT set per step by _greedy


def _batches(n: int, size: int):
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def _evaluating(fn):
    """Run fn with its model (the first argument) in eval mode and no grad, then restore its mode."""

    def run(model, *args, **kw):
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                return fn(model, *args, **kw)
        finally:
            model.train(was)

    run.__doc__, run.__name__ = fn.__doc__, fn.__name__
    return run


@_evaluating
def transcribe(model: VisionLanguageModel, images_NCHW: torch.Tensor, batch: int = 128) -> list[str]:
    out = []
    for s in _batches(len(images_NCHW), batch):
        media = _image_media(model, images_NCHW[s])
        first = torch.full((media.media_BT.shape[0], 1), model.cfg.vision.image_token, device=media.media_BT.device)
        out += _greedy(model.lm, first, media, lambda x, p, m: model(x, positions=p, media=m), MAX_CHARS)
    return out


@_evaluating
def guess_lines(lm: MoETransformer, n: int) -> list[str]:
    """The text-only baseline's transcription of any image: greedy from a newline (it cannot see)."""
    first = torch.full((1, 1), NEWLINE, device=lm.tok_emb.weight.device)
    return _greedy(lm, first, None, lambda x, p, m: lm(x, p), MAX_CHARS) * n


def _scored(lines: list[str], start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows `start`, then each "line\\n", padded; targets the line's bytes and newline (-100 elsewhere)."""
    T = max(len(t) for t in lines) + 1
    x = torch.full((len(lines), T), ord(" "))
    y = torch.full((len(lines), T), -100)
    x[:, 0] = start
    for i, t in enumerate(lines):
        ids = list(t.encode()) + [NEWLINE]
        x[i, 1 : len(ids)] = torch.tensor(ids[:-1])
        y[i, : len(ids)] = torch.tensor(ids)
    return x, y


@_evaluating
def caption_loss(model: VisionLanguageModel, lines: list[str], images_NCHW: torch.Tensor, batch: int = 128) -> float:
    """Mean cross-entropy per byte of each "line\\n" after its image's placeholder."""
    x, y = _scored(lines, model.cfg.vision.image_token)
    total = 0.0
    for s in _batches(len(lines), batch):
        logits = model(x[s].to(images_NCHW.device), images=images_NCHW[s]).logits
        total += F.cross_entropy(
            logits.flatten(0, 1), y[s].flatten().to(logits.device), ignore_index=-100, reduction="sum"
        ).item()
    return total / int((y != -100).sum())


@_evaluating
def text_caption_loss(lm: MoETransformer, lines: list[str], batch: int = 128) -> float:
    """The text-only baseline's caption loss: "line\\n" after a newline, no image."""
    x, y = _scored(lines, NEWLINE)
    total = 0.0
    for s in _batches(len(lines), batch):
        logits = lm(x[s]).logits
        total += F.cross_entropy(logits.flatten(0, 1), y[s].flatten(), ignore_index=-100, reduction="sum").item()
    return total / int((y != -100).sum())
