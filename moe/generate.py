"""Autoregressive sampling through the KV cache: prefill the prompt once, then one token per step."""

from __future__ import annotations

import torch

from moe.model import MoETransformer


def sample_next(logits_V: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, greedy: bool = False, generator: torch.Generator | None = None) -> int:
    """One token id from logits [V]: greedy argmax, or sampling at `temperature` restricted to the
    top_k most likely tokens and to the smallest set whose probability reaches top_p (nucleus)."""
    if greedy or temperature == 0:
        return int(logits_V.argmax())
    logits = logits_V.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep tokens until the mass reaches top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    probs = logits.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


@torch.no_grad()
def generate(model: MoETransformer, prompt: list[int], max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, greedy: bool = False, seed: int | None = None,
             stop_tokens: tuple[int, ...] = ()) -> list[int]:
    """The new token ids (without the prompt)."""
    cfg = model.cfg
    check_sampling(temperature, top_k, top_p)
    if not prompt:
        raise ValueError("the prompt is empty: give at least one token")
    if len(prompt) > cfg.max_seq_len:
        raise ValueError(f"prompt of {len(prompt)} tokens is longer than max_seq_len {cfg.max_seq_len}")
    if len(prompt) + max_new_tokens > cfg.max_seq_len:
        raise ValueError(f"prompt ({len(prompt)}) + max_new_tokens ({max_new_tokens}) exceeds max_seq_len "
                         f"{cfg.max_seq_len}; ask for at most {cfg.max_seq_len - len(prompt)} new tokens")
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
