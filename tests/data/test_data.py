"""Your own data: tokenizers, `prepare` (split by document, shards, restartable), `train --data`,
`generate` with the checkpoint's tokenizer, and every bad input refused with a message naming it."""

import base64
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from moe.__main__ import main
from moe.data import TokenArray, TokenDataset, bundled_split
from moe.data import dataset as dataset_mod
from moe.data import prepare as prepare_mod
from moe.data import tokenizer as tokenizers
from moe.data.prepare import prepare

QUIET = dict(progress=False, log=lambda *_: None)
TEXT = bundled_split(0.05)[0][:150_000].decode("utf-8")
UNSEEN = "naïve café ✓ — 東京 🙂\ttabs\r\n"


@pytest.fixture
def corpus(tmp_path):
    """24 text documents in a directory tree and a JSONL file of 8 more; returns (paths, texts)."""
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    texts = [TEXT[i * 4000 : (i + 1) * 4000] for i in range(32)]
    for i, t in enumerate(texts[:24]):
        (root / ("sub" if i % 2 else "") / f"doc{i:02d}.txt").write_text(t, encoding="utf-8")
    (root / ".hidden.txt").write_text("never read")
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts[24:])))
    return [root, jsonl], texts


def _docs(ds_split: TokenArray, tok) -> list[str]:
    ids = ds_split.window(0, len(ds_split)).tolist()
    docs, cur = [], []
    for i in ids:
        if i == tok.eot:
            docs.append(tok.decode(cur))
            cur = []
        else:
            cur.append(i)
    assert not cur  # every document ends with <|endoftext|>
    return docs


# ------------------------------------------------------------------------------------- tokenizers


def test_byte_and_bpe_tokenizers_round_trip_any_text():
    assert tokenizers.ByteTokenizer().encode("é") == [0xC3, 0xA9]
    bpe = tokenizers.train_bpe(iter([TEXT]), 512)
    assert bpe.vocab_size == 512 and bpe.eot is not None
    for s in (TEXT[:3000], UNSEEN, ""):
        assert bpe.decode(bpe.encode(s)) == s
    assert len(TEXT.encode()) / len(bpe.encode(TEXT)) > 2.0  # merges learned: >2 bytes per token
    again = tokenizers.from_dict(json.loads(bpe.to_bytes()), "test")
    assert again.fingerprint == bpe.fingerprint and again.encode(UNSEEN) == bpe.encode(UNSEEN)


def test_a_hugging_face_post_processor_starts_prompts_not_documents():
    """Mixtral's tokenizer.json puts <s> before a sequence: generate's prompts get it, prepared documents not."""
    from tokenizers import Tokenizer as HFTok
    from tokenizers import processors

    bpe = tokenizers.train_bpe(iter([TEXT]), 300)
    tok = HFTok.from_str(bpe.to_hf_json())
    tok.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bpe.eot)]
    )
    hf = tokenizers.HFTokenizer.from_json(tok.to_str(), "hf")
    assert hf.encode_prompt("the king") == [bpe.eot] + hf.encode("the king")
    assert bpe.encode_prompt("the king") == bpe.encode("the king")


@pytest.mark.parametrize(
    "spec, message", [("bpe:100", "N > 257"), ("bpe:lots", "N > 257"), ("wordpiece", "unknown tokenizer")]
)
def test_bad_tokenizer_spec(spec, message):
    with pytest.raises(ValueError, match=message):
        tokenizers.parse_spec(spec)


def _mini_cl100k(tmp_path, monkeypatch):
    """A tiktoken-format ranks file (256 bytes + 2 merges) standing in for cl100k_base's, accepted
    by patching the expected hash: the same loading path as the real file."""
    ranks = [bytes([b]) for b in range(256)] + [b"th", b"the"]
    content = b"".join(base64.b64encode(t) + b" " + str(r).encode() + b"\n" for r, t in enumerate(ranks))
    f = tmp_path / "cl100k_base.tiktoken"
    f.write_bytes(content)
    monkeypatch.setattr(tokenizers, "CL100K_SHA256", hashlib.sha256(content).hexdigest())
    monkeypatch.setenv("MOE_CL100K_FILE", str(f))
    return f


def test_cl100k_from_an_offline_file(tmp_path, monkeypatch):
    _mini_cl100k(tmp_path, monkeypatch)
    tok = tokenizers.TiktokenTokenizer()
    assert tok.vocab_size == 100277 and tok.eot == 100257  # the special tokens set the vocabulary's end
    assert tok.encode("the") == [257] and tok.decode(tok.encode(UNSEEN)) == UNSEEN
    assert dataset_mod.token_dtype(tok.vocab_size) == np.uint32 and dataset_mod.token_dtype(2**16) == np.uint16
    monkeypatch.setattr(tokenizers, "CL100K_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="not cl100k_base's encoding file"):
        tokenizers.TiktokenTokenizer()
    monkeypatch.setenv("MOE_CL100K_FILE", str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="MOE_CL100K_FILE=.*no such file"):
        tokenizers.TiktokenTokenizer()


def test_cl100k_real_when_available():
    try:
        tok = tokenizers.TiktokenTokenizer()
    except ValueError as e:
        assert "MOE_CL100K_FILE" in str(e)  # the error says how to make it available
        pytest.skip("cl100k_base's encoding file is not available offline here")
    assert tok.vocab_size == 100277 and tok.encode("hello world") == [15339, 1917]


# ---------------------------------------------------------------------------------------- prepare


def test_prepare_splits_by_document_into_shards(corpus, tmp_path):
    paths, texts = corpus
    meta = prepare(paths, "bpe:400", tmp_path / "ds", val_fraction=0.25, shard_tokens=500, **QUIET)
    ds = TokenDataset.open(tmp_path / "ds")
    train, val = _docs(ds.train, ds.tokenizer), _docs(ds.val, ds.tokenizer)
    assert sorted(train + val) == sorted(texts)  # every document whole, in exactly one split
    assert 0 < len(val) < len(texts) / 2 and meta["splits"]["val"]["documents"] == len(val)
    assert ds.val_bytes == sum(len(t.encode()) for t in val)
    shards = meta["splits"]["train"]["shards"]
    assert len(shards) > 3 and all(s["tokens"] == 500 for s in shards[:-1])
    assert all(hashlib.sha256((tmp_path / "ds" / s["file"]).read_bytes()).hexdigest() == s["sha256"] for s in shards)
    whole = np.concatenate([np.fromfile(tmp_path / "ds" / s["file"], dtype=np.uint16) for s in shards])
    assert np.array_equal(ds.train.window(0, len(ds.train)), whole)
    assert np.array_equal(ds.train.window(490, 25), whole[490:515])  # a window across a shard boundary
    x, y = dataset_mod.get_batch(ds.train, 4, 600, torch.Generator().manual_seed(0))  # windows longer than a shard
    assert x.shape == (4, 600) and torch.equal(x[:, 1:], y[:, :-1])
    # The split depends on the documents' names, not on the order the sources are given in.
    prepare(paths[::-1], "bpe:400", tmp_path / "ds2", val_fraction=0.25, **QUIET)
    ds2 = TokenDataset.open(tmp_path / "ds2")
    assert sorted(_docs(ds2.val, ds2.tokenizer)) == sorted(val)


def test_bundled_corpus_is_a_prepared_dataset(tmp_path):
    prepare(["shakespeare"], "bytes", tmp_path / "sh", **QUIET)
    on_disk, in_memory = TokenDataset.open(tmp_path / "sh"), TokenDataset.bundled(0.05)
    for a, b in ((on_disk.train, in_memory.train), (on_disk.val, in_memory.val)):
        assert np.array_equal(a.window(0, len(a)), b.window(0, len(b)))
    assert on_disk.val_bytes == in_memory.val_bytes == len(bundled_split(0.05)[1])


def test_explicit_validation_files(corpus, tmp_path):
    (root, jsonl), texts = corpus
    prepare([root], "bytes", tmp_path / "ds", val_data=[jsonl], **QUIET)
    ds = TokenDataset.open(tmp_path / "ds")
    assert ds.tokenizer.decode(ds.val.window(0, len(ds.val))) == "".join(texts[24:])


def test_bad_sources_stop_or_are_skipped(corpus, tmp_path):
    paths, _ = corpus
    empty, latin = tmp_path / "empty.txt", tmp_path / "latin1.txt"
    empty.write_text("  \n")
    latin.write_bytes("line one\ncaf\xe9\n".encode("latin-1"))
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "fine"}\n{"content": "no text field"}\n')
    for src, message in (
        (empty, "empty.txt: empty"),
        (latin, r"latin1.txt: not UTF-8 text \(line 2"),
        (bad_json, r"bad.jsonl:2: a JSONL record needs a \"text\" string"),
    ):
        with pytest.raises(ValueError, match=message):
            prepare(paths + [src], "bytes", tmp_path / "out", **QUIET)
        assert not (tmp_path / "out").exists()  # nothing written: sources are checked first
    meta = prepare(paths + [empty, latin], "bytes", tmp_path / "out", on_bad="skip", **QUIET)
    assert [s["path"] for s in meta["skipped"]] == [str(empty), str(latin)]
    with pytest.raises(ValueError, match="no such file or directory"):
        prepare([tmp_path / "nowhere"], "bytes", tmp_path / "x", **QUIET)
    one = tmp_path / "one.txt"
    one.write_text(TEXT)
    with pytest.raises(ValueError, match="validation split would be empty.*--val-data"):
        prepare([one], "bytes", tmp_path / "x", **QUIET)


def test_out_is_never_half_written(corpus, tmp_path, monkeypatch):
    paths, _ = corpus
    out = tmp_path / "ds"
    prepare(paths, "bytes", out, **QUIET)
    before = (out / "dataset.json").read_bytes()
    with pytest.raises(ValueError, match="already holds a dataset.*--overwrite"):
        prepare(paths, "bytes", out, **QUIET)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="exists and is not a dataset"):
        prepare(paths, "bytes", tmp_path / "mine", overwrite=True, **QUIET)
    # Killed halfway through an --overwrite: the old dataset stays whole and no scratch is left.
    calls = []

    def dies(self, ids):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_write(self, ids)

    real_write = prepare_mod._ShardWriter.write
    monkeypatch.setattr(prepare_mod._ShardWriter, "write", dies)
    with pytest.raises(KeyboardInterrupt):
        prepare(paths, "bpe:300", out, overwrite=True, **QUIET)
    monkeypatch.undo()
    assert (out / "dataset.json").read_bytes() == before and TokenDataset.open(out).tokenizer.kind == "bytes"
    assert not list(tmp_path.glob(".ds.tmp-*"))
    # A scratch directory a killed prepare left behind (its pid is gone) is removed by the next one.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".ds.tmp-{dead.stdout.strip()}"
    stale.mkdir()
    prepare(paths, "bpe:300", out, overwrite=True, **QUIET)
    assert not stale.exists() and TokenDataset.open(out).tokenizer.kind == "bpe"


def test_damaged_dataset_is_refused(corpus, tmp_path):
    paths, _ = corpus
    prepare(paths, "bytes", tmp_path / "ds", shard_tokens=20_000, **QUIET)
    shard, meta_file = tmp_path / "ds" / "train-00001.bin", tmp_path / "ds" / "dataset.json"
    good = shard.read_bytes()
    shard.write_bytes(bytes(len(good)))  # zero-filled, the right size
    with pytest.raises(ValueError, match="train-00001.bin: sha256 differs from the one dataset.json recorded"):
        TokenDataset.open(tmp_path / "ds")
    ids = np.frombuffer(good, np.uint16).copy()
    ids[5] = 300  # an id the byte tokenizer never makes, in a shard whose recorded sha256 matches it
    shard.write_bytes(ids.tobytes())
    meta = json.loads(meta_file.read_text())
    meta["splits"]["train"]["shards"][1]["sha256"] = hashlib.sha256(ids.tobytes()).hexdigest()
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"train-00001.bin: holds token id 300, outside the .*256 ids"):
        TokenDataset.open(tmp_path / "ds")
    shard.write_bytes(good[:-10])
    with pytest.raises(ValueError, match="train-00001.bin: .* bytes, expected .*damaged"):
        TokenDataset.open(tmp_path / "ds")
    with pytest.raises(ValueError, match="not a prepared dataset"):
        TokenDataset.open(tmp_path)


# ------------------------------------------------------------------------- train, generate, serve

TRAIN = [
    "--config",
    "tiny",
    "--max-steps",
    "3",
    "--time-budget",
    "0",
    "--batch-size",
    "2",
    "--seq-len",
    "32",
    "--set",
    "n_layers=1",
    "--set",
    "d_model=32",
    "--set",
    "d_ff=32",
    "--set",
    "eval_batches=1",
    "--no-progress",
]


@pytest.mark.parametrize("spec", ["bytes", "bpe:300", "cl100k_base"])
def test_prepare_train_generate_round_trip(spec, corpus, tmp_path, monkeypatch, capsys):
    if spec == "cl100k_base":
        _mini_cl100k(tmp_path, monkeypatch)
    paths, _ = corpus
    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["prepare", "--data", *map(str, paths), "--tokenizer", spec, "--out", str(data), "--no-progress"]) == 0
    tok = TokenDataset.open(data).tokenizer
    assert main(["train", "--data", str(data), "--out", str(run), *TRAIN]) == 0
    cfg = json.loads((run / "step-0000003" / "config.json").read_text())["model"]
    assert cfg["vocab_size"] == tok.vocab_size  # vocab_size followed the tokenizer
    assert tokenizers.load(run / "step-0000003").fingerprint == tok.fingerprint  # saved beside the weights
    capsys.readouterr()
    prompt = "The king said: naïve ✓"
    assert main(["generate", "--checkpoint", str(run), "--prompt", prompt, "--max-new-tokens", "5", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith(prompt)  # encoded and decoded with the checkpoint's tokenizer


def test_vocab_and_tokenizer_disagreements(corpus, tmp_path, capsys):
    paths, _ = corpus
    bpe, short = tmp_path / "bpe", tmp_path / "short"
    prepare(paths, "bpe:300", bpe, **QUIET)
    assert main(["train", "--data", str(bpe), "--out", str(tmp_path / "r1"), *TRAIN, "--set", "vocab_size=256"]) == 2
    assert "vocab_size 256" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "bytes-run"), *TRAIN]) == 0  # the bundled corpus, bytes
    capsys.readouterr()
    assert (
        main(
            [
                "train",
                "--data",
                str(bpe),
                "--out",
                str(tmp_path / "r2"),
                *TRAIN,
                "--init-from",
                str(tmp_path / "bytes-run"),
                "--set",
                "vocab_size=300",
            ]
        )
        == 2
    )
    assert "trained with the bytes (vocab 256) tokenizer" in capsys.readouterr().err
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("a short training text, long enough for one window of 32 tokens")
    b.write_text("tiny")
    prepare([a], "bytes", short, val_data=[b], **QUIET)
    assert main(["train", "--data", str(short), "--out", str(tmp_path / "r3"), *TRAIN]) == 2
    assert "validation split holds 4 tokens, too short for seq_len 32" in capsys.readouterr().err


def test_serve_bench_prompts_use_the_checkpoint_tokenizer(corpus, tmp_path, capsys):
    paths, _ = corpus
    prepare(paths, "bpe:300", tmp_path / "bpe", **QUIET)
    assert main(["train", "--data", str(tmp_path / "bpe"), "--out", str(tmp_path / "run"), *TRAIN]) == 0
    from moe.serving import replay

    tok = tokenizers.load(tmp_path / "run" / "step-0000003")
    requests = replay.make_requests(3, 16, 4, {}, 0, tok)
    assert all(len(r.prompt) == 16 and max(r.prompt) < 300 for r in requests)
    text = tok.decode(requests[0].prompt)
    assert text in bundled_split(0.05)[1].decode()  # a slice of the held-out text, in BPE tokens
    assert (
        main(
            [
                "serve-bench",
                "--checkpoint",
                str(tmp_path / "run"),
                "--requests",
                "3",
                "--prompt-len",
                "16",
                "--max-new-tokens",
                "4",
                "--rate",
                "100",
            ]
        )
        == 0
    )
