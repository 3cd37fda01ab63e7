"""The Hugging Face MoE families we read and write: each one's config.json fields and tensor names.
Imports no torch (the CLI lists the families without it).

    family     architecture          router rule                 attention                   experts (SwiGLU)
    mixtral    MixtralForCausalLM    softmax_topk, renormalised  GQA, sliding_window         w1 / w3 / w2
    qwen3_moe  Qwen3MoeForCausalLM   softmax_topk, norm_topk     q/k RMSNorm per head        gate/up/down_proj
    qwen2_moe  Qwen2MoeForCausalLM   softmax_topk, norm_topk     q/k/v biases                + gated shared expert
    olmoe      OlmoeForCausalLM      softmax_topk, norm_topk     q/k RMSNorm, all heads;     gate/up/down_proj
                                                                 clip_qkv
    gpt_oss    GptOssForCausalLM     topk_softmax, router bias   q/k/v/o biases, sinks,      clamped, biases,
                                                                 sliding/full layers, YaRN   gate/up interleaved;
                                                                                             MXFP4 read too

`config_from_hf(hf)` returns our ModelConfig fields for a config.json, or raises ConversionError
naming every field that does not map; `config_to_hf(cfg, family)` the other way. Tensor names,
ours (after "blocks.i.") -> theirs (after "model.layers.i."), are `plain_names(family)` for
everything but the routed experts, whose layouts `moe/training/hf_convert.py` reads and writes.
"""

from __future__ import annotations

from moe.config import ModelConfig

FAMILIES = ("mixtral", "qwen3_moe", "qwen2_moe", "olmoe", "gpt_oss")
ARCHITECTURES = {
    "mixtral": "MixtralForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "olmoe": "OlmoeForCausalLM",
    "gpt_oss": "GptOssForCausalLM",
}
# where each family keeps the MoE block and its router in a layer
MLP = {"mixtral": "block_sparse_moe"}  # the others: "mlp"
ROUTER = {"gpt_oss": "router"}  # the others: "gate"
# per-expert hub layout: (gate, up, down) names under <mlp>.experts.<e>.
PER_EXPERT = {"mixtral": ("w1", "w3", "w2")}  # the others but gpt-oss: gate_proj, up_proj, down_proj
_ROPE_KEYS = ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor")
_ROPE_KEYS += ("mscale", "mscale_all_dim", "truncate")
GPT_OSS_SWIGLU = {"swiglu_alpha": 1.702, "swiglu_limit": 7.0}  # kernels.expert_mlp's CLAMP_ALPHA, CLAMP_LIMIT


class ConversionError(ValueError):
    """The checkpoint cannot be converted; the message names what does not map."""


def family_of(hf: dict) -> str:
    kind, arch = hf.get("model_type"), hf.get("architectures") or []
    if kind not in FAMILIES or any(a != ARCHITECTURES[kind] for a in arch):
        known = ", ".join(ARCHITECTURES.values())
        raise ConversionError(
            f"architecture {arch or '?'} (model_type {kind!r}) is not one we convert; we read {known}"
        )
    return kind


def mlp_prefix(family: str) -> str:
    return MLP.get(family, "mlp")


def expert_names(family: str) -> tuple[str, str, str]:
    return PER_EXPERT.get(family, ("gate_proj", "up_proj", "down_proj"))


def plain_names(cfg: ModelConfig, family: str) -> dict[str, str]:
    """Every per-layer tensor but the routed experts: ours (after "blocks.i.") -> theirs."""
    mlp, router = mlp_prefix(family), ROUTER.get(family, "gate")
    names = {"attn_norm.weight": "input_layernorm.weight", "mlp_norm.weight": "post_attention_layernorm.weight"}
    for ours, theirs in (("wq", "q_proj"), ("wk", "k_proj"), ("wv", "v_proj"), ("wo", "o_proj")):
        names[f"attn.{ours}.weight"] = f"self_attn.{theirs}.weight"
        if cfg.out_bias if ours == "wo" else cfg.qkv_bias:
            names[f"attn.{ours}.bias"] = f"self_attn.{theirs}.bias"
    if cfg.qk_norm != "none":
        names |= {"attn.q_norm.weight": "self_attn.q_norm.weight", "attn.k_norm.weight": "self_attn.k_norm.weight"}
    if cfg.attention_sinks:
        names["attn.sinks"] = "self_attn.sinks"
    names["moe.router.gate.weight"] = f"{mlp}.{router}.weight"
    if cfg.router_bias:
        names["moe.router.gate.bias"] = f"{mlp}.{router}.bias"
    if cfg.shared_d_ff:
        for ours, theirs in (("up", "up_proj"), ("gate", "gate_proj"), ("down", "down_proj")):
            names[f"moe.shared.{ours}.weight"] = f"{mlp}.shared_expert.{theirs}.weight"
    if cfg.shared_gate:
        names["moe.shared_gate.weight"] = f"{mlp}.shared_expert_gate.weight"
    return names


# ------------------------------------------------------------------------------------ config.json


def _rope(hf: dict, max_len: int) -> tuple[float, dict | None]:
    """(rope_theta, our rope_scaling) from rope_parameters (transformers 5) or rope_scaling (4)."""
    rope = dict(hf.get("rope_parameters") or {})
    theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
    legacy = dict(hf.get("rope_scaling") or {})
    if "type" in legacy:
        legacy.setdefault("rope_type", legacy.pop("type"))
    rope = {**legacy, **rope}
    kind = rope.get("rope_type", "default")
    unknown = sorted(set(rope) - set(_ROPE_KEYS) - {"rope_type"})
    if kind not in ("default", "linear", "dynamic", "yarn") or unknown:
        raise ConversionError(
            f"rope_type {kind!r} with keys {sorted(rope)} does not map (ours: default, linear, dynamic, yarn)"
        )
    return float(theta), None if kind == "default" else rope


def _refuse(what: str, refusals: dict[str, bool]) -> None:
    bad = [why for why, refused in refusals.items() if refused]
    if bad:
        raise ConversionError(f"{what} does not map: " + "; ".join(bad))


def config_from_hf(hf: dict, name: str) -> ModelConfig:
    """Our ModelConfig for a config.json of one of FAMILIES, or a ConversionError naming what does not map."""
    family = family_of(hf)
    n_layers = hf.get("num_hidden_layers", 0)
    quant = (hf.get("quantization_config") or {}).get("quant_method")
    dense_layers = hf.get("mlp_only_layers") or []
    _refuse(
        f"this {ARCHITECTURES[family]} checkpoint",
        {
            f"hidden_act {hf.get('hidden_act')!r}: our SwiGLU experts use silu": hf.get("hidden_act", "silu") != "silu",
            f"quantization_config.quant_method {quant!r}: we dequantize mxfp4 (gpt-oss) only; load and save "
            "the model unquantized with transformers first": quant is not None
            and not (quant == "mxfp4" and family == "gpt_oss"),
            f"mlp_only_layers {dense_layers} / decoder_sparse_step {hf.get('decoder_sparse_step')}: every "
            "layer of ours is MoE": bool(dense_layers) or hf.get("decoder_sparse_step", 1) != 1,
            "use_sliding_window (Qwen's windowed layers) is not implemented": bool(hf.get("use_sliding_window")),
            "multimodal towers (vision_config / audio_config) are not converted": any(
                k in hf for k in ("vision_config", "audio_config", "text_config")
            ),
            f"swiglu_alpha/swiglu_limit {hf.get('swiglu_alpha')}/{hf.get('swiglu_limit')}: our clamped SwiGLU "
            f"is gpt-oss's {GPT_OSS_SWIGLU}": family == "gpt_oss"
            and any(hf.get(k, v) != v for k, v in GPT_OSS_SWIGLU.items()),
            f"head_dim {hf.get('head_dim')} with q/k norms over hidden_size: OLMoE's norms need head_dim = "
            "hidden_size / num_attention_heads": family == "olmoe"
            and hf.get("head_dim") not in (None, hf.get("hidden_size", 0) // max(hf.get("num_attention_heads", 1), 1)),
        },
    )
    max_len = hf.get("max_position_embeddings")
    theta, scaling = _rope(hf, max_len)
    n_heads = hf.get("num_attention_heads")
    window = hf.get("sliding_window") or 0
    if family == "mixtral" and window >= (max_len or 0):
        window = 0  # a window as long as the context slides nothing
    layer_types = None
    if family == "gpt_oss":  # transformers' default: sliding, full, sliding, ...
        default = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n_layers)]
        layer_types = hf.get("layer_types") or default
    if family in ("qwen2_moe", "qwen3_moe"):
        window = 0  # (their sliding_window is read only with use_sliding_window, refused above)
    bias = bool(hf.get("attention_bias", False))
    try:
        fields = dict(
            name=name,
            vocab_size=hf["vocab_size"],
            d_model=hf["hidden_size"],
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=hf.get("num_key_value_heads") or n_heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
            n_experts=hf.get("num_local_experts") or hf["num_experts"],
            top_k=hf["num_experts_per_tok"],
            d_ff=hf["intermediate_size"] if family in ("mixtral", "olmoe", "gpt_oss") else hf["moe_intermediate_size"],
            activation="clamped_swiglu" if family == "gpt_oss" else "swiglu",
            max_seq_len=max_len,
            rope_theta=theta,
            rope_scaling=scaling,
            norm_eps=hf.get("rms_norm_eps", 1e-6 if family.startswith("qwen") else 1e-5),  # their classes' defaults
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            init_std=hf.get("initializer_range", 0.02),
            qkv_bias=bool(hf.get("qkv_bias", True)) if family == "qwen2_moe" else bias,
            out_bias=bias and family != "qwen2_moe",
            qk_norm={"qwen3_moe": "head", "olmoe": "projection"}.get(family, "none"),
            qkv_clip=float(hf.get("clip_qkv") or 0.0),
            attention_sinks=family == "gpt_oss",
            sliding_window=window,
            layer_types=layer_types,
            expert_bias=family == "gpt_oss",
            router_rule="topk_softmax" if family == "gpt_oss" else "softmax_topk",
            router_bias=family == "gpt_oss",
            router_renormalize=True if family in ("mixtral", "gpt_oss") else bool(hf.get("norm_topk_prob", False)),
            router_aux_loss_coef=hf.get("router_aux_loss_coef", 0.0),
            router_z_loss_coef=0.0,
            router_jitter=hf.get("router_jitter_noise", 0.0),
            shared_d_ff=hf["shared_expert_intermediate_size"] if family == "qwen2_moe" else 0,
            shared_gate=family == "qwen2_moe",
        )
    except KeyError as e:
        raise ConversionError(f"config.json lacks {e.args[0]!r}, which a {ARCHITECTURES[family]} config has") from None
    try:
        return ModelConfig(**fields)
    except ValueError as e:
        raise ConversionError(f"config.json does not make a valid model of ours: {e}") from None


def family_for(cfg: ModelConfig) -> str:
    """The family a config of ours converts to: the one whose features it has (gpt-oss: clamped
    SwiGLU; Qwen2-MoE: a gated shared expert; Qwen3-MoE: per-head q/k norms; OLMoE: norms over the
    projection), else Mixtral."""
    if cfg.activation == "clamped_swiglu":
        return "gpt_oss"
    if cfg.shared_d_ff:
        return "qwen2_moe"
    return {"head": "qwen3_moe", "projection": "olmoe"}.get(cfg.qk_norm, "mixtral")


def config_to_hf(cfg: ModelConfig, family: str, dtype) -> dict:
    """config.json of `family` for our cfg, or a ConversionError naming what the family cannot hold."""
    if family not in FAMILIES:
        raise ConversionError(f"unknown family {family!r}; ours convert to {', '.join(FAMILIES)}")
    want = config_from_hf(_hf_fields(cfg, family), cfg.name)  # what that family would read back
    # training-only settings the family's config cannot hold are not carried (the z-loss; jitter
    # outside Mixtral); layer_types is compared as the windows it gives
    skip = {"name", "router_z_loss_coef", "router_jitter", "expert_backend", "layer_types"}
    differ = [
        f"{f} {getattr(cfg, f)!r} ({ARCHITECTURES[family]} holds {getattr(want, f)!r})"
        for f in cfg.to_dict()
        if f not in skip and getattr(cfg, f) != getattr(want, f)
    ]
    if [cfg.window(i) for i in range(cfg.n_layers)] != [want.window(i) for i in range(want.n_layers)]:
        differ.append(f"layer_types {cfg.layer_types} with sliding_window {cfg.sliding_window}")
    _refuse(f"config {cfg.name!r} as {ARCHITECTURES[family]}", {d: True for d in differ})
    return {**_hf_fields(cfg, family), "dtype": str(dtype).removeprefix("torch.")}


def _hf_fields(cfg: ModelConfig, family: str) -> dict:
    rope = {"rope_theta": cfg.rope_theta, "rope_type": "default", **(cfg.rope_scaling or {})}
    out = {
        "architectures": [ARCHITECTURES[family]],
        "model_type": family,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": rope,
        "num_experts_per_tok": cfg.top_k,
        "tie_word_embeddings": cfg.tie_embeddings,
        "router_aux_loss_coef": cfg.router_aux_loss_coef,
        "initializer_range": cfg.init_std,
        "attention_dropout": 0.0,
        "output_router_logits": False,
        "use_cache": True,
    }
    if family in ("mixtral", "gpt_oss"):
        out |= {"num_local_experts": cfg.n_experts, "intermediate_size": cfg.d_ff}
    else:
        out["num_experts"] = cfg.n_experts
        out["intermediate_size" if family == "olmoe" else "moe_intermediate_size"] = cfg.d_ff
        out["norm_topk_prob"] = cfg.router_renormalize
    if family == "mixtral":
        out |= {"sliding_window": cfg.sliding_window or None, "router_jitter_noise": cfg.router_jitter}
    if family in ("qwen3_moe", "olmoe", "gpt_oss"):
        out["attention_bias"] = cfg.qkv_bias
    if family == "qwen2_moe":
        out |= {"qkv_bias": cfg.qkv_bias, "shared_expert_intermediate_size": cfg.shared_d_ff}
    if family in ("qwen2_moe", "qwen3_moe"):
        out |= {"use_sliding_window": False, "decoder_sparse_step": 1, "mlp_only_layers": []}
    if family == "olmoe":
        out["clip_qkv"] = cfg.qkv_clip or None
    if family == "gpt_oss":
        types = cfg.layer_types or tuple(
            "sliding_attention" if cfg.window(i) else "full_attention" for i in range(cfg.n_layers)
        )
        out |= {"sliding_window": cfg.sliding_window, "layer_types": list(types), **GPT_OSS_SWIGLU}
    return out
