"""The batch-size ramp (TrainConfig.ramp_*, moe/training/loop.py): Megatron's rule counted in tokens,
the learning-rate schedule over tokens, an exact resume in the middle of the ramp, and refusals."""

import math
import shutil

import pytest
import torch
from conftest import moe_cli, shrunk

from moe.config import TrainConfig
from moe.layout import Layout
from moe.parallel.launch import check_distributed
from moe.training import checkpoint, train
from moe.training.local import LocalTrainer

RAMP = dict(batch_size=12, seq_len=16, max_steps=6, ramp_start_batch=4, ramp_increment=4, ramp_tokens=512)
RAMP |= dict(lr=1e-2, min_lr=1e-3, warmup_steps=2, eval_interval=4, eval_batches=1, checkpoint_interval=4)
# the run: 6 x 12 x 16 = 1,152 tokens; batches of 4, then 8, then 12 sequences


def megatron_batch(consumed_samples: float, start: int, increment: int, ramp_samples: float, final: int) -> int:
    """Megatron-LM's rampup rule (samples consumed -> global batch), written from its description."""
    increments = (final - start) // increment
    per_increment = ramp_samples / increments
    return min(final, start + int(consumed_samples // per_increment) * increment)


def test_the_ramp_follows_megatrons_rule_in_tokens():
    cfg = TrainConfig(**{**RAMP, "ramp_tokens": 4096})
    for tokens in range(0, 6000, 16):
        want = megatron_batch(tokens / 16, 4, 4, 4096 / 16, 12)  # the same rule over sequences
        assert cfg.batch_size_at(tokens) == want, tokens
    assert cfg.batch_sizes() == [4, 8, 12] and TrainConfig().batch_sizes() == [16]


def test_each_step_gets_the_ramps_batch_and_the_token_counted_learning_rate(tmp_path):
    seen = []

    class Recording(LocalTrainer):
        def step(self, x, y, lr):
            seen.append((x.shape[0], lr))
            return super().step(x, y, lr)

    cfg = TrainConfig(**RAMP)
    quiet = dict(progress=False, plot=False, log=lambda *_: None)
    summary = train(shrunk("tiny", n_layers=1), cfg, tmp_path / "run", build=Recording, **quiet)
    tokens, want = 0, []
    while tokens < 6 * 12 * 16:  # the run's tokens, whatever the batches
        batch = megatron_batch(tokens / 16, 4, 4, 512 / 16, 12)
        full_steps = tokens / (12 * 16)  # the schedule's clock: full batches' worth of tokens
        if full_steps < 2:
            lr = 1e-2 * (full_steps + 1) / 2
        else:
            lr = 1e-3 + 0.5 * (1e-2 - 1e-3) * (1 + math.cos(math.pi * min(1.0, (full_steps - 2) / 4)))
        want.append((batch, lr))
        tokens += batch * 16
    assert [b for b, _ in seen] == [b for b, _ in want] == [4] * 4 + [8] * 2 + [12] * 4
    assert [lr for _, lr in seen] == pytest.approx([lr for _, lr in want], rel=1e-12)
    assert summary["steps"] == len(want) and summary["tokens"] == tokens
    assert summary["history"]["tokens"] == [sum(b * 16 for b, _ in want[:s]) for s in summary["history"]["step"]]


def test_a_run_resumed_in_the_middle_of_the_ramp_ends_as_a_straight_one(tmp_path):
    cfg, model = TrainConfig(**{**RAMP, "checkpoint_interval": 5}), shrunk("tiny", n_layers=1)
    quiet = dict(progress=False, plot=False, log=lambda *_: None)
    straight = train(model, cfg, tmp_path / "straight", **quiet)  # batches 4 4 4 4 8 | 8 12 12 12 12
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(tmp_path / "straight" / "step-0000005", resumed / "step-0000005")
    (resumed / "latest").write_text("step-0000005\n")
    again = train(model, cfg, resumed, resume=True, **quiet)
    assert again["steps"] == straight["steps"] == 10 and again["tokens"] == straight["tokens"] == 1280
    a = checkpoint.load_model(tmp_path / "straight").state_dict()
    b = checkpoint.load_model(resumed).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ramps_that_cannot_run_are_refused_by_name(tmp_path):
    for bad, pattern in [
        (dict(ramp_start_batch=12), "0 < start < batch_size"),
        (dict(ramp_increment=5), "multiple of the increment"),
        (dict(ramp_tokens=0), "positive increment and token count"),
        (dict(time_budget_s=60), "give one of them"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            TrainConfig(**{**RAMP, **bad})
    cfg, model = TrainConfig(**{**RAMP, "ramp_start_batch": 6, "ramp_increment": 3}), shrunk("tiny")
    with pytest.raises(ValueError, match="batch_size=9 must be divisible by dp x ep x microbatches = 2"):
        check_distributed(model, cfg, Layout(dp=2), 2)  # 6, 9, 12: 9 does not split over two ranks
    with pytest.raises(ValueError, match="not pp"):
        check_distributed(model, TrainConfig(**RAMP), Layout(pp=2), 2)
    r = moe_cli("train", "--batch-size-ramp", "4,4", "--out", tmp_path / "x", cwd=tmp_path)
    assert r.returncode == 2 and "START,INCREMENT,OVER_TOKENS" in r.stderr and "Traceback" not in r.stderr
