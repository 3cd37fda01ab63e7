"""Quantized expert weights inside the model (serving only): ModelConfig.expert_quant = "int8" | "fp8" | "int4".

The formulas and kernels are kernels/quantized.py's. Here each expert weight of a MoELayer is a
QuantizedParam module holding two buffers, `q` and `scale`, so a quantized checkpoint is an ordinary
state dict (blocks.i.moe.w_up.q, blocks.i.moe.w_up.scale, ...) that load_model reads like any other:

    cfg, state = quantize_state(model.cfg, model.state_dict(), "int8")   # what `python -m moe quantize` saves
    model = quantize_model(model, "int8")                                # the same, as a new model

fp8 values are kept as their uint8 bit patterns, so that model.to(dtype) never converts them; the
router, attention, norms and the output head stay in their own dtype.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from kernels.quantized import QuantizedWeight, int4_group, quantize
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

    def weight(self) -> QuantizedWeight:
        q = self.q.view(torch.float8_e4m3fn) if self.scheme == "fp8" else self.q
        return QuantizedWeight(q, self.scale.float(), self.scheme)

    def extra_repr(self) -> str:
        return f"{self.scheme}, {tuple(self.weight().shape)}"


def _stored(qw: QuantizedWeight) -> dict[str, torch.Tensor]:
    q = qw.q.view(torch.uint8) if qw.scheme == "fp8" else qw.q
    return {"q": q, "scale": qw.scale}


def quantize_state(cfg: ModelConfig, state: dict[str, torch.Tensor], scheme: str
                   ) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The config and state dict of the same model with its expert weights quantized."""
    if cfg.expert_quant != "none":
        raise ValueError(f"the model is already quantized ({cfg.expert_quant}); quantize the unquantized checkpoint")
    new_cfg = dataclasses.replace(cfg, expert_quant=scheme)  # validates the scheme and the config
    out = {}
    for name, tensor in state.items():
        if name.rsplit(".", 1)[-1] in EXPERT_WEIGHTS and ".moe." in name:
            out.update({f"{name}.{k}": v for k, v in _stored(quantize(tensor, scheme)).items()})
        else:
            out[name] = tensor
    return new_cfg, out


def quantize_model(model: nn.Module, scheme: str) -> nn.Module:
    """A new model (on the same device) with `model`'s expert weights quantized."""
    from moe.model.rope import Rotary

    cfg, state = quantize_state(model.cfg, model.state_dict(), scheme)
    device = model.tok_emb.weight.device
    with torch.device("meta"):  # no float weights built only to be replaced
        new = type(model)(cfg)  # an MoETransformer (not imported here: it imports this module)
    new.rotary = Rotary(cfg)  # its tables are derived buffers, not in the state dict: build them for real
    new.load_state_dict(state, assign=True, strict=not cfg.tie_embeddings)
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
                total += w.weight().nbytes
            elif w is not None:
                total += w.numel() * w.element_size()
    return total
