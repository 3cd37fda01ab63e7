"""moe/parallel/simulate.py: the leak's layouts built rank by rank on the meta device in a fake world,
at the real depth and degrees but a reduced width (the counts scale; the time does not matter)."""

import pytest

from moe.config import load_config
from moe.estimates.layout_memory import stage_memory
from moe.layout import parse_layout
from moe.parallel.simulate import simulate

# gpt4's depth, experts and K/V layout; 96 heads so that tp = 8 divides them (the preset's 84 do not),
# and widths that 192 divides (FSDP2 splits only dim 0 unevenly)
NARROW = dict(d_model=1536, n_heads=96, head_dim=16, d_ff=6144, vocab_size=3072)


@pytest.mark.parametrize(
    "layout",
    [
        "tp=8,pp=15,dp=192",
        "tp=8,pp=15,dp=192,sharding=fsdp",
        "tp=8,pp=16",
        "tp=8,pp=15,dp=4,microbatches=30,schedule=interleaved-1f1b,virtual_stages=2",  # two chunks a rank
    ],
)
def test_simulated_ranks_hold_what_the_arithmetic_says(layout):
    cfg, lay = load_config("gpt4", **NARROW), parse_layout(layout)
    ranks = simulate(cfg, lay)
    stages = stage_memory(cfg, lay)
    assert [r.layers for r in ranks] == [s.layers for s in stages]
    assert [r.rank for r in ranks] == [i * lay.world_size // lay.pp for i in range(lay.pp)]
    for r, s in zip(ranks, stages, strict=True):
        assert r.gathered == pytest.approx(s.params, rel=1e-9)  # every tp / ep split is exact
        assert r.sharded == pytest.approx(s.sharded(lay), rel=0.01)  # FSDP2 rounds a split up on rank 0
        assert r.gathered_for_step(lay) == pytest.approx(s.gathered(lay), rel=0.01)
        assert r.optimizer_bytes == pytest.approx(8 * s.sharded(lay), rel=0.01)  # two fp32 moments, as sharded
        if lay.data_shards == 1:
            assert r.sharded == r.gathered


def test_simulation_shows_what_fsdp2_cannot_split_evenly():
    """dp = 208 = 16 x 13 divides none of the experts' dimensions, and their dim 0 holds 16 experts:
    FSDP2 gives the first 16 ranks an expert each, so rank 0 keeps about 13x its share."""
    cfg, lay = load_config("gpt4", **NARROW), parse_layout("tp=8,pp=15,dp=208")
    r, s = simulate(cfg, lay)[1], stage_memory(cfg, lay)[1]
    assert r.gathered == pytest.approx(s.params, rel=1e-9)
    assert r.sharded > 5 * s.sharded(lay)


def test_simulate_refuses_a_layout_that_does_not_fit():
    with pytest.raises(ValueError, match="tp=8 must divide n_heads=84"):
        simulate(load_config("gpt4"), parse_layout("tp=8,pp=15,dp=192"))


def test_a_simulated_serving_rank_holds_what_the_inference_arithmetic_says():
    """tp=8,pp=16 as the serving engine splits it: the heaviest stage's bf16 weights equal the
    arithmetic's, its K/V pool per position is a stage's layers x the one replicated K/V head, and
    the sequences that fit at 8k and 32k are what 90% of each GPU leaves, at least the arithmetic's
    pp x max_microbatch (which rounds each microbatch down)."""
    from moe.estimates.cluster import GPUS, inference_weights_bytes, kv_bytes_per_sequence, max_microbatch
    from moe.parallel.simulate import simulate_serving

    cfg, lay = load_config("gpt4", **NARROW), parse_layout("tp=8,pp=16")
    ranks = simulate_serving(cfg, lay)
    heavy = max(ranks, key=lambda r: (r.weight_bytes, r.kv_bytes_per_position))
    assert heavy.weight_bytes == pytest.approx(inference_weights_bytes(cfg, 8, 16), rel=1e-9)
    assert heavy.kv_bytes_per_position == heavy.layers * 2 * cfg.head_dim * 2  # K and V, one head, bf16
    for gpu in GPUS.values():
        for ctx in (8192, 32768):
            users = (0.9 * gpu.memory_gb * 1e9 - heavy.weight_bytes) // (heavy.kv_bytes_per_position * ctx)
            assert users == (0.9 * gpu.memory_gb * 1e9 - heavy.weight_bytes) // kv_bytes_per_sequence(cfg, 8, 16, ctx)
            assert users >= 16 * max_microbatch(cfg, gpu, 8, 16, ctx)
