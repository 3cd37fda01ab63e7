"""Autoregressive sampling through the KV cache, one sequence: prefill the prompt once, then one token
per step. The plain reference the serving engine (moe/serving/engine.py) is held against."""

from __future__ import annotations

import torch

from moe.model import MoETransformer, Positions
from moe.serving.request import check_request
from moe.serving.sampling import SamplingParams, probabilities, sample


def sample_next(logits_V: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, greedy: bool = False, generator: torch.Generator | None = None) -> int:
    """One token id from logits [V] (see moe/serving/sampling.py): one uniform draw from `generator`."""
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy)
    p_V = probabilities(logits_V, params)
    return int(sample(p_V[None], torch.rand(1, generator=generator, dtype=torch.float64)))


@torch.no_grad()
def generate(model: MoETransformer, prompt: list[int], max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, greedy: bool = False, seed: int | None = None,
             stop_tokens: tuple[int, ...] = ()) -> list[int]:
    """The new token ids (without the prompt), ending at the first stop token or after max_new_tokens."""
    SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy)  # validates
    check_request(model.cfg, prompt, max_new_tokens, stop_tokens)
    device = model.tok_emb.weight.device
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    was_training = model.training
    model.eval()
    model.setup_caches(1, len(prompt) + max_new_tokens)
    try:
        idx = torch.tensor([prompt], device=device)
        logits = model(idx, Positions.at(torch.arange(len(prompt), device=device))).logits[0, -1]
        out: list[int] = []
        for pos in range(len(prompt), len(prompt) + max_new_tokens):
            token = sample_next(logits.cpu(), temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                                generator=generator)
            out.append(token)
            if token in stop_tokens or pos + 1 == len(prompt) + max_new_tokens:
                break
            idx = torch.tensor([[token]], device=device)
            logits = model(idx, Positions.at(torch.tensor([pos], device=device))).logits[0, -1]
    finally:
        model.clear_caches()
        model.train(was_training)
    return out
