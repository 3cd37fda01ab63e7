"""The bundled corpus (Shakespeare's complete works, public domain), a byte-level tokenizer, batches.

Token ids are the UTF-8 bytes of the text (vocab 256), so a loss in nats per token is nats per byte.
The validation split is the last `val_fraction` of the corpus (the last works in file-name order).
"""

from __future__ import annotations

import gzip
import pathlib

import torch

CORPUS = pathlib.Path(__file__).resolve().parent / "shakespeare.txt.gz"


def encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def decode(ids) -> str:
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def load_corpus(path: str | pathlib.Path | None = None) -> torch.Tensor:
    """The corpus as a uint8 tensor of bytes (.gz files are decompressed)."""
    path = pathlib.Path(path or CORPUS)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)


def split_corpus(data: torch.Tensor, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    n_val = int(len(data) * val_fraction)
    return data[: len(data) - n_val], data[len(data) - n_val:]


def get_batch(data: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator):
    """Random windows: inputs x [B, T] and next-byte targets y [B, T], int64."""
    if len(data) <= seq_len:
        raise ValueError(f"corpus split of {len(data)} bytes is too short for seq_len {seq_len}")
    starts = torch.randint(len(data) - seq_len, (batch_size,), generator=generator)
    windows = torch.stack([data[s: s + seq_len + 1] for s in starts.tolist()]).long()
    return windows[:, :-1], windows[:, 1:]
