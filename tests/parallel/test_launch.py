"""moe.parallel.launch: which trainer a run takes and what it refuses before any process group
exists (the CLI's `train` calls it; tests/test_layout.py checks the same through the command line)."""

import pytest

from moe.config import load_config, load_train_config
from moe.layout import Layout
from moe.parallel.launch import check_distributed, is_distributed, train_in_layout


def test_one_process_unless_the_layout_the_world_or_the_checkpoint_says_otherwise(tmp_path):
    assert not is_distributed(Layout(), tmp_path, world=1)
    assert not is_distributed(Layout(), tmp_path / "missing", resume=True, world=1)
    assert is_distributed(Layout(dp=2), tmp_path, world=1)
    assert is_distributed(Layout(), tmp_path, world=2)
    step = tmp_path / "step_00000010"
    step.mkdir()
    (step / ".metadata").write_bytes(b"")  # what a distributed (DCP) checkpoint leaves
    (tmp_path / "latest").write_text(step.name)
    assert is_distributed(Layout(), tmp_path, resume=True, world=1)
    assert not is_distributed(Layout(), tmp_path, resume=False, world=1)


def test_refusals_name_what_to_change():
    tiny, train_cfg = load_config("tiny"), load_train_config("tiny")
    with pytest.raises(
        ValueError, match="processes, but the world size is 1; launch it with torchrun --nproc-per-node 4 -m moe train"
    ):
        check_distributed(tiny, train_cfg, Layout(dp=2, ep=2), world=1)
    with pytest.raises(ValueError, match="tp=3 must divide n_heads=4") as e:
        check_distributed(tiny, train_cfg, Layout(tp=3), world=3)
    assert "torchrun" not in str(e.value)  # the world fits the layout: nothing to say about launching
    with pytest.raises(ValueError, match="has a vision path, which trains in one process"):
        check_distributed(load_config("tiny-vision"), train_cfg, Layout(dp=2), world=2)


def test_train_in_layout_refuses_before_it_logs(tmp_path):
    lines = []
    with pytest.raises(ValueError, match="the world size is 1"):
        train_in_layout(
            load_config("tiny"), load_train_config("tiny"), tmp_path, Layout(dp=2), world=1, log=lines.append
        )
    assert lines == [] and not any(tmp_path.iterdir())
