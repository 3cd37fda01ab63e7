"""Bad command lines: each is exit 2 with one `error:` line naming the flag (or flags) at fault, no
traceback, and nothing created. Run in this process through moe.cli.main, as `python -m moe` runs it."""

import signal

import pytest
import torch
from conftest import shrunk

from moe.cli import main
from moe.model import MoETransformer
from moe.training import checkpoint, loop

NO_CUDA = "cuda" if not torch.cuda.is_available() else "cuda:99"  # a device this machine lacks either way
TRAIN = ["train", "--config", "tiny", "--max-steps", "1", "--no-progress"]


def refused(capsys, *argv) -> str:
    """Run the command; assert exit 2 with an error line and no traceback; return that error line."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err, (code, err)
    return err


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--device", "tpu"], ["--device", "'tpu' is not one torch knows"]),
        (["--device", NO_CUDA], ["--device", f"{NO_CUDA!r}"]),
        (["--resume", "--overwrite"], ["--resume", "--overwrite"]),
        (["--allow-changes"], ["--allow-changes", "--resume"]),
        (["--train-language-model"], ["--train-language-model", "no [vision] table"]),
        (["--seq-len", "100000"], ["seq_len (100000) exceeds max_seq_len"]),
        (["--resume"], ["no checkpoint at"]),
    ],
)
def test_train_refuses_before_creating_out(capsys, tmp_path, argv, words):
    out = tmp_path / "new" / "run"
    err = refused(capsys, *TRAIN, "--out", out, *argv)
    assert all(w in err for w in words), err
    assert not (tmp_path / "new").exists()  # neither --out nor the parent it would have made


def test_a_refused_resume_keeps_an_existing_empty_out(capsys, tmp_path):
    refused(capsys, *TRAIN, "--out", tmp_path, "--resume")
    assert tmp_path.is_dir()  # it was there before: not ours to remove


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint of an untrained model: enough for the flags to be read against."""
    cfg = shrunk("tiny")
    out = tmp_path_factory.mktemp("ckpt")
    checkpoint.save_checkpoint(out, MoETransformer(cfg), cfg)
    return out


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--device", "tpu"], ["--device", "'tpu'"]),
        (["--device", NO_CUDA], ["--device", f"{NO_CUDA!r}"]),
        (["--greedy", "--temperature", "0.7"], ["--greedy contradicts --temperature 0.7"]),
        (["--greedy", "--top-k", "5"], ["--greedy contradicts --top-k 5"]),
        (["--prompt", "\udcff\udcfe"], ["--prompt: not valid UTF-8"]),
    ],
)
def test_generate_refusals(capsys, saved, argv, words):
    err = refused(capsys, "generate", "--checkpoint", saved, "--max-new-tokens", "2", *argv)
    assert all(w in err for w in words), err


def test_seeds_are_checked_by_argparse(capsys):
    for command in (["generate", "--checkpoint", "x"], ["train"], ["serve-bench"]):
        with pytest.raises(SystemExit) as e:
            main([*command, "--seed", "-1"])
        assert e.value.code == 2 and "argument --seed: must be in [0, 2**64), got -1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--device", "tpu"], ["--device", "'tpu'"]),
        (["--name", "../../etc/x"], ["--name '../../etc/x'", "path separator"]),
        (["--name", ".."], ["--name '..'"]),
    ],
)
def test_serve_bench_refuses_before_any_work(capsys, tmp_path, argv, words):
    err = refused(capsys, "serve-bench", "--out", tmp_path / "out", "--requests", "1", *argv)
    assert all(w in err for w in words), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "layout, words",
    [("", "--layout '': layout: empty"), ("tp=2,,pp=2", "--layout 'tp=2,,pp=2': layout: an empty entry between")],
)
def test_figures_refuses_an_empty_layout(capsys, layout, words):
    assert words in refused(capsys, "figures", "--config", "tiny", "--layout", layout)


def test_a_second_signal_aborts_in_one_line(capsys, monkeypatch):
    """The first Ctrl-C asks the loop to checkpoint and stop; a second stops at once. The command
    line turns that into one line and exit 130, not a KeyboardInterrupt traceback."""
    with loop._Interrupt() as interrupt:
        signal.raise_signal(signal.SIGINT)
        assert interrupt.requested
        with pytest.raises(KeyboardInterrupt) as e:
            signal.raise_signal(signal.SIGINT)
    assert "a second SIGINT: stopped at once, without writing a checkpoint" in str(e.value)

    def interrupted(args):
        raise e.value

    monkeypatch.setattr("moe.cli.figures.run", interrupted)
    assert main(["figures"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"aborted: {e.value}" and not any("Traceback" in line for line in err)
