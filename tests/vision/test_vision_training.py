"""Stage 2 (Flamingo's recipe) through the one training loop: a text checkpoint's language model,
frozen, under a vision path that learns; checkpoints, resume, the plot; refusals of mismatched checkpoints."""

import shutil

import pytest
import torch
from conftest import shrunk
from safetensors.torch import load_file

from moe.__main__ import main
from moe.config import TrainConfig
from moe.model import MoETransformer
from moe.training import checkpoint, train
from moe.vision.captions import CaptionDataset
from moe.vision.transcribe import caption_loss, held_out

# 16 x 208 images: the renderer's 32-character lines
VISION = dict(
    channels=1,
    image_height=16,
    image_width=208,
    patch_size=4,
    d_model=32,
    n_layers=1,
    n_heads=2,
    d_ff=64,
    n_latents=16,
    resampler_layers=1,
    cross_attn_every=1,
    image_token=0,
)
FAST = dict(
    batch_size=8,
    seq_len=40,
    max_steps=30,
    lr=1e-2,
    min_lr=1e-3,
    warmup_steps=3,
    eval_interval=10,
    eval_batches=2,
    checkpoint_interval=10,
)
quiet = dict(progress=False, log=lambda *_: None)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("text")
    torch.manual_seed(0)
    train(shrunk("tiny"), TrainConfig(**{**FAST, "seq_len": 32, "max_steps": 20}), out, plot=False, **quiet)
    return out


# The reading path (a strip stem, reading-order windows; tiny-vision's own)
READING = dict(stem="strips", stem_channels=8, n_layers=0, n_latents=52, reading_window=True)


def vision_cfg(path=None, **kw):
    return shrunk("tiny-vision", vision={**VISION, **(path or {})}, **kw)


@pytest.mark.parametrize("path", [{}, READING], ids=["flamingo", "reading"])
def test_stage_two_freezes_the_language_model_and_lowers_the_caption_loss(text_run, tmp_path, path):
    s = train(vision_cfg(path), TrainConfig(**FAST), tmp_path, init_from=text_run, **quiet)
    text = load_file(str(checkpoint.resolve(text_run) / "model.safetensors"))
    vision = load_file(str(tmp_path / "step-0000030" / "model.safetensors"))
    assert all(torch.equal(vision[f"lm.{k}"], v) for k, v in text.items())  # frozen, bit for bit
    gates = s["history"]["gates"]
    assert len(gates) == 3 and any(abs(g) > 1e-3 for g in gates[-1][0])  # the gates opened
    assert (tmp_path / "training.png").stat().st_size > 10_000

    lines, images = held_out(CaptionDataset.bundled(vision_cfg(path).vision), 64)
    start = checkpoint.build_model(vision_cfg(path))  # the model at initialisation: the text model's logits
    checkpoint.load_weights(start, text_run)
    trained = checkpoint.load_model(tmp_path)
    assert caption_loss(trained, lines, images) < caption_loss(start, lines, images) - 0.05
    if path:  # the gated blocks' reading windows learned (they start at zero shift)
        assert any(block.window.shift.abs().max() > 1e-3 for block in trained.xattn)


def test_a_vision_run_resumes_exactly(text_run, tmp_path):
    cfg, fast = vision_cfg(), TrainConfig(**dict(FAST, max_steps=20))
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(cfg, fast, straight, init_from=text_run, plot=False, **quiet)  # checkpoints at 10 and 20
    resumed.mkdir()
    shutil.copytree(straight / "step-0000010", resumed / "step-0000010")
    (resumed / "latest").write_text("step-0000010\n")
    s = train(cfg, fast, resumed, resume=True, plot=False, **quiet)
    assert s["steps"] == 20
    a = checkpoint.load_model(straight / "step-0000020").state_dict()
    b = checkpoint.load_model(resumed).state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_mismatched_checkpoints_are_refused_by_name(text_run, tmp_path, capsys):
    with pytest.raises(ValueError, match="d_model 32 in the checkpoint vs 48"):
        train(vision_cfg(d_model=48), TrainConfig(**FAST), tmp_path / "x", init_from=text_run, **quiet)
    train(
        vision_cfg(), TrainConfig(**{**FAST, "max_steps": 10}), tmp_path / "v", init_from=text_run, plot=False, **quiet
    )
    with pytest.raises(ValueError, match="holds a vision model .* does not load as a text-only model"):
        checkpoint.load_weights(MoETransformer(shrunk("tiny")), tmp_path / "v")
    line = tmp_path / "line.png"  # the CLI reads an image file and transcribes (a 10-step model: any text)
    assert main(["render", "Now is the winter of our", "--out", str(line)]) == 0
    capsys.readouterr()
    assert (
        main(
            ["generate", "--checkpoint", str(tmp_path / "v"), "--image", str(line), "--greedy", "--max-new-tokens", "5"]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith("<image>")
    assert main(["generate", "--checkpoint", str(text_run), "--image", str(line)]) == 2  # a text model
    assert main(["quantize", "--checkpoint", str(tmp_path / "v"), "--dtype", "int8", "--out", str(tmp_path / "q")]) == 2
    with pytest.raises(ValueError, match="--data is for text models"):
        train(vision_cfg(), TrainConfig(**FAST), tmp_path / "y", data="shakespeare", **quiet)
    assert main(["train", "--config", "tiny-vision", "--dp", "2", "--out", str(tmp_path / "z")]) == 2


def test_the_measurement_scripts_run_end_to_end(text_run, tmp_path):
    """bench.vision_cer and bench.vision_probe at test size: the files the README quotes come out."""
    import bench.vision_cer
    import bench.vision_probe

    run = tmp_path / "run"
    train(vision_cfg(), TrainConfig(**{**FAST, "max_steps": 10}), run, init_from=text_run, plot=False, **quiet)
    result = bench.vision_cer.main(
        ["--run", str(run), "--text", str(text_run), "--lines", "8", "--out", str(tmp_path / "out")]
    )
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "vision_stage2.json",
        "vision_stage2.md",
        "vision_stage2.png",
        "vision_grid.png",
    }
    assert len(result["curve"]) == 1 and result["setup"]["held_out_lines"] == 8  # one evaluation at step 10
    assert 0 <= result["final"]["cer"] and result["baselines"]["text-only model, no image"]["cer"] >= 0
    probe = bench.vision_probe.main(["--steps", "2", "--out", str(tmp_path / "probe")])
    assert {"aligned", "attention", "stem", "window", "window_fit", "resampled_seed2"} <= set(probe)
    assert all(len(probe[k]) == 1 for k in ("aligned", "attention", "stem", "window"))  # the last step is logged


def test_compiled_stage_two_follows_eager():
    """train --compile with a vision model: the language model's blocks through torch.compile, the
    vision path eager; the losses of a few stage-2 steps agree with eager to float32 rounding (1e-4
    relative, as tests/training/test_train.py's text check)."""
    from moe.training.local import LocalTrainer

    cfg = vision_cfg(READING)
    data = CaptionDataset.bundled(cfg.vision)
    runs = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        trainer = LocalTrainer(cfg, TrainConfig(batch_size=4, seq_len=40, warmup_steps=0, compile=compiled), "cpu")
        gen = torch.Generator().manual_seed(0)
        runs[compiled] = [trainer.step(*data.batch("train", 4, 40, gen), 1e-3).loss for _ in range(3)]
        assert (trainer.compile_s is not None) == compiled
    for eager, comp in zip(runs[False], runs[True], strict=True):
        assert abs(comp / eager - 1) < 1e-4, runs
