"""The layout's arithmetic and checks (no processes): parsing, validation, stage split, bubble,
per-GPU figures; and the command line around distributed training."""

import subprocess
import sys

import pytest
from conftest import shrunk

from moe.config import load_config
from moe.estimates.arithmetic import count_params
from moe.estimates.layout_memory import layout_rows, stage_memory
from moe.layout import Layout, bubble_fraction, load_layout, parse_layout, stage_layers


def test_parse_layout():
    lay = parse_layout("tp=8, pp=15,dp=208,mb=32,schedule=gpipe,first=4")
    assert (lay.tp, lay.pp, lay.dp, lay.ep, lay.microbatches, lay.schedule, lay.first_stage_layers) == (
        8,
        15,
        208,
        1,
        32,
        "gpipe",
        4,
    )
    assert lay.world_size == 8 * 15 * 208
    for bad, words in [
        ("tp=8,zz=1", "unknown key 'zz'"),
        ("tp", "not key=value"),
        ("tp=x", "tp must be an integer"),
        ("tp=0", "tp must be a positive integer"),
        ("schedule=zb", "schedule must be one of"),
        ("sharding=zero3", "sharding must be one of"),
        ("", "layout: empty"),
        ("tp=2,,pp=2", "an empty entry between commas in 'tp=2,,pp=2'"),
    ]:
        with pytest.raises(ValueError, match=words):
            parse_layout(bad)


@pytest.mark.parametrize(
    "layout, world, batch, words",
    [
        (dict(dp=2, tp=2), 2, None, "= 4 processes, but the world size is 2"),
        (dict(tp=3), 3, None, "tp=3 must divide n_heads=4"),
        (dict(tp=4), 4, None, None),  # 4 heads over 4: fine, the single K/V head is replicated
        (dict(ep=3), 3, None, "ep=3 must divide n_experts=16"),
        (dict(pp=3), 3, None, "pp=3 stages need at least 3 layers"),
        (dict(pp=2, first_stage_layers=2), 2, None, "leaves fewer than one layer"),
        (dict(dp=2, microbatches=3), 2, 8, "batch_size=8 must be divisible by dp x ep x microbatches = 6"),
    ],
)
def test_layout_check(layout, world, batch, words):
    cfg = shrunk()  # 2 layers, 4 heads (1 K/V), 16 experts, d_ff 24
    if words is None:
        Layout(**layout).check(cfg, world, batch)
        return
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        Layout(**layout).check(cfg, world, batch)


def test_layout_check_model_constraints():
    with pytest.raises(ValueError, match="d_ff=25"):
        Layout(tp=2).check(shrunk(d_ff=25))
    with pytest.raises(ValueError, match="n_kv_heads=2"):
        Layout(tp=4).check(shrunk(n_kv_heads=2))
    Layout(tp=2).check(shrunk(n_kv_heads=2))  # grouped-query heads split with the query heads
    for split in (dict(ep=2), dict(dp=2), dict(microbatches=2), dict(pp=2, microbatches=4)):
        with pytest.raises(ValueError, match="drops would depend on the split; use dropless"):
            Layout(**split).check(shrunk(capacity_factor=1.25))
    Layout(tp=2).check(shrunk(capacity_factor=1.25))  # tensor parallel ranks route the same tokens
    with pytest.raises(ValueError, match="untied"):
        Layout(pp=2).check(shrunk(tie_embeddings=True))


@pytest.mark.parametrize(
    "n_layers, pp, first", [(120, 16, 0), (120, 15, 0), (120, 16, 4), (7, 3, 0), (7, 7, 0), (9, 4, 1), (5, 1, 0)]
)
def test_stage_layers(n_layers, pp, first):
    stages = stage_layers(n_layers, pp, first)
    assert len(stages) == pp
    assert [i for s in stages for i in s] == list(range(n_layers))  # contiguous, each layer once
    rest = [len(s) for s in (stages[1:] if first else stages)]
    assert max(rest) - min(rest) <= 1 and min(rest) >= 1
    if first:
        assert len(stages[0]) == first
    else:  # the first stage (it also holds the embedding) never gets an extra layer
        assert len(stages[0]) == min(len(s) for s in stages)


def simulated_bubble(pp: int, m: int) -> float:
    """GPipe on a timeline: forward of microbatch i on stage s waits for i-1 on s and for i on s-1;
    backward runs the same way in reverse. Idle share = 1 - busy / (stages x makespan)."""
    f_end = [[0] * m for _ in range(pp)]
    for s in range(pp):
        for i in range(m):
            f_end[s][i] = max(f_end[s][i - 1] if i else 0, f_end[s - 1][i] if s else 0) + 1
    b_end = [[0] * m for _ in range(pp)]
    for s in reversed(range(pp)):
        for i in range(m):
            start = max(b_end[s][i - 1] if i else f_end[pp - 1][m - 1], b_end[s + 1][i] if s < pp - 1 else 0)
            b_end[s][i] = start + 1
    makespan = max(max(row) for row in b_end)
    return 1 - (2 * m * pp) / (pp * makespan)


@pytest.mark.parametrize("pp, m", [(1, 4), (2, 1), (2, 8), (4, 4), (15, 32), (16, 1)])
def test_bubble_fraction_matches_a_simulated_timeline(pp, m):
    assert bubble_fraction(pp, m) == pytest.approx(simulated_bubble(pp, m))


@pytest.mark.parametrize("layout", ["pp=4", "tp=2,ep=4,pp=3", "tp=8,ep=16,pp=15,dp=4", "tp=4,pp=16,first=4"])
def test_per_gpu_parameters_add_up_to_the_model(layout):
    """Summed over the pipeline stages and multiplied back by the shards, the per-GPU parameters are
    the model's count (moe/estimates/arithmetic.py), plus the tp - 1 extra copies of what tp replicates."""
    cfg = load_config("gpt4")
    lay = parse_layout(layout)
    stages = stage_memory(cfg, lay)
    p = count_params(cfg)
    assert sum(s.expert_params for s in stages) * lay.ep * lay.tp == pytest.approx(p.experts)
    replicated = p.embedding + p.head + p.norms + p.router + cfg.n_layers * 2 * cfg.d_model * cfg.head_dim  # K/V
    dense = sum(s.dense_params for s in stages) * lay.tp - (lay.tp - 1) * replicated
    assert dense == pytest.approx(p.attention + p.embedding + p.head + p.norms + p.router)


def test_layout_rows_report_the_leak_layouts():
    cfg = load_config("gpt4")
    rows = {r[0]: r for r in layout_rows(cfg, parse_layout("tp=8,pp=16"), 60e6, 8192)}
    assert rows["runs in this code base"][1] == "no" and "n_heads=84" in rows["runs in this code base"][2]
    assert rows["layers per stage"][1] == "7, 8 x8, 7 x7"
    gb = float(rows["  as fp16/bf16"][2].split(" GB")[0])
    assert 28 < gb < 31  # the worst stage's share of 1.8T over 128 GPUs, at 2 bytes
    rows = {r[0]: r for r in layout_rows(shrunk(), parse_layout("ep=2,dp=2,microbatches=4"), 1024, 16)}
    assert rows["runs in this code base"][1] == "yes"
    assert rows["pipeline bubble"][1] == "0.0%"
    assert rows["tokens per microbatch per GPU"][1] == "64"  # 1024 / (4 data shards x 4 microbatches)


def test_parallel_table_in_a_config_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text("d_model = 64\nn_heads = 4\n[train]\nbatch_size = 8\n[parallel]\ndp = 2\nep = 2\n")
    assert load_config(path).d_model == 64  # the table is not a model field
    assert load_layout(path) == Layout(dp=2, ep=2)
    assert load_layout(path, ep=1, tp=None) == Layout(dp=2)
    path.write_text("[parallel]\ndp = 2\nzz = 1\n")
    with pytest.raises(ValueError, match=r"unknown Layout field\(s\) \['zz'\]"):
        load_layout(path)


def test_cli_rejects_a_layout_that_does_not_fit_before_starting():
    bad = subprocess.run(
        [sys.executable, "-m", "moe", "train", "--config", "tiny", "--dp", "2", "--ep", "2"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert "= 4 processes, but the world size is 1" in bad.stderr and "torchrun --nproc-per-node 4" in bad.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "moe", "train", "--config", "tiny", "--tp", "3"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "tp=3 must divide n_heads=4" in bad.stderr


def test_cli_figures_layout():
    out = subprocess.run(
        [sys.executable, "-m", "moe", "figures", "--config", "gpt4", "--layout", "tp=8,pp=15,dp=208,microbatches=32"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "per GPU in layout dp=208,tp=8,pp=15" in out.stdout and "pipeline bubble" in out.stdout
    assert "30.4%" in out.stdout  # 14 / 46
    sim = subprocess.run(
        [
            sys.executable,
            "-m",
            "moe",
            "figures",
            "--config",
            "gpt4",
            "--set",
            "d_model=768",
            "--set",
            "n_heads=96",
            "--set",
            "head_dim=8",
            "--set",
            "d_ff=3072",
            "--set",
            "vocab_size=1536",
            "--set",
            "n_layers=6",
            "--layout",
            "tp=8,pp=3,dp=4",
            "--simulate",
        ],
        capture_output=True,
        text=True,
    )
    assert sim.returncode == 0, sim.stderr  # (tests/parallel/test_simulate.py checks the counts at the real depth)
    assert "fake world of 96 ranks" in sim.stdout and "2 (rank 64)" in sim.stdout
    for flags, message in [
        (["--simulate"], "--simulate needs --layout"),
        (["--layout", "tp=8,pp=15,dp=192", "--simulate"], "tp=8 must divide n_heads=84"),
    ]:
        bad = subprocess.run(
            [sys.executable, "-m", "moe", "figures", "--config", "gpt4", *flags], capture_output=True, text=True
        )
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr


@pytest.mark.parametrize(
    "layout", [dict(dp=2), dict(dp=2, ep=2, microbatches=3), dict(pp=2, microbatches=4), dict(ep=4, tp=2)]
)
def test_each_rank_reads_only_its_rows_of_the_batch(layout, monkeypatch):
    """The rows a rank trains on (DistributedTrainer.batch_rows): in each microbatch (a contiguous
    block of B/m rows, as one process accumulates them) its data shard's slice; the data shards
    together read every row exactly once; and get_batch reads only those rows' windows, from the
    same random stream as the whole batch."""
    from types import SimpleNamespace

    import numpy as np
    import torch

    from moe.data.dataset import TokenArray, get_batch
    from moe.parallel.trainer import DistributedTrainer

    lay, B = Layout(**layout), 24
    per_rank = {
        r: DistributedTrainer.batch_rows(SimpleNamespace(par=SimpleNamespace(layout=lay, data_rank=r)), B)
        for r in range(lay.data_shards)
    }
    assert sorted(i for rows in per_rank.values() for i in rows) == list(range(B))
    n = B // lay.microbatches // lay.data_shards
    for r, rows in per_rank.items():
        assert rows == [j * (B // lay.microbatches) + r * n + i for j in range(lay.microbatches) for i in range(n)]
    data = TokenArray([np.arange(1000, dtype=np.uint16)])
    x_all, _ = get_batch(data, B, 8, torch.Generator().manual_seed(0))
    reads = []
    real = TokenArray.window
    monkeypatch.setattr(
        TokenArray, "window", lambda self, start, length: reads.append(start) or real(self, start, length)
    )
    x_mine, _ = get_batch(data, B, 8, torch.Generator().manual_seed(0), per_rank[lay.data_shards - 1])
    assert len(reads) == len(per_rank[lay.data_shards - 1])
    assert torch.equal(x_mine, x_all[per_rank[lay.data_shards - 1]])


def test_interleaved_ranks_hold_every_pp_th_chunk_and_a_smaller_bubble():
    from moe.layout import rank_chunks

    lay = Layout(pp=2, microbatches=4, schedule="interleaved-1f1b", virtual_stages=3)
    assert rank_chunks(12, lay) == [[range(0, 2), range(4, 6), range(8, 10)], [range(2, 4), range(6, 8), range(10, 12)]]
    assert bubble_fraction(15, 32, 2) == pytest.approx(14 / (2 * 32 + 14)) and bubble_fraction(15, 32) == 14 / 46
    for bad, pattern in [
        (dict(schedule="interleaved-1f1b"), "virtual_stages >= 2"),
        (dict(schedule="zero-bubble"), "virtual_stages >= 2"),
        (dict(virtual_stages=2), "only they do"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            Layout(pp=2, microbatches=4, **bad)
    with pytest.raises(ValueError, match="needs pp > 1"):
        Layout(schedule="interleaved-1f1b", virtual_stages=2)
    with pytest.raises(ValueError, match="microbatches=5 must be a multiple of 2"):
        Layout(pp=2, microbatches=5, schedule="interleaved-1f1b", virtual_stages=2).check(shrunk("tiny", n_layers=4))
    with pytest.raises(ValueError, match="pp=2 x virtual_stages=2 = 4 stages need at least 4 layers"):
        Layout(pp=2, microbatches=2, schedule="interleaved-1f1b", virtual_stages=2).check(shrunk("tiny", n_layers=3))
