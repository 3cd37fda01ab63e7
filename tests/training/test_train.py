"""Training, checkpoints and resume on a shrunk tiny preset (seconds on a CPU)."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import shrunk

from moe import checksums
from moe.config import TrainConfig
from moe.model import MoETransformer
from moe.training import TrainingError, checkpoint, train

FAST = dict(
    batch_size=8,
    seq_len=32,
    max_steps=40,
    lr=1e-2,
    min_lr=1e-3,
    warmup_steps=5,
    eval_interval=10,
    eval_batches=2,
    checkpoint_interval=10,
)


def run(out, model_cfg=None, resume=False, allow_changes=False, **kw):
    return train(
        model_cfg or shrunk("tiny"),
        TrainConfig(**{**FAST, **kw}),
        out,
        resume=resume,
        allow_changes=allow_changes,
        progress=False,
        plot=False,
        log=lambda *_: None,
    )


def test_short_training_lowers_the_loss(tmp_path):
    s = run(tmp_path)
    val = s["history"]["val_loss"]
    assert len(val) == 4
    assert val[-1] < val[0] - 0.3, val  # from near ln(256) = 5.5 toward byte statistics
    assert s["steps"] == 40 and s["tokens"] == 40 * 8 * 32


def test_plot_is_written(tmp_path):
    train(shrunk("tiny"), TrainConfig(**{**FAST, "max_steps": 10}), tmp_path, progress=False, log=lambda *_: None)
    assert (tmp_path / "training.png").stat().st_size > 10_000


def test_time_budget_refits_when_the_machine_speeds_up(tmp_path, monkeypatch):
    """A fake clock (binary-exact durations): steps 10-29 take 0.5 s, all others 0.125 s; budget 20 s.
    The first fit, at step 30 with 11.25 s spent, expects 0.5 s/step and would stop at step 47;
    re-fitting from the faster later steps must end exactly at the budget: step 100, 20 s."""
    import moe.training.loop as train_module

    calls = {"n": 0}

    def duration(i):
        return 0.5 if 10 <= i < 30 else 0.125

    def fake_clock():  # called twice per step: at its start and at its end
        i, end = divmod(calls["n"], 2)
        calls["n"] += 1
        return sum(duration(s) for s in range(i)) + (duration(i) if end else 0.0)

    monkeypatch.setattr(train_module, "_clock", fake_clock)
    s = run(tmp_path, max_steps=10_000, time_budget_s=20.0, eval_interval=1000, checkpoint_interval=1000)
    assert (s["max_steps"], s["steps"]) == (100, 100)
    assert s["train_time_s"] == 20.0


def test_checkpoint_round_trip(tmp_path):
    cfg = shrunk("tiny", tie_embeddings=True)
    run(tmp_path, cfg, max_steps=10)
    loaded = checkpoint.load_model(tmp_path)
    assert loaded.cfg == cfg
    original = MoETransformer(cfg)
    checkpoint.load_weights(original, tmp_path / "step-0000010")
    for (n, a), (_, b) in zip(loaded.state_dict().items(), original.state_dict().items()):
        assert torch.equal(a, b), n
    assert json.loads((tmp_path / "step-0000010" / "config.json").read_text())["train"]["max_steps"] == 10


def test_resume_continues_exactly(tmp_path):
    cfg = shrunk("tiny", router_jitter=0.1)  # jitter uses the global RNG: resume must restore it
    straight = tmp_path / "straight"
    run(straight, cfg, max_steps=20)  # checkpoints at steps 10 and 20 (both kept)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    os.system(f"cp -r {straight}/step-0000010 {resumed}/ && echo step-0000010 > {resumed}/latest")
    s = run(resumed, cfg, resume=True, max_steps=20)
    assert s["steps"] == 20
    a = checkpoint.load_model(straight / "step-0000020").state_dict()
    b = checkpoint.load_model(resumed).state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    sa = checkpoint.load_trainer_state(straight / "step-0000020")
    sb = checkpoint.load_trainer_state(resumed)
    assert sa["history"]["val_loss"] == sb["history"]["val_loss"]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real, calls = F.cross_entropy, {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        return real(*a, **k) * (float("nan") if calls["n"] > 15 else 1.0)

    monkeypatch.setattr(F, "cross_entropy", poisoned)
    with pytest.raises(TrainingError, match=r"loss became nan at step \d+.*step-0000010"):
        run(tmp_path, checkpoint_interval=10, eval_interval=1000)
    monkeypatch.undo()
    assert (tmp_path / "latest").read_text().strip() == "step-0000010"
    model = checkpoint.load_model(tmp_path)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def reseal(directory) -> None:
    """Record a directory's checksums again, as its writer would have after a deliberate edit."""
    (directory / checksums.FILE).write_bytes(checksums.encode(checksums.entries(directory)))


def test_checkpoint_for_another_config_names_the_tensors(tmp_path):
    run(tmp_path, max_steps=10)
    other = MoETransformer(shrunk("tiny", d_ff=40, n_layers=3))
    with pytest.raises(ValueError, match=r"w_up: checkpoint \(16, 32, 24\) vs model \(16, 32, 40\).*missing blocks\.2"):
        checkpoint.load_weights(other, tmp_path)
    with pytest.raises(ValueError, match="does not fit"):
        run(tmp_path, shrunk("tiny", d_ff=40), resume=True, max_steps=10)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoint.load_model(tmp_path / "nothing-here")
    config = tmp_path / "step-0000010" / "config.json"
    config.write_text(config.read_text().replace('"d_ff"', '"d_fff"'))
    reseal(config.parent)  # else the edit is caught as damage (tests/training/test_reliability.py)
    with pytest.raises(ValueError, match="unknown ModelConfig field.*d_fff.*checkpoint"):
        checkpoint.load_model(tmp_path)


def test_a_fresh_run_refuses_to_overwrite_checkpoints(tmp_path):
    run(tmp_path, max_steps=10)
    with pytest.raises(ValueError, match="already holds a checkpoint.*--resume.*--overwrite"):
        run(tmp_path, max_steps=10)
    assert (tmp_path / "latest").read_text().strip() == "step-0000010"
    s = train(
        shrunk("tiny"),
        TrainConfig(**{**FAST, "max_steps": 5}),
        tmp_path,
        overwrite=True,
        progress=False,
        plot=False,
        log=lambda *_: None,
    )
    assert s["steps"] == 5 and sorted(p.name for p in tmp_path.glob("step-*")) == ["step-0000005"]


def test_a_write_killed_midway_never_corrupts_the_previous_checkpoint(tmp_path, monkeypatch):
    cfg = shrunk("tiny")
    run(tmp_path, cfg, max_steps=10)
    before = checkpoint.load_model(tmp_path).state_dict()

    def dies_midway(tensors, path):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("killed")

    monkeypatch.setattr(checkpoint, "save_file", dies_midway)
    with pytest.raises(OSError, match="killed"):
        checkpoint.save_checkpoint(tmp_path, MoETransformer(cfg), cfg, step=20)
    monkeypatch.undo()
    assert (tmp_path / "latest").read_text().strip() == "step-0000010"
    after = checkpoint.load_model(tmp_path).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    s = run(tmp_path, cfg, resume=True, max_steps=20, allow_changes=True)  # and training goes on from it
    assert s["steps"] == 20


def test_generate_cli_and_errors(tmp_path):
    run(tmp_path, max_steps=10)
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "moe",
            "generate",
            "--checkpoint",
            str(tmp_path),
            "--prompt",
            "To be",
            "--max-new-tokens",
            "8",
            "--greedy",
        ],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("To be")
    bad = subprocess.run(
        [sys.executable, "-m", "moe", "generate", "--checkpoint", str(tmp_path), "--prompt", "x" * 70],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "longer than max_seq_len 64" in bad.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "moe", "generate", "--checkpoint", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "no checkpoint" in missing.stderr
    preset = subprocess.run([sys.executable, "-m", "moe", "train", "--config", "huge"], capture_output=True, text=True)
    assert preset.returncode == 2 and "unknown preset 'huge'" in preset.stderr


def test_expert_backend_flag_reaches_the_model(tmp_path):
    """--expert-backend picks the expert kernels at generation time: the Triton kernels (through the
    interpreter without a GPU) give the same greedy text as PyTorch; without CUDA or the interpreter,
    'triton' is a clear error."""
    run(tmp_path, max_steps=5)
    args = [
        sys.executable,
        "-m",
        "moe",
        "generate",
        "--checkpoint",
        str(tmp_path),
        "--prompt",
        "To",
        "--greedy",
        "--max-new-tokens",
        "3",
        "--expert-backend",
    ]
    outs = {b: subprocess.run(args + [b], capture_output=True, text=True) for b in ("torch", "triton")}
    assert all(o.returncode == 0 for o in outs.values()), [o.stderr for o in outs.values()]
    assert outs["triton"].stdout == outs["torch"].stdout
    if not torch.cuda.is_available():
        env = {**os.environ, "TRITON_INTERPRET": "0"}
        bad = subprocess.run(args + ["triton"], capture_output=True, text=True, env=env)
        assert bad.returncode == 2 and "needs CUDA tensors" in bad.stderr


def test_compare_dense_script(tmp_path):
    """bench.compare_dense end to end on short runs: two pairs trained through the CLI, each
    pair's figures recomputed here from the runs' summaries, the medians, --reuse, the plot."""
    import pathlib
    import statistics

    import numpy as np

    root = pathlib.Path(__file__).resolve().parents[2]
    args = [
        sys.executable,
        "-m",
        "bench.compare_dense",
        "--config",
        "tiny",
        "--pairs",
        "2",
        "--modes",
        "eager",
        "--runs",
        str(tmp_path / "runs"),
        "--out",
        str(tmp_path / "out"),
        "--max-steps",
        "6",
        "--time-budget",
        "0",
        "--set",
        "n_layers=1",
        "--set",
        "eval_batches=2",
        "--set",
        "eval_interval=3",
        "--batch-size",
        "8",
        "--seq-len",
        "64",
    ]
    r = subprocess.run(args, capture_output=True, text=True, cwd=root)
    assert r.returncode == 0, r.stderr
    order = [line.split("--out ")[1].split()[0] for line in r.stdout.splitlines() if line.startswith("$")]
    assert [pathlib.Path(o).name for o in order] == ["moe-eager-0", "dense-eager-0", "dense-eager-1", "moe-eager-1"]
    result = json.loads((tmp_path / "out" / "moe_vs_dense.json").read_text())
    rows = result["modes"]["eager"]["pairs"]
    for p, row in enumerate(rows):
        runs = {
            m: json.loads((tmp_path / "runs" / f"{m}-eager-{p}" / "summary.json").read_text()) for m in ("moe", "dense")
        }
        assert runs["moe"]["config"] == "tiny" and runs["dense"]["config"] == "tiny-dense"
        budget = min(s["history"]["train_time_s"][-1] for s in runs.values())
        tokens = min(s["tokens"] for s in runs.values())
        at = {m: np.interp(budget, s["history"]["train_time_s"], s["history"]["val_loss"]) for m, s in runs.items()}
        at_tokens = {m: np.interp(tokens, s["history"]["tokens"], s["history"]["val_loss"]) for m, s in runs.items()}
        assert row["moe_val_at_budget"] == pytest.approx(at["moe"], abs=1e-4)
        assert row["lead_at_budget"] == pytest.approx(at["dense"] - at["moe"], abs=2e-4)
        assert row["lead_at_tokens"] == pytest.approx(at_tokens["dense"] - at_tokens["moe"], abs=2e-4)
    median = result["modes"]["eager"]["median"]
    for key in ("lead_at_budget", "lead_at_tokens", "moe_val_at_budget"):
        assert median[key] == pytest.approx(statistics.median(r[key] for r in rows), abs=1e-4)
    assert all(v > 0 for v in result["layer_breakdown_ms"].values())
    assert (tmp_path / "out" / "moe_vs_dense.png").stat().st_size > 10_000
    again = subprocess.run(
        args + ["--reuse", "--out", str(tmp_path / "again")], capture_output=True, text=True, cwd=root
    )
    assert again.returncode == 0 and "$" not in again.stdout, again.stderr  # trains nothing
    assert json.loads((tmp_path / "again" / "moe_vs_dense.json").read_text())["modes"] == result["modes"]
    (tmp_path / "runs" / "dense-eager-1" / "summary.json").unlink()  # as if interrupted in that run
    kept = subprocess.run(args + ["--keep", "--out", str(tmp_path / "kept")], capture_output=True, text=True, cwd=root)
    assert kept.returncode == 0, kept.stderr
    assert [line.split("--out ")[1].split()[0] for line in kept.stdout.splitlines() if line.startswith("$")] == [
        str(tmp_path / "runs" / "dense-eager-1")
    ]  # only the missing run is trained again


def test_compiled_training_step_follows_eager():
    """TrainConfig.compile: the same model, batches and AdamW through torch.compile (inductor on the
    CPU) and eagerly, at a new learning rate every step. Float32 throughout; inductor fuses and
    reorders sums, so the losses and gradient norms agree to float32 rounding grown over a few steps,
    not bit for bit: 1e-4 relative (seen: 9e-8 at most). The learning rate is data to the compiled
    update, so the graphs of the first step serve every later one (counted: the forward, and the
    update's clipping and AdamW, which torch.optim splits with a deliberate graph break)."""
    from torch._dynamo.utils import counters

    from moe.training.local import LocalTrainer

    cfg = shrunk("tiny")
    runs = {}
    torch._dynamo.reset()
    counters.clear()
    for compiled in (False, True):
        trainer = LocalTrainer(cfg, TrainConfig(batch_size=4, seq_len=32, warmup_steps=0, compile=compiled), "cpu")
        gen = torch.Generator().manual_seed(0)
        runs[compiled] = []
        for i in range(4):
            x = torch.randint(0, cfg.vocab_size, (4, 32), generator=gen)
            r = trainer.step(x, x.roll(-1, dims=1), 1e-3 * (4 - i))
            runs[compiled].append((r.loss, r.grad_norm))
            if i == 0:
                first_graphs = counters["stats"]["unique_graphs"]
        assert (trainer.compile_s is not None) == compiled and trainer.describe()["compiled"] == compiled
    assert first_graphs == counters["stats"]["unique_graphs"] == 3, dict(counters["stats"])  # no recompiles
    assert runs[False][-1][0] < runs[False][0][0]  # it trains
    for eager, comp in zip(runs[False], runs[True], strict=True):
        for e, c in zip(eager, comp, strict=True):
            assert abs(c / e - 1) < 1e-4, (runs[False], runs[True])
    with pytest.raises(ValueError, match="compile must be true or false"):
        TrainConfig(compile="yes")


def test_a_run_resumes_with_or_without_compile(tmp_path):
    """A checkpoint resumes in either mode and the trainer keeps its own way of updating (a fused
    AdamW eagerly; compiled, a tensor learning rate, which a float from an eager checkpoint would
    turn into a recompile at every new value). From the same checkpoint, the next steps' losses and
    weights agree between the two modes to float32 rounding."""
    from moe.training.local import LocalTrainer

    cfg = shrunk("tiny")
    small = dict(max_steps=10, batch_size=4)  # the step test's shapes: its compiled graphs serve
    run(tmp_path / "eager", cfg, **small)
    run(tmp_path / "compiled", cfg, **small, compile=True)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, cfg.vocab_size, (4, 33), generator=gen) for _ in range(3)]
    for source in ("eager", "compiled"):
        results = {}
        for compiled in (False, True):
            trainer = LocalTrainer(cfg, TrainConfig(**{**FAST, **small, "compile": compiled}), "cpu")
            trainer.load(tmp_path / source / "step-0000010")
            for group in trainer.optimizer.param_groups:
                assert isinstance(group["lr"], torch.Tensor) == compiled and bool(group["fused"]) != compiled
            losses = [trainer.step(b[:, :-1], b[:, 1:], 1e-3 / (i + 1)).loss for i, b in enumerate(batches)]
            results[compiled] = losses, [p.detach().clone() for p in trainer.model.parameters()]
        (eager_losses, eager_w), (comp_losses, comp_w) = results[False], results[True]
        assert comp_losses == pytest.approx(eager_losses, rel=1e-4), source
        for a, b in zip(eager_w, comp_w, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_compile_is_refused_in_a_layout():
    from moe.layout import Layout
    from moe.parallel.trainer import DistributedTrainer, close_process_group, init_process_group

    device = init_process_group("cpu")  # a world of one
    try:
        with pytest.raises(ValueError, match="compile = true is for one process only"):
            DistributedTrainer.build(shrunk("tiny"), TrainConfig(batch_size=4, compile=True), Layout(), device)
    finally:
        close_process_group()
