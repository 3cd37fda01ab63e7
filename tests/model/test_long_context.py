"""Long context: RoPE scaling against its formulas (and transformers' own functions where installed),
the extension run, the retrieval probe, cached decoding past the pretraining length, bad input."""

import math
import pathlib
import subprocess
import sys

import pytest
import torch
from conftest import moe_cli, shrunk

import bench.long_context
from moe.config import TrainConfig
from moe.model import MoETransformer, Positions
from moe.model.rope import inv_frequencies, rope_tables
from moe.serving import Engine, Request, generate
from moe.training import train

ROOT = pathlib.Path(__file__).resolve().parents[2]
D, THETA, L0, S = 32, 10000.0, 256, 4.0


def plain(d=D, theta=THETA):
    return [theta ** (-2 * i / d) for i in range(d // 2)]


def test_factor_one_is_plain_rope_exactly():
    base, _ = inv_frequencies(D, THETA)
    for kind in ("linear", "yarn"):
        got, att = inv_frequencies(D, THETA, {"rope_type": kind, "factor": 1.0, "original_max_position_embeddings": L0})
        assert torch.equal(got, base) and att == 1.0, kind
    # dynamic leaves RoPE alone up to the original length (past it, its base grows even at factor 1)
    got, _ = inv_frequencies(
        D, THETA, {"rope_type": "dynamic", "factor": S, "original_max_position_embeddings": L0}, L0
    )
    assert torch.equal(got, base)
    assert torch.equal(rope_tables(D, 64, THETA)[0], rope_tables(D, 64, THETA, None, 1024)[0])


def test_linear_and_dynamic_against_their_formulas():
    got, _ = inv_frequencies(D, THETA, {"rope_type": "linear", "factor": S, "original_max_position_embeddings": L0})
    torch.testing.assert_close(got, torch.tensor([f / S for f in plain()], dtype=torch.float64), rtol=1e-14, atol=0)
    L = 1000
    got, _ = inv_frequencies(D, THETA, {"rope_type": "dynamic", "factor": S, "original_max_position_embeddings": L0}, L)
    grown = THETA * (S * L / L0 - (S - 1)) ** (D / (D - 2))  # dynamic NTK: a larger base at length L
    torch.testing.assert_close(got, torch.tensor(plain(theta=grown), dtype=torch.float64), rtol=1e-12, atol=0)


def test_yarn_against_the_paper():
    """YaRN (Peng et al. 2023): a pair that turns r = L0 / wavelength times over the original context
    is interpolated (divided by s) when r < beta_slow, kept when r > beta_fast, ramped in between;
    attention logits scaled by (0.1 ln s + 1)^2, i.e. cos and sin by 0.1 ln s + 1."""
    scaling = {"rope_type": "yarn", "factor": S, "original_max_position_embeddings": L0}
    got, att = inv_frequencies(D, THETA, scaling)
    assert att == pytest.approx(0.1 * math.log(S) + 1, rel=1e-15)
    for i, f in enumerate(plain()):
        turns = L0 * f / (2 * math.pi)
        if turns > 32 + 1e-9:
            assert got[i] == pytest.approx(f, rel=1e-14), i  # high frequencies: extrapolated, untouched
        elif turns < 1 - 1e-9:
            assert got[i] == pytest.approx(f / S, rel=1e-14), i  # low frequencies: interpolated
        else:
            assert f / S - 1e-12 <= got[i] <= f + 1e-12, i  # the ramp lies between the two
    cos, sin = rope_tables(D, 8, THETA, scaling)
    torch.testing.assert_close(cos[0], torch.full((D // 2,), att, dtype=torch.float32))


@pytest.mark.parametrize("kind", ["linear", "dynamic", "yarn"])
def test_against_transformers_rope_functions(kind):
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = {"rope_type": kind, "rope_theta": THETA, "factor": S}
    if kind == "dynamic":  # transformers' dynamic reads the pretraining length from max_position_embeddings
        max_pos, length = L0, 1000
    else:
        max_pos, length = int(S * L0), None
        params["original_max_position_embeddings"] = L0
    hf_cfg = transformers.LlamaConfig(
        hidden_size=4 * D, num_attention_heads=4, head_dim=D, max_position_embeddings=max_pos, rope_parameters=params
    )
    want, want_att = ROPE_INIT_FUNCTIONS[kind](hf_cfg, "cpu", length)
    got, att = inv_frequencies(
        D, THETA, {"rope_type": kind, "factor": S, "original_max_position_embeddings": L0}, length
    )
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-6, atol=0)  # transformers computes in float32
    assert att == pytest.approx(float(want_att), rel=1e-6)


# rope_parameters as the families' configs write them (rope_theta apart): what transformers fills in
# for a missing key, we must too
HF_FORMS = {
    "linear without its length": {"rope_type": "linear", "factor": 4.0},
    "dynamic without its length": {"rope_type": "dynamic", "factor": 2.0},
    "yarn as gpt-oss writes it": {
        "rope_type": "yarn",
        "factor": 32.0,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "original_max_position_embeddings": 64,
        "truncate": False,
    },
    "yarn with DeepSeek's mscale": {
        "rope_type": "yarn",
        "factor": 40.0,
        "mscale": 1.0,
        "mscale_all_dim": 0.707,
        "original_max_position_embeddings": 64,
    },
    "yarn with its factor implied": {"rope_type": "yarn", "factor": None, "original_max_position_embeddings": 128},
    "yarn with every default": {"rope_type": "yarn", "factor": 4.0},
    "the default type": {"rope_type": "default"},
}


@pytest.mark.parametrize("form", list(HF_FORMS))
def test_transformers_rope_parameters_forms_give_transformers_tables(form):
    """load_config takes rope_scaling as transformers writes rope_parameters; our tables equal
    transformers' own ROPE_INIT_FUNCTIONS on a config with the same keys (and its defaults)."""
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params, max_len, d = HF_FORMS[form], 1024, 64
    cfg = shrunk("tiny", max_seq_len=max_len, head_dim=d, rope_theta=THETA, rope_scaling=dict(params))
    hf_cfg = transformers.LlamaConfig(
        hidden_size=4 * d,
        num_attention_heads=4,
        head_dim=d,
        max_position_embeddings=max_len,
        rope_parameters={"rope_theta": THETA, **params},
    )
    kind = hf_cfg.rope_parameters["rope_type"]
    length = 2 * max_len if kind == "dynamic" else None
    if kind == "default":
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        want, want_att = LlamaRotaryEmbedding.compute_default_rope_parameters(hf_cfg)
    else:
        want, want_att = ROPE_INIT_FUNCTIONS[kind](hf_cfg, "cpu", length)
    got, att = inv_frequencies(d, THETA, cfg.rope_scaling, length)  # (None: plain RoPE)
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-6, atol=0)
    assert att == pytest.approx(float(want_att), rel=1e-6)
    assert (cfg.rope_scaling is None) == (kind == "default")


@pytest.mark.parametrize("kind", ["linear", "yarn"])
def test_cached_decode_equals_full_forward_past_the_original_length(kind):
    cfg = shrunk(
        "tiny", max_seq_len=128, rope_scaling={"rope_type": kind, "factor": 4.0, "original_max_position_embeddings": 32}
    )
    model = MoETransformer(cfg).double().eval()
    idx = torch.randint(0, 256, (1, 100))
    full = model(idx).logits
    model.setup_caches(1, 128)
    steps = [model(idx[:, :20], Positions.at(torch.arange(20))).logits]
    steps += [model(idx[:, t : t + 1], Positions.at(torch.tensor([t]))).logits for t in range(20, 100)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-7, rtol=1e-6)


def test_the_engine_serves_a_1024_position_context():
    model = MoETransformer(shrunk("tiny", max_seq_len=1024)).double().eval()
    prompt = torch.randint(0, 256, (1000,)).tolist()
    engine = Engine(model, max_batch=1)
    got = engine.run([Request(prompt, 16, {"greedy": True})])[0].tokens
    assert got == generate(model, prompt, 16, greedy=True)


def test_the_retrieval_probe_puts_two_copies_d_apart_and_ends_on_the_second():
    probe = bench.long_context.probe_sequence
    filler, passage = torch.zeros(1025, dtype=torch.long), torch.arange(1, 201)
    seq, first, second = probe(filler, passage, 512, 1024)
    assert second - first == 512 and second + 200 == 1024
    assert torch.equal(seq[first : first + 200], passage) and torch.equal(seq[second : second + 200], passage)
    assert int((seq != 0).sum()) == 400 and seq.numel() == 1025  # nothing else changed
    with pytest.raises(ValueError, match="distance 100 must be >= the passage"):
        probe(filler, passage, 100, 1024)


def _bucket(model, windows, lo, hi):
    losses = bench.long_context.token_losses(model, *windows)
    return float(losses[:, lo:hi].mean())


def test_a_short_extension_run_lowers_the_loss_past_the_original_length(tmp_path):
    """Pretrain at 32 positions, extend to 128 with YaRN: 40 steps at 128 lower the loss on positions
    32-128 against the same weights zero-shot."""
    fast = dict(
        batch_size=8,
        lr=1e-2,
        min_lr=1e-3,
        warmup_steps=5,
        eval_interval=1000,
        eval_batches=1,
        checkpoint_interval=1000,
        time_budget_s=0,
    )
    base_cfg = shrunk("tiny", max_seq_len=32)
    quiet = dict(progress=False, plot=False, log=lambda *_: None)
    train(base_cfg, TrainConfig(seq_len=32, max_steps=150, **fast), tmp_path / "base", **quiet)
    ext = shrunk(
        "tiny",
        max_seq_len=128,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
    )
    lc = bench.long_context
    from moe.data import bundled_split
    from moe.training import load_weights

    val = torch.frombuffer(bytearray(bundled_split(0.05)[1]), dtype=torch.uint8)
    windows = lc.eval_windows(val, 128, 16)
    zero_shot = MoETransformer(ext)
    load_weights(zero_shot, tmp_path / "base")
    train(
        ext,
        TrainConfig(seq_len=128, max_steps=40, **{**fast, "lr": 3e-3}),
        tmp_path / "ext",
        init_from=tmp_path / "base",
        **quiet,
    )
    tuned = MoETransformer(ext)
    load_weights(tuned, tmp_path / "ext")
    before, after = _bucket(zero_shot, windows, 32, 128), _bucket(tuned, windows, 32, 128)
    assert after < before - 0.05, (before, after)


@pytest.mark.parametrize(
    "scaling, field",
    [
        ({"rope_type": "ntk", "factor": 4.0, "original_max_position_embeddings": 32}, "rope_scaling.rope_type"),
        ({"rope_type": "yarn", "factor": 0.5, "original_max_position_embeddings": 32}, "rope_scaling.factor"),
        ({"rope_type": "llama3", "factor": 8.0}, "rope_scaling.rope_type"),
        ({"rope_type": "yarn", "factor": 4.0, "mscale": 0}, "rope_scaling.mscale"),
        (
            {"rope_type": "linear", "factor": 4.0, "original_max_position_embeddings": 256},
            "original_max_position_embeddings",
        ),
        ({"rope_type": "linear", "factor": 4.0, "original_max_position_embeddings": 32, "beta_fast": 8}, "beta_fast"),
        ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "beta_fast": -1}, "beta_fast"),
    ],
)
def test_bad_rope_scaling_names_the_field(scaling, field):
    with pytest.raises(ValueError, match=field):
        shrunk("tiny", max_seq_len=128, rope_scaling=scaling)


def test_bad_extensions_are_refused_before_work(tmp_path):
    quiet = dict(progress=False, plot=False, log=lambda *_: None)
    fast = TrainConfig(batch_size=4, seq_len=32, max_steps=2, eval_interval=2, eval_batches=1, checkpoint_interval=2)
    train(shrunk("tiny", max_seq_len=32), fast, tmp_path / "base", **quiet)
    wrong = shrunk(
        "tiny",
        max_seq_len=128,
        rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64},
    )
    with pytest.raises(
        ValueError,
        match=r"original_max_position_embeddings \(64\) disagrees with --init-from .* "
        r"trained at max_seq_len 32",
    ):
        train(wrong, fast, tmp_path / "ext", init_from=tmp_path / "base", **quiet)
    with pytest.raises(ValueError, match=r"seq_len \(128\) exceeds max_seq_len \(32\)"):
        train(shrunk("tiny", max_seq_len=32), TrainConfig(seq_len=128), tmp_path / "long", **quiet)
    assert not (tmp_path / "ext" / "latest").exists() and not (tmp_path / "long" / "latest").exists()


def test_the_cli_extends_and_the_script_measures(tmp_path):
    """train --init-from with --set rope_scaling=... from the command line, then the measurement
    script end to end at toy lengths (32 -> 128, 2 fine-tuning steps)."""
    small = [
        "--set",
        "d_model=32",
        "--set",
        "n_layers=1",
        "--batch-size",
        "4",
        "--time-budget",
        "0",
        "--set",
        "eval_batches=1",
    ]
    base = moe_cli(
        *("train", "--config", "tiny", "--out", tmp_path / "base", "--seq-len", "32", "--set", "max_seq_len=32"),
        *("--max-steps", "4", *small),
    )
    assert base.returncode == 0, base.stderr
    scaling = 'rope_scaling={rope_type="linear", factor=4.0, original_max_position_embeddings=32}'
    ext = moe_cli(
        *("train", "--config", "tiny", "--out", tmp_path / "ext", "--init-from", tmp_path / "base"),
        *("--seq-len", "128", "--set", "max_seq_len=128", "--set", scaling, "--max-steps", "2", *small),
    )
    assert ext.returncode == 0, ext.stderr
    script = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.long_context",
            "--base",
            tmp_path / "base",
            "--length",
            "128",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--work",
            tmp_path / "work",
            "--out",
            tmp_path / "out",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert script.returncode == 0, script.stderr
    import json

    result = json.loads((tmp_path / "out" / "long_context.json").read_text())
    assert set(result["variants"]) == {"none", "linear", "dynamic", "yarn"}
    assert all(len(v["fine_tuned"]["buckets"]) == 4 for v in result["variants"].values())  # 0-32 ... 96-128
    assert (tmp_path / "out" / "long_context.png").stat().st_size > 10_000
