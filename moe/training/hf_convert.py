"""Hugging Face MoE checkpoints to ours and back: Mixtral, Qwen3-MoE, Qwen2-MoE, OLMoE, gpt-oss.

    python -m moe convert --from-hf DIR --out runs/NAME     config.json + safetensors (sharded or not)
                                                           + tokenizer.json -> a checkpoint of ours
    python -m moe convert --to-hf runs/NAME --out DIR       ours -> loadable by transformers'
                        [--family F]                        <Family>ForCausalLM

The families and their config fields are moe/hf_families.py's. Names, ours <- theirs
(nn.Linear stores [out, in]; our expert weights are [E, in, out], hence the transposes):

    tok_emb.weight, norm.weight, lm_head.weight   model.embed_tokens.weight, model.norm.weight, lm_head.weight
                                                  (no lm_head with tie_word_embeddings)
    blocks.i.<per-layer>                          model.layers.i.<hf_families.plain_names>
    blocks.i.moe.w_gate[e] / w_up[e] / w_down[e]  per-expert hub layout <mlp>.experts.e.<gate/up/down>.weight,
                                                  transposed (Mixtral w1/w3/w2, the others gate_proj/up_proj/
                                                  down_proj); also read: transformers 5's fused in-memory
                                                  experts.gate_up_proj [E, 2F, D] (gate rows first), down_proj
    gpt-oss                                       mlp.experts.gate_up_proj [E, D, 2F], gate and up interleaved
                                                  (columns 0, 2, 4, ... gate), gate_up_proj_bias [E, 2F] likewise,
                                                  down_proj [E, F, D], down_proj_bias [E, D]; or MXFP4
                                                  <name>_blocks / <name>_scales, dequantized (moe/training/mxfp4.py)

We write each family's hub layout (what its save_pretrained writes), so ours -> HF -> ours is bit for
bit and so is HF -> ours -> HF. Tensors keep their dtype both ways (MXFP4 becomes bfloat16).
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
from moe.hf_families import (
    ARCHITECTURES,
    ConversionError,
    config_from_hf,
    config_to_hf,
    expert_names,
    family_for,
    family_of,
    mlp_prefix,
    plain_names,
)
from moe.training import checkpoint, mxfp4, run_dir

_LAYER = "model.layers.{}."
_TOP = {"tok_emb.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
_OURS_EXPERTS = ("moe.w_gate", "moe.w_up", "moe.w_down")


# ---------------------------------------------------------------------------------------- weights


def weights_to_hf(ours: dict[str, torch.Tensor], cfg: ModelConfig, family: str) -> dict[str, torch.Tensor]:
    out = {theirs: ours[mine] for mine, theirs in _TOP.items()}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = ours["lm_head.weight"]
    names, mlp = plain_names(cfg, family), mlp_prefix(family)
    for i in range(cfg.n_layers):
        theirs, mine = _LAYER.format(i), f"blocks.{i}."
        for a, b in names.items():
            out[theirs + b] = ours[mine + a]
        w_gate, w_up, w_down = (ours[mine + a] for a in _OURS_EXPERTS)
        if family == "gpt_oss":
            pre = f"{theirs}mlp.experts."
            out[pre + "gate_up_proj"] = _interleave(w_gate, w_up)
            out[pre + "gate_up_proj_bias"] = _interleave(ours[mine + "moe.gate_bias"], ours[mine + "moe.up_bias"])
            out[pre + "down_proj"], out[pre + "down_proj_bias"] = w_down, ours[mine + "moe.down_bias"]
            continue
        for w, name in zip((w_gate, w_up, w_down), expert_names(family)):
            for e, weight in enumerate(w):
                out[f"{theirs}{mlp}.experts.{e}.{name}.weight"] = weight.T.contiguous()
    return out


def _interleave(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """[..., 2F] with gate in the even columns, up in the odd ones (gpt-oss's fused layout)."""
    return torch.stack([gate, up], dim=-1).flatten(-2)


def weights_from_hf(theirs: dict[str, torch.Tensor], cfg: ModelConfig, family: str) -> dict[str, torch.Tensor]:
    """Our state dict from a family's tensors (any layout above), checked against our model's
    shapes; a ConversionError names every missing, unexpected or mis-shaped tensor."""
    if family == "mixtral":  # transformers 5 names Mixtral's block mlp in memory
        theirs = {k.replace(".mlp.", ".block_sparse_moe."): v for k, v in theirs.items()}
    used, out, problems = set(), {}, []

    def take(name):
        if name not in theirs:
            problems.append(f"missing {name}")
            return None
        used.add(name)
        return theirs[name]

    for mine, name in _TOP.items():
        out[mine] = take(name)
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = take("lm_head.weight")
    elif "lm_head.weight" in theirs:  # a tied head saved anyway: the embedding's copy
        used.add("lm_head.weight")
    names, mlp = plain_names(cfg, family), mlp_prefix(family)
    for i in range(cfg.n_layers):
        pre, mine = _LAYER.format(i), f"blocks.{i}."
        for a, b in names.items():
            out[mine + a] = take(pre + b)
        experts = f"{pre}{mlp}.experts."
        if family == "gpt_oss":
            gate_up, down = _gpt_oss_weight(theirs, experts + "gate_up_proj", used), None
            down = _gpt_oss_weight(theirs, experts + "down_proj", used)
            if gate_up is None or down is None:
                problems.append(f"missing {experts}gate_up_proj / down_proj (or their _blocks and _scales)")
                continue
            bias = take(experts + "gate_up_proj_bias")
            out[mine + "moe.w_gate"], out[mine + "moe.w_up"] = gate_up[..., ::2], gate_up[..., 1::2]
            out[mine + "moe.w_down"], out[mine + "moe.down_bias"] = down, take(experts + "down_proj_bias")
            if bias is not None:
                out[mine + "moe.gate_bias"], out[mine + "moe.up_bias"] = bias[..., ::2], bias[..., 1::2]
            continue
        if experts + "gate_up_proj" in theirs:  # transformers 5's in-memory layout: [E, 2F, D] and [E, D, F]
            gate_up, down = take(experts + "gate_up_proj"), take(experts + "down_proj")
            F_ = gate_up.shape[1] // 2
            out[mine + "moe.w_gate"] = gate_up[:, :F_].transpose(1, 2)
            out[mine + "moe.w_up"] = gate_up[:, F_:].transpose(1, 2)
            out[mine + "moe.w_down"] = down.transpose(1, 2) if down is not None else None
            continue
        for a, w in zip(_OURS_EXPERTS, expert_names(family)):
            per_expert = [take(f"{experts}{e}.{w}.weight") for e in range(cfg.n_experts)]
            out[mine + a] = None if any(t is None for t in per_expert) else torch.stack([t.T for t in per_expert])
    problems += [f"unexpected {k} {tuple(v.shape)}" for k, v in theirs.items() if k not in used]
    with torch.device("meta"):
        from moe.model import MoETransformer

        expected = {k: v.shape for k, v in MoETransformer(cfg).state_dict().items()}
    if cfg.tie_embeddings:
        expected.pop("lm_head.weight")
    problems += [f"no tensor for our {k}" for k in expected if k not in out]
    for k, v in out.items():
        if v is not None and tuple(v.shape) != tuple(expected[k]):
            problems.append(
                f"{_their_name(k, cfg, family)}: shape {tuple(v.shape)}, the config implies {tuple(expected[k])}"
            )
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise ConversionError(f"the checkpoint's tensors do not fit its config ({len(problems)}): {shown}")
    return {k: v.contiguous() for k, v in out.items()}


def _gpt_oss_weight(theirs: dict, name: str, used: set) -> torch.Tensor | None:
    """gpt-oss's fused expert weight `name` as stored, or dequantized from its MXFP4 blocks and scales."""
    if name in theirs:
        used.add(name)
        return theirs[name]
    blocks, scales = theirs.get(name + "_blocks"), theirs.get(name + "_scales")
    if blocks is None or scales is None:
        return None
    used.update((name + "_blocks", name + "_scales"))
    try:
        return mxfp4.dequantize(blocks, scales, torch.bfloat16)
    except ValueError as e:
        raise ConversionError(f"{name}: {e}") from None


def _their_name(ours: str, cfg: ModelConfig, family: str) -> str:
    if not ours.startswith("blocks."):
        return _TOP.get(ours, ours)
    _, i, rest = ours.split(".", 2)
    if rest in _OURS_EXPERTS and family != "gpt_oss":
        name = expert_names(family)[_OURS_EXPERTS.index(rest)]
        return f"{_LAYER.format(i)}{mlp_prefix(family)}.experts.*.{name}.weight (stacked)"
    if rest.startswith("moe.") and family == "gpt_oss" and rest not in plain_names(cfg, family):
        return f"{_LAYER.format(i)}mlp.experts ({rest.removeprefix('moe.')})"
    return _LAYER.format(i) + plain_names(cfg, family).get(rest, rest)


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
    """A Hugging Face checkpoint directory of one of the families -> a run directory of ours (step 0);
    returns the step directory. Everything is checked before anything is written."""
    src, out = pathlib.Path(src), pathlib.Path(out)
    if not (src / "config.json").is_file():
        raise ConversionError(f"{src} has no config.json: not a Hugging Face checkpoint directory")
    try:
        hf = json.loads((src / "config.json").read_text())
    except ValueError as e:
        raise ConversionError(f"{src / 'config.json'}: not JSON ({e})") from None
    cfg = config_from_hf(hf, src.name)
    family = family_of(hf)
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
    weights = weights_from_hf(read_safetensors(src), cfg, family)
    run_dir.prepare(out)
    with run_dir.lock(out):
        if run_dir.check_fresh(out, overwrite):
            run_dir.remove_checkpoints(out)
        step_dir = checkpoint.save_weights(out, weights, cfg, files={tokenizers.FILE: tok.to_bytes()})
    n = sum(v.numel() for v in weights.values())
    log(
        f"converted {src} ({ARCHITECTURES[family]}, {n / 1e6:.1f}M parameters, {cfg.n_layers} layers, "
        f"{cfg.n_experts} experts, top-"
        f"{cfg.top_k}, tokenizer {tok.describe()}) -> {step_dir}"
    )
    return step_dir


def to_hf(path, out, *, family: str | None = None, overwrite: bool = False, log=print) -> pathlib.Path:
    """A checkpoint of ours -> a Hugging Face directory of `family` (None: hf_families.family_for the
    config): config.json, model.safetensors, tokenizer.json when the tokenizer has a Hugging Face
    form; written whole or not at all."""
    step_dir, out = run_dir.resolve(path), pathlib.Path(out)
    cfg, _ = checkpoint.read_config(step_dir)
    if cfg.vision is not None:
        raise ConversionError(
            f"{step_dir} holds a vision model ({cfg.name!r}): the families have no vision path, so only "
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
    family = family or family_for(cfg)
    hf_config = config_to_hf(cfg, family, dtype)
    tok = tokenizers.load(step_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConversionError(f"--out {out} exists and is not empty: pass --overwrite to replace it")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file(weights_to_hf(ours, cfg, family), str(tmp / "model.safetensors"), metadata={"format": "pt"})
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
    log(f"wrote {out} ({ARCHITECTURES[family]}, {dtype}, tokenizer {tok.describe()}) from {step_dir}")
    return out
