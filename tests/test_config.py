import dataclasses

import pytest

from moe.config import ModelConfig, TrainConfig, load_config, load_train_config, preset_names


@pytest.mark.parametrize("name", ["tiny", "small", "medium", "gpt4", "gpt4-layer"])
def test_every_preset_validates(name):
    cfg = load_config(name)
    assert cfg.name == name
    assert cfg.d_model % cfg.n_heads == 0 and cfg.top_k <= cfg.n_experts
    load_train_config(name)


def test_presets_listed():
    assert {"tiny", "small", "medium", "gpt4", "gpt4-layer"} <= set(preset_names())


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(top_k=17), "top_k"),
        (dict(d_model=130), "d_model"),
        (dict(n_kv_heads=3), "n_heads"),
        (dict(d_ff=0), "d_ff"),
        (dict(n_layers=-1), "n_layers"),
        (dict(activation="relu"), "activation"),
        (dict(vocab_size=2.5), "vocab_size"),
        (dict(norm_eps=0.0), "norm_eps"),
        (dict(capacity_factor=-1.0), "capacity_factor"),
        (dict(router_jitter=1.5), "router_jitter"),
        (dict(expert_backend="cuda"), "expert_backend"),
        (dict(n_heads=4, d_model=128, head_dim=33), "head_dim"),
        (dict(router_rule="top2"), "router_rule"),
        (dict(router_groups=3), "router_groups"),
        (dict(router_groups=4, router_topk_groups=5), "router_topk_groups"),
        (dict(top_k=8, router_groups=4, router_topk_groups=1), "top_k"),
        (dict(router_bias_update_rate=0.01), "router_bias_update_rate needs router_score_bias"),
        (dict(router_bias_update_rate=-1.0, router_score_bias=True), "router_bias_update_rate"),
        (dict(router_scale_input=True), "router_scale_input.*top_k 1"),
        (dict(router_scale=0.0), "router_scale"),
        (dict(router_bias="yes"), "router_bias"),
        (dict(router_rule="expert_choice", router_score_bias=True), "expert_choice"),
        (dict(shared_gate=True), "shared_gate needs a shared expert"),
        (dict(shared_d_ff=-4), "shared_d_ff"),
    ],
)
def test_bad_values_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        load_config("tiny", **overrides)


def test_head_dim_given_frees_n_heads_from_dividing_d_model():
    # one GPU of tp=8 holds 11 of GPT-4's 84 heads of 128: 1408 wide, not d_model / 11
    cfg = load_config("gpt4", n_heads=11)
    assert cfg.head_dim == 128 and cfg.n_heads * cfg.head_dim == 1408
    with pytest.raises(ValueError, match="unless head_dim is given"):
        ModelConfig(d_model=10752, n_heads=11)


def test_bad_train_values_name_the_field():
    with pytest.raises(ValueError, match="batch_size"):
        load_train_config("tiny", batch_size=0)
    with pytest.raises(ValueError, match="min_lr"):
        TrainConfig(lr=1e-4, min_lr=1e-3)


def test_unknown_preset_and_field():
    with pytest.raises(ValueError, match="unknown preset 'huge'.*tiny"):
        load_config("huge")
    with pytest.raises(ValueError, match="n_expert"):
        load_config("tiny", n_expert=4)
    with pytest.raises(ValueError, match="does not exist"):
        load_config("/nonexistent/x.toml")


def test_overrides_and_toml_path(tmp_path):
    cfg = load_config("tiny", n_layers=2, activation="swiglu")
    assert (cfg.n_layers, cfg.activation, cfg.d_model) == (2, "swiglu", 128)
    path = tmp_path / "mine.toml"
    path.write_text("d_model = 64\nn_heads = 2\nn_experts = 4\n[train]\nlr = 0.01\n")
    cfg = load_config(path)
    assert (cfg.name, cfg.d_model, cfg.head_dim, cfg.n_experts) == ("mine", 64, 32, 4)
    assert load_train_config(path).lr == 0.01
    path.write_text("d_model = = 3")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(path)


def test_dense_twin_has_the_same_active_expert_width():
    cfg = load_config("tiny")
    dense = cfg.dense_twin()
    assert (dense.n_experts, dense.top_k) == (1, 1)
    assert dense.d_ff == cfg.top_k * cfg.d_ff


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ModelConfig().d_model = 3
