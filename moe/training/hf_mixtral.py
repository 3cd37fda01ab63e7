"""Hugging Face checkpoints in the Mixtral layout, to and from ours.

    python -m moe convert --from-hf DIR --out runs/NAME     config.json + safetensors (sharded or not)
                                                           + tokenizer.json -> a checkpoint of ours
    python -m moe convert --to-hf runs/NAME --out DIR       ours -> loadable by MixtralForCausalLM

The two models compute the same function: pre-norm blocks (RMSNorm), grouped-query attention with
rotate-half RoPE, a softmax top-k router renormalised over the chosen experts, SwiGLU experts
silu(x W1) * (x W3) W2, an untied output head. Names, ours <- theirs (nn.Linear stores [out, in];
our expert weights are [E, in, out], hence the transposes):

    tok_emb.weight                     model.embed_tokens.weight
    blocks.i.attn_norm.weight          model.layers.i.input_layernorm.weight
    blocks.i.attn.w{q,k,v,o}.weight    model.layers.i.self_attn.{q,k,v,o}_proj.weight
    blocks.i.mlp_norm.weight           model.layers.i.post_attention_layernorm.weight
    blocks.i.moe.router.gate.weight    model.layers.i.block_sparse_moe.gate.weight
    blocks.i.moe.w_gate[e]             model.layers.i.block_sparse_moe.experts.e.w1.weight, transposed
    blocks.i.moe.w_up[e]               model.layers.i.block_sparse_moe.experts.e.w3.weight, transposed
    blocks.i.moe.w_down[e]             model.layers.i.block_sparse_moe.experts.e.w2.weight, transposed
    norm.weight                        model.norm.weight
    lm_head.weight                     lm_head.weight

We write that (the hub's) layout; we also read transformers 5's in-memory one (`mlp.` for
`block_sparse_moe.`, experts fused as gate_up_proj [E, 2F, D] and down_proj [E, D, F]).

What does not map, refused by name: GELU experts (Mixtral's are SwiGLU), a capacity factor
(Mixtral drops nothing), tied embeddings, a router that does not renormalise, sliding-window
attention, attention biases. Training-only settings Mixtral's config cannot hold are not carried
to it (our router z-loss; the load-balancing coefficient is). Tensors keep their dtype both ways.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from moe import checksums
from moe.config import ModelConfig
from moe.data import tokenizer as tokenizers
from moe.training import checkpoint, run_dir

_LAYER = "model.layers.{}."
_NAMES = {  # ours (per layer, after "blocks.i.") -> theirs (after "model.layers.i.")
    "attn_norm.weight": "input_layernorm.weight",
    "attn.wq.weight": "self_attn.q_proj.weight",
    "attn.wk.weight": "self_attn.k_proj.weight",
    "attn.wv.weight": "self_attn.v_proj.weight",
    "attn.wo.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "moe.router.gate.weight": "block_sparse_moe.gate.weight",
}
_EXPERTS = {"moe.w_gate": "w1", "moe.w_up": "w3", "moe.w_down": "w2"}
_ROPE_KEYS = ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor", "truncate")


class ConversionError(ValueError):
    """The checkpoint cannot be converted; the message names what does not map."""


# ----------------------------------------------------------------------------------------- config


def config_from_hf(hf: dict, name: str) -> ModelConfig:
    """Our ModelConfig for a Mixtral config.json, or a ConversionError naming what does not map."""
    kind = hf.get("model_type")
    arch = hf.get("architectures") or []
    if kind != "mixtral" or any(a != "MixtralForCausalLM" for a in arch):
        raise ConversionError(
            f"architecture {arch or '?'} (model_type {kind!r}) is not Mixtral-like: this "
            "converter reads MixtralForCausalLM checkpoints"
        )
    refusals = {
        f"hidden_act {hf.get('hidden_act')!r}: our SwiGLU experts use silu": hf.get("hidden_act", "silu") != "silu",
        "tie_word_embeddings: tied embeddings are refused": hf.get("tie_word_embeddings", False),
        f"sliding_window {hf.get('sliding_window')}: sliding-window attention is not implemented": hf.get(
            "sliding_window"
        )
        not in (None, 0)
        and hf["sliding_window"] < hf.get("max_position_embeddings", 0),
        "attention_bias: our attention has no biases": hf.get("attention_bias", False),
    }
    bad = [why for why, refused in refusals.items() if refused]
    if bad:
        raise ConversionError("this Mixtral checkpoint does not map: " + "; ".join(bad))
    rope = dict(hf.get("rope_parameters") or {})
    theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
    legacy = hf.get("rope_scaling") or {}  # transformers 4's spelling
    rope = {**{k: v for k, v in legacy.items() if k != "type"}, **rope}
    kind = rope.pop("rope_type", legacy.get("type", "default"))
    scaling = None
    if kind != "default":
        unknown = sorted(set(rope) - set(_ROPE_KEYS))
        if kind not in ("linear", "dynamic", "yarn") or unknown:
            raise ConversionError(
                f"rope_type {kind!r} with keys {sorted(rope)} does not map (ours: linear, dynamic, yarn)"
            )
        scaling = {"rope_type": kind, **rope}
        scaling.setdefault("original_max_position_embeddings", hf["max_position_embeddings"])
    n_heads = hf["num_attention_heads"]
    try:
        return ModelConfig(
            name=name,
            vocab_size=hf["vocab_size"],
            d_model=hf["hidden_size"],
            n_layers=hf["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=hf.get("num_key_value_heads") or n_heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
            n_experts=hf["num_local_experts"],
            top_k=hf["num_experts_per_tok"],
            d_ff=hf["intermediate_size"],
            activation="swiglu",
            max_seq_len=hf["max_position_embeddings"],
            rope_theta=float(theta),
            rope_scaling=scaling,
            norm_eps=hf.get("rms_norm_eps", 1e-5),
            tie_embeddings=False,
            init_std=hf.get("initializer_range", 0.02),
            router_renormalize=True,
            router_aux_loss_coef=hf.get("router_aux_loss_coef", 0.0),
            router_z_loss_coef=0.0,
            router_jitter=hf.get("router_jitter_noise", 0.0),
            capacity_factor=0.0,
        )
    except KeyError as e:
        raise ConversionError(f"config.json lacks {e.args[0]!r}, which a Mixtral config has") from None


def config_to_hf(cfg: ModelConfig, dtype: torch.dtype) -> dict:
    refusals = {
        f"activation {cfg.activation!r}: Mixtral's experts are SwiGLU": cfg.activation != "swiglu",
        f"capacity_factor {cfg.capacity_factor}: Mixtral drops no tokens": cfg.capacity_factor > 0,
        "tie_embeddings: refused (Mixtral checkpoints keep lm_head apart)": cfg.tie_embeddings,
        "router_renormalize false: Mixtral renormalises the top-k weights": not cfg.router_renormalize,
        f"expert_quant {cfg.expert_quant!r}: convert the unquantized checkpoint": cfg.expert_quant != "none",
        f"router_rule {cfg.router_rule!r}: Mixtral routes by softmax_topk": cfg.router_rule != "softmax_topk",
        "router_bias, router_score_bias, router_groups, router_scale or router_scale_input: Mixtral's "
        "router has none": cfg.router_bias
        or cfg.router_score_bias
        or cfg.router_groups > 1
        or cfg.router_scale != 1
        or cfg.router_scale_input,
        f"shared_d_ff {cfg.shared_d_ff}: Mixtral has no shared expert": cfg.shared_d_ff > 0,
    }
    bad = [why for why, refused in refusals.items() if refused]
    if bad:
        raise ConversionError(f"config {cfg.name!r} does not map to Mixtral: " + "; ".join(bad))
    rope = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
    if cfg.rope_scaling:
        rope.update(cfg.rope_scaling)
    return {
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "dtype": str(dtype).removeprefix("torch."),
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": rope,
        "num_local_experts": cfg.n_experts,
        "num_experts_per_tok": cfg.top_k,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "router_aux_loss_coef": cfg.router_aux_loss_coef,
        "router_jitter_noise": cfg.router_jitter,
        "initializer_range": cfg.init_std,
        "attention_dropout": 0.0,
        "output_router_logits": False,
        "use_cache": True,
    }


# ---------------------------------------------------------------------------------------- weights


def weights_to_hf(ours: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    out = {
        "model.embed_tokens.weight": ours["tok_emb.weight"],
        "model.norm.weight": ours["norm.weight"],
        "lm_head.weight": ours["lm_head.weight"],
    }
    for i in range(cfg.n_layers):
        theirs, mine = _LAYER.format(i), f"blocks.{i}."
        for a, b in _NAMES.items():
            out[theirs + b] = ours[mine + a]
        for a, w in _EXPERTS.items():
            for e, weight in enumerate(ours[mine + a]):
                out[f"{theirs}block_sparse_moe.experts.{e}.{w}.weight"] = weight.T.contiguous()
    return out


def weights_from_hf(theirs: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict from Mixtral tensors (either layout), checked against our model's shapes; a
    ConversionError names every missing, unexpected or mis-shaped tensor."""
    theirs = {k.replace(".mlp.", ".block_sparse_moe."): v for k, v in theirs.items()}
    used, out, problems = set(), {}, []

    def take(name):
        if name not in theirs:
            problems.append(f"missing {name}")
            return None
        used.add(name)
        return theirs[name]

    out["tok_emb.weight"], out["norm.weight"] = take("model.embed_tokens.weight"), take("model.norm.weight")
    out["lm_head.weight"] = take("lm_head.weight")
    for i in range(cfg.n_layers):
        pre, mine = _LAYER.format(i), f"blocks.{i}."
        for a, b in _NAMES.items():
            out[mine + a] = take(pre + b)
        fused = f"{pre}block_sparse_moe.experts.gate_up_proj"
        if fused in theirs:  # transformers 5's in-memory layout: [E, 2F, D] (gate, then up) and [E, D, F]
            gate_up, down = take(fused), take(f"{pre}block_sparse_moe.experts.down_proj")
            F_ = gate_up.shape[1] // 2
            out[mine + "moe.w_gate"] = gate_up[:, :F_].transpose(1, 2)
            out[mine + "moe.w_up"] = gate_up[:, F_:].transpose(1, 2)
            out[mine + "moe.w_down"] = down.transpose(1, 2) if down is not None else None
            continue
        for a, w in _EXPERTS.items():
            per_expert = [take(f"{pre}block_sparse_moe.experts.{e}.{w}.weight") for e in range(cfg.n_experts)]
            out[mine + a] = None if any(t is None for t in per_expert) else torch.stack([t.T for t in per_expert])
    problems += [f"unexpected {k} {tuple(v.shape)}" for k, v in theirs.items() if k not in used]
    with torch.device("meta"):
        from moe.model import MoETransformer

        expected = {k: v.shape for k, v in MoETransformer(cfg).state_dict().items()}
    for k, v in out.items():
        if v is not None and tuple(v.shape) != tuple(expected[k]):
            problems.append(f"{_their_name(k)}: shape {tuple(v.shape)}, the config implies {tuple(expected[k])}")
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise ConversionError(f"the checkpoint's tensors do not fit its config ({len(problems)}): {shown}")
    return {k: v.contiguous() for k, v in out.items()}


def _their_name(ours: str) -> str:
    if not ours.startswith("blocks."):
        return {"tok_emb.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}.get(ours, ours)
    _, i, rest = ours.split(".", 2)
    if rest in _EXPERTS:
        return f"{_LAYER.format(i)}block_sparse_moe.experts.*.{_EXPERTS[rest]}.weight (stacked)"
    return _LAYER.format(i) + _NAMES[rest]


def read_safetensors(directory: pathlib.Path) -> dict[str, torch.Tensor]:
    """model.safetensors, or the shards model.safetensors.index.json lists."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (directory / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        other = [p.name for p in directory.glob("*.bin")]
        raise ConversionError(
            f"{directory} holds no model.safetensors or model.safetensors.index.json"
            + (f" (only {other}: re-save it with safe_serialization=True)" if other else "")
        )
    out = {}
    for name in files:
        f = directory / name
        if not f.is_file():
            raise ConversionError(f"{index}: lists {name}, which is missing")
        with safe_open(str(f), "pt") as st:
            for key in st.keys():
                out[key] = st.get_tensor(key)
    return out


# -------------------------------------------------------------------------------------- directions


def from_hf(src, out, *, overwrite: bool = False, log=print) -> pathlib.Path:
    """A Mixtral checkpoint directory -> a run directory of ours (step 0); returns the step directory."""
    src, out = pathlib.Path(src), pathlib.Path(out)
    if not (src / "config.json").is_file():
        raise ConversionError(f"{src} has no config.json: not a Hugging Face checkpoint directory")
    try:
        hf = json.loads((src / "config.json").read_text())
    except ValueError as e:
        raise ConversionError(f"{src / 'config.json'}: not JSON ({e})") from None
    cfg = config_from_hf(hf, src.name)
    tok_file = src / "tokenizer.json"
    if not tok_file.is_file():
        raise ConversionError(
            f"{src} has no tokenizer.json (a Hugging Face fast tokenizer): save one beside the "
            "weights with transformers' AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)"
        )
    tok = tokenizers.from_hf_file(tok_file)
    tok_config = src / "tokenizer_config.json"
    if tok_config.is_file():  # its chat template, where it has one, serves /v1/chat/completions
        from moe.data import chat

        try:
            tok.chat_template = chat.from_tokenizer_config(json.loads(tok_config.read_text()))
        except ValueError as e:
            raise ConversionError(f"{tok_config}: not JSON ({e})") from None
    if tok.vocab_size > cfg.vocab_size:
        raise ConversionError(
            f"{tok_file} holds {tok.vocab_size} tokens, more than the config's vocab_size "
            f"{cfg.vocab_size}: the tokenizer disagrees with the model"
        )
    weights = weights_from_hf(read_safetensors(src), cfg)
    run_dir.prepare(out)
    with run_dir.lock(out):
        if run_dir.check_fresh(out, overwrite):
            run_dir.remove_checkpoints(out)
        step_dir = checkpoint.save_weights(out, weights, cfg, files={tokenizers.FILE: tok.to_bytes()})
    n = sum(v.numel() for v in weights.values())
    log(
        f"converted {src} ({n / 1e6:.1f}M parameters, {cfg.n_layers} layers, {cfg.n_experts} experts, top-"
        f"{cfg.top_k}, tokenizer {tok.describe()}) -> {step_dir}"
    )
    return step_dir


def to_hf(path, out, *, overwrite: bool = False, log=print) -> pathlib.Path:
    """A checkpoint of ours -> a Mixtral directory (config.json, model.safetensors, tokenizer.json when
    the tokenizer has a Hugging Face form), written whole or not at all."""
    step_dir, out = run_dir.resolve(path), pathlib.Path(out)
    cfg, _ = checkpoint.read_config(step_dir)
    if cfg.vision is not None:
        raise ConversionError(
            f"{step_dir} holds a vision model ({cfg.name!r}): Mixtral has no vision path, so only "
            "text checkpoints convert"
        )
    if run_dir.is_distributed(step_dir):
        raise ConversionError(
            f"{step_dir} is a distributed checkpoint: load it whole (moe.load_model) and save "
            "it with moe.save_checkpoint first"
        )
    weights_file = step_dir / "model.safetensors"
    checksums.verify(weights_file)
    with safe_open(str(weights_file), "pt") as st:
        ours = {k: st.get_tensor(k) for k in st.keys()}
    dtype = ours["tok_emb.weight"].dtype
    hf_config = config_to_hf(cfg, dtype)
    tok = tokenizers.load(step_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConversionError(f"--out {out} exists and is not empty: pass --overwrite to replace it")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file(weights_to_hf(ours, cfg), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2))
        hf_tok = tok.to_hf_json()
        if hf_tok is not None:
            (tmp / "tokenizer.json").write_text(hf_tok)
            (tmp / "tokenizer_config.json").write_text(
                json.dumps(
                    {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg.max_seq_len}, indent=2
                )
            )
        else:
            log(f"note: the {tok.describe()} tokenizer has no tokenizer.json form; use tiktoken beside the model")
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {out} (MixtralForCausalLM, {dtype}, tokenizer {tok.describe()}) from {step_dir}")
    return out
