"""python -m moe prepare: text files, directories of them or JSONL -> a dataset (moe/data/dataset.py).

    prepare(["notes/", "more.jsonl"], "bpe:4096", "data/mine")

Documents: a text file is one document; a JSONL file holds one per line, in its "text" field; a
directory contributes every file under it (sorted, hidden ones skipped); .gz files are read
decompressed; `shakespeare` names the bundled corpus (split as training has always split it).
With format="chat" every source is JSONL of conversations, {"messages": [{role, content}, ...]}
with at least one assistant message, written as instruction data (moe/data/instruct.py).

The tokenizer: bytes, bpe:N (learned here), cl100k_base, or a directory holding one (a checkpoint's
step or run directory, or a dataset): fine-tuning data for that model, with its chat template.

The split is by document: with val_data, those files are the validation split; else a document goes
to validation when a hash of its name (its path inside the directory given, or its file name; plus
the line for JSONL) falls below val_fraction, so the split is deterministic, survives moving the
corpus, and never depends on the order sources are given in.

Three streaming passes, so a corpus larger than memory works: (1) check every source (readable,
UTF-8, not empty, JSONL records with a "text" string) and hash it, before anything is written;
(2) for bpe:N, learn the BPE from the training documents; (3) encode and write the shards. Text
files are read in pieces of about a megabyte, cut only before a line that starts with a
non-space character, so a byte-level BPE sees the same pre-tokens as with the whole file.

Everything is written into a scratch directory beside `out` and renamed to `out` when complete:
an interrupted prepare leaves no dataset behind (a rerun removes the dead scratch directory), and
--overwrite replaces an old dataset only once the new one is whole.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import hashlib
import json
import os
import pathlib
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from moe.data import chat, instruct
from moe.data import tokenizer as tokenizers
from moe.data.dataset import BUNDLED, CORPUS, FORMAT, META, bundled_split, token_dtype
from moe.files import clean_dead, make_scratch, replace_whole, scratch_name

CHUNK_BYTES = 1 << 20
_SUFFIX = {"": "bin", "masks": "mask", "examples": "lengths"}  # a shard's file, by what it holds
SHARD_TOKENS = 100_000_000  # 200 MB of uint16 per shard


class BadSource(ValueError):
    """A source that cannot be used: empty, not UTF-8, a bad JSONL record."""


@dataclass
class Source:
    path: str  # as given (or "shakespeare")
    file: pathlib.Path
    split: str | None  # "val" for --val-data files, None: by document hash
    name: str = ""  # what the split hashes: the path inside a given directory, else the file's name
    sha256: str = ""
    bytes: int = 0
    documents: int = 0


@dataclass
class Document:
    split: str
    pieces: Callable[[], Iterator[str]]  # the text, in pieces (called once per pass)
    messages: list | None = None  # a conversation (format "chat")


@dataclass
class _Split:
    shards: list = field(default_factory=list)
    tokens: int = 0
    documents: int = 0
    bytes: int = 0
    chat: dict = field(default_factory=dict)  # format "chat": masks, examples, trained_tokens, trained_bytes


def _open_bytes(file: pathlib.Path):
    return gzip.open(file, "rb") if file.suffix == ".gz" else open(file, "rb")


def _expand(paths, split) -> list[Source]:
    out = []
    for given in paths:
        p = pathlib.Path(given)
        if str(given) == BUNDLED and not p.exists():
            out.append(Source(BUNDLED, CORPUS, "bundled"))
        elif p.is_dir():
            files = sorted(
                f
                for f in p.rglob("*")
                if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
            if not files:
                raise ValueError(f"--data {given}: the directory holds no files")
            out += [Source(str(f), f, split, f.relative_to(p).as_posix()) for f in files]
        elif p.is_file():
            out.append(Source(str(given), p, split, p.name))
        else:
            raise ValueError(f"--data {given}: no such file or directory")
    return out


def _is_jsonl(file: pathlib.Path) -> bool:
    return file.name.removesuffix(".gz").endswith(".jsonl")


def _scan(src: Source, fmt: str) -> None:
    """Hash the source and check it whole (pass 1); raise BadSource naming what is wrong."""
    if fmt == "chat" and not _is_jsonl(src.file):
        raise BadSource(f'{src.path}: --format chat reads JSONL files of {{"messages": [...]}} rows')
    h, size, docs, nonblank = hashlib.sha256(), 0, 0, False
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with _open_bytes(src.file) as f:
            for lineno, line in enumerate(f, 1):
                h.update(line)
                size += len(line)
                try:
                    text = decoder.decode(line)
                except UnicodeDecodeError as e:
                    raise BadSource(
                        f"{src.path}: not UTF-8 text (line {lineno}, byte {e.start}: {line[e.start : e.start + 4]!r})"
                    ) from None
                if _is_jsonl(src.file) and text.strip():
                    docs += _check_record(src, lineno, text, fmt)
                nonblank = nonblank or bool(text.strip())
    except (OSError, EOFError) as e:  # unreadable, or a damaged .gz
        raise BadSource(f"{src.path}: cannot be read ({type(e).__name__}: {e})") from None
    if not nonblank or (_is_jsonl(src.file) and not docs):
        raise BadSource(f"{src.path}: empty (no text)")
    src.sha256, src.bytes, src.documents = h.hexdigest(), size, docs if _is_jsonl(src.file) else 1


def _check_record(src: Source, lineno: int, line: str, fmt: str) -> int:
    try:
        record = json.loads(line)
    except ValueError as e:
        raise BadSource(f"{src.path}:{lineno}: not a JSON object ({e})") from None
    if fmt == "chat":
        _check_messages(record.get("messages") if isinstance(record, dict) else None, f"{src.path}:{lineno}")
        return 1
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise BadSource(f'{src.path}:{lineno}: a JSONL record needs a "text" string')
    return 1 if record["text"] else 0


def _check_messages(messages, where: str) -> None:
    roles = chat.ROLES
    if not isinstance(messages, list) or not messages:
        raise BadSource(f'{where}: a chat record needs "messages", a non-empty list of {{role, content}}')
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in roles or not isinstance(m.get("content"), str):
            raise BadSource(f"{where}: messages[{i}] needs a role ({', '.join(roles)}) and a content string")
    if not any(m["role"] == "assistant" for m in messages):
        raise BadSource(f"{where}: the conversation has no assistant message: nothing to learn from it")


def hash_split(name: str, val_fraction: float) -> str:
    """'val' for a name whose hash falls below val_fraction, else 'train': a split that never depends on order."""
    u = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64
    return "val" if u < val_fraction else "train"


def _text_pieces(file: pathlib.Path) -> Iterator[str]:
    """A text file in pieces of about CHUNK_BYTES, cut only before a line starting with non-space."""
    buf, size = [], 0
    with _open_bytes(file) as f:
        for raw in f:
            line = raw.decode("utf-8")
            if size >= CHUNK_BYTES and line[:1] and not line[:1].isspace():
                yield "".join(buf)
                buf, size = [], 0
            buf.append(line)
            size += len(raw)
    if buf:
        yield "".join(buf)


def _documents(src: Source, val_fraction: float, fmt: str) -> Iterator[Document]:
    if src.split == "bundled":
        for split, part in zip(("train", "val"), bundled_split(val_fraction)):
            yield Document(split, lambda part=part: iter([part.decode("utf-8")]))
        return
    if not _is_jsonl(src.file):
        yield Document(src.split or hash_split(src.name, val_fraction), lambda: _text_pieces(src.file))
        return
    with _open_bytes(src.file) as f:
        for lineno, line in enumerate(f, 1):
            if fmt == "chat" and line.strip():
                messages = json.loads(line)["messages"]
                yield Document(
                    src.split or hash_split(f"{src.name}:{lineno}", val_fraction),
                    lambda m=messages: iter([chat.render(None, m, add_generation_prompt=False)]),  # (BPE learning)
                    messages,
                )
                continue
            text = json.loads(line)["text"] if line.strip() else ""
            if text:
                yield Document(
                    src.split or hash_split(f"{src.name}:{lineno}", val_fraction), lambda text=text: iter([text])
                )


class _ShardWriter:
    """Appends token ids to <split>-NNNNN.bin files of at most shard_tokens tokens, hashing as it goes."""

    def __init__(
        self, directory: pathlib.Path, split: str, dtype: np.dtype, shard_tokens: int, record: _Split, what=""
    ):
        self.dir, self.split, self.dtype, self.cap, self.record = directory, split, dtype, shard_tokens, record
        self.what = what  # "": the token shards (.bin); "masks" or "examples": instruction data's other files
        self.shards = record.chat.setdefault(what, []) if what else record.shards
        self.f = None

    def _open(self):
        name = f"{self.split}-{len(self.shards):05d}.{_SUFFIX[self.what]}"
        self.f, self.h, self.n = open(self.dir / name, "wb"), hashlib.sha256(), 0
        self.shards.append({"file": name, "tokens": 0, "sha256": ""})

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self.f is None or self.n == self.cap:
                self.close()
                self._open()
            take = ids[: self.cap - self.n]
            data = take.astype(self.dtype).tobytes()  # little-endian on every machine we run on
            self.f.write(data)
            self.h.update(data)
            self.n += len(take)
            self.record.tokens += 0 if self.what else len(take)
            ids = ids[len(take) :]

    def close(self) -> None:
        if self.f is not None:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
            self.shards[-1].update(tokens=self.n, sha256=self.h.hexdigest())
            self.f = None


def _saved_tokenizer(spec: str) -> tokenizers.Tokenizer | None:
    """The tokenizer a directory holds (a run directory: its latest checkpoint's), None if `spec`
    names no directory."""
    d = pathlib.Path(spec)
    if not d.is_dir():
        return None
    if not (d / tokenizers.FILE).is_file() and (d / "latest").is_file():  # a run directory
        d = d / (d / "latest").read_text().strip()
    if not (d / tokenizers.FILE).is_file():
        raise ValueError(
            f"--tokenizer {spec}: the directory holds no {tokenizers.FILE} (a checkpoint, run or "
            "dataset directory has one)"
        )
    return tokenizers.load(d)


def _make_tokenizer(spec: str, docs: Callable[[], Iterator[Document]], log) -> tokenizers.Tokenizer:
    kind, n = tokenizers.parse_spec(spec)
    if kind == "bytes":
        return tokenizers.ByteTokenizer()
    if kind == "cl100k_base":
        return tokenizers.TiktokenTokenizer()
    t = time.perf_counter()
    tok = tokenizers.train_bpe((piece for d in docs() if d.split == "train" for piece in d.pieces()), n)
    log(
        f"learned a byte-level BPE of {tok.vocab_size:,} tokens from the training documents in "
        f"{time.perf_counter() - t:.1f} s"
        + (f" (asked for {n:,}: the text holds no more merges)" if tok.vocab_size < n else "")
    )
    return tok


def _scratch(out: pathlib.Path) -> pathlib.Path:
    """This process's scratch directory beside `out`, after removing those of dead prepares."""
    clean_dead(out.parent, f"{glob.escape(f'.{out.name}.tmp')}-*")
    return make_scratch(out.parent / scratch_name(f".{out.name}.tmp"))


def _check_out(out: pathlib.Path, overwrite: bool) -> None:
    if out.exists() and not (out / META).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} exists and is not a dataset: choose another path (nothing was written)")
    if (out / META).is_file() and not overwrite:
        raise ValueError(
            f"--out {out} already holds a dataset: pass --overwrite to replace it (the old one "
            "is kept until the new one is complete)"
        )


def prepare(
    data,
    tokenizer: str,
    out,
    *,
    format: str = "text",
    val_data=(),
    val_fraction: float = 0.05,
    on_bad: str = "stop",
    overwrite: bool = False,
    shard_tokens: int = SHARD_TOKENS,
    progress: bool | None = None,
    log=print,
) -> dict:
    """Write a dataset to `out`; returns its description (also out/dataset.json). See the module doc."""
    out = pathlib.Path(out)
    if format not in ("text", "chat"):
        raise ValueError(f"--format must be text or chat, got {format!r}")
    saved = _saved_tokenizer(tokenizer)
    if saved is None:
        tokenizers.parse_spec(tokenizer)  # a bad spec fails before any reading
    if not 0 < val_fraction < 1:
        raise ValueError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    if on_bad not in ("stop", "skip"):
        raise ValueError(f"--on-bad must be stop or skip, got {on_bad!r}")
    if not isinstance(shard_tokens, int) or shard_tokens < 1:
        raise ValueError(f"shard_tokens must be a positive integer, got {shard_tokens!r}")
    _check_out(out, overwrite)
    sources = _expand(data, "train" if val_data else None) + _expand(val_data, "val")
    if not sources:
        raise ValueError("--data: give at least one file or directory")

    kept, skipped = [], []
    for src in sources:  # pass 1
        try:
            _scan(src, format)
            kept.append(src)
        except BadSource as e:
            if on_bad == "stop":
                raise ValueError(f"{e} (pass --on-bad skip to leave such files out)") from None
            skipped.append({"path": src.path, "reason": str(e)})
            log(f"skipping {e}")
    if not kept:
        raise ValueError("no usable text: every source was skipped")

    def documents() -> Iterator[Document]:
        for src in kept:
            yield from _documents(src, val_fraction, format)

    counts = {"train": 0, "val": 0}
    for d in documents():
        counts[d.split] += 1
    if not counts["train"] or not counts["val"]:
        empty = "training" if not counts["train"] else "validation"
        raise ValueError(
            f"the {empty} split would be empty ({counts['train']} training and {counts['val']} "
            f"validation documents from {sum(counts.values())}): give more documents (e.g. one file "
            "per chapter), a different --val-fraction, or name validation files with --val-data"
        )

    tok = saved if saved is not None else _make_tokenizer(tokenizer, documents, log)  # pass 2 (bpe only)
    dtype = token_dtype(tok.vocab_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _scratch(out)
    try:
        splits = {"train": _Split(), "val": _Split()}
        writers = {s: _ShardWriter(tmp, s, dtype, shard_tokens, splits[s]) for s in splits}
        extra = {  # instruction data's masks and example lengths
            s: [_ShardWriter(tmp, s, d, shard_tokens, splits[s], what) for d, what in CHAT_FILES]
            for s in (splits if format == "chat" else ())
        }
        show = sys.stderr.isatty() if progress is None else progress
        with tqdm(
            total=sum(s.bytes for s in kept),
            unit="B",
            unit_scale=True,
            disable=not show,
            desc=f"encoding ({tok.describe()})",
        ) as bar:
            for doc in documents():  # pass 3
                rec = splits[doc.split]
                if doc.messages is not None:
                    _write_example(tok, doc.messages, writers[doc.split], *extra[doc.split], rec, bar)
                    continue
                for piece in doc.pieces():
                    ids = tok.encode(piece)
                    writers[doc.split].write(np.asarray(ids, dtype=np.int64))
                    n = len(piece.encode("utf-8"))
                    rec.bytes += n
                    bar.update(n)
                if tok.eot is not None:
                    writers[doc.split].write(np.array([tok.eot], dtype=np.int64))
                rec.documents += 1
        for w in [*writers.values(), *(w for ws in extra.values() for w in ws)]:
            w.close()
        tok.save(tmp)
        meta = {
            "format": FORMAT,
            "tokenizer": {**_tok_meta(tok), "spec": tokenizer},
            "dtype": dtype.name,
            **({"kind": instruct.KIND} if format == "chat" else {}),
            "splits": {s: _described(r) for s, r in splits.items()},
            "val_fraction": None if val_data else val_fraction,
            "sources": [
                {
                    "path": s.path,
                    "sha256": s.sha256,
                    "bytes": s.bytes,
                    "documents": s.documents,
                    "split": s.split or "by document",
                }
                for s in kept
            ],
            "skipped": skipped,
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        (tmp / META).write_text(json.dumps(meta, indent=1))
        replace_whole(tmp, out)  # an old dataset there goes only afterwards
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    s = meta["splits"]
    log(
        f"wrote {out}: {s['train']['tokens']:,} training and {s['val']['tokens']:,} validation tokens "
        f"({s['train']['documents']:,} + {s['val']['documents']:,} documents, {tok.describe()}, {dtype.name}, "
        f"{len(s['train']['shards']) + len(s['val']['shards'])} shards)"
    )
    return meta


CHAT_FILES = ((instruct.MASK_DTYPE, "masks"), (instruct.LENGTH_DTYPE, "examples"))


def _write_example(tok, messages, tokens: _ShardWriter, masks: _ShardWriter, lengths: _ShardWriter, rec, bar):
    """One conversation: its tokens, their loss mask and its length (moe/data/instruct.py)."""
    try:
        ids, mask, trained_bytes = instruct.encode_example(tok, messages)
    except ValueError as e:  # the template refused it, or rewrites earlier turns
        raise ValueError(f"{e}: {json.dumps(messages)[:200]}") from None
    if not any(mask):
        raise ValueError(f"a conversation whose assistant wrote no tokens: {json.dumps(messages)[:200]}")
    tokens.write(np.asarray(ids, dtype=np.int64))
    masks.write(np.asarray(mask, dtype=np.int64))
    lengths.write(np.array([len(ids)], dtype=np.int64))
    n = sum(len(m["content"].encode("utf-8")) for m in messages)
    rec.bytes += n
    rec.chat["trained_tokens"] = rec.chat.get("trained_tokens", 0) + sum(mask)
    rec.chat["trained_bytes"] = rec.chat.get("trained_bytes", 0) + trained_bytes
    rec.documents += 1
    bar.update(n)


def _described(rec: _Split) -> dict:
    out = {k: v for k, v in vars(rec).items() if k != "chat"}
    return {**out, **rec.chat}


def _tok_meta(tok) -> dict:
    return {"kind": tok.kind, "vocab_size": tok.vocab_size, "eot": tok.eot, "fingerprint": tok.fingerprint}
