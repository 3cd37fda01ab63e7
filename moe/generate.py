"""Autoregressive sampling through the KV cache, one sequence: prefill the prompt once, then one token
per step. The plain reference the serving engine (moe/engine.py) is held against."""

from __future__ import annotations

import torch

from moe.model import MoETransformer
from moe.sampling import SamplingParams, probabilities, sample


def sample_next(logits_V: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, greedy: bool = False, generator: torch.Generator | None = None) -> int:
    """One token id from logits [V] (see moe/sampling.py): one uniform draw from `generator`."""
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy)
    p_V = probabilities(logits_V, params)
    return int(sample(p_V[None], torch.rand(1, generator=generator, dtype=torch.float64)))


def check_request(cfg, prompt: list[int], max_new_tokens: int) -> None:
    """The errors a request can have before it runs, shared with the serving engine."""
    if not prompt:
        raise ValueError("the prompt is empty: give at least one token")
    if any(not isinstance(t, int) or not 0 <= t < cfg.vocab_size for t in prompt):
        raise ValueError(f"prompt tokens must be integers in [0, {cfg.vocab_size})")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if len(prompt) > cfg.max_seq_len:
        raise ValueError(f"prompt of {len(prompt)} tokens is longer than max_seq_len {cfg.max_seq_len}")
    if len(prompt) + max_new_tokens > cfg.max_seq_len:
        raise ValueError(f"prompt ({len(prompt)}) + max_new_tokens ({max_new_tokens}) exceeds max_seq_len "
                         f"{cfg.max_seq_len}; ask for at most {cfg.max_seq_len - len(prompt)} new tokens")


@torch.no_grad()
def generate(model: MoETransformer, prompt: list[int], max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, greedy: bool = False, seed: int | None = None,
             stop_tokens: tuple[int, ...] = ()) -> list[int]:
    """The new token ids (without the prompt), ending at the first stop token or after max_new_tokens."""
    SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy)  # validates
    check_request(model.cfg, prompt, max_new_tokens)
    device = model.tok_emb.weight.device
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    was_training = model.training
    model.eval()
    model.setup_caches(1, len(prompt) + max_new_tokens)
    try:
        idx = torch.tensor([prompt], device=device)
        logits = model(idx, input_pos=torch.arange(len(prompt), device=device)).logits[0, -1]
        out: list[int] = []
        for pos in range(len(prompt), len(prompt) + max_new_tokens):
            token = sample_next(logits.cpu(), temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                                generator=generator)
            out.append(token)
            if token in stop_tokens or pos + 1 == len(prompt) + max_new_tokens:
                break
            idx = torch.tensor([[token]], device=device)
            logits = model(idx, input_pos=torch.tensor([pos], device=device)).logits[0, -1]
    finally:
        model.clear_caches()
        model.train(was_training)
    return out
