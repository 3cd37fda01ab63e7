import subprocess
import sys

import pytest
import torch

from moe.config import load_config
from moe.estimates.arithmetic import count_params, forward_flops_per_token, kv_cache_bytes, kv_cache_bytes_per_token
from moe.model import MoETransformer
from moe.model.kv_cache import KVCache


@pytest.mark.parametrize("name", ["tiny", "small", "medium", "gpt4", "gpt4-layer"])
@pytest.mark.parametrize("tied", [False, True])
def test_meta_model_counts_agree_with_arithmetic(name, tied):
    cfg = load_config(name, tie_embeddings=tied)
    with torch.device("meta"):
        model = MoETransformer(cfg)
    counted = sum(p.numel() for p in model.parameters())
    assert counted == count_params(cfg).total
    experts = sum(p.numel() for n, p in model.named_parameters() if ".moe.w_" in n)
    assert experts == count_params(cfg).experts


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_counts_include_router_biases_and_shared_experts(activation):
    cfg = load_config("tiny", activation=activation, router_bias=True, shared_d_ff=96, shared_gate=True)
    model = MoETransformer(cfg)
    named = dict(model.named_parameters())
    assert sum(p.numel() for p in named.values()) == count_params(cfg).total
    shared = sum(p.numel() for n, p in named.items() if ".moe.shared" in n)
    assert shared == count_params(cfg).shared_experts == cfg.n_layers * (cfg.n_matrices * 128 * 96 + 128)
    # every token passes through the shared experts: active = total - the experts it skips
    p = count_params(cfg)
    assert p.active == p.total - (cfg.n_experts - cfg.top_k) * p.per_expert


FAMILY_PRESETS = ["gpt-oss-120b", "gpt-oss-20b", "qwen3-30b-a3b", "olmoe-1b-7b"]


@pytest.mark.parametrize("name", FAMILY_PRESETS)
def test_family_presets_build_on_meta_with_the_counted_parameters(name):
    cfg = load_config(name)
    with torch.device("meta"):
        model = MoETransformer(cfg)
    assert sum(p.numel() for p in model.parameters()) == count_params(cfg).total


@pytest.mark.parametrize(
    "name, total, active, counts_embedding",
    [  # the model cards' figures in billions (rounded, or cut: Qwen3's 3.35B reads "3.3B"); gpt-oss's
        # active parameters leave the input embedding out, the others' keep it
        ("gpt-oss-120b", 116.8, 5.1, False),
        ("gpt-oss-20b", 20.9, 3.6, False),
        ("qwen3-30b-a3b", 30.5, 3.3, True),
        ("olmoe-1b-7b", 6.9, 1.3, True),
    ],
)
def test_family_presets_have_their_published_sizes(name, total, active, counts_embedding):
    p = count_params(load_config(name))
    assert abs(p.total / 1e9 - total) < 0.06
    assert abs((p.active - (0 if counts_embedding else p.embedding)) / 1e9 - active) < 0.06


@pytest.mark.parametrize(
    "fields",
    [
        dict(qkv_bias=True, out_bias=True, attention_sinks=True),
        dict(qk_norm="head", head_dim=48),
        dict(qk_norm="projection", n_kv_heads=2),
        dict(activation="clamped_swiglu", expert_bias=True),
        dict(activation="gelu", expert_bias=True),
    ],
)
def test_counts_include_every_attention_and_expert_variant(fields):
    cfg = load_config("tiny", **fields)
    assert sum(p.numel() for p in MoETransformer(cfg).parameters()) == count_params(cfg).total


def test_a_sliding_layer_holds_its_window_of_kv():
    cfg = load_config("gpt-oss-20b")
    per_layer = 2 * 8 * 64 * 2  # K and V, 8 heads of 64, bf16
    assert kv_cache_bytes(cfg, 131072) == per_layer * (12 * 131072 + 12 * 128)  # 12 full, 12 sliding layers
    assert kv_cache_bytes(cfg, 100) == per_layer * 24 * 100


def test_gpt4_is_the_leaked_shape():
    p = count_params(load_config("gpt4"))
    # The leak's figures: ~111B per expert, ~1.8T in all (16 experts x 111B + shared).
    assert 110e9 < p.per_expert < 112e9
    assert 1.78e12 < p.total < 1.83e12
    # Multi-query attention: 2 d^2 for Q and O plus 2 d x 128 for the one K/V head, per layer.
    d = 10752
    assert p.attention == 120 * (2 * d * d + 2 * d * 128)
    assert p.active == p.total - 14 * p.per_expert


def test_flops_formula_by_hand():
    cfg = load_config("tiny")
    d, f, L, V = 128, 256, 4, 256
    matmul = L * (2 * d * d + 2 * d * 32) + L * d * 16 + 2 * 2 * d * f * L + V * d  # attn, router, 2 experts, head
    assert forward_flops_per_token(cfg) == 2 * matmul
    assert forward_flops_per_token(cfg, context=100) - forward_flops_per_token(cfg) == 4 * L * 4 * 32 * 100


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_kv_cache_bytes_match_the_allocated_cache(kv_heads):
    cfg = load_config("tiny", n_kv_heads=kv_heads)
    caches = [KVCache(1, kv_heads, 100, cfg.head_dim, torch.float16) for _ in range(cfg.n_layers)]
    allocated = sum(b.numel() * b.element_size() for c in caches for b in c.buffers())
    assert allocated == 100 * kv_cache_bytes_per_token(cfg, 2)


def test_figures_cli_reports_the_leak_and_its_contradictions():
    out = subprocess.run(
        [sys.executable, "-m", "moe", "figures", "--config", "gpt4"], capture_output=True, text=True, check=True
    ).stdout
    for needle in ("1.81 T", "111 G", "2.15e+25", "contradict", "multi-query", "multi-head", "7.5", "< 30 GB"):
        assert needle in out, needle


def test_si_prefixes_round_before_they_choose():
    """Three significant digits, the prefix chosen after rounding (999,672 is '1 M', not '1e+03 k')."""
    from moe.estimates.units import si

    assert si(999_672) == "1 M" and si(1_234_567, "FLOP") == "1.23 MFLOP" and si(999.4) == "999"
    assert si(1.8e12) == "1.8 T" and si(-2_500) == "-2.5 k" and si(0.5) == "0.5"
