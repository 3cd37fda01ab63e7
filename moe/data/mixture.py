"""Several prepared datasets trained on as one: each source with an epoch count or a weight.

    train --data web=data/web:epochs=2 --data code=data/code:epochs=4      (or [[data]] tables in the TOML)

A training example is a window of seq_len + 1 tokens; source s's train split holds
n_s = (tokens - 1) // seq_len of them, cut at stride seq_len, so an epoch of s is every one of its n_s
windows once, in an order shuffled afresh each epoch (a permutation seeded by the run's seed, the
source's name and the epoch). Which source the g-th row of the run comes from is Megatron's blending
rule, in integers so it is exact: give source s the integer share c_s (epochs: epochs_s x n_s; weights:
the weights over a common denominator), C = sum c_s, and let row g go to the source furthest behind,
argmax_s c_s (g + 1) - C drawn_s (the lowest index on a tie). Every prefix of the run is then within
one row of its share of each source, and after C rows (the length epochs give) each source has been
drawn exactly c_s times: epochs_s whole epochs.

Everything is a function of the rows drawn so far, so `state()` (rows drawn per source) is all a
checkpoint keeps and a resumed run continues exactly. Validation is per source (each its own
validation split) and overall, the weighted mean of the sources' losses.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass
from fractions import Fraction

import torch

from moe.data.dataset import TokenDataset, as_batch

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_OPTION = re.compile(r"(epochs|weight)=([^:=]+)")


@dataclass(frozen=True)
class Source:
    name: str
    path: str
    epochs: float | None = None
    weight: float | None = None


def parse_source(text: str) -> Source | None:
    """`NAME=PATH[:epochs=N|:weight=W]` as a Source; None for a plain path (not NAME=...)."""
    name, sep, rest = text.partition("=")
    if not sep or not _NAME.fullmatch(name):
        return None
    options = {}
    while (m := _OPTION.fullmatch(rest.rpartition(":")[2])) and ":" in rest:
        rest = rest.rpartition(":")[0]
        try:
            options[m[1]] = float(m[2])
        except ValueError:
            raise ValueError(f"--data {text}: {m[1]}={m[2]!r} is not a number") from None
    return source_from_dict({"name": name, "path": rest, **options}, f"--data {text}")


def source_from_dict(d: dict, where: str) -> Source:
    """A `[[data]]` table (name, path, and epochs or weight) as a Source, checked."""
    unknown = sorted(set(d) - {"name", "path", "epochs", "weight"})
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} (a source has name, path, and epochs or weight)")
    if not isinstance(d.get("name"), str) or not _NAME.fullmatch(d["name"]):
        raise ValueError(f"{where}: a source needs a name of letters, digits, '_', '-' or '.', got {d.get('name')!r}")
    if not isinstance(d.get("path"), str) or not d["path"]:
        raise ValueError(f"{where}: source {d['name']!r} needs a path (a directory `prepare` wrote)")
    if ("epochs" in d) == ("weight" in d):
        raise ValueError(f"{where}: source {d['name']!r} needs one of epochs=N or weight=W")
    for key in ("epochs", "weight"):
        value = d.get(key)
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{where}: source {d['name']!r} has {key}={value!r}; it must be a positive number")
    return Source(d["name"], d["path"], d.get("epochs"), d.get("weight"))


class Mixture:
    """A Dataset (moe/training/protocol.py) over several TokenDatasets; see the module doc."""

    def __init__(self, sources: list[tuple[Source, TokenDataset]], seed: int = 0):
        if not sources:
            raise ValueError("a mixture needs at least one source")
        names = [s.name for s, _ in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"--data: source names must differ, got {names}")
        if len({s.epochs is None for s, _ in sources}) > 1:
            raise ValueError("--data: give every source epochs=N, or every source weight=W, not a mix of the two")
        first = sources[0][1].tokenizer
        for s, ds in sources[1:]:
            if ds.tokenizer.fingerprint != first.fingerprint:
                raise ValueError(
                    f"--data: source {s.name!r} ({s.path}) uses the {ds.tokenizer.describe()} tokenizer, "
                    f"source {names[0]!r} the {first.describe()} one: one run trains on one tokenizer's ids"
                )
        self.sources, self.seed = sources, seed
        self.name = "+".join(names)
        self.tokenizer = first
        self.by_epochs = sources[0][0].epochs is not None
        self.seq_len: int | None = None
        self.drawn = [0] * len(sources)  # train rows drawn so far, per source
        self._perm: dict[int, tuple[int, torch.Tensor]] = {}  # source -> (epoch, its window order)

    @classmethod
    def open(cls, sources: list[Source], seed: int = 0) -> Mixture:
        return cls([(s, TokenDataset.open(s.path)) for s in sources], seed)

    # --- the Dataset protocol ---

    def check_seq_len(self, seq_len: int) -> None:
        for _, ds in self.sources:
            ds.check_seq_len(seq_len)
        if self.seq_len is not None and seq_len != self.seq_len:
            raise ValueError(f"mixture {self.name}: its windows are {self.seq_len} tokens, not {seq_len}")
        if self.seq_len is None:  # what the blend is made of, fixed with the windows' length
            self.seq_len = seq_len
            self.windows = [(len(ds.train) - 1) // seq_len for _, ds in self.sources]  # per source
            self.shares = self._shares()

    def batch(self, split: str, batch_size: int, seq_len: int, generator: torch.Generator, rows=None):
        """The next batch_size rows of the blend (train; the generator is not used: the order is
        fixed by the rows drawn so far); rows: return only those rows of it."""
        if split != "train":
            raise ValueError(f"mixture {self.name}: validation is per source (eval_sets), not one {split} split")
        self.check_seq_len(seq_len)
        picks = [self._next() for _ in range(batch_size)]
        keep = picks if rows is None else [picks[r] for r in rows]
        return as_batch([self.sources[s][1].train.window(w * seq_len, seq_len + 1) for s, w in keep])

    def eval_sets(self, batch_size: int, seq_len: int, generator: torch.Generator, rows, n: int) -> dict:
        """{source name: (weight, n validation batches of that source)}, weights summing to 1."""
        self.check_seq_len(seq_len)
        total = sum(self.shares)
        return {
            s.name: (c / total, [ds.batch("val", batch_size, seq_len, generator, rows) for _ in range(n)])
            for (s, ds), c in zip(self.sources, self.shares)
        }

    def bits_per_byte(self, nats_per_token: float) -> float:
        """Overall: the mean loss times the mean tokens per byte, both weighted by the blend. Exact when
        the sources' tokens per byte agree; otherwise close, not the weighted mean of their bits per byte."""
        total = sum(self.shares)
        per_byte = sum(c / total * ds.val_tokens_per_byte for (_, ds), c in zip(self.sources, self.shares))
        return nats_per_token * per_byte / math.log(2)

    def state(self) -> dict:
        """Rows drawn per source, and the blend they were drawn from (shares and windows per source)."""
        names = [s.name for s, _ in self.sources]
        return {
            "seq_len": self.seq_len,
            "drawn": dict(zip(names, self.drawn)),
            "shares": dict(zip(names, self.shares)),
            "windows": dict(zip(names, self.windows)),
        }

    def load_state(self, state: dict) -> None:
        if state.get("seq_len") is not None:
            self.check_seq_len(state["seq_len"])  # the windows the rows counted (a ValueError if not this run's)
        now = self.state()
        for key in ("drawn", "shares", "windows"):
            saved = state.get(key, {})
            if set(saved) != set(now[key]) or (key != "drawn" and saved != now[key]):
                raise ValueError(
                    f"--resume: the checkpoint's mixture had {key} {saved}, this run's {now[key]}: resume with "
                    "the same --data sources, epochs or weights, and datasets"
                )
        self.drawn = [int(state["drawn"][s.name]) for s, _ in self.sources]

    def progress(self) -> dict:
        """{name: {tokens, epochs}}: input tokens drawn from each source and the epochs they make."""
        return {
            s.name: {"tokens": d * self.seq_len, "epochs": round(d / n, 4)}
            for (s, _), d, n in zip(self.sources, self.drawn, self.windows)
        }

    # --- the blend ---

    def epoch_rows(self) -> int | None:
        """Rows in a run of exactly the sources' epoch counts (None when they give weights)."""
        return sum(self.shares) if self.by_epochs else None

    def _shares(self) -> list[int]:
        if self.by_epochs:
            counts = [Fraction(str(s.epochs)) * n for (s, _), n in zip(self.sources, self.windows)]  # as written
            for (s, _), c in zip(self.sources, counts):
                if c.denominator != 1:
                    raise ValueError(f"--data {s.name}: {s.epochs} epochs of its windows is not a whole number of rows")
            return [int(c) for c in counts]
        weights = [Fraction(str(s.weight)) for s, _ in self.sources]  # the decimal as written: exact
        common = math.lcm(*(w.denominator for w in weights))
        return [int(w * common) for w in weights]

    def _next(self) -> tuple[int, int]:
        """The next row's (source, window index), and count it drawn."""
        total, g = sum(self.shares), sum(self.drawn)
        s = max(range(len(self.shares)), key=lambda i: (self.shares[i] * (g + 1) - total * self.drawn[i], -i))
        epoch, j = divmod(self.drawn[s], self.windows[s])
        if self._perm.get(s, (None,))[0] != epoch:
            key = zlib.crc32(f"{self.seed}/{self.sources[s][0].name}/{epoch}".encode())
            order = torch.randperm(self.windows[s], generator=torch.Generator().manual_seed(key))
            self._perm[s] = (epoch, order)
        self.drawn[s] += 1
        return s, int(self._perm[s][1][j])
