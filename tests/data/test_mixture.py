"""Data mixtures (moe/data/mixture.py): proportions and epochs counted row by row, exact resume in the
middle of a mixture, validation per source, the CLI's NAME=PATH:epochs=N and [[data]] forms, refusals."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import moe_cli, shrunk

from moe.config import TrainConfig
from moe.data import ByteTokenizer, TokenArray, TokenDataset
from moe.data.mixture import Mixture, Source, parse_source
from moe.data.prepare import prepare
from moe.data.tokenizer import train_bpe
from moe.training import checkpoint, train

T = 8  # tokens per window


def numbered(name: str, windows: int, base: int) -> TokenDataset:
    """A source whose window w starts with token base + w * T: each draw says which window it was."""
    train_ = np.arange(base, base + windows * T + 1, dtype=np.uint32)
    return TokenDataset(name, ByteTokenizer(), TokenArray([train_]), TokenArray([train_[: 4 * T]]), 4 * T)


def draws(mix: Mixture, rows: int, batch: int = 5) -> list[tuple[int, int]]:
    """(source, window) of the next `rows` rows, read off the batches' first tokens."""
    out = []
    while len(out) < rows:
        x, y = mix.batch("train", min(batch, rows - len(out)), T, None)
        assert torch.equal(x[:, 1:], y[:, :-1])
        out += [_which(int(t)) for t in x[:, 0]]
    return out


def _which(first: int) -> tuple[int, int]:
    source, offset = divmod(first, 10_000)
    assert offset % T == 0
    return source, offset // T


def test_epochs_are_counted_exactly_and_every_prefix_keeps_its_share():
    mix = Mixture(
        [(Source("a", "-", epochs=2), numbered("a", 7, 0)), (Source("b", "-", epochs=3), numbered("b", 5, 10_000))]
    )
    mix.check_seq_len(T)
    assert mix.epoch_rows() == 2 * 7 + 3 * 5
    got = draws(mix, 29)
    for g in range(1, len(got) + 1):  # within one row of its share at every prefix
        a = sum(s == 0 for s, _ in got[:g])
        assert abs(a - 14 * g / 29) < 1 and abs((g - a) - 15 * g / 29) < 1
    for source, windows, epochs in ((0, 7, 2), (1, 5, 3)):
        seen = [w for s, w in got if s == source]
        assert sorted(seen) == sorted(list(range(windows)) * epochs)  # every window, `epochs` times
        assert all(sorted(seen[e * windows : (e + 1) * windows]) == list(range(windows)) for e in range(epochs))
        assert seen[:windows] != seen[windows : 2 * windows]  # a new order each epoch
    assert mix.progress() == {"a": {"tokens": 14 * T, "epochs": 2.0}, "b": {"tokens": 15 * T, "epochs": 3.0}}


def test_weights_hold_at_every_prefix_and_a_resumed_mixture_draws_what_a_straight_one_does():
    def mixture():
        return Mixture(
            [
                (Source("a", "-", weight=0.7), numbered("a", 9, 0)),
                (Source("b", "-", weight=0.3), numbered("b", 4, 10_000)),
            ],
            seed=3,
        )

    straight = mixture()
    got = draws(straight, 60)
    for g in range(1, 61):
        assert abs(sum(s == 0 for s, _ in got[:g]) - 0.7 * g) < 1
    first = mixture()
    draws(first, 23)
    resumed = mixture()
    resumed.load_state(json.loads(json.dumps(first.state())))  # what a checkpoint keeps
    assert draws(resumed, 37) == got[23:]
    other_seed = Mixture([(s, ds) for s, ds in mixture().sources], seed=4)
    assert draws(other_seed, 60) != got
    with pytest.raises(ValueError, match="same --data sources"):
        resumed.load_state({"drawn": {"a": 1}})


def test_a_data_parallel_rank_reads_its_rows_of_the_same_blend():
    parts = [(Source("a", "-", weight=1), numbered("a", 9, 0)), (Source("b", "-", weight=2), numbered("b", 4, 10_000))]
    whole, rank1 = Mixture(parts), Mixture(parts)
    for _ in range(3):
        x, _ = whole.batch("train", 4, T, None)
        x1, _ = rank1.batch("train", 4, T, None, rows=[2, 3])
        assert torch.equal(x1, x[2:])


def test_refusals_name_the_problem(tmp_path):
    a = numbered("a", 4, 0)
    with pytest.raises(ValueError, match="not a mix of the two"):
        Mixture([(Source("a", "-", epochs=1), a), (Source("b", "-", weight=1), a)])
    with pytest.raises(ValueError, match="must differ"):
        Mixture([(Source("a", "-", epochs=1), a), (Source("a", "-", epochs=1), a)])
    bpe = TokenDataset("c", train_bpe(iter(["some text to learn merges from " * 20]), 300), a.train, a.val, a.val_bytes)
    with pytest.raises(ValueError, match="source 'c'.*bpe.*one tokenizer"):
        Mixture([(Source("a", "-", epochs=1), a), (Source("c", "-", epochs=1), bpe)])
    with pytest.raises(ValueError, match="not a whole number of rows"):
        Mixture([(Source("a", "-", epochs=0.3), a)]).check_seq_len(T)
    assert parse_source("data/web") is None and parse_source("x/y=z") is None
    assert parse_source("web=data/web:epochs=2") == Source("web", "data/web", epochs=2.0)
    assert parse_source("code=c:d/e:weight=0.25") == Source("code", "c:d/e", weight=0.25)
    for bad, pattern in [
        ("web=data/web", "one of epochs=N or weight=W"),
        ("web=data/web:epochs=-1", "positive number"),
        ("web=data/web:epochs=two", "not a number"),
        ("web=:epochs=1", "needs a path"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            parse_source(bad)


FAST = dict(batch_size=4, seq_len=T, lr=1e-2, warmup_steps=2, eval_interval=3, eval_batches=1, checkpoint_interval=3)


def test_a_run_resumed_in_the_middle_of_a_mixture_ends_as_a_straight_one(tmp_path):
    cfg = shrunk("tiny", n_layers=1, vocab_size=256)

    def mixture():  # fresh each run: where it stands comes from the checkpoint
        return Mixture(
            [(Source("a", "-", epochs=2), byte_source("a", 0)), (Source("b", "-", epochs=1), byte_source("b", 1))]
        )

    def run(out, **kw):
        quiet = dict(progress=False, plot=False, log=lambda *_: None)
        return train(cfg, TrainConfig(**{**FAST, "max_steps": 6}), out, data=mixture(), **quiet, **kw)

    straight = run(tmp_path / "straight")
    assert set(straight["sources"]) == {"a", "b"} and straight["data"] == "a+b"
    assert straight["sources"]["a"]["tokens"] + straight["sources"]["b"]["tokens"] == 6 * 4 * T
    hist = straight["history"]
    assert len(hist["val_by_source"]) == len(hist["val_loss"]) == 2
    mix = mixture()
    mix.check_seq_len(T)
    weights = [c / sum(mix.shares) for c in mix.shares]
    for val, by in zip(hist["val_loss"], hist["val_by_source"]):
        assert val == pytest.approx(weights[0] * by["a"] + weights[1] * by["b"], rel=1e-12)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(tmp_path / "straight" / "step-0000003", resumed / "step-0000003")
    (resumed / "latest").write_text("step-0000003\n")
    again = run(resumed, resume=True)
    assert again["sources"] == straight["sources"]
    a = checkpoint.load_model(tmp_path / "straight").state_dict()
    b = checkpoint.load_model(resumed).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_one_named_source_is_reported_by_name(tmp_path):
    mix = Mixture([(Source("web", "-", epochs=1), byte_source("web", 2))])
    quiet = dict(progress=False, plot=False, log=lambda *_: None)
    s = train(shrunk("tiny", n_layers=1), TrainConfig(**{**FAST, "max_steps": 3}), tmp_path, data=mix, **quiet)
    assert s["sources"]["web"]["tokens"] == 3 * 4 * T and s["sources"]["web"]["final_val_loss"] == s["final_val_loss"]


def byte_source(name: str, seed: int) -> TokenDataset:
    rng = np.random.default_rng(seed)
    text = rng.integers(97, 123, 40 * T + 1, dtype=np.uint8)
    return TokenDataset(name, ByteTokenizer(), TokenArray([text]), TokenArray([text[: 8 * T]]), 8 * T)


def test_the_cli_trains_a_mixture_for_its_epochs_from_flags_or_a_data_table(tmp_path):
    for name, text in (("web", "a web page of plain words. " * 40), ("code", "def f(x):\n    return x + 1\n" * 40)):
        (tmp_path / name).mkdir()
        for i in range(5):  # documents: the last one (val_fraction 0.2) is the validation split
            (tmp_path / name / f"{i}.txt").write_text(f"{i} {text}")
        quiet = dict(val_fraction=0.2, progress=False, log=lambda *_: None)
        prepare([tmp_path / name], "bytes", tmp_path / f"data-{name}", **quiet)
    small = ["--set", "n_layers=1", "--set", "d_model=32", "--set", "n_heads=4", "--set", "d_ff=24"]
    flags = ["--batch-size", "4", "--seq-len", "16", "--no-progress", *small]
    flags += ["--set", "eval_interval=5", "--set", "eval_batches=1", "--set", "warmup_steps=1"]
    common = ["train", "--config", "tiny", *flags]
    r = moe_cli(
        *common,
        "--data",
        "web=data-web:epochs=1",
        "--data",
        "code=data-code:epochs=2",
        "--out",
        "run",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    web, code = ((len(TokenDataset.open(tmp_path / f"data-{n}").train) - 1) // 16 for n in ("web", "code"))
    assert summary["max_steps"] == (web + 2 * code) // 4
    assert "web: val" in r.stdout and "code: val" in r.stdout
    assert summary["sources"]["code"]["epochs"] == pytest.approx(2.0, abs=4 / code)
    toml = tmp_path / "mix.toml"
    toml.write_text(
        'base = "tiny"\n[[data]]\nname = "web"\npath = "data-web"\nweight = 1\n'
        '[[data]]\nname = "code"\npath = "data-code"\nweight = 3\n'
    )
    r = moe_cli("train", "--config", toml, *flags, "--max-tokens", str(8 * 4 * 16), "--out", "run2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "run2" / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["sources"]["code"]["tokens"] == 3 * summary["sources"]["web"]["tokens"]
    r = moe_cli(*common, "--data", "data-web", "--data", "data-code", "--out", "run3", cwd=tmp_path)
    assert r.returncode != 0 and "NAME=PATH" in r.stderr and "Traceback" not in r.stderr
