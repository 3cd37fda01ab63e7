"""Every layout's training step equals one process's step on the whole batch (gloo, CPU processes).

Each case runs a layout on processes spawned once for the module (tests/parallel/dist_worker.py),
trains two steps with AdamW and an active gradient clip, and writes a distributed checkpoint. Here,
one process trains the same two steps on the whole batch (gradient accumulation over the same
microbatches), loads that checkpoint (which also tests loading any layout into one process) and
compares losses, gradient norms and every weight.

Tolerances: float32 throughout; a layout changes only the order of sums (all-reduce, split
matmuls), so losses agree to a few ulps. AdamW divides each gradient by its own running scale, so
a weight moves by about lr per step whatever the gradient's size, and its error is about lr times
the gradient's relative error: 1e-5 absolute at lr 1e-3 leaves a wide margin over the 2e-6 seen.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import ROUTING
from dist_worker import SMALL, TRAIN, batches

from moe.config import load_config, load_train_config
from moe.data.instruct import IGNORE_INDEX
from moe.layout import Layout
from moe.model import MoETransformer, Positions
from moe.model.router import update_balance_biases
from moe.training import checkpoint
from moe.training.optim import make_optimizer

TOL = {"loss": 1e-5, "grad_norm (relative)": 1e-5, "weights": 1e-5}


@pytest.fixture
def spawn(pool):
    """spawn(layout, out, ...): train the layout on the pool's processes; rank 0's results."""

    def run(layout: dict, out, steps=2, load=None, model=None, bf16=False, record=False, sizes=None, packed=False):
        spec = dict(
            packed=packed,
            sizes=sizes,
            layout=layout,
            out=str(out),
            steps=steps,
            load=load and str(load),
            model=model or {},
            bf16=bf16,
            record=record,
        )
        pool.run(Layout(**layout).world_size, spec)
        return json.loads((out / "results.json").read_text())

    return run


def reference_model(cfg, train_cfg) -> MoETransformer:
    m = MoETransformer(cfg)  # built whole, on the host, as one process builds it
    m.init_weights(train_cfg.seed)  # the trainers' seed; they build on meta and materialize their shards
    torch.manual_seed(train_cfg.seed)  # and leave the global generator there (router jitter)
    return m


def reference(steps, microbatches=1, model=None, sizes=None, packed=False):
    """One process: the same model, batches (the first `sizes[i]` rows of step i's), clip and AdamW;
    (loss, grad norm) per step. packed: the cross-entropy is the sum over the batch's counted
    targets over their number, the router losses one per microbatch, averaged."""
    cfg = load_config("tiny", **{**SMALL, **(model or {})})
    train_cfg = load_train_config("tiny", **TRAIN)
    m = reference_model(cfg, train_cfg)
    opt = make_optimizer(m.parameters(), train_cfg)
    results = []
    for (x, y), b in zip(batches(cfg, train_cfg, steps, packed), sizes or [train_cfg.batch_size] * steps):
        y, loss = y[:b], 0.0
        if packed:
            counted = int((y != IGNORE_INDEX).sum())
            for idx, doc, y_mb in zip(
                x.idx_BT.chunk(microbatches), x.doc_BT.chunk(microbatches), y.chunk(microbatches)
            ):
                out = m(idx, positions=Positions.packed(doc))
                ce = F.cross_entropy(out.logits.view(-1, cfg.vocab_size), y_mb.reshape(-1), reduction="sum") / counted
                (ce + out.aux_loss / microbatches).backward()
                loss += ce.item()
            results.append((loss, torch.nn.utils.clip_grad_norm_(m.parameters(), train_cfg.grad_clip).item()))
            opt.step()
            opt.zero_grad()
            continue
        for x_mb, y_mb in zip(x[:b].chunk(microbatches), y.chunk(microbatches)):
            out = m(x_mb, targets=y_mb)
            ((out.loss + out.aux_loss) / microbatches).backward()
            loss += out.loss.item() / microbatches
        norm = torch.nn.utils.clip_grad_norm_(m.parameters(), train_cfg.grad_clip).item()
        opt.step()
        update_balance_biases(m)
        opt.zero_grad()
        results.append((loss, norm))
    return m, results


def check_against_reference(got, out, steps, microbatches=1, model=None, sizes=None, packed=False):
    """`got`: (loss, grad norm) of the last len(got) of `steps` steps; out: the run directory."""
    ref_model, want = reference(steps, microbatches, model, sizes, packed)
    assert want[0][1] > TRAIN["grad_clip"], "the clip should be active, or it is not tested"
    for (loss, norm), (ref_loss, ref_norm) in zip(got, want[steps - len(got) :], strict=True):
        assert abs(loss - ref_loss) < TOL["loss"]
        assert abs(norm / ref_norm - 1) < TOL["grad_norm (relative)"]
    loaded = MoETransformer(ref_model.cfg)
    checkpoint.load_weights(loaded, out / f"step-{steps:07d}")  # a distributed checkpoint, whole, in one process
    for (name, w), w_ref in zip(loaded.state_dict().items(), ref_model.state_dict().values()):
        err = (w - w_ref).abs().max().item()
        assert err < TOL["weights"], f"{name}: {err:.2e}"


FOUR = dict(n_layers=4)  # interleaved: 2 ranks x 2 chunks of one layer
# The routing rules (moe/model/router.py), each with the pieces its family adds. The score bias
# is learned from the load all data shards count, so every rank's copy must stay one process's.
DEEPSEEK, GPT_OSS, LLAMA4, EXPERT_CHOICE = (ROUTING[k] for k in ("deepseek-v3", "gpt-oss", "llama4", "expert-choice"))
SWITCH = dict(top_k=1, router_renormalize=False, capacity_factor=1.0)  # capacity: the whole batch, no data shards
LAYOUTS = {  # name: (layout, model overrides)
    "dp2 zero1": (dict(dp=2), None),
    "dp2 fsdp": (dict(dp=2, sharding="fsdp"), None),
    "ep2": (dict(ep=2), None),
    "tp2": (dict(tp=2), None),
    "pp2 1f1b": (dict(pp=2, microbatches=2), None),
    "pp2 gpipe, uneven": (dict(pp=2, microbatches=4, schedule="gpipe", first_stage_layers=1), dict(n_layers=3)),
    "dp2 x ep2, 2 microbatches": (dict(dp=2, ep=2, microbatches=2), None),
    "dp2 x ep2 fsdp": (dict(dp=2, ep=2, sharding="fsdp"), None),
    "tp2 x pp2": (dict(tp=2, pp=2, microbatches=2), None),
    "ep2 x tp2": (dict(ep=2, tp=2), None),
    "dp2 x tp2 zero1": (dict(dp=2, tp=2), None),  # FSDP2 x tp on one 2-D mesh
    "dp2 x tp2 fsdp": (dict(dp=2, tp=2, sharding="fsdp"), None),
    "dp2 x pp2 zero1": (dict(dp=2, pp=2, microbatches=2), None),
    "pp2 interleaved 1f1b x2": (dict(pp=2, microbatches=2, schedule="interleaved-1f1b", virtual_stages=2), FOUR),
    "pp2 zero bubble x2": (dict(pp=2, microbatches=4, schedule="zero-bubble", virtual_stages=2), FOUR),
    "dp2 x ep2, DeepSeek-V3 routing, shared experts": (dict(dp=2, ep=2, microbatches=2), DEEPSEEK),
    "tp2, DeepSeek-V3 routing, shared experts": (dict(tp=2), DEEPSEEK),
    "ep2 x tp2, gpt-oss routing": (dict(ep=2, tp=2), GPT_OSS),
    "ep2 x tp2, Llama 4 routing": (dict(ep=2, tp=2), LLAMA4),
    "tp2, Switch routing": (dict(tp=2), SWITCH),
    "tp2, expert choice": (dict(tp=2), EXPERT_CHOICE),
    "dp2 x pp2 interleaved x2": (
        dict(dp=2, pp=2, microbatches=2, schedule="interleaved-1f1b", virtual_stages=2, sharding="fsdp"),
        FOUR,
    ),
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_layout_step_matches_one_process(name, tmp_path, spawn):
    layout, model = LAYOUTS[name]
    got = spawn(layout, tmp_path, model=model)
    check_against_reference(got, tmp_path, 2, layout.get("microbatches", 1), model)


@pytest.mark.parametrize("layout", [dict(dp=2, ep=2, microbatches=2), dict(tp=2)], ids=["dp2 x ep2 mb2", "tp2"])
def test_packed_instruction_rows_train_as_one_process(layout, tmp_path, spawn):
    """Packed rows (moe/data/instruct.py) whose counted targets differ from row to row: each
    microbatch of each data shard weighs its loss by the targets it counts, so the step is one
    process's mean over the whole batch's counted targets; attention's document mask on tp's split
    heads."""
    got = spawn(layout, tmp_path, packed=True)
    check_against_reference(got, tmp_path, 2, layout.get("microbatches", 1), packed=True)


def test_a_batch_size_ramp_gives_each_rank_more_rows_and_matches_one_process(tmp_path, spawn):
    """A ramp (TrainConfig.ramp_*) in a layout: the batch grows from 4 to 8 rows between steps, and
    every rank of dp2 x ep2 (four data shards) takes its share of each (1 row, then 2), as the loop
    hands them out; losses and weights follow one process's."""
    got = spawn(dict(dp=2, ep=2), tmp_path, sizes=[4, 8])
    check_against_reference(got, tmp_path, 2, sizes=[4, 8])


@pytest.mark.parametrize("sharding,microbatches", [("zero1", 1), ("zero1", 2), ("fsdp", 1)])
def test_gradient_sync_bytes_per_step(sharding, microbatches, tmp_path, spawn):
    """Data parallel traffic of one step, tallied by a recording layer over torch.distributed (rank 0,
    second step): "zero1" all-gathers and reduce-scatters the parameter bytes once each, 2x in all,
    with or without gradient accumulation; "fsdp" gathers twice (forward and backward), 3x. Parameter
    bytes here are the float32 model's, each first dimension padded to a multiple of dp as FSDP2
    pads its shards; everything else (loss, norm, router counts) is a few hundred bytes."""
    dp = 2
    got = spawn(dict(dp=dp, microbatches=microbatches, sharding=sharding), tmp_path, record=True)
    tally = got[-1][2]
    cfg = load_config("tiny", **SMALL)
    padded = sum(-(-p.shape[0] // dp) * dp * p[0].numel() * 4 for p in MoETransformer(cfg).parameters())
    gathers = 2 if sharding == "fsdp" else 1
    assert tally.get("all_gather_single", 0) == gathers * padded
    assert tally.get("reduce_scatter_single", 0) == padded
    small = sum(v for k, v in tally.items() if k not in ("all_gather_single", "reduce_scatter_single"))
    assert small < 1000, tally
    if sharding == "zero1":
        assert sum(tally.values()) <= 2 * padded + 1000


def test_checkpoint_reshards_into_another_layout(tmp_path, spawn):
    """Step 1 in dp x ep with ZeRO-1, step 2 after loading its checkpoint (weights and AdamW state)
    into tensor x pipeline parallel: the same as two steps in one process."""
    first = tmp_path / "dp2-ep2"
    spawn(dict(dp=2, ep=2, microbatches=2), first, steps=1)
    second = tmp_path / "tp2-pp2"
    got = spawn(dict(tp=2, pp=2, microbatches=2), second, steps=1, load=first / "step-0000001")
    check_against_reference(got, second, 2, microbatches=2)


def test_torchrun_cli_trains_resumes_in_another_layout_and_generates(tmp_path):
    """The command line end to end on a prepared BPE dataset: expert parallel under torchrun, resumed
    as a pipeline, then one process samples from the distributed checkpoint with its tokenizer."""
    from moe.data import bundled_split
    from moe.data.prepare import prepare

    docs = tmp_path / "docs"
    docs.mkdir()
    text = bundled_split(0.05)[0][:60_000].decode()
    for i in range(12):
        (docs / f"{i}.txt").write_text(text[i * 5000 : (i + 1) * 5000])
    prepare([docs], "bpe:300", tmp_path / "data", val_fraction=0.25, progress=False, log=lambda *_: None)
    run = tmp_path / "run"
    small = [
        f"--set={k}={v}"
        for k, v in {**SMALL, "eval_interval": 2, "eval_batches": 1, "checkpoint_interval": 2}.items()
        if k != "vocab_size"
    ]
    common = [
        "-m",
        "moe",
        "train",
        "--config",
        "tiny",
        "--data",
        str(tmp_path / "data"),
        "--batch-size",
        "8",
        "--seq-len",
        "16",
        "--out",
        str(run),
        *small,
    ]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    first = subprocess.run(torchrun + common + ["--ep", "2", "--max-steps", "4"], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "layout ep=2,zero1 on 2 process(es)" in first.stdout and "step 4/4" in first.stdout
    second = subprocess.run(
        torchrun + common + ["--pp", "2", "--microbatches", "2", "--max-steps", "6", "--resume", "--allow-changes"],
        capture_output=True,
        text=True,
    )  # max_steps 4 -> 6
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout and "at step 4 (written by layout ep=2,zero1)" in second.stdout
    assert "step 6/6" in second.stdout
    assert (run / "step-0000006" / "tokenizer.moe.json").exists()  # rank 0 wrote it beside the shards
    gen = subprocess.run(
        [sys.executable, "-m", "moe", "generate", "--checkpoint", str(run), "--prompt", "To", "--max-new-tokens", "5"],
        capture_output=True,
        text=True,
    )
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert gen.stdout.startswith("To")


def _worker(launcher: int, local_rank: int) -> int | None:
    """The pid of torchrun's worker of that local rank, among the launcher's children."""
    for child in pathlib.Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
        try:
            env = pathlib.Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"LOCAL_RANK={local_rank}".encode() in env:
            return int(child)
    return None


def test_a_killed_rank_is_restarted_by_torchrun_and_the_run_ends_as_an_unbroken_one(tmp_path):
    """`train --resume auto` under torchrun --max-restarts: SIGKILL one rank of a dp=2 run after its
    first checkpoint; torchrun restarts both ranks, which continue from the latest checkpoint, and the
    final weights equal those of the same run never interrupted (a fixed schedule: bit for bit)."""
    import signal
    import time

    small = [f"--set={k}={v}" for k, v in {**SMALL, "eval_interval": 10, "eval_batches": 1}.items()]
    common = ["-m", "moe", "train", "--config", "tiny", "--dp", "2", "--batch-size", "4", "--seq-len", "16"]
    common += ["--max-steps", "40", "--set=checkpoint_interval=5", "--resume", "auto", "--no-progress", *small]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    torchrun += ["--max-restarts", "1", "--monitor-interval", "0.1"]
    straight = subprocess.run(torchrun + common + ["--out", str(tmp_path / "straight")], capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert "resumed" not in straight.stdout  # --resume auto with nothing to resume: a fresh run
    run = tmp_path / "killed"
    proc = subprocess.Popen(torchrun + common + ["--out", str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (run / "latest").exists() and time.monotonic() < deadline and proc.poll() is None:  # a checkpoint
        time.sleep(0.01)
    victim = _worker(proc.pid, 1)
    assert victim is not None, "no rank 1 to kill"
    os.kill(victim, signal.SIGKILL)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err.decode()[-3000:]
    assert b"resumed from" in out and b"step 40/40" in out, out.decode()[-2000:]
    a = checkpoint.load_model(tmp_path / "straight").state_dict()
    b = checkpoint.load_model(run).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("layout", [dict(ep=2), dict(pp=2, microbatches=2), dict(dp=2, sharding="fsdp")])
def test_bf16_autocast_layouts_run_and_match_one_process(layout, tmp_path, spawn):
    """The paths only a GPU run takes, on gloo: bf16 autocast through the expert all-to-all, the
    pipeline's stage-to-stage sends and FSDP2's gradient reduction. Losses and weights follow one
    process under the same autocast to bf16's precision (8 bits of mantissa: the layouts round their
    partial sums at different places). What only NCCL on GPUs can confirm is left: its own reduction
    order and bf16 kernels, and overlap of communication with compute."""
    got = spawn(layout, tmp_path, bf16=True)
    cfg = load_config("tiny", **SMALL)
    train_cfg = load_train_config("tiny", **TRAIN)
    m = reference_model(cfg, train_cfg)
    opt = make_optimizer(m.parameters(), train_cfg)
    mb = layout.get("microbatches", 1)
    for (loss, _), (x, y) in zip(got, batches(cfg, train_cfg, 2), strict=True):
        ref = 0.0
        for x_mb, y_mb in zip(x.chunk(mb), y.chunk(mb)):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = m(x_mb, targets=y_mb)
            ((out.loss + out.aux_loss) / mb).backward()
            ref += out.loss.item() / mb
        torch.nn.utils.clip_grad_norm_(m.parameters(), train_cfg.grad_clip)
        opt.step()
        opt.zero_grad()
        assert abs(loss - ref) < 2e-2 * abs(ref)
    loaded = MoETransformer(cfg)
    checkpoint.load_weights(loaded, tmp_path / "step-0000002")
    errs = torch.cat(
        [(w - w_ref).abs().flatten() for w, w_ref in zip(loaded.state_dict().values(), m.state_dict().values())]
    )
    # AdamW moves a weight about lr a step whatever its gradient's size, so a near-zero gradient whose
    # sign the rounding flips moves it up to 2 lr the other way: a few such weights (seen: up to 3.3 lr),
    # while the mean error stays near 0.002 lr (seen); a lost or doubled gradient would not.
    assert errs.max() < 4.5 * TRAIN["lr"]
    assert errs.mean() < 0.02 * TRAIN["lr"]


def test_dist_memory_script_reports_every_rank(tmp_path):
    """bench.dist_memory (the peak-memory figures in bench/results) runs end to end, at tiny size."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.dist_memory",
            "--config",
            "tiny",
            "--layout",
            "dp=2",
            "--steps",
            "1",
            "--batch-size",
            "4",
            "--seq-len",
            "16",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=pathlib.Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert "peak RSS per rank" in lines[0] and len(lines) == 4
    for line in lines[2:]:
        before, built, stepped = (float(v.replace(",", "")) for v in line.split()[1:])
        assert 0 < before <= built <= stepped
