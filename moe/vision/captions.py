"""Stage-2 training data: rendered lines of the corpus, each followed by its transcription and the
next line of the text, so the model must read, then continue.

    example:  <image> To be, or not to be: that is \n the question: Whether 'tis nobler \n
    inputs:   the tokens (byte-level) and the image the placeholder stands for
    targets:  the next token everywhere (the placeholder's target is the line's first character);
              -100 (ignored by the loss) on the padding after the example

Lines come from the corpus's own train/validation split (moe/data/dataset.py), as corpus_lines
(moe/vision/render.py) cuts them; every training example is drawn with its own augmentation seed,
the validation and test lines with fixed ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from moe.config import VisionConfig
from moe.data.dataset import BUNDLED, SingleSource, bundled_split
from moe.data.tokenizer import ByteTokenizer
from moe.model.transformer import IGNORE_INDEX as IGNORE
from moe.vision.images import batch_images, to_tensor
from moe.vision.render import MAX_CHARS, corpus_lines, render_line


@dataclass
class CaptionDataset(SingleSource):
    name: str
    tokenizer: ByteTokenizer
    vision: VisionConfig
    train_lines: list[str]
    val_lines: list[str]

    @classmethod
    def bundled(cls, vision: VisionConfig, val_fraction: float = 0.05) -> CaptionDataset:
        train, val = bundled_split(val_fraction)
        return cls(
            f"{BUNDLED}-rendered",
            ByteTokenizer(),
            vision,
            corpus_lines(train.decode("utf-8", "replace")),
            corpus_lines(val.decode("utf-8", "replace")),
        )

    def check_seq_len(self, seq_len: int) -> None:
        if seq_len < MAX_CHARS + 2:
            raise ValueError(
                f"seq_len {seq_len} cannot hold an image, a line of up to {MAX_CHARS} characters and "
                f"its newline: use at least {MAX_CHARS + 2}"
            )

    def bits_per_byte(self, nats_per_token: float) -> float:
        return nats_per_token / math.log(2)  # byte-level: a token is a byte

    def lines(self, split: str) -> list[str]:
        return self.train_lines if split == "train" else self.val_lines

    def example(self, split: str, i: int, seed: int) -> tuple[list[int], torch.Tensor]:
        """Line i of `split` as (tokens: placeholder, transcription, newline, next line, newline;
        the image, [C, H, W])."""
        lines = self.lines(split)
        text = f"{lines[i]}\n{lines[(i + 1) % len(lines)]}\n"
        tokens = [self.vision.image_token] + self.tokenizer.encode(text)
        image = to_tensor(render_line(lines[i], seed, self.vision.image_height, self.vision.image_width), self.vision)
        return tokens, image

    def batch(self, split: str, batch_size: int, seq_len: int, generator: torch.Generator, rows=None):
        """Random examples: ((tokens [B, T], images [B, C, H, W]), targets [B, T]). The generator
        draws the lines and the augmentation seeds of the whole batch; rows: read only those."""
        picks = torch.randint(len(self.lines(split)), (batch_size,), generator=generator).tolist()
        seeds = torch.randint(2**31, (batch_size,), generator=generator).tolist()
        keep = range(batch_size) if rows is None else rows
        return collate([self.example(split, picks[r], seeds[r]) for r in keep], seq_len)


def collate(examples: list[tuple[list[int], torch.Tensor]], seq_len: int):
    """Examples cut or padded to seq_len + 1 tokens -> ((x [B, T], images), y [B, T])."""
    seq = torch.full((len(examples), seq_len + 1), IGNORE, dtype=torch.long)
    for b, (tokens, _) in enumerate(examples):
        tokens = tokens[: seq_len + 1]
        seq[b, : len(tokens)] = torch.tensor(tokens)
    x, y = seq[:, :-1].clone(), seq[:, 1:]
    x[x == IGNORE] = ord(" ")  # padding reads a space; its targets are ignored
    return (x, batch_images([im for _, im in examples])), y
