"""Quantized expert weights inside the model (serving only): ModelConfig.expert_quant = "int8" | "fp8" | "int4".

The formulas and kernels are kernels/quantized.py's. With ModelConfig.quantize_dense the attention
projections and the output head are quantized too, with the same scheme (QuantizedLinear). Here each expert
weight of a MoELayer is a
QuantizedParam module holding two buffers, `q` and `scale`, so a quantized checkpoint is an ordinary
state dict (blocks.i.moe.w_up.q, blocks.i.moe.w_up.scale, ...) that load_model reads like any other:

    cfg, state = quantize_state(model.cfg, model.state_dict(), "int8")   # what `python -m moe quantize` saves
    model = quantize_model(model, "int8")                                # the same, as a new model

fp8 values are kept as their uint8 bit patterns, so that model.to(dtype) never converts them; the
router, the norms, the embedding and the shared experts (and, without quantize_dense, attention and
the head) stay in their own dtype.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from kernels.quantized import QuantizedWeight, dequantize, int4_group, quantize
from moe.config import ModelConfig

EXPERT_WEIGHTS = ("w_up", "w_gate", "w_down")


class QuantizedParam(nn.Module):
    def __init__(self, scheme: str, E: int, K: int, N: int):
        super().__init__()
        self.scheme = scheme
        if scheme == "int4":
            q, scale = torch.zeros(E, K // 2, N, dtype=torch.uint8), torch.ones(E, K // int4_group(K), N)
        else:
            q, scale = torch.zeros(E, K, N, dtype=torch.int8 if scheme == "int8" else torch.uint8), torch.ones(E, N)
        self.register_buffer("q", q)
        self.register_buffer("scale", scale)

    def quantized(self) -> QuantizedWeight:
        q = self.q.view(torch.float8_e4m3fn) if self.scheme == "fp8" else self.q
        return QuantizedWeight(q, self.scale.float(), self.scheme)

    def extra_repr(self) -> str:
        return f"{self.scheme}, {tuple(self.quantized().shape)}"


class QuantizedLinear(QuantizedParam):
    """nn.Linear(d_in, d_out, bias) with its weight quantized, stored as one [1, d_in, d_out]
    "expert" (q and scale, as above). Dequantize-and-matmul in PyTorch: these matrices are a small
    share of the bytes (attention and the head), so they get no kernel of their own."""

    def __init__(self, scheme: str, d_in: int, d_out: int, bias: bool = False):
        super().__init__(scheme, 1, d_in, d_out)
        self.bias = nn.Parameter(torch.zeros(d_out)) if bias else None  # (a bias stays unquantized)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ dequantize(self.quantized(), x.dtype)[0]
        return y if self.bias is None else y + self.bias.to(y.dtype)


def linear(cfg: ModelConfig, d_in: int, d_out: int, bias: bool = False) -> nn.Module:
    """The model's dense projections (attention, output head): quantized when cfg.quantize_dense."""
    if cfg.quantize_dense:
        return QuantizedLinear(cfg.expert_quant, d_in, d_out, bias)
    return nn.Linear(d_in, d_out, bias=bias)


def is_expert_weight(name: str) -> bool:
    """A state-dict name of a MoE layer's expert weight (blocks.i.moe.w_up, w_gate, w_down)."""
    return ".moe." in name and name.rsplit(".", 1)[-1] in EXPERT_WEIGHTS


def _stored(qw: QuantizedWeight) -> dict[str, torch.Tensor]:
    q = qw.q.view(torch.uint8) if qw.scheme == "fp8" else qw.q
    return {"q": q, "scale": qw.scale}


def _dense_weight(name: str) -> bool:
    """An attention projection's or the output head's nn.Linear weight ([out, in])."""
    return name == "lm_head.weight" or (".attn.w" in name and name.endswith(".weight"))


def quantize_state(
    cfg: ModelConfig, state: dict[str, torch.Tensor], scheme: str, dense: bool = False
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The config and state dict of the same model with its expert weights quantized (dense: the
    attention projections and the output head too)."""
    if cfg.expert_quant != "none":
        raise ValueError(f"the model is already quantized ({cfg.expert_quant}); quantize the unquantized checkpoint")
    new_cfg = dataclasses.replace(cfg, expert_quant=scheme, quantize_dense=dense)  # validates
    out = {}
    for name, tensor in state.items():
        if is_expert_weight(name):
            out.update({f"{name}.{k}": v for k, v in _stored(quantize(tensor, scheme)).items()})
        elif dense and _dense_weight(name):
            stem = name.removesuffix(".weight")
            out.update({f"{stem}.{k}": v for k, v in _stored(quantize(tensor.T[None], scheme)).items()})
        else:
            out[name] = tensor
    return new_cfg, out


def quantize_model(model: nn.Module, scheme: str, dense: bool = False) -> nn.Module:
    """A new model (on the same device) with `model`'s expert weights quantized (dense: the attention
    projections and the output head too)."""
    from moe.model.rope import Rotary

    cfg, state = quantize_state(model.cfg, model.state_dict(), scheme, dense)
    device = model.tok_emb.weight.device
    with torch.device("meta"):  # no float weights built only to be replaced
        new = type(model)(cfg)  # an MoETransformer (not imported here: it imports this module)
    new.rotary = Rotary(cfg)  # its tables are derived buffers, not in the state dict: build them for real
    new.load_state_dict(state, assign=True, strict=not cfg.tie_embeddings)
    for m in new.modules():  # the routers' load counters, not in the state dict either
        if getattr(m, "score_bias", None) is not None:
            m.load_E = torch.zeros(m.n_experts, dtype=torch.int64)
    if cfg.tie_embeddings:
        new.lm_head.weight = new.tok_emb.weight
    return new.to(device).eval()


def expert_bytes(model: nn.Module) -> int:
    """Bytes the expert weights occupy as stored (quantized: values and scales)."""
    total = 0
    for layer in model.modules():
        for name in EXPERT_WEIGHTS if hasattr(layer, "w_down") else ():
            w = getattr(layer, name)
            if isinstance(w, QuantizedParam):
                total += w.quantized().nbytes
            elif w is not None:
                total += w.numel() * w.element_size()
    return total


def weight_bytes(model: nn.Module) -> int:
    """Bytes of everything a checkpoint of the model stores (a tied head counted once)."""
    seen, total = set(), 0
    for t in model.state_dict().values():
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total
