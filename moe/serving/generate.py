"""Autoregressive sampling through the KV cache, one sequence: prefill the prompt once, then one token
per step. The plain reference the serving engine (moe/serving/engine.py) is held against."""

from __future__ import annotations

import torch

from moe.model import MoETransformer, Positions
from moe.serving.request import check_request, check_seed
from moe.serving.sampling import SamplingParams, probabilities, sample
from moe.vision.cross_attention import Media
from moe.vision.images import batch_images, check_images


def sample_next(
    logits_V: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> int:
    """One token id from logits [V] (see moe/serving/sampling.py): one uniform draw from `generator`."""
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy)
    p_V = probabilities(logits_V, params)
    return int(sample(p_V[None], torch.rand(1, generator=generator, dtype=torch.float64)))


@torch.no_grad()
def generate(
    model: MoETransformer,
    prompt: list[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    seed: int | None = None,
    stop_tokens: tuple[int, ...] = (),
    images=None,
) -> list[int]:
    """The new token ids (without the prompt), ending at the first stop token or after max_new_tokens.
    images: a vision model's images, one per placeholder in the prompt ([C, H, W] each, moe/vision/images.py)."""
    SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy)  # validates
    prompt = check_request(model.cfg, prompt, max_new_tokens, stop_tokens)
    check_images(model.cfg, prompt, images)
    if seed is not None:
        check_seed(seed)
    device = model.tok_emb.weight.device
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    was_training = model.training
    model.eval()
    model.setup_caches(1, len(prompt) + max_new_tokens)
    try:
        idx = torch.tensor([prompt], device=device)
        forward = _forward(model, idx, images)
        logits = forward(idx, list(range(len(prompt)))).logits[0, -1]
        out: list[int] = []
        for pos in range(len(prompt), len(prompt) + max_new_tokens):
            token = sample_next(
                logits.cpu(), temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy, generator=generator
            )
            out.append(token)
            if token in stop_tokens or pos + 1 == len(prompt) + max_new_tokens:
                break
            idx = torch.tensor([[token]], device=device)
            logits = forward(idx, [pos]).logits[0, -1]
    finally:
        model.clear_caches()
        model.train(was_training)
    return out


def _forward(model, prompt_1P: torch.Tensor, images):
    """forward(idx [1, T], positions) through the contiguous cache; a vision model's images are encoded
    once and every token sees its latest image (generated tokens the prompt's last one)."""
    device = prompt_1P.device
    if model.cfg.vision is None:
        return lambda idx, pos: model(idx, Positions.at(torch.tensor(pos, device=device)))
    full = model.media(prompt_1P, batch_images(images).to(device) if images else None)
    prompt_media = (full.media_BT[0].tolist(), full.offset_BT[0].tolist())

    def forward(idx, pos):
        media, offset = Media.at_positions(prompt_media, pos)
        at = Media(full.visual_BMLD, torch.tensor([media], device=device), torch.tensor([offset], device=device))
        return model(idx, positions=Positions.at(torch.tensor(pos, device=device)), media=at)

    return forward
