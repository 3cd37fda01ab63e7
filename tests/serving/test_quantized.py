"""Weight-only quantized experts (kernels/quantized.py, moe/model/quantized.py, python -m moe quantize):
error bounds from the formats' own definitions, both backends against a float64 reference of the
dequantized weights, the engine's exactness on a quantized model, the quality target, bad input."""

import json

import pytest
import torch
from conftest import COUNTS, DEVICE, shrunk

import kernels
from kernels.quantized import dequantize, fp8_supported, quantize, quantized_mlp, quantized_mlp_reference
from moe.__main__ import main
from moe.config import EXPERT_QUANT, ModelConfig, TrainConfig
from moe.model.quantized import expert_bytes, quantize_model, weight_bytes
from moe.serving import Engine, Request, generate
from moe.training import train

SCHEMES = ["int8", "fp8", "int4"]


def test_schemes_are_the_configs():
    assert EXPERT_QUANT == ("none", *kernels.SCHEMES)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantize_dequantize_error_bounds(scheme):
    E, K, N = 3, 256, 40
    w = torch.randn(E, K, N) * torch.linspace(0.01, 3, N)  # columns of very different ranges
    w[1, :, 5] = 0.0  # an all-zero column
    qw = quantize(w, scheme)
    back = dequantize(qw, torch.float64)
    err = (back - w.double()).abs()
    if scheme == "int8":  # round to nearest of 255 steps of s = max|column| / 127
        s = w.abs().amax(dim=1, keepdim=True).double() / 127
        assert (err <= s / 2 + 1e-12).all() and qw.q.dtype == torch.int8
    elif scheme == "fp8":  # e4m3: 3 mantissa bits (half-ulp 2^-4 relative); subnormal steps of 2^-9 * s
        s = w.abs().amax(dim=1, keepdim=True).double() / 448
        assert (err <= w.double().abs() * 2**-4 + s * 2**-10 + 1e-12).all()
    else:  # int4 in groups of 128 along K: steps of s = max|group| / 7
        s = w.view(E, 2, 128, N).abs().amax(dim=2, keepdim=True).double() / 7
        assert (err.view(E, 2, 128, N) <= s / 2 + 1e-12).all() and qw.q.shape == (E, K // 2, N)
    assert (back[1, :, 5] == 0).all()
    assert qw.nbytes < w.numel() * (0.6 if scheme == "int4" else 1.1)


def test_int4_packing_is_the_documented_layout():
    w = torch.zeros(1, 4, 1)
    w[0, :, 0] = torch.tensor([7.0, -8.0, 1.0, 0.0])  # max 8 -> s = 8 / 7; q = round(w / s)
    qw = quantize(w, "int4")
    q = torch.round(w[0, :, 0] / (8 / 7)).int() + 8  # [14, 1, 9, 8]
    assert qw.q[0, :, 0].tolist() == [int(q[0]) | int(q[1]) << 4, int(q[2]) | int(q[3]) << 4]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("act", ["gelu", "swiglu"])
@pytest.mark.parametrize("counts", ["empty experts", "all on one", "ragged"])
def test_quantized_mlp_matches_float64_reference(backend, scheme, act, counts):
    """Odd widths where the format allows (int4 needs K even: its groups are then 8 for the up
    projection, K = 24, narrower than the interpreter's K block, and 16 for the down one, K = 48)."""
    counts = COUNTS[counts]
    E, (D, F_) = len(counts), ((24, 48) if scheme == "int4" else (24, 37))
    g = torch.Generator().manual_seed(0)
    experts = torch.cat([torch.full((c,), e) for e, c in enumerate(counts)])
    T = len(experts)
    experts_TK = torch.stack([experts, (experts + 1) % E], dim=1)[torch.randperm(T, generator=g)]
    weights_TK = torch.rand(T, 2, generator=g).softmax(dim=1)
    x = torch.randn(T, D, generator=g)
    up, down = (
        quantize(torch.randn(E, D, F_, generator=g), scheme),
        quantize(torch.randn(E, F_, D, generator=g), scheme),
    )
    gate = quantize(torch.randn(E, D, F_, generator=g), scheme) if act == "swiglu" else None
    to = lambda w: None if w is None else kernels.QuantizedWeight(w.q.to(DEVICE), w.scale.to(DEVICE), w.scheme)  # noqa: E731
    got = quantized_mlp(
        x.to(DEVICE),
        weights_TK.to(DEVICE),
        experts_TK.to(DEVICE),
        to(up),
        to(gate),
        to(down),
        activation_name=act,
        backend=backend,
    )
    want = quantized_mlp_reference(x, weights_TK, experts_TK, up, gate, down, activation_name=act)
    scale = max(1.0, want.abs().max().item())
    assert (got.double().cpu() - want).abs().max().item() <= 2e-5 * scale


def test_fp8_needs_an_sm89_gpu():
    assert fp8_supported((9, 0)) and fp8_supported((8, 9)) and not fp8_supported((8, 0))
    with pytest.raises(ValueError, match="fp8.*sm_80.*int8"):
        kernels.quantized.check_device("fp8", (8, 0))


# ------------------------------------------------------------------------------------------ model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small model trained 120 steps on the bundled corpus (about 15 s), and its directory."""
    out = tmp_path_factory.mktemp("trained")
    cfg = shrunk("tiny", d_model=64, d_ff=64, n_layers=2, max_seq_len=64)
    train(
        cfg,
        TrainConfig(
            batch_size=16,
            seq_len=64,
            max_steps=120,
            warmup_steps=10,
            lr=3e-3,
            eval_interval=120,
            eval_batches=4,
            checkpoint_interval=120,
        ),
        out,
        progress=False,
        plot=False,
        log=lambda *_: None,
    )
    return out


def _val_loss(model, n=24, T=64):
    from moe.data import TokenDataset, get_batch

    val = TokenDataset.bundled(0.05).val
    x, y = get_batch(val, n, T, torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model(x, targets=y).loss.item()


def test_quality_target_and_engine_exactness(trained):
    from moe.training import load_model

    model = load_model(trained).eval()
    base = _val_loss(model)
    losses = {s: _val_loss(quantize_model(model, s)) for s in SCHEMES}
    assert abs(losses["int8"] - base) < 0.01, (base, losses)  # the target: within 0.01 of the unquantized loss
    assert abs(losses["fp8"] - base) < 0.05 and abs(losses["int4"] - base) < 0.1, (base, losses)
    q8 = quantize_model(model, "int8")
    assert expert_bytes(q8) < 0.3 * expert_bytes(model)  # 1 byte per weight (+ scales) against 4
    everything = quantize_model(model, "int8", dense=True)  # attention and the head too
    assert {"blocks.0.attn.wq.q", "lm_head.scale"} <= set(everything.state_dict())
    assert not any(k.endswith("attn.wq.weight") or k == "lm_head.weight" for k in everything.state_dict())
    assert weight_bytes(everything) < weight_bytes(q8) < weight_bytes(model)
    assert abs(_val_loss(everything) - base) < 0.02, (base, _val_loss(everything))
    g = torch.Generator().manual_seed(0)
    reqs = [
        Request(torch.randint(0, 256, (int(n),), generator=g).tolist(), 8, {"greedy": True}, seed=i)
        for i, n in enumerate(torch.randint(3, 20, (6,), generator=g))
    ]
    results = Engine(q8, n_pages=40, page_size=4, max_batch=6).run(reqs)
    for req, res in zip(reqs, results):
        assert res.tokens == generate(q8, req.prompt, req.max_new_tokens, greedy=True)


def test_quantize_cli_and_refusals(trained, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["quantize", "--checkpoint", str(trained), "--dtype", "int8", "--out", str(out)]) == 0
    assert "MiB ->" in capsys.readouterr().out
    saved = json.loads((out / "step-0000000" / "config.json").read_text())["model"]
    assert saved["expert_quant"] == "int8"
    assert main(["generate", "--checkpoint", str(out), "--prompt", "ROMEO.", "--max-new-tokens", "5", "--greedy"]) == 0
    capsys.readouterr()
    assert main(["quantize", "--checkpoint", str(out), "--dtype", "int4", "--out", str(tmp_path / "qq")]) == 2
    assert "already quantized (int8)" in capsys.readouterr().err
    assert main(["train", "--init-from", str(out), "--out", str(tmp_path / "t"), "--max-steps", "2"]) == 2
    assert "quantized checkpoints are for serving" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["quantize", "--checkpoint", str(trained), "--dtype", "int3", "--out", str(tmp_path / "x")])
    assert "invalid choice: 'int3'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="expert_quant must be one of"):
        ModelConfig(expert_quant="int2")
    with pytest.raises(ValueError, match="quantize_dense needs expert_quant"):
        ModelConfig(quantize_dense=True)
    with pytest.raises(ValueError, match="untied"):
        ModelConfig(expert_quant="int8", quantize_dense=True, tie_embeddings=True)
    assert (
        main(["quantize", "--checkpoint", str(trained), "--dtype", "int4", "--dense", "--out", str(tmp_path / "d")])
        == 0
    )
    assert main(["generate", "--checkpoint", str(tmp_path / "d"), "--prompt", "ROMEO.", "--max-new-tokens", "3"]) == 0
    with pytest.raises(ValueError, match="train from the unquantized"):
        train(shrunk("tiny", expert_quant="int8"), TrainConfig(max_steps=1), tmp_path / "u", progress=False)


def test_quantized_model_on_the_triton_backend(trained):
    from moe.training import load_model

    model = quantize_model(load_model(trained, expert_backend="triton"), "int4")
    ref = quantize_model(load_model(trained, expert_backend="torch"), "int4")
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, ref(x).logits, rtol=1e-4, atol=1e-4)


def test_deepseek_routing_trains_saves_quantizes_and_serves(tmp_path):
    """The auxiliary-loss-free bias learned by the local trainer (a whole number of steps of size
    rate, saved and loaded with the checkpoint), then int8 experts beside a float shared expert: the
    loss stays, and the engine equals generate."""
    from moe.training import load_model

    rate = 1e-3
    cfg = shrunk(
        "tiny",
        d_model=32,
        d_ff=32,
        n_layers=2,
        max_seq_len=32,
        activation="swiglu",
        router_rule="sigmoid_topk",
        router_score_bias=True,
        router_bias_update_rate=rate,
        router_groups=4,
        router_topk_groups=2,
        shared_d_ff=32,
        shared_gate=True,
    )
    tc = TrainConfig(batch_size=8, seq_len=32, max_steps=12, warmup_steps=2, eval_interval=12, eval_batches=1)
    train(cfg, tc, tmp_path, progress=False, plot=False, log=lambda *_: None)
    model = load_model(tmp_path).eval()
    bias = model.blocks[0].moe.router.score_bias
    steps = bias / rate
    assert bias.abs().max() > 0 and torch.allclose(steps, steps.round(), atol=1e-3)  # 12 signed steps each
    assert steps.abs().max() <= 12
    q8 = quantize_model(model, "int8")
    assert torch.equal(q8.blocks[0].moe.router.score_bias, bias)
    assert abs(_val_loss(q8, T=32) - _val_loss(model, T=32)) < 0.01
    reqs = [Request([5 + i, 7, 11][: 1 + i % 3], 6, {"greedy": True}) for i in range(5)]
    for req, res in zip(reqs, Engine(q8, n_pages=20, page_size=4).run(reqs)):
        assert res.tokens == generate(q8, req.prompt, req.max_new_tokens, greedy=True)
