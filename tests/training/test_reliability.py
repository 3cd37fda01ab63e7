"""The run directory and the number handling, one test per way they could fail: one writer at a
time, errors before work, every signal and crash window survived, damage named, bad numbers refused."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import moe_cli, shrunk

from moe.checksums import DamagedFile
from moe.config import TrainConfig, load_config
from moe.data import tokenizer as tokenizers
from moe.model import MoETransformer
from moe.serving import Engine, Request, RequestError, SamplingParams, generate
from moe.training import checkpoint, run_dir, train
from moe.training.run_dir import RunDirError

FAST = dict(
    batch_size=4,
    seq_len=16,
    max_steps=4,
    lr=1e-2,
    warmup_steps=1,
    eval_interval=2,
    eval_batches=1,
    checkpoint_interval=2,
)
CLI = [sys.executable, "-m", "moe"]
TINY_CLI = [
    "--set",
    "d_model=32",
    "--set",
    "n_layers=1",
    "--set",
    "eval_interval=2",
    "--set",
    "eval_batches=1",
    "--batch-size",
    "4",
    "--seq-len",
    "16",
    "--time-budget",
    "0",
]


def run(out, resume=False, **kw):
    return train(
        shrunk("tiny"),
        TrainConfig(**{**FAST, **kw}),
        out,
        resume=resume,
        progress=False,
        plot=False,
        log=lambda *_: None,
    )


# 1. one writer at a time -------------------------------------------------------------------------


def _hold_lock(path):
    """A live process holding the run directory's lock until killed."""
    code = (
        f"from moe.training import run_dir; import time; l = run_dir.lock({str(path)!r}).__enter__(); "
        "print('held', flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_run_directory_has_one_writer_and_a_dead_holder_frees_it(tmp_path):
    holder = _hold_lock(tmp_path)
    try:
        t0 = time.perf_counter()
        with pytest.raises(RunDirError, match=rf"in use by another run \(process {holder.pid} holds"):
            run(tmp_path)
        assert time.perf_counter() - t0 < 5  # refused before any model was built
        assert not (tmp_path / "latest").exists()
    finally:
        holder.kill()  # kill -9: the holder never unlocks; the OS drops the lock with the process
        holder.wait()
    assert run(tmp_path)["steps"] == 4


def test_two_concurrent_cli_runs_do_not_both_write(tmp_path):
    args = ["train", "--config", "tiny", "--out", tmp_path, "--no-progress", *TINY_CLI, "--max-steps", "200"]
    procs = [
        subprocess.Popen(CLI + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    codes = sorted(r[2] for r in results)
    assert codes == [0, 2], results
    loser = next(r for r in results if r[2] == 2)
    # almost always the lock; on a machine slow enough that one run ends before the other starts, the
    # finished run's checkpoint refuses the second: either way one writer, and its checkpoints intact
    assert "in use by another run" in loser[1] or "already holds a checkpoint" in loser[1], loser[1]
    assert checkpoint.load_trainer_state(tmp_path)["step"] == 200


# 2. errors before work ---------------------------------------------------------------------------


def test_an_unwritable_out_fails_before_any_work(tmp_path):
    regular = tmp_path / "a-file"
    regular.write_text("not a directory")
    for out, why in [(regular, "exists and is not a directory"), (regular / "run", "Not a directory")]:
        r = moe_cli("train", "--config", "tiny", "--out", out, *TINY_CLI)
        assert r.returncode == 2 and why in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert f"cannot write the run directory '{out}'" in r.stderr
    r = moe_cli("serve-bench", "--config", "tiny", "--set", "d_model=32", "--requests", "2", "--out", regular)
    assert r.returncode == 2 and "cannot write the run directory" in r.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_out_fails_before_any_work(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(RunDirError, match="Permission denied"):
            run(ro)
    finally:
        ro.chmod(0o700)


# 3. signals --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_finishes_the_step_writes_a_checkpoint_and_exits_130(tmp_path, sig):
    args = [
        "train",
        "--config",
        "tiny",
        "--out",
        tmp_path,
        "--no-progress",
        *TINY_CLI,
        "--max-steps",
        "100000",
        "--set",
        "checkpoint_interval=100000",
    ]
    proc = subprocess.Popen(CLI + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("step 6/"):
            break
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    step = int(out.split("interrupted: step ")[1].split(",")[0])
    assert step >= 6 and run_dir.latest(tmp_path).name == f"step-{step:07d}"
    assert checkpoint.load_trainer_state(tmp_path)["step"] == step
    assert signal.Signals(sig).name in out


# 4. no crash window in publish -------------------------------------------------------------------


class Killed(BaseException):
    pass


FS_OPS = [(os, "replace"), (os, "rename"), (os, "unlink"), (os, "fsync"), (os, "chmod"), (shutil, "rmtree")]


def _kill_at(monkeypatch, n):
    """Make the n-th filesystem operation from now raise Killed before it happens (n = None: count)."""
    count = {"n": 0}
    for mod, name in FS_OPS:
        real = getattr(mod, name)

        def op(*a, _real=real, **k):
            count["n"] += 1
            if n is not None and count["n"] == n:
                raise Killed
            return _real(*a, **k)

        monkeypatch.setattr(mod, name, op)
    return count


@pytest.mark.parametrize("same_step", [True, False], ids=["the same step again", "a new step"])
def test_a_save_killed_before_any_filesystem_operation_leaves_latest_loadable(tmp_path, monkeypatch, same_step):
    cfg = shrunk("tiny")
    base = tmp_path / "base"
    checkpoint.save_checkpoint(base, MoETransformer(cfg), cfg, step=10)
    checkpoint.save_checkpoint(base, MoETransformer(cfg), cfg, step=20)
    step = 20 if same_step else 30
    model = MoETransformer(cfg)
    shutil.copytree(base, tmp_path / "count")
    with monkeypatch.context() as m:  # how many operations this save takes
        count = _kill_at(m, None)
        checkpoint.save_checkpoint(tmp_path / "count", model, cfg, step=step)
        total = count["n"]
    assert total > 10
    for n in range(1, total + 1):
        trial = tmp_path / f"kill-{n}"
        shutil.copytree(base, trial)
        with monkeypatch.context() as m:
            _kill_at(m, n)
            with pytest.raises(Killed):
                checkpoint.save_checkpoint(trial, model, cfg, step=step)
        loaded = checkpoint.load_model(trial)  # latest names a complete, verified checkpoint
        assert loaded.cfg == cfg, n
    final = checkpoint.save_checkpoint(tmp_path / "kill-1", model, cfg, step=step)
    assert run_dir.latest(tmp_path / "kill-1") == final


def test_resaving_a_step_replaces_it_and_keeps_one_copy(tmp_path):
    cfg = shrunk("tiny")
    first = checkpoint.save_checkpoint(tmp_path, MoETransformer(cfg), cfg, step=20)
    model = MoETransformer(cfg)
    second = checkpoint.save_checkpoint(tmp_path, model, cfg, step=20)
    assert second != first and not first.exists() and run_dir.latest(tmp_path) == second
    loaded = checkpoint.load_model(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_resume_at_the_end_saves_the_same_step_again(tmp_path):
    run(tmp_path, max_steps=4)
    s = run(tmp_path, resume=True, max_steps=4)
    assert s["steps"] == 4 and checkpoint.load_trainer_state(tmp_path)["step"] == 4


# 5. stale scratch directories --------------------------------------------------------------------


def test_scratch_directories_of_dead_writers_are_removed_at_the_next_start(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".tmp-step-0000010-{dead.pid}").mkdir(parents=True)
    (tmp_path / f".tmp-step-0000010-{dead.pid}" / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / f".old-step-0000020-{dead.pid}").mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (tmp_path / f".tmp-step-0000030-{live.pid}").mkdir()
        run(tmp_path)
        left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
        assert left == [".lock", f".tmp-step-0000030-{live.pid}"]
    finally:
        live.kill()
        live.wait()


# 6. damage named ---------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*written before checksums existed")  # asserted once, below
def test_damaged_checkpoint_files_are_named(tmp_path):
    run(tmp_path, max_steps=2)
    step_dir = run_dir.latest(tmp_path)
    weights, sums, tok = (step_dir / n for n in ("model.safetensors", "checksums.json", "tokenizer.moe.json"))
    good, good_sums, good_tok = weights.read_bytes(), sums.read_bytes(), tok.read_bytes()

    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    weights.write_bytes(bytes(flipped))
    with pytest.raises(DamagedFile, match=rf"{weights}: checksum mismatch"):
        checkpoint.load_model(tmp_path)
    r = moe_cli("generate", "--checkpoint", tmp_path, "--max-new-tokens", "2")
    assert r.returncode == 2 and "checksum mismatch" in r.stderr and "Traceback" not in r.stderr
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(DamagedFile, match=rf"{weights}: .* bytes where .* were written \(truncated"):
        checkpoint.load_model(tmp_path)

    # checksums.json deleted: refused by name (config.json records it was written), not read unchecked
    sums.unlink()
    with pytest.raises(DamagedFile, match=rf"{sums}: missing, but .*config.json records that it was written"):
        checkpoint.load_model(tmp_path)
    # an entry of checksums.json changed: the record itself is named, not the file it describes
    record = json.loads(good_sums)
    record["files"]["config.json"]["sha256"] = "0" * 64
    sums.write_text(json.dumps(record))
    with pytest.raises(DamagedFile, match=rf"{sums}: its entries do not match its seal"):
        checkpoint.read_config(tmp_path)
    sums.write_bytes(good_sums)
    weights.write_bytes(good)

    # the tokenizer is checked like every other file, and one the record lists must be there
    tok.write_bytes(good_tok.replace(b"bytes", b"bytez", 1))
    with pytest.raises(DamagedFile, match=rf"{tok}: checksum mismatch"):
        tokenizers.load(step_dir)
    tok.unlink()
    with pytest.raises(DamagedFile, match=rf"{tok}: missing"):
        tokenizers.load(step_dir)
    tok.write_bytes(good_tok)
    checkpoint.load_model(tmp_path)  # restored: loads

    # a checkpoint written before checksums existed (no record, no marker) loads with a warning,
    # and a file that does not parse is named
    sums.unlink()
    config = step_dir / "config.json"
    saved_config = json.loads(config.read_text())
    saved_config.pop("checksums")
    config.write_text(json.dumps(saved_config))
    with pytest.warns(UserWarning, match="written before checksums existed"):
        checkpoint.load_model(tmp_path)
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(DamagedFile, match=rf"{weights}: not a readable safetensors file"):
        checkpoint.load_model(tmp_path)
    config.write_text("{not json")
    with pytest.raises(DamagedFile, match=rf"{config}: not a readable checkpoint config"):
        checkpoint.load_model(tmp_path)
    (step_dir / "trainer.pt").write_bytes(b"garbage")
    with pytest.raises(DamagedFile, match="trainer.pt: not a readable trainer state"):
        checkpoint.load_trainer_state(tmp_path)


def test_a_config_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes("name = 'caf\xe9'\n".encode("latin-1"))
    with pytest.raises(ValueError, match=rf"config file '{path}' is not UTF-8"):
        load_config(path)


def test_checksum_verification_costs_little(tmp_path):
    """Recorded for every file and checked on load; the timing for `small` is in the README (a
    benchmark, not asserted here)."""
    run(tmp_path, max_steps=2)
    sums = json.loads((run_dir.latest(tmp_path) / "checksums.json").read_text())["files"]
    assert set(sums) == {"model.safetensors", "config.json", "trainer.pt", "tokenizer.moe.json"}


# 7. numbers and token ids ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        dict(temperature=float("nan")),
        dict(temperature=float("inf")),
        dict(top_p=float("nan")),
        dict(top_k=True),
        dict(temperature=True),
    ],
)
def test_sampling_settings_must_be_finite_numbers(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SamplingParams(**bad)


def test_token_ids_must_be_integers_not_bools():
    model = MoETransformer(shrunk("tiny"))
    with pytest.raises(ValueError, match="not bools"):
        generate(model, [True, 5], 2)
    engine = Engine(model, n_pages=8)
    for request in (
        Request([1, True], 2),
        Request([1, 2], 2, stop_tokens=(False,)),
        Request([1], True),
        Request([1, 2], 2, sampling={"temperature": float("nan")}),
    ):
        with pytest.raises(RequestError):
            engine.submit(request)


def test_cli_rejects_nan_temperature_before_loading(tmp_path):
    r = moe_cli("generate", "--checkpoint", tmp_path / "none", "--temperature", "nan")
    assert r.returncode == 2 and "temperature must be a finite number" in r.stderr


def test_train_settings_must_be_finite():
    with pytest.raises(ValueError, match="lr must be a positive number"):
        TrainConfig(lr=float("nan"))


# 8-9. figures and serve-bench refuse zero, negative and repeated values --------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--layout", "tp=8", "--batch-tokens", "0"], "--batch-tokens: must be > 0"),
        (["--layout", "tp=8", "--seq-len", "0"], "--seq-len: must be > 0"),
        (["--layout", "tp=8", "--seq-len", "-5"], "--seq-len: must be > 0"),
        (["--layout", "tp=8,tp=4"], "tp is given twice"),
    ],
)
def test_figures_rejects_bad_values(args, message):
    r = moe_cli("figures", "--config", "gpt4", *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr


@pytest.mark.parametrize("flag", ["--requests", "--rate", "--prompt-len", "--max-new-tokens", "--page-size"])
def test_serve_bench_rejects_zero(flag):
    r = moe_cli("serve-bench", "--config", "tiny", flag, "0")
    assert r.returncode == 2 and f"{flag}: must be > 0" in r.stderr and "max() arg" not in r.stderr


# 10. --resume refuses changed training settings --------------------------------------------------


def test_resume_refuses_changed_settings_unless_allowed(tmp_path):
    run(tmp_path, max_steps=2)
    with pytest.raises(
        ValueError,
        match=r"changed training settings \(max_steps 2 -> 4, lr 0.01 -> 0.001\)"
        r".*--allow-changes",
    ):
        run(tmp_path, resume=True, max_steps=4, lr=1e-3)
    assert checkpoint.load_trainer_state(tmp_path)["step"] == 2  # nothing was touched
    s = train(
        shrunk("tiny"),
        TrainConfig(**{**FAST, "max_steps": 4}),
        tmp_path,
        resume=True,
        allow_changes=True,
        progress=False,
        plot=False,
        log=lambda *_: None,
    )
    assert s["steps"] == 4
    run(tmp_path, resume=True, max_steps=4, eval_interval=1)  # how often to evaluate is not a change


# 11. file modes ----------------------------------------------------------------------------------


def test_every_checkpoint_file_gets_the_same_mode(tmp_path):
    run(tmp_path, max_steps=2)
    mask = os.umask(0)
    os.umask(mask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in run_dir.latest(tmp_path).iterdir()}
    assert set(modes.values()) == {0o666 & ~mask}, modes  # what open() gives any new file
