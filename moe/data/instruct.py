"""Instruction data: conversations as token ids with a loss mask, packed into rows of whole examples.

    prepare --format chat --data rows.jsonl --tokenizer runs/base/final --out data/chat
    train --data data/chat --init-from runs/base/final ...

`prepare --format chat` (moe/data/prepare.py) reads JSONL rows {"messages": [{role, content}, ...]}
and writes, per split, beside the token shards of an ordinary dataset (moe/data/dataset.py):

    train-00000.mask      one uint8 per token: 1 where the assistant wrote it (the loss counts those)
    train-00000.lengths   uint32, per example: example i is the next lengths[i] tokens of the stream

An example is its conversation rendered by the tokenizer's chat template, or the plain one, piece by
piece (moe/data/chat.py: what the assistant wrote is masked in, the rest out). Where the plain
template is used and the tokenizer has an end-of-text token, each assistant turn ends with it, so a
fine-tuned model stops by itself.

Training packs examples whole into rows of seq_len + 1 tokens: in a fixed order drawn from the run's
seed, each row takes the next examples while they fit, and the rest of a row is padding (targets
ignored, its own example). An example longer than a row is refused, with the seq_len it would need.
Each epoch visits every packed row once, in an order shuffled afresh from the seed and the epoch;
rows drawn so far is the whole state a checkpoint keeps. A batch is (Packed, targets): Packed holds
the token ids and each token's example within its row, from which the trainer builds positions
that restart with each example and attention that never crosses one (Positions.packed,
moe/model/positions.py). Targets are IGNORE_INDEX where the token is not the assistant's or
belongs to the next example.

Validation is the validation split's rows in file order, the same rows at every evaluation: the
loss on the assistant's tokens of held-out conversations (its bits per byte count the assistant's
text only).
"""

from __future__ import annotations

import json
import math
import pathlib
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from moe.data import chat
from moe.data.dataset import META, TokenArray, TokenDataset, open_shards
from moe.data.tokenizer import Tokenizer

IGNORE_INDEX = -100  # a target the loss skips: cross_entropy's default, moe/model/transformer.py's
KIND = "chat"  # dataset.json's "kind" for instruction data ("text" when absent)
MASK_DTYPE, LENGTH_DTYPE = np.dtype(np.uint8), np.dtype(np.uint32)


def is_instruct(path) -> bool:
    """Whether `path` is a dataset `prepare --format chat` wrote."""
    meta = pathlib.Path(str(path)) / META
    try:
        return meta.is_file() and json.loads(meta.read_text()).get("kind") == KIND
    except ValueError:
        return False  # (TokenDataset.open names what is wrong with it)


def encode_example(tok: Tokenizer, messages: list[dict]) -> tuple[list[int], list[int], int]:
    """A conversation as (token ids, loss mask, UTF-8 bytes of the assistant's text). The plain
    template's first piece is encoded as a prompt (with what the tokenizer puts first, as the server
    encodes it); a template writes its special tokens itself."""
    template = tok.chat_template
    ids, mask, trained_bytes = [], [], 0
    for i, (text, trained) in enumerate(chat.pieces(template, messages)):
        piece = tok.encode_prompt(text) if template is None and i == 0 else tok.encode(text)
        if trained and template is None and tok.eot is not None:
            piece = piece + [tok.eot]
        ids += piece
        mask += [int(trained)] * len(piece)
        trained_bytes += len(text.encode("utf-8")) if trained else 0
    return ids, mask, trained_bytes


@dataclass(frozen=True)
class Packed:
    """A batch's inputs: token ids [B, T] of rows of whole examples and each token's example
    within its row [B, T] (int64, non-decreasing along a row)."""

    idx_BT: torch.Tensor
    doc_BT: torch.Tensor

    def to(self, device) -> Packed:
        return Packed(self.idx_BT.to(device), self.doc_BT.to(device))

    def chunk(self, n: int) -> list[Packed]:
        return [Packed(i, d) for i, d in zip(self.idx_BT.chunk(n), self.doc_BT.chunk(n))]


@dataclass
class _Split:
    tokens: TokenArray
    mask: TokenArray
    lengths: np.ndarray  # int64 [examples]
    starts: np.ndarray  # int64 [examples]: where each begins in the stream
    trained_tokens: int
    trained_bytes: int


class InstructDataset:
    """The Dataset protocol (moe/training/protocol.py) over packed conversations; see the module doc."""

    packed = True  # batches are (Packed, targets)

    def __init__(self, name: str, tokenizer: Tokenizer, splits: dict[str, _Split], seed: int = 0):
        self.name, self.tokenizer, self.splits, self.seed = name, tokenizer, splits, seed
        self.seq_len: int | None = None
        self.drawn = 0  # training rows drawn so far
        self._order: tuple[int, torch.Tensor] | None = None  # (epoch, its row order)

    @classmethod
    def open(cls, path, seed: int = 0) -> InstructDataset:
        """A dataset prepare --format chat wrote, checked as TokenDataset.open checks its shards."""
        path = pathlib.Path(path)
        tokens = TokenDataset.open(path, kind=KIND)
        meta = json.loads((path / META).read_text())
        splits = {}
        for split, arr in (("train", tokens.train), ("val", tokens.val)):
            rec = meta["splits"][split]
            mask = TokenArray(open_shards(path, rec["masks"], MASK_DTYPE, None))
            lengths = np.concatenate(
                [np.zeros(0, np.int64)]
                + [a.astype(np.int64) for a in open_shards(path, rec["examples"], LENGTH_DTYPE, None)]
            )
            if len(mask) != len(arr) or int(lengths.sum()) != len(arr):
                raise ValueError(
                    f"{path}: the {split} split's masks ({len(mask)}) or example lengths ({int(lengths.sum())}) "
                    f"do not cover its {len(arr)} tokens: prepare it again"
                )
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
            splits[split] = _Split(arr, mask, lengths, starts, rec["trained_tokens"], rec["trained_bytes"])
        return cls(tokens.name, tokens.tokenizer, splits, seed)

    # --- the Dataset protocol ---

    def check_seq_len(self, seq_len: int) -> None:
        for split, s in self.splits.items():
            longest = int(s.lengths.max()) if len(s.lengths) else 0
            if longest > seq_len + 1:
                n = int((s.lengths > seq_len + 1).sum())
                raise ValueError(
                    f"dataset {self.name}: {n} {split} example(s) are longer than a row of seq_len + 1 = "
                    f"{seq_len + 1} tokens (the longest: {longest}); examples are packed whole: use "
                    f"--seq-len {longest - 1} or more, or shorter conversations"
                )
        if self.seq_len is not None and seq_len != self.seq_len:
            raise ValueError(f"dataset {self.name}: its rows are packed for seq_len {self.seq_len}, not {seq_len}")
        if self.seq_len is None:
            self.seq_len = seq_len
            order = torch.randperm(len(self.splits["train"].lengths), generator=self._generator("pack"))
            self.rows = {"train": self._pack("train", order.numpy()), "val": self._pack("val", None)}

    def batch(self, split: str, batch_size: int, seq_len: int, generator: torch.Generator, rows=None):
        """The next batch_size packed training rows (the generator is not used: the order is fixed
        by the rows drawn so far); rows: return only those rows of it."""
        if split != "train":
            raise ValueError(f"dataset {self.name}: validation rows come from eval_sets, not batch({split!r})")
        self.check_seq_len(seq_len)
        picks = [self._next() for _ in range(batch_size)]
        return self._rows("train", picks if rows is None else [picks[r] for r in rows])

    def eval_sets(self, batch_size: int, seq_len: int, generator: torch.Generator, rows, n: int) -> dict:
        """{name: (1.0, n batches)}: the validation split's packed rows in order, cycled if fewer."""
        self.check_seq_len(seq_len)
        total = len(self.rows["val"])
        batches = []
        for i in range(n):
            picks = [(i * batch_size + r) % total for r in range(batch_size)]
            batches.append(self._rows("val", picks if rows is None else [picks[r] for r in rows]))
        return {self.name: (1.0, batches)}

    def bits_per_byte(self, nats_per_token: float) -> float:
        """Over the assistant's text: the loss counts its tokens only."""
        val = self.splits["val"]
        return nats_per_token * val.trained_tokens / max(val.trained_bytes, 1) / math.log(2)

    def state(self) -> dict:
        return {"seq_len": self.seq_len, "rows_drawn": self.drawn, "rows_per_epoch": len(self.rows["train"])}

    def load_state(self, state: dict) -> None:
        if state.get("seq_len") is not None:
            self.check_seq_len(state["seq_len"])
        if state.get("rows_per_epoch") not in (None, len(self.rows["train"])):
            raise ValueError(
                f"--resume: the checkpoint packed {state['rows_per_epoch']} rows an epoch, this run "
                f"{len(self.rows['train'])}: resume with the same dataset, seq_len and seed"
            )
        self.drawn = int(state.get("rows_drawn", 0))

    def progress(self) -> dict:
        """{name: {tokens, epochs}}: input tokens drawn (padding included) and the epochs they make."""
        if self.seq_len is None:
            return {self.name: {"tokens": 0, "epochs": 0.0}}
        return {
            self.name: {"tokens": self.drawn * self.seq_len, "epochs": round(self.drawn / len(self.rows["train"]), 4)}
        }

    # --- packing ---

    def _generator(self, what: str) -> torch.Generator:
        return torch.Generator().manual_seed(zlib.crc32(f"{self.seed}/{self.name}/{what}".encode()))

    def _pack(self, split: str, order) -> list[list[int]]:
        """Rows of example indices, each row's tokens at most seq_len + 1, filled in `order`."""
        lengths = self.splits[split].lengths
        rows, row, used = [], [], 0
        for i in range(len(lengths)) if order is None else order:
            n = int(lengths[i])
            if used + n > self.seq_len + 1:
                rows.append(row)
                row, used = [], 0
            row.append(int(i))
            used += n
        return rows + [row] if row else rows

    def _next(self) -> int:
        epoch, j = divmod(self.drawn, len(self.rows["train"]))
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, torch.randperm(len(self.rows["train"]), generator=self._generator(f"epoch{epoch}")))
        self.drawn += 1
        return int(self._order[1][j])

    def _rows(self, split: str, picks: list[int]) -> tuple[Packed, torch.Tensor]:
        """Packed rows -> (Packed inputs, targets), each [B, seq_len]."""
        s, width = self.splits[split], self.seq_len + 1
        ids = np.zeros((len(picks), width), np.int64)  # padding: token 0, ...
        keep = np.zeros((len(picks), width), bool)  # ... never a target
        doc = np.zeros((len(picks), width), np.int64)
        for b, r in enumerate(picks):
            at = 0
            for k, e in enumerate(self.rows[split][r]):
                start, n = int(s.starts[e]), int(s.lengths[e])
                ids[b, at : at + n] = s.tokens.window(start, n)
                keep[b, at : at + n] = s.mask.window(start, n).astype(bool)
                doc[b, at : at + n] = k
                at += n
            doc[b, at:] = len(self.rows[split][r])  # the padding: an example of its own
        targets = np.where(keep[:, 1:] & (doc[:, 1:] == doc[:, :-1]), ids[:, 1:], IGNORE_INDEX)
        return Packed(torch.from_numpy(ids[:, :-1]), torch.from_numpy(doc[:, :-1])), torch.from_numpy(targets)
