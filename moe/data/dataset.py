"""A prepared dataset: token ids in memory-mapped shards, read window by window, never loaded whole.

    data/NAME/
      dataset.json          format, tokenizer, dtype, per split: shards (file, tokens, sha256), tokens,
                            documents, bytes of text; sources (path, sha256, bytes); what was skipped
      tokenizer.moe.json    the tokenizer (moe/data/tokenizer.py)
      train-00000.bin ...   token ids, raw little-endian uint16 (vocab <= 65,536) or uint32, the
      val-00000.bin ...     documents one after another (with <|endoftext|> between them where the
                            tokenizer has one); nanoGPT's convention

`python -m moe prepare` writes one (moe/data/prepare.py). A split is one long token stream over its
shards: a training window may cross a shard boundary. The bundled corpus is the same thing in memory
(TokenDataset.bundled), split as it always was: the last val_fraction of its bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import pathlib
from dataclasses import dataclass

import numpy as np
import torch

from moe.data import tokenizer as tokenizers
from moe.data.tokenizer import ByteTokenizer, Tokenizer

CORPUS = pathlib.Path(__file__).resolve().parent / "shakespeare.txt.gz"
BUNDLED = "shakespeare"  # the name `prepare --data` and `train --data` know the bundled corpus by
META = "dataset.json"
FORMAT = 1


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


class TokenArray:
    """A read-only token stream over one or more arrays (memory-mapped shards, or arrays in memory)."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = [p for p in parts if len(p)]
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def window(self, start: int, n: int) -> np.ndarray:
        """Tokens [start, start + n), joined across shard boundaries."""
        if not 0 <= start <= start + n <= len(self):
            raise IndexError(f"window [{start}, {start + n}) outside a stream of {len(self)} tokens")
        out, i = [], int(np.searchsorted(self.starts, start, side="right")) - 1
        while n > 0:
            offset = start - int(self.starts[i])
            piece = self.parts[i][offset : offset + n]
            out.append(piece)
            start, n, i = start + len(piece), n - len(piece), i + 1
        return out[0] if len(out) == 1 else np.concatenate(out)


def get_batch(data: TokenArray, batch_size: int, seq_len: int, generator: torch.Generator, rows=None):
    """Random windows: inputs x [B, T] and next-token targets y [B, T], int64. rows (a list of row
    indices): read only those rows of the batch (a data-parallel rank's share); the generator draws
    the whole batch's starts either way, so every process stays on the same stream."""
    if len(data) <= seq_len:
        raise ValueError(f"a split of {len(data)} tokens is too short for seq_len {seq_len}")
    starts = torch.randint(len(data) - seq_len, (batch_size,), generator=generator)
    if rows is not None:
        starts = starts[torch.as_tensor(rows, dtype=torch.long)]
    return as_batch([data.window(s, seq_len + 1) for s in starts.tolist()])


def as_batch(windows: list[np.ndarray]):
    """Windows of seq_len + 1 tokens -> inputs x [B, T] and next-token targets y [B, T], int64."""
    t = torch.from_numpy(np.stack(windows).astype(np.int64))
    return t[:, :-1], t[:, 1:]


class SingleSource:
    """The Dataset protocol's mixture calls (moe/data/mixture.py) for a dataset that is one source:
    validation is its own, and where it stands lives in the loop's generator."""

    def eval_sets(self, batch_size: int, seq_len: int, generator: torch.Generator, rows, n: int) -> dict:
        return {self.name: (1.0, [self.batch("val", batch_size, seq_len, generator, rows) for _ in range(n)])}

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass

    def progress(self) -> dict:
        return {}


@dataclass
class TokenDataset(SingleSource):
    name: str
    tokenizer: Tokenizer
    train: TokenArray
    val: TokenArray
    val_bytes: int  # UTF-8 bytes of the validation text: bits per byte = nats per token * tokens / bytes / ln 2

    @property
    def val_tokens_per_byte(self) -> float:
        return len(self.val) / self.val_bytes

    def bits_per_byte(self, nats_per_token: float) -> float:
        return nats_per_token * self.val_tokens_per_byte / math.log(2)

    def batch(self, split: str, batch_size: int, seq_len: int, generator: torch.Generator, rows=None):
        """get_batch over the "train" or "val" split."""
        return get_batch(self.train if split == "train" else self.val, batch_size, seq_len, generator, rows)

    def check_seq_len(self, seq_len: int) -> None:
        for split, arr in (("train", self.train), ("validation", self.val)):
            if len(arr) <= seq_len:
                raise ValueError(
                    f"dataset {self.name}: its {split} split holds {len(arr)} tokens, too short for "
                    f"seq_len {seq_len} (it needs more than seq_len); use a shorter --seq-len or "
                    "more text"
                )

    @classmethod
    def bundled(cls, val_fraction: float = 0.05) -> TokenDataset:
        """The bundled corpus, byte-level, in memory."""
        train, val = bundled_split(val_fraction)
        return cls(
            BUNDLED,
            ByteTokenizer(),
            TokenArray([np.frombuffer(train, np.uint8)]),
            TokenArray([np.frombuffer(val, np.uint8)]),
            len(val),
        )

    @classmethod
    def open(cls, path, kind: str = "text") -> TokenDataset:
        """A prepared dataset directory, checked: format, kind (text, or instruction data's tokens
        for moe/data/instruct.py), tokenizer, every shard's size, sha256 and token ids (one read of
        every shard; see check_shard)."""
        path = pathlib.Path(path)
        meta_file = path / META
        if not meta_file.is_file():
            hint = (
                "it is not a prepared dataset (python -m moe prepare --data ... --out DIR writes one)"
                if path.is_dir()
                else "no such directory"
            )
            raise ValueError(f"--data {path}: {hint}")
        try:
            meta = json.loads(meta_file.read_text())
            dtype, splits = np.dtype(meta["dtype"]), meta["splits"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{meta_file}: not a readable dataset description ({type(e).__name__}: {e})") from None
        if meta.get("format") != FORMAT:
            raise ValueError(f"{meta_file}: dataset format {meta.get('format')!r}, this version reads {FORMAT}")
        if meta.get("kind", "text") != kind:
            raise ValueError(
                f"--data {path}: instruction data (prepare --format chat) trains alone, as --data {path}, "
                "not as a source of a mixture"
                if kind == "text"
                else f"--data {path}: not instruction data (it was not prepared with --format chat)"
            )
        tok = tokenizers.load(path)
        if tok.fingerprint != meta.get("tokenizer", {}).get("fingerprint"):
            raise ValueError(f"{path}: {tokenizers.FILE} is not the tokenizer the dataset was prepared with")
        arrays = {s: TokenArray(open_shards(path, splits[s]["shards"], dtype, tok)) for s in ("train", "val")}
        return cls(path.name, tok, arrays["train"], arrays["val"], splits["val"]["bytes"])


def open_shards(path: pathlib.Path, shards: list[dict], dtype: np.dtype, tok: Tokenizer | None) -> list[np.ndarray]:
    """A split's shards as dataset.json lists them ({file, tokens, sha256}), each checked (size,
    check_shard) and memory-mapped; empty ones left out."""
    parts = []
    for shard in shards:
        f = path / shard["file"]
        size = f.stat().st_size if f.is_file() else None
        if size != shard["tokens"] * dtype.itemsize:
            raise ValueError(
                f"{f}: {'missing' if size is None else f'{size} bytes'}, expected "
                f"{shard['tokens'] * dtype.itemsize} ({shard['tokens']} {dtype.name} values); "
                "the dataset is damaged: prepare it again"
            )
        check_shard(f, shard.get("sha256"), dtype, tok)
        if shard["tokens"]:
            parts.append(np.memmap(f, dtype=dtype, mode="r"))
    return parts


def check_shard(f: pathlib.Path, sha256: str | None, dtype: np.dtype, tok: Tokenizer | None) -> None:
    """One pass over a shard: its sha256 against the one dataset.json recorded (a zero-filled or
    rewritten shard of the right size), and every token id inside the tokenizer's vocabulary (tok
    None: a shard of other numbers, moe/data/instruct.py's lengths); a
    ValueError names the shard. Reads at the disk's speed, once, when the dataset is opened."""
    h, top = hashlib.sha256(), -1
    with open(f, "rb") as fh:
        while chunk := fh.read(1 << 24):  # 16 MiB: whole tokens of any dtype
            h.update(chunk)
            top = max(top, int(np.frombuffer(chunk, dtype).max()))
    if sha256 and h.hexdigest() != sha256:
        raise ValueError(
            f"{f}: sha256 differs from the one dataset.json recorded (changed or damaged after "
            "prepare): prepare the dataset again"
        )
    if tok is not None and top >= tok.vocab_size:
        raise ValueError(
            f"{f}: holds token id {top}, outside the {tok.describe()} tokenizer's {tok.vocab_size} ids; "
            "the shard does not belong to this dataset: prepare it again"
        )


def bundled_split(val_fraction: float) -> tuple[bytes, bytes]:
    """The bundled corpus's UTF-8 bytes, split before its last val_fraction (moved forward to a
    character boundary)."""
    raw = gzip.decompress(CORPUS.read_bytes())
    cut = len(raw) - int(len(raw) * val_fraction)
    while cut < len(raw) and raw[cut] & 0xC0 == 0x80:  # a UTF-8 continuation byte: not a boundary
        cut += 1
    return raw[:cut], raw[cut:]


def open_data(data, val_fraction: float) -> TokenDataset:
    """`train --data`: a prepared directory, or None / 'shakespeare' for the bundled corpus."""
    if data is None or (str(data) == BUNDLED and not pathlib.Path(data).exists()):
        return TokenDataset.bundled(val_fraction)
    return TokenDataset.open(data)
