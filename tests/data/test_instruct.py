"""Instruction data (prepare --format chat, moe/data/instruct.py): targets that are the assistant's text
and nothing else, packed rows that compute what each example computes alone, epochs and exact
resume, the refusals, and fine-tuning through the CLI."""

import collections
import json
import random

import pytest
import torch
from conftest import moe_cli, shrunk

from moe.config import load_train_config
from moe.data.instruct import IGNORE_INDEX, InstructDataset
from moe.data.mixture import Mixture, Source
from moe.data.prepare import prepare
from moe.model import MoETransformer, Positions, transformer
from moe.parallel.trainer import train_distributed

SEQ = 95  # rows of 96 tokens


def conversations(n: int, seed: int) -> list[dict]:
    """Conversations of one to three turns, some with a system message, of varied lengths."""
    rng = random.Random(seed)
    word = lambda: "".join(rng.choice("abcdefgh ") for _ in range(rng.randint(1, 9))).strip() or "x"  # noqa: E731
    out = []
    for _ in range(n):
        messages = [{"role": "system", "content": "be brief"}] if rng.random() < 0.3 else []
        for _ in range(rng.randint(1, 2)):
            messages += [{"role": "user", "content": word()}, {"role": "assistant", "content": word()}]
        out.append({"messages": messages})
    return out


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("chat")
    train, val = conversations(120, 0), conversations(20, 1)
    prepare(
        [write_jsonl(d / "train.jsonl", train)],
        "bytes",
        d / "data",
        format="chat",
        val_data=[write_jsonl(d / "val.jsonl", val)],
        log=lambda *_: None,
    )
    return d


def answers(conversation: dict) -> str:
    """What the plain template has the assistant write (moe/data/chat.py): ' content\\n' a turn."""
    return "".join(f" {m['content']}\n" for m in conversation["messages"] if m["role"] == "assistant")


def epoch_rows(ds: InstructDataset):
    """Every packed training row of one epoch, drawn as training draws them."""
    return ds.batch("train", len(ds.rows["train"]), SEQ, None)


def test_the_targets_are_each_conversations_answers_once_an_epoch(chat_dir):
    ds = InstructDataset.open(chat_dir / "data")
    ds.check_seq_len(SEQ)
    x, y = epoch_rows(ds)
    assert ds.progress()[ds.name]["epochs"] == 1.0
    assert x.idx_BT.shape == y.shape == (len(ds.rows["train"]), SEQ)
    counted = y != IGNORE_INDEX
    assert torch.equal(y[:, :-1][counted[:, :-1]], x.idx_BT[:, 1:][counted[:, :-1]])  # next-token targets
    got = collections.Counter()
    for b in range(len(y)):
        for k in x.doc_BT[b].unique().tolist():
            keep = counted[b] & (x.doc_BT[b] == k)
            if keep.any():
                got[bytes(y[b][keep].tolist()).decode()] += 1
    train = [json.loads(line) for line in (chat_dir / "train.jsonl").read_text().splitlines()]
    assert got == collections.Counter(answers(c) for c in train)  # each once, and nothing else counted
    x2, _ = epoch_rows(ds)
    assert not torch.equal(x.idx_BT, x2.idx_BT)  # the next epoch: the same rows in another order
    assert sorted(map(tuple, x.idx_BT.tolist())) == sorted(map(tuple, x2.idx_BT.tolist()))


def test_packed_rows_compute_what_each_example_computes_alone(chat_dir):
    """The document mask and the restarted positions: every example's logits in a packed row equal
    the example run by itself, and the loss's gradient reaches only the counted positions."""
    ds = InstructDataset.open(chat_dir / "data")
    ds.check_seq_len(SEQ)
    x, y = ds.batch("train", 6, SEQ, None)
    model = MoETransformer(shrunk(n_kv_heads=2, max_seq_len=128)).double().eval()
    out = model(x.idx_BT, positions=Positions.packed(x.doc_BT), targets=y)
    examples = 0
    for b in range(len(y)):
        for k in x.doc_BT[b].unique().tolist():
            where = (x.doc_BT[b] == k).nonzero()[:, 0]
            if (x.idx_BT[b, where] == 0).all():
                continue  # the row's padding (token 0, never a target)
            alone = model(x.idx_BT[b, where][None]).logits[0]
            torch.testing.assert_close(out.logits[b, where], alone, rtol=1e-10, atol=1e-10)
            examples += 1
    assert examples > len(y)  # rows held several examples
    logits = out.logits.detach().requires_grad_()
    loss = torch.nn.functional.cross_entropy(logits.view(-1, 256), y.view(-1), ignore_index=IGNORE_INDEX)
    loss.backward()
    assert (logits.grad[y == IGNORE_INDEX] == 0).all() and (logits.grad[y != IGNORE_INDEX] != 0).any(-1).all()
    logp = torch.log_softmax(out.logits.detach(), -1)
    by_loop = [-float(logp[b, t, y[b, t]]) for b in range(len(y)) for t in range(SEQ) if y[b, t] != IGNORE_INDEX]
    assert out.loss.item() == pytest.approx(sum(by_loop) / len(by_loop), rel=1e-6)  # (the loss is float32)


def test_resume_continues_the_rows_exactly(chat_dir):
    a = InstructDataset.open(chat_dir / "data", seed=3)
    a.check_seq_len(SEQ)
    for _ in range(7):  # past an epoch's end (rows shuffled anew)
        a.batch("train", 5, SEQ, None)
    b = InstructDataset.open(chat_dir / "data", seed=3)
    b.check_seq_len(SEQ)
    b.load_state(json.loads(json.dumps(a.state())))
    for _ in range(3):
        (xa, ya), (xb, yb) = a.batch("train", 5, SEQ, None), b.batch("train", 5, SEQ, None)
        assert torch.equal(xa.idx_BT, xb.idx_BT) and torch.equal(xa.doc_BT, xb.doc_BT) and torch.equal(ya, yb)
    other = InstructDataset.open(chat_dir / "data", seed=3)
    other.check_seq_len(SEQ + 40)
    with pytest.raises(ValueError, match="rows_per_epoch|rows an epoch|packed for seq_len"):
        other.load_state(a.state())
    assert IGNORE_INDEX == transformer.IGNORE_INDEX


def test_refusals_name_the_problem(chat_dir, tmp_path):
    def refused(match, rows=None, text=None, **kw):
        src = tmp_path / ("rows.txt" if text else "rows.jsonl")
        src.write_text(text or "".join(json.dumps(r) + "\n" for r in rows))
        with pytest.raises(ValueError, match=match):
            prepare(
                [str(src)], kw.pop("tokenizer", "bytes"), tmp_path / "out", format="chat", log=lambda *_: None, **kw
            )
        assert not (tmp_path / "out").exists()  # nothing written

    ok = conversations(30, 2)
    refused("JSONL", text="user: hi\n")
    refused('needs "messages"', [{"text": "hi"}] + ok)
    refused("no assistant message", ok + [{"messages": [{"role": "user", "content": "hi"}]}])
    refused(r"messages\[1\] needs a role", ok + [{"messages": [{"role": "user", "content": "a"}, {"role": "bot"}]}])
    refused("holds no tokenizer.moe.json", ok, tokenizer=str(tmp_path))
    with pytest.raises(ValueError, match="--format must be text or chat"):
        prepare(["x.jsonl"], "bytes", tmp_path / "out", format="yaml")
    ds = InstructDataset.open(chat_dir / "data")
    with pytest.raises(ValueError, match=r"longer than a row of seq_len \+ 1 = 9 tokens .*use --seq-len \d+"):
        ds.check_seq_len(8)
    with pytest.raises(ValueError, match="instruction data .* trains alone"):
        Mixture.open([Source("chat", str(chat_dir / "data"), weight=1.0)])
    from moe.config import TrainConfig
    from moe.layout import Layout

    with pytest.raises(ValueError, match="pp = 1"):
        train_distributed(shrunk(), TrainConfig(), Layout(pp=2), tmp_path / "run", data=str(chat_dir / "data"))


def test_fine_tuning_through_the_cli(chat_dir, tmp_path):
    """train --data on instruction data, then --init-from that checkpoint: the second run starts
    from the first one's weights (its first loss is near the first run's last, far below a fresh
    model's) and reports the epochs it drew."""
    small = [
        "--set",
        "d_model=32",
        "--set",
        "n_layers=2",
        "--set",
        "d_ff=48",
        "--set",
        "max_seq_len=128",
        "--seq-len",
        SEQ,
        "--batch-size",
        8,
    ]
    common = ["--data", chat_dir / "data", *small, "--set", "eval_interval=1", "--set", "lr=3e-3", "--no-progress"]
    first = moe_cli("train", *common, "--max-steps", 40, "--out", tmp_path / "a")
    assert first.returncode == 0, first.stderr
    second = moe_cli("train", *common, "--max-steps", 2, "--out", tmp_path / "b", "--init-from", tmp_path / "a")
    assert second.returncode == 0, second.stderr
    a = json.loads((tmp_path / "a" / "summary.json").read_text())
    b = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert b["history"]["val_loss"][0] < a["history"]["val_loss"][0] - 1.0
    assert abs(b["history"]["val_loss"][0] - a["history"]["val_loss"][-1]) < 0.3
    ds = InstructDataset.open(chat_dir / "data", seed=load_train_config("tiny").seed)  # the CLI's preset
    ds.check_seq_len(SEQ)
    assert a["sources"]["data"]["epochs"] == pytest.approx(40 * 8 / len(ds.rows["train"]), abs=1e-4)
