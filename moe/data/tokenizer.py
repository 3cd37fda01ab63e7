"""Tokenizers: text <-> token ids. Every dataset and checkpoint carries its own (tokenizer.moe.json).

    bytes         the UTF-8 bytes (vocab 256; the default, the bundled corpus's)
    bpe:N         a byte-level BPE of N tokens trained on your data (Hugging Face `tokenizers`),
                  with one special token, <|endoftext|>, between documents
    cl100k_base   GPT-4's tokenizer (tiktoken; vocab 100,277, the gpt4 preset's). Its encoding file
                  is downloaded by tiktoken on first use; offline, point MOE_CL100K_FILE at a copy
                  (https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken, 1.7 MB)
    hf            a Hugging Face tokenizer.json, as it came with a converted checkpoint

tokenizer.moe.json is one self-contained file: {"kind": ..., "vocab_size": ...} plus, for bpe and hf,
the Hugging Face tokenizer itself under "tokenizer". A checkpoint without one is byte-level (they all
were before tokenizers existed). Two tokenizers are the same when their fingerprints (sha256 of the
file's content) are.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pathlib
from collections.abc import Iterable, Iterator

from moe import checksums

FILE = "tokenizer.moe.json"
EOT = "<|endoftext|>"

# cl100k_base as tiktoken defines it (tiktoken_ext/openai_public.py): the ranks file's sha256, the
# pre-tokenizer pattern and the special tokens. Needed to build it from a file given offline.
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
CL100K_SPECIAL = {
    EOT: 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}
CL100K_HOWTO = (
    "cl100k_base needs tiktoken's encoding file and it could not be fetched ({}). On a machine "
    "with network, download https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken "
    "(1.7 MB), copy it here and set MOE_CL100K_FILE=/path/to/cl100k_base.tiktoken"
)


class Tokenizer:
    """kind, vocab_size, eot (the end-of-text id, or None), encode(text) -> ids, decode(ids) -> text."""

    kind: str
    vocab_size: int
    eot: int | None = None
    chat_template: dict | None = None  # a converted checkpoint's (moe/data/chat.py); saved only when present

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_prompt(self, text: str) -> list[int]:
        """A prompt to generate from: as encode, plus what the tokenizer puts before a sequence (a
        Hugging Face tokenizer's post-processor, e.g. Mixtral's <s>)."""
        return self.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size}

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True).encode()

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()[:16]

    def describe(self) -> str:
        return f"{self.kind} (vocab {self.vocab_size:,})"

    def to_hf_json(self) -> str | None:
        """The same tokenizer as a Hugging Face tokenizer.json, or None where it has no such form."""
        return None

    def save(self, directory) -> pathlib.Path:
        path = pathlib.Path(directory) / FILE
        path.write_bytes(self.to_bytes())
        return path


class ByteTokenizer(Tokenizer):
    kind, vocab_size = "bytes", 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def to_hf_json(self) -> str:
        """A byte-level BPE with no merges whose token i is byte i: the same ids, in tokenizer.json form."""
        from tokenizers import Tokenizer as HFTok
        from tokenizers import decoders, models, pre_tokenizers

        char = _byte_chars()
        tok = HFTok(models.BPE(vocab={char[b]: b for b in range(256)}, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        return tok.to_str()


def _byte_chars() -> list[str]:
    """The printable character byte-level BPE (GPT-2's) shows for each byte: printable Latin-1 bytes
    stand for themselves, the others take code points from 256 up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizers.Tokenizer` (our byte-level BPE, or a converted checkpoint's)."""

    def __init__(self, tok, kind: str):
        self.tok, self.kind = tok, kind
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.eot = tok.token_to_id(EOT)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_prompt(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=True).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def to_dict(self) -> dict:
        chat = {"chat_template": self.chat_template} if self.chat_template is not None else {}
        return {**super().to_dict(), "tokenizer": json.loads(self.tok.to_str()), **chat}

    def to_hf_json(self) -> str:
        return self.tok.to_str()

    @classmethod
    def from_json(cls, text: str, kind: str) -> HFTokenizer:
        from tokenizers import Tokenizer as HFTok

        return cls(HFTok.from_str(text), kind)


class TiktokenTokenizer(Tokenizer):
    kind = "cl100k_base"

    def __init__(self):
        self.enc = _cl100k()
        self.vocab_size, self.eot = self.enc.n_vocab, self.enc.eot_token

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)  # special-token text in a document stays plain text

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        try:
            return self.enc.decode(ids, errors="replace")
        except KeyError:  # ids in the vocabulary's gaps (cl100k has 16) name no bytes: show U+FFFD for them
            pieces = []
            for i in ids:
                try:
                    pieces.append(self.enc.decode_single_token_bytes(i))
                except KeyError:
                    pieces.append("\ufffd".encode())
            return b"".join(pieces).decode("utf-8", errors="replace")


def _cl100k():
    import tiktoken

    path = os.environ.get("MOE_CL100K_FILE")
    if path is None:
        try:
            return tiktoken.get_encoding("cl100k_base")  # tiktoken's cache, else a download
        except Exception as e:  # requests, SSL, DNS: whatever the missing network raises
            raise ValueError(CL100K_HOWTO.format(f"{type(e).__name__}: {e}")) from None
    if not pathlib.Path(path).is_file():
        raise ValueError(f"MOE_CL100K_FILE={path}: no such file. " + CL100K_HOWTO.format("no file"))
    contents = pathlib.Path(path).read_bytes()
    if hashlib.sha256(contents).hexdigest() != CL100K_SHA256:
        raise ValueError(f"MOE_CL100K_FILE={path} is not cl100k_base's encoding file (its sha256 differs)")
    # the .tiktoken format: one "base64(token bytes) rank" per line
    ranks = {
        base64.b64decode(token): int(rank) for token, rank in (line.split() for line in contents.splitlines() if line)
    }
    return tiktoken.Encoding(
        "cl100k_base", pat_str=CL100K_PATTERN, mergeable_ranks=ranks, special_tokens=CL100K_SPECIAL
    )


def train_bpe(texts: Iterator[str], vocab_size: int) -> HFTokenizer:
    """A byte-level BPE of vocab_size tokens (256 byte tokens, <|endoftext|>, then merges) learned
    from `texts` (streamed). Byte-level: every string encodes, and decode(encode(s)) == s."""
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    return HFTokenizer(tok, "bpe")


def parse_spec(spec: str) -> tuple[str, int | None]:
    """'bytes' | 'bpe:N' | 'cl100k_base' -> (kind, N or None), or a ValueError naming the choices."""
    kind, _, n = spec.partition(":")
    if kind == "bpe":
        if not n.isdigit() or int(n) <= 257:
            raise ValueError(
                f"--tokenizer {spec!r}: bpe:N needs a vocabulary size N > 257 (256 bytes, "
                "<|endoftext|>, then merges), e.g. bpe:4096"
            )
        return kind, int(n)
    if spec in ("bytes", "cl100k_base"):
        return spec, None
    raise ValueError(f"unknown tokenizer {spec!r}: choose bytes, bpe:N (e.g. bpe:4096) or cl100k_base")


def from_dict(data: dict, where: str) -> Tokenizer:
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == "bytes":
        tok = ByteTokenizer()
    elif kind == "cl100k_base":
        tok = TiktokenTokenizer()
    elif kind in ("bpe", "hf") and isinstance(data.get("tokenizer"), dict):
        try:
            tok = HFTokenizer.from_json(json.dumps(data["tokenizer"]), kind)
        except Exception as e:  # tokenizers raises its own Exception type for a bad file
            raise ValueError(f"{where}: not a readable Hugging Face tokenizer ({e})") from None
    else:
        raise ValueError(f"{where}: unknown tokenizer kind {kind!r} (expected bytes, bpe, hf or cl100k_base)")
    chat = data.get("chat_template")
    if chat is not None:
        if not isinstance(chat, dict) or not isinstance(chat.get("template"), str):
            raise ValueError(f"{where}: chat_template must be an object with a template string")
        tok.chat_template = chat
    saved = data.get("vocab_size")
    if saved is not None and saved != tok.vocab_size:
        raise ValueError(f"{where}: records vocab_size {saved} but the tokenizer has {tok.vocab_size}")
    return tok


def load(directory) -> Tokenizer:
    """The tokenizer saved in a dataset or checkpoint directory (bytes if it holds none)."""
    path = pathlib.Path(directory) / FILE
    if (path.parent / checksums.FILE).exists() or checksums.expected(path.parent):  # a checkpoint
        files = checksums.recorded(path.parent)
        if path.exists() or FILE in files:  # checked before it is parsed; one it lists must be there
            checksums.check(path, files)
    if not path.exists():  # (a dataset's tokenizer is checked by its fingerprint in dataset.json)
        return ByteTokenizer()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable tokenizer file ({e})") from None
    return from_dict(data, str(path))


def from_hf_file(path) -> HFTokenizer:
    """A Hugging Face tokenizer.json (as shipped beside a Mixtral checkpoint)."""
    try:
        return HFTokenizer.from_json(pathlib.Path(path).read_text(), "hf")
    except Exception as e:
        raise ValueError(f"{path}: not a readable Hugging Face tokenizer.json ({e})") from None
